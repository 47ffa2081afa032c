/* Tests for the ISO-TP layer (protocols/uds/isotp.c) on the fake frames link (fake-can.h): a
 * probe protocol sends the "image" as one message (install) or waits for one message
 * (identify), and scripts check every frame both ways: single, first, consecutive and flow
 * control frames, BS and STmin (ms and 100-900 us, on the virtual clock), WAIT up to the cap,
 * OVERFLOW, sequence errors, the N_Bs/N_Cr timeouts, padding, CAN FD lengths and escapes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../protocols/uds/isotp.h"
#include "fake-can.h"

/* ---- The probe: a protocol that is nothing but an ISO-TP connection. */

static struct gw_isotp_config probe_cfg;
static uint8_t probe_rx[8192];
static size_t probe_rx_len;
static unsigned probe_rx_count;
static int probe_rx_error;
static unsigned probe_rx_errors;

struct probe {
        const struct gw_proto_host *host;
        struct gw_isotp tp;
        bool ready, receiving;
        int result;
};

/* Microseconds, from a millisecond host too. */
static uint64_t probe_now(struct probe *p)
{
        if (p->host->now_us)
                return p->host->now_us(p->host->ctx);
        return p->host->now_ms(p->host->ctx) * 1000;
}

static void probe_rearm(struct probe *p)
{
        uint64_t at = p->ready ? gw_isotp_deadline(&p->tp) : 0;

        if (p->host->set_deadline_us)
                p->host->set_deadline_us(p->host->ctx, at);
        else
                p->host->set_deadline(p->host->ctx, (at + 999) / 1000);
}

static void probe_received(void *ctx, const uint8_t *msg, size_t len)
{
        struct probe *p = ctx;

        assert_true(len <= sizeof(probe_rx));
        memcpy(probe_rx, msg, len);
        probe_rx_len = len;
        probe_rx_count++;
        if (p->receiving)
                p->result = GW_PROTO_DONE;
}

static void probe_sent(void *ctx, int result, const char *why)
{
        struct probe *p = ctx;

        if (p->receiving)
                return;
        if (result < 0)
                p->host->set_error(p->host->ctx, "%s", why);
        p->result = result < 0 ? result : GW_PROTO_DONE;
}

static void probe_rx_failed(void *ctx, int error, const char *why)
{
        struct probe *p = ctx;

        probe_rx_error = error;
        probe_rx_errors++;
        p->host->set_error(p->host->ctx, "%s", why);
}

__attribute__((format(printf, 2, 0))) static void probe_logv(void *ctx, const char *fmt, va_list ap)
{
        struct probe *p = ctx;

        p->host->logv(p->host->ctx, 7, fmt, ap);
}

static const struct gw_isotp_ops probe_ops = {
    .received = probe_received,
    .sent = probe_sent,
    .rx_failed = probe_rx_failed,
    .logv = probe_logv,
};

static int probe_send_frame(void *ctx, const struct gw_can_frame *f)
{
        struct probe *p = ctx;

        return p->host->send_frame(p->host->ctx, f);
}

static int probe_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct probe *p = priv;

        p->host = host;
        return 0;
}

static void probe_done(void *priv)
{
        struct probe *p = priv;

        gw_isotp_done(&p->tp);
}

static int probe_setup(struct probe *p)
{
        struct gw_isotp_config c = probe_cfg;
        const struct gw_can_link_info *info = p->host->can_info(p->host->ctx);
        int r;

        c.tx_id = info->tx_id;
        r = gw_isotp_init(&p->tp, &c, &probe_ops, p,
                          &(struct gw_isotp_next){.send_frame = probe_send_frame, .ctx = p});
        if (r < 0)
                return r;
        p->ready = true;
        return 0;
}

static int probe_install(void *priv, const struct gw_reader *reader)
{
        struct probe *p = priv;
        uint8_t *buf = malloc(reader->size ? reader->size : 1);
        int r;

        assert_non_null(buf);
        assert_int_equal(reader->pread(reader->ctx, buf, reader->size, 0), (ssize_t) reader->size);
        r = probe_setup(p);
        if (r >= 0) {
                p->result = GW_PROTO_CONTINUE;
                r = gw_isotp_send(&p->tp, buf, reader->size, probe_now(p));
        }
        free(buf);
        probe_rearm(p);
        return r < 0 ? r : p->result;
}

