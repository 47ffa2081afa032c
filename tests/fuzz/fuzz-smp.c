/* Fuzz target for the smp protocol plugin (protocols/smp/): the input scripts the device's side
 * of an install (or an identify) on a virtual clock: raw console bytes, answers whose CBOR
 * bodies come straight from the input (framed and addressed correctly, so they reach the CBOR
 * layer and the state machine), answers a small device model gives (so that whole flows are
 * reached, with perturbations), timer expiries, a cancel, a lost link. The host checks everything
 * the plugin writes: whole, well-formed frames of lines of at most 127 bytes, packets within the
 * device's buffer, header lengths, CBOR maps, upload data equal to the image at its offset; that
 * a deadline is armed while it waits and none once it ended; and that it reads the image only
 * inside it. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cbor.h>
#include <openssl/evp.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "fuzz.h"

#define IMAGE_MAX   (26 * 1024)
#define PENDING_MAX 64
#define HDR_SIZE    64

struct req {
        uint8_t op, seq, id;
        uint16_t group;
        uint64_t off; /* uploads */
        size_t len;
        bool first;
};

struct host {
        struct gw_proto_host h;
        uint64_t now, deadline;
        int write_error;
        bool ended;

        uint8_t image[IMAGE_MAX];
        size_t size;
        uint8_t hash[32];
        /* The largest buffer the plugin may have taken from an answer (0: none yet); an
         * answer from the input may have said anything: then it is not checked. */
        uint64_t buf_size;
        bool buf_unknown;
        uint64_t progress;

        struct req pending[PENDING_MAX];
        size_t n_pending;

        /* The model device. */
        uint64_t up_off;
        bool uploaded, tested, swapped, confirmed, resetting;
};

static const struct gw_protocol_ops *ops;

static uint16_t crc16(const uint8_t *p, size_t n)
{
        uint16_t crc = 0;

        for (size_t i = 0; i < n; i++) {
                crc ^= (uint16_t) (p[i] << 8);
                for (int b = 0; b < 8; b++)
                        crc =
                            crc & 0x8000 ? (uint16_t) ((crc << 1) ^ 0x1021) : (uint16_t) (crc << 1);
        }
        return crc;
}

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
}

