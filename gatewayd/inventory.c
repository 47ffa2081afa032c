/* The inventory's view of what is attached: the usb transport's hotplug reports (through
 * services backed by the daemon's loop) trigger a debounced rescan; serial port paths are
 * looked at on a slow timer. The daemon hears only of changes in the answer. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gw-config.h"
#include "gw/log.h"
#include "gw/plugin.h"
#include "gw/registry.h"
#include "inventory.h"

/* One fd a transport asked the loop to watch (struct gw_plugin_services.watch_fd). */
struct watch {
        struct watch *next;
        struct gw_source *source;
        void (*cb)(void *userdata, int fd, short revents);
        void *userdata;
};

enum link_kind {
        LINK_UNKNOWN, /* nothing to look at: presence is not reported */
        LINK_USB,     /* a device matching the node's usb, serial and path options */
        LINK_PATH,    /* a device node or link at the node's absolute "port" path */
};

struct inv_node {
        const struct gw_node_config *cfg;
        enum link_kind kind;
        enum gw_presence present;
};

struct inv_device {
        uint16_t vid, pid;
        char *serial, *path, *description;
};

struct gw_inventory {
        struct gw_loop *loop;
        const struct gw_config *cfg;
        void (*changed)(void *userdata);
        void *userdata;

        struct gw_plugin_services svc;
        struct watch *watches;

        struct inv_node *nodes;
        bool has_paths;
        /* The usb transport when built in or loaded, and its hotplug watch (NULL: polled). */
        const struct gw_transport_ops *usb;
        void *usb_watch;
        bool usb_known; /* the last enumeration worked */
        int usb_error;  /* its error, logged once */
        struct inv_device *attached;
        size_t n_attached;
        bool attached_truncated;

        /* Serial ports named by path: inotify on their directories reports them coming and
         * going; when a directory cannot be watched (it does not exist yet, inotify is out of
         * watches) the ports are polled instead. */
        int inotify_fd;
        struct gw_source *inotify_io;
        bool paths_polled;

        struct gw_source *debounce, *poll;
        uint64_t burst_start;
        bool started; /* the first look is done: changes are logged from now on */
};

/* ---- Services for the transports: the daemon's loop, its clock, its log ---------------- */

__attribute__((format(printf, 3, 0))) static void inv_logv(void *ctx, int level, const char *fmt,
                                                           va_list ap)
{
        char msg[1024];

        if (level > gw_log_get_max_level())
                return;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        gw_log_full_errno(level, 0, "inventory: %s", msg);
}

static uint64_t inv_now(void *ctx)
{
        return gw_now_ms();
}

static int on_watch(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct watch *w = userdata;

        /* May unwatch this very fd: w is not touched afterwards. */
        w->cb(w->userdata, fd, revents);
        return 0;
}

static int inv_watch_fd(void *ctx, int fd, short events,
                        void (*cb)(void *userdata, int fd, short revents), void *userdata,
                        void **ret_handle)
{
        struct gw_inventory *inv = ctx;
        struct watch *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        w->cb = cb;
        w->userdata = userdata;
        r = gw_loop_add_io(inv->loop, fd, events, on_watch, w, &w->source);
        if (r < 0) {
                free(w);
                return r;
        }
        w->next = inv->watches;
        inv->watches = w;
        *ret_handle = w;
        return 0;
}

static void inv_unwatch_fd(void *ctx, void *handle)
{
        struct gw_inventory *inv = ctx;

        for (struct watch **p = &inv->watches; *p; p = &(*p)->next)
                if (*p == handle) {
                        struct watch *w = *p;

                        *p = w->next;
                        gw_source_free(w->source);
                        free(w);
                        return;
                }
}

/* ---- Looking ----------------------------------------------------------------------------- */

static void devices_free(struct inv_device *d, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                free(d[i].serial);
                free(d[i].path);
                free(d[i].description);
        }
        free(d);
}

