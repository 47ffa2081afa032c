/* The SocketCAN backend of the can transport: one raw CAN socket per interface (can0), kernel
 * filters on the rx ids of the links on it, CAN FD frames when a link asks for them, error frames
 * for bus-off. The interface's bitrate is set up outside (ip link). */
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/can.h>
#include <linux/can/error.h>
#include <linux/can/raw.h>

#include "can-bits.h"
#include "can-internal.h"

#define WATCH_IN    1
#define WATCH_OUT   2
#define READ_ROUNDS 32
/* The kernel's transmit queue was full (ENOBUFS, which poll does not report): try again then. */
#define NOBUFS_RETRY_NS 2000000ULL
/* Controller and bus-off reports; bus errors may flood and are not asked for. */
#define ERR_MASK (CAN_ERR_TX_TIMEOUT | CAN_ERR_CRTL | CAN_ERR_BUSOFF | CAN_ERR_RESTARTED)

struct socketcan {
        int fd;
        bool fd_frames;
        bool pollout;
        uint64_t errors_reported;
};

const char *can_socketcan_strerror(int err)
{
        switch (err) {
        case -EAFNOSUPPORT:
                return "this kernel has no CAN support (AF_CAN)";
        case -EPROTONOSUPPORT:
                return "this kernel has no raw CAN sockets (module can-raw)";
        case -ENOENT:
        case -ENODEV:
                return "no such network interface";
        case -ENETDOWN:
                return "the interface is down (ip link set can0 up type can bitrate 500000)";
        case -EMEDIUMTYPE:
                return "not a CAN FD interface (its MTU is not CANFD_MTU)";
        default:
                return strerror(-err);
        }
}

int can_socketcan_encode(const struct gw_can_frame *f, struct canfd_frame *ret, size_t *ret_mtu)
{
        bool ext = f->flags & GW_CAN_EFF;

        if (ext ? f->id > CAN_EFF_MASK : f->id > CAN_SFF_MASK)
                return -EINVAL;
        memset(ret, 0, sizeof(*ret));
        ret->can_id = f->id | (ext ? CAN_EFF_FLAG : 0);
        if (f->flags & GW_CAN_FD) {
                if ((f->flags & GW_CAN_RTR) || gw_can_len_to_dlc(f->len) < 0)
                        return -EINVAL;
                ret->flags = CANFD_FDF | ((f->flags & GW_CAN_BRS) ? CANFD_BRS : 0);
                ret->len = f->len;
                memcpy(ret->data, f->data, f->len);
                *ret_mtu = CANFD_MTU;
                return 0;
        }
        if ((f->flags & GW_CAN_BRS) || f->len > CAN_MAX_DLEN)
                return -EINVAL;
        /* struct can_frame is struct canfd_frame's first CAN_MTU bytes, flags being padding. */
        ret->len = f->len;
        if (f->flags & GW_CAN_RTR)
                ret->can_id |= CAN_RTR_FLAG;
        else
                memcpy(ret->data, f->data, f->len);
        *ret_mtu = CAN_MTU;
        return 0;
}

int can_socketcan_decode(const void *buf, size_t n, struct gw_can_frame *ret, uint32_t *ret_err)
{
        struct canfd_frame c;
        struct gw_can_frame f = {0};

        if (n != CAN_MTU && n != CANFD_MTU)
                return -EINVAL;
        memset(&c, 0, sizeof(c));
        memcpy(&c, buf, n);
        if (c.can_id & CAN_ERR_FLAG) {
                if (n != CAN_MTU)
                        return -EINVAL;
                *ret_err = c.can_id & CAN_ERR_MASK;
                memcpy(f.data, c.data, CAN_ERR_DLC);
                f.len = CAN_ERR_DLC;
                *ret = f;
                return 2;
        }
        if (c.can_id & CAN_EFF_FLAG) {
                f.flags |= GW_CAN_EFF;
                f.id = c.can_id & CAN_EFF_MASK;
        } else {
                f.id = c.can_id & CAN_SFF_MASK;
        }
        if (n == CANFD_MTU) {
                if (gw_can_len_to_dlc(c.len) < 0)
                        return -EINVAL;
                f.flags |= GW_CAN_FD;
                if (c.flags & CANFD_BRS)
                        f.flags |= GW_CAN_BRS;
        } else {
                if (c.len > CAN_MAX_DLEN)
                        return -EINVAL;
                if (c.can_id & CAN_RTR_FLAG)
                        return 0;
        }
        f.len = c.len;
        memcpy(f.data, c.data, f.len);
        *ret = f;
        return 1;
}