static uint64_t host_now_ms(void *ctx)
{
        return ((struct host *) ctx)->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        ((struct host *) ctx)->deadline = at_ms;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        char buf[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        /* FUZZ_VERBOSE=1: how each input ended, to see what the seeds reach. */
        if (getenv("FUZZ_VERBOSE"))
                fprintf(stderr, "  error: %s\n", buf);
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct host *h = ctx;

        fuzz_check(total == h->size && done <= total && done >= h->progress);
        h->progress = done;
}

static const cbor_item_t *get(const cbor_item_t *map, const char *key)
{
        struct cbor_pair *p = cbor_map_handle(map);

        for (size_t i = 0; i < cbor_map_size(map); i++)
                if (cbor_isa_string(p[i].key) && cbor_string_length(p[i].key) == strlen(key) &&
                    memcmp(cbor_string_handle(p[i].key), key, strlen(key)) == 0)
                        return p[i].value;
        return NULL;
}

/* One packet the plugin sent. */
static void check_packet(struct host *h, const uint8_t *p, size_t len)
{
        struct cbor_load_result lr;
        cbor_item_t *body;
        struct req r;
        size_t body_len;

        fuzz_check(len >= 8);
        body_len = (size_t) p[2] << 8 | p[3];
        fuzz_check(body_len == len - 8);
        fuzz_check(p[1] == 0 && (p[0] & 0xe0) == 0);
        if (h->buf_size && !h->buf_unknown)
                fuzz_check((len + 4 + 2) / 3 * 3 <= h->buf_size);
        r = (struct req){
            .op = p[0] & 7, .group = (uint16_t) (p[4] << 8 | p[5]), .seq = p[6], .id = p[7]};
        fuzz_check(r.op == 0 || r.op == 2);
        body = cbor_load(p + 8, body_len, &lr);
        fuzz_check(body && cbor_isa_map(body));
        if (r.group == 1 && r.id == 1) {
                const cbor_item_t *off = get(body, "off"), *data = get(body, "data");

                fuzz_check(off && cbor_isa_uint(off) && data && cbor_isa_bytestring(data));
                r.off = cbor_get_int(off);
                r.len = cbor_bytestring_length(data);
                r.first = r.off == 0;
                fuzz_check(r.off < h->size && r.len > 0 && r.len <= h->size - r.off);
                fuzz_check(memcmp(cbor_bytestring_handle(data), h->image + r.off, r.len) == 0);
                fuzz_check(r.first == (get(body, "len") != NULL));
                fuzz_check(r.first == (get(body, "sha") != NULL));
        }
        cbor_decref(&body);
        if (h->n_pending == PENDING_MAX) {
                memmove(h->pending, h->pending + 1, (PENDING_MAX - 1) * sizeof(r));
                h->n_pending--;
        }
        h->pending[h->n_pending++] = r;
}

/* Whole lines only, each a frame line: marker, strict base64, newline, 127 bytes at most. */
static int host_write(void *ctx, const void *buf, size_t n)
{
        struct host *h = ctx;
        const uint8_t *b = buf;
        uint8_t *acc = NULL;
        size_t have = 0, want = 0, i = 0;

        fuzz_check(!h->ended);
        if (h->write_error < 0) {
                int r = h->write_error;

                h->write_error = 0;
                return r;
        }
        while (i < n) {
                const uint8_t *nl = memchr(b + i, '\n', n - i);
                size_t line, k;
                uint8_t raw[128];
                int d;

                fuzz_check(nl != NULL);
                line = (size_t) (nl - (b + i)) + 1;
                fuzz_check(line <= 127 && line >= 7);
                fuzz_check((b[i] == 0x06 && b[i + 1] == 0x09) == (acc == NULL));
                fuzz_check((b[i] == 0x06 && b[i + 1] == 0x09) ||
                           (b[i] == 0x04 && b[i + 1] == 0x14));
                k = line - 3;
                fuzz_check(k % 4 == 0);
                d = EVP_DecodeBlock(raw, b + i + 2, (int) k);
                fuzz_check(d > 0);
                if (b[i + 2 + k - 1] == '=')
                        d -= b[i + 2 + k - 2] == '=' ? 2 : 1;
                if (!acc) {
                        want = (size_t) raw[0] << 8 | raw[1];
                        acc = malloc(want);
                        fuzz_check(acc != NULL && want >= 3);
                        memcpy(acc, raw + 2, (size_t) d - 2);
                        have = (size_t) d - 2;
                } else {
                        fuzz_check(have + (size_t) d <= want);
                        memcpy(acc + have, raw, (size_t) d);
                        have += (size_t) d;
                }
                if (have == want) {
                        fuzz_check(crc16(acc, want - 2) ==
                                   (uint16_t) (acc[want - 2] << 8 | acc[want - 1]));
                        check_packet(h, acc, want - 2);
                        free(acc);
                        acc = NULL;
                }
                i += line;
        }
        fuzz_check(acc == NULL);
        return 0;
}

static ssize_t reader_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        fuzz_check(off < h->size && n >= 1);
        if (n > h->size - off)
                n = h->size - (size_t) off;
        memcpy(buf, h->image + off, n);
        return (ssize_t) n;
}

