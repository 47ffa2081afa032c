/* Tests for the smp protocol plugin: its framing layer and CBOR layer against reference vectors
 * and an independent encoder/decoder written here, the upload arithmetic, and whole flows on the
 * fake link against a model device (below) whose behaviour and faults each table row sets. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <cbor.h>
#include <openssl/evp.h>

#include "gw/options.h"
#include "gw/plugin.h"

#include "../../protocols/smp/mcuboot-image.h"
#include "../../protocols/smp/smp-cbor.h"
#include "../../protocols/smp/smp-serial.h"
#include "fake-link.h"

extern const struct gw_protocol_ops gw_protocol_smp_ops;

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- independent reference: CRC, base64 framing ---------------------------------------------- */

static uint16_t ref_crc(const uint8_t *p, size_t n)
{
        uint16_t crc = 0;

        for (size_t i = 0; i < n; i++) {
                crc ^= (uint16_t) (p[i] << 8);
                for (int b = 0; b < 8; b++)
                        crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                             : (uint16_t) (crc << 1);
        }
        return crc;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 written out bit by bit, so that the plugin's OpenSSL-based coder is checked against
 * something else. */
static size_t ref_b64(const uint8_t *in, size_t n, char *out)
{
        size_t o = 0;

        for (size_t i = 0; i < n; i += 3) {
                uint32_t v = (uint32_t) in[i] << 16;
                size_t k = n - i < 3 ? n - i : 3;

                if (k > 1)
                        v |= (uint32_t) in[i + 1] << 8;
                if (k > 2)
                        v |= in[i + 2];
                out[o++] = b64_alphabet[v >> 18 & 63];
                out[o++] = b64_alphabet[v >> 12 & 63];
                out[o++] = k > 1 ? b64_alphabet[v >> 6 & 63] : '=';
                out[o++] = k > 2 ? b64_alphabet[v & 63] : '=';
        }
        return o;
}

static int b64_val(char c)
{
        const char *p = strchr(b64_alphabet, c);

        return c && p ? (int) (p - b64_alphabet) : -1;
}

/* Strict decode of one line's base64; -1 when it is not. */
static long ref_unb64(const char *in, size_t n, uint8_t *out)
{
        size_t o = 0;

        if (n == 0 || n % 4)
                return -1;
        for (size_t i = 0; i < n; i += 4) {
                int v[4];
                bool last = i + 4 == n;

                for (int k = 0; k < 4; k++) {
                        v[k] = b64_val(in[i + k]);
                        if (v[k] < 0 && !(in[i + k] == '=' && last && k >= 2))
                                return -1;
                }
                out[o++] = (uint8_t) (v[0] << 2 | v[1] >> 4);
                if (in[i + 2] != '=')
                        out[o++] = (uint8_t) (v[1] << 4 | v[2] >> 2);
                if (in[i + 3] != '=')
                        out[o++] = (uint8_t) (v[2] << 6 | v[3]);
        }
        return (long) o;
}

/* A frame the way this file's model device sends it: 90 raw bytes a line (a valid split the
 * plugin's own encoder does not use), markers, newline. */
static size_t ref_frame(const uint8_t *pkt, size_t len, uint8_t *out)
{
        size_t total = len + 4, o = 0, off = 0;
        uint8_t *raw = malloc(total);
        uint16_t crc = ref_crc(pkt, len);

        assert_non_null(raw);
        raw[0] = (uint8_t) ((len + 2) >> 8);
        raw[1] = (uint8_t) (len + 2);
        memcpy(raw + 2, pkt, len);
        raw[2 + len] = (uint8_t) (crc >> 8);
        raw[3 + len] = (uint8_t) crc;
        while (off < total) {
                size_t n = total - off > 90 ? 90 : total - off;

                out[o++] = off == 0 ? 0x06 : 0x04;
                out[o++] = off == 0 ? 0x09 : 0x14;
                o += ref_b64(raw + off, n, (char *) out + o);
                out[o++] = '\n';
                off += n;
        }
        free(raw);
        return o;
}

/* What a sequence of frames decodes to, checked strictly (the host's frames must all be
 * well-formed): each line at most 127 bytes, only the last padded, the CRC whole on the last
 * line. Returns the packets found, each malloc'd into pkts. */
struct ref_stats {
        size_t lines, longest_line;
};

static size_t ref_unframe(const uint8_t *buf, size_t n, uint8_t **pkts, size_t *lens, size_t max,
                          struct ref_stats *st)
{
        size_t i = 0, count = 0;
        uint8_t *acc = NULL;
        size_t have = 0, want = 0;

        while (i < n) {
                const uint8_t *nl = memchr(buf + i, '\n', n - i);
                size_t line_len;
                uint8_t raw[200];
                long k;
                bool initial;

                assert_non_null(nl);
                line_len = (size_t) (nl - (buf + i)) + 1;
                assert_true(line_len <= GW_SMP_LINE_MAX);
                if (st) {
                        st->lines++;
                        if (line_len > st->longest_line)
                                st->longest_line = line_len;
                }
                initial = buf[i] == 0x06 && buf[i + 1] == 0x09;
                assert_true(initial || (buf[i] == 0x04 && buf[i + 1] == 0x14));
                assert_true(initial == (acc == NULL));
                k = ref_unb64((const char *) buf + i + 2, line_len - 3, raw);
                assert_true(k > 0);
                if (initial) {
                        assert_true(k >= 2);
                        want = (size_t) raw[0] << 8 | raw[1];
                        acc = malloc(want);
                        assert_non_null(acc);
                        have = 0;
                        memcpy(acc, raw + 2, (size_t) k - 2);
                        have = (size_t) k - 2;
                } else {
                        assert_true(have + (size_t) k <= want);
                        memcpy(acc + have, raw, (size_t) k);
                        have += (size_t) k;
                }
                if (have < want) {
                        /* Not the last line: no padding, and the CRC is not started. */
                        assert_int_equal(buf[i + line_len - 2] == '=', 0);
                        assert_true(have <= want - 2);
                } else {
                        assert_int_equal(ref_crc(acc, want - 2),
                                         (uint16_t) (acc[want - 2] << 8 | acc[want - 1]));
                        assert_true(count < max);
                        pkts[count] = acc;
                        lens[count] = want - 2;
                        count++;
                        acc = NULL;
                }
                i += line_len;
        }
        assert_null(acc);
        return count;
}

/* ---- images ---------------------------------------------------------------------------------- */

struct image {
        uint8_t *data;
        size_t size;
        uint8_t hash[32];
        char version[32];
};

static void put_le16(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

/* An MCUboot image: header of hdr_size, body bytes, optional protected TLV area, SHA-256 TLV. */
static void make_image_ex(struct image *img, uint8_t major, uint8_t minor, uint16_t rev,
                          uint32_t build, size_t body, uint32_t seed, bool prot)
{
        size_t hdr = 64, prot_size = prot ? 4 + 8 : 0, tlv = 4 + 4 + 32;
        uint32_t x = seed * 2654435761u + 1;
        unsigned len = 32;
        uint8_t *d;

        img->size = hdr + body + prot_size + tlv;
        d = img->data = calloc(1, img->size);
        assert_non_null(d);
        put_le32(d, 0x96f3b83d);
        put_le16(d + 8, (uint16_t) hdr);
        put_le16(d + 10, (uint16_t) prot_size);
        put_le32(d + 12, (uint32_t) body);
        d[20] = major;
        d[21] = minor;
        put_le16(d + 22, rev);
        put_le32(d + 24, build);
        for (size_t i = 0; i < body; i++) {
                x = x * 1103515245u + 12345u;
                d[hdr + i] = (uint8_t) (x >> 16);
        }
        if (prot) {
                uint8_t *p = d + hdr + body;

                put_le16(p, 0x6908);
                put_le16(p + 2, (uint16_t) prot_size);
                put_le16(p + 4, 0x50);
                put_le16(p + 6, 4);
                put_le32(p + 8, build);
        }
        EVP_Digest(d, hdr + body + prot_size, img->hash, &len, EVP_sha256(), NULL);
        {
                uint8_t *t = d + hdr + body + prot_size;

                put_le16(t, 0x6907);
                put_le16(t + 2, (uint16_t) tlv);
                put_le16(t + 4, 0x10);
                put_le16(t + 6, 32);
                memcpy(t + 8, img->hash, 32);
        }
        if (build)
                snprintf(img->version, sizeof(img->version), "%u.%u.%u.%u", major, minor, rev,
                         build);
        else
                snprintf(img->version, sizeof(img->version), "%u.%u.%u", major, minor, rev);
}

static void make_image(struct image *img, uint8_t major, uint8_t minor, uint16_t rev,
                       uint32_t build, size_t body, uint32_t seed)
{
        make_image_ex(img, major, minor, rev, build, body, seed, false);
}

static void hexs(const uint8_t *p, size_t n, char *out)
{
        for (size_t i = 0; i < n; i++)
                sprintf(out + 2 * i, "%02x", p[i]);
}

struct mem_image {
        const uint8_t *data;
        size_t size;
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem_image *m = ctx;

        if (off >= m->size)
                return 0;
        if (n > m->size - off)
                n = m->size - off;
        memcpy(buf, m->data + off, n);
        return (ssize_t) n;
}

/* "k=v,k=v" into an options list. */
static struct gw_options *parse_opts(const char *spec)
{
        struct gw_options *o = gw_options_new();
        char buf[512], *save = NULL;

        assert_non_null(o);
        if (!spec)
                return o;
        assert_true(strlen(spec) < sizeof(buf));
        strcpy(buf, spec);
        for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');

                assert_non_null(eq);
                *eq = '\0';
                assert_int_equal(gw_options_set(o, kv, eq + 1), 0);
        }
        return o;
}

/* ---- the model device ------------------------------------------------------------------------ */

enum swap { SWAP_NONE, SWAP_TEST, SWAP_PERM, SWAP_REVERT };

struct mslot {
        bool present;
        char version[32];
        uint8_t hash[32];
};

/* A device with an SMP server behind the fake link. Configuration first (what a table row sets),
 * then state and what it observed. */
struct model {
        /* configuration */
        uint64_t buf_size, buf_count;
        bool no_params;       /* os params answered MGMT_ERR_ENOTSUP */
        bool v2_errors;       /* errors as {"err": {"group", "rc"}} */
        bool legacy_rc;       /* answers carry "rc": 0 */
        bool indefinite;      /* maps and lists of indefinite length, as zcbor writes them */
        bool noise;           /* a log line before every answer */
        unsigned chunk;       /* deliver answers this many bytes at a time (0 = whole) */
        int start;            /* 0: runs the old image; 1: runs the new one, confirmed; 2: runs
                               * it unconfirmed (test swap done); 3: slot 1 holds it marked
                               * for test */
        unsigned drop_upload; /* the Nth upload request is lost on the line */
        unsigned rc_upload;   /* the Nth upload request is answered with rc_value */
        int rc_value;
        bool rc_group;         /* ... as an img_mgmt group error */
        bool reorder;          /* answers to upload requests come in swapped pairs */
        bool dup;              /* every answer twice */
        uint64_t resume_at;    /* holds this much of an interrupted upload of the image */
        bool holds_whole;      /* answers the first request with off = size (IMAGE_CHECK) */
        bool match_false;      /* the last upload answer says "match": false */
        bool wrong_hash;       /* slot 1 reports another hash after the upload */
        bool revert;           /* the new image does not confirm: MCUboot reverts it */
        bool dead_after_reset; /* nothing answers after the reset */
        unsigned polls_lost;   /* polls unanswered while it reboots */
        bool early_poll;       /* the first poll is answered before the reset happens */
        bool silent;           /* nothing answers, ever */
        bool refuse_confirm;   /* the confirm is refused (IMG_MGMT_ERR_IMAGE_CONFIRMATION_DENIED) */
        uint64_t lose_upload_at; /* resets when an upload reaches this offset: that request goes
                                  * unanswered and the upload state is lost (img_mgmt's is RAM) */
        unsigned down;           /* upload requests lost while it reboots */

        /* state */
        const struct image *img, *old;
        struct mslot slot0, slot1;
        enum swap swap;
        bool up_active;
        uint64_t up_off, up_size;
        uint8_t up_sha[32];
        uint8_t *data;
        bool rebooting;
        bool swapped;

        /* observed */
        unsigned requests, uploads, params, tests, confirms, resets, reads;
        unsigned in_flight, in_flight_max;
        size_t max_packet;
        uint64_t data_bytes;
        struct ref_stats lines;
        uint8_t seen_ver; /* the version bits of the last request */
};

struct answer {
        uint8_t *bytes;
        size_t len;
        bool upload;
};

struct world {
        struct fake_link f;
        struct gw_options *opts;
        struct image img, old;
        struct mem_image mem;
        struct gw_reader reader;
        struct model m;
        struct answer answers[64];
        size_t n_answers;
};

static void slot_from(struct mslot *s, const struct image *img)
{
        s->present = true;
        snprintf(s->version, sizeof(s->version), "%s", img->version);
        memcpy(s->hash, img->hash, 32);
}

static cbor_item_t *new_map(const struct model *m, size_t n)
{
        return m->indefinite ? cbor_new_indefinite_map() : cbor_new_definite_map(n);
}

static void put(cbor_item_t *map, const char *key, cbor_item_t *value)
{
        assert_true(cbor_map_add(map, (struct cbor_pair){.key = cbor_move(cbor_build_string(key)),
                                                         .value = cbor_move(value)}));
}

static cbor_item_t *uint_item(uint64_t v)
{
        return v < 256 ? cbor_build_uint8((uint8_t) v) : cbor_build_uint64(v);
}

static void queue_answer(struct world *w, const uint8_t *req, cbor_item_t *body, bool upload)
{
        struct model *m = &w->m;
        unsigned char *cb = NULL;
        size_t size = 0, n = cbor_serialize_alloc(body, &cb, &size);
        uint8_t *pkt = malloc(8 + n), *out;
        size_t len;
        static const char noise[] = "[00:00:01.234,000] <inf> app: something happened\r\n";

        cbor_decref(&body);
        assert_non_null(pkt);
        memcpy(pkt, req, 8);
        pkt[0] = (uint8_t) ((req[0] & 0x18) | ((req[0] & 7) + 1));
        pkt[2] = (uint8_t) (n >> 8);
        pkt[3] = (uint8_t) n;
        memcpy(pkt + 8, cb, n);
        free(cb);
        out = malloc(2 * (8 + n) + 64 + sizeof(noise));
        assert_non_null(out);
        len = 0;
        if (m->noise) {
                memcpy(out, noise, sizeof(noise) - 1);
                len = sizeof(noise) - 1;
        }
        len += ref_frame(pkt, 8 + n, out + len);
        free(pkt);
        assert_true(w->n_answers < N(w->answers));
        w->answers[w->n_answers++] = (struct answer){.bytes = out, .len = len, .upload = upload};
        if (m->dup) {
                uint8_t *copy = malloc(len);

                assert_non_null(copy);
                memcpy(copy, out, len);
                assert_true(w->n_answers < N(w->answers));
                w->answers[w->n_answers++] = (struct answer){.bytes = copy, .len = len};
        }
}

static void answer_error(struct world *w, const uint8_t *req, int v1, int group_rc)
{
        cbor_item_t *map = new_map(&w->m, 1);

        if (w->m.v2_errors) {
                cbor_item_t *e = new_map(&w->m, 2);

                put(e, "group", uint_item(req[5]));
                put(e, "rc", uint_item((uint64_t) group_rc));
                put(map, "err", e);
        } else {
                put(map, "rc", uint_item((uint64_t) v1));
        }
        queue_answer(w, req, map, false);
}

static cbor_item_t *state_body(const struct model *m)
{
        cbor_item_t *map = new_map(m, 2), *list;
        const struct mslot *slots[2] = {&m->slot0, &m->slot1};

        list = m->indefinite ? cbor_new_indefinite_array() : cbor_new_definite_array(2);
        for (int i = 0; i < 2; i++) {
                cbor_item_t *e;

                if (!slots[i]->present)
                        continue;
                e = new_map(m, 8);
                put(e, "slot", uint_item((uint64_t) i));
                put(e, "version", cbor_build_string(slots[i]->version));
                put(e, "hash", cbor_build_bytestring(slots[i]->hash, 32));
                put(e, "bootable", cbor_build_bool(true));
                put(e, "pending",
                    cbor_build_bool(i == 1 && (m->swap == SWAP_TEST || m->swap == SWAP_PERM)));
                put(e, "confirmed",
                    cbor_build_bool(i == 0 ? m->swap != SWAP_REVERT : m->swap == SWAP_REVERT));
                put(e, "active", cbor_build_bool(i == 0));
                put(e, "permanent", cbor_build_bool(i == 1 && m->swap == SWAP_PERM));
                assert_true(cbor_array_push(list, cbor_move(e)));
        }
        put(map, "images", list);
        if (m->legacy_rc)
                put(map, "rc", uint_item(0));
        return map;
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

/* MCUboot at the reset: the test swap, or its revert. */
static void model_boot(struct model *m)
{
        m->rebooting = false;
        if (m->dead_after_reset) {
                m->silent = true;
                return;
        }
        if (m->swap == SWAP_TEST || m->swap == SWAP_PERM) {
                struct mslot t = m->slot0;
                bool test = m->swap == SWAP_TEST;

                m->slot0 = m->slot1;
                m->slot1 = t;
                m->swap = test ? SWAP_REVERT : SWAP_NONE;
                if (test && m->revert) {
                        /* The new image faults before it is confirmed: swapped back. */
                        t = m->slot0;
                        m->slot0 = m->slot1;
                        m->slot1 = t;
                        m->swap = SWAP_NONE;
                }
        } else if (m->swap == SWAP_REVERT) {
                struct mslot t = m->slot0;

                m->slot0 = m->slot1;
                m->slot1 = t;
                m->swap = SWAP_NONE;
        }
}

static void model_upload(struct world *w, const uint8_t *req, const cbor_item_t *body)
{
        struct model *m = &w->m;
        const cbor_item_t *off_i = get(body, "off"), *data_i = get(body, "data");
        const cbor_item_t *len_i = get(body, "len"), *sha_i = get(body, "sha");
        uint64_t off;
        size_t n;
        cbor_item_t *map;

        m->uploads++;
        if (m->rc_upload && m->uploads == m->rc_upload) {
                if (m->rc_group)
                        answer_error(w, req, m->rc_value, m->rc_value);
                else {
                        map = new_map(m, 1);
                        put(map, "rc", uint_item((uint64_t) m->rc_value));
                        queue_answer(w, req, map, true);
                }
                return;
        }
        assert_non_null(off_i);
        assert_non_null(data_i);
        assert_true(cbor_isa_uint(off_i) && cbor_isa_bytestring(data_i));
        off = cbor_get_int(off_i);
        n = cbor_bytestring_length(data_i);
        if (off == 0) {
                /* The first request carries the header, the length and the file's SHA-256. */
                uint8_t sha[32];
                unsigned sl = 32;

                assert_non_null(len_i);
                assert_non_null(sha_i);
                assert_int_equal(cbor_get_int(len_i), m->img->size);
                assert_int_equal(cbor_bytestring_length(sha_i), 32);
                EVP_Digest(m->img->data, m->img->size, sha, &sl, EVP_sha256(), NULL);
                assert_memory_equal(cbor_bytestring_handle(sha_i), sha, 32);
                assert_true(n >= 32);
                if (m->holds_whole) {
                        memcpy(m->data, m->img->data, m->img->size);
                        m->up_off = m->img->size;
                        m->holds_whole = false;
                        m->up_active = false;
                        slot_from(&m->slot1, m->img);
                        goto answer;
                }
                if (m->resume_at) {
                        memcpy(m->data, m->img->data, (size_t) m->resume_at);
                        m->up_active = true;
                        m->up_off = m->resume_at;
                        m->up_size = m->img->size;
                        m->resume_at = 0;
                        goto answer;
                }
                m->up_active = true;
                m->up_off = 0;
                m->up_size = cbor_get_int(len_i);
                m->slot1.present = false;
        } else {
                assert_null(len_i);
                assert_null(sha_i);
                if (!m->up_active || off != m->up_off)
                        goto answer;
        }
        assert_true(off + n <= m->up_size);
        if (m->lose_upload_at && off + n >= m->lose_upload_at) {
                m->lose_upload_at = 0;
                m->up_active = false;
                m->up_off = 0;
                m->in_flight--; /* gone with the reset */
                m->down = 2;    /* and the rest of the window, while it reboots */
                return;
        }
        memcpy(m->data + off, cbor_bytestring_handle(data_i), n);
        m->up_off += n;
        m->data_bytes += n;
answer:
        map = new_map(m, 3);
        if (m->legacy_rc)
                put(map, "rc", uint_item(0));
        put(map, "off", uint_item(m->up_off));
        if (m->up_active && m->up_off == m->up_size) {
                assert_memory_equal(m->data, m->img->data, m->img->size);
                m->up_active = false;
                slot_from(&m->slot1, m->img);
                if (m->wrong_hash)
                        m->slot1.hash[5] ^= 1;
                put(map, "match", cbor_build_bool(!m->match_false));
        }
        queue_answer(w, req, map, true);
}

static void model_state_write(struct world *w, const uint8_t *req, const cbor_item_t *body)
{
        struct model *m = &w->m;
        const cbor_item_t *h = get(body, "hash"), *c = get(body, "confirm");
        bool confirm;

        assert_non_null(c);
        confirm = cbor_get_bool(c);
        if (!confirm) {
                m->tests++;
                assert_non_null(h);
                assert_int_equal(cbor_bytestring_length(h), 32);
                if (!m->slot1.present || memcmp(cbor_bytestring_handle(h), m->slot1.hash, 32)) {
                        answer_error(w, req, 3, 8);
                        return;
                }
                m->swap = SWAP_TEST;
        } else {
                m->confirms++;
                /* The plugin confirms the running image, without a hash. */
                assert_null(h);
                if (m->refuse_confirm) {
                        answer_error(w, req, 6, 32);
                        return;
                }
                if (m->swap == SWAP_REVERT)
                        m->swap = SWAP_NONE;
        }
        queue_answer(w, req, state_body(m), false);
}

/* Takes one request the host wrote and answers it (or not). */
static void model_request(struct world *w, const uint8_t *pkt, size_t len)
{
        struct model *m = &w->m;
        uint8_t op = pkt[0] & 7;
        uint16_t group = (uint16_t) (pkt[4] << 8 | pkt[5]);
        uint8_t id = pkt[7];
        size_t body_len = (size_t) pkt[2] << 8 | pkt[3];
        struct cbor_load_result lr;
        cbor_item_t *body;

        assert_true(len >= 8);
        assert_int_equal(body_len, len - 8);
        assert_int_equal(pkt[1], 0);
        m->seen_ver = pkt[0] >> 3 & 3;
        m->requests++;
        if (len > m->max_packet)
                m->max_packet = len;
        /* The device reassembles length field, packet and CRC, in groups of three, into its
         * buffer: nothing longer may come. */
        assert_true((len + 4 + 2) / 3 * 3 <= m->buf_size);
        body = cbor_load(pkt + 8, body_len, &lr);
        assert_non_null(body);
        assert_true(cbor_isa_map(body));
        if (group == 1 && id == 1 && op == 2) {
                if (m->drop_upload && m->uploads + 1 == m->drop_upload) {
                        m->uploads++;
                        m->drop_upload = 0;
                } else if (m->down) {
                        m->uploads++;
                        m->down--;
                } else if (!m->silent) {
                        m->in_flight++;
                        if (m->in_flight > m->in_flight_max)
                                m->in_flight_max = m->in_flight;
                        model_upload(w, pkt, body);
                }
        } else if (m->silent) {
                /* nothing */
        } else if (group == 0 && id == 6 && op == 0) {
                m->params++;
                if (m->no_params) {
                        answer_error(w, pkt, 8, 1);
                } else {
                        cbor_item_t *map = new_map(m, 2);

                        put(map, "buf_size", uint_item(m->buf_size));
                        put(map, "buf_count", uint_item(m->buf_count));
                        queue_answer(w, pkt, map, false);
                }
        } else if (group == 1 && id == 0 && op == 0) {
                m->reads++;
                if (m->rebooting) {
                        if (m->early_poll) {
                                /* Asked before the reset happened: the old state. */
                                m->early_poll = false;
                                queue_answer(w, pkt, state_body(m), false);
                        } else if (m->polls_lost) {
                                m->polls_lost--;
                        } else {
                                model_boot(m);
                                if (!m->silent)
                                        queue_answer(w, pkt, state_body(m), false);
                        }
                } else {
                        queue_answer(w, pkt, state_body(m), false);
                }
        } else if (group == 1 && id == 0 && op == 2) {
                model_state_write(w, pkt, body);
        } else if (group == 0 && id == 5 && op == 2) {
                m->resets++;
                queue_answer(w, pkt, new_map(m, 0), false);
                m->rebooting = true;
        } else {
                answer_error(w, pkt, 8, 1);
        }
        cbor_decref(&body);
}

/* Everything the host wrote since the last call, as requests. */
static size_t model_take(struct world *w)
{
        size_t n = fake_link_pending(&w->f), count;
        uint8_t *pkts[64];
        size_t lens[64];

        if (n == 0)
                return 0;
        count = ref_unframe(fake_link_peek(&w->f), n, pkts, lens, N(pkts), &w->m.lines);
        fake_link_take(&w->f, NULL, n);
        for (size_t i = 0; i < count; i++) {
                model_request(w, pkts[i], lens[i]);
                free(pkts[i]);
        }
        return count;
}

/* Delivers one queued answer (in chunks); reorder swaps each pair of upload answers. */
static int deliver_one(struct world *w)
{
        struct answer a;
        int r = GW_PROTO_CONTINUE;

        if (w->m.reorder && !w->m.swapped && w->n_answers >= 2 && w->answers[0].upload &&
            w->answers[1].upload) {
                a = w->answers[0];
                w->answers[0] = w->answers[1];
                w->answers[1] = a;
                w->m.swapped = true; /* the other one of the pair goes next */
        } else {
                w->m.swapped = false;
        }
        a = w->answers[0];
        memmove(w->answers, w->answers + 1, (w->n_answers - 1) * sizeof(a));
        w->n_answers--;
        if (a.upload && w->m.in_flight)
                w->m.in_flight--;
        for (size_t off = 0; off < a.len && r == GW_PROTO_CONTINUE;) {
                size_t k = w->m.chunk ? w->m.chunk : a.len;

                if (k > a.len - off)
                        k = a.len - off;
                r = fake_link_deliver(&w->f, a.bytes + off, k);
                off += k;
        }
        free(a.bytes);
        return r;
}

/* Runs the operation to its end: answers as the model gives them, time as the host waits. */
static int drive(struct world *w, int r)
{
        for (unsigned i = 0; i < 20000 && r == GW_PROTO_CONTINUE; i++) {
                model_take(w);
                if (w->n_answers) {
                        /* Pairs go out swapped only when both are there. */
                        r = deliver_one(w);
                        continue;
                }
                assert_true(w->f.deadline != 0);
                r = fake_link_expire(&w->f);
        }
        model_take(w);
        assert_true(r != GW_PROTO_CONTINUE);
        w->f.last_checked = true;
        return r;
}

static void world_start(struct world *w, const char *opts, size_t body)
{
        memset(w, 0, sizeof(*w));
        fake_link_init(&w->f, &gw_protocol_smp_ops);
        w->opts = parse_opts(opts);
        assert_int_equal(fake_link_open(&w->f, w->opts), 0);
        make_image(&w->old, 1, 0, 0, 0, 3000, 99);
        make_image(&w->img, 1, 4, 2, 5, body, 7);
        w->mem = (struct mem_image){.data = w->img.data, .size = w->img.size};
        w->reader = (struct gw_reader){
            .size = w->img.size, .name = "app.bin", .ctx = &w->mem, .pread = mem_pread};
        w->m.buf_size = 384;
        w->m.buf_count = 4;
        w->m.img = &w->img;
        w->m.old = &w->old;
        slot_from(&w->m.slot0, &w->old);
        w->m.data = calloc(1, w->img.size);
        assert_non_null(w->m.data);
}

static void world_end(struct world *w)
{
        for (size_t i = 0; i < w->n_answers; i++)
                free(w->answers[i].bytes);
        fake_link_done(&w->f);
        gw_options_free(w->opts);
        free(w->img.data);
        free(w->old.data);
        free(w->m.data);
}

/* Applies a row's starting point. */
static void model_start(struct world *w, int start)
{
        struct model *m = &w->m;

        switch (start) {
        case 1:
                slot_from(&m->slot0, &w->img);
                slot_from(&m->slot1, &w->old);
                break;
        case 2:
                slot_from(&m->slot0, &w->img);
                slot_from(&m->slot1, &w->old);
                m->swap = SWAP_REVERT;
                break;
        case 3:
                slot_from(&m->slot1, &w->img);
                m->swap = SWAP_TEST;
                break;
        default:
                break;
        }
}

/* ---- framing ----------------------------------------------------------------------------------
 */

struct collected {
        size_t n;
        size_t lens[8];
        uint8_t pkts[8][600];
};

static int collect(void *u, const uint8_t *p, size_t l)
{
        struct collected *c = u;

        assert_true(c->n < 8 && l <= sizeof(c->pkts[0]));
        memcpy(c->pkts[c->n], p, l);
        c->lens[c->n++] = l;
        return 0;
}

/* mcumgr's own frame of an os reset request, as captured from its command-line tool and
 * published in a forum thread: write, group 0, seq 0x8a, id 5, body {} (a0). */
static void test_documented_frame(void **state)
{
        static const uint8_t pkt[] = {0x02, 0x00, 0x00, 0x01, 0x00, 0x00, 0x8a, 0x05, 0xa0};
        static const char frame[] = "\x06\x09"
                                    "AAsCAAABAACKBaA1Qw==\n";
        uint8_t out[64];
        struct gw_smp_deframer d;
        ssize_t n = gw_smp_serial_encode(pkt, sizeof(pkt), out, sizeof(out));
        struct collected got = {0};

        assert_int_equal(n, sizeof(frame) - 1);
        assert_memory_equal(out, frame, sizeof(frame) - 1);
        assert_int_equal(gw_smp_serial_encoded_size(sizeof(pkt)), sizeof(frame) - 1);
        assert_int_equal(ref_crc(pkt, sizeof(pkt)), 0x3543);

        gw_smp_deframer_reset(&d);
        assert_int_equal(
            gw_smp_deframer_feed(&d, (const uint8_t *) frame, sizeof(frame) - 1, collect, &got), 0);
        assert_int_equal(got.n, 1);
        assert_int_equal(got.lens[0], sizeof(pkt));
        assert_memory_equal(got.pkts[0], pkt, sizeof(pkt));
}

/* Packet sizes around every line boundary: the plugin's lines decode with the reference decoder
 * (strictly: 127 bytes, only the last padded, the CRC whole on the last line). */
static void test_encode_sizes(void **state)
{
        static const size_t sizes[] = {1,   8,   85,  86,  87,  88,  89,   90,   91,   92,   93,
                                       94,  177, 178, 179, 180, 181, 182,  183,  184,  185,  270,
                                       271, 272, 273, 300, 512, 999, 1000, 4096, 8000, 65533};
        static uint8_t pkt[65533];

        for (size_t i = 0; i < sizeof(pkt); i++)
                pkt[i] = (uint8_t) (i * 31 + 7);
        for (size_t i = 0; i < N(sizes); i++) {
                size_t len = sizes[i], size = gw_smp_serial_encoded_size(len);
                uint8_t *out = malloc(size + 1), *pkts[1];
                size_t lens[1];
                struct ref_stats st = {0};
                ssize_t n;

                assert_non_null(out);
                n = gw_smp_serial_encode(pkt, len, out, size);
                assert_int_equal(n, size);
                assert_int_equal(ref_unframe(out, (size_t) n, pkts, lens, 1, &st), 1);
                assert_int_equal(lens[0], len);
                assert_memory_equal(pkts[0], pkt, len);
                assert_int_equal(st.lines, gw_smp_serial_lines(len));
                /* Lines are as long as they may be: ceil((len + 4) / 93) of them, bar one. */
                assert_true(st.lines <= (len + 4 + 92) / 93 + 1);
                assert_int_equal(gw_smp_serial_encode(pkt, len, out, size - 1), -ENOBUFS);
                free(pkts[0]);
                free(out);
        }
        assert_int_equal(gw_smp_serial_encode(pkt, 0, NULL, 0), -EMSGSIZE);
        assert_int_equal(gw_smp_serial_encoded_size(65534), 0);
}

/* Two packets with console noise before, between and inside the second packet's lines, fed in
 * every split size: both packets, nothing else. */
static void test_decode_splits(void **state)
{
        uint8_t a[20], b[400], stream[2048];
        size_t n = 0;
        static const char noise1[] = "*** Booting Zephyr OS build v3.5.0 ***\r\n\x04garbage\x06";
        static const char noise2[] = "[00:00:00.011,000] <inf> app: up\r\n";

        for (size_t i = 0; i < sizeof(a); i++)
                a[i] = (uint8_t) i;
        for (size_t i = 0; i < sizeof(b); i++)
                b[i] = (uint8_t) (255 - i);
        memcpy(stream, noise1, sizeof(noise1) - 1);
        n = sizeof(noise1) - 1;
        n += ref_frame(a, sizeof(a), stream + n);
        memcpy(stream + n, noise2, sizeof(noise2) - 1);
        n += sizeof(noise2) - 1;
        {
                /* b's lines with a log line after its first one. */
                uint8_t tmp[1024];
                size_t k = ref_frame(b, sizeof(b), tmp),
                       first = (size_t) ((uint8_t *) memchr(tmp, '\n', k) - tmp) + 1;

                memcpy(stream + n, tmp, first);
                n += first;
                memcpy(stream + n, noise2, sizeof(noise2) - 1);
                n += sizeof(noise2) - 1;
                memcpy(stream + n, tmp + first, k - first);
                n += k - first;
        }
        for (size_t split = 1; split <= n; split += split < 20 ? 1 : 37) {
                struct gw_smp_deframer d;
                struct collected c = {0};

                gw_smp_deframer_reset(&d);
                for (size_t off = 0; off < n; off += split)
                        assert_int_equal(gw_smp_deframer_feed(&d, stream + off,
                                                              off + split > n ? n - off : split,
                                                              collect, &c),
                                         0);
                assert_int_equal(c.n, 2);
                assert_int_equal(c.lens[0], sizeof(a));
                assert_memory_equal(c.pkts[0], a, sizeof(a));
                assert_int_equal(c.lens[1], sizeof(b));
                assert_memory_equal(c.pkts[1], b, sizeof(b));
                assert_int_equal(d.bad_packets, 0);
                assert_true(d.noise_bytes >= sizeof(noise1) - 1 + 2 * (sizeof(noise2) - 1) - 4);
        }
}

/* Broken frames are dropped whole, and the next good one still comes through. */
static void test_decode_bad(void **state)
{
        static const struct {
                const char *name;
                const char *bytes;
                size_t len;
                bool bad_packet, bad_line;
        } cases[] = {
#define C(n, s, p, l) {n, s, sizeof(s) - 1, p, l}
            C("bad crc",
              "\x06\x09"
              "AAsCAAABAACKBaA1Qg==\n",
              true, false),
            C("bad base64 char",
              "\x06\x09"
              "AAsCAAABAA*KBaA1Qw==\n",
              false, true),
            C("not a multiple of four",
              "\x06\x09"
              "AAsCAAABAACKBaA1Qw=\n",
              false, true),
            C("padding in the middle",
              "\x06\x09"
              "AA==AAABAACKBaA1Qw==\n",
              false, true),
            C("continuation alone",
              "\x04\x14"
              "AAsCAAABAACKBaA1Qw==\n",
              false, true),
            C("length over the limit",
              "\x06\x09"
              "ZZZZ\n",
              true, false),
            C("length too short",
              "\x06\x09"
              "AAAA\n",
              true, false),
            C("more than announced",
              "\x06\x09"
              "AAMCAAABAACKBaA1Qw==\n",
              true, false),
            C("cut by a reset",
              "\x06\x09"
              "AAsCAAAB\x00\r\n",
              false, true),
            C("truncated then new packet",
              "\x06\x09"
              "AAwCAAABAACKBaA1Qw==\n",
              false, false),
#undef C
        };
        static const char good[] = "\x06\x09"
                                   "AAsCAAABAACKBaA1Qw==\n";
        char longline[GW_SMP_RX_LINE_MAX + 8];

        for (size_t i = 0; i < N(cases); i++) {
                struct gw_smp_deframer d;
                struct collected c = {0};

                gw_smp_deframer_reset(&d);
                assert_int_equal(gw_smp_deframer_feed(&d, (const uint8_t *) cases[i].bytes,
                                                      cases[i].len, collect, &c),
                                 0);
                if (c.n != 0 || (cases[i].bad_packet && d.bad_packets == 0) ||
                    (cases[i].bad_line && d.bad_lines == 0))
                        fail_msg("%s: %zu packets, %llu bad packets, %llu bad lines", cases[i].name,
                                 c.n, (unsigned long long) d.bad_packets,
                                 (unsigned long long) d.bad_lines);
                assert_int_equal(
                    gw_smp_deframer_feed(&d, (const uint8_t *) good, sizeof(good) - 1, collect, &c),
                    0);
                assert_int_equal(c.n, 1);
                assert_int_equal(c.lens[0], 9);
        }
        {
                /* A line longer than anything a device may send. */
                struct gw_smp_deframer d;
                struct collected c = {0};

                gw_smp_deframer_reset(&d);
                longline[0] = 0x06;
                longline[1] = 0x09;
                memset(longline + 2, 'A', sizeof(longline) - 3);
                longline[sizeof(longline) - 1] = '\n';
                gw_smp_deframer_feed(&d, (const uint8_t *) longline, sizeof(longline), collect, &c);
                assert_int_equal(c.n, 0);
                assert_true(d.bad_lines > 0);
                gw_smp_deframer_feed(&d, (const uint8_t *) good, sizeof(good) - 1, collect, &c);
                assert_int_equal(c.n, 1);
        }
}

/* ---- CBOR -------------------------------------------------------------------------------------
 */

static cbor_item_t *load(const uint8_t *p, size_t n)
{
        struct cbor_load_result lr;
        cbor_item_t *it = cbor_load(p, n, &lr);

        assert_non_null(it);
        assert_int_equal(lr.read, n);
        assert_true(cbor_isa_map(it));
        return it;
}

static void test_cbor_requests(void **state)
{
        uint8_t buf[512], hash[32], sha[32], data[100];
        cbor_item_t *it;
        int n;
        struct gw_smp_upload_req req = {.off = 0,
                                        .data = data,
                                        .data_len = sizeof(data),
                                        .first = true,
                                        .total = 123456,
                                        .sha = sha};

        memset(hash, 0xab, sizeof(hash));
        memset(sha, 0x5a, sizeof(sha));
        memset(data, 0x11, sizeof(data));
        n = gw_smp_cbor_empty(buf, sizeof(buf));
        assert_int_equal(n, 1);
        assert_int_equal(buf[0], 0xa0);

        n = gw_smp_cbor_state_write(buf, sizeof(buf), hash, false);
        assert_true(n > 0);
        it = load(buf, (size_t) n);
        assert_int_equal(cbor_map_size(it), 2);
        assert_memory_equal(cbor_bytestring_handle(get(it, "hash")), hash, 32);
        assert_false(cbor_get_bool(get(it, "confirm")));
        cbor_decref(&it);

        n = gw_smp_cbor_state_write(buf, sizeof(buf), NULL, true);
        it = load(buf, (size_t) n);
        assert_int_equal(cbor_map_size(it), 1);
        assert_null(get(it, "hash"));
        assert_true(cbor_get_bool(get(it, "confirm")));
        cbor_decref(&it);

        n = gw_smp_cbor_upload(buf, sizeof(buf), &req);
        it = load(buf, (size_t) n);
        assert_int_equal(cbor_map_size(it), 4);
        assert_int_equal(cbor_get_int(get(it, "off")), 0);
        assert_int_equal(cbor_get_int(get(it, "len")), 123456);
        assert_memory_equal(cbor_bytestring_handle(get(it, "sha")), sha, 32);
        assert_int_equal(cbor_bytestring_length(get(it, "data")), sizeof(data));
        assert_null(get(it, "image"));
        assert_null(get(it, "upgrade"));
        cbor_decref(&it);

        req.image = 1;
        req.upgrade = true;
        n = gw_smp_cbor_upload(buf, sizeof(buf), &req);
        it = load(buf, (size_t) n);
        assert_int_equal(cbor_map_size(it), 6);
        assert_int_equal(cbor_get_int(get(it, "image")), 1);
        assert_true(cbor_get_bool(get(it, "upgrade")));
        cbor_decref(&it);

        req = (struct gw_smp_upload_req){.off = 70000, .data = data, .data_len = 10};
        n = gw_smp_cbor_upload(buf, sizeof(buf), &req);
        it = load(buf, (size_t) n);
        assert_int_equal(cbor_map_size(it), 2);
        assert_int_equal(cbor_get_int(get(it, "off")), 70000);
        cbor_decref(&it);
        /* Too small a buffer is refused, never overrun. */
        assert_int_equal(gw_smp_cbor_upload(buf, 5, &req), -ENOBUFS);
        assert_int_equal(gw_smp_cbor_state_write(buf, 10, hash, false), -ENOBUFS);
}

/* The data room: the largest data whose request fits the budget, exactly. */
static void test_cbor_room(void **state)
{
        static const size_t budgets[] = {40,  60,  70,  71,   72,   80,   100,
                                         120, 300, 372, 1000, 4000, 65000};
        static uint8_t data[70000], buf[70100], sha[32];

        for (int first = 0; first < 2; first++)
                for (size_t i = 0; i < N(budgets); i++) {
                        struct gw_smp_upload_req req = {.off = first ? 0 : 123456,
                                                        .first = first,
                                                        .total = 200000,
                                                        .sha = sha,
                                                        .data = data};
                        size_t room = gw_smp_cbor_upload_room(&req, budgets[i]);
                        int n;

                        if (room == 0)
                                continue;
                        req.data_len = room;
                        n = gw_smp_cbor_upload(buf, sizeof(buf), &req);
                        assert_true(n > 0 && (size_t) n <= budgets[i]);
                        req.data_len = room + 1;
                        n = gw_smp_cbor_upload(buf, sizeof(buf), &req);
                        assert_true((size_t) n > budgets[i]);
                }
}

struct cbor_vector {
        const char *name;
        const char *hex;
        int result;
        void (*check)(const struct gw_smp_rsp *rsp);
};

static void check_indef_state(const struct gw_smp_rsp *r)
{
        assert_true(r->have_images);
        assert_int_equal(r->n_slots, 1);
        assert_int_equal(r->slots[0].slot, 0);
        assert_string_equal(r->slots[0].version, "1.2.3");
        assert_true(r->slots[0].have_hash);
        assert_true(r->slots[0].active);
        assert_true(r->slots[0].confirmed);
        assert_false(r->slots[0].pending);
}

static void check_err(const struct gw_smp_rsp *r)
{
        assert_true(r->have_err);
        assert_int_equal(r->err_group, 1);
        assert_int_equal(r->err_rc, 9);
}

static void check_rc_rsn(const struct gw_smp_rsp *r)
{
        assert_true(r->have_rc);
        assert_int_equal(r->rc, 3);
        assert_string_equal(r->rsn, "hdr?malformed");
}

static void check_params(const struct gw_smp_rsp *r)
{
        assert_true(r->have_buf_size && r->have_buf_count);
        assert_int_equal(r->buf_size, 2475);
        assert_int_equal(r->buf_count, 4);
}

static void check_upload(const struct gw_smp_rsp *r)
{
        assert_true(r->have_off && r->have_match);
        assert_int_equal(r->off, 0x10000);
        assert_false(r->match);
}

static void check_nine(const struct gw_smp_rsp *r)
{
        assert_int_equal(r->n_slots_seen, 9);
        assert_int_equal(r->n_slots, GW_SMP_SLOTS_MAX);
}

/* Hex strings of response bodies, as devices send them and as they break. */
static const struct cbor_vector cbor_vectors[] = {
    {"state, definite", NULL, 0, check_indef_state},
    {"v2 err",
     "a163657272a26567726f7570016272630"
     "9",
     0, check_err},
    {"rc and rsn with a control char", "a2627263036372736e6d6864720a6d616c666f726d6564", 0,
     check_rc_rsn},
    {"params", "a2686275665f73697a651909ab696275665f636f756e7404", 0, check_params},
    {"upload with match", "a3636f66661a00010000656d61746368f462726300", 0, check_upload},
    {"empty map", "a0", 0, NULL},
    {"not a map", "8100", -EBADMSG, NULL},
    {"empty", "", -EBADMSG, NULL},
    {"truncated", "a2627263", -EBADMSG, NULL},
    {"trailing bytes", "a000", -EBADMSG, NULL},
    {"rc not an integer", "a16272636178", -EBADMSG, NULL},
    {"rc twice",
     "a262726300627263"
     "00",
     -EBADMSG, NULL},
    {"off negative", "a1636f666620", -EBADMSG, NULL},
    {"hash of 31 bytes",
     "a166696d6167657381a264736c6f7400646861736858"
     "1f"
     "00000000000000000000000000000000000000000000000000000000000000",
     -EBADMSG, NULL},
    {"slot missing", "a166696d6167657381a0", -EBADMSG, NULL},
    {"nested too deep", "a1617881818181818181818100", -EBADMSG, NULL},
    {"huge announced array",
     "a16178"
     "9b00000000ffffffff",
     -EBADMSG, NULL},
    {"break outside indefinite", "a0ff", -EBADMSG, NULL},
    {"version too long",
     "a166696d6167657381a264736c6f740067766572"
     "73696f6e7828"
     "61616161616161616161616161616161616161616161616161616161616161616161616161616161",
     -EBADMSG, NULL},
    {"nine entries", NULL, 0, check_nine},
};

static size_t from_hex(const char *h, uint8_t *out, size_t max)
{
        size_t n = 0;

        for (; h[0] && h[1]; h += 2) {
                unsigned v;

                assert_true(n < max);
                assert_int_equal(sscanf(h, "%2x", &v), 1);
                out[n++] = (uint8_t) v;
        }
        return n;
}

static void test_cbor_vector(void **state)
{
        const struct cbor_vector *v = *state;
        static uint8_t buf[4096];
        struct gw_smp_rsp rsp;
        char why[128] = "";
        size_t n;
        int r;

        if (strcmp(v->name, "state, definite") == 0 || strcmp(v->name, "nine entries") == 0) {
                /* Built with libcbor here rather than spelled out. */
                struct model m = {.indefinite = strcmp(v->name, "state, definite") != 0};
                unsigned char *cb = NULL;
                size_t size = 0;
                cbor_item_t *body;

                m.slot0.present = true;
                strcpy(m.slot0.version, "1.2.3");
                if (m.indefinite) {
                        cbor_item_t *list = cbor_new_indefinite_array();

                        body = cbor_new_indefinite_map();
                        for (int i = 0; i < 9; i++) {
                                cbor_item_t *e = cbor_new_definite_map(1);

                                put(e, "slot", uint_item((uint64_t) (i % 2)));
                                assert_true(cbor_array_push(list, cbor_move(e)));
                        }
                        put(body, "images", list);
                } else {
                        body = state_body(&m);
                }
                n = cbor_serialize_alloc(body, &cb, &size);
                cbor_decref(&body);
                memcpy(buf, cb, n);
                free(cb);
        } else {
                n = from_hex(v->hex, buf, sizeof(buf));
        }
        r = gw_smp_cbor_parse(buf, n, &rsp, why, sizeof(why));
        if (r != v->result)
                fail_msg("%s: %d (%s), expected %d", v->name, r, why, v->result);
        if (r < 0)
                assert_true(why[0] != '\0');
        if (v->check)
                v->check(&rsp);
}

/* An indefinite-length state answer, as Zephyr's zcbor encodes it, decodes like a definite one. */
static void test_cbor_indefinite(void **state)
{
        struct model m = {.indefinite = true, .swap = SWAP_TEST};
        unsigned char *cb = NULL;
        size_t size = 0, n;
        cbor_item_t *body;
        struct gw_smp_rsp rsp;
        char why[128] = "";

        m.slot0.present = m.slot1.present = true;
        strcpy(m.slot0.version, "1.0.0");
        strcpy(m.slot1.version, "2.0.0.7");
        memset(m.slot1.hash, 0x77, 32);
        body = state_body(&m);
        n = cbor_serialize_alloc(body, &cb, &size);
        cbor_decref(&body);
        assert_int_equal(cb[0], 0xbf);
        assert_int_equal(gw_smp_cbor_parse(cb, n, &rsp, why, sizeof(why)), 0);
        free(cb);
        assert_int_equal(rsp.n_slots, 2);
        assert_string_equal(rsp.slots[1].version, "2.0.0.7");
        assert_true(rsp.slots[1].pending);
        assert_false(rsp.slots[1].confirmed);
        assert_int_equal(rsp.slots[1].hash[31], 0x77);
}

/* ---- flows ------------------------------------------------------------------------------------
 */

struct flow {
        const char *name;
        const char *opts;
        size_t body;
        struct model m; /* the configuration fields */
        int result;
        const char *error; /* a part of the reason */
        unsigned window;   /* uploads in flight at most (0: not checked) */
        int uploads;       /* -1: some; 0: none; n: exactly */
        bool partial;      /* fewer data bytes than the image sent */
        bool runs_new;     /* ends running the new image, confirmed */
        unsigned resets;   /* os reset requests */
};

static const struct flow flows[] = {
    {"clean, one buffer",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 1},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"clean, four buffers: a window of three",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 4},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"window option",
     "window=2",
     20000,
     {.buf_size = 384, .buf_count = 8},
     GW_PROTO_DONE,
     NULL,
     2,
     -1,
     false,
     true,
     1},
    {"large buffer",
     NULL,
     50000,
     {.buf_size = 2475, .buf_count = 2},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"smallest buffer",
     NULL,
     3000,
     {.buf_size = 128, .buf_count = 2},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"a buffer beyond what a frame can announce",
     NULL,
     70000,
     {.buf_size = 1000000, .buf_count = 2},
     GW_PROTO_DONE,
     NULL,
     1,
     2,
     false,
     true,
     1},
    {"a buffer too small to mean anything",
     NULL,
     3000,
     {.buf_size = 63, .buf_count = 2},
     -EPROTO,
     "a buffer size of 63 bytes",
     0,
     0,
     false,
     false,
     0},
    {"buffer too small for the first request",
     NULL,
     3000,
     {.buf_size = 96, .buf_count = 2},
     -EMSGSIZE,
     "too small for the first upload request",
     0,
     0,
     false,
     false,
     0},
    {"mtu option below the device's",
     "mtu=200",
     5000,
     {.buf_size = 2475, .buf_count = 4},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"no params: defaults",
     NULL,
     5000,
     {.buf_size = 256, .buf_count = 1, .no_params = true},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"indefinite-length answers, legacy rc, noise, 7-byte reads",
     NULL,
     8000,
     {.buf_size = 384,
      .buf_count = 3,
      .indefinite = true,
      .legacy_rc = true,
      .noise = true,
      .chunk = 7},
     GW_PROTO_DONE,
     NULL,
     2,
     -1,
     false,
     true,
     1},
    {"answers out of order",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 4, .reorder = true},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"every answer twice",
     NULL,
     10000,
     {.buf_size = 384, .buf_count = 4, .dup = true},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"lost request, window one: resent on timeout",
     NULL,
     6000,
     {.buf_size = 384, .buf_count = 1, .drop_upload = 4},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"lost request in a window: the node's offset rewinds it",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 4, .drop_upload = 5},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"the node resets mid-upload and loses it: from 0 again",
     "request-timeout-ms=500",
     20000,
     {.buf_size = 384, .buf_count = 4, .lose_upload_at = 9000},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"lost first request",
     NULL,
     6000,
     {.buf_size = 384, .buf_count = 4, .drop_upload = 1},
     GW_PROTO_DONE,
     NULL,
     3,
     -1,
     false,
     true,
     1},
    {"busy rc on a chunk: retried",
     NULL,
     6000,
     {.buf_size = 384, .buf_count = 2, .rc_upload = 3, .rc_value = 10},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
    {"EINVAL rc on a chunk: fails, named",
     NULL,
     6000,
     {.buf_size = 384, .buf_count = 2, .rc_upload = 3, .rc_value = 3},
     -EIO,
     "MGMT_ERR_EINVAL (rc 3)",
     0,
     -1,
     false,
     false,
     0},
    {"group error on a chunk: fails, named",
     NULL,
     6000,
     {.buf_size = 384,
      .buf_count = 2,
      .rc_upload = 1,
      .rc_value = 9,
      .rc_group = true,
      .v2_errors = true},
     -EIO,
     "IMG_MGMT_ERR_NO_FREE_SLOT (group 1, rc 9)",
     0,
     -1,
     false,
     false,
     0},
    {"resume from the node's offset",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 4, .resume_at = 12000},
     GW_PROTO_DONE,
     NULL,
     0,
     -1,
     true,
     true,
     1},
    {"the node holds it whole already",
     NULL,
     20000,
     {.buf_size = 384, .buf_count = 4, .holds_whole = true},
     GW_PROTO_DONE,
     NULL,
     0,
     1,
     true,
     true,
     1},
    {"the node says the data does not match",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .match_false = true},
     -EIO,
     "hash mismatch after upload",
     0,
     -1,
     false,
     false,
     0},
    {"slot 1 reports another hash",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .wrong_hash = true},
     -EIO,
     "hash mismatch after upload: slot 1 reports",
     0,
     -1,
     false,
     false,
     0},
    {"reverted by MCUboot",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .revert = true},
     -ENOEXEC,
     "reverted: the node came back running its previous image 1.0.0",
     0,
     -1,
     false,
     false,
     1},
    {"no answer after the reset",
     "reset-timeout-ms=3000",
     4000,
     {.buf_size = 384, .buf_count = 2, .dead_after_reset = true},
     -ETIMEDOUT,
     "did not come back within 3000 ms",
     0,
     -1,
     false,
     false,
     1},
    {"slow reboot and an early poll",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .polls_lost = 6, .early_poll = true},
     GW_PROTO_DONE,
     NULL,
     0,
     -1,
     false,
     true,
     1},
    {"no SMP answer at all",
     "retries=2",
     4000,
     {.buf_size = 384, .buf_count = 2, .silent = true},
     -ETIMEDOUT,
     "no SMP answer on the console to os mcumgr-params after 3 tries",
     0,
     0,
     false,
     false,
     0},
    {"already running it, confirmed",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .start = 1},
     GW_PROTO_DONE,
     NULL,
     0,
     0,
     false,
     true,
     0},
    {"running it unconfirmed: confirmed only",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .start = 2},
     GW_PROTO_DONE,
     NULL,
     0,
     0,
     false,
     true,
     0},
    {"slot 1 holds it marked for test: reset only",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .start = 3},
     GW_PROTO_DONE,
     NULL,
     0,
     0,
     false,
     true,
     1},
    {"confirm refused",
     NULL,
     4000,
     {.buf_size = 384, .buf_count = 2, .refuse_confirm = true},
     -EIO,
     "image state write (confirm) refused: MGMT_ERR_EBADSTATE (rc 6)",
     0,
     -1,
     false,
     false,
     1},
    {"confirm=false leaves it to the application",
     "confirm=false",
     4000,
     {.buf_size = 384, .buf_count = 2},
     GW_PROTO_DONE,
     NULL,
     0,
     -1,
     false,
     false,
     1},
    {"SMP v2 headers",
     "smp-version=2",
     4000,
     {.buf_size = 384, .buf_count = 2},
     GW_PROTO_DONE,
     NULL,
     1,
     -1,
     false,
     true,
     1},
};

