/* Fuzz target for the uds protocol (protocols/uds/: UDS over ISO-TP): the bytes script the ECU's
 * side of an install or an identify (its CAN frames, expired and early timers, a cancel) on a
 * virtual clock, on a classic or a CAN FD link. The host checks that every frame sent fits the
 * link and starts a request this protocol sends, that the image is read only inside its size,
 * that a deadline is armed while the protocol waits and none once it ended, that errors are
 * among those it documents with a reason, and that it ends within a bounded number of timeouts
 * once the ECU falls silent. */
#include <errno.h>
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

#define IMAGE_MAX 1024
/* Timeouts after the input before a silent ECU must have ended the operation. */
#define SILENT_STEPS_MAX 5000

/* Three bytes of set-up, then actions. */
enum {
        SETUP_LINK,   /* bit 0 identify, 1 CAN FD, 2 no padding, 3 ms host, 4 extended
                       * session, 5 TesterPresent, 6 no resume, 7 our flow control BS 2 */
        SETUP_SIZE,   /* the image: 4 * this bytes */
        SETUP_LIMITS, /* bits 0-1 response-pending-max, 2-3 busy-retries, 4-5
                       * transfer-retries, 6 max-message 64, 7 reset-wait session */
        SETUP_LEN,
};

/* An action byte: the low 3 bits choose. */
enum action {
        ACT_FRAME,   /* the next byte is a length (mod 65), that many data bytes follow */
        ACT_EXPIRE,  /* the clock to the deadline, timeout() */
        ACT_ADVANCE, /* the clock moves by (byte >> 3) * 10 ms; timeout() when due */
        ACT_EARLY,   /* timeout() before the deadline: nothing may change */
        ACT_CANCEL,
        /* 5-7: a frame, as ACT_FRAME */
};

struct host {
        struct gw_proto_host h;
        struct gw_can_link_info info;
        bool fine;
        uint64_t now, deadline; /* us */
        uint64_t size;
        uint64_t progress_done;
        bool error_set;
        unsigned frames; /* sent during the current op */
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

        return h->now / 1000;
}

static uint64_t host_now_us(void *ctx)
{
        struct host *h = ctx;

        return h->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct host *h = ctx;

        h->deadline = at_ms * 1000;
}

static void host_set_deadline_us(void *ctx, uint64_t at_us)
{
        struct host *h = ctx;

        h->deadline = at_us;
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
        char buf[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        fuzz_check(buf[0] != '\0');
        h->error_set = true;
}

static const struct gw_can_link_info *host_can_info(void *ctx)
{
        struct host *h = ctx;

        return &h->info;
}

static bool valid_dl(unsigned n)
{
        return n <= 8 || n == 12 || n == 16 || n == 20 || n == 24 || n == 32 || n == 48 || n == 64;
}

static bool known_sid(uint8_t sid)
{
        switch (sid) {
        case 0x10: /* DiagnosticSessionControl */
        case 0x11: /* ECUReset */
        case 0x22: /* ReadDataByIdentifier */
        case 0x27: /* SecurityAccess */
        case 0x28: /* CommunicationControl */
        case 0x31: /* RoutineControl */
        case 0x34: /* RequestDownload */
        case 0x36: /* TransferData */
        case 0x37: /* RequestTransferExit */
        case 0x3e: /* TesterPresent */
        case 0x85: /* ControlDTCSetting */
                return true;
        default:
                return false;
        }
}

static int host_send_frame(void *ctx, const struct gw_can_frame *f)
{
        struct host *h = ctx;
        const uint8_t *d = f->data;

        h->frames++;
        /* Far more than one request's frames in one op is a loop. */
        fuzz_check(h->frames < 2000);
        fuzz_check(f->id == h->info.tx_id);
        fuzz_check(!(f->flags & GW_CAN_RTR));
        fuzz_check(!!(f->flags & GW_CAN_FD) == (h->info.fd && h->info.tx_dl > 8));
        fuzz_check(f->len >= 1 && f->len <= (h->info.fd ? h->info.tx_dl : 8) && valid_dl(f->len));
        switch (d[0] >> 4) {
        case 0: /* a single frame: a whole request */
                if (f->len > 8) {
                        fuzz_check(d[0] == 0 && d[1] > 7 && d[1] + 2u <= f->len);
                        fuzz_check(known_sid(d[2]));
                } else {
                        fuzz_check((d[0] & 0x0f) >= 1 && (d[0] & 0x0f) + 1u <= f->len);
                        fuzz_check(known_sid(d[1]));
                }
                break;
        case 1: /* a first frame: the start of one */
                fuzz_check(f->len == (h->info.fd ? h->info.tx_dl : 8));
                fuzz_check(known_sid((d[0] & 0x0f) || d[1] ? d[2] : d[6]));
                break;
        case 2: /* consecutive */
                break;
        case 3: /* our flow control: continue or overflow */
                fuzz_check((d[0] & 0x0f) == 0 || (d[0] & 0x0f) == 2);
                fuzz_check(f->len >= 3);
                break;
        default:
                fuzz_check(!"a frame with an unknown PCI type");
        }
        return 0;
}

static ssize_t reader_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        fuzz_check(n >= 1 && off < h->size && n <= h->size - off);
        memcpy(buf, image + off, n);
        return (ssize_t) n;
}

