/* The can transport: frames links to nodes on a CAN bus, through an slcan (Lawicel) adapter on a
 * serial port or a SocketCAN interface. Links naming the same adapter or interface share one bus
 * object here: one writer and one ordered transmit queue, paced to the bus-load limit, and
 * received frames handed to the link whose rx id they carry. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#ifdef GW_CAN_HAVE_LIBSERIALPORT
#include <libserialport.h>
#endif

#include "can-bits.h"
#include "can-internal.h"
#include "debug.h"
#include "serial.h"

#define BAUD_DEFAULT     115200
#define BITRATE_DEFAULT  500000
#define BUS_LOAD_DEFAULT 80
#define TX_BURST_DEFAULT 16
#define TX_BURST_MAX     32 /* the slcan window: frames written and not answered */
#define IFNAME_MAX       15 /* IFNAMSIZ - 1 */
#define TXQ_INITIAL      64
#define WATCH_TIMER      0

/* Buses open in this process: links naming the same adapter or interface join one. */
static struct can_bus *buses;

uint64_t can_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

void can_bus_debug(struct can_bus *bus, const char *fmt, ...)
{
        char line[512];
        va_list ap;

        if (!bus->owner)
                return;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        gw_transport_debug(bus->owner->svc, "can %s: %s", bus->name, line);
}

/* ---- Settings ---------------------------------------------------------------------------- */

static int get_id(const struct gw_options *opts, const char *key, bool extended, bool required,
                  uint32_t *ret, char *why, size_t why_size)
{
        uint64_t max = extended ? 0x1fffffff : 0x7ff, v;

        if (!gw_options_get(opts, key)) {
                if (required) {
                        snprintf(why, why_size, "option %s is required (the node's %s id)", key,
                                 strcmp(key, "tx-id") == 0 ? "request" : "response");
                        return -EINVAL;
                }
                *ret = UINT32_MAX;
                return 0;
        }
        if (gw_options_get_u64(opts, key, 0, 0, max, &v) < 0) {
                if (extended)
                        snprintf(why, why_size, "option %s: expected 0 to 0x1fffffff (29-bit ids)",
                                 key);
                else
                        snprintf(why, why_size,
                                 "option %s: expected 0 to 0x7ff (11-bit ids; extended: true for "
                                 "29-bit)",
                                 key);
                return -EINVAL;
        }
        *ret = (uint32_t) v;
        return 0;
}

