/* The ymodem protocol plugin: a YMODEM-1K batch sender (one file, CRC-16 only) written as a
 * state machine fed by received bytes and timer expiries. It never reads the link, never
 * sleeps; every byte it sends goes through host->write(). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "gw/plugin.h"

#include "crc16.h"
#include "debug.h"
#include "read.h"

#define SOH    0x01 /* a 128-byte block follows */
#define STX    0x02 /* a 1024-byte block follows */
#define EOT    0x04
#define ACK    0x06
#define BS     0x08
#define NAK    0x15
#define CAN    0x18
#define CPMEOF 0x1a /* pads the last data block */
#define WANT_C 'C'  /* the receiver asks for a block with CRC-16 */

#define BLOCK_SMALL    128
#define BLOCK_LARGE    1024
#define FRAME_OVERHEAD 5 /* SOH/STX, number, complement, CRC high, CRC low */
#define FRAME_MAX      (BLOCK_LARGE + FRAME_OVERHEAD)
/* Longest file name sent in block 0 (NAME_MAX); with the size it always fits 1024 bytes. */
#define NAME_MAX_LEN 255
/* How many CAN bytes cancel() sends; as many backspaces follow, which erase them when the
 * other end turns out to be a terminal rather than a receiver. */
#define CANCEL_CANS 5

#define DEFAULT_RETRIES              10
#define DEFAULT_ACK_TIMEOUT_MS       10000
#define DEFAULT_START_TIMEOUT_MS     60000
#define DEFAULT_FINAL_ACK_TIMEOUT_MS 2000

enum ymodem_state {
        YMODEM_IDLE,            /* init() done, no install() yet */
        YMODEM_WAIT_START,      /* waiting for the receiver's first 'C' */
        YMODEM_WAIT_HEADER_ACK, /* block 0 (name, size) sent */
        YMODEM_WAIT_DATA_START, /* block 0 acknowledged, waiting for 'C' before the data */
        YMODEM_WAIT_DATA_ACK,   /* a data block sent */
        YMODEM_WAIT_EOT_ACK,    /* EOT sent */
        YMODEM_WAIT_END_START,  /* EOT acknowledged, waiting for 'C' asking for the next file */
        YMODEM_WAIT_END_ACK,    /* the empty block 0 that ends the batch sent */
        YMODEM_DONE,
        YMODEM_FAILED,
        _YMODEM_STATE_MAX,
};

struct ymodem {
        const struct gw_proto_host *host;
        uint64_t retries_max;
        uint64_t ack_timeout_ms;
        uint64_t start_timeout_ms;
        uint64_t final_ack_timeout_ms;
        char filename[NAME_MAX_LEN + 1]; /* option "filename"; empty = the reader's name */

        const struct gw_reader *reader;
        enum ymodem_state state;
        int error;          /* what every op returns once FAILED */
        uint64_t deadline;  /* the armed deadline, 0 = none */
        uint64_t retries;   /* resends of the current frame */
        unsigned cans;      /* consecutive CAN bytes received */
        bool nak_at_start;  /* the receiver asked for checksum mode, which we do not speak */
        uint64_t offset;    /* image bytes the receiver acknowledged */
        uint8_t seq;        /* number of the data block in frame */
        size_t payload_len; /* image bytes carried by the data block in frame */
        size_t frame_len;
        uint8_t frame[FRAME_MAX];
};

static const char *const state_names[_YMODEM_STATE_MAX] = {
    [YMODEM_IDLE] = "idle",
    [YMODEM_WAIT_START] = "wait-start",
    [YMODEM_WAIT_HEADER_ACK] = "wait-header-ack",
    [YMODEM_WAIT_DATA_START] = "wait-data-start",
    [YMODEM_WAIT_DATA_ACK] = "wait-data-ack",
    [YMODEM_WAIT_EOT_ACK] = "wait-eot-ack",
    [YMODEM_WAIT_END_START] = "wait-end-start",
    [YMODEM_WAIT_END_ACK] = "wait-end-ack",
    [YMODEM_DONE] = "done",
    [YMODEM_FAILED] = "failed",
};

static const char *ymodem_state_to_string(enum ymodem_state s)
{
        if ((unsigned) s >= _YMODEM_STATE_MAX)
                return NULL;
        return state_names[s];
}