static int probe_identify(void *priv, struct gw_options *ret)
{
        struct probe *p = priv;
        int r = probe_setup(p);

        p->receiving = true;
        p->result = GW_PROTO_CONTINUE;
        return r;
}

static int probe_frame(void *priv, const struct gw_can_frame *f)
{
        struct probe *p = priv;

        gw_isotp_frame(&p->tp, f, probe_now(p));
        probe_rearm(p);
        return p->result;
}

static int probe_timeout(void *priv)
{
        struct probe *p = priv;

        gw_isotp_timeout(&p->tp, probe_now(p));
        probe_rearm(p);
        return p->result;
}

static const struct gw_protocol_ops probe_protocol = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "isotp-probe",
    .shape = GW_LINK_FRAMES,
    .priv_size = sizeof(struct probe),
    .init = probe_init,
    .done = probe_done,
    .install = probe_install,
    .timeout = probe_timeout,
    .identify = probe_identify,
    .frame = probe_frame,
};

/* ---- The world of one test. */

static uint8_t image[8192];

static ssize_t image_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        size_t size = (size_t) (uintptr_t) ctx;

        if (off >= size)
                return 0;
        if (n > size - off)
                n = size - (size_t) off;
        memcpy(buf, image + off, n);
        return (ssize_t) n;
}

static struct gw_reader reader;
static struct fake_can can;

static void default_cfg(void)
{
        probe_cfg = (struct gw_isotp_config){
            .tx_dl = 8,
            .padding = 0xcc,
            .max_rx = 4095,
            .max_tx = 4095,
            .n_as_us = 1000000,
            .n_bs_us = 1000000,
            .n_cr_us = 1000000,
            .wft_max = 3,
        };
}

static int setup(void **state)
{
        default_cfg();
        for (size_t i = 0; i < sizeof(image); i++)
                image[i] = (uint8_t) (0xd0 + i);
        probe_rx_len = 0;
        probe_rx_count = 0;
        probe_rx_error = 0;
        probe_rx_errors = 0;
        fake_can_init(&can, &probe_protocol);
        return 0;
}

static int teardown(void **state)
{
        fake_can_done(&can);
        return 0;
}

/* Opens the probe and sends size bytes of the image; returns what install returned. */
static int start_send(size_t size)
{
        assert_int_equal(fake_can_open(&can, NULL), 0);
        reader = (struct gw_reader){
            .size = size, .ctx = (void *) (uintptr_t) size, .pread = image_pread};
        return fake_can_install(&can, &reader);
}

static void start_receive(void)
{
        assert_int_equal(fake_can_open(&can, NULL), 0);
        assert_int_equal(fake_can_identify(&can, NULL), GW_PROTO_CONTINUE);
}

#define RUN(steps) fake_can_run(&can, steps, sizeof(steps) / sizeof(steps[0]))

/* ---- Sending. */

static void test_send_single_frames(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x07\xd0\xd1\xd2\xd3\xd4\xd5\xd6"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_DONE),
        };

        /* 7 bytes: one single frame, done at once. */
        assert_int_equal(start_send(7), GW_PROTO_DONE);
        RUN(steps);
        assert_int_equal(can.deadline, 0);
}

static void test_send_one_byte_padded(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT_RAW("\x01\xd0\xcc\xcc\xcc\xcc\xcc\xcc"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(1), GW_PROTO_DONE);
        RUN(steps);
}