static void test_flow(void **state)
{
        const struct flow *row = *state;
        struct world w;
        int r;

        world_start(&w, row->opts, row->body);
        {
                struct model keep = w.m;

                w.m = row->m;
                w.m.img = keep.img;
                w.m.old = keep.old;
                w.m.slot0 = keep.slot0;
                w.m.data = keep.data;
        }
        model_start(&w, row->m.start);
        r = drive(&w, fake_link_install(&w.f, &w.reader));
        if (r != row->result)
                fail_msg("%s: result %d, expected %d (%s)", row->name, r, row->result, w.f.error);
        if (row->error && !strstr(w.f.error, row->error))
                fail_msg("%s: error \"%s\" lacks \"%s\"", row->name, w.f.error, row->error);
        assert_int_equal(w.f.deadline, 0);
        if (row->window)
                assert_int_equal(w.m.in_flight_max, row->window);
        if (row->uploads == 0)
                assert_int_equal(w.m.uploads, 0);
        else if (row->uploads > 0)
                assert_int_equal(w.m.uploads, (unsigned) row->uploads);
        else
                assert_true(w.m.uploads > 0);
        if (row->partial)
                assert_true(w.m.data_bytes < w.img.size);
        if (row->result == GW_PROTO_DONE && !row->partial && w.m.uploads && !row->m.rc_upload &&
            !row->m.drop_upload && !row->m.lose_upload_at)
                assert_int_equal(w.m.data_bytes, w.img.size);
        if (row->runs_new) {
                assert_memory_equal(w.m.slot0.hash, w.img.hash, 32);
                assert_int_equal(w.m.swap, SWAP_NONE);
        }
        if (row->result == GW_PROTO_DONE && !row->runs_new) {
                /* confirm=false: runs it, the application has to confirm. */
                assert_memory_equal(w.m.slot0.hash, w.img.hash, 32);
                assert_int_equal(w.m.swap, SWAP_REVERT);
                assert_int_equal(w.m.confirms, 0);
        }
        if (row->m.reorder || row->m.dup || row->window)
                assert_true(w.m.lines.longest_line <= GW_SMP_LINE_MAX);
        assert_int_equal(w.m.resets, row->resets);
        if (strstr(row->name, "v2"))
                assert_int_equal(w.m.seen_ver, 1);
        else
                assert_int_equal(w.m.seen_ver, 0);
        if (row->result == GW_PROTO_DONE)
                assert_int_equal(w.f.progress_done, w.img.size);
        world_end(&w);
}