/* Reads a node's settings from opts; on a bad one -EINVAL with the reason in why. Pure. */
static int parse_settings(const struct gw_options *opts, struct can_settings *ret, char *why,
                          size_t why_size)
{
        struct can_settings set = {0};
        uint64_t v;
        int r;

        set.port = gw_options_get(opts, "port");
        set.interface = gw_options_get(opts, "interface");
        if (set.port && set.interface) {
                snprintf(why, why_size,
                         "options port and interface exclude each other (port: an slcan adapter, "
                         "interface: SocketCAN)");
                return -EINVAL;
        }
        if ((!set.port || !*set.port) && (!set.interface || !*set.interface)) {
                snprintf(why, why_size,
                         "option port or interface is required (slcan: port: /dev/ttyACM0; "
                         "SocketCAN: interface: can0)");
                return -EINVAL;
        }
        if (set.interface && (strlen(set.interface) > IFNAME_MAX || strchr(set.interface, '/') ||
                              strpbrk(set.interface, " \t\n:"))) {
                snprintf(why, why_size,
                         "option interface: expected a network interface name of 1 to %d "
                         "characters (can0)",
                         IFNAME_MAX);
                return -EINVAL;
        }
        if (set.interface && gw_options_get(opts, "baud")) {
                snprintf(why, why_size, "option baud: only for an slcan adapter (port)");
                return -EINVAL;
        }
        if (gw_options_get_u64(opts, "baud", BAUD_DEFAULT, 9600, 4000000, &v) < 0 ||
            gw_serial_speed((uint32_t) v) == B0) {
                snprintf(why, why_size,
                         "option baud: expected a standard serial rate from 9600 to 4000000");
                return -EINVAL;
        }
        set.baud = (uint32_t) v;

        if (set.port) {
                if (gw_options_get_u64(opts, "bitrate", BITRATE_DEFAULT, 1, 1000000, &v) < 0 ||
                    can_slcan_bitrate_code((uint32_t) v) < 0) {
                        snprintf(why, why_size,
                                 "option bitrate: an slcan adapter takes 10000, 20000, 50000, "
                                 "100000, 125000, 250000, 500000, 800000 or 1000000");
                        return -EINVAL;
                }
        } else if (gw_options_get_u64(opts, "bitrate", 0, 1000, 1000000, &v) < 0) {
                snprintf(why, why_size,
                         "option bitrate: expected 1000 to 1000000 (bit/s; SocketCAN sets the "
                         "interface's own with ip link)");
                return -EINVAL;
        }
        set.bitrate = (uint32_t) v;

        if (gw_options_get_bool(opts, "fd", false, &set.fd) < 0) {
                snprintf(why, why_size, "option fd: expected true or false");
                return -EINVAL;
        }
        if (gw_options_get(opts, "data-bitrate")) {
                if (!set.fd) {
                        snprintf(why, why_size, "option data-bitrate: needs fd: true");
                        return -EINVAL;
                }
                if (set.port) {
                        r = gw_options_get_u64(opts, "data-bitrate", 0, 1, 16000000, &v);
                        if (r < 0 || can_slcan_data_bitrate_code((uint32_t) v) < 0) {
                                snprintf(why, why_size,
                                         "option data-bitrate: an slcan adapter takes 500000, "
                                         "1000000, 2000000, 4000000 or 5000000");
                                return -EINVAL;
                        }
                } else if (gw_options_get_u64(opts, "data-bitrate", 0, 1000, 16000000, &v) < 0) {
                        snprintf(why, why_size, "option data-bitrate: expected 1000 to 16000000");
                        return -EINVAL;
                }
                if (set.bitrate && v < set.bitrate) {
                        snprintf(why, why_size,
                                 "option data-bitrate: must not be below the bitrate (%u)",
                                 set.bitrate);
                        return -EINVAL;
                }
                set.data_bitrate = (uint32_t) v;
        }

        if (gw_options_get_u64(opts, "tx-dl", set.fd ? 64 : 8, 8, 64, &v) < 0) {
                snprintf(why, why_size, "option tx-dl: expected 8, 12, 16, 20, 24, 32, 48 or 64");
                return -EINVAL;
        }
        if (v > 8 && !set.fd) {
                snprintf(why, why_size, "option tx-dl: above 8 needs fd: true");
                return -EINVAL;
        }
        if (gw_can_len_to_dlc((unsigned) v) < 0) {
                snprintf(why, why_size, "option tx-dl: expected 8, 12, 16, 20, 24, 32, 48 or 64");
                return -EINVAL;
        }
        set.tx_dl = (uint8_t) v;

        if (gw_options_get_bool(opts, "extended", false, &set.extended) < 0) {
                snprintf(why, why_size, "option extended: expected true or false");
                return -EINVAL;
        }
        r = get_id(opts, "tx-id", set.extended, true, &set.tx_id, why, why_size);
        if (r >= 0)
                r = get_id(opts, "rx-id", set.extended, true, &set.rx_id, why, why_size);
        if (r >= 0)
                r = get_id(opts, "functional-id", set.extended, false, &set.functional_id, why,
                           why_size);
        if (r < 0)
                return r;
        if (set.tx_id == set.rx_id) {
                snprintf(why, why_size, "options tx-id and rx-id must differ (both 0x%x)",
                         set.tx_id);
                return -EINVAL;
        }
        if (set.functional_id == set.rx_id) {
                snprintf(why, why_size, "options functional-id and rx-id must differ (both 0x%x)",
                         set.rx_id);
                return -EINVAL;
        }
        if (gw_options_get_u64(opts, "bus-load", BUS_LOAD_DEFAULT, 1, 100, &v) < 0) {
                snprintf(why, why_size, "option bus-load: expected 1 to 100 (percent)");
                return -EINVAL;
        }
        set.bus_load = (uint32_t) v;
        if (gw_options_get_u64(opts, "tx-burst", TX_BURST_DEFAULT, 1, TX_BURST_MAX, &v) < 0) {
                snprintf(why, why_size,
                         "option tx-burst: expected 1 to %d (frames the adapter may hold ahead "
                         "of the bus)",
                         TX_BURST_MAX);
                return -EINVAL;
        }
        set.tx_burst = (uint32_t) v;
        *ret = set;
        return 0;
}

