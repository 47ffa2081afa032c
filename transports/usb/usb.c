/* The usb transport: USB control transfers through libusb, driven by the core's loop. Devices
 * are chosen by VID:PID, serial number and port path; one libusb context serves every link
 * and every hotplug watch, and its fds are handed to the loop through one of their services. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <libusb.h>

#include "debug.h"
#include "usb.h"

/* Linux usbfs refuses longer control transfers. */
#define USB_CONTROL_MAX 4096u
/* Interface alternate settings kept per device; DFU devices have a handful. */
#define USB_ALTS_MAX 64
/* A string descriptor as ASCII: at most 126 characters. */
#define USB_STRING_MAX 128
#define USB_NODE_MAX   32
/* How long close() waits for a cancelled transfer to come back. */
#define CLOSE_WAIT_MS 1000
/* String descriptor reads at open time. */
#define STRING_TIMEOUT_MS 1000
#define DESCRIPTION_MAX   1024

#define DFU_CLASS             0xfe
#define DFU_SUBCLASS          0x01
#define DFU_PROTOCOL_DFU_MODE 0x02

/* What is known of one device: its descriptors and strings. The alts point into config. */
struct usb_desc {
        struct gw_usb_device_info info;
        struct gw_usb_alt alts[USB_ALTS_MAX];
        char *names[USB_ALTS_MAX];
        struct libusb_config_descriptor *config;
        char serial[USB_STRING_MAX];
        char product[USB_STRING_MAX];
        char path[GW_USB_PATH_MAX + 1];
        char node[USB_NODE_MAX];
        bool dfu;      /* a DFU interface, run-time or DFU mode */
        bool dfu_mode; /* a DFU-mode interface (protocol 2) */
};

struct usb_link {
        const struct gw_plugin_services *svc;
        struct usb_link *next; /* in shared.links */
        bool listed;
        libusb_device_handle *handle;
        struct usb_desc desc;
        uint8_t claimed[32]; /* bitmap of claimed interface numbers */
        bool gone;           /* reset re-enumerated the device: the handle is dead */

        /* The one transfer and its buffer (setup packet + data), allocated at open. If a
         * cancelled transfer never comes back, close() leaves both to its callback. */
        struct libusb_transfer *xfer;
        bool busy;
        int completed; /* for libusb_handle_events_timeout_completed() */
        gw_control_done_fn done;
        void *done_userdata;
};

/* One fd of the shared context, and the link whose services watch it now. */
struct usb_watch {
        struct usb_watch *next;
        int fd;
        short events;
        /* A device's usbfs fd: watched only while its link has a transfer in flight (usbfs
         * signals only completions, and a fake node under umockdev is always ready). */
        bool device_fd;
        struct usb_link *owner; /* device_fd: the link that opened it, NULL for a scan */
        const struct gw_plugin_services *svc;
        void *handle;
};

/* One watch_attach(): libusb reports arrivals and departures through the context's event
 * fd, so the context stays alive and its fds stay watched for as long as the watch exists. */
struct usb_attach {
        struct usb_attach *next;
        const struct gw_plugin_services *svc;
        libusb_hotplug_callback_handle cb;
        void (*changed)(void *userdata);
        void *userdata;
};

/* The one libusb context of the process, shared by every link and hotplug watch (refcounted).
 * Its own fds (the event fd, which also carries hotplug messages, and the timerfd of transfer
 * timeouts) are watched through the services of the first hotplug watch, else of the first
 * open link that can watch; when that one ends they move to the next. */
static struct {
        libusb_context *ctx;
        unsigned refs;
        struct usb_link *links;
        struct usb_attach *attaches;
        struct usb_watch *watches;
        /* Set around libusb_open(): the fd it adds belongs to that device. */
        bool opening;
        struct usb_link *opening_owner;
} shared;

/* The one place libusb's codes become negative errno values. Errors are negative, transfer
 * statuses are not, so one function serves both. */
int gw_usb_errno(int code)
{
        switch (code) {
        case LIBUSB_SUCCESS: /* also LIBUSB_TRANSFER_COMPLETED */
                return 0;
        case LIBUSB_TRANSFER_ERROR:
                return -EIO;
        case LIBUSB_TRANSFER_TIMED_OUT:
                return -ETIMEDOUT;
        case LIBUSB_TRANSFER_CANCELLED:
                return -ECANCELED;
        case LIBUSB_TRANSFER_STALL:
                return -EPIPE;
        case LIBUSB_TRANSFER_NO_DEVICE:
                return -ENODEV;
        case LIBUSB_TRANSFER_OVERFLOW:
                return -EOVERFLOW;
        case LIBUSB_ERROR_IO:
                return -EIO;
        case LIBUSB_ERROR_INVALID_PARAM:
                return -EINVAL;
        case LIBUSB_ERROR_ACCESS:
                return -EACCES;
        case LIBUSB_ERROR_NO_DEVICE:
                return -ENODEV;
        case LIBUSB_ERROR_NOT_FOUND:
                return -ENOENT;
        case LIBUSB_ERROR_BUSY:
                return -EBUSY;
        case LIBUSB_ERROR_TIMEOUT:
                return -ETIMEDOUT;
        case LIBUSB_ERROR_OVERFLOW:
                return -EOVERFLOW;
        case LIBUSB_ERROR_PIPE:
                return -EPIPE;
        case LIBUSB_ERROR_INTERRUPTED:
                return -EINTR;
        case LIBUSB_ERROR_NO_MEM:
                return -ENOMEM;
        case LIBUSB_ERROR_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        case LIBUSB_ERROR_OTHER:
        default:
                return -EIO;
        }
}