/* Checks what an op returned; true when the operation ended. */
static bool check_result(struct host *h, int r)
{
        if (r == GW_PROTO_CONTINUE) {
                fuzz_check(h->deadline != 0);
                return false;
        }
        fuzz_check(h->deadline == 0);
        if (r == GW_PROTO_DONE)
                return true;
        fuzz_check(r == -ETIMEDOUT || r == -EPROTO || r == -ECANCELED || r == -ENOKEY ||
                   r == -EIO || r == -EBUSY || r == -EMSGSIZE || r == -EOPNOTSUPP || r == -EINVAL ||
                   r == -EAGAIN || r == -ERANGE || r == -EACCES || r == -EHOSTUNREACH ||
                   r == -EILSEQ);
        fuzz_check(h->error_set);
        return true;
}

static int run_timeout(struct host *h, void *priv)
{
        h->frames = 0;
        return ops->timeout(priv);
}

static void run(struct host *h, void *priv, int r, const uint8_t *data, size_t size)
{
        size_t i = 0;

        if (check_result(h, r))
                return;
        while (i < size) {
                uint8_t b = data[i++];

                h->frames = 0;
                switch (b & 7) {
                case ACT_EXPIRE:
                        if (h->deadline > h->now)
                                h->now = h->deadline;
                        r = run_timeout(h, priv);
                        break;
                case ACT_ADVANCE:
                        h->now += (uint64_t) (b >> 3) * 10000;
                        if (h->now >= h->deadline)
                                r = run_timeout(h, priv);
                        break;
                case ACT_EARLY: {
                        uint64_t deadline = h->deadline;

                        if (h->now >= h->deadline)
                                break;
                        r = run_timeout(h, priv);
                        fuzz_check(r == GW_PROTO_CONTINUE && h->frames == 0);
                        fuzz_check(h->deadline == deadline);
                        break;
                }
                case ACT_CANCEL:
                        r = ops->cancel(priv);
                        fuzz_check(r == -ECANCELED || r == GW_PROTO_CONTINUE);
                        if (r == -ECANCELED)
                                fuzz_check(h->deadline == 0 && h->error_set);
                        break;
                default: {
                        struct gw_can_frame f = {.id = h->info.rx_id};
                        size_t n;

                        if (i >= size)
                                break;
                        n = data[i++] % (GW_CAN_FRAME_MAX + 1);
                        if (n > size - i)
                                n = size - i;
                        f.len = (uint8_t) n;
                        memcpy(f.data, data + i, n);
                        i += n;
                        if (n > 8)
                                f.flags = GW_CAN_FD;
                        r = ops->frame(priv, &f);
                        break;
                }
                }
                if (check_result(h, r))
                        return;
        }
        /* The ECU fell silent: every wait is bounded. */
        for (int n = 0; n < SILENT_STEPS_MAX; n++) {
                if (h->deadline > h->now)
                        h->now = h->deadline;
                r = run_timeout(h, priv);
                if (check_result(h, r))
                        return;
        }
        fuzz_check(!"the protocol did not end after the ECU fell silent");
}

