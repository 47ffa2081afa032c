/* Tests for the DFU file parser (protocols/dfu/dfu-file.h): golden files made by dfu-util's
 * own tools (tests/unit/data/dfu-file/), suffixes and DfuSe containers built here with a
 * correct or a broken CRC and corrupted at every field, and readers that return short reads,
 * fail or end early. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "gw/plugin.h"

#include "../../protocols/dfu/dfu-file.h"

/* ---- readers ------------------------------------------------------------------------ */

struct mem {
        const uint8_t *p;
        size_t n;           /* bytes really there; the reader may declare more */
        size_t chunk;       /* the most one read returns; 0 = no limit */
        unsigned fail_call; /* the call (counted from 1) that fails with -fail */
        int fail;
        bool overclaim; /* returns one byte more than asked */
        unsigned calls;
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem *m = ctx;

        m->calls++;
        if (m->fail && m->calls >= m->fail_call)
                return -m->fail;
        if (off >= m->n)
                return 0;
        if (n > m->n - off)
                n = m->n - (size_t) off;
        if (m->chunk && n > m->chunk)
                n = m->chunk;
        memcpy(buf, m->p + off, n);
        return (ssize_t) n + (m->overclaim ? 1 : 0);
}

static struct gw_reader mem_reader(struct mem *m, const uint8_t *p, size_t n)
{
        *m = (struct mem){.p = p, .n = n};
        return (struct gw_reader){.size = n, .name = "test.dfu", .ctx = m, .pread = mem_pread};
}

static int parse_buf(const uint8_t *p, size_t n, enum gw_dfu_file_format format,
                     struct gw_dfu_file *ret, char *why, size_t why_size)
{
        struct mem m;
        struct gw_reader r = mem_reader(&m, p, n);

        return gw_dfu_file_parse(&r, format, ret, why, why_size);
}

/* ---- a builder for suffixes and containers -------------------------------------------- */

struct buf {
        uint8_t *p;
        size_t n, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
        if (b->n + n > b->cap) {
                size_t cap = b->cap ? b->cap : 256;

                while (cap < b->n + n)
                        cap *= 2;
                b->p = realloc(b->p, cap);
                assert_non_null(b->p);
                b->cap = cap;
        }
        if (n > 0)
                memcpy(b->p + b->n, p, n);
        b->n += n;
}

static void put8(struct buf *b, uint8_t v)
{
        put(b, &v, 1);
}

static void put16(struct buf *b, uint16_t v)
{
        uint8_t p[2] = {(uint8_t) v, (uint8_t) (v >> 8)};

        put(b, p, sizeof(p));
}

static void put32(struct buf *b, uint32_t v)
{
        uint8_t p[4] = {(uint8_t) v, (uint8_t) (v >> 8), (uint8_t) (v >> 16), (uint8_t) (v >> 24)};

        put(b, p, sizeof(p));
}

