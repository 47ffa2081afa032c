/* Fuzz target for the DFU file parser (protocols/dfu/dfu-file.c): the bytes are the file,
 * parsed as it is and, so that mutations get past the CRC, again with its last 4 bytes
 * rewritten to the CRC a suffix needs; each both with whole and with short reads, in each
 * format. On success the promises of dfu-file.h are checked against the bytes (suffix fields
 * and CRC, elements sorted by (alt, address), not overlapping within an alt, inside 4 GiB and
 * the payload, headed by their address and size, summing to elements_size, at most
 * GW_DFUSE_FILE_ELEMENTS_MAX); on failure, that ret is untouched and the reason one line.
 * Each file (and its CRC-fixed copy) also goes through gw_plugin_check_image() of the dfu
 * protocol, with options and facts (what identify() would report) chosen by four control
 * bytes: an input starting with "DFCK" c0 c1 c2 c3 has them there (c3 & 7 == 7: a length byte
 * and that many bytes of a facts layout follow), the file being the rest; any other input is
 * the file itself, checked with no options and both without facts and with facts of a DFU
 * mode board the file is meant for. check_image returns 0 or -errno, a one-line reason on
 * failure, -EINVAL for bad options, what open_file() promises without facts, and facts only
 * ever add refusals (none when the board is not in DFU mode). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "../../protocols/dfu/dfu-file.h"
#include "fuzz.h"

struct mem {
        const uint8_t *p;
        size_t n;
        size_t chunk; /* the most one read returns; 0 = no limit */
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem *m = ctx;

        fuzz_check(buf && n > 0);
        fuzz_check(off <= m->n && n <= m->n - off); /* never reads past the size */
        if (m->chunk && n > m->chunk)
                n = m->chunk;
        memcpy(buf, m->p + off, n);
        return (ssize_t) n;
}