static void set(struct gw_options *o, const char *k, const char *v)
{
        fuzz_check(gw_options_set(o, k, v) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gw_options *opts, *facts;
        struct gw_reader rd = {0};
        struct host h = {0};
        uint8_t link, limits;
        char num[32];
        uint8_t *priv;
        int r;

        if (size < SETUP_LEN)
                return 0;
        if (!ops) {
                ops = gw_protocol_find("uds");
                fuzz_check(ops && ops->shape == GW_LINK_FRAMES && ops->frame);
                for (size_t i = 0; i < sizeof(image); i++)
                        image[i] = (uint8_t) (i * 167 + (i >> 8));
        }
        link = data[SETUP_LINK];
        limits = data[SETUP_LIMITS];
        h.fine = !(link & 8);
        h.h = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &h,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .progress = host_progress,
            .set_error = host_set_error,
            .now_us = h.fine ? host_now_us : NULL,
            .set_deadline_us = h.fine ? host_set_deadline_us : NULL,
            .can_info = host_can_info,
            .send_frame = host_send_frame,
        };
        h.info = (struct gw_can_link_info){
            .tx_id = 0x7e0,
            .rx_id = 0x7e8,
            .functional_id = UINT32_MAX,
            .fd = link & 2,
            .tx_dl = (link & 2) ? 64 : 8,
            .bitrate = 500000,
            .data_bitrate = (link & 2) ? 2000000 : 0,
            .bus = "fuzz0",
        };
        h.now = 1000000;
        h.size = (uint64_t) data[SETUP_SIZE] * 4;

        opts = gw_options_new();
        fuzz_check(opts);
        set(opts, "address", "0x1000");
        set(opts, "extended-session", (link & 16) ? "0x03" : "none");
        set(opts, "tester-present-ms", (link & 32) ? "1000" : "0");
        if (link & 4)
                set(opts, "padding", "none");
        if (link & 64)
                set(opts, "resume-did", "none");
        if (link & 128) {
                set(opts, "rx-block-size", "2");
                set(opts, "rx-stmin", "0xf3");
        }
        snprintf(num, sizeof(num), "%u", limits & 3);
        set(opts, "response-pending-max", num);
        snprintf(num, sizeof(num), "%u", (limits >> 2) & 3);
        set(opts, "busy-retries", num);
        snprintf(num, sizeof(num), "%u", (limits >> 4) & 3);
        set(opts, "transfer-retries", num);
        if (limits & 64)
                set(opts, "max-message", "64");
        if (limits & 128)
                set(opts, "reset-wait", "session");
        set(opts, "reset-timeout-ms", "3000");

        priv = calloc(1, ops->priv_size);
        fuzz_check(priv);
        fuzz_check(ops->init(priv, opts, &h.h) == 0);
        facts = gw_options_new();
        fuzz_check(facts);
        if (link & 1) {
                r = ops->identify(priv, facts);
        } else {
                rd.size = h.size;
                rd.ctx = &h;
                rd.pread = reader_pread;
                rd.name = "fuzz.bin";
                r = ops->install(priv, &rd);
                if (h.size == 0)
                        fuzz_check(r == -EINVAL);
        }
        run(&h, priv, r, data + SETUP_LEN, size - SETUP_LEN);
        /* What identify reported is text. */
        for (size_t i = 0; i < gw_options_count(facts); i++)
                fuzz_check(strlen(gw_options_value(facts, i)) <= 2 * 128 + 2);

        ops->done(priv);
        free(priv);
        gw_options_free(facts);
        gw_options_free(opts);
        return 0;
}