static void set32(struct buf *b, size_t off, uint32_t v)
{
        assert_true(off + 4 <= b->n);
        b->p[off] = (uint8_t) v;
        b->p[off + 1] = (uint8_t) (v >> 8);
        b->p[off + 2] = (uint8_t) (v >> 16);
        b->p[off + 3] = (uint8_t) (v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

static void buf_free(struct buf *b)
{
        free(b->p);
        *b = (struct buf){0};
}

/* The CRC of the DFU suffix: zlib's CRC-32 without its final inversion. */
static uint32_t dfu_crc(const uint8_t *p, size_t n)
{
        return (uint32_t) ~crc32(crc32(0L, Z_NULL, 0), p, (uInt) n);
}

/* Rewrites the CRC at the end of b after b was changed. */
static void recrc(struct buf *b)
{
        assert_true(b->n >= 4);
        set32(b, b->n - 4, dfu_crc(b->p, b->n - 4));
}

/* Appends a suffix of length bytes (extra ones are vendor data) with a correct CRC. */
static void add_suffix_len(struct buf *b, uint16_t vid, uint16_t pid, uint16_t bcd_dfu,
                           uint8_t length)
{
        for (unsigned i = GW_DFU_SUFFIX_LEN; i < length; i++)
                put8(b, (uint8_t) (0xc0 + i));
        put16(b, 0x0200);
        put16(b, pid);
        put16(b, vid);
        put16(b, bcd_dfu);
        put(b, "UFD", 3);
        put8(b, length);
        put32(b, dfu_crc(b->p, b->n));
}

static void add_suffix(struct buf *b, uint16_t vid, uint16_t pid, uint16_t bcd_dfu)
{
        add_suffix_len(b, vid, pid, bcd_dfu, GW_DFU_SUFFIX_LEN);
}

/* The bytes of an element at address, so that a wrong offset shows. */
static uint8_t pattern(uint32_t address, uint32_t i)
{
        return (uint8_t) (address * 7u + (address >> 12) + i * 31u + (i >> 8));
}

struct spec_el {
        uint32_t address, size;
};

struct spec_target {
        uint8_t alt;
        size_t n;
        const struct spec_el *el;
};

/* Offsets in a container. */
#define PREFIX_LEN     11u
#define OFF_VERSION    5u
#define OFF_IMAGE_SIZE 6u
#define OFF_TARGETS    10u
#define TPREFIX_LEN    274u
#define TOFF_SIZE      266u
#define TOFF_NB        270u

/* A DfuSe container (no suffix yet: finish with dfuse_finish()). */
static void build_dfuse(struct buf *b, const struct spec_target *t, size_t nt)
{
        uint8_t name[255] = "Internal Flash";

        put(b, "DfuSe", 5);
        put8(b, 1);
        put32(b, 0); /* DFUImageSize, set by dfuse_finish() */
        put8(b, (uint8_t) nt);
        for (size_t i = 0; i < nt; i++) {
                uint32_t size = 0;

                for (size_t e = 0; e < t[i].n; e++)
                        size += 8 + t[i].el[e].size;
                put(b, "Target", 6);
                put8(b, t[i].alt);
                put32(b, 1);
                put(b, name, sizeof(name));
                put32(b, size);
                put32(b, (uint32_t) t[i].n);
                for (size_t e = 0; e < t[i].n; e++) {
                        put32(b, t[i].el[e].address);
                        put32(b, t[i].el[e].size);
                        for (uint32_t k = 0; k < t[i].el[e].size; k++)
                                put8(b, pattern(t[i].el[e].address, k));
                }
        }
}

/* Sets DFUImageSize to the final file size and appends a DfuSe suffix. */
static void dfuse_finish(struct buf *b)
{
        set32(b, OFF_IMAGE_SIZE, (uint32_t) b->n + GW_DFU_SUFFIX_LEN);
        add_suffix(b, 0x0483, 0xdf11, 0x011a);
}

static void make_dfuse(struct buf *b, const struct spec_target *t, size_t nt)
{
        *b = (struct buf){0};
        build_dfuse(b, t, nt);
        dfuse_finish(b);
}

/* Two targets, three non-empty elements and an empty one, not in order. */
static const struct spec_el els_a[] = {{0x08004000, 300}, {0x08000000, 1000}, {0x08010000, 0}};
static const struct spec_el els_b[] = {{0x1fffc000, 16}};
static const struct spec_target tgt_ab[] = {{0, 3, els_a}, {1, 1, els_b}};

static void check_pattern(const uint8_t *file, const struct gw_dfu_element *e)
{
        for (uint32_t i = 0; i < e->size; i++)
                if (file[e->offset + i] != pattern(e->address, i))
                        fail_msg("element 0x%08x byte %u differs", e->address, i);
}

static void expect_bad(const uint8_t *p, size_t n, enum gw_dfu_file_format format,
                       const char *reason)
{
        struct gw_dfu_file f;
        char why[256] = "";
        int r;

        memset(&f, 0xa5, sizeof(f));
        r = parse_buf(p, n, format, &f, why, sizeof(why));
        if (r != -EBADMSG)
                fail_msg("expected -EBADMSG, got %d (%s)", r, why);
        /* ret untouched */
        for (size_t i = 0; i < sizeof(f); i++)
                assert_int_equal(((const uint8_t *) &f)[i], 0xa5);
        assert_true(why[0] != '\0');
        assert_null(strchr(why, '\n'));
        if (reason && !strstr(why, reason))
                fail_msg("reason \"%s\" does not say \"%s\"", why, reason);
}

static void expect_ok(const uint8_t *p, size_t n, enum gw_dfu_file_format format,
                      struct gw_dfu_file *ret)
{
        char why[256] = "";
        int r;

        r = parse_buf(p, n, format, ret, why, sizeof(why));
        if (r != 0)
                fail_msg("expected success, got %d (%s)", r, why);
}

/* ---- golden files from dfu-suffix and dfuse-pack ----------------------------------------- */

static int load(const char *name, uint8_t **ret, size_t *ret_len)
{
        const char *srcdir = getenv("GW_TEST_SRCDIR");
        char path[PATH_MAX];
        uint8_t *p;
        long len;
        FILE *fp;

        if (!srcdir)
                return -ENOENT;
        snprintf(path, sizeof(path), "%s/data/dfu-file/%s", srcdir, name);
        fp = fopen(path, "rb");
        if (!fp)
                fail_msg("%s: %s", path, strerror(errno));
        assert_int_equal(fseek(fp, 0, SEEK_END), 0);
        len = ftell(fp);
        assert_true(len >= 0);
        rewind(fp);
        p = malloc((size_t) len + 1);
        assert_non_null(p);
        assert_int_equal(fread(p, 1, (size_t) len, fp), (size_t) len);
        fclose(fp);
        *ret = p;
        *ret_len = (size_t) len;
        return 0;
}

#define LOAD_OR_SKIP(name, p, n)                                                                   \
        do {                                                                                       \
                if (load((name), &(p), &(n)) < 0) {                                                \
                        print_message("GW_TEST_SRCDIR not set (run through meson test): "          \
                                      "skipped\n");                                                \
                        skip();                                                                    \
                }                                                                                  \
        } while (0)

static void expect_bytes(const uint8_t *file, const struct gw_dfu_element *e, const char *binname)
{
        uint8_t *bin;
        size_t n;

        assert_int_equal(load(binname, &bin, &n), 0);
        assert_int_equal(e->size, n);
        assert_memory_equal(file + e->offset, bin, n);
        free(bin);
}

static void test_golden_suffix(void **state)
{
        struct gw_dfu_file f;
        uint8_t *p, *bin;
        size_t n, nbin;

        LOAD_OR_SKIP("plain.dfu", p, n);
        assert_int_equal(load("a.bin", &bin, &nbin), 0);

        for (int format = GW_DFU_FORMAT_AUTO; format <= GW_DFU_FORMAT_DFU; format += 2) {
                expect_ok(p, n, (enum gw_dfu_file_format) format, &f);
                assert_true(f.has_suffix);
                assert_false(f.dfuse);
                assert_int_equal(f.suffix.vid, 0x1234);
                assert_int_equal(f.suffix.pid, 0x5678);
                assert_int_equal(f.suffix.bcd_device, 0x0200);
                assert_int_equal(f.suffix.bcd_dfu, 0x0100);
                assert_int_equal(f.suffix.length, 16);
                /* what `dfu-suffix -c plain.dfu` prints */
                assert_int_equal(f.suffix.crc, 0x23303903);
                assert_int_equal(f.payload_size, nbin);
                assert_memory_equal(p, bin, nbin);
                assert_null(f.elements);
                assert_int_equal(f.n_elements, 0);
                gw_dfu_file_done(&f);
        }

        /* RAW ignores the suffix. */
        expect_ok(p, n, GW_DFU_FORMAT_RAW, &f);
        assert_false(f.has_suffix);
        assert_int_equal(f.payload_size, n);

        /* One bit flipped in the image, then in dwCRC itself. */
        p[100] ^= 0x01;
        expect_bad(p, n, GW_DFU_FORMAT_AUTO, "0x23303903");
        expect_bad(p, n, GW_DFU_FORMAT_DFU, "format: raw");
        expect_ok(p, n, GW_DFU_FORMAT_RAW, &f);
        assert_int_equal(f.payload_size, n);
        p[100] ^= 0x01;
        p[n - 1] ^= 0x80;
        expect_bad(p, n, GW_DFU_FORMAT_AUTO, "0xa3303903");

        free(bin);
        free(p);
}

static void test_golden_dfuse(void **state)
{
        struct gw_dfu_file f;
        uint8_t *p;
        size_t n;

        LOAD_OR_SKIP("two.dfu", p, n);
        expect_ok(p, n, GW_DFU_FORMAT_AUTO, &f);
        assert_true(f.has_suffix && f.dfuse);
        assert_int_equal(f.suffix.vid, 0x0483);
        assert_int_equal(f.suffix.pid, 0xdf11);
        assert_int_equal(f.suffix.bcd_dfu, 0x011a);
        assert_int_equal(f.suffix.crc, 0x063ece47);
        assert_int_equal(f.payload_size, n - 16);
        assert_int_equal(f.n_elements, 2);
        /* dfuse-pack wrote them in descending order */
        assert_int_equal(f.elements[0].alt, 0);
        assert_int_equal(f.elements[0].address, 0x08000000);
        assert_int_equal(f.elements[1].alt, 0);
        assert_int_equal(f.elements[1].address, 0x08004000);
        expect_bytes(p, &f.elements[0], "a.bin");
        expect_bytes(p, &f.elements[1], "b.bin");
        assert_int_equal(f.elements_size, 1300);
        gw_dfu_file_done(&f);
        assert_null(f.elements);
        assert_int_equal(f.n_elements, 0);
        free(p);

        LOAD_OR_SKIP("alts.dfu", p, n);
        expect_ok(p, n, GW_DFU_FORMAT_DFU, &f);
        assert_true(f.dfuse);
        assert_int_equal(f.n_elements, 3);
        assert_int_equal(f.elements[0].alt, 0);
        assert_int_equal(f.elements[0].address, 0x08000000);
        assert_int_equal(f.elements[1].alt, 0);
        assert_int_equal(f.elements[1].address, 0x08004000);
        assert_int_equal(f.elements[2].alt, 1);
        assert_int_equal(f.elements[2].address, 0x1fffc000);
        expect_bytes(p, &f.elements[0], "a.bin");
        expect_bytes(p, &f.elements[1], "b.bin");
        expect_bytes(p, &f.elements[2], "ob.bin");
        assert_int_equal(f.elements_size, 1316);
        gw_dfu_file_done(&f);

        /* RAW sends the container as it is. */
        expect_ok(p, n, GW_DFU_FORMAT_RAW, &f);
        assert_false(f.dfuse || f.has_suffix);
        assert_int_equal(f.payload_size, n);
        free(p);
}

/* ---- suffixes --------------------------------------------------------------------------- */

static void test_suffix_built(void **state)
{
        struct gw_dfu_file f;
        struct buf b = {0};

        put(&b, "\x01\x02\x03\x04\x05\x06\x07", 7);
        add_suffix(&b, GW_DFU_ID_ANY, 0x0001, 0x0100);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_true(f.has_suffix);
        assert_int_equal(f.payload_size, 7);
        assert_int_equal(f.suffix.vid, 0xffff);
        assert_int_equal(f.suffix.pid, 0x0001);
        assert_int_equal(f.suffix.crc, get32(b.p + b.n - 4));
        buf_free(&b);

        /* A suffix alone: an empty image. */
        add_suffix(&b, 1, 2, 0x0100);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_DFU, &f);
        assert_true(f.has_suffix);
        assert_int_equal(f.payload_size, 0);
        buf_free(&b);

        /* bLength 32: 16 bytes of vendor data before the fixed part. */
        put(&b, "image", 5);
        add_suffix_len(&b, 1, 2, 0x0100, 32);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_int_equal(f.suffix.length, 32);
        assert_int_equal(f.payload_size, 5);
        buf_free(&b);

        /* bLength 0xff on a short file, with a correct CRC. */
        put(&b, "image", 5);
        add_suffix_len(&b, 1, 2, 0x0100, 16);
        b.p[b.n - 5] = 0xff;
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "255");
        expect_bad(b.p, b.n, GW_DFU_FORMAT_DFU, NULL);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_RAW, &f);
        assert_int_equal(f.payload_size, b.n);
        /* bLength exactly the file's size: an empty image. */
        b.p[b.n - 5] = (uint8_t) b.n;
        recrc(&b);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_int_equal(f.payload_size, 0);
        /* bLength below 16: not a suffix at all. */
        b.p[b.n - 5] = 15;
        recrc(&b);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_false(f.has_suffix);
        assert_int_equal(f.payload_size, b.n);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_DFU, "no DFU suffix");
        /* "UFD" in the wrong order */
        b.p[b.n - 5] = 16;
        b.p[b.n - 8] = 'D';
        b.p[b.n - 6] = 'U';
        recrc(&b);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_false(f.has_suffix);
        buf_free(&b);
}