static bool str_eq(const char *a, const char *b)
{
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool device_eq(const struct inv_device *a, const struct inv_device *b)
{
        return a->vid == b->vid && a->pid == b->pid && str_eq(a->serial, b->serial) &&
               str_eq(a->path, b->path) && str_eq(a->description, b->description);
}

/* By port path, so that the list does not change with the order libusb found them in. */
static int device_cmp(const void *pa, const void *pb)
{
        const struct inv_device *a = pa, *b = pb;
        uint32_t ia = (uint32_t) a->vid << 16 | a->pid, ib = (uint32_t) b->vid << 16 | b->pid;
        int c = strcmp(a->path, b->path);

        if (c != 0)
                return c;
        return ia < ib ? -1 : ia > ib;
}

static enum gw_presence path_presence(const char *path)
{
        struct stat st;

        if (stat(path, &st) == 0)
                return GW_PRESENCE_PRESENT;
        return errno == ENOENT || errno == ENOTDIR ? GW_PRESENCE_ABSENT : GW_PRESENCE_UNKNOWN;
}

struct collect {
        struct inv_device *devs;
        size_t n;
        bool truncated;
};

static char *dup_opt(const char *s, bool *failed)
{
        char *d;

        if (!s)
                return NULL;
        d = strdup(s);
        if (!d)
                *failed = true;
        return d;
}

static int collect_one(const struct gw_link_info *info, void *userdata)
{
        struct collect *c = userdata;
        struct inv_device *d;
        bool failed = false;

        if (!info->path)
                return 0;
        if (c->n == GW_INVENTORY_ATTACHED_MAX) {
                c->truncated = true;
                return 0;
        }
        d = &c->devs[c->n];
        *d = (struct inv_device){.vid = info->vid, .pid = info->pid};
        d->path = dup_opt(info->path, &failed);
        d->serial = dup_opt(info->serial, &failed);
        d->description = dup_opt(info->description, &failed);
        c->n++;
        return failed ? -ENOMEM : 0;
}

/* Is d the device node n opens? The transport decides: it knows how it names links. */
static bool claims(const struct gw_inventory *inv, const struct inv_node *n,
                   const struct inv_device *d)
{
        const struct gw_link_info info = {
            .transport = inv->usb->name,
            .path = d->path,
            .description = d->description,
            .serial = d->serial,
            .vid = d->vid,
            .pid = d->pid,
        };

        return inv->usb->claims(n->cfg->transport_opts, &info) == 1;
}

/* Enumerates USB DFU devices: which nodes they are, and the rest. Returns 1 when the answer
 * changed. */
static int refresh_usb(struct gw_inventory *inv)
{
        struct collect c = {0};
        bool changed = false;
        size_t kept = 0;
        int r;

        if (!inv->usb || !inv->usb->enumerate)
                return 0;
        c.devs = calloc(GW_INVENTORY_ATTACHED_MAX, sizeof(*c.devs));
        if (!c.devs)
                return -ENOMEM;
        r = inv->usb->enumerate(&inv->svc, collect_one, &c);
        if (r == -ENOMEM) {
                devices_free(c.devs, c.n);
                return r;
        }
        if (r < 0) {
                if (inv->usb_error != r)
                        gw_log_warning_errno(r, "Cannot enumerate USB devices: %m; the inventory "
                                                "does not tell whether USB nodes are present");
                inv->usb_error = r;
                devices_free(c.devs, c.n);
                c.devs = NULL;
                c.n = 0;
        } else {
                if (inv->usb_error)
                        gw_log_info("USB devices can be enumerated again");
                inv->usb_error = 0;
        }
        inv->usb_known = r >= 0;

        for (size_t i = 0; i < inv->cfg->n_nodes; i++) {
                struct inv_node *n = &inv->nodes[i];
                enum gw_presence p = GW_PRESENCE_UNKNOWN;

                if (n->kind != LINK_USB)
                        continue;
                if (inv->usb_known) {
                        p = GW_PRESENCE_ABSENT;
                        for (size_t j = 0; j < c.n; j++)
                                if (claims(inv, n, &c.devs[j]))
                                        p = GW_PRESENCE_PRESENT;
                }
                if (p != n->present) {
                        if (inv->started && p != GW_PRESENCE_UNKNOWN)
                                gw_log_info("%s: USB device %s", n->cfg->name,
                                            p == GW_PRESENCE_PRESENT ? "attached" : "gone");
                        n->present = p;
                        changed = true;
                }
        }

        /* What no node claims stays in the list. */
        for (size_t j = 0; j < c.n; j++) {
                bool claimed = false;

                for (size_t i = 0; i < inv->cfg->n_nodes && !claimed; i++)
                        claimed = inv->nodes[i].kind == LINK_USB &&
                                  claims(inv, &inv->nodes[i], &c.devs[j]);
                if (claimed) {
                        free(c.devs[j].serial);
                        free(c.devs[j].path);
                        free(c.devs[j].description);
                        continue;
                }
                c.devs[kept++] = c.devs[j];
        }
        c.n = kept;
        qsort(c.devs, c.n, sizeof(*c.devs), device_cmp);
        if (c.truncated && !inv->attached_truncated)
                gw_log_warning("More than %d USB DFU devices attached: the inventory lists the "
                               "first %d",
                               GW_INVENTORY_ATTACHED_MAX, GW_INVENTORY_ATTACHED_MAX);
        inv->attached_truncated = c.truncated;

        if (c.n != inv->n_attached)
                changed = true;
        for (size_t j = 0; j < c.n && !changed; j++)
                changed = !device_eq(&c.devs[j], &inv->attached[j]);
        if (changed && inv->started)
                gw_log_debug("USB: %zu unclaimed DFU device(s) attached", c.n);
        devices_free(inv->attached, inv->n_attached);
        inv->attached = c.devs;
        inv->n_attached = c.n;
        return changed ? 1 : 0;
}

static int refresh_paths(struct gw_inventory *inv)
{
        bool changed = false;

        for (size_t i = 0; i < inv->cfg->n_nodes; i++) {
                struct inv_node *n = &inv->nodes[i];
                enum gw_presence p;

                if (n->kind != LINK_PATH)
                        continue;
                p = path_presence(gw_options_get(n->cfg->transport_opts, "port"));
                if (p == n->present)
                        continue;
                if (inv->started && p != GW_PRESENCE_UNKNOWN)
                        gw_log_info("%s: port %s %s", n->cfg->name,
                                    gw_options_get(n->cfg->transport_opts, "port"),
                                    p == GW_PRESENCE_PRESENT ? "present" : "gone");
                n->present = p;
                changed = true;
        }
        return changed ? 1 : 0;
}

int gw_inventory_refresh(struct gw_inventory *inv)
{
        int r, changed;

        changed = refresh_paths(inv);
        r = refresh_usb(inv);
        if (r < 0)
                return r;
        return changed || r > 0 ? 1 : 0;
}

/* ---- Timers ---------------------------------------------------------------------------- */

static void report(struct gw_inventory *inv)
{
        if (inv->changed)
                inv->changed(inv->userdata);
}

static int on_debounce(struct gw_source *s, uint64_t now_ms, void *userdata)
{
        struct gw_inventory *inv = userdata;
        int r;

        inv->burst_start = 0;
        r = gw_inventory_refresh(inv);
        if (r < 0)
                gw_log_warning_errno(r, "Cannot look at what is attached: %m, ignoring");
        if (r > 0)
                report(inv);
        return 0;
}

static int on_poll(struct gw_source *s, uint64_t now_ms, void *userdata)
{
        struct gw_inventory *inv = userdata;
        int r;

        r = inv->paths_polled ? refresh_paths(inv) : 0;
        /* Without hotplug reports USB is looked at on the same timer. */
        if (inv->usb && !inv->usb_watch) {
                int u = refresh_usb(inv);

                if (u != 0)
                        r = u;
        }
        if (r < 0)
                gw_log_warning_errno(r, "Cannot look at what is attached: %m, ignoring");
        if (r > 0)
                report(inv);
        gw_source_set_time(s, gw_now_ms() + GW_INVENTORY_POLL_MS);
        return 0;
}

/* The transport's changed(): only notes it (it may run from inside the transport). */
static void on_attach_changed(void *userdata)
{
        struct gw_inventory *inv = userdata;
        uint64_t now = gw_now_ms(), at;

        if (inv->burst_start == 0)
                inv->burst_start = now;
        at = now + GW_INVENTORY_DEBOUNCE_MS;
        if (at > inv->burst_start + GW_INVENTORY_DEBOUNCE_MAX_MS)
                at = inv->burst_start + GW_INVENTORY_DEBOUNCE_MAX_MS;
        gw_source_set_time(inv->debounce, at);
}

/* Something changed in a directory holding a node's port: read the events away and look
 * again once the burst settles (udev creates a device node, then its by-id links). */
static int on_inotify(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_inventory *inv = userdata;
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool any = false, lost = false;

        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                any = true;
                for (ssize_t off = 0; off + (ssize_t) sizeof(struct inotify_event) <= n;) {
                        const struct inotify_event *e = (const void *) (buf + off);

                        /* The directory went (udev removes /dev/serial/by-id with its last
                         * link): its watch is gone, and nothing tells when it comes back. */
                        if (e->mask & (IN_IGNORED | IN_Q_OVERFLOW))
                                lost = true;
                        off += (ssize_t) sizeof(*e) + (ssize_t) e->len;
                }
        }
        if (lost && !inv->paths_polled) {
                gw_log_debug("A watched port directory went away: serial ports are polled");
                inv->paths_polled = true;
                gw_source_set_time(inv->poll, gw_now_ms() + GW_INVENTORY_POLL_MS);
        }
        if (any || (revents & (POLLERR | POLLHUP))) {
                gw_log_debug("Inventory: a serial port directory changed, looking again");
                on_attach_changed(inv);
        }
        return 0;
}