/* The packets the plugin sends use the device's buffer to the full: one request's frame is
 * within three bytes of buf_size. */
static void test_packet_sizes(void **state)
{
        static const uint64_t sizes[] = {128, 129, 130, 131, 256, 384, 512, 1024, 2475, 4096};

        for (size_t i = 0; i < N(sizes); i++) {
                struct world w;
                int r;

                world_start(&w, NULL, 30000);
                w.m.buf_size = sizes[i];
                w.m.buf_count = 2;
                r = drive(&w, fake_link_install(&w.f, &w.reader));
                assert_int_equal(r, GW_PROTO_DONE);
                /* model_request() asserted each one fits; this one fills it. */
                assert_true(w.m.max_packet + 4 + 3 > sizes[i] / 3 * 3);
                world_end(&w);
        }
}

/* ---- identify, installed, check_image ---------------------------------------------------------
 */

static void test_identify(void **state)
{
        struct world w;
        struct gw_options *facts = gw_options_new();
        char h[65];
        int r;

        world_start(&w, "identify-params=true", 1000);
        w.m.buf_size = 2475;
        w.m.buf_count = 3;
        model_start(&w, 2); /* runs the new image unconfirmed, slot 1 the old */
        r = drive(&w, w.f.ops->identify(w.f.priv, facts));
        assert_int_equal(r, GW_PROTO_DONE);
        assert_string_equal(gw_options_get(facts, "version"), "1.4.2+5");
        hexs(w.img.hash, 32, h);
        assert_string_equal(gw_options_get(facts, "hash"), h);
        assert_string_equal(gw_options_get(facts, "confirmed"), "false");
        assert_string_equal(gw_options_get(facts, "slot1-version"), "1.0.0");
        hexs(w.old.hash, 32, h);
        assert_string_equal(gw_options_get(facts, "slot1-hash"), h);
        assert_string_equal(gw_options_get(facts, "slot1-pending"), "false");
        assert_string_equal(gw_options_get(facts, "buf-size"), "2475");
        assert_string_equal(gw_options_get(facts, "buf-count"), "3");
        assert_int_equal(w.m.uploads + w.m.tests + w.m.confirms + w.m.resets, 0);
        gw_options_free(facts);
        world_end(&w);

        /* A device without params: identify says what it knows. */
        facts = gw_options_new();
        world_start(&w, "identify-params=true", 1000);
        w.m.no_params = true;
        r = drive(&w, w.f.ops->identify(w.f.priv, facts));
        assert_int_equal(r, GW_PROTO_DONE);
        assert_string_equal(gw_options_get(facts, "version"), "1.0.0");
        assert_string_equal(gw_options_get(facts, "confirmed"), "true");
        assert_null(gw_options_get(facts, "buf-size"));
        assert_null(gw_options_get(facts, "slot1-version"));
        gw_options_free(facts);
        world_end(&w);
}

