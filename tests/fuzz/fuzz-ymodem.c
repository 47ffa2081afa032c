/* Fuzz target for the YMODEM sender (protocols/ymodem/): the bytes script the receiver's side
 * of a transfer (replies, expired and early timers, a cancel, a failing link) against a small
 * in-memory image on a virtual clock. The host checks every frame the sender writes (framing,
 * CRC, block numbers, payload equal to the image at the acknowledged offset), that it reads
 * only inside the image, writes at most one frame per call, keeps a deadline armed while it
 * waits, and ends within a bounded number of timeouts once the receiver falls silent. */
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

#define SOH    0x01
#define STX    0x02
#define EOT    0x04
#define BS     0x08
#define CAN    0x18
#define CPMEOF 0x1a

#define FRAME_SMALL (128 + 5)
#define FRAME_LARGE (1024 + 5)
#define CANCEL_LEN  10 /* 5 CAN, 5 BS */
#define IMAGE_MAX   (20 * 1024)
#define NAME_LONG   300

/* The input: three bytes of set-up, then actions. */
enum {
        SETUP_SIZE_LO,
        SETUP_SIZE_HI,
        SETUP_MODES, /* bits 0-1 retries, 2-4 name mode, 5-6 reader mode */
        SETUP_LEN,
};

/* An action byte: the low 3 bits choose, the high 5 bits are its argument. */
enum action {
        ACT_DELIVER, /* 0-2: deliver the next arg + 1 input bytes */
        ACT_EXPIRE = 3,
        ACT_ADVANCE, /* the clock moves by arg * 250 ms; timeout() when the deadline is due */
        ACT_EARLY,   /* timeout() before the deadline: must change nothing */
        ACT_CANCEL,
        ACT_LINK_FAIL, /* the next write fails */
};

struct host {
        struct gw_proto_host h;
        uint64_t now, deadline;
        int write_error; /* returned by the next write, then cleared */
        unsigned op_writes;
        bool in_cancel;

        const uint8_t *image;
        uint64_t size;
        enum fuzz_read reader_mode;
        char expect_name[NAME_LONG + 1];

        /* What the sender has told so far. */
        uint64_t progress_done;
        unsigned progress_calls;
        bool eot_sent;
        bool error_set;
};

static uint8_t image[IMAGE_MAX];
/* The sender, from the core's table of built-in protocols. */
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

static bool all_equal(const uint8_t *p, size_t n, uint8_t c)
{
        for (size_t i = 0; i < n; i++)
                if (p[i] != c)
                        return false;
        return true;
}

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        char buf[512];

        /* Formatted (and so checked by the sanitizers), not printed. */
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
        /* Nothing is buffered: every action delivers its bytes at once. */
}

/* Block 0 naming the file: name NUL "size 0" (mtime unknown) NUL, zeros after. */
static void check_header(const struct host *h, const uint8_t *payload, size_t len)
{
        char expect[NAME_LONG + 32];
        int n;

        n = snprintf(expect, sizeof(expect), "%s%c%" PRIu64 " 0", h->expect_name, '\0', h->size);
        fuzz_check(n > 0 && (size_t) n + 1 <= len);
        fuzz_check(memcmp(payload, expect, (size_t) n + 1) == 0);
        fuzz_check(all_equal(payload + n + 1, len - (size_t) n - 1, 0));
        fuzz_check(len == ((size_t) n + 1 <= 128 ? 128 : 1024));
}

static void check_block(struct host *h, const uint8_t *f, size_t n)
{
        const uint8_t *payload = f + 3;
        size_t len = n - 5;
        uint64_t remaining;
        size_t want;

        fuzz_check(f[0] == (n == FRAME_SMALL ? SOH : STX));
        fuzz_check((uint8_t) (f[1] + f[2]) == 0xff);
        fuzz_check(crc16(payload, len) == (uint16_t) (f[n - 2] << 8 | f[n - 1]));
        if (h->progress_calls == 0) {
                /* Nothing acknowledged yet: only the header goes out. */
                fuzz_check(f[1] == 0);
                check_header(h, payload, len);
                return;
        }
        if (h->eot_sent) {
                /* The empty block 0 that ends the batch. */
                fuzz_check(f[1] == 0 && len == 128 && all_equal(payload, len, 0));
                return;
        }
        /* A data block: numbered after the acknowledged ones, carrying the image from the
         * acknowledged offset, padded with CPMEOF. */
        fuzz_check(h->progress_done < h->size);
        fuzz_check(f[1] == (uint8_t) h->progress_calls);
        remaining = h->size - h->progress_done;
        want = remaining < len ? (size_t) remaining : len;
        fuzz_check(memcmp(payload, h->image + h->progress_done, want) == 0);
        fuzz_check(all_equal(payload + want, len - want, CPMEOF));
}

static int host_write(void *ctx, const void *buf, size_t n)
{
        struct host *h = ctx;
        const uint8_t *f = buf;

        h->op_writes++;
        fuzz_check(h->op_writes == 1);
        if (h->write_error < 0) {
                int r = h->write_error;

                h->write_error = 0;
                return r;
        }
        if (h->in_cancel) {
                fuzz_check(n == CANCEL_LEN && all_equal(f, 5, CAN) && all_equal(f + 5, 5, BS));
                return 0;
        }
        if (n == 1) {
                /* EOT only once the whole image is acknowledged. */
                fuzz_check(f[0] == EOT);
                fuzz_check(h->progress_calls > 0 && h->progress_done == h->size);
                h->eot_sent = true;
                return 0;
        }
        fuzz_check(n == FRAME_SMALL || n == FRAME_LARGE);
        check_block(h, f, n);
        return 0;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct host *h = ctx;

        fuzz_check(total == h->size && done <= total);
        fuzz_check(done >= h->progress_done);
        fuzz_check(!h->eot_sent);
        h->progress_done = done;
        h->progress_calls++;
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

static ssize_t reader_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        return fuzz_read_image(h->image, h->size, h->reader_mode, buf, n, off);
}

