/* Parses gatewayd.yaml with libyaml's event API into a small bounded tree, then checks that tree
 * against the schema strictly (unknown keys, duplicates, wrong types and out-of-range values are
 * errors) and fills struct gw_config. Every error names file, line, column and key path. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>
#include <jansson.h>
#include <yaml.h>

#include "config.h"

/* Everything a 1 MiB file could hold is far below this; it caps the tree's memory. */
#define MAX_TREE_NODES 65536

enum cnode_kind {
        CN_SCALAR,
        CN_MAP,
        CN_SEQ,
};

struct cnode {
        enum cnode_kind kind;
        size_t line, column; /* 1-based */
        char *path;          /* "nodes[1].transport", "" for the root */
        char *value;         /* scalars: NUL-terminated, no embedded NUL */
        size_t len;
        bool plain;
        struct cnode **items; /* maps: key, value, key, value...; sequences: values */
        size_t n_items;
};

struct parser {
        const char *name;
        char *error; /* the first error, "name:line:col: path: message" */
        size_t n_nodes;
};

static const char *const kind_names[] = {
    [CN_SCALAR] = "a scalar",
    [CN_MAP] = "a mapping",
    [CN_SEQ] = "a list",
};

static struct cnode *cnode_free(struct cnode *n)
{
        if (!n)
                return NULL;
        for (size_t i = 0; i < n->n_items; i++)
                cnode_free(n->items[i]);
        free(n->items);
        free(n->value);
        free(n->path);
        free(n);
        return NULL;
}

/* Records the first error only; later ones are consequences. Returns -EINVAL, or -ENOMEM when
 * the message itself cannot be allocated. */
static int __attribute__((format(printf, 5, 6)))
fail_at(struct parser *p, size_t line, size_t column, const char *path, const char *fmt, ...)
{
        _Static_assert(sizeof(size_t) <= sizeof(unsigned long long), "size_t too wide");
        char *msg = NULL;
        va_list ap;
        int r;

        if (p->error)
                return -EINVAL;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        if (line > 0)
                r = asprintf(&p->error, "%s:%llu:%llu: %s%s%s", p->name, (unsigned long long) line,
                             (unsigned long long) column, path && *path ? path : "",
                             path && *path ? ": " : "", msg);
        else
                r = asprintf(&p->error, "%s: %s%s%s", p->name, path && *path ? path : "",
                             path && *path ? ": " : "", msg);
        free(msg);
        if (r < 0) {
                p->error = NULL;
                return -ENOMEM;
        }
        return -EINVAL;
}

#define fail(p, node, ...) fail_at((p), (node)->line, (node)->column, (node)->path, __VA_ARGS__)

static int syntax_error(struct parser *p, const yaml_parser_t *y)
{
        const char *problem = y->problem ? y->problem : "malformed YAML";

        if (y->error == YAML_MEMORY_ERROR)
                return -ENOMEM;
        if (y->error == YAML_READER_ERROR)
                return fail_at(p, 0, 0, NULL, "invalid YAML input at byte %llu: %s",
                               (unsigned long long) y->problem_offset, problem);
        if (y->context)
                return fail_at(p, y->problem_mark.line + 1, y->problem_mark.column + 1, NULL,
                               "YAML syntax error: %s %s", problem, y->context);
        return fail_at(p, y->problem_mark.line + 1, y->problem_mark.column + 1, NULL,
                       "YAML syntax error: %s", problem);
}

static int next_event(struct parser *p, yaml_parser_t *y, yaml_event_t *ev)
{
        if (!yaml_parser_parse(y, ev))
                return syntax_error(p, y);
        return 0;
}

static int cnode_new(struct parser *p, enum cnode_kind kind, const yaml_mark_t *mark,
                     const char *path, struct cnode **ret)
{
        struct cnode *n;

        if (p->n_nodes >= MAX_TREE_NODES)
                return fail_at(p, mark->line + 1, mark->column + 1, path,
                               "too many values (more than %d)", MAX_TREE_NODES);
        n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        n->path = strdup(path);
        if (!n->path) {
                free(n);
                return -ENOMEM;
        }
        n->kind = kind;
        n->line = mark->line + 1;
        n->column = mark->column + 1;
        p->n_nodes++;
        *ret = n;
        return 0;
}

static int cnode_append(struct cnode *parent, struct cnode *child)
{
        struct cnode **items;

        items = reallocarray(parent->items, parent->n_items + 1, sizeof(*items));
        if (!items)
                return -ENOMEM;
        parent->items = items;
        parent->items[parent->n_items++] = child;
        return 0;
}

static bool scalar_is(const struct cnode *n, const char *s)
{
        return n->kind == CN_SCALAR && strcmp(n->value, s) == 0;
}

static int build_node(struct parser *p, yaml_parser_t *y, yaml_event_t *ev, const char *path,
                      unsigned depth, struct cnode **ret);