size_t can_socketcan_filters(const struct can_link *links, struct can_filter *ret, size_t max)
{
        size_t n = 0;

        for (const struct can_link *l = links; l && n < max; l = l->next) {
                bool ext = l->info.extended;

                ret[n].can_id = l->info.rx_id | (ext ? CAN_EFF_FLAG : 0);
                /* The exact id, in its frame format, data frames only. */
                ret[n].can_mask = (ext ? CAN_EFF_MASK : CAN_SFF_MASK) | CAN_EFF_FLAG | CAN_RTR_FLAG;
                n++;
        }
        return n;
}

static int set_filters(struct can_bus *bus)
{
        struct socketcan *s = bus->be;
        struct can_filter *filters;
        size_t n;
        int r = 0;

        if (s->fd < 0)
                return 0;
        filters = calloc(bus->n_links ? bus->n_links : 1, sizeof(*filters));
        if (!filters)
                return -ENOMEM;
        n = can_socketcan_filters(bus->links, filters, bus->n_links);
        /* No filter at all receives nothing. */
        if (setsockopt(s->fd, SOL_CAN_RAW, CAN_RAW_FILTER, n ? filters : NULL,
                       (socklen_t) (n * sizeof(*filters))) < 0)
                r = -errno;
        free(filters);
        return r;
}

static void on_error_frame(struct can_bus *bus, uint32_t err, const struct gw_can_frame *f)
{
        struct socketcan *s = bus->be;

        if (err & CAN_ERR_BUSOFF) {
                can_bus_fail(bus, -ENETDOWN, "the controller went bus-off");
                return;
        }
        if (s->errors_reported++ < 16)
                can_bus_debug(bus, "socketcan: error frame, class 0x%x, controller 0x%02x%s", err,
                              f->data[1], (err & CAN_ERR_RESTARTED) ? " (restarted)" : "");
}

static void on_readable(struct can_bus *bus, int fd, short revents)
{
        for (int i = 0; i < READ_ROUNDS && !bus->error; i++) {
                struct canfd_frame buf;
                struct gw_can_frame f;
                uint32_t err = 0;
                ssize_t n = read(fd, &buf, sizeof(buf));
                int r;

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return;
                        can_bus_fail(bus, errno == ENETDOWN ? -ENETDOWN : -EPIPE,
                                     "reading from the interface failed");
                        return;
                }
                r = can_socketcan_decode(&buf, (size_t) n, &f, &err);
                if (r == 1)
                        can_bus_deliver(bus, &f);
                else if (r == 2)
                        on_error_frame(bus, err, &f);
        }
}

static void on_writable(struct can_bus *bus, int fd, short revents)
{
        struct socketcan *s = bus->be;

        can_bus_unwatch(bus, WATCH_OUT);
        s->pollout = false;
        can_bus_kick(bus);
}

static int socketcan_xmit(struct can_bus *bus, const struct gw_can_frame *f)
{
        struct socketcan *s = bus->be;
        struct canfd_frame buf;
        size_t mtu;
        ssize_t n;
        int r;

        if (s->pollout)
                return -EAGAIN;
        r = can_socketcan_encode(f, &buf, &mtu);
        if (r < 0)
                return r;
        n = write(s->fd, &buf, mtu);
        if (n == (ssize_t) mtu)
                return 0;
        if (n >= 0)
                return -EIO;
        switch (errno) {
        case EAGAIN:
        case EINTR:
                if (can_bus_watch(bus, WATCH_OUT, s->fd, POLLOUT, on_writable) < 0)
                        return -ENETDOWN;
                s->pollout = true;
                return -EAGAIN;
        case ENOBUFS:
                can_bus_set_deadline(bus, can_now_ns() + NOBUFS_RETRY_NS);
                return -EAGAIN;
        case ENETDOWN:
                return -ENETDOWN;
        default:
                can_bus_debug(bus, "socketcan: write: %s", strerror(errno));
                return -EIO;
        }
}