static void test_installed(void **state)
{
        struct world w;
        struct gw_options *facts;
        char h[65];
        struct mem_image junk_mem = {.data = (const uint8_t *) "not an image at all, just text!!!",
                                     .size = 34};
        struct gw_reader junk = {.size = 34, .ctx = &junk_mem, .pread = mem_pread};

        world_start(&w, NULL, 1000);
        hexs(w.img.hash, 32, h);
        facts = parse_opts(NULL);
        assert_int_equal(gw_options_set(facts, "hash", h), 0);
        assert_int_equal(gw_options_set(facts, "confirmed", "true"), 0);
        assert_int_equal(w.f.ops->installed(w.f.priv, &w.reader, facts), 1);
        assert_int_equal(w.f.ops->installed(w.f.priv, &junk, facts), 0);
        assert_int_equal(gw_options_set(facts, "confirmed", "false"), 0);
        assert_int_equal(w.f.ops->installed(w.f.priv, &w.reader, facts), 0);
        assert_int_equal(gw_options_set(facts, "confirmed", "true"), 0);
        h[0] = h[0] == '0' ? '1' : '0';
        assert_int_equal(gw_options_set(facts, "hash", h), 0);
        assert_int_equal(w.f.ops->installed(w.f.priv, &w.reader, facts), 0);
        assert_int_equal(w.f.ops->installed(w.f.priv, &w.reader, NULL), 0);
        assert_int_equal(w.f.deadlines_set, 0);
        assert_int_equal(fake_link_pending(&w.f), 0);
        gw_options_free(facts);
        world_end(&w);
}