static int can_check(const struct gw_options *opts, char *why, size_t why_size)
{
        struct can_settings set;

        return parse_settings(opts, &set, why, why_size);
}

/* ---- Watches and the timer ---------------------------------------------------------------- */

static void watch_trampoline(void *userdata, int fd, short revents)
{
        struct can_watch *w = userdata;

        w->cb(w->bus, fd, revents);
}

static int watch_register(struct can_bus *bus, struct can_watch *w)
{
        const struct gw_plugin_services *svc = bus->owner->svc;

        return svc->watch_fd(svc->ctx, w->fd, w->events, watch_trampoline, w, &w->handle);
}

static void watch_release(struct can_bus *bus, struct can_watch *w)
{
        const struct gw_plugin_services *svc = bus->owner ? bus->owner->svc : NULL;

        if (w->handle && svc && svc->unwatch_fd)
                svc->unwatch_fd(svc->ctx, w->handle);
        w->handle = NULL;
}

int can_bus_watch(struct can_bus *bus, unsigned slot, int fd, short events,
                  void (*cb)(struct can_bus *bus, int fd, short revents))
{
        struct can_watch *w;
        int r;

        if (slot >= CAN_WATCH_MAX || !bus->owner)
                return -EINVAL;
        w = &bus->watches[slot];
        watch_release(bus, w);
        *w = (struct can_watch){.fd = fd, .events = events, .cb = cb, .bus = bus};
        r = watch_register(bus, w);
        if (r < 0) {
                w->fd = -1;
                w->handle = NULL;
        }
        return r;
}

void can_bus_unwatch(struct can_bus *bus, unsigned slot)
{
        if (slot >= CAN_WATCH_MAX)
                return;
        watch_release(bus, &bus->watches[slot]);
        bus->watches[slot].fd = -1;
}

/* The owner link is leaving: its services watch the bus's fds no more, the next link's do. */
static int move_watches(struct can_bus *bus, struct can_link *to)
{
        int r = 0;

        for (unsigned i = 0; i < CAN_WATCH_MAX; i++)
                watch_release(bus, &bus->watches[i]);
        bus->owner = to;
        for (unsigned i = 0; i < CAN_WATCH_MAX; i++) {
                struct can_watch *w = &bus->watches[i];

                if (w->fd < 0 || !to)
                        continue;
                if (watch_register(bus, w) < 0)
                        r = -ENOMEM;
        }
        return r;
}