/* An MCUboot image of body bytes from a seed. */
static void make_image(struct host *h, size_t body, uint8_t seed)
{
        uint8_t *d = h->image;
        uint32_t x = seed * 2654435761u + 7;
        unsigned len = 32;

        memset(d, 0, HDR_SIZE);
        d[0] = 0x3d;
        d[1] = 0xb8;
        d[2] = 0xf3;
        d[3] = 0x96;
        d[8] = HDR_SIZE;
        d[12] = (uint8_t) body;
        d[13] = (uint8_t) (body >> 8);
        d[14] = (uint8_t) (body >> 16);
        d[20] = 1;
        d[21] = seed;
        for (size_t i = 0; i < body; i++) {
                x = x * 1103515245u + 12345u;
                d[HDR_SIZE + i] = (uint8_t) (x >> 16);
        }
        EVP_Digest(d, HDR_SIZE + body, h->hash, &len, EVP_sha256(), NULL);
        d += HDR_SIZE + body;
        d[0] = 0x07;
        d[1] = 0x69;
        d[2] = 40;
        d[3] = 0;
        d[4] = 0x10;
        d[5] = 0;
        d[6] = 32;
        d[7] = 0;
        memcpy(d + 8, h->hash, 32);
        h->size = HDR_SIZE + body + 40;
}

/* ---- answers -------------------------------------------------------------------------------- */

static void deliver(struct host *h, void *priv, const uint8_t *req_hdr, const uint8_t *body,
                    size_t body_len, int *r)
{
        uint8_t pkt[8 + 1024], raw[2 + 8 + 1024 + 2], out[2048];
        size_t total, o = 0;
        uint16_t crc;

        if (body_len > 1024)
                body_len = 1024;
        memcpy(pkt, req_hdr, 8);
        pkt[2] = (uint8_t) (body_len >> 8);
        pkt[3] = (uint8_t) body_len;
        memcpy(pkt + 8, body, body_len);
        crc = crc16(pkt, 8 + body_len);
        total = 8 + body_len + 4;
        raw[0] = (uint8_t) ((8 + body_len + 2) >> 8);
        raw[1] = (uint8_t) (8 + body_len + 2);
        memcpy(raw + 2, pkt, 8 + body_len);
        raw[total - 2] = (uint8_t) (crc >> 8);
        raw[total - 1] = (uint8_t) crc;
        for (size_t off = 0; off < total;) {
                size_t n = total - off > 90 ? 90 : total - off;

                out[o++] = off == 0 ? 0x06 : 0x04;
                out[o++] = off == 0 ? 0x09 : 0x14;
                o += (size_t) EVP_EncodeBlock(out + o, raw + off, (int) n);
                out[o++] = '\n';
                off += n;
        }
        *r = ops->input(priv, out, o);
}

static void header_for(const struct req *q, uint8_t hdr[8])
{
        hdr[0] = (uint8_t) (q->op + 1);
        hdr[1] = 0;
        hdr[4] = (uint8_t) (q->group >> 8);
        hdr[5] = (uint8_t) q->group;
        hdr[6] = q->seq;
        hdr[7] = q->id;
}

static void put(cbor_item_t *m, const char *k, cbor_item_t *v)
{
        cbor_map_add(
            m, (struct cbor_pair){.key = cbor_move(cbor_build_string(k)), .value = cbor_move(v)});
}

static cbor_item_t *slot_item(unsigned slot, const uint8_t *hash, bool pending, bool confirmed,
                              bool active)
{
        cbor_item_t *e = cbor_new_definite_map(6);

        put(e, "slot", cbor_build_uint8((uint8_t) slot));
        put(e, "version", cbor_build_string(slot ? "1.0.0" : "0.9.0"));
        put(e, "hash", cbor_build_bytestring(hash, 32));
        put(e, "pending", cbor_build_bool(pending));
        put(e, "confirmed", cbor_build_bool(confirmed));
        put(e, "active", cbor_build_bool(active));
        return e;
}