/* Watches the directory of every serial node's port; false when one cannot be watched. */
static bool watch_paths(struct gw_inventory *inv)
{
        bool all = true;

        inv->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (inv->inotify_fd < 0) {
                gw_log_info("No inotify (%m): serial ports are looked for every %d ms",
                            GW_INVENTORY_POLL_MS);
                return false;
        }
        for (size_t i = 0; i < inv->cfg->n_nodes; i++) {
                const struct inv_node *n = &inv->nodes[i];
                char dir[PATH_MAX];
                const char *port, *slash;
                size_t len;

                if (n->kind != LINK_PATH)
                        continue;
                port = gw_options_get(n->cfg->transport_opts, "port");
                slash = strrchr(port, '/');
                if ((size_t) (slash - port) >= sizeof(dir)) {
                        all = false;
                        continue;
                }
                len = slash == port ? 1 : (size_t) (slash - port); /* "/tty0": "/" */
                memcpy(dir, port, len);
                dir[len] = '\0';
                /* Creation, removal and renames of entries (the port, a link to it), and the
                 * directory itself going away. */
                if (inotify_add_watch(inv->inotify_fd, dir,
                                      IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                          IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) <
                    0) {
                        gw_log_debug("%s: cannot watch %s (%m): its port is polled", n->cfg->name,
                                     dir);
                        all = false;
                }
        }
        if (gw_loop_add_io(inv->loop, inv->inotify_fd, POLLIN, on_inotify, inv, &inv->inotify_io) <
            0)
                return false;
        return all;
}

