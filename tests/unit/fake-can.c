/* The scripted fake frames link shared by the CAN protocol tests (see fake-can.h): a
 * gw_proto_host on a virtual microsecond clock that captures frames, a runner for step tables,
 * and a small ISO-TP peer of its own for message-level steps. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake-can.h"

#define START_US 1000000u

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        struct fake_can *f = ctx;

        if (!f->verbose)
                return;
        fprintf(stderr, "[%llu.%03llu ms] ", (unsigned long long) (f->now / 1000),
                (unsigned long long) (f->now % 1000));
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

static uint64_t host_now_ms(void *ctx)
{
        struct fake_can *f = ctx;

        return f->now / 1000;
}

static uint64_t host_now_us(void *ctx)
{
        struct fake_can *f = ctx;

        return f->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct fake_can *f = ctx;

        f->deadline = at_ms * 1000;
        f->deadlines_set++;
}

static void host_set_deadline_us(void *ctx, uint64_t at_us)
{
        struct fake_can *f = ctx;

        f->deadline = at_us;
        f->deadlines_set++;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct fake_can *f = ctx;

        f->progress_done = done;
        f->progress_total = total;
        f->progress_calls++;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        struct fake_can *f = ctx;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(f->error, sizeof(f->error), fmt, ap);
        va_end(ap);
}

static const struct gw_can_link_info *host_can_info(void *ctx)
{
        struct fake_can *f = ctx;

        return &f->info;
}

static int host_send_frame(void *ctx, const struct gw_can_frame *fr)
{
        struct fake_can *f = ctx;

        if (f->send_error < 0) {
                int r = f->send_error;

                if (f->send_errors > 0 && --f->send_errors == 0)
                        f->send_error = 0;
                return r;
        }
        assert_true(fr->len <= GW_CAN_FRAME_MAX);
        if (f->n_sent == f->sent_cap) {
                size_t cap = f->sent_cap ? f->sent_cap * 2 : 256;
                struct fake_can_sent *p = realloc(f->sent, cap * sizeof(*p));

                assert_non_null(p);
                f->sent = p;
                f->sent_cap = cap;
        }
        f->sent[f->n_sent].f = *fr;
        f->sent[f->n_sent].at = f->now;
        f->n_sent++;
        return 0;
}

void fake_can_init(struct fake_can *f, const struct gw_protocol_ops *ops)
{
        memset(f, 0, sizeof(*f));
        f->ops = ops;
        f->now = START_US;
        f->verbose = getenv("GW_TEST_VERBOSE") != NULL;
        f->info = (struct gw_can_link_info){
            .tx_id = 0x7e0,
            .rx_id = 0x7e8,
            .functional_id = 0x7df,
            .tx_dl = 8,
            .bitrate = 500000,
            .bus = "fake0",
        };
        f->host = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = f,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .progress = host_progress,
            .set_error = host_set_error,
            .now_us = host_now_us,
            .set_deadline_us = host_set_deadline_us,
            .can_info = host_can_info,
            .send_frame = host_send_frame,
        };
        f->peer_padding = 0xcc;
        f->peer_dl = 8;
        f->last_checked = true;
}

int fake_can_open(struct fake_can *f, const struct gw_options *opts)
{
        int r;

        if (f->ms_only) {
                f->host.now_us = NULL;
                f->host.set_deadline_us = NULL;
        }
        f->priv = calloc(1, f->ops->priv_size);
        assert_non_null(f->priv);
        r = f->ops->init(f->priv, opts, &f->host);
        if (r < 0) {
                free(f->priv);
                f->priv = NULL;
        }
        return r;
}

void fake_can_done(struct fake_can *f)
{
        if (f->priv) {
                f->ops->done(f->priv);
                free(f->priv);
                f->priv = NULL;
        }
        free(f->sent);
        f->sent = NULL;
        f->n_sent = f->sent_pos = f->sent_cap = 0;
}

static int record(struct fake_can *f, int r)
{
        f->last = r;
        f->last_checked = r == GW_PROTO_CONTINUE;
        return r;
}

int fake_can_install(struct fake_can *f, const struct gw_reader *reader)
{
        return record(f, f->ops->install(f->priv, reader));
}

int fake_can_identify(struct fake_can *f, struct gw_options *ret)
{
        return record(f, f->ops->identify(f->priv, ret));
}

int fake_can_deliver_frame(struct fake_can *f, const struct gw_can_frame *fr)
{
        return record(f, f->ops->frame(f->priv, fr));
}

int fake_can_deliver(struct fake_can *f, const void *data, size_t len)
{
        struct gw_can_frame fr = {.id = f->info.rx_id, .len = (uint8_t) len};

        assert_true(len <= GW_CAN_FRAME_MAX);
        if (len > 8)
                fr.flags = GW_CAN_FD;
        memcpy(fr.data, data, len);
        return fake_can_deliver_frame(f, &fr);
}

int fake_can_expire(struct fake_can *f)
{
        assert_true(f->deadline != 0);
        if (f->deadline > f->now)
                f->now = f->deadline;
        return record(f, f->ops->timeout(f->priv));
}

int fake_can_advance(struct fake_can *f, uint64_t us)
{
        f->now += us;
        if (f->deadline != 0 && f->now >= f->deadline)
                return record(f, f->ops->timeout(f->priv));
        return f->last;
}

int fake_can_cancel(struct fake_can *f)
{
        return record(f, f->ops->cancel(f->priv));
}

size_t fake_can_pending(const struct fake_can *f)
{
        return f->n_sent - f->sent_pos;
}

const struct fake_can_sent *fake_can_take(struct fake_can *f)
{
        const struct fake_can_sent *s;

        if (f->sent_pos == f->n_sent)
                return NULL;
        s = &f->sent[f->sent_pos++];
        f->last_taken_at = s->at;
        return s;
}

static void dump(const char *what, const uint8_t *p, size_t n)
{
        fprintf(stderr, "%s (%zu bytes):", what, n);
        for (size_t i = 0; i < n && i < 64; i++)
                fprintf(stderr, " %02x", p[i]);
        fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

/* A frame of the node's, padded as the peer pads. */
static void peer_frame(struct fake_can *f, struct gw_can_frame *fr, const uint8_t *data,
                       size_t used)
{
        static const uint8_t lengths[] = {8, 12, 16, 20, 24, 32, 48, 64};
        size_t len = used;

        memset(fr, 0, sizeof(*fr));
        fr->id = f->info.rx_id;
        memcpy(fr->data, data, used);
        if (used > 8 || f->peer_padding >= 0)
                for (size_t i = 0; i < sizeof(lengths); i++)
                        if (used <= lengths[i]) {
                                len = lengths[i];
                                break;
                        }
        memset(fr->data + used, f->peer_padding >= 0 ? f->peer_padding : 0xcc, len - used);
        fr->len = (uint8_t) len;
        if (f->peer_dl > 8)
                fr->flags = GW_CAN_FD;
}