/* What the model device answers to q; arg perturbs it. */
static cbor_item_t *model_answer(struct host *h, const struct req *q, uint8_t arg,
                                 const uint8_t *extra, size_t extra_len)
{
        static const uint8_t old_hash[32] = {1, 2, 3};
        cbor_item_t *m = cbor_new_definite_map(4);

        if (arg & 0x10) {
                /* Without buffer parameters the plugin assumes 256 bytes. */
                if (q->group == 0 && q->id == 6 && h->buf_size < 256)
                        h->buf_size = 256;
                put(m, "rc", cbor_build_uint8(arg & 0x0f));
                return m;
        }
        if (q->group == 0 && q->id == 6) {
                uint64_t b = 128 + (uint64_t) (arg & 7) * 200;

                /* A late answer to a resend may be ignored: the largest told is the bound. */
                if (b > h->buf_size)
                        h->buf_size = b;
                put(m, "buf_size", cbor_build_uint16((uint16_t) b));
                put(m, "buf_count", cbor_build_uint8((uint8_t) (1 + (arg >> 3 & 1) * 3)));
        } else if (q->group == 0 && q->id == 5) {
                h->resetting = true;
        } else if (q->group == 1 && q->id == 1) {
                uint64_t off = q->off == h->up_off || q->first ? q->off + q->len : h->up_off;

                if (arg & 1 && extra_len >= 2)
                        off = (uint64_t) (extra[0] | extra[1] << 8) * 16;
                if (off <= h->size)
                        h->up_off = off;
                if (h->up_off == h->size)
                        h->uploaded = true;
                put(m, "off", cbor_build_uint32((uint32_t) off));
                if (arg & 2)
                        put(m, "match", cbor_build_bool(arg & 4));
        } else if (q->group == 1 && q->id == 0) {
                cbor_item_t *list = cbor_new_definite_array(2);

                if (q->op == 2) {
                        if (h->uploaded && !h->swapped)
                                h->tested = true;
                        else if (h->swapped)
                                h->confirmed = true;
                }
                if (q->op == 0 && h->resetting) {
                        /* Back from the reset: swapped, or (arg 4) reverted by MCUboot. */
                        h->resetting = false;
                        if (arg & 4)
                                h->tested = false;
                        else if (h->tested)
                                h->swapped = true;
                }
                if (h->swapped) {
                        cbor_array_push(
                            list, cbor_move(slot_item(0, h->hash, false, h->confirmed, true)));
                        cbor_array_push(
                            list, cbor_move(slot_item(1, old_hash, false, !h->confirmed, false)));
                } else {
                        cbor_array_push(list, cbor_move(slot_item(0, old_hash, false, true, true)));
                        if (h->uploaded)
                                cbor_array_push(list, cbor_move(slot_item(1, h->hash, h->tested,
                                                                          false, false)));
                }
                put(m, "images", list);
        }
        return m;
}