/* ---- Life cycle ------------------------------------------------------------------------ */

static void node_setup(struct gw_inventory *inv, struct inv_node *n)
{
        const char *port;

        n->kind = LINK_UNKNOWN;
        n->present = GW_PRESENCE_UNKNOWN;
        if (strcmp(n->cfg->transport, "usb") == 0) {
                const struct gw_transport_ops *t = gw_transport_find("usb");
                const struct gw_link_info any = {.transport = "usb"};

                if (!t || t->version < 2 || !t->claims || !t->enumerate)
                        return;
                if (t->claims(n->cfg->transport_opts, &any) < 0)
                        gw_log_warning("%s: bad usb options; the inventory does not tell whether "
                                       "it is present",
                                       n->cfg->name);
                else
                        n->kind = LINK_USB;
                return;
        }
        port = gw_options_get(n->cfg->transport_opts, "port");
        if (port && port[0] == '/') {
                n->kind = LINK_PATH;
                inv->has_paths = true;
        }
}

int gw_inventory_new(struct gw_loop *loop, const struct gw_config *cfg,
                     void (*changed)(void *userdata), void *userdata, struct gw_inventory **ret)
{
        struct gw_inventory *inv = calloc(1, sizeof(*inv));
        const struct gw_transport_ops *usb;
        int r;

        if (!inv)
                return -ENOMEM;
        inv->inotify_fd = -1;
        inv->loop = loop;
        inv->cfg = cfg;
        inv->changed = changed;
        inv->userdata = userdata;
        inv->svc = (struct gw_plugin_services){
            .version = GW_SERVICES_VERSION,
            .ctx = inv,
            .logv = inv_logv,
            .now_ms = inv_now,
            .watch_fd = inv_watch_fd,
            .unwatch_fd = inv_unwatch_fd,
        };
        inv->nodes = calloc(cfg->n_nodes ? cfg->n_nodes : 1, sizeof(*inv->nodes));
        if (!inv->nodes) {
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < cfg->n_nodes; i++) {
                inv->nodes[i].cfg = &cfg->nodes[i];
                node_setup(inv, &inv->nodes[i]);
        }
        r = gw_loop_add_timer(loop, 0, on_debounce, inv, &inv->debounce);
        if (r >= 0)
                r = gw_loop_add_timer(loop, 0, on_poll, inv, &inv->poll);
        if (r < 0)
                goto fail;

        /* USB devices are listed even when no node is on USB: a board just plugged in is what
         * an operator looks for before configuring it. */
        usb = gw_transport_find("usb");
        if (usb && usb->enumerate) {
                inv->usb = usb;
                if (usb->version >= 2 && usb->watch_attach && usb->unwatch_attach) {
                        r = usb->watch_attach(&inv->svc, on_attach_changed, inv, &inv->usb_watch);
                        if (r < 0) {
                                gw_log_info("No USB hotplug reports (%s): USB devices are looked "
                                            "for every %d ms",
                                            strerror(-r), GW_INVENTORY_POLL_MS);
                                inv->usb_watch = NULL;
                        }
                }
        }
        inv->paths_polled = inv->has_paths && !watch_paths(inv);
        r = gw_inventory_refresh(inv);
        if (r < 0)
                goto fail;
        inv->started = true;
        if (inv->paths_polled || (inv->usb && !inv->usb_watch))
                gw_source_set_time(inv->poll, gw_now_ms() + GW_INVENTORY_POLL_MS);
        *ret = inv;
        return 0;
fail:
        gw_inventory_free(inv);
        return r;
}