static void set_state(struct ymodem *y, enum ymodem_state s)
{
        if (y->state == s)
                return;
        gw_proto_debug(y->host, "ymodem: %s -> %s", ymodem_state_to_string(y->state),
                       ymodem_state_to_string(s));
        y->state = s;
}

static void arm(struct ymodem *y, uint64_t ms)
{
        y->deadline = y->host->now_ms(y->host->ctx) + ms;
        y->host->set_deadline(y->host->ctx, y->deadline);
}

static void disarm(struct ymodem *y)
{
        y->deadline = 0;
        y->host->set_deadline(y->host->ctx, 0);
}

/* Enters FAILED with err, whose reason the core reports; returns err. */
static int fail(struct ymodem *y, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct ymodem *y, int err, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(y->host, "ymodem: %s", msg);
        if (y->host->set_error)
                y->host->set_error(y->host->ctx, "%s", msg);
        y->error = err;
        set_state(y, YMODEM_FAILED);
        disarm(y);
        return err;
}

/* How long the current state waits for the receiver. */
static uint64_t state_timeout(const struct ymodem *y)
{
        switch (y->state) {
        case YMODEM_WAIT_START:
                return y->start_timeout_ms;
        case YMODEM_WAIT_END_ACK:
                return y->final_ack_timeout_ms;
        default:
                return y->ack_timeout_ms;
        }
}

/* Queues the frame and arms the state's timeout. Bytes that arrived before the frame went
 * out cannot answer it, so they are dropped: this is what keeps a late duplicate ACK from
 * acknowledging a block the receiver has not seen. */
static int send_frame(struct ymodem *y)
{
        int r;

        if (y->host->flush_input)
                y->host->flush_input(y->host->ctx);
        r = y->host->write(y->host->ctx, y->frame, y->frame_len);
        if (r < 0)
                return fail(y, r, "writing to the link failed: %s", strerror(-r));
        arm(y, state_timeout(y));
        return 0;
}

static void seal_block(struct ymodem *y, uint8_t seq, size_t len)
{
        uint16_t crc = gw_crc16_xmodem(0, y->frame + 3, len);

        y->frame[0] = len == BLOCK_LARGE ? STX : SOH;
        y->frame[1] = seq;
        y->frame[2] = (uint8_t) ~seq;
        y->frame[3 + len] = (uint8_t) (crc >> 8);
        y->frame[4 + len] = (uint8_t) crc;
        y->frame_len = len + FRAME_OVERHEAD;
}

/* The name block 0 carries: the option, else the last component of the reader's name. */
static const char *file_name(const struct ymodem *y)
{
        const char *name, *slash;

        if (y->filename[0])
                return y->filename;
        name = y->reader->name;
        if (!name)
                return "image";
        slash = strrchr(name, '/');
        if (slash)
                name = slash + 1;
        return *name ? name : "image";
}

/* Block 0: "name" NUL "size" NUL..., or all NUL for the end of the batch. A 1024-byte block
 * only when the header does not fit 128 bytes. */
static int build_header(struct ymodem *y, bool end_of_batch)
{
        size_t len = 0, block = BLOCK_SMALL;

        memset(y->frame, 0, sizeof(y->frame));
        if (!end_of_batch) {
                const char *name = file_name(y);
                size_t name_len = strlen(name);
                int n;

                if (name_len > NAME_MAX_LEN)
                        return fail(y, -ENAMETOOLONG, "file name longer than %d bytes",
                                    NAME_MAX_LEN);
                memcpy(y->frame + 3, name, name_len);
                len = name_len + 1;
                /* Size, then a modification time of 0 ("unknown"): without one, lrzsz's rb
                 * stamps the file with whatever its parser left in the field. Fits:
                 * NAME_MAX_LEN + 1 + 20 digits + 2 + NUL < BLOCK_LARGE. */
                n = snprintf((char *) y->frame + 3 + len, BLOCK_LARGE - len, "%" PRIu64 " 0",
                             y->reader->size);
                if (n < 0)
                        return fail(y, -EINVAL, "cannot format the image size");
                len += (size_t) n + 1;
                if (len > BLOCK_SMALL)
                        block = BLOCK_LARGE;
        }
        seal_block(y, 0, block);
        return 0;
}

/* The data block size for the bytes left: 1024 while a whole 1K block remains, then
 * whichever of one 1K block or as many 128-byte blocks as needed costs fewer bytes on the
 * wire, counting each block's ACK. */