/* Checks what an op returned; true when the transfer ended. */
static bool check_result(struct host *h, int r)
{
        if (r == GW_PROTO_CONTINUE) {
                fuzz_check(h->deadline > h->now);
                return false;
        }
        fuzz_check(h->deadline == 0);
        if (r == GW_PROTO_DONE) {
                fuzz_check(h->eot_sent && h->progress_done == h->size);
                return true;
        }
        fuzz_check(r == -ETIMEDOUT || r == -EIO || r == -ECANCELED || r == -EPROTONOSUPPORT ||
                   r == -ENAMETOOLONG || r == -EPIPE);
        fuzz_check(h->error_set);
        return true;
}

static int call_timeout(struct host *h, void *priv)
{
        h->op_writes = 0;
        return ops->timeout(priv);
}

/* Sets the name the reader offers and, in mode 3, the filename option; fills expect_name. */
static int set_names(struct host *h, unsigned mode, struct gw_options *opts, struct gw_reader *rd,
                     char *long_name)
{
        size_t len = 0;

        switch (mode) {
        case 0:
                rd->name = "images/motor-ctrl-1.4.2.bin";
                break;
        case 1:
                len = 200;
                break;
        case 2:
                len = NAME_LONG;
                break;
        case 3:
                rd->name = "dir/ignored.bin";
                if (gw_options_set(opts, "filename", "fw.bin") < 0)
                        return -ENOMEM;
                break;
        case 4:
                rd->name = NULL;
                break;
        case 5:
                rd->name = "dir/";
                break;
        case 6:
                len = 255;
                break;
        default:
                len = 256;
                break;
        }
        if (len > 0) {
                memset(long_name, 'n', len);
                long_name[len] = '\0';
                rd->name = long_name;
        }
        if (mode == 3)
                strcpy(h->expect_name, "fw.bin");
        else if (!rd->name || strcmp(rd->name, "dir/") == 0)
                strcpy(h->expect_name, "image");
        else
                snprintf(h->expect_name, sizeof(h->expect_name), "%s",
                         strrchr(rd->name, '/') ? strrchr(rd->name, '/') + 1 : rd->name);
        return 0;
}

/* Once ended, the sender ignores further input and timers. */
static void check_ended(struct host *h, void *priv, int last, const uint8_t *data, size_t size)
{
        h->op_writes = 0;
        fuzz_check(ops->input(priv, data, size) == last);
        fuzz_check(call_timeout(h, priv) == last);
        fuzz_check(h->op_writes == 0);
}

static void run(struct host *h, void *priv, uint64_t retries, const uint8_t *data, size_t size)
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
                        h->now += (uint64_t) arg * 250;
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
                        h->in_cancel = true;
                        r = ops->cancel(priv);
                        h->in_cancel = false;
                        fuzz_check(r == -ECANCELED && h->op_writes == 1);
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
                if (check_result(h, r)) {
                        check_ended(h, priv, r, data + i, size - i);
                        return;
                }
        }
        /* The receiver fell silent: the sender gives up (or finishes) after a bounded number
         * of timeouts: at most retries + 1 in one state, then the end of the batch. */
        for (uint64_t n = 0; n < retries + 4; n++) {
                h->now = h->deadline;
                r = call_timeout(h, priv);
                if (check_result(h, r)) {
                        check_ended(h, priv, r, data, size);
                        return;
                }
        }
        fuzz_check(!"the sender did not end after the receiver fell silent");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static char long_name[NAME_LONG + 1];
        struct gw_options *opts;
        struct gw_reader rd = {0};
        struct host h = {0};
        uint64_t retries;
        char retries_s[8];
        uint8_t *priv;
        int r;

        if (size < SETUP_LEN)
                return 0;
        if (!ops) {
                ops = gw_protocol_find("ymodem");
                fuzz_check(ops && ops->shape == GW_LINK_STREAM);
                for (size_t i = 0; i < sizeof(image); i++)
                        image[i] = (uint8_t) (i * 167 + (i >> 8));
        }

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
        };
        h.now = 1000;
        h.image = image;
        h.size = (data[SETUP_SIZE_LO] | (uint64_t) data[SETUP_SIZE_HI] << 8) % (IMAGE_MAX + 1);
        h.reader_mode = (enum fuzz_read)((data[SETUP_MODES] >> 5) & 3);
        retries = data[SETUP_MODES] & 3;

        opts = gw_options_new();
        fuzz_check(opts);
        snprintf(retries_s, sizeof(retries_s), "%" PRIu64, retries);
        fuzz_check(gw_options_set(opts, "retries", retries_s) == 0);
        fuzz_check(set_names(&h, (data[SETUP_MODES] >> 2) & 7, opts, &rd, long_name) == 0);
        rd.size = h.size;
        rd.ctx = &h;
        rd.pread = reader_pread;

        priv = calloc(1, ops->priv_size);
        fuzz_check(priv);
        fuzz_check(ops->init(priv, opts, &h.h) == 0);
        r = ops->install(priv, &rd);
        fuzz_check(r == GW_PROTO_CONTINUE && h.op_writes == 0);
        fuzz_check(!check_result(&h, r));
        run(&h, priv, retries, data + SETUP_LEN, size - SETUP_LEN);

        ops->done(priv);
        free(priv);
        gw_options_free(opts);
        return 0;
}
