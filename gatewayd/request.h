/* Parsing the untrusted MQTT payloads gatewayd receives: <prefix>/deploy and <prefix>/cancel.
 * Size is capped before any parsing; JSON is parsed strictly (no duplicate keys, bounded depth);
 * unknown members are ignored for forward compatibility. See docs/mqtt.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/error.h"

#define GW_REQUEST_ID_MAX    128 /* [A-Za-z0-9._-]{1,128} */
#define GW_REQUEST_URL_MAX   2048
#define GW_REQUEST_DEPTH_MAX 4 /* the top-level object is depth 1 */

/* Returned (> 0) by the parsers for an empty payload: a retained message being cleared. */
#define GW_REQUEST_CLEARED 1

struct gw_request_error {
        enum gw_error code; /* GW_ERR_PAYLOAD_INVALID, _PAYLOAD_TOO_LARGE or _MANIFEST_TOO_LARGE */
        char *message;      /* malloc'd, human-readable; NULL only when allocating it failed */
        char *id;           /* the request's id when it was valid, else NULL: lets the caller
                             * publish a rejection on deployments/<id> */
};

/* Frees the members and clears err. */
void gw_request_error_done(struct gw_request_error *err);

struct gw_deploy_request {
        char *id;
        char *manifest_url; /* exactly one of manifest_url and manifest is set */
        uint8_t *manifest;  /* the decoded "manifest" member */
        size_t manifest_size;
};

/* Parses a <prefix>/deploy payload {"id","manifest_url"} or {"id","manifest":"<base64>"}.
 * Returns 0 and fills *ret; GW_REQUEST_CLEARED when len is 0 (*ret is zeroed); or a negative
 * errno with *err filled (err may be NULL):
 *   -EMSGSIZE  len > max_payload (GW_ERR_PAYLOAD_TOO_LARGE), or the decoded manifest is larger
 *              than max_manifest (GW_ERR_MANIFEST_TOO_LARGE);
 *   -EINVAL    anything else wrong with it (GW_ERR_PAYLOAD_INVALID);
 *   -ENOMEM.
 * err is only written on failure; release it with gw_request_error_done(). */
int gw_deploy_request_parse(const void *payload, size_t len, size_t max_payload,
                            size_t max_manifest, struct gw_deploy_request *ret,
                            struct gw_request_error *err);
void gw_deploy_request_done(struct gw_deploy_request *r);

struct gw_cancel_request {
        char *id;
};

/* Parses a <prefix>/cancel payload {"id"}; returns like gw_deploy_request_parse(). */
int gw_cancel_request_parse(const void *payload, size_t len, size_t max_payload,
                            struct gw_cancel_request *ret, struct gw_request_error *err);
void gw_cancel_request_done(struct gw_cancel_request *r);

/* True when s is a valid request id. */
bool gw_request_id_valid(const char *s);