static int hex_digit(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* 1 to 4 hex digits from s up to end; 0 or -EINVAL. */
static int parse_hex16(const char *s, const char *end, uint16_t *ret)
{
        unsigned v = 0;

        if (end <= s || end - s > 4)
                return -EINVAL;
        for (const char *p = s; p < end; p++) {
                int d = hex_digit(*p);

                if (d < 0)
                        return -EINVAL;
                v = v * 16 + (unsigned) d;
        }
        *ret = (uint16_t) v;
        return 0;
}

int gw_usb_parse_id(const char *s, uint16_t *ret_vid, uint16_t *ret_pid)
{
        const char *colon;
        uint16_t vid, pid;

        if (!s)
                return -EINVAL;
        colon = strchr(s, ':');
        if (!colon || parse_hex16(s, colon, &vid) < 0 ||
            parse_hex16(colon + 1, colon + 1 + strlen(colon + 1), &pid) < 0)
                return -EINVAL;
        *ret_vid = vid;
        *ret_pid = pid;
        return 0;
}

/* A decimal 1..255 of 1 to 3 digits at *p, advancing *p. */
static int parse_dec8(const char **p)
{
        unsigned v = 0;
        int n = 0;

        while (**p >= '0' && **p <= '9' && n < 4) {
                v = v * 10 + (unsigned) (**p - '0');
                (*p)++;
                n++;
        }
        if (n == 0 || n > 3 || v < 1 || v > 255)
                return -EINVAL;
        return (int) v;
}

int gw_usb_check_path(const char *s)
{
        const char *p = s;
        int ports = 0;

        if (!s || strlen(s) > GW_USB_PATH_MAX)
                return -EINVAL;
        if (parse_dec8(&p) < 0 || *p != '-')
                return -EINVAL;
        do {
                p++;
                if (parse_dec8(&p) < 0)
                        return -EINVAL;
                ports++;
        } while (*p == '.' && ports < GW_USB_PORTS_MAX);
        return *p == '\0' ? 0 : -EINVAL;
}

static int set_serial(struct gw_usb_match *m, const char *s, size_t n, const char **ret_why)
{
        if (n == 0 || n > GW_USB_SERIAL_MAX) {
                *ret_why = "serial must be 1 to 127 characters";
                return -EINVAL;
        }
        if (m->serial[0] && (strlen(m->serial) != n || memcmp(m->serial, s, n) != 0)) {
                *ret_why = "two different serial numbers given";
                return -EINVAL;
        }
        memcpy(m->serial, s, n);
        m->serial[n] = '\0';
        return 0;
}

static int set_path(struct gw_usb_match *m, const char *s, size_t n, const char **ret_why)
{
        char buf[GW_USB_PATH_MAX + 1];

        if (n > GW_USB_PATH_MAX) {
                *ret_why = "path must look like 1-2.3 (bus, then ports)";
                return -EINVAL;
        }
        memcpy(buf, s, n);
        buf[n] = '\0';
        if (gw_usb_check_path(buf) < 0) {
                *ret_why = "path must look like 1-2.3 (bus, then ports)";
                return -EINVAL;
        }
        if (m->path[0] && strcmp(m->path, buf) != 0) {
                *ret_why = "two different paths given";
                return -EINVAL;
        }
        memcpy(m->path, buf, n + 1);
        return 0;
}

int gw_usb_match_parse(const struct gw_options *opts, struct gw_usb_match *ret,
                       const char **ret_why)
{
        struct gw_usb_match m = {0};
        const char *why = NULL, *spec, *v, *comma, *p;
        char ids[16];
        int r = -EINVAL;

        spec = gw_options_get(opts, "usb");
        if (!spec || !*spec) {
                why = "option usb (VID:PID) is required";
                goto fail;
        }
        comma = strchr(spec, ',');
        if ((size_t) ((comma ? comma : spec + strlen(spec)) - spec) >= sizeof(ids)) {
                why = "usb must start with VID:PID in hex, e.g. 0483:df11";
                goto fail;
        }
        snprintf(ids, sizeof(ids), "%.*s", (int) ((comma ? comma : spec + strlen(spec)) - spec),
                 spec);
        if (gw_usb_parse_id(ids, &m.vid, &m.pid) < 0) {
                why = "usb must start with VID:PID in hex, e.g. 0483:df11";
                goto fail;
        }
        /* ",serial=S" and ",path=P" after the ids. */
        for (p = comma; p; p = comma) {
                const char *item = p + 1, *end;

                comma = strchr(item, ',');
                end = comma ? comma : item + strlen(item);
                if (strncmp(item, "serial=", 7) == 0)
                        r = set_serial(&m, item + 7, (size_t) (end - item - 7), &why);
                else if (strncmp(item, "path=", 5) == 0)
                        r = set_path(&m, item + 5, (size_t) (end - item - 5), &why);
                else {
                        why = "after VID:PID only ,serial=S and ,path=P may follow";
                        r = -EINVAL;
                }
                if (r < 0)
                        goto fail;
        }
        v = gw_options_get(opts, "serial");
        if (v && set_serial(&m, v, strlen(v), &why) < 0)
                goto fail;
        v = gw_options_get(opts, "path");
        if (v && set_path(&m, v, strlen(v), &why) < 0)
                goto fail;
        v = gw_options_get(opts, GW_OPTION_REOPEN_PATH);
        if (v) {
                if (gw_usb_check_path(v) < 0 || strlen(v) > GW_USB_PATH_MAX) {
                        why = GW_OPTION_REOPEN_PATH " must be a port path BUS-PORT[.PORT]...";
                        goto fail;
                }
                memcpy(m.reopen_path, v, strlen(v) + 1);
        }
        v = gw_options_get(opts, "dfu-usb");
        if (v) {
                if (gw_usb_parse_id(v, &m.dfu_vid, &m.dfu_pid) < 0) {
                        why = "dfu-usb must be VID:PID in hex, e.g. 0483:df11";
                        goto fail;
                }
                m.has_dfu_ids = true;
        }
        *ret = m;
        return 0;
fail:
        if (ret_why)
                *ret_why = why;
        return -EINVAL;
}

static bool match_ids(const struct gw_usb_match *m, uint16_t vid, uint16_t pid)
{
        return (vid == m->vid && pid == m->pid) ||
               (m->has_dfu_ids && vid == m->dfu_vid && pid == m->dfu_pid);
}

bool gw_usb_match_device(const struct gw_usb_match *m, uint16_t vid, uint16_t pid,
                         const char *serial, const char *path)
{
        if (!match_ids(m, vid, pid))
                return false;
        if (m->path[0] && (!path || strcmp(m->path, path) != 0))
                return false;
        if (m->serial[0] && (!serial || strcmp(m->serial, serial) != 0))
                return false;
        return true;
}

/* Watches: the shared context's fds, each handed to the loop through one watch's or link's
 * services. */

static bool can_watch(const struct gw_plugin_services *svc)
{
        return svc && svc->version >= 2 && svc->watch_fd && svc->unwatch_fd;
}

/* The services that watch the context's fds now, or NULL. Hotplug watches come first: they
 * live longest, so the fds move least. */
static const struct gw_plugin_services *watch_host(void)
{
        if (shared.attaches)
                return shared.attaches->svc;
        for (struct usb_link *l = shared.links; l; l = l->next)
                if (can_watch(l->svc))
                        return l->svc;
        return NULL;
}

static void on_fd(void *userdata, int fd, short revents)
{
        struct timeval zero = {0};
        int r;

        /* Completions run their callbacks in here; they may remove watches, this one too. */
        r = libusb_handle_events_timeout_completed(shared.ctx, &zero, NULL);
        if (r < 0)
                gw_transport_debug(watch_host(), "libusb event handling failed: %s",
                                   strerror(-gw_usb_errno(r)));
}

/* Makes every watch follow its rule: the context's fds through the host link, a device fd
 * only while its link has a transfer in flight. Returns the first error of watch_fd(). */
static int sync_watches(void)
{
        const struct gw_plugin_services *host = watch_host();
        int ret = 0;

        for (struct usb_watch *w = shared.watches; w; w = w->next) {
                const struct gw_plugin_services *want = host;
                int r;

                if (w->device_fd && (!w->owner || !w->owner->busy))
                        want = NULL;
                if (w->svc == want)
                        continue;
                if (w->svc) {
                        w->svc->unwatch_fd(w->svc->ctx, w->handle);
                        w->svc = NULL;
                        w->handle = NULL;
                }
                if (!want)
                        continue;
                r = want->watch_fd(want->ctx, w->fd, w->events, on_fd, NULL, &w->handle);
                if (r < 0) {
                        gw_transport_debug(want, "cannot watch libusb fd %d: %s", w->fd,
                                           strerror(-r));
                        if (ret == 0)
                                ret = r;
                        continue;
                }
                w->svc = want;
        }
        return ret;
}

static void LIBUSB_CALL on_pollfd_added(int fd, short events, void *user_data)
{
        struct usb_watch *w = calloc(1, sizeof(*w));

        if (!w)
                return; /* Not watched: transfers on it then time out in the protocol. */
        w->fd = fd;
        w->events = events;
        w->device_fd = shared.opening;
        w->owner = shared.opening_owner;
        w->next = shared.watches;
        shared.watches = w;
        (void) sync_watches();
}

static void LIBUSB_CALL on_pollfd_removed(int fd, void *user_data)
{
        for (struct usb_watch **p = &shared.watches; *p; p = &(*p)->next)
                if ((*p)->fd == fd) {
                        struct usb_watch *w = *p;

                        *p = w->next;
                        if (w->svc)
                                w->svc->unwatch_fd(w->svc->ctx, w->handle);
                        free(w);
                        return;
                }
}

static int ctx_ref(const struct gw_plugin_services *svc)
{
        const struct libusb_pollfd **fds;
        int r;

        if (shared.refs > 0) {
                shared.refs++;
                return 0;
        }
        r = libusb_init(&shared.ctx);
        if (r < 0) {
                gw_transport_debug(svc, "libusb_init failed: %s", libusb_error_name(r));
                shared.ctx = NULL;
                return gw_usb_errno(r);
        }
        /* Transfer timeouts must reach the loop as an fd (a timerfd on Linux): the services
         * offer no timer a transport could arm. */
        if (!libusb_pollfds_handle_timeouts(shared.ctx)) {
                gw_transport_debug(svc, "this libusb cannot signal timeouts through an fd");
                libusb_exit(shared.ctx);
                shared.ctx = NULL;
                return -EOPNOTSUPP;
        }
        libusb_set_pollfd_notifiers(shared.ctx, on_pollfd_added, on_pollfd_removed, NULL);
        fds = libusb_get_pollfds(shared.ctx);
        for (size_t i = 0; fds && fds[i]; i++)
                on_pollfd_added(fds[i]->fd, fds[i]->events, NULL);
        libusb_free_pollfds(fds);
        shared.refs = 1;
        return 0;
}

static void ctx_unref(void)
{
        if (shared.refs == 0 || --shared.refs > 0)
                return;
        libusb_set_pollfd_notifiers(shared.ctx, NULL, NULL, NULL);
        while (shared.watches) {
                struct usb_watch *w = shared.watches;

                shared.watches = w->next;
                if (w->svc)
                        w->svc->unwatch_fd(w->svc->ctx, w->handle);
                free(w);
        }
        libusb_exit(shared.ctx);
        shared.ctx = NULL;
}

/* Opens dev; the fd libusb adds is owner's (NULL: a scan's, never watched). */
static int open_handle(libusb_device *dev, struct usb_link *owner, libusb_device_handle **ret)
{
        int r;

        shared.opening = true;
        shared.opening_owner = owner;
        r = libusb_open(dev, ret);
        shared.opening = false;
        shared.opening_owner = NULL;
        return gw_usb_errno(r);
}

/* Descriptors. */

static void make_path(libusb_device *dev, char *buf, size_t n)
{
        uint8_t ports[GW_USB_PORTS_MAX];
        int k = libusb_get_port_numbers(dev, ports, (int) sizeof(ports));
        size_t used;

        used = (size_t) snprintf(buf, n, "%u", libusb_get_bus_number(dev));
        for (int i = 0; i < k && used < n; i++)
                used +=
                    (size_t) snprintf(buf + used, n - used, "%c%u", i == 0 ? '-' : '.', ports[i]);
}

/* The first language of the device's string table (string descriptor 0), read once per device
 * so that each string costs one transfer, not two as libusb_get_string_descriptor_ascii()
 * spends. 0 when the device has none. */
static uint16_t read_langid(libusb_device_handle *h, const struct gw_plugin_services *svc)
{
        unsigned char buf[255];
        int r;

        if (!h)
                return 0;
        r = libusb_get_string_descriptor(h, 0, 0, buf, sizeof(buf));
        /* Untrusted: bLength, bDescriptorType (3), then at least one 16-bit LANGID. */
        if (r < 4 || buf[1] != LIBUSB_DT_STRING || buf[0] < 4) {
                gw_transport_debug(svc, "no string language table: %s",
                                   r < 0 ? libusb_error_name(r) : "malformed");
                return 0;
        }
        return (uint16_t) (buf[2] | buf[3] << 8);
}

/* A string descriptor as ASCII into buf (anything else becomes '?'), or "" when there is none
 * or it cannot be read. */
static void read_string(libusb_device_handle *h, uint16_t langid, uint8_t index, char *buf,
                        size_t n, const struct gw_plugin_services *svc)
{
        unsigned char raw[255];
        size_t len, out = 0;
        int r;

        buf[0] = '\0';
        if (!h || index == 0 || langid == 0 || n == 0)
                return;
        r = libusb_get_string_descriptor(h, index, langid, raw, sizeof(raw));
        if (r < 2 || raw[1] != LIBUSB_DT_STRING) {
                gw_transport_debug(svc, "cannot read string descriptor %u: %s", index,
                                   r < 0 ? libusb_error_name(r) : "malformed");
                return;
        }
        /* bLength may claim more than arrived: trust the smaller. */
        len = raw[0] < (size_t) r ? raw[0] : (size_t) r;
        for (size_t i = 2; i + 1 < len && out + 1 < n; i += 2) {
                uint16_t c = (uint16_t) (raw[i] | raw[i + 1] << 8);

                buf[out++] = c >= 0x20 && c < 0x7f ? (char) c : '?';
        }
        buf[out] = '\0';
}

static void desc_done(struct usb_desc *d)
{
        for (size_t i = 0; i < USB_ALTS_MAX; i++) {
                free(d->names[i]);
                d->names[i] = NULL;
        }
        if (d->config)
                libusb_free_config_descriptor(d->config);
        d->config = NULL;
}

/* Reads dev's descriptors, and with h its strings. 0 or -errno. */
static int desc_read(libusb_device *dev, libusb_device_handle *h, struct usb_desc *d,
                     const struct gw_plugin_services *svc)
{
        struct libusb_device_descriptor dd;
        uint16_t langid;
        size_t n = 0;
        int r;

        memset(d, 0, sizeof(*d));
        r = libusb_get_device_descriptor(dev, &dd);
        if (r < 0)
                return gw_usb_errno(r);
        d->info.vid = dd.idVendor;
        d->info.pid = dd.idProduct;
        d->info.bcd_device = dd.bcdDevice;
        make_path(dev, d->path, sizeof(d->path));
        d->info.path = d->path;
        snprintf(d->node, sizeof(d->node), "/dev/bus/usb/%03u/%03u", libusb_get_bus_number(dev),
                 libusb_get_device_address(dev));

        langid = read_langid(h, svc);
        r = libusb_get_active_config_descriptor(dev, &d->config);
        if (r < 0)
                r = libusb_get_config_descriptor(dev, 0, &d->config);
        if (r < 0) {
                gw_transport_debug(svc, "%s: no configuration descriptor: %s", d->path,
                                   libusb_error_name(r));
                d->config = NULL;
        }
        for (uint8_t i = 0; d->config && i < d->config->bNumInterfaces; i++) {
                const struct libusb_interface *itf = &d->config->interface[i];

                for (int a = 0; a < itf->num_altsetting; a++) {
                        const struct libusb_interface_descriptor *id = &itf->altsetting[a];
                        struct gw_usb_alt *alt;

                        if (n == USB_ALTS_MAX) {
                                gw_transport_debug(
                                    svc, "%s: more than %d alternate settings, ignoring the rest",
                                    d->path, USB_ALTS_MAX);
                                goto done;
                        }
                        alt = &d->alts[n];
                        alt->interface = id->bInterfaceNumber;
                        alt->alt = id->bAlternateSetting;
                        alt->class_code = id->bInterfaceClass;
                        alt->subclass = id->bInterfaceSubClass;
                        alt->protocol = id->bInterfaceProtocol;
                        alt->extra = id->extra_length > 0 ? id->extra : NULL;
                        alt->extra_len = id->extra_length > 0 ? (size_t) id->extra_length : 0;
                        if (alt->class_code == DFU_CLASS && alt->subclass == DFU_SUBCLASS) {
                                d->dfu = true;
                                if (alt->protocol == DFU_PROTOCOL_DFU_MODE)
                                        d->dfu_mode = true;
                        }
                        if (h && id->iInterface) {
                                char s[USB_STRING_MAX];

                                read_string(h, langid, id->iInterface, s, sizeof(s), svc);
                                if (s[0]) {
                                        d->names[n] = strdup(s);
                                        if (!d->names[n]) {
                                                desc_done(d);
                                                return -ENOMEM;
                                        }
                                }
                        }
                        alt->name = d->names[n];
                        n++;
                }
        }
done:
        d->info.alts = d->alts;
        d->info.n_alts = n;
        read_string(h, langid, dd.iSerialNumber, d->serial, sizeof(d->serial), svc);
        read_string(h, langid, dd.iProduct, d->product, sizeof(d->product), svc);
        d->info.serial = d->serial[0] ? d->serial : NULL;
        return 0;
}

/* Scanning: every attached device that matches. */

typedef int (*scan_fn)(libusb_device *dev, struct usb_desc *d, int error, void *userdata);

/* Calls fn for each device matching m (NULL: each DFU device). Devices are opened to read
 * their strings when strings is set, or when m asks for a serial number. A board looked for
 * again (m->reopen_path) is the one at that port: with the ids asked for, or in DFU mode. */
static int scan(const struct gw_usb_match *m, bool strings, const struct gw_plugin_services *svc,
                scan_fn fn, void *userdata)
{
        libusb_device **list = NULL;
        struct usb_desc *d;
        bool by_port = m && m->reopen_path[0];
        ssize_t n;
        int r = 0;

        d = malloc(sizeof(*d));
        if (!d)
                return -ENOMEM;
        n = libusb_get_device_list(shared.ctx, &list);
        if (n < 0) {
                free(d);
                return gw_usb_errno((int) n);
        }
        for (ssize_t i = 0; i < n && r == 0; i++) {
                struct libusb_device_descriptor dd;
                libusb_device_handle *h = NULL;
                int error = 0;
                char path[GW_USB_PATH_MAX + 1];
                bool ids;

                if (libusb_get_device_descriptor(list[i], &dd) < 0)
                        continue;
                ids = m && match_ids(m, dd.idVendor, dd.idProduct);
                if (m && !by_port && !ids)
                        continue;
                make_path(list[i], path, sizeof(path));
                if (m && m->path[0] && strcmp(m->path, path) != 0)
                        continue;
                if (by_port && strcmp(m->reopen_path, path) != 0)
                        continue;
                if (strings || (m && !by_port && m->serial[0])) {
                        error = open_handle(list[i], NULL, &h);
                        if (error < 0)
                                gw_transport_debug(svc, "%s (%04x:%04x): cannot open: %s", path,
                                                   dd.idVendor, dd.idProduct, strerror(-error));
                }
                r = desc_read(list[i], h, d, svc);
                if (h)
                        libusb_close(h);
                if (r < 0)
                        break;
                if ((!m && !d->dfu) || (by_port && !ids && (m->has_dfu_ids || !d->dfu_mode)) ||
                    (m && !by_port && m->serial[0] && !error &&
                     (!d->info.serial || strcmp(d->info.serial, m->serial) != 0))) {
                        desc_done(d);
                        continue;
                }
                r = fn(list[i], d, error, userdata);
                desc_done(d);
        }
        libusb_free_device_list(list, 1);
        free(d);
        return r;
}

/* One device the scan found. Everything is valid for the callback only. */
struct gw_usb_found {
        const struct gw_usb_device_info *dev; /* strings NULL when it could not be opened */
        const char *node;                     /* "/dev/bus/usb/001/002" */
        const char *product;                  /* iProduct, or NULL */
        int error;                            /* 0, or why it could not be opened (-EACCES) */
        bool dfu;                             /* has a DFU interface (class 0xfe, subclass 1) */
};
typedef int (*gw_usb_found_cb)(const struct gw_usb_found *found, void *userdata);

struct found_ctx {
        gw_usb_found_cb cb;
        void *userdata;
};

static int found_one(libusb_device *dev, struct usb_desc *d, int error, void *userdata)
{
        struct found_ctx *c = userdata;
        struct gw_usb_found f = {
            .dev = &d->info,
            .node = d->node,
            .product = d->product[0] ? d->product : NULL,
            .error = error,
            .dfu = d->dfu,
        };

        return c->cb(&f, c->userdata);
}

/* Opening a link. */

struct pick {
        const struct gw_plugin_services *svc;
        libusb_device *dev; /* referenced: the first match */
        unsigned matches;
        int error; /* the first device that could not be opened to compare its serial */
};

static int pick_one(libusb_device *dev, struct usb_desc *d, int error, void *userdata)
{
        struct pick *p = userdata;

        if (error < 0) {
                if (p->error == 0)
                        p->error = error;
                return 0;
        }
        p->matches++;
        gw_transport_debug(p->svc, "candidate %04x:%04x path %s serial %s (%s)", d->info.vid,
                           d->info.pid, d->path, d->info.serial ? d->info.serial : "-", d->node);
        if (!p->dev)
                p->dev = libusb_ref_device(dev);
        return 0;
}

static void link_unlist(struct usb_link *l)
{
        for (struct usb_link **p = &shared.links; *p; p = &(*p)->next)
                if (*p == l) {
                        *p = l->next;
                        break;
                }
        l->listed = false;
        l->next = NULL;
}

static void LIBUSB_CALL on_transfer(struct libusb_transfer *x);

static int usb_open(void *priv, const struct gw_options *opts, const struct gw_plugin_services *svc)
{
        struct usb_link *l = priv;
        struct gw_usb_match m;
        struct pick p = {.svc = svc};
        const char *why = NULL;
        uint8_t *buf;
        int r;

        l->svc = svc;
        r = gw_usb_match_parse(opts, &m, &why);
        if (r < 0) {
                gw_transport_debug(svc, "%s", why);
                return r;
        }
        r = ctx_ref(svc);
        if (r < 0)
                return r;
        r = scan(&m, false, svc, pick_one, &p);
        if (r < 0)
                goto fail;
        if (p.matches == 0) {
                r = p.error < 0 ? p.error : -ENODEV;
                gw_transport_debug(svc, "no device %04x:%04x%s%s%s%s found", m.vid, m.pid,
                                   m.serial[0] ? " serial " : "", m.serial,
                                   m.path[0] ? " path " : "", m.path);
                goto fail;
        }
        if (p.matches > 1) {
                gw_transport_debug(svc,
                                   "%u devices match %04x:%04x: tell them apart by serial or path",
                                   p.matches, m.vid, m.pid);
                r = -EEXIST;
                goto fail;
        }
        r = open_handle(p.dev, l, &l->handle);
        if (r < 0) {
                gw_transport_debug(svc, "cannot open the device: %s", strerror(-r));
                l->handle = NULL;
                goto fail;
        }
        l->next = shared.links;
        shared.links = l;
        l->listed = true;
        /* A kernel driver bound to the interface (dfu runtime, cdc-acm) is detached on claim
         * and re-attached on release. Not supported everywhere: then claim may fail -EBUSY. */
        (void) libusb_set_auto_detach_kernel_driver(l->handle, 1);
        r = desc_read(p.dev, l->handle, &l->desc, svc);
        if (r < 0)
                goto fail;
        l->xfer = libusb_alloc_transfer(0);
        buf = malloc(LIBUSB_CONTROL_SETUP_SIZE + USB_CONTROL_MAX);
        if (!l->xfer || !buf) {
                free(buf);
                r = -ENOMEM;
                goto fail;
        }
        libusb_fill_control_transfer(l->xfer, l->handle, buf, on_transfer, l, 0);
        l->xfer->flags = LIBUSB_TRANSFER_FREE_BUFFER;
        libusb_unref_device(p.dev);
        /* The context's fds move to this link when it is the first that can watch. */
        (void) sync_watches();
        gw_transport_debug(svc, "opened %04x:%04x path %s serial %s (%s)", l->desc.info.vid,
                           l->desc.info.pid, l->desc.path,
                           l->desc.info.serial ? l->desc.info.serial : "-", l->desc.node);
        return 0;
fail:
        if (l->xfer)
                libusb_free_transfer(l->xfer);
        l->xfer = NULL;
        desc_done(&l->desc);
        if (l->listed)
                link_unlist(l);
        if (l->handle)
                libusb_close(l->handle);
        l->handle = NULL;
        if (p.dev)
                libusb_unref_device(p.dev);
        (void) sync_watches();
        ctx_unref();
        return r;
}

static bool claimed(const struct usb_link *l, uint8_t itf)
{
        return l->claimed[itf / 8] & (1u << (itf % 8));
}

static void LIBUSB_CALL on_transfer(struct libusb_transfer *x)
{
        struct usb_link *l = x->user_data;
        gw_control_done_fn done;
        int status;

        if (!l) {
                /* Orphaned by a close() that could not wait for it. */
                libusb_free_transfer(x);
                return;
        }
        l->busy = false;
        l->completed = 1;
        done = l->done;
        l->done = NULL;
        (void) sync_watches();
        if (!done)
                return;
        status = gw_usb_errno(x->status);
        if (status == 0)
                status = x->actual_length;
        if (status >= 0 && (libusb_control_transfer_get_setup(x)->bmRequestType & 0x80))
                done(l->done_userdata, status, libusb_control_transfer_get_data(x),
                     (size_t) x->actual_length);
        else
                done(l->done_userdata, status, NULL, 0);
}

static void usb_close(void *priv)
{
        struct usb_link *l = priv;

        if (l->busy) {
                uint64_t deadline = 0, now;

                /* The caller is done with the link: the completion is not reported. */
                l->done = NULL;
                l->completed = 0;
                (void) libusb_cancel_transfer(l->xfer);
                for (;;) {
                        struct timeval tv = {.tv_sec = 0, .tv_usec = 100 * 1000};
                        struct timespec ts;

                        clock_gettime(CLOCK_MONOTONIC, &ts);
                        now = (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
                        if (deadline == 0)
                                deadline = now + CLOSE_WAIT_MS;
                        if (!l->busy || now >= deadline)
                                break;
                        (void) libusb_handle_events_timeout_completed(shared.ctx, &tv,
                                                                      &l->completed);
                }
                if (l->busy) {
                        /* Never came back: leave the transfer to its callback and the
                         * handle open, rather than free what libusb still uses. */
                        gw_transport_debug(l->svc,
                                           "a cancelled transfer did not complete, leaking it");
                        l->xfer->user_data = NULL;
                        l->xfer = NULL;
                        l->busy = false;
                        l->handle = NULL;
                }
        }
        if (l->handle) {
                for (unsigned i = 0; i < 256; i++)
                        if (claimed(l, (uint8_t) i))
                                (void) libusb_release_interface(l->handle, (int) i);
                libusb_close(l->handle);
                l->handle = NULL;
        }
        if (l->xfer)
                libusb_free_transfer(l->xfer);
        l->xfer = NULL;
        desc_done(&l->desc);
        if (l->listed)
                link_unlist(l);
        (void) sync_watches();
        ctx_unref();
}

static const struct gw_usb_device_info *usb_info(void *priv)
{
        struct usb_link *l = priv;

        return &l->desc.info;
}

static int usb_select_alt(void *priv, uint8_t interface, uint8_t alt)
{
        struct usb_link *l = priv;
        int r;

        if (l->gone)
                return -ENODEV;
        if (l->busy)
                return -EBUSY;
        if (!claimed(l, interface)) {
                r = gw_usb_errno(libusb_claim_interface(l->handle, interface));
                if (r < 0) {
                        gw_transport_debug(l->svc, "cannot claim interface %u: %s", interface,
                                           strerror(-r));
                        return r == -ENOENT ? -EINVAL : r;
                }
                l->claimed[interface / 8] |= (uint8_t) (1u << (interface % 8));
        }
        r = gw_usb_errno(libusb_set_interface_alt_setting(l->handle, interface, alt));
        if (r < 0) {
                gw_transport_debug(l->svc, "cannot select alt %u of interface %u: %s", alt,
                                   interface, strerror(-r));
                return r == -ENOENT ? -EINVAL : r;
        }
        return 0;
}

static int usb_control(void *priv, const struct gw_control_setup *setup, const void *data,
                       unsigned timeout_ms, gw_control_done_fn done, void *userdata)
{
        struct usb_link *l = priv;
        uint8_t *buf;
        int r;

        if (l->gone)
                return -ENODEV;
        if (l->busy)
                return -EBUSY;
        if (!setup || !done || setup->length > USB_CONTROL_MAX)
                return -EINVAL;
        if (!(setup->request_type & 0x80) && setup->length > 0 && !data)
                return -EINVAL;
        if (!watch_host())
                return -EOPNOTSUPP; /* nothing would ever deliver the completion */
        buf = l->xfer->buffer;
        libusb_fill_control_setup(buf, setup->request_type, setup->request, setup->value,
                                  setup->index, setup->length);
        if (!(setup->request_type & 0x80) && setup->length > 0)
                memcpy(buf + LIBUSB_CONTROL_SETUP_SIZE, data, setup->length);
        libusb_fill_control_transfer(l->xfer, l->handle, buf, on_transfer, l, timeout_ms);
        l->done = done;
        l->done_userdata = userdata;
        l->busy = true;
        l->completed = 0;
        r = sync_watches();
        if (r >= 0)
                r = gw_usb_errno(libusb_submit_transfer(l->xfer));
        if (r < 0) {
                l->busy = false;
                l->done = NULL;
                (void) sync_watches();
                if (r == -ENODEV)
                        l->gone = true;
                gw_transport_debug(l->svc, "cannot submit a control transfer: %s", strerror(-r));
                return r;
        }
        return 0;
}

static int usb_reset(void *priv)
{
        struct usb_link *l = priv;
        int r;

        if (l->gone)
                return -ENODEV;
        if (l->busy)
                return -EBUSY;
        r = libusb_reset_device(l->handle);
        if (r == LIBUSB_ERROR_NOT_FOUND || r == LIBUSB_ERROR_NO_DEVICE) {
                /* It re-enumerated: the reset worked, this handle is dead; reopen finds it. */
                gw_transport_debug(l->svc, "device re-enumerated after reset");
                l->gone = true;
                return 0;
        }
        return gw_usb_errno(r);
}

struct enum_ctx {
        gw_link_enum_cb cb;
        void *userdata;
};

/* "product; DFU alt 0 "name", alt 1 "name"" for the inventory and plain listings. */
static void describe(const struct gw_usb_found *f, char *buf, size_t n)
{
        size_t used = (size_t) snprintf(buf, n, "%s", f->product ? f->product : "USB device");
        bool first = true;

        for (size_t i = 0; i < f->dev->n_alts && used < n; i++) {
                const struct gw_usb_alt *a = &f->dev->alts[i];

                if (a->class_code != DFU_CLASS || a->subclass != DFU_SUBCLASS)
                        continue;
                used += (size_t) snprintf(buf + used, n - used, "%s alt %u \"%s\"",
                                          first ? "; DFU" : ",", a->alt, a->name ? a->name : "");
                first = false;
        }
}

static int enum_one(const struct gw_usb_found *f, void *userdata)
{
        struct enum_ctx *c = userdata;
        char description[DESCRIPTION_MAX];
        struct gw_link_info info = {
            .transport = "usb",
            .path = f->dev->path,
            .description = description,
            .serial = f->dev->serial,
            .vid = f->dev->vid,
            .pid = f->dev->pid,
            .node = f->node,
            .product = f->product,
            .error = f->error,
            .usb = f->dev,
        };

        describe(f, description, sizeof(description));
        return c->cb(&info, c->userdata);
}

static int usb_enumerate(const struct gw_plugin_services *svc, gw_link_enum_cb cb, void *userdata)
{
        struct enum_ctx c = {.cb = cb, .userdata = userdata};
        struct found_ctx fc = {.cb = enum_one, .userdata = &c};
        int r;

        r = ctx_ref(svc);
        if (r < 0)
                return r;
        r = scan(NULL, true, svc, found_one, &fc);
        ctx_unref();
        return r;
}

/* Hotplug. libusb's monitor (udev or netlink) runs in a thread of its own and queues what it
 * sees; the messages are dispatched, and this runs, from libusb's event handling: on_fd() on
 * the loop, or a synchronous transfer (a scan) on the same thread. */
static int LIBUSB_CALL on_hotplug(libusb_context *ctx, libusb_device *dev,
                                  libusb_hotplug_event event, void *user_data)
{
        struct usb_attach *a = user_data;
        struct libusb_device_descriptor dd = {0};
        char path[GW_USB_PATH_MAX + 1];

        (void) libusb_get_device_descriptor(dev, &dd);
        make_path(dev, path, sizeof(path));
        gw_transport_debug(a->svc, "%04x:%04x at %s %s", dd.idVendor, dd.idProduct, path,
                           event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED ? "arrived" : "left");
        a->changed(a->userdata);
        return 0; /* stay registered */
}

static int usb_watch_attach(const struct gw_plugin_services *svc, void (*changed)(void *userdata),
                            void *userdata, void **ret_handle)
{
        struct usb_attach *a;
        int r;

        if (!can_watch(svc) || !changed || !ret_handle)
                return -EINVAL;
        r = ctx_ref(svc);
        if (r < 0)
                return r;
        if (!libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG)) {
                gw_transport_debug(svc, "this libusb cannot report hotplug events");
                ctx_unref();
                return -EOPNOTSUPP;
        }
        a = calloc(1, sizeof(*a));
        if (!a) {
                ctx_unref();
                return -ENOMEM;
        }
        a->svc = svc;
        a->changed = changed;
        a->userdata = userdata;
        /* No LIBUSB_HOTPLUG_ENUMERATE: what is attached now is the caller's first enumerate(). */
        r = gw_usb_errno(libusb_hotplug_register_callback(
            shared.ctx, LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT, 0,
            LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
            on_hotplug, a, &a->cb));
        if (r < 0) {
                gw_transport_debug(svc, "cannot register for hotplug events: %s", strerror(-r));
                free(a);
                ctx_unref();
                return r;
        }
        /* First in the list: the context's fds move to these services, which outlive links. */
        a->next = shared.attaches;
        shared.attaches = a;
        r = sync_watches();
        if (r < 0) {
                libusb_hotplug_deregister_callback(shared.ctx, a->cb);
                shared.attaches = a->next;
                free(a);
                (void) sync_watches();
                ctx_unref();
                return r;
        }
        *ret_handle = a;
        return 0;
}

static void usb_unwatch_attach(void *handle)
{
        struct usb_attach *a = handle;

        if (!a)
                return;
        libusb_hotplug_deregister_callback(shared.ctx, a->cb);
        for (struct usb_attach **p = &shared.attaches; *p; p = &(*p)->next)
                if (*p == a) {
                        *p = a->next;
                        break;
                }
        free(a);
        /* The fds move to another watch or link, or are no longer watched. */
        (void) sync_watches();
        ctx_unref();
}

static int usb_claims(const struct gw_options *opts, const struct gw_link_info *info)
{
        struct gw_usb_match m;
        const char *why = NULL;

        if (gw_usb_match_parse(opts, &m, &why) < 0)
                return -EINVAL;
        if (gw_usb_match_device(&m, info->vid, info->pid, info->serial, info->path))
                return 1;
        /* Its serial number could not be read: everything else may still match. */
        if (m.serial[0] && !info->serial && info->error < 0) {
                m.serial[0] = '\0';
                if (gw_usb_match_device(&m, info->vid, info->pid, NULL, info->path))
                        return 2;
        }
        return 0;
}

static int usb_check(const struct gw_options *opts, char *why, size_t why_size)
{
        struct gw_usb_match m;
        const char *reason = NULL;

        if (gw_usb_match_parse(opts, &m, &reason) < 0) {
                snprintf(why, why_size, "%s", reason ? reason : "invalid options");
                return -EINVAL;
        }
        return 0;
}

/* reopen-path is the core's to set (see GW_OPTION_REOPEN_PATH), not a node's. */
static const char *const usb_options[] = {"usb", "serial", "path", "dfu-usb", NULL};

const struct gw_transport_ops gw_transport_usb_ops = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "usb",
    .shape = GW_LINK_CONTROL,
    .priv_size = sizeof(struct usb_link),
    .open = usb_open,
    .close = usb_close,
    .enumerate = usb_enumerate,
    .usb_info = usb_info,
    .select_alt = usb_select_alt,
    .control = usb_control,
    .reset = usb_reset,
    .watch_attach = usb_watch_attach,
    .unwatch_attach = usb_unwatch_attach,
    .claims = usb_claims,
    .options = usb_options,
    .check = usb_check,
};
