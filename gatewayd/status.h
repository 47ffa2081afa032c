/* The JSON payloads gatewayd publishes (DESIGN "MQTT contract", docs/mqtt.md): gateway state,
 * per-node status, deployment reports and the inventory. Encoders take small C structs and a
 * timestamp from the caller and return malloc'd compact JSON with members in a fixed order. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gw/error.h"
#include "gw/options.h"

enum gw_node_state {
        GW_NODE_IDLE,
        GW_NODE_QUEUED,
        GW_NODE_DOWNLOADING,
        GW_NODE_VERIFYING,
        GW_NODE_FLASHING,
        GW_NODE_ACTIVATING,
        GW_NODE_CHECKING,
        GW_NODE_SUCCESS,
        GW_NODE_FAILED,
        GW_NODE_REVERTING,
        GW_NODE_REVERTED,
        _GW_NODE_STATE_MAX,
};

/* "idle", "queued", ...; NULL when out of range. */
const char *gw_node_state_to_string(enum gw_node_state s);
/* The inverse: the enum value, or -EINVAL. */
int gw_node_state_from_string(const char *s);

/* Bytes needed for an RFC 3339 UTC timestamp with seconds, "2026-11-22T00:00:00Z", and NUL. */
#define GW_TIMESTAMP_MAX 21
/* Formats t into buf (at least GW_TIMESTAMP_MAX bytes). 0, or -ERANGE when t does not fit
 * years 0000..9999 / -EINVAL. */
int gw_status_timestamp(time_t t, char *buf, size_t size);

/* Every encoder returns 0 and a malloc'd NUL-terminated string in *ret, -EINVAL when an input is
 * out of range (unknown state, progress above 100, a required string NULL), or -ENOMEM.
 * Strings that are not valid UTF-8 (device replies inside messages) have their invalid bytes
 * replaced by '?' rather than failing. */

/* {"state":"online"|"offline","version":...,"ts":...} for <prefix>/state (and the will). */
int gw_status_gateway_json(bool online, const char *version, time_t ts, char **ret);

/* Use -1 for numbers that are unknown and NULL for strings that are unknown: they are omitted. */
struct gw_node_status {
        enum gw_node_state state;
        const char *deployment;
        const char *image;
        const char *version;
        int progress;     /* 0..100 or -1 */
        int64_t bytes;    /* or -1 */
        int64_t total;    /* or -1 */
        int64_t rate_bps; /* or -1 */
        int attempt; /* 2, 3, ...: the install runs again (node retries); below 2: not reported */
        bool unchanged;       /* it already ran the image and was not written: "unchanged": true */
        int64_t resumed_from; /* > 0: this install continued a write the node kept, from here */
        enum gw_error error;  /* reported only in state failed, and only when not NONE */
        const char *error_message; /* NULL: "" */
};

/* Fills s with "everything unknown" for the given state. */
void gw_node_status_init(struct gw_node_status *s, enum gw_node_state state);

/* {"state","deployment","image","version","progress","bytes","total","rate_bps","attempt",
 *  "unchanged","resumed_from","error":{"code","message"},"ts"} for <prefix>/nodes/<node>/status. */
int gw_status_node_json(const struct gw_node_status *s, time_t ts, char **ret);

/* One node's line in a deployment report. */
struct gw_deployment_node {
        const char *name;
        enum gw_node_state state;
        int progress;              /* progress reports only; -1 omits it */
        const char *image;         /* final reports only; NULL omits it */
        const char *version;       /* final reports only; NULL omits it */
        bool unchanged;            /* final reports only: "unchanged": true, not written */
        enum gw_error error;       /* final reports only; NONE omits it */
        const char *error_message; /* NULL: "" */
};

/* <prefix>/deployments/<id>:
 * {"id","state":"accepted","manifest_sha256","nodes":[names...],"ts"} */
int gw_status_deployment_accepted_json(const char *id, const char *manifest_sha256,
                                       const char *const *nodes, size_t n_nodes, time_t ts,
                                       char **ret);
/* {"id","state":"rejected","error":{"code","message"},"ts"}; error must not be NONE. */
int gw_status_deployment_rejected_json(const char *id, enum gw_error error, const char *message,
                                       time_t ts, char **ret);
/* {"id","state":"running","nodes":{name:{"state","progress"?}},"ts"} */
int gw_status_deployment_progress_json(const char *id, const struct gw_deployment_node *nodes,
                                       size_t n_nodes, time_t ts, char **ret);
/* {"id","state":"success"|"failed","error"?,"nodes":{name:{"state","image"?,"version"?,
 *  "error"?}},"ts"}; the top-level error only when !success and error is not NONE. */
int gw_status_deployment_final_json(const char *id, bool success, enum gw_error error,
                                    const char *message, const struct gw_deployment_node *nodes,
                                    size_t n_nodes, time_t ts, char **ret);

/* Whether a node's link is there now (its USB device attached, its serial port present). */
enum gw_presence {
        GW_PRESENCE_UNKNOWN = 0, /* omitted: the transport cannot tell */
        GW_PRESENCE_ABSENT,
        GW_PRESENCE_PRESENT,
};

struct gw_inventory_node {
        const char *name;
        const char *transport;
        const char *protocol;
        const char *class_name;            /* NULL omits "class" */
        const struct gw_options *hardware; /* NULL: {} */
        const char *version;               /* installed version; NULL omits it */
        enum gw_presence present;          /* UNKNOWN omits "present" */
        /* An image whose writing did not finish (a failed flash, a power cut mid-flash): the
         * node may hold part of it. Both NULL omit "incomplete". */
        const char *incomplete_image, *incomplete_version;
};

/* A USB device attached that no configured node claims. */
struct gw_inventory_device {
        uint16_t vid, pid;
        const char *serial;      /* NULL omits it */
        const char *path;        /* port path "1-2.3"; required */
        const char *description; /* product and DFU alt settings; NULL omits it */
};

/* {"nodes":[{"name","transport","protocol","class"?,"hardware":{..},"version"?,"present"?,
 *  "incomplete"?:{"image","version"}}],"ts"} for <prefix>/inventory. */
int gw_status_inventory_json(const struct gw_inventory_node *nodes, size_t n_nodes, time_t ts,
                             char **ret);
/* The same with the unclaimed devices after the nodes (every member of docs/mqtt.md):
 * {"nodes":[...],"attached":[{"usb":"VID:PID","serial"?,"path","description"?}],"ts"}. */
int gw_status_inventory_attached_json(const struct gw_inventory_node *nodes, size_t n_nodes,
                                      const struct gw_inventory_device *attached, size_t n_attached,
                                      time_t ts, char **ret);