static size_t block_len_for(uint64_t remaining)
{
        uint64_t small_blocks, cost_small, cost_large;

        if (remaining >= BLOCK_LARGE)
                return BLOCK_LARGE;
        small_blocks = (remaining + BLOCK_SMALL - 1) / BLOCK_SMALL;
        cost_small = small_blocks * (BLOCK_SMALL + FRAME_OVERHEAD + 1);
        cost_large = BLOCK_LARGE + FRAME_OVERHEAD + 1;
        return cost_small < cost_large ? BLOCK_SMALL : BLOCK_LARGE;
}

/* Reads the next data block from the image at offset and frames it as block seq. */
static int build_data(struct ymodem *y)
{
        uint64_t remaining = y->reader->size - y->offset;
        size_t block = block_len_for(remaining);
        size_t want = remaining < block ? (size_t) remaining : block;
        char why[128];
        int r;

        r = gw_reader_read_exact(y->reader, y->frame + 3, want, y->offset, why, sizeof(why));
        if (r < 0)
                return fail(y, r, "%s", why);
        memset(y->frame + 3 + want, CPMEOF, block - want);
        y->payload_len = want;
        seal_block(y, y->seq, block);
        return 0;
}

static int send_eot(struct ymodem *y)
{
        y->frame[0] = EOT;
        y->frame_len = 1;
        y->retries = 0;
        set_state(y, YMODEM_WAIT_EOT_ACK);
        return send_frame(y);
}

/* Sends the next data block, or EOT after the last one. */
static int send_next(struct ymodem *y)
{
        int r;

        if (y->offset >= y->reader->size)
                return send_eot(y);
        r = build_data(y);
        if (r < 0)
                return r;
        y->retries = 0;
        set_state(y, YMODEM_WAIT_DATA_ACK);
        return send_frame(y);
}

/* The receiver rejected the frame (timed_out = false) or did not answer in time: resend it
 * while retries last. */
static int resend(struct ymodem *y, bool timed_out)
{
        if (y->retries >= y->retries_max)
                return fail(y, timed_out ? -ETIMEDOUT : -EIO,
                            "%s: no acknowledgement after %" PRIu64 " retries (last: %s)",
                            ymodem_state_to_string(y->state), y->retries,
                            timed_out ? "timeout" : "rejected");
        y->retries++;
        gw_proto_debug(y->host, "ymodem: %s: resending (%s, retry %" PRIu64 "/%" PRIu64 ")",
                       ymodem_state_to_string(y->state), timed_out ? "timeout" : "rejected",
                       y->retries, y->retries_max);
        return send_frame(y);
}

/* Waiting for a 'C' that did not come: keep waiting (the receiver repeats it) while retries
 * last. */
static int wait_again(struct ymodem *y)
{
        if (y->retries >= y->retries_max)
                return fail(y, -ETIMEDOUT, "%s: the receiver did not ask for more",
                            ymodem_state_to_string(y->state));
        y->retries++;
        arm(y, state_timeout(y));
        return 0;
}

static void report_progress(struct ymodem *y)
{
        if (y->host->progress)
                y->host->progress(y->host->ctx, y->offset, y->reader->size);
}

static int succeed(struct ymodem *y)
{
        set_state(y, YMODEM_DONE);
        disarm(y);
        return GW_PROTO_DONE;
}

/* Handles one received byte. Returns < 0 on failure, 1 when it sent a frame (the rest of the
 * input predates that frame and is dropped), 0 otherwise. */
