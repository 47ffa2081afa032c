/* SMP request and response bodies through libcbor (see smp-cbor.h). Requests are written with
 * libcbor's encoders into the caller's buffer; responses are first scanned with libcbor's
 * streaming decoder for their shape (depth, item counts, one map and nothing after it), and only
 * then loaded into a tree and read. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cbor.h>

#include "smp-cbor.h"

/* ---- requests ---------------------------------------------------------------------------- */

static void out_raw(struct gw_smp_cbor_out *o, const void *p, size_t n)
{
        if (o->overflow || n > o->size - o->len) {
                o->overflow = true;
                return;
        }
        memcpy(o->buf + o->len, p, n);
        o->len += n;
}

/* Runs one of libcbor's encoders at the end of the buffer; 0 from it means no room. */
#define OUT(o, encoder, ...)                                                                       \
        do {                                                                                       \
                if (!(o)->overflow) {                                                              \
                        size_t n_ =                                                                \
                            encoder(__VA_ARGS__, (o)->buf + (o)->len, (o)->size - (o)->len);       \
                        if (n_ == 0)                                                               \
                                (o)->overflow = true;                                              \
                        else                                                                       \
                                (o)->len += n_;                                                    \
                }                                                                                  \
        } while (0)

static void out_key(struct gw_smp_cbor_out *o, const char *key)
{
        size_t n = strlen(key);

        OUT(o, cbor_encode_string_start, n);
        out_raw(o, key, n);
}

static void out_bytes(struct gw_smp_cbor_out *o, const uint8_t *p, size_t n)
{
        OUT(o, cbor_encode_bytestring_start, n);
        if (n)
                out_raw(o, p, n);
}

static int out_result(const struct gw_smp_cbor_out *o)
{
        return o->overflow ? -ENOBUFS : (int) o->len;
}

int gw_smp_cbor_empty(uint8_t *buf, size_t size)
{
        struct gw_smp_cbor_out o = {.buf = buf, .size = size};

        OUT(&o, cbor_encode_map_start, 0);
        return out_result(&o);
}

int gw_smp_cbor_state_write(uint8_t *buf, size_t size, const uint8_t *hash, bool confirm)
{
        struct gw_smp_cbor_out o = {.buf = buf, .size = size};

        OUT(&o, cbor_encode_map_start, hash ? 2 : 1);
        if (hash) {
                out_key(&o, "hash");
                out_bytes(&o, hash, GW_SMP_HASH_LEN);
        }
        out_key(&o, "confirm");
        OUT(&o, cbor_encode_bool, confirm);
        return out_result(&o);
}

int gw_smp_cbor_upload(uint8_t *buf, size_t size, const struct gw_smp_upload_req *req)
{
        struct gw_smp_cbor_out o = {.buf = buf, .size = size};
        size_t pairs = 2;

        if (req->first)
                pairs += 2 + (req->image != 0) + req->upgrade;
        OUT(&o, cbor_encode_map_start, pairs);
        if (req->first && req->image != 0) {
                out_key(&o, "image");
                OUT(&o, cbor_encode_uint, req->image);
        }
        if (req->first) {
                out_key(&o, "len");
                OUT(&o, cbor_encode_uint, req->total);
        }
        out_key(&o, "off");
        OUT(&o, cbor_encode_uint, req->off);
        if (req->first) {
                out_key(&o, "sha");
                out_bytes(&o, req->sha, GW_SMP_HASH_LEN);
        }
        if (req->first && req->upgrade) {
                out_key(&o, "upgrade");
                OUT(&o, cbor_encode_bool, true);
        }
        out_key(&o, "data");
        out_bytes(&o, req->data, req->data_len);
        return out_result(&o);
}

