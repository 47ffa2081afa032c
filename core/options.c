/* Ordered string key/value pairs: plugin settings from the configuration, the manifest or
 * the command line, with strict typed getters. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gw/options.h"

/* A node or image never needs more; the configuration and manifest parsers bound their input
 * further. */
#define OPTIONS_MAX 256

struct gw_option {
        char *key;
        char *value;
};

struct gw_options {
        struct gw_option *items;
        size_t n, allocated;
};

struct gw_options *gw_options_new(void)
{
        return calloc(1, sizeof(struct gw_options));
}

struct gw_options *gw_options_free(struct gw_options *o)
{
        if (!o)
                return NULL;
        for (size_t i = 0; i < o->n; i++) {
                free(o->items[i].key);
                free(o->items[i].value);
        }
        free(o->items);
        free(o);
        return NULL;
}

static struct gw_option *find(const struct gw_options *o, const char *key)
{
        if (!o || !key)
                return NULL;
        for (size_t i = 0; i < o->n; i++)
                if (strcmp(o->items[i].key, key) == 0)
                        return &o->items[i];
        return NULL;
}

int gw_options_set(struct gw_options *o, const char *key, const char *value)
{
        struct gw_option *opt;
        char *v;

        if (!o || !key || !value || !*key)
                return -EINVAL;
        v = strdup(value);
        if (!v)
                return -ENOMEM;
        opt = find(o, key);
        if (opt) {
                free(opt->value);
                opt->value = v;
                return 0;
        }
        if (o->n >= OPTIONS_MAX) {
                free(v);
                return -E2BIG;
        }
        if (o->n == o->allocated) {
                size_t na = o->allocated ? o->allocated * 2 : 8;
                struct gw_option *ni = realloc(o->items, na * sizeof(*ni));

                if (!ni) {
                        free(v);
                        return -ENOMEM;
                }
                o->items = ni;
                o->allocated = na;
        }
        o->items[o->n].key = strdup(key);
        if (!o->items[o->n].key) {
                free(v);
                return -ENOMEM;
        }
        o->items[o->n].value = v;
        o->n++;
        return 0;
}

int gw_options_set_kv(struct gw_options *o, const char *kv)
{
        const char *eq = kv ? strchr(kv, '=') : NULL;
        char *key;
        int r;

        if (!eq || eq == kv)
                return -EINVAL;
        key = strndup(kv, (size_t) (eq - kv));
        if (!key)
                return -ENOMEM;
        r = gw_options_set(o, key, eq + 1);
        free(key);
        return r;
}

int gw_options_merge(struct gw_options *dst, const struct gw_options *src)
{
        if (!src)
                return 0;
        for (size_t i = 0; i < src->n; i++) {
                int r = gw_options_set(dst, src->items[i].key, src->items[i].value);

                if (r < 0)
                        return r;
        }
        return 0;
}

size_t gw_options_count(const struct gw_options *o)
{
        return o ? o->n : 0;
}

const char *gw_options_key(const struct gw_options *o, size_t i)
{
        return o && i < o->n ? o->items[i].key : NULL;
}

const char *gw_options_value(const struct gw_options *o, size_t i)
{
        return o && i < o->n ? o->items[i].value : NULL;
}

const char *gw_options_get(const struct gw_options *o, const char *key)
{
        struct gw_option *opt = find(o, key);

        return opt ? opt->value : NULL;
}

int gw_parse_u64(const char *s, uint64_t *ret)
{
        unsigned long long v;
        char *end;
        int base = 10;

        if (!s || !*s)
                return -EINVAL;
        /* strtoull accepts leading space and a sign: we do not. */
        if (s[0] < '0' || s[0] > '9')
                return -EINVAL;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
                base = 16;
                s += 2;
                if (!*s || *s == '-' || *s == '+' || *s == ' ')
                        return -EINVAL;
        }
        errno = 0;
        v = strtoull(s, &end, base);
        if (errno == ERANGE)
                return -ERANGE;
        if (errno != 0 || *end != '\0')
                return -EINVAL;
        *ret = v;
        return 0;
}

int gw_options_get_u64(const struct gw_options *o, const char *key, uint64_t def, uint64_t min,
                       uint64_t max, uint64_t *ret)
{
        const char *s = gw_options_get(o, key);
        uint64_t v;
        int r;

        if (!s) {
                *ret = def;
                return 0;
        }
        r = gw_parse_u64(s, &v);
        if (r < 0)
                return -EINVAL;
        if (v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

int gw_options_get_bool(const struct gw_options *o, const char *key, bool def, bool *ret)
{
        static const char *const yes[] = {"true", "yes", "1", "on"};
        static const char *const no[] = {"false", "no", "0", "off"};
        const char *s = gw_options_get(o, key);

        if (!s) {
                *ret = def;
                return 0;
        }
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}