static int handle_byte(struct ymodem *y, uint8_t c)
{
        int r;

        switch (y->state) {
        case YMODEM_WAIT_START:
                if (c == NAK) {
                        y->nak_at_start = true;
                        return 0;
                }
                if (c != WANT_C)
                        return 0;
                r = build_header(y, false);
                if (r < 0)
                        return r;
                y->retries = 0;
                set_state(y, YMODEM_WAIT_HEADER_ACK);
                r = send_frame(y);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_HEADER_ACK:
                if (c == ACK) {
                        y->retries = 0;
                        set_state(y, YMODEM_WAIT_DATA_START);
                        arm(y, state_timeout(y));
                        report_progress(y);
                        return 0;
                }
                /* lrzsz rb flushes its input right after each 'C': another 'C' means block 0
                 * was lost. */
                if (c != NAK && c != WANT_C)
                        return 0;
                r = resend(y, false);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_DATA_START:
                if (c != WANT_C)
                        return 0;
                y->seq = 1;
                r = send_next(y);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_DATA_ACK:
                if (c == ACK) {
                        y->offset += y->payload_len;
                        y->seq++;
                        report_progress(y);
                        r = send_next(y);
                        return r < 0 ? r : 1;
                }
                /* A 'C' while block 1 is out: the receiver flushed it (see above). */
                if (c != NAK && !(c == WANT_C && y->seq == 1))
                        return 0;
                r = resend(y, false);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_EOT_ACK:
                if (c == ACK) {
                        y->retries = 0;
                        set_state(y, YMODEM_WAIT_END_START);
                        arm(y, state_timeout(y));
                        return 0;
                }
                /* Classic receivers NAK the first EOT to make sure it was no line noise. */
                if (c != NAK)
                        return 0;
                r = resend(y, false);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_END_START:
                if (c != WANT_C)
                        return 0;
                r = build_header(y, true);
                if (r < 0)
                        return r;
                y->retries = 0;
                set_state(y, YMODEM_WAIT_END_ACK);
                r = send_frame(y);
                return r < 0 ? r : 1;

        case YMODEM_WAIT_END_ACK:
                if (c == ACK) {
                        succeed(y);
                        return 0;
                }
                if (c != NAK && c != WANT_C)
                        return 0;
                r = resend(y, false);
                return r < 0 ? r : 1;

        default:
                return 0;
        }
}

static int result(const struct ymodem *y)
{
        if (y->state == YMODEM_DONE)
                return GW_PROTO_DONE;
        if (y->state == YMODEM_FAILED)
                return y->error;
        return GW_PROTO_CONTINUE;
}

/* init() touches neither the link nor the timer: a bad option is only explained. */
static int bad_option(struct ymodem *y, const char *key, const char *expected)
{
        gw_proto_debug(y->host, "ymodem: option %s: expected %s", key, expected);
        if (y->host->set_error)
                y->host->set_error(y->host->ctx, "option %s: expected %s", key, expected);
        return -EINVAL;
}

static int ymodem_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct ymodem *y = priv;
        const char *name;

        y->host = host;
        y->state = YMODEM_IDLE;
        if (gw_options_get_u64(opts, "retries", DEFAULT_RETRIES, 0, 1000, &y->retries_max) < 0)
                return bad_option(y, "retries", "0 to 1000");
        if (gw_options_get_u64(opts, "ack-timeout-ms", DEFAULT_ACK_TIMEOUT_MS, 1, 3600000,
                               &y->ack_timeout_ms) < 0)
                return bad_option(y, "ack-timeout-ms", "1 to 3600000");
        if (gw_options_get_u64(opts, "start-timeout-ms", DEFAULT_START_TIMEOUT_MS, 1, 86400000,
                               &y->start_timeout_ms) < 0)
                return bad_option(y, "start-timeout-ms", "1 to 86400000");
        if (gw_options_get_u64(opts, "final-ack-timeout-ms", DEFAULT_FINAL_ACK_TIMEOUT_MS, 1,
                               3600000, &y->final_ack_timeout_ms) < 0)
                return bad_option(y, "final-ack-timeout-ms", "1 to 3600000");
        name = gw_options_get(opts, "filename");
        if (name) {
                size_t n = strlen(name);

                if (n == 0 || n > NAME_MAX_LEN || strchr(name, '/'))
                        return bad_option(y, "filename", "1 to 255 bytes without '/'");
                memcpy(y->filename, name, n + 1);
        }
        return 0;
}

static void ymodem_done(void *priv)
{
        /* Nothing allocated: the frame lives in priv, the reader is the core's. */
}