enum breakage {
        B_NONE,
        B_MAGIC,
        B_SHORT,
        B_HDR_SIZE,
        B_BODY_PAST_END,
        B_NO_TLV_INFO,
        B_TLV_PAST_AREA,
        B_NO_SHA,
        B_TWO_SHA,
        B_SHA_LEN,
        B_HASH,
        B_PROT_SIZE,
        B_PROTECTED_OK,
        B_TRAILING_OK,
};

struct refusal {
        const char *name;
        enum breakage b;
        const char *error;
};

static const struct refusal refusals[] = {
    {"image: valid", B_NONE, NULL},
    {"image: protected TLVs", B_PROTECTED_OK, NULL},
    {"image: padded after the TLVs", B_TRAILING_OK, NULL},
    {"image: no magic", B_MAGIC, "not an MCUboot image: magic 0x"},
    {"image: shorter than a header", B_SHORT, "shorter than an MCUboot header"},
    {"image: header size below 32", B_HDR_SIZE, "header size 16 is smaller than the header"},
    {"image: body past the end", B_BODY_PAST_END, "is more than the file's"},
    {"image: no TLV area", B_NO_TLV_INFO, "TLV area at"},
    {"image: TLV crossing its area", B_TLV_PAST_AREA, "crosses the end of its area"},
    {"image: no SHA-256 TLV", B_NO_SHA, "no SHA-256 TLV"},
    {"image: two SHA-256 TLVs", B_TWO_SHA, "more than one SHA-256 TLV"},
    {"image: SHA-256 TLV of 31 bytes", B_SHA_LEN, "a SHA-256 TLV of 31 bytes"},
    {"image: hash does not match", B_HASH, "does not match its contents"},
    {"image: protected size mismatch", B_PROT_SIZE, "protected"},
};