static void test_send_unpadded(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT_RAW("\x03\xd0\xd1\xd2"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.padding = -1;
        assert_int_equal(start_send(3), GW_PROTO_DONE);
        RUN(steps);
}

static void test_send_other_padding(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT_RAW("\x02\xd0\xd1\x55\x55\x55\x55\x55"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.padding = 0x55;
        assert_int_equal(start_send(2), GW_PROTO_DONE);
        RUN(steps);
}

static void test_send_empty_and_over_cap(void **state)
{
        /* 0 bytes: nothing to send in ISO-TP (SF_DL 0 is invalid). */
        assert_int_equal(start_send(0), -EINVAL);
        assert_int_equal(fake_can_pending(&can), 0);
        fake_can_done(&can);
        fake_can_init(&can, &probe_protocol);
        /* One byte over the cap. */
        assert_int_equal(start_send(4096), -EMSGSIZE);
        assert_int_equal(fake_can_pending(&can), 0);
}

static void test_send_eight_bytes(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x08\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_CONTINUE),
            /* N_Bs armed for the flow control. */
            CAN_ADVANCE(999999),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_IN("\x30\x00\x00\xcc\xcc\xcc\xcc\xcc"),
            CAN_SENT("\x21\xd6\xd7\xcc\xcc\xcc\xcc\xcc"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(8), GW_PROTO_CONTINUE);
        assert_int_equal(can.deadline, can.now + 1000000);
        RUN(steps);
}

/* The whole message through the fake's own reassembly. */
static bool whole_message(struct fake_can *f, const struct fake_can_step *s)
{
        size_t size = (size_t) s->arg[0];

        if (!fake_can_take_message(f))
                return false;
        if (f->msg_len != size || memcmp(f->msg, image, size) != 0) {
                fprintf(stderr, "message of %zu bytes, expected %zu\n", f->msg_len, size);
                return false;
        }
        return true;
}

static bool sent_count(struct fake_can *f, const struct fake_can_step *s)
{
        if (f->n_sent != (size_t) s->arg[0]) {
                fprintf(stderr, "%zu frames sent, expected %ld\n", f->n_sent, s->arg[0]);
                return false;
        }
        return true;
}

static void test_send_4095(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_CHECK(whole_message, 4095, 0, 0),
            /* 1 FF (6 bytes), ceil(4089 / 7) = 585 CFs. */
            CAN_CHECK(sent_count, 586, 0, 0),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(4095), GW_PROTO_CONTINUE);
        assert_int_equal(can.sent[0].f.data[0], 0x1f);
        assert_int_equal(can.sent[0].f.data[1], 0xff);
        RUN(steps);
}

