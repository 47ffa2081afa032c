/* Fuzz target for the stm32 protocol (protocols/stm32/): the bytes script the device's side of
 * an install (replies to 0x7F, GET, GET_ID, the reads and writes, expired and early timers, a
 * cancel, a failing link) against a small in-memory image on a virtual clock. The host parses
 * every phase the instance writes and checks it: commands with their complements, addresses
 * with their checksums, inside the image, data phases carrying exactly the image (0xFF padding
 * after it) only after an erase, erase lists well formed, a mass erase only when asked for, GO
 * to the start; reads of the image inside it; a deadline while it goes on; an end within a
 * bounded number of timeouts once the device falls silent; DONE only with the whole image
 * sent. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "fuzz.h"

#define IMAGE_MAX  (8 * 1024)
#define FLASH_BASE 0x08000000u
#define TX_MAX     1100 /* the longest phase: an extended erase of 512 pages */

/* The input: four bytes of set-up, then actions. */
enum {
        SETUP_SIZE_LO,
        SETUP_SIZE_HI,
        SETUP_MODES, /* bits 0-1 retries, 2 verify, 3 go, 4 mass-erase, 5-6 reader, 7 entry */
        SETUP_PLACE, /* bits 0-3 KiB past the base, 4 lines fail, 5 exit sequence */
        SETUP_LEN,
};

/* An action byte: the low 3 bits choose, the high 5 bits are its argument. */
enum action {
        ACT_DELIVER, /* 0-2: deliver the next arg + 1 input bytes */
        ACT_EXPIRE = 3,
        ACT_ADVANCE, /* the clock moves by arg * 50 ms; timeout() when the deadline is due */
        ACT_EARLY,   /* timeout() before the deadline: must change nothing */
        ACT_CANCEL,
        ACT_LINK_FAIL, /* the next write fails */
};

/* What the next write must be, after a command. */
enum expect {
        EXPECT_ANY,
        EXPECT_ADDR,      /* READ, GO, WRITE: 4 bytes and their XOR */
        EXPECT_READ_LEN,  /* N, ~N */
        EXPECT_DATA,      /* WRITE: N, N + 1 bytes, XOR */
        EXPECT_ERASE,     /* ERASE: N, N + 1 pages, XOR; or FF 00 */
        EXPECT_EXT_ERASE, /* EXTENDED_ERASE: N (2), N + 1 pages (2 each), XOR; or FF FF 00 */
};

struct host {
        struct gw_proto_host h;
        uint64_t now, deadline;
        int write_error;
        unsigned op_writes;
        bool lines_fail;

        const uint8_t *image;
        uint64_t size;
        uint32_t start;
        bool mass_allowed;
        enum fuzz_read reader_mode;

        /* The phases written so far. */
        uint8_t cmd;
        enum expect expect;
        uint32_t addr;
        bool erased; /* an erase command went out */
        bool go_sent;
        uint8_t covered[IMAGE_MAX / 8 + 1]; /* image bytes sent in a data phase */

        uint64_t progress_done;
        bool error_set;
};

static uint8_t image[IMAGE_MAX];
static const struct gw_protocol_ops *ops;

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
}

static uint64_t host_now_ms(void *ctx)
{
        struct host *h = ctx;

        return h->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct host *h = ctx;

        h->deadline = at_ms;
}

static void host_flush_input(void *ctx)
{
}

static uint8_t xor_of(const uint8_t *p, size_t n)
{
        uint8_t x = 0;

        for (size_t i = 0; i < n; i++)
                x ^= p[i];
        return x;
}

static bool all_equal(const uint8_t *p, size_t n)
{
        for (size_t i = 1; i < n; i++)
                if (p[i] != p[0])
                        return false;
        return true;
}

static bool is_filler(const uint8_t *p, size_t n)
{
        /* 1, 2, 4 ... 64 equal bytes, even and non-zero (0x7F alone is a sync). */
        return (n & (n - 1)) == 0 && n <= 64 && all_equal(p, n) &&
               (n == 1 && p[0] == 0x7f ? true : (p[0] % 2 == 0 && p[0] != 0));
}