/* The body of a mapping or sequence whose start event was consumed; stops at its end event. */
static int build_children(struct parser *p, yaml_parser_t *y, struct cnode *n, unsigned depth)
{
        bool is_map = n->kind == CN_MAP;
        size_t max = is_map ? GW_CONFIG_MAX_MAP_ENTRIES : GW_CONFIG_MAX_NODES;
        int r;

        for (;;) {
                yaml_event_t ev;
                struct cnode *key = NULL, *child = NULL;
                char *child_path = NULL;

                r = next_event(p, y, &ev);
                if (r < 0)
                        return r;
                if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
                        yaml_event_delete(&ev);
                        return 0;
                }
                if ((is_map ? n->n_items / 2 : n->n_items) >= max) {
                        r = fail_at(p, ev.start_mark.line + 1, ev.start_mark.column + 1, n->path,
                                    "too many entries (more than %zu)", max);
                        yaml_event_delete(&ev);
                        return r;
                }

                if (is_map) {
                        /* The key. */
                        r = build_node(p, y, &ev, n->path, depth + 1, &key);
                        yaml_event_delete(&ev);
                        if (r < 0)
                                return r;
                        if (key->kind != CN_SCALAR) {
                                r = fail(p, key, "keys must be strings");
                                cnode_free(key);
                                return r;
                        }
                        for (size_t i = 0; i < n->n_items; i += 2)
                                if (scalar_is(n->items[i], key->value)) {
                                        r = fail(p, key, "duplicate key '%s' (first at line %zu)",
                                                 key->value, n->items[i]->line);
                                        cnode_free(key);
                                        return r;
                                }
                        r = cnode_append(n, key);
                        if (r < 0) {
                                cnode_free(key);
                                return r;
                        }
                        if (*n->path)
                                r = asprintf(&child_path, "%s.%s", n->path, key->value);
                        else
                                r = asprintf(&child_path, "%s", key->value);
                        if (r < 0)
                                return -ENOMEM;
                        r = next_event(p, y, &ev);
                        if (r < 0) {
                                free(child_path);
                                return r;
                        }
                } else if (asprintf(&child_path, "%s[%zu]", n->path, n->n_items) < 0) {
                        yaml_event_delete(&ev);
                        return -ENOMEM;
                }

                r = build_node(p, y, &ev, child_path, depth + 1, &child);
                yaml_event_delete(&ev);
                free(child_path);
                if (r < 0)
                        return r;
                r = cnode_append(n, child);
                if (r < 0) {
                        cnode_free(child);
                        return r;
                }
        }
}

/* Builds the node that starts with ev (which the caller deletes). */
static int build_node(struct parser *p, yaml_parser_t *y, yaml_event_t *ev, const char *path,
                      unsigned depth, struct cnode **ret)
{
        const yaml_mark_t *mark = &ev->start_mark;
        const yaml_char_t *anchor = NULL, *tag = NULL;
        struct cnode *n = NULL;
        int r;

        switch (ev->type) {
        case YAML_ALIAS_EVENT:
                return fail_at(p, mark->line + 1, mark->column + 1, path,
                               "aliases are not allowed");
        case YAML_SCALAR_EVENT:
                anchor = ev->data.scalar.anchor;
                tag = ev->data.scalar.tag;
                break;
        case YAML_MAPPING_START_EVENT:
                anchor = ev->data.mapping_start.anchor;
                tag = ev->data.mapping_start.tag;
                break;
        case YAML_SEQUENCE_START_EVENT:
                anchor = ev->data.sequence_start.anchor;
                tag = ev->data.sequence_start.tag;
                break;
        default:
                return fail_at(p, mark->line + 1, mark->column + 1, path, "unexpected YAML event");
        }
        if (anchor)
                return fail_at(p, mark->line + 1, mark->column + 1, path,
                               "anchors are not allowed");
        if (tag)
                return fail_at(p, mark->line + 1, mark->column + 1, path, "tags are not allowed");
        if (depth > GW_CONFIG_MAX_DEPTH)
                return fail_at(p, mark->line + 1, mark->column + 1, path,
                               "nested deeper than %d levels", GW_CONFIG_MAX_DEPTH);

        if (ev->type == YAML_SCALAR_EVENT) {
                size_t len = ev->data.scalar.length;

                if (len > GW_CONFIG_MAX_SCALAR)
                        return fail_at(p, mark->line + 1, mark->column + 1, path,
                                       "value longer than %d bytes", GW_CONFIG_MAX_SCALAR);
                if (memchr(ev->data.scalar.value, 0, len))
                        return fail_at(p, mark->line + 1, mark->column + 1, path,
                                       "value contains a NUL character");
                r = cnode_new(p, CN_SCALAR, mark, path, &n);
                if (r < 0)
                        return r;
                n->value = strndup((const char *) ev->data.scalar.value, len);
                if (!n->value) {
                        cnode_free(n);
                        return -ENOMEM;
                }
                n->len = len;
                n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
                *ret = n;
                return 0;
        }

        r = cnode_new(p, ev->type == YAML_MAPPING_START_EVENT ? CN_MAP : CN_SEQ, mark, path, &n);
        if (r < 0)
                return r;
        r = build_children(p, y, n, depth);
        if (r < 0) {
                cnode_free(n);
                return r;
        }
        *ret = n;
        return 0;
}

