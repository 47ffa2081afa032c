/* JSON encoders for what gatewayd publishes over MQTT, with jansson. The member order is fixed
 * (insertion order, JSON_PRESERVE_ORDER) so that payloads are byte-for-byte reproducible and the
 * examples in docs/mqtt.md are exactly what the daemon sends. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

static const char *const node_states[_GW_NODE_STATE_MAX] = {
    [GW_NODE_IDLE] = "idle",
    [GW_NODE_QUEUED] = "queued",
    [GW_NODE_DOWNLOADING] = "downloading",
    [GW_NODE_VERIFYING] = "verifying",
    [GW_NODE_FLASHING] = "flashing",
    [GW_NODE_ACTIVATING] = "activating",
    [GW_NODE_CHECKING] = "checking",
    [GW_NODE_SUCCESS] = "success",
    [GW_NODE_FAILED] = "failed",
    [GW_NODE_REVERTING] = "reverting",
    [GW_NODE_REVERTED] = "reverted",
};

const char *gw_node_state_to_string(enum gw_node_state s)
{
        if ((unsigned) s >= _GW_NODE_STATE_MAX)
                return NULL;
        return node_states[s];
}

int gw_node_state_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _GW_NODE_STATE_MAX; i++)
                if (strcmp(node_states[i], s) == 0)
                        return i;
        return -EINVAL;
}

int gw_status_timestamp(time_t t, char *buf, size_t size)
{
        struct tm tm;

        if (!buf || size < GW_TIMESTAMP_MAX)
                return -EINVAL;
        if (!gmtime_r(&t, &tm))
                return -ERANGE;
        if (tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
                return -ERANGE;
        if (strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) != GW_TIMESTAMP_MAX - 1)
                return -ERANGE;
        return 0;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is not one. */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
        uint32_t cp;
        size_t len;

        if (s[0] < 0x80)
                return 1;
        if (s[0] >= 0xc2 && s[0] <= 0xdf) {
                len = 2;
                cp = s[0] & 0x1f;
        } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
                len = 3;
                cp = s[0] & 0x0f;
        } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
                len = 4;
                cp = s[0] & 0x07;
        } else
                return 0;
        if (len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

/* A JSON string for s; invalid UTF-8 bytes become '?'. NULL only on ENOMEM. */
static json_t *string_new(const char *s)
{
        size_t n = strlen(s);
        json_t *j;
        char *copy;

        j = json_stringn(s, n);
        if (j)
                return j;
        copy = strdup(s);
        if (!copy)
                return NULL;
        for (size_t i = 0; i < n;) {
                size_t len = utf8_sequence((const unsigned char *) copy + i, n - i);

                if (len == 0) {
                        copy[i] = '?';
                        len = 1;
                }
                i += len;
        }
        j = json_stringn(copy, n);
        free(copy);
        return j;
}

static int set_new(json_t *o, const char *key, json_t *v)
{
        /* json_object_set_new() steals v even when it fails, and accepts v == NULL. */
        if (!v || json_object_set_new(o, key, v) < 0)
                return -ENOMEM;
        return 0;
}

static int set_string(json_t *o, const char *key, const char *s)
{
        if (!s)
                return -EINVAL;
        return set_new(o, key, string_new(s));
}

/* Omitted when s is NULL. */
static int set_string_opt(json_t *o, const char *key, const char *s)
{
        return s ? set_string(o, key, s) : 0;
}

static int set_int_opt(json_t *o, const char *key, int64_t v)
{
        return v >= 0 ? set_new(o, key, json_integer((json_int_t) v)) : 0;
}

static int set_state(json_t *o, enum gw_node_state s)
{
        const char *str = gw_node_state_to_string(s);

        if (!str)
                return -EINVAL;
        return set_string(o, "state", str);
}

static int set_error(json_t *o, enum gw_error e, const char *message)
{
        const char *code = gw_error_to_string(e);
        json_t *err;
        int r;

        if (e == GW_ERR_NONE || !code)
                return -EINVAL;
        err = json_object();
        if (!err)
                return -ENOMEM;
        r = set_string(err, "code", code);
        if (r >= 0)
                r = set_string(err, "message", message ? message : "");
        if (r < 0) {
                json_decref(err);
                return r;
        }
        return set_new(o, "error", err);
}

static int set_ts(json_t *o, time_t ts)
{
        char buf[GW_TIMESTAMP_MAX];
        int r;

        r = gw_status_timestamp(ts, buf, sizeof(buf));
        if (r < 0)
                return -EINVAL;
        return set_string(o, "ts", buf);
}

/* Adds the timestamp, dumps and frees o. */
static int finish(json_t *o, int r, time_t ts, char **ret)
{
        char *s;

        if (r >= 0)
                r = set_ts(o, ts);
        if (r >= 0) {
                s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
                if (s)
                        *ret = s;
                else
                        r = -ENOMEM;
        }
        json_decref(o);
        return r < 0 ? r : 0;
}

int gw_status_gateway_json(bool online, const char *version, time_t ts, char **ret)
{
        json_t *o;
        int r;

        if (!version || !ret)
                return -EINVAL;
        o = json_object();
        if (!o)
                return -ENOMEM;
        r = set_string(o, "state", online ? "online" : "offline");
        if (r >= 0)
                r = set_string(o, "version", version);
        return finish(o, r, ts, ret);
}

void gw_node_status_init(struct gw_node_status *s, enum gw_node_state state)
{
        *s = (struct gw_node_status){
            .state = state,
            .progress = -1,
            .bytes = -1,
            .total = -1,
            .rate_bps = -1,
            .attempt = -1,
            .error = GW_ERR_NONE,
        };
}

int gw_status_node_json(const struct gw_node_status *s, time_t ts, char **ret)
{
        json_t *o;
        int r;

        if (!s || !ret || s->progress > 100)
                return -EINVAL;
        o = json_object();
        if (!o)
                return -ENOMEM;
        r = set_state(o, s->state);
        if (r >= 0)
                r = set_string_opt(o, "deployment", s->deployment);
        if (r >= 0)
                r = set_string_opt(o, "image", s->image);
        if (r >= 0)
                r = set_string_opt(o, "version", s->version);
        if (r >= 0)
                r = set_int_opt(o, "progress", s->progress);
        if (r >= 0)
                r = set_int_opt(o, "bytes", s->bytes);
        if (r >= 0)
                r = set_int_opt(o, "total", s->total);
        if (r >= 0)
                r = set_int_opt(o, "rate_bps", s->rate_bps);
        if (r >= 0 && s->attempt > 1)
                r = set_int_opt(o, "attempt", s->attempt);
        if (r >= 0 && s->unchanged)
                r = json_object_set_new(o, "unchanged", json_true()) < 0 ? -ENOMEM : 0;
        if (r >= 0 && s->resumed_from > 0)
                r = set_int_opt(o, "resumed_from", s->resumed_from);
        if (r >= 0 && s->state == GW_NODE_FAILED && s->error != GW_ERR_NONE)
                r = set_error(o, s->error, s->error_message);
        return finish(o, r, ts, ret);
}

static int deployment_new(const char *id, const char *state, json_t **ret)
{
        json_t *o;
        int r;

        if (!id)
                return -EINVAL;
        o = json_object();
        if (!o)
                return -ENOMEM;
        r = set_string(o, "id", id);
        if (r >= 0)
                r = set_string(o, "state", state);
        if (r < 0) {
                json_decref(o);
                return r;
        }
        *ret = o;
        return 0;
}

int gw_status_deployment_accepted_json(const char *id, const char *manifest_sha256,
                                       const char *const *nodes, size_t n_nodes, time_t ts,
                                       char **ret)
{
        json_t *o = NULL, *arr;
        int r;

        if (!manifest_sha256 || !ret || (n_nodes > 0 && !nodes))
                return -EINVAL;
        r = deployment_new(id, "accepted", &o);
        if (r < 0)
                return r;
        r = set_string(o, "manifest_sha256", manifest_sha256);
        if (r >= 0) {
                arr = json_array();
                r = set_new(o, "nodes", arr);
                for (size_t i = 0; r >= 0 && i < n_nodes; i++) {
                        if (!nodes[i])
                                r = -EINVAL;
                        else if (json_array_append_new(arr, string_new(nodes[i])) < 0)
                                r = -ENOMEM;
                }
        }
        return finish(o, r, ts, ret);
}

int gw_status_deployment_rejected_json(const char *id, enum gw_error error, const char *message,
                                       time_t ts, char **ret)
{
        json_t *o = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        r = deployment_new(id, "rejected", &o);
        if (r < 0)
                return r;
        r = set_error(o, error, message);
        return finish(o, r, ts, ret);
}

/* {name: {...}} for a deployment report; final selects which members each node gets. */
static int set_deployment_nodes(json_t *o, const struct gw_deployment_node *nodes, size_t n_nodes,
                                bool final)
{
        json_t *map;
        int r;

        if (n_nodes > 0 && !nodes)
                return -EINVAL;
        map = json_object();
        r = set_new(o, "nodes", map);
        for (size_t i = 0; r >= 0 && i < n_nodes; i++) {
                const struct gw_deployment_node *n = &nodes[i];
                json_t *entry;

                if (!n->name || n->progress > 100)
                        return -EINVAL;
                /* Names are unique in the configuration; a repeat would silently replace. */
                if (json_object_get(map, n->name))
                        return -EINVAL;
                entry = json_object();
                r = set_new(map, n->name, entry);
                if (r >= 0)
                        r = set_state(entry, n->state);
                if (r >= 0 && !final)
                        r = set_int_opt(entry, "progress", n->progress);
                if (r >= 0 && final)
                        r = set_string_opt(entry, "image", n->image);
                if (r >= 0 && final)
                        r = set_string_opt(entry, "version", n->version);
                if (r >= 0 && final && n->unchanged)
                        r = json_object_set_new(entry, "unchanged", json_true()) < 0 ? -ENOMEM : 0;
                if (r >= 0 && final && n->error != GW_ERR_NONE)
                        r = set_error(entry, n->error, n->error_message);
        }
        return r;
}

int gw_status_deployment_progress_json(const char *id, const struct gw_deployment_node *nodes,
                                       size_t n_nodes, time_t ts, char **ret)
{
        json_t *o = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        r = deployment_new(id, "running", &o);
        if (r < 0)
                return r;
        r = set_deployment_nodes(o, nodes, n_nodes, false);
        return finish(o, r, ts, ret);
}

int gw_status_deployment_final_json(const char *id, bool success, enum gw_error error,
                                    const char *message, const struct gw_deployment_node *nodes,
                                    size_t n_nodes, time_t ts, char **ret)
{
        json_t *o = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        r = deployment_new(id, success ? "success" : "failed", &o);
        if (r < 0)
                return r;
        if (!success && error != GW_ERR_NONE)
                r = set_error(o, error, message);
        if (r >= 0)
                r = set_deployment_nodes(o, nodes, n_nodes, true);
        return finish(o, r, ts, ret);
}

static int set_presence(json_t *o, enum gw_presence p)
{
        switch (p) {
        case GW_PRESENCE_UNKNOWN:
                return 0;
        case GW_PRESENCE_ABSENT:
                return set_new(o, "present", json_false());
        case GW_PRESENCE_PRESENT:
                return set_new(o, "present", json_true());
        }
        return -EINVAL;
}

static int set_inventory_nodes(json_t *o, const struct gw_inventory_node *nodes, size_t n_nodes)
{
        json_t *arr = json_array();
        int r;

        r = set_new(o, "nodes", arr);
        for (size_t i = 0; r >= 0 && i < n_nodes; i++) {
                const struct gw_inventory_node *n = &nodes[i];
                json_t *entry, *hw;

                entry = json_object();
                if (!entry || json_array_append_new(arr, entry) < 0)
                        return -ENOMEM;
                r = set_string(entry, "name", n->name);
                if (r >= 0)
                        r = set_string(entry, "transport", n->transport);
                if (r >= 0)
                        r = set_string(entry, "protocol", n->protocol);
                if (r >= 0)
                        r = set_string_opt(entry, "class", n->class_name);
                if (r >= 0) {
                        hw = json_object();
                        r = set_new(entry, "hardware", hw);
                        for (size_t j = 0; r >= 0 && j < gw_options_count(n->hardware); j++)
                                r = set_string(hw, gw_options_key(n->hardware, j),
                                               gw_options_value(n->hardware, j));
                }
                if (r >= 0)
                        r = set_string_opt(entry, "version", n->version);
                if (r >= 0)
                        r = set_presence(entry, n->present);
                if (r >= 0 && n->incomplete_image && n->incomplete_version) {
                        json_t *inc = json_object();

                        r = set_new(entry, "incomplete", inc);
                        if (r >= 0)
                                r = set_string(inc, "image", n->incomplete_image);
                        if (r >= 0)
                                r = set_string(inc, "version", n->incomplete_version);
                }
        }
        return r;
}

static int set_inventory_attached(json_t *o, const struct gw_inventory_device *devs, size_t n)
{
        json_t *arr = json_array();
        int r;

        r = set_new(o, "attached", arr);
        for (size_t i = 0; r >= 0 && i < n; i++) {
                const struct gw_inventory_device *d = &devs[i];
                char ids[10];
                json_t *entry;

                entry = json_object();
                if (!entry || json_array_append_new(arr, entry) < 0)
                        return -ENOMEM;
                snprintf(ids, sizeof(ids), "%04x:%04x", d->vid, d->pid);
                r = set_string(entry, "usb", ids);
                if (r >= 0)
                        r = set_string_opt(entry, "serial", d->serial);
                if (r >= 0)
                        r = set_string(entry, "path", d->path);
                if (r >= 0)
                        r = set_string_opt(entry, "description", d->description);
        }
        return r;
}

int gw_status_inventory_json(const struct gw_inventory_node *nodes, size_t n_nodes, time_t ts,
                             char **ret)
{
        json_t *o;
        int r;

        if (!ret || (n_nodes > 0 && !nodes))
                return -EINVAL;
        o = json_object();
        if (!o)
                return -ENOMEM;
        r = set_inventory_nodes(o, nodes, n_nodes);
        return finish(o, r, ts, ret);
}

int gw_status_inventory_attached_json(const struct gw_inventory_node *nodes, size_t n_nodes,
                                      const struct gw_inventory_device *attached, size_t n_attached,
                                      time_t ts, char **ret)
{
        json_t *o;
        int r;

        if (!ret || (n_nodes > 0 && !nodes) || (n_attached > 0 && !attached))
                return -EINVAL;
        o = json_object();
        if (!o)
                return -ENOMEM;
        r = set_inventory_nodes(o, nodes, n_nodes);
        if (r >= 0)
                r = set_inventory_attached(o, attached, n_attached);
        return finish(o, r, ts, ret);
}
