/* A bounded YAML loader (libyaml events into a small tree, with the depth, alias, tag, scalar
 * and node limits libyaml itself lacks) and the strict schema helpers built on it: every
 * failure names the path of the offending field. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "manifest-internal.h"

struct loader {
        yaml_parser_t parser;
        enum gw_error code;
        struct gw_manifest_error *err;
        size_t nodes;
};

struct ynode *gw_ytree_free(struct ynode *n)
{
        if (!n)
                return NULL;
        for (size_t i = 0; i < n->n; i++)
                gw_ytree_free(n->items[i]);
        free(n->items);
        free(n->value);
        free(n);
        return NULL;
}

static int next_event(struct loader *l, yaml_event_t *ev)
{
        if (yaml_parser_parse(&l->parser, ev))
                return 0;
        return gw_manifest_fail(l->err, l->code, "YAML syntax error at line %zu column %zu: %s",
                                l->parser.problem_mark.line + 1, l->parser.problem_mark.column + 1,
                                l->parser.problem ? l->parser.problem : "unknown problem");
}

static int check_props(struct loader *l, const yaml_event_t *ev, const yaml_char_t *anchor,
                       const yaml_char_t *tag)
{
        if (anchor)
                return gw_manifest_fail(l->err, l->code, "line %zu: anchors are not allowed",
                                        ev->start_mark.line + 1);
        if (tag)
                return gw_manifest_fail(l->err, l->code, "line %zu: tags are not allowed",
                                        ev->start_mark.line + 1);
        if (++l->nodes > GW_MANIFEST_YAML_MAX_NODES)
                return gw_manifest_fail(l->err, l->code, "line %zu: more than %d nodes",
                                        ev->start_mark.line + 1, GW_MANIFEST_YAML_MAX_NODES);
        return 0;
}

static int append_item(struct loader *l, struct ynode *parent, struct ynode *child, size_t *alloc)
{
        if (parent->n == *alloc) {
                size_t na = *alloc ? *alloc * 2 : 8;
                struct ynode **v = realloc(parent->items, na * sizeof(*v));

                if (!v)
                        return gw_manifest_fail(l->err, GW_ERR_INTERNAL, "out of memory");
                parent->items = v;
                *alloc = na;
        }
        parent->items[parent->n++] = child;
        return 0;
}

/* Builds the node that starts with ev (consumed by the caller). */
static int load_node(struct loader *l, yaml_event_t *ev, unsigned depth, struct ynode **ret)
{
        struct ynode *n;
        yaml_event_type_t end = YAML_NO_EVENT;
        size_t alloc = 0;
        int r;

        if (ev->type == YAML_ALIAS_EVENT)
                return gw_manifest_fail(l->err, l->code, "line %zu: aliases are not allowed",
                                        ev->start_mark.line + 1);
        if (depth > GW_MANIFEST_YAML_MAX_DEPTH)
                return gw_manifest_fail(l->err, l->code, "line %zu: nested deeper than %d",
                                        ev->start_mark.line + 1, GW_MANIFEST_YAML_MAX_DEPTH);

        n = calloc(1, sizeof(*n));
        if (!n)
                return gw_manifest_fail(l->err, GW_ERR_INTERNAL, "out of memory");
        n->line = (unsigned) ev->start_mark.line + 1;

        switch (ev->type) {
        case YAML_SCALAR_EVENT:
                r = check_props(l, ev, ev->data.scalar.anchor, ev->data.scalar.tag);
                if (r < 0)
                        goto fail;
                if (ev->data.scalar.length > GW_MANIFEST_YAML_MAX_SCALAR) {
                        r = gw_manifest_fail(l->err, l->code,
                                             "line %u: scalar longer than %d bytes", n->line,
                                             GW_MANIFEST_YAML_MAX_SCALAR);
                        goto fail;
                }
                if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
                        r = gw_manifest_fail(l->err, l->code, "line %u: NUL in scalar", n->line);
                        goto fail;
                }
                n->type = YNODE_SCALAR;
                n->len = ev->data.scalar.length;
                n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
                n->value = malloc(n->len + 1);
                if (!n->value) {
                        r = gw_manifest_fail(l->err, GW_ERR_INTERNAL, "out of memory");
                        goto fail;
                }
                memcpy(n->value, ev->data.scalar.value, n->len);
                n->value[n->len] = '\0';
                *ret = n;
                return 0;
        case YAML_SEQUENCE_START_EVENT:
                r = check_props(l, ev, ev->data.sequence_start.anchor, ev->data.sequence_start.tag);
                n->type = YNODE_SEQ;
                end = YAML_SEQUENCE_END_EVENT;
                break;
        case YAML_MAPPING_START_EVENT:
                r = check_props(l, ev, ev->data.mapping_start.anchor, ev->data.mapping_start.tag);
                n->type = YNODE_MAP;
                end = YAML_MAPPING_END_EVENT;
                break;
        default:
                r = gw_manifest_fail(l->err, l->code, "line %u: unexpected YAML event", n->line);
                break;
        }
        if (r < 0)
                goto fail;

        for (;;) {
                yaml_event_t child_ev;
                struct ynode *child = NULL;

                r = next_event(l, &child_ev);
                if (r < 0)
                        goto fail;
                if (child_ev.type == end) {
                        yaml_event_delete(&child_ev);
                        break;
                }
                r = load_node(l, &child_ev, depth + 1, &child);
                yaml_event_delete(&child_ev);
                if (r < 0)
                        goto fail;
                r = append_item(l, n, child, &alloc);
                if (r < 0) {
                        gw_ytree_free(child);
                        goto fail;
                }
        }
        *ret = n;
        return 0;