bool fake_can_take_message(struct fake_can *f)
{
        const struct fake_can_sent *s = fake_can_take(f);
        const uint8_t *d;
        size_t len, got, dl;
        uint8_t sn = 1;

        if (!s) {
                fprintf(stderr, "no message sent\n");
                return false;
        }
        d = s->f.data;
        if (s->f.id != f->info.tx_id) {
                fprintf(stderr, "frame sent with id 0x%x, not the tx id\n", (unsigned) s->f.id);
                return false;
        }
        switch (d[0] >> 4) {
        case 0:
                if (s->f.len > 8) {
                        len = d[1];
                        if ((d[0] & 0x0f) || len + 2 > s->f.len)
                                goto bad;
                        memcpy(f->msg, d + 2, len);
                } else {
                        len = d[0] & 0x0f;
                        if (len == 0 || len + 1 > s->f.len)
                                goto bad;
                        memcpy(f->msg, d + 1, len);
                }
                f->msg_len = len;
                return true;
        case 1:
                break;
        default:
                goto bad;
        }
        dl = s->f.len;
        len = (size_t) (d[0] & 0x0f) << 8 | d[1];
        got = dl - 2;
        if (len == 0) {
                len = (size_t) d[2] << 24 | (size_t) d[3] << 16 | (size_t) d[4] << 8 | d[5];
                got = dl - 6;
                memcpy(f->msg, d + 6, got);
        } else
                memcpy(f->msg, d + 2, got);
        if (len > sizeof(f->msg) || got > len) {
                fprintf(stderr, "first frame of a %zu-byte message\n", len);
                return false;
        }
        for (;;) {
                struct gw_can_frame fc;
                uint8_t fcd[3] = {0x30, f->peer_bs, f->peer_stmin};
                unsigned in_block = 0;

                peer_frame(f, &fc, fcd, sizeof(fcd));
                fake_can_deliver_frame(f, &fc);
                while (got < len) {
                        size_t n;

                        s = fake_can_take(f);
                        if (!s && f->deadline && f->last == GW_PROTO_CONTINUE) {
                                /* Paced by STmin: the clock moves on to the next frame. */
                                fake_can_expire(f);
                                s = fake_can_take(f);
                        }
                        if (!s) {
                                fprintf(stderr, "message cut short: %zu of %zu bytes\n", got, len);
                                return false;
                        }
                        d = s->f.data;
                        if ((d[0] >> 4) != 2 || (d[0] & 0x0f) != sn) {
                                dump("expected a consecutive frame, got", d, s->f.len);
                                return false;
                        }
                        n = len - got < dl - 1 ? len - got : dl - 1;
                        if (s->f.len < n + 1) {
                                dump("consecutive frame too short", d, s->f.len);
                                return false;
                        }
                        memcpy(f->msg + got, d + 1, n);
                        got += n;
                        sn = (sn + 1) & 0x0f;
                        if (f->peer_bs && ++in_block == f->peer_bs && got < len)
                                break;
                }
                if (got >= len)
                        break;
        }
        f->msg_len = len;
        return true;
bad:
        dump("not a message start", d, s->f.len);
        return false;
}