/* The image with one thing broken, as a new buffer. */
static uint8_t *broken_image(const struct image *img, enum breakage b, size_t *ret_size)
{
        size_t size = img->size, tlv = size - 40; /* info + one SHA TLV */
        uint8_t *d = malloc(size + 64);

        assert_non_null(d);
        memcpy(d, img->data, size);
        switch (b) {
        case B_MAGIC:
                d[0] ^= 0xff;
                break;
        case B_SHORT:
                size = 20;
                break;
        case B_HDR_SIZE:
                put_le16(d + 8, 16);
                break;
        case B_BODY_PAST_END:
                put_le32(d + 12, (uint32_t) size);
                break;
        case B_NO_TLV_INFO:
                d[tlv] = 0x12;
                break;
        case B_TLV_PAST_AREA:
                put_le16(d + tlv + 6, 40);
                break;
        case B_NO_SHA:
                put_le16(d + tlv + 4, 0x11);
                break;
        case B_TWO_SHA:
                memcpy(d + size, d + tlv + 4, 36);
                put_le16(d + tlv + 2, 4 + 72);
                size += 36;
                break;
        case B_SHA_LEN:
                put_le16(d + tlv + 6, 31);
                put_le16(d + tlv + 2, 4 + 35);
                size -= 1;
                break;
        case B_HASH:
                d[tlv + 8] ^= 1;
                break;
        case B_PROT_SIZE:
                put_le16(d + 10, 16);
                break;
        case B_TRAILING_OK:
                memset(d + size, 0xff, 64);
                size += 64;
                break;
        default:
                break;
        }
        *ret_size = size;
        return d;
}