static void test_suffix_plain(void **state)
{
        static const uint8_t plain[64] = {0x20, 0x00, 0x00, 0x20, 0x01, 0x02};
        struct gw_dfu_file f;

        for (size_t n = 0; n <= sizeof(plain); n++) {
                expect_ok(n ? plain : NULL, n, GW_DFU_FORMAT_AUTO, &f);
                assert_false(f.has_suffix || f.dfuse);
                assert_int_equal(f.payload_size, n);
                expect_ok(plain, n, GW_DFU_FORMAT_RAW, &f);
                assert_int_equal(f.payload_size, n);
                expect_bad(plain, n, GW_DFU_FORMAT_DFU, "no DFU suffix");
        }
        /* A plain file that happens to start with "DfuSe" without a suffix. */
        expect_bad((const uint8_t *) "DfuSe\x01\x00\x00\x00\x00\x00", 11, GW_DFU_FORMAT_AUTO,
                   "without a DFU suffix");
        /* not quite the signature */
        expect_ok((const uint8_t *) "DfuS", 4, GW_DFU_FORMAT_AUTO, &f);
        assert_false(f.dfuse);
}

static void test_args(void **state)
{
        struct gw_dfu_file f;
        struct mem m;
        struct gw_reader r = mem_reader(&m, (const uint8_t *) "x", 1);

        assert_int_equal(gw_dfu_file_parse(NULL, GW_DFU_FORMAT_AUTO, &f, NULL, 0), -EINVAL);
        assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, NULL, NULL, 0), -EINVAL);
        assert_int_equal(gw_dfu_file_parse(&r, (enum gw_dfu_file_format) 7, &f, NULL, 0), -EINVAL);
        r.pread = NULL;
        assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, &f, NULL, 0), -EINVAL);

        /* A reason is optional. */
        r = mem_reader(&m, (const uint8_t *) "x", 1);
        assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_DFU, &f, NULL, 0), -EBADMSG);
        {
                char why[8];

                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_DFU, &f, why, 0), -EBADMSG);
                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_DFU, &f, why, sizeof(why)),
                                 -EBADMSG);
                assert_int_equal(strlen(why), sizeof(why) - 1);
        }

        /* Freeing a zeroed struct, twice. */
        memset(&f, 0, sizeof(f));
        gw_dfu_file_done(&f);
        gw_dfu_file_done(&f);
        gw_dfu_file_done(NULL);
}

