/* The plugin registry: one static table of built-in transports and protocols (each behind
 * its meson feature), plus out-of-tree modules loaded with dlopen through one entry symbol. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-config.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/options.h"
#include "gw/registry.h"

#ifdef GW_BUILTIN_TRANSPORT_UART
extern const struct gw_transport_ops gw_transport_uart_ops;
#endif
#ifdef GW_BUILTIN_TRANSPORT_USB
extern const struct gw_transport_ops gw_transport_usb_ops;
#endif
#ifdef GW_BUILTIN_TRANSPORT_CAN
extern const struct gw_transport_ops gw_transport_can_ops;
#endif
#ifdef GW_BUILTIN_TRANSPORT_NONE
extern const struct gw_transport_ops gw_transport_none_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_YMODEM
extern const struct gw_protocol_ops gw_protocol_ymodem_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_DFU
extern const struct gw_protocol_ops gw_protocol_dfu_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_UDS
extern const struct gw_protocol_ops gw_protocol_uds_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_STM32
extern const struct gw_protocol_ops gw_protocol_stm32_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_SMP
extern const struct gw_protocol_ops gw_protocol_smp_ops;
#endif
#ifdef GW_BUILTIN_PROTOCOL_EXEC
extern const struct gw_protocol_ops gw_protocol_exec_ops;
#endif

static const struct gw_transport_ops *const builtin_transports[] = {
#ifdef GW_BUILTIN_TRANSPORT_UART
    &gw_transport_uart_ops,
#endif
#ifdef GW_BUILTIN_TRANSPORT_USB
    &gw_transport_usb_ops,
#endif
#ifdef GW_BUILTIN_TRANSPORT_CAN
    &gw_transport_can_ops,
#endif
#ifdef GW_BUILTIN_TRANSPORT_NONE
    &gw_transport_none_ops,
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
#ifdef GW_BUILTIN_PROTOCOL_UDS
    &gw_protocol_uds_ops,
#endif
#ifdef GW_BUILTIN_PROTOCOL_STM32
    &gw_protocol_stm32_ops,
#endif
#ifdef GW_BUILTIN_PROTOCOL_SMP
    &gw_protocol_smp_ops,
#endif
#ifdef GW_BUILTIN_PROTOCOL_EXEC
    &gw_protocol_exec_ops,
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

/* Option checking. */

static bool key_listed(const char *const *keys, const char *key)
{
        for (size_t i = 0; keys[i]; i++)
                if (strcmp(keys[i], key) == 0)
                        return true;
        return false;
}

/* "port, baud, ..." into buf, truncated to fit. */
static void join_keys(const char *const *keys, char *buf, size_t n)
{
        size_t used = 0;

        buf[0] = '\0';
        for (size_t i = 0; keys[i] && used < n; i++)
                used += (size_t) snprintf(buf + used, n - used, "%s%s", i ? ", " : "", keys[i]);
}

static const char *const *transport_keys(const struct gw_transport_ops *t)
{
        return t && t->version >= 3 ? t->options : NULL;
}

static const char *const *protocol_keys(const struct gw_protocol_ops *p)
{
        return p && p->version >= 3 ? p->options : NULL;
}

/* A key of opts that no list knows, or NULL. A NULL list (a plugin that cannot tell) knows
 * every key. */
static const char *unknown_key(const struct gw_options *opts, const char *const *a,
                               const char *const *b, bool either)
{
        if (!a || (either && !b))
                return NULL;
        for (size_t i = 0; i < gw_options_count(opts); i++) {
                const char *key = gw_options_key(opts, i);

                if (!key_listed(a, key) && !(either && key_listed(b, key)))
                        return key;
        }
        return NULL;
}

/* The host handed to init() for checking: it keeps the reason init() gives. */
struct check_host {
        char *why;
        size_t why_size;
};

__attribute__((format(printf, 3, 0))) static void check_logv(void *ctx, int level, const char *fmt,
                                                             va_list ap)
{
}

static uint64_t check_now_ms(void *ctx)
{
        return gw_now_ms();
}

static void check_set_deadline(void *ctx, uint64_t at_ms)
{
}

static void check_progress(void *ctx, uint64_t done, uint64_t total)
{
}

__attribute__((format(printf, 2, 3))) static void check_set_error(void *ctx, const char *fmt, ...)
{
        struct check_host *c = ctx;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(c->why, c->why_size, fmt, ap);
        va_end(ap);
}

/* What check_instance() runs on the instance init() prepared. */
enum check_op {
        CHECK_OPTIONS,    /* init() alone */
        CHECK_IMAGE,      /* check_image() */
        CHECK_INSTALLED,  /* installed() */
        CHECK_REIDENTIFY, /* identifies_after_install() */
};

/* Runs init() on a fresh instance with a host that keeps the reason it gives, then, when init()
 * took the options, the op. Returns what the op returned (installed(): 0 or 1), or -errno. */
static int check_instance(const struct gw_protocol_ops *p, const struct gw_options *opts,
                          enum check_op op, const struct gw_reader *reader,
                          const struct gw_options *facts, char *why, size_t why_size)
{
        struct check_host c = {.why = why, .why_size = why_size};
        struct gw_proto_host host = {
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &c,
            .logv = check_logv,
            .now_ms = check_now_ms,
            .set_deadline = check_set_deadline,
            .progress = check_progress,
            .set_error = check_set_error,
        };
        void *priv;
        int r;

        priv = calloc(1, p->priv_size ? p->priv_size : 1);
        if (!priv)
                return -ENOMEM;
        why[0] = '\0';
        r = p->init(priv, opts, &host);
        if (r >= 0) {
                if (op == CHECK_IMAGE)
                        r = p->check_image(priv, reader, facts);
                else if (op == CHECK_INSTALLED)
                        r = p->installed(priv, reader, facts);
                else if (op == CHECK_REIDENTIFY)
                        r = p->identifies_after_install(priv);
                p->done(priv);
        }
        free(priv);
        if (r < 0 && !why[0])
                snprintf(why, why_size, "%s (%s)",
                         op == CHECK_OPTIONS ? "invalid options" : "image refused", strerror(-r));
        if (r < 0)
                return r;
        return op == CHECK_INSTALLED || op == CHECK_REIDENTIFY ? (r > 0) : 0;
}