static void test_check_image(void **state)
{
        const struct refusal *row = *state;
        struct world w;
        struct image prot;
        const struct image *src;
        struct mem_image mem;
        struct gw_reader reader;
        size_t size;
        uint8_t *d;
        int r;

        world_start(&w, NULL, 2000);
        make_image_ex(&prot, 2, 0, 1, 0, 1500, 5, true);
        src = row->b == B_PROTECTED_OK ? &prot : &w.img;
        d = broken_image(src, row->b, &size);
        mem = (struct mem_image){.data = d, .size = size};
        reader = (struct gw_reader){.size = size, .ctx = &mem, .pread = mem_pread};
        r = w.f.ops->check_image(w.f.priv, &reader, NULL);
        if (!row->error) {
                assert_int_equal(r, 0);
        } else {
                assert_int_equal(r, -EBADMSG);
                if (!strstr(w.f.error, row->error))
                        fail_msg("%s: error \"%s\" lacks \"%s\"", row->name, w.f.error, row->error);
        }
        /* Before any node is written: nothing sent, no timer. */
        assert_int_equal(fake_link_pending(&w.f), 0);
        assert_int_equal(w.f.deadlines_set, 0);
        free(d);
        free(prot.data);
        world_end(&w);

        /* install() refuses it the same way, before writing anything. */
        if (row->error) {
                world_start(&w, NULL, 2000);
                d = broken_image(&w.img, row->b, &size);
                mem = (struct mem_image){.data = d, .size = size};
                reader = (struct gw_reader){.size = size, .ctx = &mem, .pread = mem_pread};
                assert_int_equal(fake_link_install(&w.f, &reader), -EBADMSG);
                w.f.last_checked = true;
                assert_int_equal(fake_link_pending(&w.f), 0);
                free(d);
                world_end(&w);
        }
}