/* Takes the instance's flow control; its STmin in *ret_gap_us, BS in *ret_bs. */
static bool take_fc(struct fake_can *f, uint64_t *ret_gap_us, unsigned *ret_bs)
{
        const struct fake_can_sent *s = fake_can_take(f);
        uint8_t st;

        if (!s || s->f.len < 3 || s->f.data[0] != 0x30) {
                if (s)
                        dump("expected flow control CTS, got", s->f.data, s->f.len);
                else
                        fprintf(stderr, "no flow control sent\n");
                return false;
        }
        st = s->f.data[2];
        *ret_bs = s->f.data[1];
        *ret_gap_us = st <= 0x7f                   ? st * 1000u
                      : (st >= 0xf1 && st <= 0xf9) ? (st - 0xf0) * 100u
                                                   : 127000u;
        return true;
}

bool fake_can_send_message(struct fake_can *f, const uint8_t *msg, size_t len)
{
        struct gw_can_frame fr;
        uint8_t buf[64];
        size_t dl = f->peer_dl, off, n;
        uint64_t gap = 0;
        unsigned bs = 0, in_block = 0;
        uint8_t sn = 1;

        if (len <= 7 || (dl > 8 && len <= dl - 2)) {
                if (len <= 7) {
                        buf[0] = (uint8_t) len;
                        memcpy(buf + 1, msg, len);
                        peer_frame(f, &fr, buf, len + 1);
                } else {
                        buf[0] = 0;
                        buf[1] = (uint8_t) len;
                        memcpy(buf + 2, msg, len);
                        peer_frame(f, &fr, buf, len + 2);
                }
                fake_can_deliver_frame(f, &fr);
                return true;
        }
        if (len <= 4095) {
                buf[0] = (uint8_t) (0x10 | len >> 8);
                buf[1] = (uint8_t) len;
                off = dl - 2;
                memcpy(buf + 2, msg, off);
        } else {
                buf[0] = 0x10;
                buf[1] = 0;
                buf[2] = (uint8_t) (len >> 24);
                buf[3] = (uint8_t) (len >> 16);
                buf[4] = (uint8_t) (len >> 8);
                buf[5] = (uint8_t) len;
                off = dl - 6;
                memcpy(buf + 6, msg, off);
        }
        peer_frame(f, &fr, buf, dl);
        fake_can_deliver_frame(f, &fr);
        if (!take_fc(f, &gap, &bs))
                return false;
        while (off < len) {
                if (f->last != GW_PROTO_CONTINUE)
                        return true;
                if (bs && in_block == bs) {
                        if (!take_fc(f, &gap, &bs))
                                return false;
                        in_block = 0;
                } else if (off > dl - 2)
                        f->now += gap;
                n = len - off < dl - 1 ? len - off : dl - 1;
                buf[0] = (uint8_t) (0x20 | sn);
                memcpy(buf + 1, msg + off, n);
                peer_frame(f, &fr, buf, n + 1);
                /* The last one as short as the peer's padding allows. */
                fake_can_deliver_frame(f, &fr);
                off += n;
                sn = (sn + 1) & 0x0f;
                in_block++;
        }
        return true;
}