fail:
        gw_ytree_free(n);
        return r;
}

int gw_ytree_load(const void *buf, size_t len, enum gw_error code, struct ynode **ret,
                  struct gw_manifest_error *err)
{
        struct loader l = {.code = code, .err = err};
        struct ynode *root = NULL;
        yaml_event_t ev;
        int r;

        if (!yaml_parser_initialize(&l.parser))
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        yaml_parser_set_input_string(&l.parser, buf, len);
        yaml_parser_set_encoding(&l.parser, YAML_UTF8_ENCODING);

        r = next_event(&l, &ev); /* STREAM-START */
        if (r < 0)
                goto out;
        yaml_event_delete(&ev);
        r = next_event(&l, &ev);
        if (r < 0)
                goto out;
        if (ev.type != YAML_DOCUMENT_START_EVENT) {
                yaml_event_delete(&ev);
                r = gw_manifest_fail(err, code, "empty document");
                goto out;
        }
        yaml_event_delete(&ev);

        r = next_event(&l, &ev);
        if (r < 0)
                goto out;
        r = load_node(&l, &ev, 1, &root);
        yaml_event_delete(&ev);
        if (r < 0)
                goto out;

        r = next_event(&l, &ev); /* DOCUMENT-END */
        if (r < 0)
                goto out;
        yaml_event_delete(&ev);
        r = next_event(&l, &ev);
        if (r < 0)
                goto out;
        if (ev.type != YAML_STREAM_END_EVENT) {
                r = gw_manifest_fail(err, code, "line %zu: more than one YAML document",
                                     ev.start_mark.line + 1);
                yaml_event_delete(&ev);
                goto out;
        }
        yaml_event_delete(&ev);
        *ret = root;
        root = NULL;
out:
        gw_ytree_free(root);
        yaml_parser_delete(&l.parser);
        return r;
}

/* ---- schema helpers ---- */

void gw_path_key(char *dst, const char *path, const char *key)
{
        int n = snprintf(dst, GW_PATH_MAX, "%s%s%s", path, *path ? "." : "", key);

        if (n < 0)
                dst[0] = '\0';
}

void gw_path_index(char *dst, const char *path, size_t i)
{
        int n = snprintf(dst, GW_PATH_MAX, "%s[%zu]", path, i);

        if (n < 0)
                dst[0] = '\0';
}

static const char *where(const char *path)
{
        return *path ? path : "document";
}

const struct ynode *gw_ynode_get(const struct ynode *map, const char *key)
{
        if (!map || map->type != YNODE_MAP)
                return NULL;
        for (size_t i = 0; i + 1 < map->n; i += 2)
                if (map->items[i]->type == YNODE_SCALAR && strcmp(map->items[i]->value, key) == 0)
                        return map->items[i + 1];
        return NULL;
}

int gw_schema_map(const struct ynode *n, const char *path, const struct gw_field *fields,
                  struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];

        if (n->type != YNODE_MAP)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: expected a mapping",
                                        where(path));
        for (size_t i = 0; i < n->n; i += 2) {
                const struct ynode *k = n->items[i];
                const struct gw_field *f;

                if (k->type != YNODE_SCALAR)
                        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                "%s: keys must be scalars (line %u)", where(path),
                                                k->line);
                for (f = fields; f->name; f++)
                        if (strcmp(f->name, k->value) == 0)
                                break;
                gw_path_key(sub, path, k->value);
                if (!f->name)
                        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                "%s: unknown field (line %u)", sub, k->line);
                for (size_t j = 0; j < i; j += 2)
                        if (strcmp(n->items[j]->value, k->value) == 0)
                                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                        "%s: duplicate field (line %u)", sub,
                                                        k->line);
        }
        for (const struct gw_field *f = fields; f->name; f++)
                if (f->required && !gw_ynode_get(n, f->name)) {
                        gw_path_key(sub, path, f->name);
                        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: missing field",
                                                sub);
                }
        return 0;
}

