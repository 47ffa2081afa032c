/* The none transport: a stream link to nothing, for protocols that reach the node themselves
 * (exec runs an external flasher that opens its own cable). open() never fails; the link never
 * has input, and whatever is written to it is discarded. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "gw/plugin.h"

#include "debug.h"

/* The longest port a node may name (PATH_MAX). */
#define PORT_MAX 4096

struct none {
        const struct gw_plugin_services *svc;
        int fd; /* an eventfd never signalled: the core polls it and never hears from it */
        size_t discarded;
};

static int none_check(const struct gw_options *opts, char *why, size_t why_size)
{
        const char *port = gw_options_get(opts, "port");

        if (port && (port[0] == '\0' || strlen(port) >= PORT_MAX)) {
                snprintf(why, why_size, "option port: expected 1 to %d bytes", PORT_MAX - 1);
                return -EINVAL;
        }
        return 0;
}

static int none_open(void *priv, const struct gw_options *opts,
                     const struct gw_plugin_services *svc)
{
        struct none *n = priv;
        char why[128];
        int r;

        n->svc = svc;
        r = none_check(opts, why, sizeof(why));
        if (r < 0) {
                gw_transport_debug(svc, "none: %s", why);
                return r;
        }
        /* Only fails when the process is out of fds or memory. */
        n->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (n->fd < 0)
                return -errno;
        gw_transport_debug(svc, "none: a link to nothing%s%s",
                           gw_options_get(opts, "port") ? " for " : "",
                           gw_options_get(opts, "port") ? gw_options_get(opts, "port") : "");
        return 0;
}

static void none_close(void *priv)
{
        struct none *n = priv;

        if (n->discarded)
                gw_transport_debug(n->svc, "none: discarded %zu bytes written", n->discarded);
        if (n->fd >= 0)
                close(n->fd);
        n->fd = -1;
}

static int none_get_fd(void *priv)
{
        struct none *n = priv;

        return n->fd;
}

static ssize_t none_read(void *priv, void *buf, size_t len)
{
        return -EAGAIN;
}

static ssize_t none_write(void *priv, const void *buf, size_t len)
{
        struct none *n = priv;

        n->discarded += len;
        return (ssize_t) len;
}

static const char *const none_options[] = {"port", NULL};

const struct gw_transport_ops gw_transport_none_ops = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "none",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct none),
    .open = none_open,
    .close = none_close,
    .get_fd = none_get_fd,
    .read = none_read,
    .write = none_write,
    .enumerate = NULL,
    .options = none_options,
    .check = none_check,
};