static int build_tree(struct parser *p, const char *data, size_t size, struct cnode **ret)
{
        yaml_parser_t y;
        yaml_event_t ev;
        struct cnode *root = NULL;
        int r;

        if (!yaml_parser_initialize(&y))
                return -ENOMEM;
        yaml_parser_set_input_string(&y, (const unsigned char *) data, size);

        r = next_event(p, &y, &ev); /* STREAM-START */
        if (r < 0)
                goto finish;
        yaml_event_delete(&ev);
        r = next_event(p, &y, &ev);
        if (r < 0)
                goto finish;
        if (ev.type == YAML_STREAM_END_EVENT) {
                yaml_event_delete(&ev);
                r = fail_at(p, 0, 0, NULL, "empty configuration");
                goto finish;
        }
        yaml_event_delete(&ev); /* DOCUMENT-START */

        r = next_event(p, &y, &ev);
        if (r < 0)
                goto finish;
        r = build_node(p, &y, &ev, "", 1, &root);
        yaml_event_delete(&ev);
        if (r < 0)
                goto finish;

        r = next_event(p, &y, &ev); /* DOCUMENT-END */
        if (r < 0)
                goto finish;
        yaml_event_delete(&ev);
        r = next_event(p, &y, &ev);
        if (r < 0)
                goto finish;
        if (ev.type != YAML_STREAM_END_EVENT)
                r = fail_at(p, ev.start_mark.line + 1, ev.start_mark.column + 1, NULL,
                            "only one YAML document is allowed");
        yaml_event_delete(&ev);

finish:
        yaml_parser_delete(&y);
        if (r < 0) {
                cnode_free(root);
                return r;
        }
        *ret = root;
        return 0;
}

/* Schema checks on the tree. */

static const struct cnode *map_get(const struct cnode *map, const char *key)
{
        for (size_t i = 0; i + 1 < map->n_items; i += 2)
                if (scalar_is(map->items[i], key))
                        return map->items[i + 1];
        return NULL;
}

static int expect(struct parser *p, const struct cnode *n, enum cnode_kind kind)
{
        if (n->kind != kind)
                return fail(p, n, "expected %s, not %s", kind_names[kind], kind_names[n->kind]);
        return 0;
}

/* allowed is NULL-terminated. The first key that is not in it is an error, at its position. */
static int check_keys(struct parser *p, const struct cnode *map, const char *const *allowed)
{
        for (size_t i = 0; i < map->n_items; i += 2) {
                const struct cnode *key = map->items[i];
                bool found = false;

                for (size_t j = 0; allowed[j]; j++)
                        if (strcmp(key->value, allowed[j]) == 0)
                                found = true;
                if (!found)
                        return fail(p, key, "unknown key '%s'", key->value);
        }
        return 0;
}

/* A mapping with only the keys listed. */
static int expect_map(struct parser *p, const struct cnode *n, const char *const *keys)
{
        int r = expect(p, n, CN_MAP);

        return r < 0 ? r : check_keys(p, n, keys);
}