/* option upgrade: an image no newer than what the node runs is refused before anything is sent. */
static void test_check_upgrade(void **state)
{
        static const struct {
                const char *running;
                int result;
        } rows[] = {
            {"1.4.2", -EINVAL}, {"1.4.2.9", -EINVAL}, {"1.5.0", -EINVAL}, {"2.0.0", -EINVAL},
            {"1.4.1", 0},       {"1.3.9.99", 0},      {"0.9.0", 0},       {"garbage", 0},
        };

        for (size_t i = 0; i < N(rows); i++) {
                struct world w;
                struct gw_options *facts = parse_opts(NULL);

                world_start(&w, "upgrade=true", 2000);
                assert_int_equal(gw_options_set(facts, "version", rows[i].running), 0);
                assert_int_equal(w.f.ops->check_image(w.f.priv, &w.reader, facts), rows[i].result);
                if (rows[i].result)
                        assert_non_null(strstr(w.f.error, "is not newer"));
                assert_int_equal(w.f.deadlines_set, 0);
                gw_options_free(facts);
                world_end(&w);
        }
}

/* ---- cancel, hangup, options ------------------------------------------------------------------
 */

static ssize_t failing_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        return -EIO;
}

/* An image the reader cannot give whole (an I/O error, or shorter than its size): the install
 * fails saying so, and not a byte is uploaded. */
static void test_reader_fails(void **state)
{
        struct world w;
        int r;

        world_start(&w, "", 2000);
        w.reader.pread = failing_pread;
        r = drive(&w, fake_link_install(&w.f, &w.reader));
        assert_true(r < 0);
        assert_true(w.f.error[0] != '\0');
        assert_int_equal(w.m.uploads, 0);
        world_end(&w);

        world_start(&w, "", 2000);
        w.mem.size = w.img.size / 2;
        r = drive(&w, fake_link_install(&w.f, &w.reader));
        assert_true(r < 0);
        assert_true(w.f.error[0] != '\0');
        assert_int_equal(w.m.uploads, 0);
        world_end(&w);
}

static void test_cancel_and_hangup(void **state)
{
        struct world w;
        int r;

        /* Cancelled mid-upload: stops at once, sends nothing more (SMP has no abort). */
        world_start(&w, NULL, 30000);
        r = fake_link_install(&w.f, &w.reader);
        for (int i = 0; i < 12 && r == GW_PROTO_CONTINUE; i++) {
                model_take(&w);
                if (w.n_answers)
                        r = deliver_one(&w);
        }
        assert_int_equal(r, GW_PROTO_CONTINUE);
        assert_true(w.m.uploads > 0);
        model_take(&w);
        assert_int_equal(fake_link_cancel(&w.f), -ECANCELED);
        w.f.last_checked = true;
        assert_int_equal(fake_link_pending(&w.f), 0);
        assert_int_equal(w.f.deadline, 0);
        assert_non_null(strstr(w.f.error, "cancelled in state upload"));
        world_end(&w);

        /* The console goes away while the node resets (a USB CDC-ACM console). */
        world_start(&w, NULL, 2000);
        w.m.polls_lost = 1000;
        r = fake_link_install(&w.f, &w.reader);
        for (int i = 0; i < 200 && r == GW_PROTO_CONTINUE && !w.m.rebooting; i++) {
                model_take(&w);
                if (w.n_answers)
                        r = deliver_one(&w);
        }
        assert_true(w.m.rebooting);
        while (w.n_answers && r == GW_PROTO_CONTINUE)
                r = deliver_one(&w);
        assert_int_equal(fake_link_hangup(&w.f), -EPIPE);
        w.f.last_checked = true;
        assert_non_null(strstr(w.f.error, "the console went away when the node reset"));
        world_end(&w);
}

static void test_bad_options(void **state)
{
        static const struct {
                const char *opts;
                const char *error;
        } rows[] = {
            {"retries=101", "option retries: expected 0 to 100"},
            {"request-timeout-ms=5", "option request-timeout-ms"},
            {"reset-timeout-ms=abc", "option reset-timeout-ms"},
            {"mtu=50", "option mtu"},
            {"mtu=70000", "option mtu"},
            {"window=17", "option window"},
            {"confirm=perhaps", "option confirm"},
            {"smp-version=3", "option smp-version"},
            {"image=8", "option image"},
            {"poll-interval-ms=0", "option poll-interval-ms"},
            {"erase-timeout-ms=1", "option erase-timeout-ms"},
            {"upgrade=2", "option upgrade"},
            {"identify-params=x", "option identify-params"},
        };

        for (size_t i = 0; i < N(rows); i++) {
                struct fake_link f;
                struct gw_options *o = parse_opts(rows[i].opts);

                fake_link_init(&f, &gw_protocol_smp_ops);
                assert_int_equal(fake_link_open(&f, o), -EINVAL);
                if (!strstr(f.error, rows[i].error))
                        fail_msg("%s: \"%s\"", rows[i].opts, f.error);
                fake_link_done(&f);
                gw_options_free(o);
        }
}

/* Random bytes from the "device" and random timer expiries: the plugin ends (done or failed
 * with a reason), never writes a malformed frame, and keeps a deadline armed while it waits. */
static void test_random_device(void **state)
{
        for (uint32_t seed = 1; seed <= 100; seed++) {
                struct world w;
                uint32_t x = seed;
                int r;
                unsigned steps;

                world_start(&w, "retries=2,reset-timeout-ms=2000", 500 + seed * 13);
                r = fake_link_install(&w.f, &w.reader);
                for (steps = 0; steps < 5000 && r == GW_PROTO_CONTINUE; steps++) {
                        uint8_t in[64];
                        size_t n;

                        /* What it wrote must always be well-formed frames. */
                        if (fake_link_pending(&w.f)) {
                                uint8_t *pkts[64];
                                size_t lens[64], k;

                                k = ref_unframe(fake_link_peek(&w.f), fake_link_pending(&w.f), pkts,
                                                lens, N(pkts), NULL);
                                for (size_t i = 0; i < k; i++)
                                        free(pkts[i]);
                                fake_link_take(&w.f, NULL, fake_link_pending(&w.f));
                        }
                        x = x * 1103515245u + 12345u;
                        n = (x >> 16) % sizeof(in);
                        for (size_t i = 0; i < n; i++) {
                                x = x * 1103515245u + 12345u;
                                in[i] = (uint8_t) (x >> 24);
                                if ((x >> 8) % 5 == 0)
                                        in[i] = "\x06\x09\x04\x14\nAAgC="[(x >> 12) % 10];
                        }
                        if (n == 0)
                                r = fake_link_expire(&w.f);
                        else
                                r = fake_link_deliver(&w.f, in, n);
                        if (r == GW_PROTO_CONTINUE)
                                assert_true(w.f.deadline > w.f.now);
                }
                assert_true(r != GW_PROTO_CONTINUE);
                assert_true(r < 0);
                assert_true(w.f.error[0] != '\0');
                assert_int_equal(w.f.deadline, 0);
                w.f.last_checked = true;
                world_end(&w);
        }
}

int main(void)
{
        static const struct CMUnitTest fixed[] = {
            cmocka_unit_test(test_documented_frame), cmocka_unit_test(test_encode_sizes),
            cmocka_unit_test(test_decode_splits),    cmocka_unit_test(test_decode_bad),
            cmocka_unit_test(test_cbor_requests),    cmocka_unit_test(test_cbor_room),
            cmocka_unit_test(test_cbor_indefinite),  cmocka_unit_test(test_packet_sizes),
            cmocka_unit_test(test_identify),         cmocka_unit_test(test_installed),
            cmocka_unit_test(test_check_upgrade),    cmocka_unit_test(test_cancel_and_hangup),
            cmocka_unit_test(test_reader_fails),     cmocka_unit_test(test_bad_options),
            cmocka_unit_test(test_random_device),
        };
        struct CMUnitTest tests[N(fixed) + N(cbor_vectors) + N(flows) + N(refusals)];
        size_t n = 0;

        for (size_t i = 0; i < N(fixed); i++)
                tests[n++] = fixed[i];
        for (size_t i = 0; i < N(cbor_vectors); i++)
                tests[n++] = (struct CMUnitTest){.name = cbor_vectors[i].name,
                                                 .test_func = test_cbor_vector,
                                                 .initial_state = (void *) &cbor_vectors[i]};
        for (size_t i = 0; i < N(flows); i++)
                tests[n++] = (struct CMUnitTest){.name = flows[i].name,
                                                 .test_func = test_flow,
                                                 .initial_state = (void *) &flows[i]};
        for (size_t i = 0; i < N(refusals); i++)
                tests[n++] = (struct CMUnitTest){.name = refusals[i].name,
                                                 .test_func = test_check_image,
                                                 .initial_state = (void *) &refusals[i]};
        return _cmocka_run_group_tests("smp", tests, n, NULL, NULL);
}