/* ---- DfuSe containers ------------------------------------------------------------------- */

static void test_dfuse_built(void **state)
{
        struct gw_dfu_file f;
        struct buf b;

        make_dfuse(&b, tgt_ab, 2);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
        assert_true(f.dfuse);
        assert_int_equal(f.n_elements, 3); /* the empty one dropped */
        assert_int_equal(f.elements[0].address, 0x08000000);
        assert_int_equal(f.elements[0].size, 1000);
        assert_int_equal(f.elements[1].address, 0x08004000);
        assert_int_equal(f.elements[2].alt, 1);
        assert_int_equal(f.elements[2].address, 0x1fffc000);
        assert_int_equal(f.elements_size, 1316);
        for (size_t i = 0; i < f.n_elements; i++) {
                assert_true(f.elements[i].offset + f.elements[i].size <= f.payload_size);
                check_pattern(b.p, &f.elements[i]);
        }
        gw_dfu_file_done(&f);
        buf_free(&b);

        /* Only empty elements, and no target at all. */
        {
                static const struct spec_el empty[] = {{0x08000000, 0}, {0x08000000, 0}};
                static const struct spec_target t[] = {{0, 2, empty}};

                make_dfuse(&b, t, 1);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_true(f.dfuse);
                assert_null(f.elements);
                assert_int_equal(f.n_elements, 0);
                assert_int_equal(f.elements_size, 0);
                buf_free(&b);

                make_dfuse(&b, t, 0);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_true(f.dfuse);
                assert_int_equal(f.n_elements, 0);
                buf_free(&b);
        }
}