static void check_data(struct host *h, const uint8_t *p, size_t n)
{
        size_t len = (size_t) p[0] + 1;
        uint64_t off;

        fuzz_check(n == len + 2);
        fuzz_check(len % 4 == 0);
        fuzz_check(xor_of(p, len + 1) == p[len + 1]);
        fuzz_check(h->erased);
        off = h->addr - h->start;
        for (size_t i = 0; i < len; i++) {
                if (off + i < h->size) {
                        fuzz_check(p[1 + i] == h->image[off + i]);
                        h->covered[(off + i) / 8] |= (uint8_t) (1u << ((off + i) % 8));
                } else {
                        /* padding: only to the write granularity (32 at most) */
                        fuzz_check(p[1 + i] == 0xff && off + i < h->size + 32);
                }
        }
}

static void check_erase(struct host *h, const uint8_t *p, size_t n, bool wide)
{
        if (wide && n == 3 && p[0] == 0xff && p[1] == 0xff) {
                fuzz_check(p[2] == 0x00 && h->mass_allowed);
        } else if (!wide && n == 2 && p[0] == 0xff) {
                fuzz_check(p[1] == 0x00 && h->mass_allowed);
        } else {
                size_t count = wide ? (size_t) (p[0] << 8 | p[1]) + 1 : (size_t) p[0] + 1;
                size_t head = wide ? 2 : 1, w = wide ? 2 : 1;

                fuzz_check(!h->mass_allowed);
                fuzz_check(n == head + count * w + 1);
                fuzz_check(count <= (wide ? 512u : 255u));
                fuzz_check(xor_of(p, n - 1) == p[n - 1]);
                for (size_t i = 0; i < count; i++) {
                        unsigned num = wide
                                           ? (unsigned) (p[head + 2 * i] << 8 | p[head + 2 * i + 1])
                                           : p[head + i];

                        fuzz_check(num < 0xfff0);
                        if (i > 0) {
                                unsigned prev = wide ? (unsigned) (p[head + 2 * i - 2] << 8 |
                                                                   p[head + 2 * i - 1])
                                                     : p[head + i - 1];

                                fuzz_check(num > prev); /* in order, no page twice */
                        }
                }
        }
        h->erased = true;
}