static int ymodem_install(void *priv, const struct gw_reader *reader)
{
        struct ymodem *y = priv;

        if (y->state != YMODEM_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        y->reader = reader;
        y->offset = 0;
        y->retries = 0;
        y->cans = 0;
        y->nak_at_start = false;
        set_state(y, YMODEM_WAIT_START);
        arm(y, state_timeout(y));
        gw_proto_debug(y->host, "ymodem: sending %s, %" PRIu64 " bytes, waiting for the receiver",
                       file_name(y), reader->size);
        return GW_PROTO_CONTINUE;
}

static int ymodem_input(void *priv, const uint8_t *buf, size_t n)
{
        struct ymodem *y = priv;

        for (size_t i = 0; i < n; i++) {
                int r;

                if (y->state == YMODEM_IDLE || y->state == YMODEM_DONE || y->state == YMODEM_FAILED)
                        break;
                if (buf[i] == CAN) {
                        /* One CAN can be line noise; two in a row are the receiver's abort. */
                        if (++y->cans >= 2)
                                return fail(y, -ECANCELED, "receiver cancelled");
                        continue;
                }
                y->cans = 0;
                r = handle_byte(y, buf[i]);
                if (r < 0)
                        return r;
                if (r > 0) {
                        if (i + 1 < n)
                                gw_proto_debug(
                                    y->host,
                                    "ymodem: dropping %zu bytes received before the last frame",
                                    n - i - 1);
                        break;
                }
        }
        return result(y);
}

static int ymodem_timeout(void *priv)
{
        struct ymodem *y = priv;

        if (y->deadline == 0 || y->host->now_ms(y->host->ctx) < y->deadline)
                return result(y); /* stale or early: the armed deadline stands */
        y->deadline = 0;

        switch (y->state) {
        case YMODEM_WAIT_START:
                if (y->nak_at_start)
                        return fail(
                            y, -EPROTONOSUPPORT,
                            "receiver asks for checksum mode (NAK); only CRC-16 is supported");
                return fail(y, -ETIMEDOUT, "no 'C' from the receiver in %" PRIu64 " ms",
                            y->start_timeout_ms);
        case YMODEM_WAIT_HEADER_ACK:
        case YMODEM_WAIT_DATA_ACK:
        case YMODEM_WAIT_EOT_ACK:
                resend(y, true);
                break;
        case YMODEM_WAIT_DATA_START:
                wait_again(y);
                break;
        case YMODEM_WAIT_END_START: {
                /* The receiver acknowledged EOT, so it holds the whole file; its 'C' may have been
                 * lost. Offer the end of the batch anyway. */
                int r = build_header(y, true);

                if (r < 0)
                        return r;
                y->retries = 0;
                set_state(y, YMODEM_WAIT_END_ACK);
                send_frame(y);
                break;
        }
        case YMODEM_WAIT_END_ACK:
                /* lrzsz rb sometimes exits before its last ACK leaves. */
                gw_proto_debug(
                    y->host,
                    "ymodem: no ACK for the end-of-batch block, assuming the receiver exited");
                return succeed(y);
        default:
                break;
        }
        return result(y);
}

static int ymodem_cancel(void *priv)
{
        struct ymodem *y = priv;
        uint8_t seq[2 * CANCEL_CANS];

        if (y->state == YMODEM_IDLE || y->state == YMODEM_DONE || y->state == YMODEM_FAILED) {
                disarm(y);
                return -ECANCELED;
        }
        memset(seq, CAN, CANCEL_CANS);
        memset(seq + CANCEL_CANS, BS, CANCEL_CANS);
        /* Best effort: the link may be gone, and we stop either way. */
        (void) y->host->write(y->host->ctx, seq, sizeof(seq));
        return fail(y, -ECANCELED, "cancelled");
}

/* Once EOT is acknowledged the receiver holds the whole file: a node that resets (and drops
 * the link) before its last ACK leaves has still taken the image. */
static int ymodem_hangup(void *priv)
{
        struct ymodem *y = priv;

        if (y->state == YMODEM_DONE)
                return GW_PROTO_DONE;
        if (y->state == YMODEM_WAIT_END_START || y->state == YMODEM_WAIT_END_ACK) {
                gw_proto_debug(y->host,
                               "ymodem: link closed after the receiver acknowledged EOT: done");
                return succeed(y);
        }
        if (y->state == YMODEM_FAILED)
                return y->error;
        return fail(y, -EPIPE, "link lost after %" PRIu64 " of %" PRIu64 " bytes", y->offset,
                    y->reader ? y->reader->size : 0);
}

static const char *const ymodem_options[] = {
    "retries", "ack-timeout-ms", "start-timeout-ms", "final-ack-timeout-ms", "filename", NULL};

const struct gw_protocol_ops gw_protocol_ymodem_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "ymodem",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct ymodem),
    .init = ymodem_init,
    .done = ymodem_done,
    .install = ymodem_install,
    .input = ymodem_input,
    .timeout = ymodem_timeout,
    .cancel = ymodem_cancel,
    .identify = NULL,
    .hangup = ymodem_hangup,
    .options = ymodem_options,
};