struct gw_inventory *gw_inventory_free(struct gw_inventory *inv)
{
        if (!inv)
                return NULL;
        /* First: it unwatches its fds through our services. */
        if (inv->usb_watch)
                inv->usb->unwatch_attach(inv->usb_watch);
        while (inv->watches) {
                struct watch *w = inv->watches;

                inv->watches = w->next;
                gw_source_free(w->source);
                free(w);
        }
        gw_source_free(inv->inotify_io);
        if (inv->inotify_fd >= 0)
                close(inv->inotify_fd);
        gw_source_free(inv->debounce);
        gw_source_free(inv->poll);
        devices_free(inv->attached, inv->n_attached);
        free(inv->nodes);
        free(inv);
        return NULL;
}

int gw_inventory_json(const struct gw_inventory *inv, struct gw_inventory_node *nodes,
                      size_t n_nodes, time_t ts, char **ret)
{
        struct gw_inventory_device *devs;
        int r;

        if (!inv || n_nodes != inv->cfg->n_nodes)
                return -EINVAL;
        for (size_t i = 0; i < n_nodes; i++)
                nodes[i].present = inv->nodes[i].present;
        devs = calloc(inv->n_attached ? inv->n_attached : 1, sizeof(*devs));
        if (!devs)
                return -ENOMEM;
        for (size_t j = 0; j < inv->n_attached; j++)
                devs[j] = (struct gw_inventory_device){
                    .vid = inv->attached[j].vid,
                    .pid = inv->attached[j].pid,
                    .serial = inv->attached[j].serial,
                    .path = inv->attached[j].path,
                    .description = inv->attached[j].description,
                };
        r = gw_status_inventory_attached_json(nodes, n_nodes, devs, inv->n_attached, ts, ret);
        free(devs);
        return r;
}