/* Every truncation of the container's bytes, re-suffixed with a correct CRC (and the
 * DFUImageSize made to agree, so the later checks are reached) is refused. */
static void test_dfuse_truncated(void **state)
{
        struct gw_dfu_file f;
        struct buf full = {0};
        size_t len;

        build_dfuse(&full, tgt_ab, 2);
        len = full.n;
        for (size_t cut = 0; cut < len; cut++) {
                for (int fix = 0; fix <= 1; fix++) {
                        struct buf b = {0};

                        put(&b, full.p, cut);
                        if (fix && cut >= PREFIX_LEN)
                                set32(&b, OFF_IMAGE_SIZE, (uint32_t) cut + GW_DFU_SUFFIX_LEN);
                        add_suffix(&b, 0x0483, 0xdf11, 0x011a);
                        if (cut < 5) {
                                /* too short to be "DfuSe": a plain image */
                                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                                assert_false(f.dfuse);
                                assert_int_equal(f.payload_size, cut);
                        } else {
                                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, NULL);
                        }
                        buf_free(&b);
                }
        }
        buf_free(&full);
}

static void test_dfuse_fields(void **state)
{
        struct buf b;
        const size_t t0 = PREFIX_LEN, e0 = PREFIX_LEN + TPREFIX_LEN;

        /* DFUImageSize one off either way, or the payload's size (not the file's). */
        for (int d = -1; d <= 1; d += 2) {
                make_dfuse(&b, tgt_ab, 2);
                set32(&b, OFF_IMAGE_SIZE, (uint32_t) ((int64_t) b.n + d));
                recrc(&b);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "DfuSe prefix declares");
                buf_free(&b);
        }
        make_dfuse(&b, tgt_ab, 2);
        set32(&b, OFF_IMAGE_SIZE, (uint32_t) b.n - GW_DFU_SUFFIX_LEN);
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, NULL);
        buf_free(&b);

        /* bVersion */
        make_dfuse(&b, tgt_ab, 2);
        b.p[OFF_VERSION] = 2;
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "version");
        buf_free(&b);

        /* bTargets one less (bytes left over) and one more (a target missing) */
        make_dfuse(&b, tgt_ab, 2);
        b.p[OFF_TARGETS] = 1;
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "after the last");
        b.p[OFF_TARGETS] = 3;
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "target 2");
        buf_free(&b);

        /* the "Target" signature */
        make_dfuse(&b, tgt_ab, 2);
        b.p[t0 + 5] = 'T';
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "Target");
        buf_free(&b);

        /* dwTargetSize one off either way */
        for (int d = -1; d <= 1; d += 2) {
                make_dfuse(&b, tgt_ab, 2);
                set32(&b, t0 + TOFF_SIZE, get32(b.p + t0 + TOFF_SIZE) + (uint32_t) d);
                recrc(&b);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "target 0 declares");
                buf_free(&b);
        }

        /* dwNbElements: one less leaves bytes the target size counts; one more reads the
         * next target's prefix as an element; huge is refused before any is read. */
        make_dfuse(&b, tgt_ab, 2);
        set32(&b, t0 + TOFF_NB, 2);
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, NULL);
        set32(&b, t0 + TOFF_NB, 4);
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, NULL);
        set32(&b, t0 + TOFF_NB, 0xffffffff);
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "more than 1024");
        buf_free(&b);

        /* dwElementSize past the end of the file */
        make_dfuse(&b, tgt_ab, 2);
        set32(&b, e0 + 4, 0x7fffffff);
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO,
                   "target 0 element 0: 0x08004000 + 2147483647 reaches past the end");
        buf_free(&b);

        /* the "DfuSe" prefix needs a suffix declaring bcdDFU 0x011a */
        make_dfuse(&b, tgt_ab, 2);
        b.p[b.n - 10] = 0x00;
        b.p[b.n - 9] = 0x01;
        recrc(&b);
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "bcdDFU 0x0100");
        expect_bad(b.p, b.n, GW_DFU_FORMAT_DFU, "bcdDFU 0x0100");
        buf_free(&b);
        make_dfuse(&b, tgt_ab, 2);
        expect_bad(b.p, b.n - GW_DFU_SUFFIX_LEN, GW_DFU_FORMAT_AUTO, "without a DFU suffix");
        expect_bad(b.p, b.n - GW_DFU_SUFFIX_LEN, GW_DFU_FORMAT_DFU, "no DFU suffix");
        /* the container with its CRC broken */
        b.p[e0 + 8] ^= 0xff;
        expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "format: raw");
        buf_free(&b);

        /* bcdDFU 0x011a without the "DfuSe" prefix: a plain image */
        {
                struct gw_dfu_file f;

                b = (struct buf){0};
                put(&b, "plain image", 11);
                add_suffix(&b, 0x0483, 0xdf11, 0x011a);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_true(f.has_suffix);
                assert_false(f.dfuse);
                assert_int_equal(f.payload_size, 11);
                buf_free(&b);
        }
}