size_t gw_smp_cbor_upload_room(const struct gw_smp_upload_req *req, size_t budget)
{
        struct gw_smp_upload_req empty = *req;
        uint8_t scratch[256];
        size_t fixed, data, hdr;
        int n;

        empty.data = NULL;
        empty.data_len = 0;
        n = gw_smp_cbor_upload(scratch, sizeof(scratch), &empty);
        if (n < 0)
                return 0;
        /* The empty byte string's header is one byte; a longer string may need a longer
         * header, which only ever shrinks the data: at most two rounds. */
        fixed = (size_t) n - 1;
        if (budget <= fixed + 1)
                return 0;
        data = budget - fixed - 1;
        for (;;) {
                hdr = cbor_encode_bytestring_start(data, scratch, sizeof(scratch));
                if (hdr == 0)
                        return 0;
                if (fixed + hdr + data <= budget)
                        return data;
                if (budget < fixed + hdr + 1)
                        return 0;
                data = budget - fixed - hdr;
        }
}

/* ---- response shape ------------------------------------------------------------------------ */

#define LEFT_INDEF UINT64_MAX

struct scan {
        unsigned depth;
        uint64_t left[GW_SMP_CBOR_DEPTH_MAX + 1]; /* items still due at each level */
        size_t items;
        bool done;
        const char *error;
};

static void scan_fail(struct scan *s, const char *why)
{
        if (!s->error)
                s->error = why;
}

/* One more data item began: counted against the limit. */
static bool scan_item(struct scan *s)
{
        if (s->done) {
                scan_fail(s, "bytes after the response map");
                return false;
        }
        if (++s->items > GW_SMP_CBOR_ITEMS_MAX) {
                scan_fail(s, "too many data items");
                return false;
        }
        return true;
}

/* An item ended: it may end the containers it closes. */
static void scan_end(struct scan *s)
{
        for (;;) {
                if (s->left[s->depth] == LEFT_INDEF)
                        return;
                if (--s->left[s->depth] > 0)
                        return;
                if (s->depth == 0) {
                        s->done = true;
                        return;
                }
                s->depth--;
        }
}

static void scan_open(struct scan *s, uint64_t items)
{
        if (!scan_item(s))
                return;
        if (items == 0) {
                scan_end(s);
                return;
        }
        if (items != LEFT_INDEF && items > GW_SMP_CBOR_ITEMS_MAX) {
                scan_fail(s, "a container announcing too many items");
                return;
        }
        if (s->depth + 1 > GW_SMP_CBOR_DEPTH_MAX) {
                scan_fail(s, "nested too deep");
                return;
        }
        s->left[++s->depth] = items;
}

static void cb_scalar(struct scan *s)
{
        if (scan_item(s))
                scan_end(s);
}

static void cb_u8(void *c, uint8_t v)
{
        cb_scalar(c);
}
static void cb_u16(void *c, uint16_t v)
{
        cb_scalar(c);
}
static void cb_u32(void *c, uint32_t v)
{
        cb_scalar(c);
}
static void cb_u64(void *c, uint64_t v)
{
        cb_scalar(c);
}
static void cb_simple(void *c)
{
        cb_scalar(c);
}
static void cb_string(void *c, cbor_data d, size_t n)
{
        cb_scalar(c);
}
static void cb_float(void *c, float f)
{
        cb_scalar(c);
}
static void cb_double(void *c, double f)
{
        cb_scalar(c);
}
static void cb_bool(void *c, bool b)
{
        cb_scalar(c);
}
static void cb_indef_start(void *c)
{
        scan_open(c, LEFT_INDEF);
}
static void cb_array(void *c, size_t n)
{
        scan_open(c, n);
}
static void cb_map(void *c, size_t n)
{
        scan_open(c, n > GW_SMP_CBOR_ITEMS_MAX ? (uint64_t) n : 2 * (uint64_t) n);
}
static void cb_tag(void *c, uint64_t t)
{
        scan_open(c, 1);
}
static void cb_break(void *c)
{
        struct scan *s = c;

        if (s->depth == 0 || s->left[s->depth] != LEFT_INDEF) {
                scan_fail(s, "a break outside an indefinite-length item");
                return;
        }
        s->depth--;
        scan_end(s);
}