static int check_protocol_values(const struct gw_protocol_ops *p, const struct gw_options *opts,
                                 char *why, size_t why_size)
{
        return check_instance(p, opts, CHECK_OPTIONS, NULL, NULL, why, why_size);
}

int gw_plugin_check_image(const struct gw_protocol_ops *p, const struct gw_options *popts,
                          const struct gw_reader *reader, const struct gw_options *facts, char *why,
                          size_t why_size)
{
        if (!p || !popts || !reader || !why || why_size == 0)
                return -EINVAL;
        if (p->version < 4 || !p->check_image)
                return 0;
        return check_instance(p, popts, CHECK_IMAGE, reader, facts, why, why_size);
}

int gw_plugin_installed(const struct gw_protocol_ops *p, const struct gw_options *popts,
                        const struct gw_reader *reader, const struct gw_options *facts, char *why,
                        size_t why_size)
{
        if (!p || !popts || !reader || !why || why_size == 0)
                return -EINVAL;
        if (p->version < 5 || !p->installed || !facts)
                return 0;
        return check_instance(p, popts, CHECK_INSTALLED, reader, facts, why, why_size);
}

int gw_plugin_link_options(const struct gw_protocol_ops *p, const struct gw_options *topts,
                           struct gw_options **ret)
{
        struct gw_options *o = gw_options_new();
        int r = o ? 0 : -ENOMEM;

        if (r >= 0 && p && p->version >= 5 && p->link_defaults)
                for (size_t i = 0; p->link_defaults[i] && r >= 0; i++) {
                        r = gw_options_set_kv(o, p->link_defaults[i]);
                        if (r == -EINVAL)
                                r = 0; /* a malformed default of the plugin's: ignored */
                }
        if (r >= 0)
                r = gw_options_merge(o, topts);
        if (r < 0) {
                gw_options_free(o);
                return r;
        }
        *ret = o;
        return 0;
}

int gw_plugin_check_options(const struct gw_transport_ops *t, const struct gw_options *topts,
                            const struct gw_protocol_ops *p, const struct gw_options *popts,
                            char *why, size_t why_size)
{
        bool same = topts == popts;
        char reason[256], keys[512];
        const char *key;
        int r;

        if (!t || !p || !topts || !popts || !why || why_size == 0)
                return -EINVAL;
        key = unknown_key(topts, transport_keys(t), protocol_keys(p), same);
        if (key) {
                join_keys(transport_keys(t), keys, sizeof(keys));
                if (same) {
                        char pkeys[512];

                        join_keys(protocol_keys(p), pkeys, sizeof(pkeys));
                        snprintf(why, why_size,
                                 "unknown option '%s' (transport %s reads %s; protocol %s reads "
                                 "%s)",
                                 key, t->name, keys, p->name, pkeys);
                } else {
                        snprintf(why, why_size, "transport %s: unknown option '%s' (it reads %s)",
                                 t->name, key, keys);
                }
                return -EINVAL;
        }
        if (!same) {
                key = unknown_key(popts, protocol_keys(p), NULL, false);
                if (key) {
                        join_keys(protocol_keys(p), keys, sizeof(keys));
                        snprintf(why, why_size, "protocol %s: unknown option '%s' (it reads %s)",
                                 p->name, key, keys);
                        return -EINVAL;
                }
        }
        if (t->version >= 3 && t->check) {
                struct gw_options *linked;

                r = gw_plugin_link_options(p, topts, &linked);
                if (r < 0)
                        return r;
                reason[0] = '\0';
                r = t->check(linked, reason, sizeof(reason));
                gw_options_free(linked);
                if (r < 0) {
                        snprintf(why, why_size, "transport %s: %s", t->name,
                                 reason[0] ? reason : strerror(-r));
                        return r;
                }
        }
        r = check_protocol_values(p, popts, reason, sizeof(reason));
        if (r < 0) {
                snprintf(why, why_size, "protocol %s: %s", p->name, reason);
                return r;
        }
        return 0;
}

int gw_plugin_check_image_options(const struct gw_protocol_ops *p,
                                  const struct gw_options *image_opts, char *why, size_t why_size)
{
        if (!p || !why || why_size == 0)
                return -EINVAL;
        if (p->version < 7 || !p->node_options)
                return 0;
        for (size_t i = 0; i < gw_options_count(image_opts); i++) {
                const char *key = gw_options_key(image_opts, i);

                if (key_listed(p->node_options, key)) {
                        snprintf(why, why_size,
                                 "protocol %s: option '%s' is the node's own (gatewayd.yaml); a "
                                 "manifest cannot set it",
                                 p->name, key);
                        return -EPERM;
                }
        }
        return 0;
}

bool gw_plugin_identifies_after_install(const struct gw_protocol_ops *p,
                                        const struct gw_options *popts)
{
        char why[256];

        if (!p || !p->identify)
                return false;
        if (p->version < 8 || !p->identifies_after_install)
                return true;
        return check_instance(p, popts, CHECK_REIDENTIFY, NULL, NULL, why, sizeof(why)) == 1;
}