static bool is_null(const struct ynode *n)
{
        return n->plain &&
               (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
                strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static bool charset_ok(const char *s, enum gw_charset cs)
{
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                unsigned char c = *p;

                switch (cs) {
                case GW_CHARSET_PRINTABLE:
                        if (c < 0x20 || c == 0x7f)
                                return false;
                        break;
                case GW_CHARSET_NAME:
                        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
                                return false;
                        break;
                case GW_CHARSET_TOKEN:
                        if (c <= 0x20 || c >= 0x7f)
                                return false;
                        break;
                }
        }
        return true;
}

int gw_schema_string(const struct ynode *n, const char *path, size_t max, enum gw_charset cs,
                     char **ret, struct gw_manifest_error *err)
{
        static const char *const cs_names[] = {
            [GW_CHARSET_PRINTABLE] = "printable characters",
            [GW_CHARSET_NAME] = "[A-Za-z0-9._-]",
            [GW_CHARSET_TOKEN] = "printable ASCII without spaces",
        };
        char *s;

        if (n->type != YNODE_SCALAR || is_null(n))
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected a string (line %u)", where(path), n->line);
        if (n->len == 0 || n->len > max || !charset_ok(n->value, cs))
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected 1 to %zu %s (line %u)", where(path), max,
                                        cs_names[cs], n->line);
        s = strdup(n->value);
        if (!s)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        *ret = s;
        return 0;
}

int gw_schema_u64(const struct ynode *n, const char *path, uint64_t min, uint64_t max,
                  uint64_t *ret, struct gw_manifest_error *err)
{
        uint64_t v = 0;

        if (n->type != YNODE_SCALAR || !n->plain || n->len == 0 || n->len > 20 ||
            (n->len > 1 && n->value[0] == '0'))
                goto bad;
        for (size_t i = 0; i < n->len; i++) {
                unsigned d;

                if (n->value[i] < '0' || n->value[i] > '9')
                        goto bad;
                d = (unsigned) (n->value[i] - '0');
                if (v > (UINT64_MAX - d) / 10)
                        goto bad;
                v = v * 10 + d;
        }
        if (v < min || v > max)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: %llu out of range [%llu, %llu] (line %u)", where(path),
                                        (unsigned long long) v, (unsigned long long) min,
                                        (unsigned long long) max, n->line);
        *ret = v;
        return 0;
bad:
        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                "%s: expected an unsigned decimal integer (line %u)", where(path),
                                n->line);
}

int gw_schema_bool(const struct ynode *n, const char *path, bool *ret,
                   struct gw_manifest_error *err)
{
        if (n->type == YNODE_SCALAR && n->plain) {
                if (strcmp(n->value, "true") == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcmp(n->value, "false") == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: expected true or false (line %u)",
                                where(path), n->line);
}

int gw_schema_seq(const struct ynode *n, const char *path, size_t min, size_t max,
                  struct gw_manifest_error *err)
{
        if (n->type != YNODE_SEQ)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: expected a list (line %u)",
                                        where(path), n->line);
        if (n->n < min || n->n > max)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected %zu to %zu entries, got %zu (line %u)",
                                        where(path), min, max, n->n, n->line);
        return 0;
}

void gw_strv_free(char **v, size_t n)
{
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

int gw_schema_strings(const struct ynode *n, const char *path, size_t min, size_t max,
                      size_t maxlen, enum gw_charset cs, char ***ret, size_t *ret_n,
                      struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];
        char **v;
        size_t i;
        int r;

        r = gw_schema_seq(n, path, min, max, err);
        if (r < 0)
                return r;
        v = calloc(n->n + 1, sizeof(*v));
        if (!v)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        for (i = 0; i < n->n; i++) {
                gw_path_index(sub, path, i);
                r = gw_schema_string(n->items[i], sub, maxlen, cs, &v[i], err);
                if (r < 0) {
                        gw_strv_free(v, i);
                        return r;
                }
        }
        *ret = v;
        *ret_n = n->n;
        return 0;
}

const char *gw_ytree_kind(const struct ynode *root)
{
        const struct ynode *k = gw_ynode_get(root, "kind");

        if (!k || k->type != YNODE_SCALAR)
                return NULL;
        return k->value;
}