static uint32_t get32(const uint8_t *p)
{
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

static uint16_t get16(const uint8_t *p)
{
        return (uint16_t) (p[0] | p[1] << 8);
}

static uint32_t dfu_crc(const uint8_t *p, size_t n)
{
        return (uint32_t) ~crc32(crc32(0L, Z_NULL, 0), p, (uInt) n);
}

static void check_ok(const uint8_t *data, size_t size, enum gw_dfu_file_format format,
                     const struct gw_dfu_file *f)
{
        uint64_t sum = 0;

        if (format == GW_DFU_FORMAT_RAW || !f->has_suffix) {
                fuzz_check(!f->has_suffix && !f->dfuse);
                fuzz_check(f->payload_size == size);
                fuzz_check(gw_dfu_file_matches(f, 0x1234, 0x5678));
        }
        if (format == GW_DFU_FORMAT_DFU)
                fuzz_check(f->has_suffix);
        if (f->has_suffix) {
                const uint8_t *s = data + size - GW_DFU_SUFFIX_LEN;

                fuzz_check(size >= GW_DFU_SUFFIX_LEN && f->suffix.length >= GW_DFU_SUFFIX_LEN);
                fuzz_check(f->suffix.length <= size);
                fuzz_check(f->payload_size == size - f->suffix.length);
                fuzz_check(memcmp(s + 8, "UFD", 3) == 0 && s[11] == f->suffix.length);
                fuzz_check(f->suffix.bcd_device == get16(s) && f->suffix.pid == get16(s + 2) &&
                           f->suffix.vid == get16(s + 4) && f->suffix.bcd_dfu == get16(s + 6));
                fuzz_check(f->suffix.crc == get32(s + 12));
                fuzz_check(f->suffix.crc == dfu_crc(data, size - 4));
                fuzz_check(gw_dfu_file_matches(f, f->suffix.vid, f->suffix.pid));
        }
        if (!f->dfuse) {
                fuzz_check(!f->elements && f->n_elements == 0 && f->elements_size == 0);
                return;
        }
        fuzz_check(f->has_suffix && f->suffix.bcd_dfu == 0x011a);
        fuzz_check(f->payload_size >= 11 && memcmp(data, "DfuSe", 5) == 0);
        fuzz_check(f->n_elements <= GW_DFUSE_FILE_ELEMENTS_MAX);
        fuzz_check((f->n_elements == 0) == (f->elements == NULL));
        for (size_t i = 0; i < f->n_elements; i++) {
                const struct gw_dfu_element *e = &f->elements[i];

                fuzz_check(e->size > 0);
                fuzz_check((uint64_t) e->address + e->size <= UINT64_C(1) << 32);
                fuzz_check(e->offset >= 11 + 274 + 8);
                fuzz_check(e->offset <= f->payload_size && e->size <= f->payload_size - e->offset);
                /* headed by its own address and size */
                fuzz_check(get32(data + e->offset - 8) == e->address);
                fuzz_check(get32(data + e->offset - 4) == e->size);
                if (i > 0) {
                        const struct gw_dfu_element *p = &f->elements[i - 1];

                        fuzz_check(p->alt <= e->alt);
                        if (p->alt == e->alt)
                                fuzz_check((uint64_t) p->address + p->size <= e->address);
                }
                sum += e->size;
        }
        fuzz_check(sum == f->elements_size);
}

/* Parses data in format, whole and with short reads; returns what the whole parse did. */
static int run(const uint8_t *data, size_t size, enum gw_dfu_file_format format, size_t chunk)
{
        struct gw_dfu_file f, g;
        struct mem m = {.p = data, .n = size};
        struct gw_reader r = {.size = size, .ctx = &m, .pread = mem_pread};
        char why[160];
        int ret, ret2;

        memset(&f, 0xa5, sizeof(f));
        memset(why, 0, sizeof(why));
        ret = gw_dfu_file_parse(&r, format, &f, why, sizeof(why));
        if (ret == 0) {
                check_ok(data, size, format, &f);
        } else {
                fuzz_check(ret == -EBADMSG);
                fuzz_check(format != GW_DFU_FORMAT_RAW);
                fuzz_check(why[0] != '\0' && !memchr(why, '\n', sizeof(why)));
                for (size_t i = 0; i < sizeof(f); i++)
                        fuzz_check(((const uint8_t *) &f)[i] == 0xa5);
        }

        /* Short reads change nothing. */
        m.chunk = chunk;
        ret2 = gw_dfu_file_parse(&r, format, &g, NULL, 0);
        fuzz_check(ret2 == ret);
        if (ret == 0) {
                fuzz_check(g.has_suffix == f.has_suffix && g.dfuse == f.dfuse &&
                           g.payload_size == f.payload_size && g.n_elements == f.n_elements &&
                           g.elements_size == f.elements_size);
                for (size_t i = 0; i < f.n_elements; i++) {
                        const struct gw_dfu_element *x = &f.elements[i], *y = &g.elements[i];

                        fuzz_check(x->alt == y->alt && x->address == y->address &&
                                   x->size == y->size && x->offset == y->offset);
                }
                gw_dfu_file_done(&f);
                gw_dfu_file_done(&g);
                fuzz_check(!f.elements && f.n_elements == 0);
        }
        return ret;
}

/* What check_image is asked with: see the comment at the top. */
struct ctl {
        uint8_t c[4];
        const char *layout; /* the facts' layout when c3 & 7 == 7 */
};

#define CTL_MAGIC     "DFCK"
#define CTL_MAGIC_LEN 4u
#define CTL_LAYOUT_IN 7u

static const char *const fact_layouts[] = {
    "@Internal Flash  /0x08000000/8*1Ka,8*1Kg,4*2Kg",
    "@SRAM /0x20000000/16*1Ke",
    "@Internal Flash /0x08000000/04*016Kg,01*064Kg,07*128Kg",
    "@Option Bytes  /0x1FFFF800/01*016 e",
    "@Flash /0x08000000/512*2Kg",
    "@Ext /0x90000000/64*4Kg/0xA0000000/16*64Kg",
};

static void set(struct gw_options *o, const char *key, const char *value)
{
        fuzz_check(gw_options_set(o, key, value) == 0);
}

/* c0: bits 0-1 format (unset, auto, raw, dfu), 2-3 alt (none, number c2 & 3, a name, 999),
 * 4 address 0x08000000 + c2 * 2 KiB, 5-6 reset (unset, true, false, maybe), 7 format=bogus.
 * Returns whether init() must refuse them; *ret_format: the format they ask for. */
static bool make_options(const struct ctl *c, struct gw_options *o,
                         enum gw_dfu_file_format *ret_format, bool *ret_address)
{
        static const char *const formats[] = {NULL, "auto", "raw", "dfu"};
        static const char *const resets[] = {NULL, "true", "false", "maybe"};
        uint8_t c0 = c->c[0], c2 = c->c[2];
        char buf[32];
        bool bad = false;

        *ret_format = (enum gw_dfu_file_format[]){GW_DFU_FORMAT_AUTO, GW_DFU_FORMAT_AUTO,
                                                  GW_DFU_FORMAT_RAW, GW_DFU_FORMAT_DFU}[c0 & 3];
        if (formats[c0 & 3])
                set(o, "format", formats[c0 & 3]);
        switch ((c0 >> 2) & 3) {
        case 1:
                snprintf(buf, sizeof(buf), "%u", c2 & 3u);
                set(o, "alt", buf);
                break;
        case 2:
                set(o, "alt", c2 & 1 ? "@SRAM" : "Internal Flash");
                break;
        case 3:
                set(o, "alt", "999");
                bad = true;
                break;
        default:
                break;
        }
        *ret_address = c0 & 0x10;
        if (*ret_address) {
                snprintf(buf, sizeof(buf), "0x%08x", 0x08000000u + c2 * 2048u);
                set(o, "address", buf);
        }
        if (resets[(c0 >> 5) & 3])
                set(o, "reset", resets[(c0 >> 5) & 3]);
        if ((c0 >> 5 & 3) == 3)
                bad = true;
        if (c0 & 0x80) {
                set(o, "format", "bogus");
                bad = true;
        }
        return bad;
}

/* c1: bits 0-1 mode (no facts, dfu, runtime, "dfux"), 2-3 usb-id (the suffix's, 0483:df11,
 * 1234:5678, "0483-df11"), 4-5 dfu-version (1.1a, 1.10, 1.1, "zz"), 6-7 alt (the file's
 * first element's, c2 & 3, none, 256); c3 & 7 the layout: fact_layouts[], 6 none, 7 the
 * input's. NULL when there are no facts; *ret_dfu_mode: they say DFU mode. */
static struct gw_options *make_facts(const struct ctl *c, const struct gw_dfu_file *f, bool parsed,
                                     bool *ret_dfu_mode)
{
        static const char *const modes[] = {NULL, "dfu", "runtime", "dfux"};
        static const char *const versions[] = {"1.1a", "1.10", "1.1", "zz"};
        uint8_t c1 = c->c[1], c2 = c->c[2], c3 = c->c[3];
        struct gw_options *o;
        char buf[32];

        *ret_dfu_mode = (c1 & 3) == 1;
        if (!modes[c1 & 3])
                return NULL;
        o = gw_options_new();
        fuzz_check(o);
        set(o, "mode", modes[c1 & 3]);
        switch ((c1 >> 2) & 3) {
        case 0: {
                uint16_t vid = parsed && f->has_suffix ? f->suffix.vid : 0x0483;
                uint16_t pid = parsed && f->has_suffix ? f->suffix.pid : 0xdf11;

                snprintf(buf, sizeof(buf), "%04x:%04x", vid == GW_DFU_ID_ANY ? 0x0483u : vid,
                         pid == GW_DFU_ID_ANY ? 0xdf11u : pid);
                set(o, "usb-id", buf);
                break;
        }
        case 1:
                set(o, "usb-id", "0483:df11");
                break;
        case 2:
                set(o, "usb-id", "1234:5678");
                break;
        default:
                set(o, "usb-id", "0483-df11");
                break;
        }
        set(o, "dfu-version", versions[(c1 >> 4) & 3]);
        switch (c1 >> 6) {
        case 0:
                snprintf(buf, sizeof(buf), "%u",
                         parsed && f->n_elements > 0 ? f->elements[0].alt : 0u);
                set(o, "alt", buf);
                break;
        case 1:
                snprintf(buf, sizeof(buf), "%u", c2 & 3u);
                set(o, "alt", buf);
                break;
        case 2:
                break;
        default:
                set(o, "alt", "256");
                break;
        }
        if ((c3 & 7) == CTL_LAYOUT_IN)
                set(o, "layout", c->layout);
        else if ((c3 & 7) < sizeof(fact_layouts) / sizeof(fact_layouts[0]))
                set(o, "layout", fact_layouts[c3 & 7]);
        return o;
}

/* One call of gw_plugin_check_image(): 0 or -errno, a non-empty one-line reason on failure. */
static int check_image(const struct gw_options *opts, const struct gw_reader *r,
                       const struct gw_options *facts)
{
        static const struct gw_protocol_ops *dfu;
        char why[256];
        int ret;

        if (!dfu) {
                dfu = gw_protocol_find("dfu");
                fuzz_check(dfu && dfu->version >= 4 && dfu->check_image);
        }
        memset(why, 0x5a, sizeof(why));
        ret = gw_plugin_check_image(dfu, opts, r, facts, why, sizeof(why));
        fuzz_check(ret <= 0 && ret >= -4095);
        if (ret < 0) {
                size_t n = strnlen(why, sizeof(why));

                fuzz_check(n > 0 && n < sizeof(why));
                fuzz_check(!memchr(why, '\n', n));
        }
        /* GW_FUZZ_VERBOSE=1: what each check said, to see which paths the seeds reach. */
        if (getenv("GW_FUZZ_VERBOSE"))
                fprintf(stderr, "  check_image (%s facts): %d %s\n", facts ? "with" : "without",
                        ret, ret < 0 ? why : "");
        return ret;
}

/* What open_file() promises of a file without facts: the parse's failure, an empty image
 * refused, a DfuSe container with elements for one alt and no option address. */
static int expected_without_facts(const struct gw_reader *r, enum gw_dfu_file_format format,
                                  bool address)
{
        struct gw_dfu_file f;
        int ret;

        if (r->size == 0)
                return -EINVAL;
        ret = gw_dfu_file_parse(r, format, &f, NULL, 0);
        if (ret < 0)
                return ret;
        if (!f.dfuse)
                ret = f.payload_size == 0 ? -EINVAL : 0;
        else if (f.n_elements == 0 || address)
                ret = -EINVAL;
        else if (f.elements[0].alt != f.elements[f.n_elements - 1].alt)
                ret = -EOPNOTSUPP;
        gw_dfu_file_done(&f);
        return ret;
}

static void run_check(const uint8_t *data, size_t size, const struct ctl *c)
{
        struct mem m = {.p = data, .n = size};
        struct gw_reader r = {.size = size, .ctx = &m, .pread = mem_pread};
        struct gw_options *opts, *facts;
        enum gw_dfu_file_format format = GW_DFU_FORMAT_AUTO;
        struct gw_dfu_file f;
        bool bad, address = false, dfu_mode = false, parsed;
        int plain, with;

        opts = gw_options_new();
        fuzz_check(opts);
        bad = make_options(c, opts, &format, &address);
        parsed = gw_dfu_file_parse(&r, format, &f, NULL, 0) == 0;
        facts = make_facts(c, &f, parsed, &dfu_mode);
        if (parsed)
                gw_dfu_file_done(&f);

        plain = check_image(opts, &r, NULL);
        if (bad)
                fuzz_check(plain == -EINVAL);
        else
                fuzz_check(plain == expected_without_facts(&r, format, address));
        if (facts) {
                with = check_image(opts, &r, facts);
                /* The file is checked first; a board not in DFU mode decides nothing. */
                if (plain < 0 || !dfu_mode)
                        fuzz_check(with == plain);
                gw_options_free(facts);
        }
        gw_options_free(opts);
}

/* Both the file as it is and the copy with its CRC fixed. */
static void check_all(const uint8_t *data, size_t size, const uint8_t *fixed, const struct ctl *c)
{
        run_check(data, size, c);
        if (fixed)
                run_check(fixed, size, c);
}

static void run_all(const uint8_t *data, size_t size)
{
        size_t chunk = size % 7 + 1;
        int a, d;

        fuzz_check(run(data, size, GW_DFU_FORMAT_RAW, chunk) == 0);
        a = run(data, size, GW_DFU_FORMAT_AUTO, chunk);
        d = run(data, size, GW_DFU_FORMAT_DFU, chunk);
        /* DFU only refuses more than AUTO does. */
        if (a < 0)
                fuzz_check(d == a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char layout[256];
        struct ctl c = {.layout = layout};
        bool magic = size >= CTL_MAGIC_LEN + 4 && memcmp(data, CTL_MAGIC, CTL_MAGIC_LEN) == 0;
        uint8_t *copy = NULL;
        uint32_t crc;

        /* A file of more than 1 MiB adds nothing the small ones do not, but time. */
        if (size > 1024 * 1024)
                return 0;
        layout[0] = '\0';
        if (magic) {
                memcpy(c.c, data + CTL_MAGIC_LEN, 4);
                data += CTL_MAGIC_LEN + 4;
                size -= CTL_MAGIC_LEN + 4;
                if ((c.c[3] & 7) == CTL_LAYOUT_IN && size > 0) {
                        size_t n = data[0];

                        if (n > size - 1)
                                n = size - 1;
                        memcpy(layout, data + 1, n);
                        layout[n] = '\0';
                        data += n + 1;
                        size -= n + 1;
                }
        }
        run_all(data, size);

        if (size >= GW_DFU_SUFFIX_LEN) {
                copy = malloc(size);
                if (!copy)
                        return 0;
                memcpy(copy, data, size);
                crc = dfu_crc(copy, size - 4);

                copy[size - 4] = (uint8_t) crc;
                copy[size - 3] = (uint8_t) (crc >> 8);
                copy[size - 2] = (uint8_t) (crc >> 16);
                copy[size - 1] = (uint8_t) (crc >> 24);
                run_all(copy, size);
        }

        if (magic) {
                check_all(data, size, copy, &c);
        } else {
                /* No options; no facts, then a DFU mode board with the file's ids and alt,
                 * DfuSe (with the first table layout) and DFU 1.1. */
                check_all(data, size, copy, &c);
                c.c[1] = 0x01;
                check_all(data, size, copy, &c);
                c.c[1] = 0x11;
                check_all(data, size, copy, &c);
        }
        free(copy);
        return 0;
}
