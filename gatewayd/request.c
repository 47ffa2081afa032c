/* Strict parsers for the deploy and cancel requests gatewayd takes from MQTT. Everything here is
 * untrusted: the size is capped before parsing, jansson rejects duplicate keys, nesting is
 * bounded, ids, URLs and base64 are checked character by character. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gw/codec.h"
#include "request.h"

void gw_request_error_done(struct gw_request_error *err)
{
        if (!err)
                return;
        free(err->message);
        free(err->id);
        *err = (struct gw_request_error){.code = GW_ERR_NONE};
}

/* Fills err (when not NULL) and returns r. id is the request's id when already known. */
static int __attribute__((format(printf, 5, 6)))
fail(struct gw_request_error *err, int r, enum gw_error code, const char *id, const char *fmt, ...)
{
        va_list ap;

        if (!err)
                return r;
        *err = (struct gw_request_error){.code = code};
        va_start(ap, fmt);
        if (vasprintf(&err->message, fmt, ap) < 0)
                err->message = NULL;
        va_end(ap);
        if (id)
                err->id = strdup(id);
        return r;
}

#define invalid(err, id, ...) fail((err), -EINVAL, GW_ERR_PAYLOAD_INVALID, (id), __VA_ARGS__)

static bool depth_ok(const json_t *j, unsigned depth)
{
        const char *key;
        json_t *v;
        size_t i;

        if (depth > GW_REQUEST_DEPTH_MAX)
                return false;
        if (json_is_object(j)) {
                json_object_foreach((json_t *) j, key, v) if (!depth_ok(v, depth + 1)) return false;
        } else if (json_is_array(j)) {
                json_array_foreach(j, i, v) if (!depth_ok(v, depth + 1)) return false;
        }
        return true;
}

/* The size cap, then JSON, then shape: a top-level object, not nested too deep. */
static int load(const void *payload, size_t len, size_t max_payload, json_t **ret,
                struct gw_request_error *err)
{
        json_error_t jerr;
        json_t *j;

        if (len > max_payload)
                return fail(err, -EMSGSIZE, GW_ERR_PAYLOAD_TOO_LARGE, NULL,
                            "payload of %zu bytes is larger than the limit of %zu bytes", len,
                            max_payload);
        if (!payload)
                return invalid(err, NULL, "no payload");
        j = json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!j)
                return invalid(err, NULL, "not valid JSON: %s at byte %d", jerr.text,
                               jerr.position);
        if (!json_is_object(j)) {
                json_decref(j);
                return invalid(err, NULL, "expected a JSON object");
        }
        if (!depth_ok(j, 1)) {
                json_decref(j);
                return invalid(err, NULL, "nested deeper than %d levels", GW_REQUEST_DEPTH_MAX);
        }
        *ret = j;
        return 0;
}

bool gw_request_id_valid(const char *s)
{
        size_t n;

        if (!s)
                return false;
        n = strlen(s);
        return n >= 1 && n <= GW_REQUEST_ID_MAX &&
               strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int get_id(const json_t *o, const char **ret, struct gw_request_error *err)
{
        const json_t *v = json_object_get(o, "id");

        if (!v)
                return invalid(err, NULL, "missing member \"id\"");
        if (!json_is_string(v))
                return invalid(err, NULL, "\"id\" must be a string");
        if (!gw_request_id_valid(json_string_value(v)))
                return invalid(err, NULL, "\"id\" must match [A-Za-z0-9._-]{1,%d}",
                               GW_REQUEST_ID_MAX);
        *ret = json_string_value(v);
        return 0;
}

/* An absolute http, https or file URL in printable ASCII; NULL when fine, else why not. */
static const char *url_problem(const char *s, size_t len)
{
        static const char *const schemes[] = {"http://", "https://", "file://"};
        const char *rest = NULL;

        if (len == 0)
                return "is empty";
        if (len > GW_REQUEST_URL_MAX)
                return "is longer than 2048 bytes";
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) s[i] <= 0x20 || (unsigned char) s[i] >= 0x7f)
                        return "contains spaces, control or non-ASCII characters";
        if (!strstr(s, "://"))
                return "is not an absolute URL";
        for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
                if (strncasecmp(s, schemes[i], strlen(schemes[i])) == 0)
                        rest = s + strlen(schemes[i]);
        if (!rest)
                return "must use http, https or file";
        if (strncasecmp(s, "file://", 7) == 0) {
                if (rest[0] != '/' && strncasecmp(rest, "localhost/", 10) != 0)
                        return "must be file:///path (a local absolute path)";
        } else if (rest[0] == '\0' || strchr("/?#@:", rest[0]))
                return "has no host";
        return NULL;
}