static void test_dfuse_limits(void **state)
{
        struct spec_el *many = calloc(GW_DFUSE_FILE_ELEMENTS_MAX + 1, sizeof(*many));
        struct gw_dfu_file f;
        struct buf b;

        assert_non_null(many);
        for (size_t i = 0; i <= GW_DFUSE_FILE_ELEMENTS_MAX; i++)
                many[i] = (struct spec_el){0x20000000 + 2 * (uint32_t) i, 1};

        /* Exactly the limit, over two targets of the same alt: fine. */
        {
                const struct spec_target t[] = {{0, 1000, many + 24},
                                                {0, GW_DFUSE_FILE_ELEMENTS_MAX - 1000, many}};

                make_dfuse(&b, t, 2);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_int_equal(f.n_elements, GW_DFUSE_FILE_ELEMENTS_MAX);
                assert_int_equal(f.elements_size, GW_DFUSE_FILE_ELEMENTS_MAX);
                for (size_t i = 0; i < f.n_elements; i++) {
                        assert_int_equal(f.elements[i].address, 0x20000000 + 2 * i);
                        check_pattern(b.p, &f.elements[i]);
                }
                gw_dfu_file_done(&f);
                buf_free(&b);
        }
        /* One more, in a third target (even an empty element counts). */
        {
                static const struct spec_el one[] = {{0x30000000, 0}};
                const struct spec_target t[] = {{0, 1000, many + 24},
                                                {0, GW_DFUSE_FILE_ELEMENTS_MAX - 1000, many},
                                                {1, 1, one}};

                make_dfuse(&b, t, 3);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "target 2 declares 1 elements");
                buf_free(&b);
        }
        {
                const struct spec_target t[] = {{0, GW_DFUSE_FILE_ELEMENTS_MAX + 1, many}};

                make_dfuse(&b, t, 1);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "more than 1024");
                buf_free(&b);
        }
        free(many);

        /* Up to 4 GiB exactly, and one byte past. */
        {
                static const struct spec_el top[] = {{0xffffff00, 0x100}};
                static const struct spec_el past[] = {{0xffffff00, 0x101}};
                static const struct spec_target t_top[] = {{0, 1, top}};
                static const struct spec_target t_past[] = {{0, 1, past}};

                make_dfuse(&b, t_top, 1);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_int_equal(f.elements[0].address, 0xffffff00);
                gw_dfu_file_done(&f);
                buf_free(&b);
                make_dfuse(&b, t_past, 1);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "0xffffff00 + 257 reaches past 4 GiB");
                buf_free(&b);
        }
}