static const struct cbor_callbacks scan_callbacks = {
    .uint8 = cb_u8,
    .uint16 = cb_u16,
    .uint32 = cb_u32,
    .uint64 = cb_u64,
    .negint8 = cb_u8,
    .negint16 = cb_u16,
    .negint32 = cb_u32,
    .negint64 = cb_u64,
    .byte_string_start = cb_indef_start,
    .byte_string = cb_string,
    .string = cb_string,
    .string_start = cb_indef_start,
    .indef_array_start = cb_indef_start,
    .array_start = cb_array,
    .indef_map_start = cb_indef_start,
    .map_start = cb_map,
    .tag = cb_tag,
    .float2 = cb_float,
    .float4 = cb_float,
    .float8 = cb_double,
    .undefined = cb_simple,
    .null = cb_simple,
    .boolean = cb_bool,
    .indef_break = cb_break,
};

/* The response is exactly one data item within the limits. */
static const char *check_shape(const uint8_t *buf, size_t len)
{
        struct scan s = {.left = {1}};
        size_t off = 0;

        while (!s.done && !s.error) {
                struct cbor_decoder_result r;

                if (off >= len)
                        return "the response ends inside an item";
                r = cbor_stream_decode(buf + off, len - off, &scan_callbacks, &s);
                if (r.status != CBOR_DECODER_FINISHED || r.read == 0)
                        return r.status == CBOR_DECODER_NEDATA ? "the response ends inside an item"
                                                               : "malformed CBOR";
                off += r.read;
        }
        if (s.error)
                return s.error;
        if (off != len)
                return "bytes after the response map";
        return NULL;
}

/* ---- response fields ----------------------------------------------------------------------- */

struct parse {
        struct gw_smp_rsp *rsp;
        char *why;
        size_t why_size;
};