static void socketcan_timeout(struct can_bus *bus, uint64_t now)
{
        can_bus_kick(bus);
}

static int socketcan_open(struct can_bus *bus, const struct can_settings *set)
{
        struct sockaddr_can addr = {.can_family = AF_CAN};
        struct socketcan *s;
        struct ifreq ifr;
        can_err_mask_t errmask = ERR_MASK;
        int r, on = 1;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->fd = -1;
        bus->be = s;
        s->fd = socket(PF_CAN, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, CAN_RAW);
        if (s->fd < 0) {
                r = -errno;
                goto fail;
        }
        memset(&ifr, 0, sizeof(ifr));
        if (strlen(set->interface) >= sizeof(ifr.ifr_name)) {
                r = -EINVAL;
                goto fail;
        }
        memcpy(ifr.ifr_name, set->interface, strlen(set->interface));
        if (ioctl(s->fd, SIOCGIFINDEX, &ifr) < 0) {
                r = errno == ENODEV ? -ENOENT : -errno;
                goto fail;
        }
        addr.can_ifindex = ifr.ifr_ifindex;
        if (ioctl(s->fd, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
                r = -ENETDOWN;
                goto fail;
        }
        if (set->fd) {
                if (ioctl(s->fd, SIOCGIFMTU, &ifr) < 0 || ifr.ifr_mtu != CANFD_MTU) {
                        r = -EMEDIUMTYPE;
                        goto fail;
                }
                if (setsockopt(s->fd, SOL_CAN_RAW, CAN_RAW_FD_FRAMES, &on, sizeof(on)) < 0) {
                        r = -errno;
                        goto fail;
                }
                s->fd_frames = true;
        }
        if (setsockopt(s->fd, SOL_CAN_RAW, CAN_RAW_ERR_FILTER, &errmask, sizeof(errmask)) < 0 ||
            setsockopt(s->fd, SOL_CAN_RAW, CAN_RAW_FILTER, NULL, 0) < 0) {
                r = -errno;
                goto fail;
        }
        if (bind(s->fd, (struct sockaddr *) &addr, sizeof(addr)) < 0) {
                r = -errno;
                goto fail;
        }
        r = can_bus_watch(bus, WATCH_IN, s->fd, POLLIN, on_readable);
        if (r < 0)
                goto fail;
        can_bus_debug(bus, "socketcan: bound to ifindex %d%s", addr.can_ifindex,
                      s->fd_frames ? ", CAN FD frames" : "");
        bus->up = true; /* the kernel queues frames from now on */
        return 0;
fail:
        can_bus_debug(bus, "socketcan: %s", can_socketcan_strerror(r));
        if (r == -EMEDIUMTYPE)
                r = -EINVAL;
        return r;
}

static void socketcan_close(struct can_bus *bus)
{
        struct socketcan *s = bus->be;

        if (!s || s->fd < 0)
                return;
        can_bus_unwatch(bus, WATCH_IN);
        can_bus_unwatch(bus, WATCH_OUT);
        close(s->fd);
        s->fd = -1;
}

static int socketcan_links_changed(struct can_bus *bus)
{
        return set_filters(bus);
}

static int socketcan_enable_fd(struct can_bus *bus)
{
        struct socketcan *s = bus->be;
        struct ifreq ifr;
        int on = 1;

        memset(&ifr, 0, sizeof(ifr));
        memcpy(ifr.ifr_name, bus->name, strnlen(bus->name, sizeof(ifr.ifr_name) - 1));
        if (ioctl(s->fd, SIOCGIFMTU, &ifr) < 0 || ifr.ifr_mtu != CANFD_MTU)
                return -EINVAL;
        if (setsockopt(s->fd, SOL_CAN_RAW, CAN_RAW_FD_FRAMES, &on, sizeof(on)) < 0)
                return -errno;
        s->fd_frames = true;
        return 0;
}

const struct can_backend_ops can_socketcan_ops = {
    .name = "socketcan",
    .open = socketcan_open,
    .close = socketcan_close,
    .xmit = socketcan_xmit,
    .links_changed = socketcan_links_changed,
    .enable_fd = socketcan_enable_fd,
    .timeout = socketcan_timeout,
};
