/* Parser of DFU files as build tools write them (dfu-file.h): the DFU suffix and its CRC-32,
 * and ST's DfuSe container with its targets and elements. Everything is read through the
 * caller's gw_reader in bounded chunks; every count and size is checked against the file. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "dfu-file.h"

#define CHUNK 8192u

#define SUFFIX_SIG_OFF 8u /* "UFD" in file order, then bLength, then dwCRC */
#define SUFFIX_CRC_LEN 4u

#define BCD_DFUSE 0x011au

#define DFUSE_PREFIX_LEN 11u
#define DFUSE_SIG        "DfuSe"
#define DFUSE_SIG_LEN    5u
#define DFUSE_VERSION    0x01u

#define TARGET_PREFIX_LEN  274u
#define TARGET_SIG         "Target"
#define TARGET_SIG_LEN     6u
#define TARGET_ALT_OFF     6u
#define TARGET_SIZE_OFF    266u
#define TARGET_NB_ELEM_OFF 270u

#define ELEMENT_HEADER_LEN 8u

#define ADDRESS_SPACE (UINT64_C(1) << 32)

__attribute__((format(printf, 3, 4))) static void set_why(char *why, size_t why_size,
                                                          const char *fmt, ...)
{
        va_list ap;

        if (!why || why_size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
}

static uint16_t get16(const uint8_t *p)
{
        return (uint16_t) (p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

/* Reads exactly n bytes at off; the reader may return fewer at a time. A reader that ends
 * before the size it declared is an I/O error, not a malformed file: every offset read here
 * was checked against r->size first. */
static int read_exact(const struct gw_reader *r, uint64_t off, void *buf, size_t n, char *why,
                      size_t why_size)
{
        size_t done = 0;

        while (done < n) {
                ssize_t k = r->pread(r->ctx, (uint8_t *) buf + done, n - done, off + done);

                if (k < 0) {
                        set_why(why, why_size, "reading the file at offset %" PRIu64 ": %s",
                                off + done, strerror((int) -k));
                        return (int) k;
                }
                if (k == 0) {
                        set_why(why, why_size,
                                "the file ended at offset %" PRIu64 ", before its size %" PRIu64,
                                off + done, r->size);
                        return -EIO;
                }
                if ((size_t) k > n - done) {
                        set_why(why, why_size,
                                "reading the file at offset %" PRIu64 ": %zd bytes for %zu asked",
                                off + done, k, n - done);
                        return -EIO;
                }
                done += (size_t) k;
        }
        return 0;
}

/* The CRC the suffix declares: zlib's CRC-32 without its final inversion, over all of the
 * file but dwCRC itself. */
static int file_crc(const struct gw_reader *r, uint32_t *ret, char *why, size_t why_size)
{
        uint8_t buf[CHUNK];
        uint64_t end = r->size - SUFFIX_CRC_LEN, off = 0;
        uLong crc = crc32(0L, Z_NULL, 0);

        while (off < end) {
                size_t n = end - off < CHUNK ? (size_t) (end - off) : CHUNK;
                int k = read_exact(r, off, buf, n, why, why_size);

                if (k < 0)
                        return k;
                crc = crc32(crc, buf, (uInt) n);
                off += n;
        }
        *ret = (uint32_t) ~crc;
        return 0;
}

/* Finds and checks the suffix. 0 with *ret_found false when the file has none. */
static int parse_suffix(const struct gw_reader *r, struct gw_dfu_suffix *ret, bool *ret_found,
                        char *why, size_t why_size)
{
        uint8_t p[GW_DFU_SUFFIX_LEN];
        struct gw_dfu_suffix s;
        uint32_t crc;
        int k;

        if (r->size < GW_DFU_SUFFIX_LEN) {
                *ret_found = false;
                return 0;
        }
        k = read_exact(r, r->size - GW_DFU_SUFFIX_LEN, p, sizeof(p), why, why_size);
        if (k < 0)
                return k;
        if (memcmp(p + SUFFIX_SIG_OFF, "UFD", 3) != 0 || p[11] < GW_DFU_SUFFIX_LEN) {
                *ret_found = false;
                return 0;
        }
        s.bcd_device = get16(p);
        s.pid = get16(p + 2);
        s.vid = get16(p + 4);
        s.bcd_dfu = get16(p + 6);
        s.length = p[11];
        s.crc = get32(p + 12);
        if (s.length > r->size) {
                set_why(why, why_size,
                        "the DFU suffix declares %u bytes, more than the file's %" PRIu64, s.length,
                        r->size);
                return -EBADMSG;
        }
        k = file_crc(r, &crc, why, why_size);
        if (k < 0)
                return k;
        if (crc != s.crc) {
                set_why(why, why_size,
                        "the DFU suffix's CRC 0x%08" PRIx32 " does not match the file's "
                        "0x%08" PRIx32 " (option \"format: raw\" sends the file as it is)",
                        s.crc, crc);
                return -EBADMSG;
        }
        *ret = s;
        *ret_found = true;
        return 0;
}

static int cmp_elements(const void *a, const void *b)
{
        const struct gw_dfu_element *x = a, *y = b;

        if (x->alt != y->alt)
                return x->alt < y->alt ? -1 : 1;
        if (x->address != y->address)
                return x->address < y->address ? -1 : 1;
        return 0;
}

struct element_list {
        struct gw_dfu_element *v;
        size_t n, cap;
        uint64_t size;
};

static int element_add(struct element_list *l, const struct gw_dfu_element *e)
{
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 16;
                struct gw_dfu_element *v;

                if (cap > GW_DFUSE_FILE_ELEMENTS_MAX)
                        cap = GW_DFUSE_FILE_ELEMENTS_MAX;
                /* The caller bounded the count; this only guards the arithmetic. */
                if (cap <= l->n)
                        return -EBADMSG;
                v = realloc(l->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                l->v = v;
                l->cap = cap;
        }
        l->v[l->n++] = *e;
        l->size += e->size;
        return 0;
}

/* Parses one target at *off (its prefix and elements), adding its non-empty elements to l. */
static int parse_target(const struct gw_reader *r, uint64_t end, unsigned index, uint64_t *off,
                        uint64_t *n_declared, struct element_list *l, char *why, size_t why_size)
{
        uint8_t p[TARGET_PREFIX_LEN];
        uint64_t pos = *off, sum = 0;
        uint32_t target_size, nb;
        uint8_t alt;
        int k;

        if (end - pos < TARGET_PREFIX_LEN) {
                set_why(why, why_size,
                        "DfuSe target %u: its prefix at offset %" PRIu64
                        " reaches past the end of the image (%" PRIu64 " bytes)",
                        index, pos, end);
                return -EBADMSG;
        }
        k = read_exact(r, pos, p, sizeof(p), why, why_size);
        if (k < 0)
                return k;
        if (memcmp(p, TARGET_SIG, TARGET_SIG_LEN) != 0) {
                set_why(why, why_size,
                        "DfuSe target %u at offset %" PRIu64 ": no \"Target\" signature", index,
                        pos);
                return -EBADMSG;
        }
        alt = p[TARGET_ALT_OFF];
        target_size = get32(p + TARGET_SIZE_OFF);
        nb = get32(p + TARGET_NB_ELEM_OFF);
        if (nb > GW_DFUSE_FILE_ELEMENTS_MAX - *n_declared) {
                set_why(why, why_size,
                        "DfuSe target %u declares %" PRIu32
                        " elements: the file would hold more than %u",
                        index, nb, GW_DFUSE_FILE_ELEMENTS_MAX);
                return -EBADMSG;
        }
        *n_declared += nb;
        pos += TARGET_PREFIX_LEN;

        for (uint32_t i = 0; i < nb; i++) {
                uint8_t h[ELEMENT_HEADER_LEN];
                struct gw_dfu_element e;

                if (end - pos < ELEMENT_HEADER_LEN) {
                        set_why(why, why_size,
                                "DfuSe target %u element %" PRIu32 ": its header at offset %" PRIu64
                                " reaches past the end of the image (%" PRIu64 " bytes)",
                                index, i, pos, end);
                        return -EBADMSG;
                }
                k = read_exact(r, pos, h, sizeof(h), why, why_size);
                if (k < 0)
                        return k;
                pos += ELEMENT_HEADER_LEN;
                e.alt = alt;
                e.address = get32(h);
                e.size = get32(h + 4);
                e.offset = pos;
                if (e.size > end - pos) {
                        set_why(why, why_size,
                                "DfuSe target %u element %" PRIu32 ": 0x%08" PRIx32 " + %" PRIu32
                                " reaches past the end of the file",
                                index, i, e.address, e.size);
                        return -EBADMSG;
                }
                if ((uint64_t) e.address + e.size > ADDRESS_SPACE) {
                        set_why(why, why_size,
                                "DfuSe target %u element %" PRIu32 ": 0x%08" PRIx32 " + %" PRIu32
                                " reaches past 4 GiB",
                                index, i, e.address, e.size);
                        return -EBADMSG;
                }
                pos += e.size;
                sum += ELEMENT_HEADER_LEN + (uint64_t) e.size;
                if (e.size == 0)
                        continue;
                k = element_add(l, &e);
                if (k < 0) {
                        set_why(why, why_size, "DfuSe target %u element %" PRIu32 ": %s", index, i,
                                strerror(-k));
                        return k;
                }
        }
        if (sum != target_size) {
                set_why(why, why_size,
                        "DfuSe target %u declares %" PRIu32 " bytes, its %" PRIu32
                        " elements take %" PRIu64,
                        index, target_size, nb, sum);
                return -EBADMSG;
        }
        *off = pos;
        return 0;
}

/* Parses the DfuSe container that fills the payload. */
static int parse_dfuse(const struct gw_reader *r, uint64_t payload_size, struct element_list *l,
                       char *why, size_t why_size)
{
        uint8_t p[DFUSE_PREFIX_LEN];
        uint64_t off = DFUSE_PREFIX_LEN, n_declared = 0;
        uint32_t image_size;
        unsigned n_targets;
        int k;

        if (payload_size < DFUSE_PREFIX_LEN) {
                set_why(why, why_size,
                        "the DfuSe prefix is cut short: the image has %" PRIu64 " bytes",
                        payload_size);
                return -EBADMSG;
        }
        k = read_exact(r, 0, p, sizeof(p), why, why_size);
        if (k < 0)
                return k;
        if (p[DFUSE_SIG_LEN] != DFUSE_VERSION) {
                set_why(why, why_size, "DfuSe version %u, expected %u", p[DFUSE_SIG_LEN],
                        DFUSE_VERSION);
                return -EBADMSG;
        }
        /* UM0391: the whole file's length, suffix included (dfuse-pack writes it so too). */
        image_size = get32(p + 6);
        if (image_size != r->size) {
                set_why(why, why_size,
                        "the DfuSe prefix declares a file of %" PRIu32 " bytes, it has %" PRIu64,
                        image_size, r->size);
                return -EBADMSG;
        }
        n_targets = p[10];
        for (unsigned t = 0; t < n_targets; t++) {
                k = parse_target(r, payload_size, t, &off, &n_declared, l, why, why_size);
                if (k < 0)
                        return k;
        }
        if (off != payload_size) {
                set_why(why, why_size, "%" PRIu64 " bytes after the last of %u DfuSe targets",
                        payload_size - off, n_targets);
                return -EBADMSG;
        }
        if (l->n > 1)
                qsort(l->v, l->n, sizeof(*l->v), cmp_elements);
        for (size_t i = 1; i < l->n; i++) {
                const struct gw_dfu_element *a = &l->v[i - 1], *b = &l->v[i];

                if (a->alt == b->alt && (uint64_t) a->address + a->size > b->address) {
                        set_why(why, why_size,
                                "DfuSe alt %u: the element at 0x%08" PRIx32 " (%" PRIu32
                                " bytes) overlaps the one at 0x%08" PRIx32,
                                a->alt, a->address, a->size, b->address);
                        return -EBADMSG;
                }
        }
        return 0;
}

/* Does the payload start with the DfuSe signature? */
static int has_dfuse_sig(const struct gw_reader *r, uint64_t payload_size, bool *ret, char *why,
                         size_t why_size)
{
        uint8_t p[DFUSE_SIG_LEN];
        int k;

        if (payload_size < DFUSE_SIG_LEN) {
                *ret = false;
                return 0;
        }
        k = read_exact(r, 0, p, sizeof(p), why, why_size);
        if (k < 0)
                return k;
        *ret = memcmp(p, DFUSE_SIG, DFUSE_SIG_LEN) == 0;
        return 0;
}

int gw_dfu_file_parse(const struct gw_reader *r, enum gw_dfu_file_format format,
                      struct gw_dfu_file *ret, char *why, size_t why_size)
{
        struct gw_dfu_file f = {0};
        struct element_list l = {0};
        bool dfuse_sig;
        int k;

        if (!r || !r->pread || !ret)
                return -EINVAL;
        if (format != GW_DFU_FORMAT_AUTO && format != GW_DFU_FORMAT_RAW &&
            format != GW_DFU_FORMAT_DFU)
                return -EINVAL;

        f.payload_size = r->size;
        if (format == GW_DFU_FORMAT_RAW) {
                *ret = f;
                return 0;
        }

        k = parse_suffix(r, &f.suffix, &f.has_suffix, why, why_size);
        if (k < 0)
                return k;
        if (!f.has_suffix && format == GW_DFU_FORMAT_DFU) {
                set_why(why, why_size,
                        "no DFU suffix (the file does not end with \"UFD\" and a length)");
                return -EBADMSG;
        }
        if (f.has_suffix)
                f.payload_size = r->size - f.suffix.length;

        k = has_dfuse_sig(r, f.payload_size, &dfuse_sig, why, why_size);
        if (k < 0)
                return k;
        if (!dfuse_sig) {
                *ret = f;
                return 0;
        }
        if (!f.has_suffix) {
                set_why(why, why_size, "a DfuSe container without a DFU suffix");
                return -EBADMSG;
        }
        if (f.suffix.bcd_dfu != BCD_DFUSE) {
                set_why(why, why_size,
                        "a DfuSe container whose suffix declares bcdDFU 0x%04x, not 0x%04x",
                        f.suffix.bcd_dfu, BCD_DFUSE);
                return -EBADMSG;
        }
        k = parse_dfuse(r, f.payload_size, &l, why, why_size);
        if (k < 0) {
                free(l.v);
                return k;
        }
        f.dfuse = true;
        f.elements = l.v;
        f.n_elements = l.n;
        f.elements_size = l.size;
        *ret = f;
        return 0;
}

void gw_dfu_file_done(struct gw_dfu_file *f)
{
        if (!f)
                return;
        free(f->elements);
        *f = (struct gw_dfu_file){0};
}

bool gw_dfu_file_matches(const struct gw_dfu_file *f, uint16_t vid, uint16_t pid)
{
        if (!f || !f->has_suffix)
                return true;
        return (f->suffix.vid == GW_DFU_ID_ANY || f->suffix.vid == vid) &&
               (f->suffix.pid == GW_DFU_ID_ANY || f->suffix.pid == pid);
}