static void test_dfuse_overlap(void **state)
{
        static const struct spec_el overlap[] = {{0x08000100, 16}, {0x08000000, 0x101}};
        static const struct spec_el adjacent[] = {{0x08000100, 16}, {0x08000000, 0x100}};
        static const struct spec_el same[] = {{0x08000000, 4}, {0x08000000, 4}};
        static const struct spec_el other[] = {{0x08000000, 0x101}};
        struct gw_dfu_file f;
        struct buf b;

        {
                const struct spec_target t[] = {{0, 2, overlap}};

                make_dfuse(&b, t, 1);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "0x08000000");
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "0x08000100");
                buf_free(&b);
        }
        {
                const struct spec_target t[] = {{0, 2, same}};

                make_dfuse(&b, t, 1);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "overlaps");
                buf_free(&b);
        }
        /* The same addresses in two targets of one alt overlap too. */
        {
                const struct spec_target t[] = {{3, 1, other}, {3, 1, overlap}};

                make_dfuse(&b, t, 2);
                expect_bad(b.p, b.n, GW_DFU_FORMAT_AUTO, "alt 3");
                buf_free(&b);
        }
        {
                const struct spec_target t[] = {{0, 2, adjacent}};

                make_dfuse(&b, t, 1);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_int_equal(f.n_elements, 2);
                assert_int_equal(f.elements[0].address, 0x08000000);
                gw_dfu_file_done(&f);
                buf_free(&b);
        }
        /* In different alts they may. */
        {
                const struct spec_target t[] = {{1, 1, other}, {0, 1, overlap}, {2, 1, other}};

                make_dfuse(&b, t, 3);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_int_equal(f.n_elements, 3);
                assert_int_equal(f.elements[0].alt, 0);
                assert_int_equal(f.elements[0].address, 0x08000100);
                assert_int_equal(f.elements[1].alt, 1);
                assert_int_equal(f.elements[2].alt, 2);
                for (size_t i = 0; i < f.n_elements; i++)
                        check_pattern(b.p, &f.elements[i]);
                gw_dfu_file_done(&f);
                buf_free(&b);
        }
}

/* ---- readers that misbehave --------------------------------------------------------------- */

static void test_short_reads(void **state)
{
        struct gw_dfu_file ref, f;
        struct buf b;

        make_dfuse(&b, tgt_ab, 2);
        expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &ref);
        for (size_t chunk = 1; chunk <= 7; chunk += 2) {
                struct mem m;
                struct gw_reader r = mem_reader(&m, b.p, b.n);

                m.chunk = chunk;
                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, &f, NULL, 0), 0);
                assert_true(m.calls >= b.n / chunk);
                assert_true(f.dfuse);
                assert_int_equal(f.n_elements, ref.n_elements);
                for (size_t i = 0; i < f.n_elements; i++) {
                        assert_int_equal(f.elements[i].alt, ref.elements[i].alt);
                        assert_int_equal(f.elements[i].address, ref.elements[i].address);
                        assert_int_equal(f.elements[i].size, ref.elements[i].size);
                        assert_int_equal(f.elements[i].offset, ref.elements[i].offset);
                }
                assert_int_equal(f.suffix.crc, ref.suffix.crc);
                gw_dfu_file_done(&f);
        }
        gw_dfu_file_done(&ref);
        buf_free(&b);
}