static void driving_allowed(struct fake_can *f, size_t i)
{
        if (!f->last_checked)
                fail_msg("step %zu: the last op returned %d and no step checked it (error: %s)", i,
                         f->last, f->error);
}

static void check_sent(struct fake_can *f, const struct fake_can_step *s, size_t i)
{
        const struct fake_can_sent *got = fake_can_take(f);
        uint8_t want[GW_CAN_FRAME_MAX];
        size_t want_len = s->len;

        memcpy(want, s->data, s->len);
        if (s->arg[0] == 0 && want_len < 8) {
                memset(want + want_len, 0xcc, 8 - want_len);
                want_len = 8;
        }
        if (!got) {
                dump("expected", want, want_len);
                fail_msg("step %zu: no frame sent", i);
        }
        if (got->f.id != f->info.tx_id || got->f.len != want_len ||
            memcmp(got->f.data, want, want_len) != 0) {
                dump("expected", want, want_len);
                dump("sent", got->f.data, got->f.len);
                fail_msg("step %zu: unexpected frame (id 0x%x)", i, (unsigned) got->f.id);
        }
}

void fake_can_run(struct fake_can *f, const struct fake_can_step *steps, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                const struct fake_can_step *s = &steps[i];

                switch (s->type) {
                case FAKE_CAN_STEP_SENT:
                        check_sent(f, s, i);
                        break;
                case FAKE_CAN_STEP_SENT_GAP: {
                        uint64_t prev = f->last_taken_at;

                        check_sent(f, s, i);
                        if (f->last_taken_at - prev != s->ms)
                                fail_msg("step %zu: sent %llu us after the previous frame, "
                                         "expected %llu",
                                         i, (unsigned long long) (f->last_taken_at - prev),
                                         (unsigned long long) s->ms);
                        break;
                }
                case FAKE_CAN_STEP_SILENT:
                        if (fake_can_pending(f) != 0) {
                                dump("sent", f->sent[f->sent_pos].f.data,
                                     f->sent[f->sent_pos].f.len);
                                fail_msg("step %zu: expected no frame", i);
                        }
                        break;
                case FAKE_CAN_STEP_IN:
                        driving_allowed(f, i);
                        fake_can_deliver(f, s->data, s->len);
                        break;
                case FAKE_CAN_STEP_EXPIRE:
                        driving_allowed(f, i);
                        if (f->deadline == 0)
                                fail_msg("step %zu: no deadline armed", i);
                        if (s->ms != 0 && f->deadline != f->now + s->ms)
                                fail_msg("step %zu: deadline %lld us ahead, expected %llu", i,
                                         (long long) (f->deadline - f->now),
                                         (unsigned long long) s->ms);
                        fake_can_expire(f);
                        break;
                case FAKE_CAN_STEP_ADVANCE:
                        driving_allowed(f, i);
                        fake_can_advance(f, s->ms);
                        break;
                case FAKE_CAN_STEP_RESULT:
                        if (f->last != s->result)
                                fail_msg("step %zu: result %d, expected %d (error: %s)", i, f->last,
                                         s->result, f->error);
                        f->last_checked = true;
                        break;
                case FAKE_CAN_STEP_CANCEL:
                        driving_allowed(f, i);
                        fake_can_cancel(f);
                        break;
                case FAKE_CAN_STEP_CHECK:
                        if (!s->fn(f, s))
                                fail_msg("step %zu: check failed (error: %s)", i, f->error);
                        break;
                case FAKE_CAN_STEP_REQUEST:
                        if (!fake_can_take_message(f))
                                fail_msg("step %zu: no message sent", i);
                        if (f->msg_len != s->len || memcmp(f->msg, s->data, s->len) != 0) {
                                dump("expected", s->data, s->len);
                                dump("sent", f->msg, f->msg_len);
                                fail_msg("step %zu: unexpected request", i);
                        }
                        break;
                case FAKE_CAN_STEP_RESPONSE:
                        driving_allowed(f, i);
                        if (!fake_can_send_message(f, s->data, s->len))
                                fail_msg("step %zu: the response could not be delivered", i);
                        break;
                }
        }
        if (!f->last_checked)
                fail_msg("script ended: the last op returned %d and no step checked it (error: %s)",
                         f->last, f->error);
}