static int host_write(void *ctx, const void *buf, size_t n)
{
        struct host *h = ctx;
        const uint8_t *p = buf;

        h->op_writes++;
        fuzz_check(n >= 1 && n <= TX_MAX);
        if (h->write_error < 0) {
                int r = h->write_error;

                h->write_error = 0;
                return r;
        }
        /* Each write is one phase (or a burst of fillers). A retry starts again from the command
         * pair whatever phase was expected next, and a READ's length looks like a command pair,
         * so shapes decide where they can and the expectation only where they cannot. */
        if (n == 2 && (uint8_t) (p[0] ^ p[1]) == 0xff) {
                static const uint8_t known[] = {0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x44};

                /* A length that is also a command code counts as the command: if it was the
                 * length, a command pair comes next anyway. */
                if (h->expect == EXPECT_READ_LEN && !memchr(known, p[0], sizeof(known))) {
                        h->expect = EXPECT_ANY;
                        return 0;
                }
                if (h->expect == EXPECT_ERASE && p[0] == 0xff) {
                        check_erase(h, p, n, false);
                        h->expect = EXPECT_ANY;
                        return 0;
                }
                fuzz_check(memchr(known, p[0], sizeof(known)) != NULL);
                h->cmd = p[0];
                h->expect = p[0] == 0x11 || p[0] == 0x21 || p[0] == 0x31 ? EXPECT_ADDR
                            : p[0] == 0x43                               ? EXPECT_ERASE
                            : p[0] == 0x44                               ? EXPECT_EXT_ERASE
                                                                         : EXPECT_ANY;
                return 0;
        }
        /* An address: expected, or again after a READ whose length phase was a retried
         * command pair in fact. */
        if (n == 5 &&
            (h->expect == EXPECT_ADDR || (h->expect == EXPECT_ANY && xor_of(p, 4) == p[4] &&
                                          (h->cmd == 0x11 || h->cmd == 0x21 || h->cmd == 0x31)))) {
                fuzz_check(xor_of(p, 4) == p[4]);
                h->addr =
                    (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
                if (h->cmd == 0x31) {
                        fuzz_check(h->addr % 4 == 0);
                        fuzz_check(h->addr >= h->start && h->addr < h->start + h->size);
                        h->expect = EXPECT_DATA;
                } else if (h->cmd == 0x21) {
                        fuzz_check(h->addr == h->start);
                        for (uint64_t i = 0; i < h->size; i++)
                                fuzz_check(h->covered[i / 8] & (1u << (i % 8)));
                        h->go_sent = true;
                        h->expect = EXPECT_ANY;
                } else {
                        h->expect = EXPECT_READ_LEN;
                }
                return 0;
        }
        if (h->expect == EXPECT_DATA && n >= 6 && n % 4 == 2) {
                check_data(h, p, n);
                h->expect = EXPECT_ANY;
                return 0;
        }
        if ((h->expect == EXPECT_ERASE || h->expect == EXPECT_EXT_ERASE) && !is_filler(p, n)) {
                check_erase(h, p, n, h->expect == EXPECT_EXT_ERASE);
                h->expect = EXPECT_ANY;
                return 0;
        }
        /* A 0x7F, or fillers that end a stalled command. */
        h->expect = EXPECT_ANY;
        fuzz_check(is_filler(p, n));
        return 0;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct host *h = ctx;

        fuzz_check(total == h->size && done <= total);
        h->progress_done = done;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        struct host *h = ctx;
        char buf[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        h->error_set = true;
}

static int host_set_lines(void *ctx, unsigned mask, unsigned values)
{
        struct host *h = ctx;

        fuzz_check((mask & ~(GW_LINE_DTR | GW_LINE_RTS)) == 0);
        return h->lines_fail ? -ENOTTY : 0;
}

static ssize_t reader_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        return fuzz_read_image(h->image, h->size, h->reader_mode, buf, n, off);
}

/* Checks what an op returned; true when the operation ended. */
static bool check_result(struct host *h, int r)
{
        if (r == GW_PROTO_CONTINUE) {
                fuzz_check(h->deadline > h->now);
                return false;
        }
        fuzz_check(h->deadline == 0);
        if (r == GW_PROTO_DONE) {
                for (uint64_t i = 0; i < h->size; i++)
                        fuzz_check(h->covered[i / 8] & (1u << (i % 8)));
                return true;
        }
        fuzz_check(r == -ETIMEDOUT || r == -EIO || r == -ECANCELED || r == -EACCES ||
                   r == -ENODEV || r == -EFBIG || r == -ERANGE || r == -EINVAL ||
                   r == -EOPNOTSUPP || r == -EPIPE || r == -ENOTTY);
        fuzz_check(h->error_set);
        return true;
}

static int call_timeout(struct host *h, void *priv)
{
        h->op_writes = 0;
        return ops->timeout(priv);
}

static void check_ended(struct host *h, void *priv, int last, const uint8_t *data, size_t size)
{
        h->op_writes = 0;
        fuzz_check(ops->input(priv, data, size) == last);
        fuzz_check(call_timeout(h, priv) == last);
        fuzz_check(h->op_writes == 0);
}

static void run(struct host *h, void *priv, const uint8_t *data, size_t size)
{
        size_t i = 0;
        int r = GW_PROTO_CONTINUE;

        while (i < size) {
                uint8_t b = data[i++];
                unsigned arg = b >> 3;

                h->op_writes = 0;
                switch (b & 7) {
                case ACT_EXPIRE:
                        h->now = h->deadline;
                        r = call_timeout(h, priv);
                        break;
                case ACT_ADVANCE:
                        h->now += (uint64_t) arg * 50;
                        if (h->now >= h->deadline)
                                r = call_timeout(h, priv);
                        break;
                case ACT_EARLY: {
                        uint64_t deadline = h->deadline;

                        r = call_timeout(h, priv);
                        fuzz_check(r == GW_PROTO_CONTINUE && h->op_writes == 0);
                        fuzz_check(h->deadline == deadline);
                        break;
                }
                case ACT_CANCEL:
                        r = ops->cancel(priv);
                        fuzz_check(r == -ECANCELED && h->op_writes == 0);
                        break;
                case ACT_LINK_FAIL:
                        h->write_error = -EPIPE;
                        continue;
                default: {
                        size_t n = arg + 1u;

                        if (n > size - i)
                                n = size - i;
                        r = ops->input(priv, data + i, n);
                        i += n;
                        break;
                }
                }
                /* One phase (or one burst of fillers) per call at most. */
                fuzz_check(h->op_writes <= 1);
                if (check_result(h, r)) {
                        check_ended(h, priv, r, data + i, size - i);
                        return;
                }
        }
        /* The device fell silent: every wait ends, whatever state it is in. The longest chain:
         * retries x (resync fillers up to 4096 bytes in growing bursts), each step a timeout. */
        for (unsigned n = 0; n < 20000; n++) {
                h->now = h->deadline;
                r = call_timeout(h, priv);
                if (check_result(h, r)) {
                        check_ended(h, priv, r, data, size);
                        return;
                }
        }
        fuzz_check(!"the instance did not end after the device fell silent");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gw_options *opts;
        struct gw_reader rd = {0};
        struct host h = {0};
        uint8_t modes, place;
        char buf[32];
        uint8_t *priv;
        int r;

        if (size < SETUP_LEN)
                return 0;
        if (!ops) {
                ops = gw_protocol_find("stm32");
                fuzz_check(ops && ops->shape == GW_LINK_STREAM);
                for (size_t i = 0; i < sizeof(image); i++)
                        image[i] = (uint8_t) (i * 167 + (i >> 8));
        }
        modes = data[SETUP_MODES];
        place = data[SETUP_PLACE];

        h.h = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &h,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .write = host_write,
            .flush_input = host_flush_input,
            .progress = host_progress,
            .set_error = host_set_error,
            .set_lines = host_set_lines,
        };
        h.now = 1000;
        h.image = image;
        h.size = (data[SETUP_SIZE_LO] | (uint64_t) data[SETUP_SIZE_HI] << 8) % (IMAGE_MAX + 1);
        h.reader_mode = (enum fuzz_read)((modes >> 5) & 3);
        h.mass_allowed = modes & 0x10;
        h.start = FLASH_BASE + (place & 0x0f) * 1024u;
        h.lines_fail = place & 0x10;

        opts = gw_options_new();
        fuzz_check(opts);
        snprintf(buf, sizeof(buf), "%u", modes & 3);
        fuzz_check(gw_options_set(opts, "retries", buf) == 0);
        fuzz_check(gw_options_set(opts, "verify", modes & 0x04 ? "true" : "false") == 0);
        fuzz_check(gw_options_set(opts, "go", modes & 0x08 ? "true" : "false") == 0);
        fuzz_check(gw_options_set(opts, "mass-erase", h.mass_allowed ? "true" : "false") == 0);
        snprintf(buf, sizeof(buf), "0x%08x", h.start);
        fuzz_check(gw_options_set(opts, "address", buf) == 0);
        /* Short waits keep the silent tail short in virtual time; the counts are what matter. */
        fuzz_check(gw_options_set(opts, "init-timeout-ms", "600") == 0);
        fuzz_check(gw_options_set(opts, "erase-batch", "16") == 0);
        if (modes & 0x80)
                fuzz_check(gw_options_set(opts, "entry", "rts=1,dtr=1,wait=10,dtr=0,wait=20") == 0);
        if (place & 0x20)
                fuzz_check(gw_options_set(opts, "exit", "rts=0,wait=5,rts=1") == 0);
        rd.size = h.size;
        rd.name = "fw.bin";
        rd.ctx = &h;
        rd.pread = reader_pread;

        priv = calloc(1, ops->priv_size);
        fuzz_check(priv);
        fuzz_check(ops->init(priv, opts, &h.h) == 0);
        r = ops->install(priv, &rd);
        fuzz_check(h.op_writes <= 1);
        if (!check_result(&h, r))
                run(&h, priv, data + SETUP_LEN, size - SETUP_LEN);
        else
                fuzz_check(r == -EINVAL || r == -ENOTTY); /* an empty image, no lines */

        ops->done(priv);
        free(priv);
        gw_options_free(opts);
        return 0;
}
