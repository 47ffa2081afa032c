/* The CBOR layer of the smp plugin: the request maps the host sends and the response maps a
 * device returns, through libcbor. Responses are untrusted: their nesting depth, item counts
 * and string lengths are checked on the raw bytes (libcbor's streaming decoder) before a tree
 * is built, and only the fields the plugin reads are taken, each type-checked. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_SMP_CBOR_DEPTH_MAX 8   /* containers within containers in a response */
#define GW_SMP_CBOR_ITEMS_MAX 512 /* data items in a response */
#define GW_SMP_SLOTS_MAX      8   /* image state entries kept (4 images x 2 slots) */
#define GW_SMP_VERSION_MAX    32  /* a slot's version string */
#define GW_SMP_RSN_MAX        96  /* a reason string ("rsn") */
#define GW_SMP_HASH_LEN       32

/* An append-only buffer the request encoders write into; overflow is sticky. */
struct gw_smp_cbor_out {
        uint8_t *buf;
        size_t size, len;
        bool overflow;
};

/* Request bodies. Each returns the bytes written or -ENOBUFS. */
/* {} : image state read, os params, os reset. */
int gw_smp_cbor_empty(uint8_t *buf, size_t size);
/* {"hash": hash, "confirm": confirm}, without "hash" when hash is NULL. */
int gw_smp_cbor_state_write(uint8_t *buf, size_t size, const uint8_t *hash, bool confirm);

/* An upload request: {"off", "data"}; the first one (off 0) adds "len", "sha" and, when
 * non-zero / true, "image" and "upgrade". */
struct gw_smp_upload_req {
        uint64_t off;
        const uint8_t *data;
        size_t data_len;
        bool first;
        uint64_t total;     /* "len": the image file's size */
        const uint8_t *sha; /* "sha": the SHA-256 of the whole file, 32 bytes */
        uint32_t image;     /* "image", sent when not 0 */
        bool upgrade;       /* "upgrade", sent when true */
};
int gw_smp_cbor_upload(uint8_t *buf, size_t size, const struct gw_smp_upload_req *req);
/* The most data bytes an upload request can carry in budget bytes of CBOR: the request's other
 * fields encoded by libcbor with an empty "data", plus the byte string header data needs.
 * 0 when not even one byte fits. */
size_t gw_smp_cbor_upload_room(const struct gw_smp_upload_req *req, size_t budget);

/* One entry of an image state response ("images"). */
struct gw_smp_slot {
        uint32_t image, slot;
        char version[GW_SMP_VERSION_MAX];
        bool have_hash;
        uint8_t hash[GW_SMP_HASH_LEN];
        bool bootable, pending, confirmed, active, permanent;
};

/* What a response map holds of the fields the plugin reads; have_* say which were there. */
struct gw_smp_rsp {
        bool have_rc;
        int64_t rc; /* "rc": SMP v1 */
        bool have_err;
        uint64_t err_group;
        int64_t err_rc;           /* "err": {"group", "rc"}, SMP v2 */
        char rsn[GW_SMP_RSN_MAX]; /* "rsn", when the device explains */

        bool have_buf_size, have_buf_count; /* os params */
        uint64_t buf_size, buf_count;

        bool have_off; /* upload */
        uint64_t off;
        bool have_match, match;

        bool have_images; /* image state */
        size_t n_slots;
        size_t n_slots_seen; /* entries in the response, kept or not */
        struct gw_smp_slot slots[GW_SMP_SLOTS_MAX];
};

/* Checks a response's bounds and decodes it into *ret. 0, or -EBADMSG (not one well-formed CBOR
 * map within the limits, a field of the wrong type) with a reason in why. */
int gw_smp_cbor_parse(const uint8_t *buf, size_t len, struct gw_smp_rsp *ret, char *why,
                      size_t why_size);
