/* Fuzz target for the DFU file parser (protocols/dfu/dfu-file.c): the bytes are the file,
 * parsed as it is and, so that mutations get past the CRC, again with its last 4 bytes
 * rewritten to the CRC a suffix needs; each both with whole and with short reads, in each
 * format. On success the promises of dfu-file.h are checked against the bytes (suffix fields
 * and CRC, elements sorted by (alt, address), not overlapping within an alt, inside 4 GiB and
 * the payload, headed by their address and size, summing to elements_size, at most
 * GW_DFUSE_FILE_ELEMENTS_MAX); on failure, that ret is untouched and the reason one line. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "gw/plugin.h"

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
                gw_dfu_file_free(&f);
                gw_dfu_file_free(&g);
                fuzz_check(!f.elements && f.n_elements == 0);
        }
        return ret;
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
        uint8_t *copy;

        /* A file of more than 1 MiB adds nothing the small ones do not, but time. */
        if (size > 1024 * 1024)
                return 0;
        run_all(data, size);

        if (size < GW_DFU_SUFFIX_LEN)
                return 0;
        copy = malloc(size);
        if (!copy)
                return 0;
        memcpy(copy, data, size);
        {
                uint32_t crc = dfu_crc(copy, size - 4);

                copy[size - 4] = (uint8_t) crc;
                copy[size - 3] = (uint8_t) (crc >> 8);
                copy[size - 2] = (uint8_t) (crc >> 16);
                copy[size - 1] = (uint8_t) (crc >> 24);
        }
        run_all(copy, size);
        free(copy);
        return 0;
}
