/* The plugin registry: one static table of built-in transports and protocols (each behind
 * its meson feature), plus out-of-tree modules loaded with dlopen through one entry symbol. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-config.h"
#include "gw/log.h"
#include "gw/registry.h"

#ifdef GW_BUILTIN_TRANSPORT_UART
extern const struct gw_transport_ops gw_transport_uart_ops;
#endif
#ifdef GW_BUILTIN_TRANSPORT_USB
extern const struct gw_transport_ops gw_transport_usb_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_YMODEM
extern const struct gw_protocol_ops gw_protocol_ymodem_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_DFU
extern const struct gw_protocol_ops gw_protocol_dfu_ops;
#endif

static const struct gw_transport_ops *const builtin_transports[] = {
#ifdef GW_BUILTIN_TRANSPORT_UART
    &gw_transport_uart_ops,
#endif
#ifdef GW_BUILTIN_TRANSPORT_USB
    &gw_transport_usb_ops,
#endif
    NULL,
};

static const struct gw_protocol_ops *const builtin_protocols[] = {
#ifdef GW_BUILTIN_PROTOCOL_YMODEM
    &gw_protocol_ymodem_ops,
#endif
#ifdef GW_BUILTIN_PROTOCOL_DFU
    &gw_protocol_dfu_ops,
#endif
    NULL,
};

/* Modules loaded at run time; a gateway has a handful at most. */
#define LOADED_MAX 32

static const struct gw_transport_ops *loaded_transports[LOADED_MAX];
static const struct gw_protocol_ops *loaded_protocols[LOADED_MAX];
static size_t n_loaded_transports, n_loaded_protocols;

const char *gw_link_shape_to_string(enum gw_link_shape s)
{
        switch (s) {
        case GW_LINK_STREAM:
                return "stream";
        case GW_LINK_CONTROL:
                return "control";
        case GW_LINK_FRAMES:
                return "frames";
        }
        return NULL;
}

static size_t builtin_count(const void *const *table)
{
        size_t n = 0;

        while (table[n])
                n++;
        return n;
}

const struct gw_transport_ops *gw_transport_get(size_t i)
{
        size_t nb = builtin_count((const void *const *) builtin_transports);

        if (i < nb)
                return builtin_transports[i];
        i -= nb;
        return i < n_loaded_transports ? loaded_transports[i] : NULL;
}

const struct gw_protocol_ops *gw_protocol_get(size_t i)
{
        size_t nb = builtin_count((const void *const *) builtin_protocols);

        if (i < nb)
                return builtin_protocols[i];
        i -= nb;
        return i < n_loaded_protocols ? loaded_protocols[i] : NULL;
}

const struct gw_transport_ops *gw_transport_find(const char *name)
{
        const struct gw_transport_ops *t;

        for (size_t i = 0; name && (t = gw_transport_get(i)); i++)
                if (strcmp(t->name, name) == 0)
                        return t;
        return NULL;
}

const struct gw_protocol_ops *gw_protocol_find(const char *name)
{
        const struct gw_protocol_ops *p;

        for (size_t i = 0; name && (p = gw_protocol_get(i)); i++)
                if (strcmp(p->name, name) == 0)
                        return p;
        return NULL;
}

static int check_transport(const char *path, const struct gw_transport_ops *t)
{
        if (t->version < 1 || !t->name || !t->open || !t->close)
                return gw_log_error_errno(-EINVAL, "Plugin %s: transport ops incomplete", path);
        if (t->shape == GW_LINK_STREAM && (!t->get_fd || !t->read || !t->write))
                return gw_log_error_errno(-EINVAL, "Plugin %s: stream transport %s lacks I/O ops",
                                          path, t->name);
        if (gw_transport_find(t->name))
                return gw_log_error_errno(-EEXIST, "Plugin %s: transport %s is already known", path,
                                          t->name);
        return 0;
}

static int check_protocol(const char *path, const struct gw_protocol_ops *p)
{
        if (p->version < 1 || !p->name || !p->init || !p->done || !p->install || !p->timeout)
                return gw_log_error_errno(-EINVAL, "Plugin %s: protocol ops incomplete", path);
        if (gw_protocol_find(p->name))
                return gw_log_error_errno(-EEXIST, "Plugin %s: protocol %s is already known", path,
                                          p->name);
        return 0;
}

int gw_plugin_load(const char *path)
{
        const struct gw_plugin_desc *d;
        gw_plugin_entry_fn entry;
        void *h;
        int r;

        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h)
                return gw_log_error_errno(-ENOEXEC, "Failed to load plugin %s: %s", path,
                                          dlerror());
        *(void **) &entry = dlsym(h, GW_PLUGIN_ENTRY_SYMBOL);
        if (!entry) {
                dlclose(h);
                return gw_log_error_errno(-ENOEXEC, "Plugin %s has no %s() entry point", path,
                                          GW_PLUGIN_ENTRY_SYMBOL);
        }
        d = entry();
        if (!d) {
                dlclose(h);
                return gw_log_error_errno(-ENOEXEC, "Plugin %s: %s() returned nothing", path,
                                          GW_PLUGIN_ENTRY_SYMBOL);
        }
        if (d->abi_version != GW_PLUGIN_ABI_VERSION) {
                r = gw_log_error_errno(-EPROTO,
                                       "Plugin %s was built for plugin ABI %u, this gatewayd "
                                       "speaks ABI %u: rebuild the plugin against these headers",
                                       path, d->abi_version, GW_PLUGIN_ABI_VERSION);
                dlclose(h);
                return r;
        }
        if (d->transport) {
                r = check_transport(path, d->transport);
                if (r >= 0 && n_loaded_transports >= LOADED_MAX)
                        r = gw_log_error_errno(-ENOSPC, "Plugin %s: too many plugins", path);
                if (r < 0) {
                        dlclose(h);
                        return r;
                }
        }
        if (d->protocol) {
                r = check_protocol(path, d->protocol);
                if (r >= 0 && n_loaded_protocols >= LOADED_MAX)
                        r = gw_log_error_errno(-ENOSPC, "Plugin %s: too many plugins", path);
                if (r < 0) {
                        dlclose(h);
                        return r;
                }
        }
        if (!d->transport && !d->protocol) {
                dlclose(h);
                return gw_log_error_errno(-ENOEXEC, "Plugin %s provides nothing", path);
        }
        /* The module stays loaded for the life of the process: its ops are referenced. */
        if (d->transport)
                loaded_transports[n_loaded_transports++] = d->transport;
        if (d->protocol)
                loaded_protocols[n_loaded_protocols++] = d->protocol;
        gw_log_debug("Loaded plugin %s from %s", d->name ? d->name : "?", path);
        return 0;
}

int gw_plugin_load_dir(const char *dir)
{
        struct dirent *de;
        int loaded = 0;
        DIR *d;

        d = opendir(dir);
        if (!d) {
                if (errno == ENOENT)
                        return 0;
                return gw_log_error_errno(-errno, "Failed to open plugin directory %s: %m", dir);
        }
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                char path[4096];

                if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0)
                        continue;
                if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= (int) sizeof(path))
                        continue;
                if (gw_plugin_load(path) >= 0)
                        loaded++;
                else
                        gw_log_warning("Skipping plugin %s, ignoring", path);
        }
        closedir(d);
        return loaded;
}