static void test_reader_fails(void **state)
{
        struct buf b;

        make_dfuse(&b, tgt_ab, 2);
        /* Every read of a successful parse failing in turn, with whole and short reads. */
        for (size_t chunk = 0; chunk <= 3; chunk += 3) {
                struct gw_dfu_file ok;
                struct mem m0;
                struct gw_reader r0 = mem_reader(&m0, b.p, b.n);
                unsigned calls;

                m0.chunk = chunk;
                assert_int_equal(gw_dfu_file_parse(&r0, GW_DFU_FORMAT_AUTO, &ok, NULL, 0), 0);
                gw_dfu_file_done(&ok);
                calls = m0.calls;
                assert_true(calls > 3);
                for (unsigned i = 1; i <= calls; i++) {
                        struct gw_dfu_file f;
                        char why[256] = "";
                        struct mem m;
                        struct gw_reader r = mem_reader(&m, b.p, b.n);

                        m.fail = EIO;
                        m.fail_call = i;
                        m.chunk = chunk;
                        memset(&f, 0x5a, sizeof(f));
                        assert_int_equal(
                            gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, &f, why, sizeof(why)), -EIO);
                        assert_int_equal(m.calls, i);
                        assert_non_null(strstr(why, "reading the file"));
                        for (size_t k = 0; k < sizeof(f); k++)
                                assert_int_equal(((const uint8_t *) &f)[k], 0x5a);
                }
        }
        /* RAW reads nothing. */
        {
                struct gw_dfu_file f;
                struct mem m;
                struct gw_reader r = mem_reader(&m, b.p, b.n);

                m.fail = EIO;
                m.fail_call = 1;
                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_RAW, &f, NULL, 0), 0);
                assert_int_equal(m.calls, 0);
        }
        /* A reader claiming more bytes than it was asked for. */
        {
                struct gw_dfu_file f;
                struct mem m;
                struct gw_reader r = mem_reader(&m, b.p, b.n);

                m.overclaim = true;
                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, &f, NULL, 0), -EIO);
        }
        /* A reader whose file ends before the size it declared. */
        for (size_t have = 0; have < b.n; have += 97) {
                struct gw_dfu_file f;
                char why[256] = "";
                struct mem m;
                struct gw_reader r = mem_reader(&m, b.p, b.n);

                m.n = have;
                assert_int_equal(gw_dfu_file_parse(&r, GW_DFU_FORMAT_AUTO, &f, why, sizeof(why)),
                                 -EIO);
                assert_non_null(strstr(why, "ended"));
        }
        buf_free(&b);
}

/* ---- matching a device ---------------------------------------------------------------------- */

static void test_matches(void **state)
{
        static const struct {
                uint16_t file_vid, file_pid, vid, pid;
                bool match;
        } v[] = {
            {0x0483, 0xdf11, 0x0483, 0xdf11, true},  {0x0483, 0xdf11, 0x0483, 0xdf12, false},
            {0x0483, 0xdf11, 0x0484, 0xdf11, false}, {0xffff, 0xdf11, 0x1234, 0xdf11, true},
            {0xffff, 0xdf11, 0x1234, 0x5678, false}, {0x0483, 0xffff, 0x0483, 0x0001, true},
            {0x0483, 0xffff, 0x0001, 0x0001, false}, {0xffff, 0xffff, 0x0001, 0x0002, true},
        };
        struct gw_dfu_file f = {0};

        /* no suffix: anything */
        assert_true(gw_dfu_file_matches(&f, 0x0483, 0xdf11));
        f.has_suffix = true;
        f.suffix.bcd_device = 0x1234; /* never compared */
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                f.suffix.vid = v[i].file_vid;
                f.suffix.pid = v[i].file_pid;
                if (gw_dfu_file_matches(&f, v[i].vid, v[i].pid) != v[i].match)
                        fail_msg("vector %zu", i);
        }

        /* through the parser */
        {
                struct buf b = {0};

                put(&b, "abc", 3);
                add_suffix(&b, 0x1209, GW_DFU_ID_ANY, 0x0100);
                expect_ok(b.p, b.n, GW_DFU_FORMAT_AUTO, &f);
                assert_true(gw_dfu_file_matches(&f, 0x1209, 0x2002));
                assert_false(gw_dfu_file_matches(&f, 0x1208, 0x2002));
                expect_ok(b.p, b.n, GW_DFU_FORMAT_RAW, &f);
                assert_true(gw_dfu_file_matches(&f, 0x1208, 0x2002));
                buf_free(&b);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_golden_suffix),
            cmocka_unit_test(test_golden_dfuse),
            cmocka_unit_test(test_suffix_built),
            cmocka_unit_test(test_suffix_plain),
            cmocka_unit_test(test_args),
            cmocka_unit_test(test_dfuse_built),
            cmocka_unit_test(test_dfuse_truncated),
            cmocka_unit_test(test_dfuse_fields),
            cmocka_unit_test(test_dfuse_limits),
            cmocka_unit_test(test_dfuse_overlap),
            cmocka_unit_test(test_short_reads),
            cmocka_unit_test(test_reader_fails),
            cmocka_unit_test(test_matches),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