static void test_send_escape_classic(void **state)
{
        static const struct fake_can_step steps[] = {
            /* FF_DL 0 then 32 bits, two data bytes. */
            CAN_SENT("\x10\x00\x00\x00\x10\x00\xd0\xd1"),
            CAN_IN("\x30\x00\x00"),
            CAN_SENT("\x21\xd2\xd3\xd4\xd5\xd6\xd7\xd8"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.max_tx = 8192;
        assert_int_equal(start_send(4096), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_send_block_size(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x30\x02\x00"),
            CAN_SENT("\x21\xd6\xd7\xd8\xd9\xda\xdb\xdc"),
            CAN_SENT("\x22\xdd\xde\xdf\xe0\xe1\xe2\xe3"),
            /* Two frames: the next flow control is awaited, N_Bs armed. */
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_ADVANCE(500000),
            CAN_SILENT(),
            CAN_IN("\x30\x02\x00"),
            CAN_SENT("\x23\xe4\xe5\xe6\xe7"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_send_block_size_timeout(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x30\x01\x00"),
            CAN_SENT("\x21\xd6\xd7\xd8\xd9\xda\xdb\xdc"),
            CAN_EXPIRE(1000000),
            CAN_RESULT(-ETIMEDOUT),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
        assert_non_null(strstr(can.error, "N_Bs"));
}

static void test_send_stmin_ms(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x30\x00\x05"),
            /* The first at once, then 5 ms apart. */
            CAN_SENT_GAP("\x21\xd6\xd7\xd8\xd9\xda\xdb\xdc", 0),
            CAN_SILENT(),
            CAN_EXPIRE(5000),
            CAN_SENT_GAP("\x22\xdd\xde\xdf\xe0\xe1\xe2\xe3", 5000),
            CAN_SILENT(),
            CAN_ADVANCE(4999),
            CAN_SILENT(),
            CAN_ADVANCE(1),
            CAN_SENT_GAP("\x23\xe4\xe5\xe6\xe7", 5000),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
}

/* STmin in microseconds (0xf1-0xf9) and a reserved value (127 ms), as table rows. */
static void test_send_stmin_table(void **state)
{
        static const struct {
                uint8_t stmin;
                uint64_t gap_us;
        } rows[] = {
            {0xf1, 100},    {0xf5, 500},    {0xf9, 900},    {0x7f, 127000},
            {0x80, 127000}, {0xf0, 127000}, {0xfa, 127000}, {0x01, 1000},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                uint8_t fc[3] = {0x30, 0x00, rows[i].stmin};
                uint64_t t0;

                setup(state);
                assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
                assert_non_null(fake_can_take(&can));
                assert_int_equal(fake_can_deliver(&can, fc, sizeof(fc)), GW_PROTO_CONTINUE);
                assert_non_null(fake_can_take(&can));
                t0 = can.last_taken_at;
                assert_int_equal(fake_can_pending(&can), 0);
                assert_int_equal(can.deadline - can.now, rows[i].gap_us);
                assert_int_equal(fake_can_expire(&can), GW_PROTO_CONTINUE);
                assert_non_null(fake_can_take(&can));
                assert_int_equal(can.last_taken_at - t0, rows[i].gap_us);
                assert_int_equal(fake_can_expire(&can), GW_PROTO_DONE);
                assert_non_null(fake_can_take(&can));
                assert_int_equal(can.last_taken_at - t0, 2 * rows[i].gap_us);
                teardown(state);
        }
}

/* On a host with only a millisecond clock, a 300 us STmin waits a whole tick. */
static void test_send_stmin_ms_host(void **state)
{
        can.ms_only = true;
        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        assert_non_null(fake_can_take(&can));
        assert_int_equal(fake_can_deliver(&can, "\x30\x00\xf3", 3), GW_PROTO_CONTINUE);
        assert_non_null(fake_can_take(&can));
        assert_int_equal(fake_can_pending(&can), 0);
        assert_true(can.deadline > can.now);
}

static void test_send_wait_frames(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            /* Up to wft_max (3) WAITs, each arming N_Bs again. */
            CAN_ADVANCE(900000),
            CAN_IN("\x31\x00\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_ADVANCE(900000),
            CAN_IN("\x31\x00\x00"),
            CAN_ADVANCE(900000),
            CAN_IN("\x31\x00\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            CAN_IN("\x30\x00\x00"),
            CAN_SENT("\x21\xd6\xd7\xd8\xd9\xda\xdb\xdc"),
            CAN_SENT("\x22\xdd\xde\xdf\xe0\xe1\xe2\xe3"),
            CAN_SENT("\x23\xe4\xe5\xe6\xe7"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_send_wait_frames_cap(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x31\x00\x00"),
            CAN_IN("\x31\x00\x00"),
            CAN_IN("\x31\x00\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_IN("\x31\x00\x00"),
            CAN_RESULT(-EBUSY),
            CAN_SILENT(),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
        assert_non_null(strstr(can.error, "N_WFTmax"));
}

static void test_send_overflow(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x32\x00\x00\xcc\xcc\xcc\xcc\xcc"),
            CAN_RESULT(-EMSGSIZE),
            CAN_SILENT(),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
        assert_non_null(strstr(can.error, "OVERFLOW"));
}

static void test_send_bad_flow_status(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            /* Too short: ignored. */
            CAN_IN("\x30\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            CAN_IN("\x35\x00\x00"),
            CAN_RESULT(-EPROTO),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_send_n_bs_timeout(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_EXPIRE(1000000),
            CAN_RESULT(-ETIMEDOUT),
            CAN_SILENT(),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        RUN(steps);
}

/* A full frame queue: the frame is offered again every millisecond, for up to N_As. */
static void test_send_queue_full(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_SENT("\x10\x18\xd0\xd1\xd2\xd3\xd4\xd5"),
            CAN_IN("\x30\x00\x00"),
            CAN_SILENT(),
            CAN_EXPIRE(1000),
            CAN_SILENT(),
            CAN_EXPIRE(1000),
            CAN_SENT("\x21\xd6\xd7\xd8\xd9\xda\xdb\xdc"),
            CAN_SENT("\x22\xdd\xde\xdf\xe0\xe1\xe2\xe3"),
            CAN_SENT("\x23\xe4\xe5\xe6\xe7"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        can.send_error = -ENOBUFS;
        can.send_errors = 2;
        RUN(steps);
}

static void test_send_queue_stays_full(void **state)
{
        assert_int_equal(start_send(24), GW_PROTO_CONTINUE);
        assert_non_null(fake_can_take(&can));
        can.send_error = -ENOBUFS;
        assert_int_equal(fake_can_deliver(&can, "\x30\x00\x00", 3), GW_PROTO_CONTINUE);
        for (int i = 0; i < 999; i++)
                assert_int_equal(fake_can_expire(&can), GW_PROTO_CONTINUE);
        assert_int_equal(fake_can_expire(&can), -ETIMEDOUT);
        assert_non_null(strstr(can.error, "N_As"));
}

static void test_send_link_error(void **state)
{
        can.send_error = -ENETDOWN;
        assert_int_equal(start_send(3), -ENETDOWN);
}

/* ---- Receiving. */

static bool received(struct fake_can *f, const struct fake_can_step *s)
{
        size_t len = (size_t) s->arg[0];

        if (probe_rx_len != len || memcmp(probe_rx, (const void *) s->arg[1], len) != 0) {
                fprintf(stderr, "received %zu bytes, expected %zu\n", probe_rx_len, len);
                return false;
        }
        return true;
}

static bool rx_error_is(struct fake_can *f, const struct fake_can_step *s)
{
        if (probe_rx_error != (int) s->arg[0] || probe_rx_errors != (unsigned) s->arg[1]) {
                fprintf(stderr, "rx error %d (%u), expected %ld (%ld)\n", probe_rx_error,
                        probe_rx_errors, s->arg[0], s->arg[1]);
                return false;
        }
        return true;
}

static void test_receive_single_frame(void **state)
{
        static const struct fake_can_step steps[] = {
            /* Invalid single frames are ignored: SF_DL 0, and longer than the frame. */
            CAN_IN("\x00\xaa\xbb"),
            CAN_IN("\x05\xaa\xbb"),
            CAN_IN("\x08\xaa\xbb\xcc\xdd\xee\xff\x11"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            /* Consecutive and flow control frames out of place: ignored too. */
            CAN_IN("\x21\xaa\xbb"),
            CAN_IN("\x30\x00\x00"),
            CAN_IN("\x40\x00\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            CAN_IN("\x03\xaa\xbb\xcc\x55\x55\x55\x55"),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_CHECK(received, 3, (long) "\xaa\xbb\xcc", 0),
            CAN_SILENT(),
        };

        start_receive();
        RUN(steps);
}

static void test_receive_multi_frame(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x0a\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x00\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_ADVANCE(999999),
            CAN_IN("\x21\x07\x08\x09\x0a"),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_CHECK(received, 10, (long) "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a", 0),
        };

        start_receive();
        RUN(steps);
}

static void test_receive_short_first_frame(void **state)
{
        static const struct fake_can_step steps[] = {
            /* FF_DL 7 fits a single frame: ignored, no flow control. */
            CAN_IN("\x10\x07\x01\x02\x03\x04\x05\x06"),
            /* A first frame shorter than 8 bytes: ignored. */
            CAN_IN("\x10\x0a\x01\x02\x03"),
            /* Escaped FF_DL that would fit 12 bits: ignored. */
            CAN_IN("\x10\x00\x00\x00\x00\x20\x01\x02"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start_receive();
        RUN(steps);
}

static void test_receive_our_flow_control(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x1b\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x02\xf5"),
            CAN_IN("\x21\x07\x08\x09\x0a\x0b\x0c\x0d"),
            CAN_SILENT(),
            CAN_IN("\x22\x0e\x0f\x10\x11\x12\x13\x14"),
            /* After BS frames, another flow control. */
            CAN_SENT("\x30\x02\xf5"),
            CAN_IN("\x23\x15\x16\x17\x18\x19\x1a\x1b"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.rx_bs = 2;
        probe_cfg.rx_stmin = 0xf5;
        start_receive();
        RUN(steps);
}

static void test_receive_wrong_sequence(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x14\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x00\x00"),
            CAN_IN("\x21\x07\x08\x09\x0a\x0b\x0c\x0d"),
            CAN_IN("\x23\x0e\x0f\x10\x11\x12\x13\x14"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_CHECK(rx_error_is, -EILSEQ, 1, 0),
            /* The reception is over: its next frame is ignored. */
            CAN_IN("\x22\x0e\x0f\x10\x11\x12\x13\x14"),
            CAN_CHECK(rx_error_is, -EILSEQ, 1, 0),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start_receive();
        RUN(steps);
        assert_int_equal(probe_rx_count, 0);
}

static void test_receive_sequence_wraps(void **state)
{
        uint8_t msg[7 * 17 + 6];
        struct gw_can_frame fr = {.id = 0x7e8, .len = 8};

        start_receive();
        for (size_t i = 0; i < sizeof(msg); i++)
                msg[i] = (uint8_t) i;
        fr.data[0] = 0x10;
        fr.data[1] = sizeof(msg);
        memcpy(fr.data + 2, msg, 6);
        assert_int_equal(fake_can_deliver_frame(&can, &fr), GW_PROTO_CONTINUE);
        assert_non_null(fake_can_take(&can));
        for (int i = 0; i < 17; i++) {
                /* 1..15, 0, 1. */
                fr.data[0] = (uint8_t) (0x20 | ((i + 1) & 0x0f));
                memcpy(fr.data + 1, msg + 6 + 7 * i, 7);
                fake_can_deliver_frame(&can, &fr);
        }
        assert_int_equal(can.last, GW_PROTO_DONE);
        assert_int_equal(probe_rx_len, sizeof(msg));
        assert_memory_equal(probe_rx, msg, sizeof(msg));
}

static void test_receive_n_cr_timeout(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x14\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x00\x00"),
            CAN_IN("\x21\x07\x08\x09\x0a\x0b\x0c\x0d"),
            CAN_EXPIRE(1000000),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_CHECK(rx_error_is, -ETIMEDOUT, 1, 0),
            /* Nothing armed any more. */
            CAN_SILENT(),
        };

        start_receive();
        RUN(steps);
        assert_int_equal(can.deadline, 0);
        assert_non_null(strstr(can.error, "N_Cr"));
}

static void test_receive_overflow(void **state)
{
        static const struct fake_can_step steps[] = {
            /* 4095 bytes against a 100-byte limit. */
            CAN_IN("\x1f\xff\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x32\x00\x00"),
            CAN_CHECK(rx_error_is, -EMSGSIZE, 1, 0),
            CAN_IN("\x21\x07\x08\x09\x0a\x0b\x0c\x0d"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        probe_cfg.max_rx = 100;
        start_receive();
        RUN(steps);
}

static void test_receive_interrupted(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x14\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x00\x00"),
            /* A single frame in the middle ends the reception and is taken. */
            CAN_IN("\x02\x50\x03"),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_CHECK(rx_error_is, -EPROTO, 1, 0),
            CAN_CHECK(received, 2, (long) "\x50\x03", 0),
        };

        start_receive();
        RUN(steps);
}

static void test_receive_short_consecutive_frame(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x14\x01\x02\x03\x04\x05\x06"),
            CAN_SENT("\x30\x00\x00"),
            /* Not the last, yet shorter than the first frame. */
            CAN_IN("\x21\x07\x08\x09"),
            CAN_CHECK(rx_error_is, -EPROTO, 1, 0),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start_receive();
        RUN(steps);
}

static void test_receive_unpadded_flow_control(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_IN("\x10\x09\x01\x02\x03\x04\x05\x06"),
            CAN_SENT_RAW("\x30\x00\x00"),
            CAN_IN("\x21\x07\x08\x09"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.padding = -1;
        start_receive();
        RUN(steps);
}

/* ---- CAN FD. */

static void fd_cfg(uint8_t dl)
{
        probe_cfg.fd = true;
        probe_cfg.tx_dl = dl;
        can.info.fd = true;
        can.info.tx_dl = dl;
}

static bool fd_frame(struct fake_can *f, const struct fake_can_step *s)
{
        const struct fake_can_sent *got = fake_can_take(f);
        size_t len = (size_t) s->arg[0], hdr = (size_t) s->arg[1], data = (size_t) s->arg[2];

        if (!got || got->f.len != len || !(got->f.flags & GW_CAN_FD)) {
                fprintf(stderr, "frame of %u bytes, flags %x, expected %zu\n", got ? got->f.len : 0,
                        got ? got->f.flags : 0, len);
                return false;
        }
        /* hdr PCI bytes, data image bytes from offset (data >> 16), 0xcc after. */
        for (size_t i = 0; i < (data & 0xffff); i++)
                if (got->f.data[hdr + i] != image[(data >> 16) + i]) {
                        fprintf(stderr, "byte %zu differs\n", hdr + i);
                        return false;
                }
        for (size_t i = hdr + (data & 0xffff); i < len; i++)
                if (got->f.data[i] != 0xcc) {
                        fprintf(stderr, "padding byte %zu is %02x\n", i, got->f.data[i]);
                        return false;
                }
        return true;
}

static bool pci(struct fake_can *f, const struct fake_can_step *s)
{
        const struct fake_can_sent *got = &f->sent[f->sent_pos];

        for (long i = 0; i < s->arg[0]; i++)
                if (got->f.data[i] != ((const uint8_t *) s->arg[1])[i]) {
                        fprintf(stderr, "PCI byte %ld is %02x\n", i, got->f.data[i]);
                        return false;
                }
        return true;
}

static void test_fd_single_frames(void **state)
{
        static const struct {
                size_t size; /* message */
                size_t len;  /* frame */
                size_t hdr;
        } rows[] = {
            {5, 8, 1},   {7, 8, 1},   {8, 12, 2},  {10, 12, 2}, {14, 16, 2},
            {30, 32, 2}, {46, 48, 2}, {47, 64, 2}, {62, 64, 2},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                struct fake_can_step steps[] = {
                    CAN_CHECK(fd_frame, (long) rows[i].len, (long) rows[i].hdr,
                              (long) rows[i].size),
                    CAN_RESULT(GW_PROTO_DONE),
                };

                setup(state);
                fd_cfg(64);
                assert_int_equal(start_send(rows[i].size), GW_PROTO_DONE);
                if (rows[i].hdr == 2) {
                        assert_int_equal(can.sent[0].f.data[0], 0x00);
                        assert_int_equal(can.sent[0].f.data[1], rows[i].size);
                } else
                        assert_int_equal(can.sent[0].f.data[0], rows[i].size);
                RUN(steps);
                teardown(state);
        }
}

static void test_fd_segmented(void **state)
{
        static const struct fake_can_step steps[] = {
            /* 100 bytes: FF of 64 (62 data), CF of 1 + 38 padded to 48. */
            CAN_CHECK(pci, 2, (long) "\x10\x64", 0),
            CAN_CHECK(fd_frame, 64, 2, 62),
            CAN_IN("\x30\x00\x00"),
            CAN_CHECK(pci, 1, (long) "\x21", 0),
            CAN_CHECK(fd_frame, 48, 1, 62 << 16 | 38),
            CAN_RESULT(GW_PROTO_DONE),
        };

        fd_cfg(64);
        assert_int_equal(start_send(100), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_fd_escape(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_CHECK(pci, 6, (long) "\x10\x00\x00\x00\x13\x88", 0),
            CAN_CHECK(fd_frame, 64, 6, 58),
            CAN_IN("\x30\x00\x00"),
            CAN_CHECK(pci, 1, (long) "\x21", 0),
            CAN_CHECK(fd_frame, 64, 1, 58 << 16 | 63),
            CAN_RESULT(GW_PROTO_DONE),
        };

        probe_cfg.max_tx = 8192;
        fd_cfg(64);
        assert_int_equal(start_send(5000), GW_PROTO_CONTINUE);
        RUN(steps);
}

static void test_fd_whole_messages(void **state)
{
        /* Every frame length as tx_dl, a message that needs a few CFs, reassembled. */
        static const uint8_t dls[] = {12, 16, 20, 24, 32, 48, 64};

        for (size_t i = 0; i < sizeof(dls); i++) {
                setup(state);
                fd_cfg(dls[i]);
                assert_int_equal(start_send(1000), GW_PROTO_CONTINUE);
                can.peer_dl = dls[i];
                assert_true(fake_can_take_message(&can));
                assert_int_equal(can.msg_len, 1000);
                assert_memory_equal(can.msg, image, 1000);
                assert_int_equal(can.last, GW_PROTO_DONE);
                teardown(state);
        }
}

static void test_fd_receive(void **state)
{
        uint8_t msg[300];

        for (size_t i = 0; i < sizeof(msg); i++)
                msg[i] = (uint8_t) (i * 7);
        fd_cfg(64);
        start_receive();
        can.peer_dl = 64;
        /* A single frame with the escape in a 64-byte frame. */
        assert_true(fake_can_send_message(&can, msg, 62));
        assert_int_equal(can.last, GW_PROTO_DONE);
        assert_int_equal(probe_rx_len, 62);
        assert_memory_equal(probe_rx, msg, 62);
        fake_can_done(&can);

        setup(state);
        fd_cfg(64);
        start_receive();
        can.peer_dl = 64;
        assert_true(fake_can_send_message(&can, msg, sizeof(msg)));
        assert_int_equal(can.last, GW_PROTO_DONE);
        assert_int_equal(probe_rx_len, sizeof(msg));
        assert_memory_equal(probe_rx, msg, sizeof(msg));
}

static void test_fd_bad_single_frames(void **state)
{
        struct gw_can_frame fr = {.id = 0x7e8, .flags = GW_CAN_FD, .len = 12};

        fd_cfg(64);
        start_receive();
        /* Escaped SF_DL longer than the frame, then 0, then a low nibble set: all ignored. */
        fr.data[1] = 11;
        assert_int_equal(fake_can_deliver_frame(&can, &fr), GW_PROTO_CONTINUE);
        fr.data[1] = 0;
        assert_int_equal(fake_can_deliver_frame(&can, &fr), GW_PROTO_CONTINUE);
        fr.data[0] = 0x03;
        fr.data[1] = 3;
        assert_int_equal(fake_can_deliver_frame(&can, &fr), GW_PROTO_CONTINUE);
        assert_int_equal(probe_rx_count, 0);
        fr.data[0] = 0;
        fr.data[1] = 10;
        assert_int_equal(fake_can_deliver_frame(&can, &fr), GW_PROTO_DONE);
        assert_int_equal(probe_rx_len, 10);
}

static void test_config_refused(void **state)
{
        struct gw_isotp t;
        struct gw_isotp_config c;
        struct gw_isotp_next next = {.send_frame = probe_send_frame};

        default_cfg();
        c = probe_cfg;
        c.tx_dl = 12; /* FD length on a classic link */
        assert_int_equal(gw_isotp_init(&t, &c, &probe_ops, NULL, &next), -EINVAL);
        c = probe_cfg;
        c.fd = true;
        c.tx_dl = 13;
        assert_int_equal(gw_isotp_init(&t, &c, &probe_ops, NULL, &next), -EINVAL);
        c = probe_cfg;
        c.max_rx = GW_ISOTP_MESSAGE_MAX + 1;
        assert_int_equal(gw_isotp_init(&t, &c, &probe_ops, NULL, &next), -EINVAL);
        c = probe_cfg;
        c.padding = 256;
        assert_int_equal(gw_isotp_init(&t, &c, &probe_ops, NULL, &next), -EINVAL);
        assert_int_equal(gw_isotp_stmin_us(0xf1), 100);
        assert_true(gw_isotp_valid_dl(48));
        assert_false(gw_isotp_valid_dl(40));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_send_single_frames, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_one_byte_padded, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_unpadded, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_other_padding, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_empty_and_over_cap, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_eight_bytes, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_4095, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_escape_classic, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_block_size, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_block_size_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_stmin_ms, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_stmin_table, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_stmin_ms_host, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_wait_frames, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_wait_frames_cap, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_overflow, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_bad_flow_status, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_n_bs_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_queue_full, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_queue_stays_full, setup, teardown),
            cmocka_unit_test_setup_teardown(test_send_link_error, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_single_frame, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_multi_frame, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_short_first_frame, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_our_flow_control, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_wrong_sequence, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_sequence_wraps, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_n_cr_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_overflow, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_interrupted, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_short_consecutive_frame, setup, teardown),
            cmocka_unit_test_setup_teardown(test_receive_unpadded_flow_control, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_single_frames, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_segmented, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_escape, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_whole_messages, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_receive, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_bad_single_frames, setup, teardown),
            cmocka_unit_test_setup_teardown(test_config_refused, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