static bool is_null(const struct cnode *n)
{
        return n->kind == CN_SCALAR && n->plain &&
               (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
                strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static int want_string(struct parser *p, const struct cnode *n, bool allow_empty)
{
        if (n->kind != CN_SCALAR || is_null(n))
                return fail(p, n, "expected a string, not %s",
                            n->kind == CN_SCALAR ? "null" : kind_names[n->kind]);
        if (!allow_empty && n->len == 0)
                return fail(p, n, "must not be empty");
        return 0;
}

static int required(struct parser *p, const struct cnode *map, const char *key,
                    const struct cnode **ret)
{
        const struct cnode *v = map_get(map, key);

        if (!v)
                return fail(p, map, "missing required key '%s'", key);
        *ret = v;
        return 0;
}

/* The string at map[key] into *ret (replacing what was there); absent keys leave *ret alone. */
static int get_string(struct parser *p, const struct cnode *map, const char *key, char **ret)
{
        const struct cnode *v = map_get(map, key);
        char *s;
        int r;

        if (!v)
                return 0;
        r = want_string(p, v, false);
        if (r < 0)
                return r;
        s = strdup(v->value);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

static int get_u64(struct parser *p, const struct cnode *map, const char *key, uint64_t min,
                   uint64_t max, uint64_t *ret)
{
        const struct cnode *v = map_get(map, key);
        uint64_t u;

        if (!v)
                return 0;
        if (v->kind != CN_SCALAR || !v->plain || is_null(v) || gw_parse_u64(v->value, &u) < 0)
                return fail(p, v, "expected an integer");
        if (u < min || u > max)
                return fail(p, v, "%s is out of range (%llu..%llu)", v->value,
                            (unsigned long long) min, (unsigned long long) max);
        *ret = u;
        return 0;
}

static int get_unsigned(struct parser *p, const struct cnode *map, const char *key, unsigned min,
                        unsigned max, unsigned *ret)
{
        uint64_t u = *ret;
        int r;

        r = get_u64(p, map, key, min, max, &u);
        if (r < 0)
                return r;
        *ret = (unsigned) u;
        return 0;
}

static int get_bool(struct parser *p, const struct cnode *map, const char *key, bool *ret)
{
        const struct cnode *v = map_get(map, key);

        if (!v)
                return 0;
        if (v->kind == CN_SCALAR && v->plain && strcmp(v->value, "true") == 0)
                *ret = true;
        else if (v->kind == CN_SCALAR && v->plain && strcmp(v->value, "false") == 0)
                *ret = false;
        else
                return fail(p, v, "expected true or false");
        return 0;
}

static bool name_valid(const char *s, size_t max)
{
        size_t n = strlen(s);

        if (n < 1 || n > max || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int get_name(struct parser *p, const struct cnode *map, const char *key, char **ret)
{
        const struct cnode *v = NULL;
        int r;

        r = required(p, map, key, &v);
        if (r < 0)
                return r;
        r = want_string(p, v, false);
        if (r < 0)
                return r;
        if (!name_valid(v->value, GW_CONFIG_MAX_NAME))
                return fail(p, v, "'%s' is not a valid name ([A-Za-z0-9._-]{1,%d})", v->value,
                            GW_CONFIG_MAX_NAME);
        return get_string(p, map, key, ret);
}

static int resolve_path(const char *base_dir, const char *path, char **ret)
{
        char *s;

        if (path[0] == '/')
                s = strdup(path);
        else if (asprintf(&s, "%s/%s", base_dir, path) < 0)
                s = NULL;
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

static int get_path(struct parser *p, const struct cnode *map, const char *key,
                    const char *base_dir, char **ret)
{
        const struct cnode *v = map_get(map, key);
        int r;

        if (!v)
                return 0;
        r = want_string(p, v, false);
        if (r < 0)
                return r;
        if (strlen(v->value) >= PATH_MAX)
                return fail(p, v, "path too long");
        return resolve_path(base_dir, v->value, ret);
}

static bool printable(const char *s)
{
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static const char *const log_levels[] = {
    [LOG_DEBUG] = "debug",     [LOG_INFO] = "info", [LOG_NOTICE] = "notice",
    [LOG_WARNING] = "warning", [LOG_ERR] = "error",
};

int gw_config_log_level_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(log_levels) / sizeof(log_levels[0]); i++)
                if (log_levels[i] && strcmp(log_levels[i], s) == 0)
                        return (int) i;
        return -EINVAL;
}

const char *gw_config_log_level_to_string(int level)
{
        if (level < 0 || (size_t) level >= sizeof(log_levels) / sizeof(log_levels[0]))
                return NULL;
        return log_levels[level];
}

/* A map of scalar values into options (hardware, transport, protocol). skip is a key handled by
 * the caller ("type") or NULL. */
/* An option given as a list of strings (exec's command line) reaches the plugin as a JSON
 * array of those strings: options are text, and a JSON array keeps every item whole. */
#define OPTION_LIST_MAX 64

static int list_option(struct parser *p, const struct cnode *v, char **ret)
{
        json_t *a;
        char *s;
        int r = 0;

        if (v->n_items == 0 || v->n_items > OPTION_LIST_MAX)
                return fail(p, v, "expected a list of 1 to %d strings", OPTION_LIST_MAX);
        a = json_array();
        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < v->n_items && r >= 0; i++) {
                r = want_string(p, v->items[i], true);
                if (r >= 0 && json_array_append_new(a, json_string(v->items[i]->value)) < 0)
                        r = fail(p, v->items[i], "not valid UTF-8 text");
        }
        s = r >= 0 ? json_dumps(a, JSON_COMPACT) : NULL;
        json_decref(a);
        if (r < 0)
                return r;
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static int parse_options(struct parser *p, const struct cnode *map, const char *skip,
                         struct gw_options *o)
{
        int r;

        for (size_t i = 0; i < map->n_items; i += 2) {
                const struct cnode *key = map->items[i], *v = map->items[i + 1];

                if (skip && strcmp(key->value, skip) == 0)
                        continue;
                if (!name_valid(key->value, GW_CONFIG_MAX_NAME))
                        return fail(p, key, "'%s' is not a valid option name", key->value);
                if (v->kind == CN_SEQ) {
                        char *list = NULL;

                        r = list_option(p, v, &list);
                        if (r >= 0)
                                r = gw_options_set(o, key->value, list);
                        free(list);
                        if (r < 0)
                                return r;
                        continue;
                }
                r = want_string(p, v, true);
                if (r < 0)
                        return r;
                r = gw_options_set(o, key->value, v->value);
                if (r < 0)
                        return r == -ENOMEM ? r
                                            : fail(p, key, "cannot store option '%s' (%s)",
                                                   key->value, strerror(-r));
        }
        return 0;
}

static struct gw_config_pos pos_of(const struct cnode *n)
{
        return (struct gw_config_pos){.line = (unsigned) n->line, .column = (unsigned) n->column};
}

static int parse_plugin_ref(struct parser *p, const struct cnode *node, const char *key,
                            char **ret_type, struct gw_options *o, struct gw_config_pos *ret_pos)
{
        const struct cnode *map = NULL, *type = NULL;
        int r;

        r = required(p, node, key, &map);
        if (r < 0)
                return r;
        r = expect(p, map, CN_MAP);
        if (r < 0)
                return r;
        *ret_pos = pos_of(map);
        r = required(p, map, "type", &type);
        if (r < 0)
                return r;
        r = want_string(p, type, false);
        if (r < 0)
                return r;
        if (!name_valid(type->value, GW_CONFIG_MAX_NAME))
                return fail(p, type, "'%s' is not a valid %s name", type->value, key);
        r = get_string(p, map, "type", ret_type);
        if (r < 0)
                return r;
        return parse_options(p, map, "type", o);
}

static int parse_node(struct parser *p, const struct cnode *n, struct gw_node_config *node)
{
        static const char *const keys[] = {"name",     "class",   "hardware", "transport",
                                           "protocol", "retries", NULL};
        const struct cnode *hw;
        int r;

        node->hardware = gw_options_new();
        node->transport_opts = gw_options_new();
        node->protocol_opts = gw_options_new();
        if (!node->hardware || !node->transport_opts || !node->protocol_opts)
                return -ENOMEM;

        r = expect(p, n, CN_MAP);
        if (r < 0)
                return r;
        node->pos = pos_of(n);
        r = check_keys(p, n, keys);
        if (r < 0)
                return r;
        r = get_name(p, n, "name", &node->name);
        if (r < 0)
                return r;
        r = get_string(p, n, "class", &node->class_name);
        if (r < 0)
                return r;
        r = get_unsigned(p, n, "retries", 0, GW_NODE_RETRIES_MAX, &node->retries);
        if (r < 0)
                return r;
        hw = map_get(n, "hardware");
        if (hw) {
                r = expect(p, hw, CN_MAP);
                if (r < 0)
                        return r;
                r = parse_options(p, hw, NULL, node->hardware);
                if (r < 0)
                        return r;
        }
        r = parse_plugin_ref(p, n, "transport", &node->transport, node->transport_opts,
                             &node->transport_pos);
        if (r < 0)
                return r;
        return parse_plugin_ref(p, n, "protocol", &node->protocol, node->protocol_opts,
                                &node->protocol_pos);
}

static int parse_nodes(struct parser *p, const struct cnode *seq, struct gw_config *c)
{
        int r;

        r = expect(p, seq, CN_SEQ);
        if (r < 0)
                return r;
        if (seq->n_items == 0)
                return 0;
        c->nodes = calloc(seq->n_items, sizeof(*c->nodes));
        if (!c->nodes)
                return -ENOMEM;

        for (size_t i = 0; i < seq->n_items; i++) {
                const struct cnode *item = seq->items[i];

                c->n_nodes = i + 1; /* so that gw_config_free() sees partial entries */
                r = parse_node(p, item, &c->nodes[i]);
                if (r < 0)
                        return r;
                for (size_t j = 0; j < i; j++)
                        if (strcmp(c->nodes[j].name, c->nodes[i].name) == 0)
                                return fail(p, map_get(item, "name"),
                                            "duplicate node name '%s' (also nodes[%zu])",
                                            c->nodes[i].name, j);
        }
        return 0;
}

static int parse_tls(struct parser *p, const struct cnode *tls, const char *base_dir,
                     struct gw_mqtt_config *m)
{
        static const char *const keys[] = {"ca", "cert", "key", "insecure", NULL};
        int r;

        r = expect_map(p, tls, keys);
        if (r < 0)
                return r;
        m->tls = true;
        r = get_path(p, tls, "ca", base_dir, &m->tls_ca);
        if (r < 0)
                return r;
        r = get_path(p, tls, "cert", base_dir, &m->tls_cert);
        if (r < 0)
                return r;
        r = get_path(p, tls, "key", base_dir, &m->tls_key);
        if (r < 0)
                return r;
        if (!m->tls_cert != !m->tls_key)
                return fail(p, tls, "'cert' and 'key' must be given together");
        return get_bool(p, tls, "insecure", &m->tls_insecure);
}

static int parse_mqtt(struct parser *p, const struct cnode *mq, const char *base_dir,
                      struct gw_mqtt_config *m)
{
        static const char *const keys[] = {
            "host",      "port",          "client-id",     "prefix",
            "keepalive", "username",      "password",      "max-payload",
            "tls",       "reconnect-min", "reconnect-max", "connect-timeout",
            NULL};
        const struct cnode *v;
        uint64_t u;
        int r;

        r = expect_map(p, mq, keys);
        if (r < 0)
                return r;

        r = get_string(p, mq, "host", &m->host);
        if (r < 0)
                return r;
        v = map_get(mq, "host");
        if (v && (strlen(v->value) > 253 || !printable(v->value) || strchr(v->value, ' ')))
                return fail(p, v, "'%s' is not a valid host name", v->value);

        v = map_get(mq, "tls");
        if (v) {
                r = parse_tls(p, v, base_dir, m);
                if (r < 0)
                        return r;
                m->port = 8883;
        }
        u = m->port;
        r = get_u64(p, mq, "port", 1, 65535, &u);
        if (r < 0)
                return r;
        m->port = (uint16_t) u;

        r = get_string(p, mq, "client-id", &m->client_id);
        if (r < 0)
                return r;
        v = map_get(mq, "client-id");
        if (v && (strlen(v->value) > 256 || !printable(v->value)))
                return fail(p, v, "must be 1 to 256 printable characters");

        r = get_string(p, mq, "prefix", &m->prefix);
        if (r < 0)
                return r;
        v = map_get(mq, "prefix");
        if (v && (strlen(v->value) > 512 || !printable(v->value) || strpbrk(v->value, "+#") ||
                  v->value[0] == '/' || v->value[strlen(v->value) - 1] == '/'))
                return fail(p, v,
                            "'%s' is not a valid topic prefix (no wildcards, no leading or "
                            "trailing '/')",
                            v->value);

        r = get_unsigned(p, mq, "keepalive", 5, 65535, &m->keepalive);
        if (r < 0)
                return r;
        r = get_string(p, mq, "username", &m->username);
        if (r < 0)
                return r;
        r = get_string(p, mq, "password", &m->password);
        if (r < 0)
                return r;
        if (m->password && !m->username)
                return fail(p, map_get(mq, "password"), "needs 'username'");

        u = m->max_payload;
        r = get_u64(p, mq, "max-payload", 1024, 268435455, &u);
        if (r < 0)
                return r;
        m->max_payload = (size_t) u;

        r = get_unsigned(p, mq, "reconnect-min", 1, 3600, &m->reconnect_min);
        if (r < 0)
                return r;
        r = get_unsigned(p, mq, "reconnect-max", 1, 86400, &m->reconnect_max);
        if (r < 0)
                return r;
        if (m->reconnect_max < m->reconnect_min) {
                v = map_get(mq, "reconnect-max");
                return fail(p, v ? v : mq, "reconnect-max (%u) is less than reconnect-min (%u)",
                            m->reconnect_max, m->reconnect_min);
        }
        return get_unsigned(p, mq, "connect-timeout", 1, 600, &m->connect_timeout);
}

static int parse_trust(struct parser *p, const struct cnode *t, const char *base_dir,
                       struct gw_trust_config *tr)
{
        static const char *const keys[] = {"keys", "public-keys", "threshold", NULL};
        const struct cnode *keys_node, *pub, *thr;
        int r;

        r = expect_map(p, t, keys);
        if (r < 0)
                return r;
        keys_node = map_get(t, "keys");
        pub = map_get(t, "public-keys");
        thr = map_get(t, "threshold");
        if (keys_node && pub)
                return fail(p, pub, "'keys' and 'public-keys' are mutually exclusive");
        if (!keys_node && !pub)
                return fail(p, t, "needs 'keys' or 'public-keys'");

        if (keys_node) {
                if (thr)
                        return fail(p, thr,
                                    "only applies with 'public-keys' (a keys document "
                                    "carries its own threshold)");
                return get_path(p, t, "keys", base_dir, &tr->keys);
        }

        r = expect(p, pub, CN_SEQ);
        if (r < 0)
                return r;
        if (pub->n_items == 0)
                return fail(p, pub, "must not be empty");
        if (pub->n_items > GW_CONFIG_MAX_PUBLIC_KEYS)
                return fail(p, pub, "more than %d keys", GW_CONFIG_MAX_PUBLIC_KEYS);
        tr->public_keys = calloc(pub->n_items, sizeof(*tr->public_keys));
        if (!tr->public_keys)
                return -ENOMEM;
        for (size_t i = 0; i < pub->n_items; i++) {
                const struct cnode *v = pub->items[i];

                tr->n_public_keys = i + 1;
                r = want_string(p, v, false);
                if (r < 0)
                        return r;
                if (strlen(v->value) >= PATH_MAX)
                        return fail(p, v, "path too long");
                r = resolve_path(base_dir, v->value, &tr->public_keys[i]);
                if (r < 0)
                        return r;
        }
        return get_unsigned(p, t, "threshold", 1, (unsigned) pub->n_items, &tr->threshold);
}

static int parse_root(struct parser *p, const struct cnode *root, const char *base_dir,
                      struct gw_config *c)
{
        static const char *const keys[] = {"gateway", "state-dir",      "plugin-dir", "log-level",
                                           "mqtt",    "trust",          "limits",     "fetch",
                                           "nodes",   "decryption-key", NULL};
        static const char *const gw_keys[] = {"id", "hardware", NULL};
        static const char *const limit_keys[] = {"manifest-size", "image-size", NULL};
        static const char *const fetch_keys[] = {"min-rate", "rate-window", "deadline",
                                                 "connect-timeout", NULL};
        const struct cnode *gw = NULL, *v = NULL;
        int r;

        r = expect_map(p, root, keys);
        if (r < 0)
                return r;

        r = required(p, root, "gateway", &gw);
        if (r < 0)
                return r;
        r = expect_map(p, gw, gw_keys);
        if (r < 0)
                return r;
        r = get_name(p, gw, "id", &c->gateway_id);
        if (r < 0)
                return r;
        r = get_string(p, gw, "hardware", &c->gateway_hardware);
        if (r < 0)
                return r;

        r = get_path(p, root, "state-dir", base_dir, &c->state_dir);
        if (r < 0)
                return r;
        r = get_path(p, root, "plugin-dir", base_dir, &c->plugin_dir);
        if (r < 0)
                return r;
        r = get_path(p, root, "decryption-key", base_dir, &c->decryption_key);
        if (r < 0)
                return r;
        v = map_get(root, "log-level");
        if (v) {
                r = want_string(p, v, false);
                if (r < 0)
                        return r;
                r = gw_config_log_level_from_string(v->value);
                if (r < 0)
                        return fail(p, v,
                                    "unknown level '%s' (debug, info, notice, warning, error)",
                                    v->value);
                c->log_level = r;
        }

        /* Defaults that derive from the gateway id. */
        if (asprintf(&c->mqtt.client_id, "gatewayd-%s", c->gateway_id) < 0) {
                c->mqtt.client_id = NULL;
                return -ENOMEM;
        }
        if (asprintf(&c->mqtt.prefix, "gatewayd/%s", c->gateway_id) < 0) {
                c->mqtt.prefix = NULL;
                return -ENOMEM;
        }
        v = map_get(root, "mqtt");
        if (v) {
                r = parse_mqtt(p, v, base_dir, &c->mqtt);
                if (r < 0)
                        return r;
        }

        r = required(p, root, "trust", &v);
        if (r < 0)
                return r;
        r = parse_trust(p, v, base_dir, &c->trust);
        if (r < 0)
                return r;

        v = map_get(root, "limits");
        if (v) {
                r = expect_map(p, v, limit_keys);
                if (r < 0)
                        return r;
                r = get_u64(p, v, "manifest-size", 1024, 64 * 1024 * 1024, &c->manifest_size_max);
                if (r < 0)
                        return r;
                r = get_u64(p, v, "image-size", 1, UINT64_C(1) << 40, &c->image_size_max);
                if (r < 0)
                        return r;
        }

        v = map_get(root, "fetch");
        if (v) {
                r = expect_map(p, v, fetch_keys);
                if (r < 0)
                        return r;
                r = get_u64(p, v, "min-rate", 0, UINT32_MAX, &c->fetch_min_rate);
                if (r < 0)
                        return r;
                r = get_unsigned(p, v, "rate-window", 1, 3600, &c->fetch_rate_window);
                if (r < 0)
                        return r;
                r = get_unsigned(p, v, "deadline", 1, 7 * 24 * 3600, &c->fetch_deadline);
                if (r < 0)
                        return r;
                r = get_unsigned(p, v, "connect-timeout", 1, 600, &c->fetch_connect_timeout);
                if (r < 0)
                        return r;
        }

        v = map_get(root, "nodes");
        if (v)
                return parse_nodes(p, v, c);
        return 0;
}

static int config_new(const char *name, struct gw_config **ret)
{
        struct gw_config *c;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->path = strdup(name);
        c->state_dir = strdup("/var/lib/gatewayd");
        c->mqtt.host = strdup("localhost");
        if (!c->path || !c->state_dir || !c->mqtt.host) {
                gw_config_free(c);
                return -ENOMEM;
        }
        c->log_level = LOG_INFO;
        c->mqtt.port = 1883;
        c->mqtt.keepalive = 30;
        c->mqtt.max_payload = 262144;
        c->mqtt.reconnect_min = 1;
        c->mqtt.reconnect_max = 60;
        c->mqtt.connect_timeout = 10;
        c->trust.threshold = 1;
        c->manifest_size_max = 1024 * 1024;
        c->image_size_max = 256 * 1024 * 1024;
        c->fetch_min_rate = 1024;
        c->fetch_rate_window = 30;
        c->fetch_deadline = 3600;
        c->fetch_connect_timeout = 10;
        *ret = c;
        return 0;
}

int gw_config_parse(const char *data, size_t size, const char *name, const char *base_dir,
                    struct gw_config **ret, char **ret_error)
{
        struct parser p = {.name = name};
        struct cnode *root = NULL;
        struct gw_config *c = NULL;
        char *dir = NULL;
        int r;

        if (!data || !name || !ret)
                return -EINVAL;
        if (size > GW_CONFIG_MAX_FILE_SIZE) {
                r = fail_at(&p, 0, 0, NULL, "larger than %d bytes", GW_CONFIG_MAX_FILE_SIZE);
                if (r == -EINVAL)
                        r = -EFBIG;
                goto finish;
        }
        if (!base_dir) {
                const char *slash = strrchr(name, '/');

                if (!slash)
                        dir = strdup(".");
                else if (slash == name)
                        dir = strdup("/");
                else
                        dir = strndup(name, (size_t) (slash - name));
                if (!dir) {
                        r = -ENOMEM;
                        goto finish;
                }
                base_dir = dir;
        }

        r = build_tree(&p, data, size, &root);
        if (r < 0)
                goto finish;
        r = config_new(name, &c);
        if (r < 0)
                goto finish;
        r = parse_root(&p, root, base_dir, c);

finish:
        cnode_free(root);
        free(dir);
        if (r < 0) {
                gw_config_free(c);
                if (ret_error && p.error)
                        *ret_error = p.error;
                else
                        free(p.error);
                return r;
        }
        *ret = c;
        return 0;
}

static int errorf(char **ret_error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int errorf(char **ret_error, int r, const char *fmt, ...)
{
        va_list ap;
        char *s;

        if (!ret_error)
                return r;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) >= 0)
                *ret_error = s;
        va_end(ap);
        return r;
}

int gw_config_load(const char *path, struct gw_config **ret, char **ret_error)
{
        char *data = NULL, *dir = NULL, *base = NULL;
        size_t size = 0;
        const char *slash;
        struct stat st;
        int fd, r;

        if (!path || !ret)
                return -EINVAL;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = -errno;
                return errorf(ret_error, r, "%s: cannot open: %s", path, strerror(-r));
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                errorf(ret_error, r, "%s: cannot stat: %s", path, strerror(-r));
                goto finish;
        }
        if (!S_ISREG(st.st_mode)) {
                r = errorf(ret_error, -EINVAL, "%s: not a regular file", path);
                goto finish;
        }
        if (st.st_size > GW_CONFIG_MAX_FILE_SIZE) {
                r = errorf(ret_error, -EFBIG, "%s: larger than %d bytes", path,
                           GW_CONFIG_MAX_FILE_SIZE);
                goto finish;
        }
        /* One byte more than the cap, so that a file that grew since fstat() is noticed. */
        data = malloc(GW_CONFIG_MAX_FILE_SIZE + 1);
        if (!data) {
                r = -ENOMEM;
                goto finish;
        }
        for (;;) {
                ssize_t n = read(fd, data + size, GW_CONFIG_MAX_FILE_SIZE + 1 - size);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        errorf(ret_error, r, "%s: cannot read: %s", path, strerror(-r));
                        goto finish;
                }
                if (n == 0)
                        break;
                size += (size_t) n;
                if (size > GW_CONFIG_MAX_FILE_SIZE) {
                        r = errorf(ret_error, -EFBIG, "%s: larger than %d bytes", path,
                                   GW_CONFIG_MAX_FILE_SIZE);
                        goto finish;
                }
        }

        slash = strrchr(path, '/');
        if (!slash)
                dir = strdup(".");
        else if (slash == path)
                dir = strdup("/");
        else
                dir = strndup(path, (size_t) (slash - path));
        if (!dir) {
                r = -ENOMEM;
                goto finish;
        }
        base = realpath(dir, NULL);
        if (!base) {
                r = -errno;
                errorf(ret_error, r, "%s: cannot resolve directory: %s", path, strerror(-r));
                goto finish;
        }
        r = gw_config_parse(data, size, path, base, ret, ret_error);

finish:
        free(base);
        free(dir);
        free(data);
        close(fd);
        return r;
}

static void node_config_done(struct gw_node_config *n)
{
        free(n->name);
        free(n->class_name);
        gw_options_free(n->hardware);
        free(n->transport);
        gw_options_free(n->transport_opts);
        free(n->protocol);
        gw_options_free(n->protocol_opts);
}

struct gw_config *gw_config_free(struct gw_config *c)
{
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_nodes; i++)
                node_config_done(&c->nodes[i]);
        free(c->nodes);
        for (size_t i = 0; i < c->trust.n_public_keys; i++)
                free(c->trust.public_keys[i]);
        free(c->trust.public_keys);
        free(c->trust.keys);
        free(c->mqtt.host);
        free(c->mqtt.client_id);
        free(c->mqtt.prefix);
        free(c->mqtt.username);
        free(c->mqtt.password);
        free(c->mqtt.tls_ca);
        free(c->mqtt.tls_cert);
        free(c->mqtt.tls_key);
        free(c->path);
        free(c->gateway_id);
        free(c->gateway_hardware);
        free(c->state_dir);
        free(c->plugin_dir);
        free(c->decryption_key);
        free(c);
        return NULL;
}

const struct gw_node_config *gw_config_find_node(const struct gw_config *c, const char *name)
{
        if (!c || !name)
                return NULL;
        for (size_t i = 0; i < c->n_nodes; i++)
                if (strcmp(c->nodes[i].name, name) == 0)
                        return &c->nodes[i];
        return NULL;
}