/* Checks what an op returned; true when the operation ended. */
static bool check_result(struct host *h, int r)
{
        if (r == GW_PROTO_CONTINUE) {
                fuzz_check(h->deadline > h->now);
                return false;
        }
        fuzz_check(r == GW_PROTO_DONE || r < 0);
        fuzz_check(h->deadline == 0);
        if (getenv("FUZZ_VERBOSE"))
                fprintf(stderr, "  ended: %d after %" PRIu64 " of %zu bytes acknowledged\n", r,
                        h->progress, h->size);
        h->ended = true;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct host h;
        struct gw_options *opts, *facts = NULL;
        struct gw_reader reader = {0};
        void *priv;
        size_t i = 3;
        char v[32];
        int r;

        if (!ops)
                ops = gw_protocol_find("smp");
        fuzz_check(ops != NULL);
        if (size < 3)
                return 0;
        memset(&h, 0, sizeof(h));
        h.now = 1000;
        h.h = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &h,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .write = host_write,
            .progress = host_progress,
            .set_error = host_set_error,
        };
        make_image(&h, 64 + (size_t) data[0] * 97, data[2]);
        opts = gw_options_new();
        fuzz_check(opts != NULL);
        if (data[1] & 3) {
                snprintf(v, sizeof(v), "%u", data[1] & 3);
                gw_options_set(opts, "window", v);
        }
        if (data[1] & 4)
                gw_options_set(opts, "smp-version", "2");
        if (data[1] & 8)
                gw_options_set(opts, "confirm", "false");
        snprintf(v, sizeof(v), "%u", data[1] >> 4 & 3);
        gw_options_set(opts, "retries", v);
        if (data[1] & 0x40)
                gw_options_set(opts, "identify-params", "true");
        priv = calloc(1, ops->priv_size);
        fuzz_check(priv != NULL);
        fuzz_check(ops->init(priv, opts, &h.h) == 0);
        reader = (struct gw_reader){.size = h.size, .ctx = &h, .pread = reader_pread};
        if (data[1] & 0x80) {
                facts = gw_options_new();
                r = ops->identify(priv, facts);
        } else {
                r = ops->install(priv, &reader);
        }
        check_result(&h, r);
        while (!h.ended && i < size) {
                uint8_t a = data[i++], arg = a >> 3;

                switch (a & 7) {
                case 0: { /* raw console bytes */
                        size_t n = (size_t) arg + 1;

                        if (n > size - i)
                                n = size - i;
                        r = ops->input(priv, data + i, n);
                        i += n;
                        break;
                }
                case 1:   /* an answer whose body is the input's */
                case 2: { /* the model's answer */
                        struct req q;
                        uint8_t hdr[8];
                        size_t n = i < size ? data[i++] : 0;

                        if (h.n_pending == 0) {
                                r = GW_PROTO_CONTINUE;
                                break;
                        }
                        q = h.pending[arg & 1 && h.n_pending > 1 ? 1 : 0];
                        memmove(h.pending + (arg & 1 && h.n_pending > 1),
                                h.pending + (arg & 1 && h.n_pending > 1) + 1,
                                (h.n_pending - (arg & 1 && h.n_pending > 1) - 1) * sizeof(q));
                        h.n_pending--;
                        header_for(&q, hdr);
                        if (n > size - i)
                                n = size - i;
                        if ((a & 7) == 1) {
                                if (q.group == 0 && q.id == 6)
                                        h.buf_unknown = true;
                                deliver(&h, priv, hdr, data + i, n, &r);
                                i += n;
                        } else {
                                cbor_item_t *m = model_answer(&h, &q, arg, data + i, n);
                                unsigned char *buf = NULL;
                                size_t bsize = 0, blen = cbor_serialize_alloc(m, &buf, &bsize);

                                cbor_decref(&m);
                                deliver(&h, priv, hdr, buf, blen, &r);
                                free(buf);
                        }
                        break;
                }
                case 3: /* the deadline passes */
                        if (h.deadline == 0) {
                                r = GW_PROTO_CONTINUE;
                                break;
                        }
                        h.now = h.deadline;
                        r = ops->timeout(priv);
                        break;
                case 4: /* time passes */
                        h.now += (uint64_t) arg * 250;
                        r = h.deadline && h.now >= h.deadline ? ops->timeout(priv)
                                                              : GW_PROTO_CONTINUE;
                        break;
                case 5: /* an early timer: nothing changes */
                        r = ops->timeout(priv);
                        break;
                case 6:
                        r = ops->cancel(priv);
                        fuzz_check(r == -ECANCELED);
                        break;
                default:
                        if (arg & 1) {
                                h.write_error = -EIO;
                                r = GW_PROTO_CONTINUE;
                        } else {
                                r = ops->hangup(priv);
                                fuzz_check(r < 0);
                        }
                        break;
                }
                check_result(&h, r);
        }
        /* Silence to the end: the plugin gives up within a bounded number of timeouts. */
        for (unsigned k = 0; !h.ended && k < 2000; k++) {
                fuzz_check(h.deadline != 0);
                h.now = h.deadline;
                check_result(&h, ops->timeout(priv));
        }
        fuzz_check(h.ended);
        ops->done(priv);
        free(priv);
        gw_options_free(opts);
        gw_options_free(facts);
        return 0;
}