/* The "manifest" member: strict base64, its decoded size checked against max before anything
 * is allocated. */
static int decode_manifest(const char *s, size_t len, size_t max, const char *id, uint8_t **ret,
                           size_t *ret_size, struct gw_request_error *err)
{
        size_t size;
        int r;

        if (len == 0)
                return invalid(err, id, "\"manifest\" is empty");
        if (len % 4 != 0)
                return invalid(
                    err, id, "\"manifest\" is not base64: length %zu is not a multiple of 4", len);
        size = gw_base64_decoded_size(s, len);
        if (size > max)
                return fail(err, -EMSGSIZE, GW_ERR_MANIFEST_TOO_LARGE, id,
                            "manifest of %zu bytes is larger than the limit of %zu bytes", size,
                            max);
        r = gw_base64_decode(s, len, ret, ret_size);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return invalid(err, id, "\"manifest\" is not valid base64");
        return 0;
}

int gw_deploy_request_parse(const void *payload, size_t len, size_t max_payload,
                            size_t max_manifest, struct gw_deploy_request *ret,
                            struct gw_request_error *err)
{
        struct gw_deploy_request req = {};
        const json_t *url, *manifest;
        const char *id = NULL, *problem;
        json_t *o = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        if (len == 0) {
                *ret = req;
                return GW_REQUEST_CLEARED;
        }
        r = load(payload, len, max_payload, &o, err);
        if (r < 0)
                return r;
        r = get_id(o, &id, err);
        if (r < 0)
                goto finish;

        url = json_object_get(o, "manifest_url");
        manifest = json_object_get(o, "manifest");
        if (!url == !manifest) {
                r = invalid(err, id, "give exactly one of \"manifest_url\" and \"manifest\"");
                goto finish;
        }
        if (url) {
                if (!json_is_string(url)) {
                        r = invalid(err, id, "\"manifest_url\" must be a string");
                        goto finish;
                }
                problem = url_problem(json_string_value(url), json_string_length(url));
                if (problem) {
                        r = invalid(err, id, "\"manifest_url\" %s", problem);
                        goto finish;
                }
                req.manifest_url = strdup(json_string_value(url));
                if (!req.manifest_url) {
                        r = -ENOMEM;
                        goto finish;
                }
        } else {
                if (!json_is_string(manifest)) {
                        r = invalid(err, id, "\"manifest\" must be a string");
                        goto finish;
                }
                r = decode_manifest(json_string_value(manifest), json_string_length(manifest),
                                    max_manifest, id, &req.manifest, &req.manifest_size, err);
                if (r < 0)
                        goto finish;
        }
        req.id = strdup(id);
        if (!req.id) {
                r = -ENOMEM;
                goto finish;
        }
        *ret = req;
        req = (struct gw_deploy_request){};

finish:
        gw_deploy_request_done(&req);
        json_decref(o);
        return r;
}

void gw_deploy_request_done(struct gw_deploy_request *r)
{
        if (!r)
                return;
        free(r->id);
        free(r->manifest_url);
        free(r->manifest);
        *r = (struct gw_deploy_request){};
}

int gw_cancel_request_parse(const void *payload, size_t len, size_t max_payload,
                            struct gw_cancel_request *ret, struct gw_request_error *err)
{
        const char *id = NULL;
        json_t *o = NULL;
        char *copy;
        int r;

        if (!ret)
                return -EINVAL;
        if (len == 0) {
                *ret = (struct gw_cancel_request){};
                return GW_REQUEST_CLEARED;
        }
        r = load(payload, len, max_payload, &o, err);
        if (r < 0)
                return r;
        r = get_id(o, &id, err);
        if (r >= 0) {
                copy = strdup(id);
                if (copy)
                        ret->id = copy;
                else
                        r = -ENOMEM;
        }
        json_decref(o);
        return r;
}

void gw_cancel_request_done(struct gw_cancel_request *r)
{
        if (!r)
                return;
        free(r->id);
        r->id = NULL;
}
