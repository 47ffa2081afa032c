/* A small out-of-tree plugin for test-plugin: built as a shared module twice, once with the
 * right ABI version and once (DUMMY_ABI set) with a wrong one. */
#include <errno.h>

#include "gw/plugin.h"

#ifndef DUMMY_ABI
#define DUMMY_ABI GW_PLUGIN_ABI_VERSION
#endif
#ifndef DUMMY_NAME
#define DUMMY_NAME "dummy"
#endif

struct dummy {
        int fd;
};

static int dummy_open(void *priv, const struct gw_options *opts,
                      const struct gw_plugin_services *svc)
{
        struct dummy *d = priv;

        d->fd = -1;
        return gw_options_get(opts, "fail") ? -EIO : 0;
}

static void dummy_close(void *priv)
{
}

static int dummy_get_fd(void *priv)
{
        return ((struct dummy *) priv)->fd;
}

static ssize_t dummy_read(void *priv, void *buf, size_t n)
{
        return -EAGAIN;
}

static ssize_t dummy_write(void *priv, const void *buf, size_t n)
{
        return (ssize_t) n;
}

static const struct gw_transport_ops dummy_transport = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = DUMMY_NAME,
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct dummy),
    .open = dummy_open,
    .close = dummy_close,
    .get_fd = dummy_get_fd,
    .read = dummy_read,
    .write = dummy_write,
};

static const struct gw_plugin_desc dummy_desc = {
    .abi_version = DUMMY_ABI,
    .name = DUMMY_NAME,
    .transport = &dummy_transport,
};

const struct gw_plugin_desc *gw_plugin_entry(void);

const struct gw_plugin_desc *gw_plugin_entry(void)
{
        return &dummy_desc;
}