static int bad(struct parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct parse *p, const char *fmt, ...)
{
        va_list ap;

        if (p->why && p->why_size) {
                va_start(ap, fmt);
                vsnprintf(p->why, p->why_size, fmt, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

/* A definite text string equal to s. */
static bool key_is(const cbor_item_t *k, const char *s)
{
        size_t n = strlen(s);

        return cbor_isa_string(k) && cbor_string_is_definite(k) && cbor_string_length(k) == n &&
               memcmp(cbor_string_handle(k), s, n) == 0;
}

static int get_uint(struct parse *p, const cbor_item_t *v, const char *key, uint64_t *ret)
{
        if (!cbor_isa_uint(v))
                return bad(p, "\"%s\" is not an unsigned integer", key);
        *ret = cbor_get_int(v);
        return 0;
}

static int get_int(struct parse *p, const cbor_item_t *v, const char *key, int64_t *ret)
{
        uint64_t u;

        if (!cbor_isa_uint(v) && !cbor_isa_negint(v))
                return bad(p, "\"%s\" is not an integer", key);
        u = cbor_get_int(v);
        if (u > INT64_MAX)
                return bad(p, "\"%s\" is out of range", key);
        *ret = cbor_isa_uint(v) ? (int64_t) u : -1 - (int64_t) u;
        return 0;
}

static int get_bool(struct parse *p, const cbor_item_t *v, const char *key, bool *ret)
{
        if (!cbor_is_bool(v))
                return bad(p, "\"%s\" is not a boolean", key);
        *ret = cbor_get_bool(v);
        return 0;
}

/* A definite text string of fewer than size bytes, without NULs, into buf. */
static int get_text(struct parse *p, const cbor_item_t *v, const char *key, char *buf, size_t size)
{
        size_t n;

        if (!cbor_isa_string(v) || !cbor_string_is_definite(v))
                return bad(p, "\"%s\" is not a text string", key);
        n = cbor_string_length(v);
        if (n >= size)
                return bad(p, "\"%s\" is longer than %zu bytes", key, size - 1);
        memcpy(buf, cbor_string_handle(v), n);
        buf[n] = '\0';
        if (strlen(buf) != n)
                return bad(p, "\"%s\" holds a NUL", key);
        return 0;
}

/* Marks a field seen; a key twice in one map is refused. */
static int once(struct parse *p, bool *have, const char *key)
{
        if (*have)
                return bad(p, "\"%s\" appears twice", key);
        *have = true;
        return 0;
}

static int parse_err(struct parse *p, const cbor_item_t *v)
{
        struct cbor_pair *pairs;
        bool have_group = false, have_rc = false;
        int r = 0;

        if (!cbor_isa_map(v))
                return bad(p, "\"err\" is not a map");
        pairs = cbor_map_handle(v);
        for (size_t i = 0; r == 0 && i < cbor_map_size(v); i++) {
                if (key_is(pairs[i].key, "group")) {
                        r = once(p, &have_group, "err.group");
                        if (r == 0)
                                r = get_uint(p, pairs[i].value, "err.group", &p->rsp->err_group);
                } else if (key_is(pairs[i].key, "rc")) {
                        r = once(p, &have_rc, "err.rc");
                        if (r == 0)
                                r = get_int(p, pairs[i].value, "err.rc", &p->rsp->err_rc);
                }
        }
        if (r == 0 && (!have_group || !have_rc))
                return bad(p, "\"err\" without \"group\" and \"rc\"");
        return r;
}

static int parse_slot(struct parse *p, const cbor_item_t *v, struct gw_smp_slot *s)
{
        struct cbor_pair *pairs;
        bool have[9] = {false};
        int r = 0;

        if (!cbor_isa_map(v))
                return bad(p, "an \"images\" entry is not a map");
        memset(s, 0, sizeof(*s));
        /* MCUboot's default for an image that says nothing. */
        s->bootable = true;
        pairs = cbor_map_handle(v);
        for (size_t i = 0; r == 0 && i < cbor_map_size(v); i++) {
                const cbor_item_t *k = pairs[i].key, *val = pairs[i].value;
                uint64_t u = 0;

                if (key_is(k, "image")) {
                        r = once(p, &have[0], "image");
                        if (r == 0)
                                r = get_uint(p, val, "image", &u);
                        if (r == 0 && u > UINT32_MAX)
                                r = bad(p, "\"image\" is out of range");
                        s->image = (uint32_t) u;
                } else if (key_is(k, "slot")) {
                        r = once(p, &have[1], "slot");
                        if (r == 0)
                                r = get_uint(p, val, "slot", &u);
                        if (r == 0 && u > UINT32_MAX)
                                r = bad(p, "\"slot\" is out of range");
                        s->slot = (uint32_t) u;
                } else if (key_is(k, "version")) {
                        r = once(p, &have[2], "version");
                        if (r == 0)
                                r = get_text(p, val, "version", s->version, sizeof(s->version));
                } else if (key_is(k, "hash")) {
                        r = once(p, &have[3], "hash");
                        if (r == 0 &&
                            (!cbor_isa_bytestring(val) || !cbor_bytestring_is_definite(val) ||
                             cbor_bytestring_length(val) != GW_SMP_HASH_LEN))
                                r = bad(p, "\"hash\" is not a 32-byte byte string");
                        if (r == 0) {
                                memcpy(s->hash, cbor_bytestring_handle(val), GW_SMP_HASH_LEN);
                                s->have_hash = true;
                        }
                } else if (key_is(k, "bootable")) {
                        r = once(p, &have[4], "bootable");
                        if (r == 0)
                                r = get_bool(p, val, "bootable", &s->bootable);
                } else if (key_is(k, "pending")) {
                        r = once(p, &have[5], "pending");
                        if (r == 0)
                                r = get_bool(p, val, "pending", &s->pending);
                } else if (key_is(k, "confirmed")) {
                        r = once(p, &have[6], "confirmed");
                        if (r == 0)
                                r = get_bool(p, val, "confirmed", &s->confirmed);
                } else if (key_is(k, "active")) {
                        r = once(p, &have[7], "active");
                        if (r == 0)
                                r = get_bool(p, val, "active", &s->active);
                } else if (key_is(k, "permanent")) {
                        r = once(p, &have[8], "permanent");
                        if (r == 0)
                                r = get_bool(p, val, "permanent", &s->permanent);
                }
        }
        if (r == 0 && !have[1])
                return bad(p, "an \"images\" entry without \"slot\"");
        return r;
}

static int parse_images(struct parse *p, const cbor_item_t *v)
{
        cbor_item_t **items;
        int r;

        if (!cbor_isa_array(v))
                return bad(p, "\"images\" is not an array");
        items = cbor_array_handle(v);
        for (size_t i = 0; i < cbor_array_size(v); i++) {
                struct gw_smp_slot s;

                r = parse_slot(p, items[i], &s);
                if (r < 0)
                        return r;
                p->rsp->n_slots_seen++;
                if (p->rsp->n_slots < GW_SMP_SLOTS_MAX)
                        p->rsp->slots[p->rsp->n_slots++] = s;
        }
        return 0;
}

static int parse_map(struct parse *p, const cbor_item_t *map)
{
        struct gw_smp_rsp *rsp = p->rsp;
        struct cbor_pair *pairs = cbor_map_handle(map);
        bool have_rsn = false;
        int r = 0;

        for (size_t i = 0; r == 0 && i < cbor_map_size(map); i++) {
                const cbor_item_t *k = pairs[i].key, *v = pairs[i].value;

                if (key_is(k, "rc")) {
                        r = once(p, &rsp->have_rc, "rc");
                        if (r == 0)
                                r = get_int(p, v, "rc", &rsp->rc);
                } else if (key_is(k, "err")) {
                        r = once(p, &rsp->have_err, "err");
                        if (r == 0)
                                r = parse_err(p, v);
                } else if (key_is(k, "rsn")) {
                        r = once(p, &have_rsn, "rsn");
                        /* Only an explanation: a long one is cut, not refused. */
                        if (r == 0 && cbor_isa_string(v) && cbor_string_is_definite(v)) {
                                size_t n = cbor_string_length(v);

                                if (n >= sizeof(rsp->rsn))
                                        n = sizeof(rsp->rsn) - 1;
                                memcpy(rsp->rsn, cbor_string_handle(v), n);
                                rsp->rsn[n] = '\0';
                                for (size_t j = 0; j < n; j++)
                                        if ((unsigned char) rsp->rsn[j] < 0x20 ||
                                            (unsigned char) rsp->rsn[j] == 0x7f)
                                                rsp->rsn[j] = '?';
                        }
                } else if (key_is(k, "buf_size")) {
                        r = once(p, &rsp->have_buf_size, "buf_size");
                        if (r == 0)
                                r = get_uint(p, v, "buf_size", &rsp->buf_size);
                } else if (key_is(k, "buf_count")) {
                        r = once(p, &rsp->have_buf_count, "buf_count");
                        if (r == 0)
                                r = get_uint(p, v, "buf_count", &rsp->buf_count);
                } else if (key_is(k, "off")) {
                        r = once(p, &rsp->have_off, "off");
                        if (r == 0)
                                r = get_uint(p, v, "off", &rsp->off);
                } else if (key_is(k, "match")) {
                        r = once(p, &rsp->have_match, "match");
                        if (r == 0)
                                r = get_bool(p, v, "match", &rsp->match);
                } else if (key_is(k, "images")) {
                        r = once(p, &rsp->have_images, "images");
                        if (r == 0)
                                r = parse_images(p, v);
                }
        }
        return r;
}

int gw_smp_cbor_parse(const uint8_t *buf, size_t len, struct gw_smp_rsp *ret, char *why,
                      size_t why_size)
{
        struct parse p = {.rsp = ret, .why = why, .why_size = why_size};
        struct cbor_load_result lr;
        cbor_item_t *root;
        const char *shape;
        int r;

        memset(ret, 0, sizeof(*ret));
        if (len == 0)
                return bad(&p, "an empty response");
        shape = check_shape(buf, len);
        if (shape)
                return bad(&p, "%s", shape);
        root = cbor_load(buf, len, &lr);
        if (!root)
                return bad(&p, "libcbor could not load the response (error %d)", lr.error.code);
        if (!cbor_isa_map(root))
                r = bad(&p, "the response is not a map");
        else
                r = parse_map(&p, root);
        cbor_decref(&root);
        if (r < 0)
                memset(ret, 0, sizeof(*ret));
        return r;
}