static void arm_timer(struct can_bus *bus)
{
        struct itimerspec its = {{0, 0}, {0, 0}};
        uint64_t at = bus->deadline_backend_ns;

        if (bus->timer_fd < 0)
                return;
        if (bus->deadline_pace_ns && (!at || bus->deadline_pace_ns < at))
                at = bus->deadline_pace_ns;
        if (at) {
                its.it_value.tv_sec = (time_t) (at / 1000000000u);
                its.it_value.tv_nsec = (long) (at % 1000000000u);
        }
        timerfd_settime(bus->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

void can_bus_set_deadline(struct can_bus *bus, uint64_t at_ns)
{
        if (bus->deadline_backend_ns == at_ns)
                return;
        bus->deadline_backend_ns = at_ns;
        arm_timer(bus);
}

static void on_timer(struct can_bus *bus, int fd, short revents)
{
        uint64_t expirations, now;

        if (read(fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
                return;
        now = can_now_ns();
        if (bus->deadline_backend_ns && now >= bus->deadline_backend_ns) {
                bus->deadline_backend_ns = 0;
                bus->ops->timeout(bus, now);
                if (bus->error)
                        return;
        }
        if (bus->deadline_pace_ns && now >= bus->deadline_pace_ns) {
                bus->deadline_pace_ns = 0;
                bus->kick_soon = false;
                can_bus_kick(bus);
                if (bus->error)
                        return;
        }
        arm_timer(bus);
}

/* ---- Links' receive queues ---------------------------------------------------------------- */

static void link_signal(struct can_link *l)
{
        uint64_t one = 1;

        if (l->signalled)
                return;
        if (write(l->efd, &one, sizeof(one)) == (ssize_t) sizeof(one))
                l->signalled = true;
}

static void link_unsignal(struct can_link *l)
{
        uint64_t v;

        if (!l->signalled)
                return;
        if (read(l->efd, &v, sizeof(v)) >= 0 || errno == EAGAIN)
                l->signalled = false;
}

static void link_push(struct can_link *l, const struct gw_can_frame *f)
{
        if (l->rx_len == CAN_RX_QUEUE_MAX) {
                if (l->rx_dropped++ == 0)
                        can_bus_debug(l->bus, "rx id 0x%x: receive queue full, dropping frames",
                                      l->info.rx_id);
                return;
        }
        l->rx[(l->rx_head + l->rx_len) % CAN_RX_QUEUE_MAX] = *f;
        l->rx_len++;
        link_signal(l);
}

void can_bus_deliver(struct can_bus *bus, const struct gw_can_frame *f)
{
        bool ext = f->flags & GW_CAN_EFF;

        bus->frames_received++;
        if (f->flags & GW_CAN_RTR)
                return;
        for (struct can_link *l = bus->links; l; l = l->next)
                if (l->info.rx_id == f->id && l->info.extended == ext) {
                        link_push(l, f);
                        return;
                }
        bus->frames_unclaimed++;
}

/* ---- The transmit queue ------------------------------------------------------------------- */

static struct can_txq_entry *txq_at(struct can_bus *bus, size_t i)
{
        return &bus->txq[(bus->txq_head + i) % bus->txq_cap];
}

static void txq_pop(struct can_bus *bus)
{
        bus->txq_head = (bus->txq_head + 1) % bus->txq_cap;
        bus->txq_len--;
}

static int txq_push(struct can_bus *bus, struct can_link *l, const struct gw_can_frame *f)
{
        if (bus->txq_len == bus->txq_cap) {
                size_t cap = bus->txq_cap ? bus->txq_cap * 2 : TXQ_INITIAL;
                struct can_txq_entry *q = calloc(cap, sizeof(*q));

                if (!q)
                        return -ENOBUFS;
                for (size_t i = 0; i < bus->txq_len; i++)
                        q[i] = *txq_at(bus, i);
                free(bus->txq);
                bus->txq = q;
                bus->txq_cap = cap;
                bus->txq_head = 0;
        }
        *txq_at(bus, bus->txq_len) = (struct can_txq_entry){.link = l, .f = *f};
        bus->txq_len++;
        l->tx_queued++;
        return 0;
}

static uint64_t frame_cost_ns(const struct can_bus *bus, const struct gw_can_frame *f)
{
        struct gw_can_bits bits;

        if (gw_can_frame_bits(f, &bits) < 0)
                return 0;
        return gw_can_bits_ns(&bits, bus->set.bitrate, bus->set.data_bitrate) * 100u /
               bus->set.bus_load;
}

/* How far ahead of the bus-load schedule a frame costing cost_ns may go: tx-burst - 1 such
 * frames, which the adapter (or the kernel) holds while the bus is busy with earlier ones. */
uint64_t can_pace_lead_ns(const struct can_settings *set, uint64_t cost_ns)
{
        return set->tx_burst > 1 ? (uint64_t) (set->tx_burst - 1) * cost_ns : 0;
}

void can_bus_kick(struct can_bus *bus)
{
        bool pace = bus->set.bitrate > 0;
        unsigned sent = 0;

        if (bus->kicking || bus->error)
                return;
        bus->kicking = true;
        while (bus->txq_len > 0 && !bus->error) {
                struct can_txq_entry *e = txq_at(bus, 0);
                struct gw_can_frame f;
                uint64_t now = 0, start, lead, cost = 0;
                int r;

                if (!e->link) {
                        txq_pop(bus);
                        continue;
                }
                if (pace) {
                        /* Up to tx-burst frames ahead of the schedule, so that a wake-up of
                         * ours that comes late does not leave the bus idle: the adapter's
                         * queue still holds frames for it. */
                        now = can_now_ns();
                        cost = frame_cost_ns(bus, &e->f);
                        lead = can_pace_lead_ns(&bus->set, cost);
                        if (now + lead < bus->pace_next_ns) {
                                /* Back when half the lead is used: the adapter still holds
                                 * frames, and the next ones go together in one write. */
                                bus->deadline_pace_ns = bus->pace_next_ns - lead / 2;
                                arm_timer(bus);
                                break;
                        }
                }
                f = e->f;
                r = bus->ops->xmit(bus, &f);
                if (r == -EAGAIN || bus->error)
                        break;
                if (r < 0) {
                        can_bus_fail(bus, r, "the adapter refused a frame");
                        break;
                }
                e->link->tx_queued--;
                txq_pop(bus);
                bus->frames_sent++;
                sent++;
                if (pace) {
                        /* Absolute deadlines: a wake-up a little late is made up by the next
                         * frame; after a pause the schedule restarts from now. */
                        start =
                            bus->pace_next_ns + CAN_PACE_SLACK_NS < now ? now : bus->pace_next_ns;
                        bus->pace_next_ns = start + cost;
                }
        }
        if (sent && !bus->error && bus->ops->flush)
                bus->ops->flush(bus);
        bus->kicking = false;
}

/* ---- Buses -------------------------------------------------------------------------------- */

static void bus_unregister(struct can_bus *bus)
{
        if (!bus->registered)
                return;
        for (struct can_bus **p = &buses; *p; p = &(*p)->next)
                if (*p == bus) {
                        *p = bus->next;
                        break;
                }
        bus->registered = false;
}

/* Releases the device and every fd; the struct stays for the links that still point at it. */
static void bus_shutdown(struct can_bus *bus)
{
        if (bus->ops && bus->be)
                bus->ops->close(bus);
        for (unsigned i = 0; i < CAN_WATCH_MAX; i++)
                can_bus_unwatch(bus, i);
        if (bus->timer_fd >= 0)
                close(bus->timer_fd);
        bus->timer_fd = -1;
        bus->deadline_backend_ns = bus->deadline_pace_ns = 0;
        bus_unregister(bus);
}

void can_bus_up(struct can_bus *bus)
{
        if (bus->up)
                return;
        bus->up = true;
        can_bus_kick(bus);
}

void can_bus_fail(struct can_bus *bus, int err, const char *why)
{
        if (bus->error)
                return;
        can_bus_debug(bus, "bus down (%s): %s", strerror(-err), why);
        snprintf(bus->why, sizeof(bus->why), "%s %s: %s",
                 bus->kind == CAN_BACKEND_SLCAN ? "slcan adapter" : "CAN interface", bus->name,
                 why);
        bus->error = err;
        for (size_t i = 0; i < bus->txq_len; i++) {
                struct can_txq_entry *e = txq_at(bus, i);

                if (e->link)
                        e->link->tx_queued--;
                e->link = NULL;
        }
        bus_shutdown(bus);
        for (struct can_link *l = bus->links; l; l = l->next)
                link_signal(l);
}

static void bus_free(struct can_bus *bus)
{
        bus_shutdown(bus);
        free(bus->be);
        free(bus->txq);
        free(bus);
}

/* The bus a link with set would join, or NULL. */
static struct can_bus *bus_find(const struct can_settings *set, dev_t rdev)
{
        for (struct can_bus *b = buses; b; b = b->next) {
                if (set->port && b->kind == CAN_BACKEND_SLCAN && b->rdev == rdev)
                        return b;
                if (set->interface && b->kind == CAN_BACKEND_SOCKETCAN &&
                    strcmp(b->name, set->interface) == 0)
                        return b;
        }
        return NULL;
}

static int bus_new(struct can_link *l, const struct can_settings *set, dev_t rdev,
                   struct can_bus **ret)
{
        struct can_bus *bus = calloc(1, sizeof(*bus));
        int r;

        if (!bus)
                return -ENOMEM;
        for (unsigned i = 0; i < CAN_WATCH_MAX; i++)
                bus->watches[i].fd = -1;
        bus->kind = set->port ? CAN_BACKEND_SLCAN : CAN_BACKEND_SOCKETCAN;
        bus->ops = set->port ? &can_slcan_ops : &can_socketcan_ops;
        snprintf(bus->name, sizeof(bus->name), "%s", set->port ? set->port : set->interface);
        bus->rdev = rdev;
        bus->set = *set;
        bus->set.port = bus->set.interface = NULL; /* the caller's strings */
        bus->owner = l;
        bus->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (bus->timer_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = can_bus_watch(bus, WATCH_TIMER, bus->timer_fd, POLLIN, on_timer);
        if (r < 0)
                goto fail;
        r = bus->ops->open(bus, set);
        if (r < 0)
                goto fail;
        bus->next = buses;
        buses = bus;
        bus->registered = true;
        *ret = bus;
        return 0;
fail:
        bus_free(bus);
        return r;
}

/* A second link on a bus: its bus-wide settings must be the bus's. */
static int bus_compatible(const struct can_bus *bus, const struct can_settings *set,
                          const struct gw_plugin_services *svc)
{
        const char *what = NULL;
        uint32_t have = 0, want = 0;

        if (set->port && set->baud != bus->set.baud) {
                what = "baud";
                have = bus->set.baud;
                want = set->baud;
        } else if (set->bitrate != bus->set.bitrate) {
                what = "bitrate";
                have = bus->set.bitrate;
                want = set->bitrate;
        } else if (set->data_bitrate != bus->set.data_bitrate) {
                what = "data-bitrate";
                have = bus->set.data_bitrate;
                want = set->data_bitrate;
        } else if (set->bus_load != bus->set.bus_load) {
                what = "bus-load";
                have = bus->set.bus_load;
                want = set->bus_load;
        } else if (set->tx_burst != bus->set.tx_burst) {
                what = "tx-burst";
                have = bus->set.tx_burst;
                want = set->tx_burst;
        }
        if (what) {
                gw_transport_debug(
                    svc,
                    "can %s: the bus is open with %s %u, this node says %u: nodes sharing "
                    "a bus must agree",
                    bus->name, what, have, want);
                return -EINVAL;
        }
        for (const struct can_link *o = bus->links; o; o = o->next)
                if (o->info.rx_id == set->rx_id && o->info.extended == set->extended) {
                        gw_transport_debug(
                            svc, "can %s: another node on this bus already receives rx id 0x%x",
                            bus->name, set->rx_id);
                        return -EADDRINUSE;
                }
        return 0;
}

/* ---- Transport ops ------------------------------------------------------------------------ */

static int can_open(void *priv, const struct gw_options *opts, const struct gw_plugin_services *svc)
{
        struct can_link *l = priv;
        struct can_settings set;
        struct can_bus *bus;
        struct stat st;
        dev_t rdev = 0;
        char why[256];
        int r;

        memset(l, 0, sizeof(*l));
        l->svc = svc;
        l->efd = -1;
        r = parse_settings(opts, &set, why, sizeof(why));
        if (r < 0) {
                gw_transport_debug(svc, "%s", why);
                return r;
        }
        if (!svc || !svc->watch_fd || !svc->unwatch_fd) {
                gw_transport_debug(
                    svc, "can: needs a loop to watch its fds (services without watch_fd)");
                return -EINVAL;
        }
        if (set.port) {
                if (stat(set.port, &st) < 0) {
                        r = -errno;
                        gw_transport_debug(svc, "can %s: %s", set.port, strerror(errno));
                        return r == -ENOTDIR ? -ENOENT : r;
                }
                if (!S_ISCHR(st.st_mode)) {
                        gw_transport_debug(
                            svc,
                            "can %s: not a character device (an slcan adapter's serial "
                            "port)",
                            set.port);
                        return -EINVAL;
                }
                rdev = st.st_rdev;
        }
        l->rx = calloc(CAN_RX_QUEUE_MAX, sizeof(*l->rx));
        l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!l->rx || l->efd < 0) {
                r = l->rx ? -errno : -ENOMEM;
                goto fail;
        }
        l->info = (struct gw_can_link_info){
            .tx_id = set.tx_id,
            .rx_id = set.rx_id,
            .functional_id = set.functional_id,
            .extended = set.extended,
            .fd = set.fd,
            .tx_dl = set.tx_dl,
            .bitrate = set.bitrate,
            .data_bitrate = set.data_bitrate,
        };

        bus = bus_find(&set, rdev);
        if (bus) {
                r = bus_compatible(bus, &set, svc);
                if (r < 0)
                        goto fail;
                if (set.fd && !bus->set.fd) {
                        r = bus->ops->enable_fd ? bus->ops->enable_fd(bus) : -EINVAL;
                        if (r < 0) {
                                gw_transport_debug(svc, "can %s: cannot carry CAN FD frames: %s",
                                                   bus->name, strerror(-r));
                                goto fail;
                        }
                        bus->set.fd = true;
                }
        } else {
                r = bus_new(l, &set, rdev, &bus);
                if (r < 0)
                        goto fail;
        }
        l->bus = bus;
        l->info.bus = bus->name;
        l->next = bus->links;
        bus->links = l;
        bus->n_links++;
        if (bus->ops->links_changed) {
                r = bus->ops->links_changed(bus);
                if (r < 0)
                        gw_transport_debug(svc,
                                           "can %s: updating the receive filters: %s, ignoring",
                                           bus->name, strerror(-r));
        }
        gw_transport_debug(svc, "can %s: node tx 0x%x rx 0x%x joined (%u on the bus)", bus->name,
                           set.tx_id, set.rx_id, bus->n_links);
        return 0;
fail:
        free(l->rx);
        l->rx = NULL;
        if (l->efd >= 0)
                close(l->efd);
        l->efd = -1;
        return r;
}

static void can_close(void *priv)
{
        struct can_link *l = priv;
        struct can_bus *bus = l->bus;

        if (!bus)
                return;
        for (size_t i = 0; i < bus->txq_len; i++) {
                struct can_txq_entry *e = txq_at(bus, i);

                if (e->link == l)
                        e->link = NULL;
        }
        for (struct can_link **p = &bus->links; *p; p = &(*p)->next)
                if (*p == l) {
                        *p = l->next;
                        break;
                }
        bus->n_links--;
        if (!bus->links) {
                can_bus_debug(bus,
                              "last node left: %llu frames sent, %llu received (%llu for "
                              "no node)",
                              (unsigned long long) bus->frames_sent,
                              (unsigned long long) bus->frames_received,
                              (unsigned long long) bus->frames_unclaimed);
                bus_free(bus);
        } else {
                if (bus->owner == l && move_watches(bus, bus->links) < 0)
                        can_bus_fail(bus, -ENETDOWN, "cannot watch the bus's fds any more");
                if (!bus->error && bus->ops->links_changed)
                        bus->ops->links_changed(bus);
        }
        if (l->efd >= 0)
                close(l->efd);
        free(l->rx);
        memset(l, 0, sizeof(*l));
        l->efd = -1;
}

static int can_get_fd(void *priv)
{
        const struct can_link *l = priv;

        return l->efd;
}

static const struct gw_can_link_info *can_info(void *priv)
{
        const struct can_link *l = priv;

        return &l->info;
}

static int can_send_frame(void *priv, const struct gw_can_frame *f)
{
        struct can_link *l = priv;
        struct can_bus *bus = l->bus;
        bool ext = f->flags & GW_CAN_EFF, fd = f->flags & GW_CAN_FD;
        int r;

        if (!bus)
                return -EPIPE;
        if (f->flags & ~(GW_CAN_EFF | GW_CAN_FD | GW_CAN_BRS | GW_CAN_RTR))
                return -EINVAL;
        if (ext != l->info.extended || (f->id != l->info.tx_id && f->id != l->info.functional_id))
                return -EINVAL;
        if (fd ? (!l->info.fd || (f->flags & GW_CAN_RTR) || f->len > l->info.tx_dl ||
                  gw_can_len_to_dlc(f->len) < 0)
               : ((f->flags & GW_CAN_BRS) || f->len > 8))
                return -EINVAL;
        if (bus->error)
                return bus->error;
        /* Not before the adapter is open: the frame could not leave, and a protocol's response
         * timer would run out for a request that never reached the bus. */
        if (!bus->up || l->tx_queued >= CAN_TX_PER_LINK_MAX)
                return -ENOBUFS;
        r = txq_push(bus, l, f);
        if (r < 0)
                return r;
        /* Sent from the loop, right after whatever queues it returns: the frames a protocol
         * queues in one go (a whole ISO-TP message with BS 0) leave together, in one write. */
        if (!bus->kick_soon) {
                bus->kick_soon = true;
                bus->deadline_pace_ns = 1; /* long past: the timer fires at once */
                arm_timer(bus);
        }
        return 0;
}

static int can_recv_frame(void *priv, struct gw_can_frame *ret)
{
        struct can_link *l = priv;

        if (!l->bus)
                return -EPIPE;
        if (l->rx_len > 0) {
                *ret = l->rx[l->rx_head];
                l->rx_head = (l->rx_head + 1) % CAN_RX_QUEUE_MAX;
                l->rx_len--;
                if (l->rx_len == 0 && !l->bus->error)
                        link_unsignal(l);
                return 1;
        }
        if (l->bus->error)
                return l->bus->error;
        link_unsignal(l);
        return -EAGAIN;
}

static const char *can_link_error(void *priv)
{
        const struct can_link *l = priv;

        return l->bus && l->bus->error ? l->bus->why : NULL;
}

/* ---- Enumeration -------------------------------------------------------------------------- */

#define ARPHRD_CAN_TYPE 280 /* ARPHRD_CAN, <linux/if_arp.h> */

static int enumerate_netdevs(gw_link_enum_cb cb, void *userdata)
{
        DIR *d = opendir("/sys/class/net");
        struct dirent *de;
        int r = 0;

        if (!d)
                return 0;
        while (r == 0 && (de = readdir(d))) {
                char path[320], buf[16];
                FILE *f;

                if (de->d_name[0] == '.' || strlen(de->d_name) > IFNAME_MAX)
                        continue;
                snprintf(path, sizeof(path), "/sys/class/net/%s/type", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (fgets(buf, sizeof(buf), f) && atoi(buf) == ARPHRD_CAN_TYPE) {
                        struct gw_link_info info = {
                            .transport = "can",
                            .path = de->d_name,
                            .description = "SocketCAN interface (interface:)",
                        };

                        r = cb(&info, userdata);
                }
                fclose(f);
        }
        closedir(d);
        return r;
}

#ifdef GW_CAN_HAVE_LIBSERIALPORT
/* USB serial ports (CDC-ACM, USB-serial): where an slcan adapter shows up. */
static int enumerate_serial(const struct gw_plugin_services *svc, gw_link_enum_cb cb,
                            void *userdata)
{
        struct sp_port **ports = NULL;
        int r = 0;

        if (sp_list_ports(&ports) != SP_OK) {
                gw_transport_debug(svc, "can: cannot list serial ports, ignoring");
                return 0;
        }
        for (size_t i = 0; ports[i] && r == 0; i++) {
                const char *name = sp_get_port_name(ports[i]);
                char desc[256];
                struct gw_link_info info = {.transport = "can"};

                if (!name || (!strstr(name, "ttyACM") && !strstr(name, "ttyUSB")))
                        continue;
                snprintf(desc, sizeof(desc), "serial port, an slcan adapter? (port:) %s",
                         sp_get_port_description(ports[i]) ? sp_get_port_description(ports[i])
                                                           : "");
                info.path = name;
                info.description = desc;
                gw_serial_usb_ids(ports[i], &info);
                r = cb(&info, userdata);
        }
        sp_free_port_list(ports);
        return r;
}
#endif

static int can_enumerate(const struct gw_plugin_services *svc, gw_link_enum_cb cb, void *userdata)
{
        int r = enumerate_netdevs(cb, userdata);

#ifdef GW_CAN_HAVE_LIBSERIALPORT
        if (r == 0)
                r = enumerate_serial(svc, cb, userdata);
#endif
        return r;
}

static int can_claims(const struct gw_options *opts, const struct gw_link_info *info)
{
        struct can_settings set;
        char why[256];

        if (parse_settings(opts, &set, why, sizeof(why)) < 0)
                return -EINVAL;
        if (!info || !info->path || !info->transport || strcmp(info->transport, "can") != 0)
                return 0;
        return strcmp(set.port ? set.port : set.interface, info->path) == 0;
}

static const char *const can_options[] = {
    "port",  "interface", "baud",          "bitrate",  "fd",       "data-bitrate", "tx-dl",
    "tx-id", "rx-id",     "functional-id", "extended", "bus-load", "tx-burst",     NULL};

const struct gw_transport_ops gw_transport_can_ops = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "can",
    .shape = GW_LINK_FRAMES,
    .priv_size = sizeof(struct can_link),
    .open = can_open,
    .close = can_close,
    .get_fd = can_get_fd,
    .enumerate = can_enumerate,
    .claims = can_claims,
    .options = can_options,
    .check = can_check,
    .can_info = can_info,
    .send_frame = can_send_frame,
    .recv_frame = can_recv_frame,
    .link_error = can_link_error,
};
