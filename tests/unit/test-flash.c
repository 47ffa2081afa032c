/* The flash job (core/flash.c) with fake plugins: the frames link shape end to end through the
 * loop (a frame sent by the protocol reaches the transport, one received reaches the
 * protocol), shapes that do not fit refused, a protocol's link defaults under the node's own
 * transport settings, and modem lines offered only when the transport has them. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/flash.h"
#include "gw/log.h"
#include "gw/loop.h"

/* ---- A frames transport: frames sent are kept, frames to receive are queued by the test. */

#define QUEUE 8

static struct {
        struct gw_can_frame sent[QUEUE];
        size_t n_sent;
        struct gw_can_frame rx[QUEUE];
        size_t rx_head, rx_tail;
        int efd;
        int rx_error;    /* returned once the queue is empty, when < 0 */
        const char *why; /* link_error() once rx_error is set */
        struct gw_can_link_info info;
        char parity[16]; /* the "parity" option open() was given ("" = none) */
} bus;

static int frames_open(void *priv, const struct gw_options *opts,
                       const struct gw_plugin_services *svc)
{
        const char *parity = gw_options_get(opts, "parity");

        snprintf(bus.parity, sizeof(bus.parity), "%s", parity ? parity : "");
        bus.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        bus.info = (struct gw_can_link_info){.tx_id = 0x7e0,
                                             .rx_id = 0x7e8,
                                             .functional_id = UINT32_MAX,
                                             .tx_dl = 8,
                                             .bitrate = 500000,
                                             .bus = "fake0"};
        return bus.efd >= 0 ? 0 : -errno;
}

static void frames_close(void *priv)
{
        close(bus.efd);
        bus.efd = -1;
}

static int frames_get_fd(void *priv)
{
        return bus.efd;
}

static const struct gw_can_link_info *frames_can_info(void *priv)
{
        return &bus.info;
}

static int frames_send(void *priv, const struct gw_can_frame *f)
{
        if (bus.n_sent == QUEUE)
                return -ENOBUFS;
        bus.sent[bus.n_sent++] = *f;
        return 0;
}

static int frames_recv(void *priv, struct gw_can_frame *ret)
{
        uint64_t v;

        if (bus.rx_head == bus.rx_tail) {
                if (read(bus.efd, &v, sizeof(v)) < 0) {
                        /* Nothing pending on the fd either. */
                }
                return bus.rx_error < 0 ? bus.rx_error : -EAGAIN;
        }
        *ret = bus.rx[bus.rx_head++ % QUEUE];
        return 1;
}

static const char *frames_link_error(void *priv)
{
        return bus.rx_error < 0 ? bus.why : NULL;
}

/* The test's side: a frame the node sends. */
static void bus_deliver(uint32_t id, const char *data)
{
        struct gw_can_frame f = {.id = id, .len = (uint8_t) strlen(data)};
        uint64_t one = 1;

        memcpy(f.data, data, f.len);
        bus.rx[bus.rx_tail++ % QUEUE] = f;
        assert_int_equal(write(bus.efd, &one, sizeof(one)), (ssize_t) sizeof(one));
}

static const char *const frames_keys[] = {"port", "parity", NULL};

static const struct gw_transport_ops frames_transport = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "fake-can",
    .shape = GW_LINK_FRAMES,
    .priv_size = 8,
    .open = frames_open,
    .close = frames_close,
    .get_fd = frames_get_fd,
    .options = frames_keys,
    .can_info = frames_can_info,
    .send_frame = frames_send,
    .recv_frame = frames_recv,
    .link_error = frames_link_error,
};

/* ---- A frames protocol: install sends "ping" to the node's tx id and succeeds on "pong" from
 * its rx id; any other frame fails it. */

struct ping {
        const struct gw_proto_host *host;
        unsigned frames;
};

/* install() also arms the timer, which then fails the install (-ETIMEDOUT). */
static bool ping_arm_timer;

static int ping_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct ping *p = priv;

        p->host = host;
        return 0;
}

static void ping_done(void *priv)
{
}

static int ping_install(void *priv, const struct gw_reader *reader)
{
        struct ping *p = priv;
        const struct gw_can_link_info *info;
        struct gw_can_frame f = {.len = 4};

        assert_non_null(p->host->can_info);
        assert_non_null(p->host->send_frame);
        assert_null(p->host->write);
        info = p->host->can_info(p->host->ctx);
        assert_non_null(info);
        f.id = info->tx_id;
        memcpy(f.data, "ping", 4);
        if (ping_arm_timer)
                p->host->set_deadline(p->host->ctx, p->host->now_ms(p->host->ctx) + 1);
        return p->host->send_frame(p->host->ctx, &f);
}

static int ping_frame(void *priv, const struct gw_can_frame *f)
{
        struct ping *p = priv;

        p->frames++;
        if (f->id == 0x7e8 && f->len == 4 && memcmp(f->data, "pong", 4) == 0)
                return GW_PROTO_DONE;
        p->host->set_error(p->host->ctx, "unexpected frame %03x", (unsigned) f->id);
        return -EBADMSG;
}

static int ping_timeout(void *priv)
{
        struct ping *p = priv;

        p->host->set_error(p->host->ctx, "no pong");
        return -ETIMEDOUT;
}

static const char *const ping_keys[] = {NULL};
static const char *const ping_defaults[] = {"parity=even", NULL};

static const struct gw_protocol_ops ping_protocol = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "ping",
    .shape = GW_LINK_FRAMES,
    .priv_size = sizeof(struct ping),
    .init = ping_init,
    .done = ping_done,
    .install = ping_install,
    .timeout = ping_timeout,
    .options = ping_keys,
    .link_defaults = ping_defaults,
    .frame = ping_frame,
};

struct outcome {
        struct gw_loop *loop;
        int result;
        bool finished;
        char reason[128];
};

static void on_finished(void *userdata, int result, const char *reason)
{
        struct outcome *o = userdata;

        o->finished = true;
        o->result = result;
        snprintf(o->reason, sizeof(o->reason), "%s", reason ? reason : "");
        gw_loop_exit(o->loop, 0);
}

static ssize_t no_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        return 0;
}

/* Runs an install through transport t on a fresh job; deliver() is what the node sends once the
 * job is started. */
static void run_install_with(const struct gw_transport_ops *t, struct gw_options *topts,
                             void (*deliver)(void), struct outcome *o)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_finished};
        struct gw_reader reader = {.size = 0, .name = "x", .pread = no_pread};
        struct gw_flash *f = NULL;

        memset(&bus, 0, sizeof(bus));
        bus.efd = -1;
        memset(o, 0, sizeof(*o));
        assert_int_equal(gw_loop_new(&o->loop), 0);
        assert_int_equal(gw_flash_new(o->loop, "ecu-1", t, topts, &ping_protocol, topts, &f), 0);
        assert_int_equal(gw_flash_install(f, &reader, &cbs, o), 0);
        deliver();
        while (!o->finished)
                assert_int_equal(gw_loop_iterate(o->loop, 2000), 0);
        gw_flash_free(f);
        gw_loop_free(o->loop);
}

static void run_install(struct gw_options *topts, void (*deliver)(void), struct outcome *o)
{
        run_install_with(&frames_transport, topts, deliver, o);
}

static void deliver_pong(void)
{
        bus_deliver(0x7e8, "pong");
}

static void deliver_noise(void)
{
        bus_deliver(0x123, "junk");
}

static void deliver_bus_down(void)
{
        uint64_t one = 1;

        bus.rx_error = -ENETDOWN;
        assert_int_equal(write(bus.efd, &one, sizeof(one)), (ssize_t) sizeof(one));
}

static void deliver_link_failed_quietly(void)
{
        bus.rx_error = -ENETDOWN;
        bus.why = "slcan adapter /dev/ttyACM0: does not answer";
}

static void deliver_bus_down_why(void)
{
        bus.why = "slcan adapter /dev/ttyACM0: does not answer";
        deliver_bus_down();
}

/* The transport says why the link failed (ops version 6): that is the reason reported, whatever
 * the protocol made of it; a transport of version 5 is not asked. */
static void test_link_error(void **state)
{
        struct gw_options *topts = gw_options_new();
        struct gw_transport_ops v5 = frames_transport;
        struct outcome o;

        run_install(topts, deliver_bus_down_why, &o);
        assert_int_equal(o.result, -ENETDOWN);
        assert_string_equal(o.reason, "link lost: slcan adapter /dev/ttyACM0: does not answer");

        /* The protocol fails on its own (a timeout) after the link went down unnoticed. */
        ping_arm_timer = true;
        run_install(topts, deliver_link_failed_quietly, &o);
        ping_arm_timer = false;
        assert_int_equal(o.result, -ETIMEDOUT);
        assert_string_equal(o.reason, "link lost: slcan adapter /dev/ttyACM0: does not answer");

        v5.version = 5;
        v5.link_error = NULL;
        run_install_with(&v5, topts, deliver_bus_down_why, &o);
        assert_string_equal(o.reason, "link lost: the CAN bus or adapter is down");
        gw_options_free(topts);
}

static void test_frames_round_trip(void **state)
{
        struct gw_options *topts = gw_options_new();
        struct outcome o;

        assert_non_null(topts);
        run_install(topts, deliver_pong, &o);
        assert_int_equal(o.result, 0);
        assert_int_equal(bus.n_sent, 1);
        assert_int_equal(bus.sent[0].id, 0x7e0);
        assert_memory_equal(bus.sent[0].data, "ping", 4);
        /* The protocol's link default reached the transport. */
        assert_string_equal(bus.parity, "even");

        /* The node's own setting wins over the default. */
        assert_int_equal(gw_options_set(topts, "parity", "none"), 0);
        run_install(topts, deliver_pong, &o);
        assert_int_equal(o.result, 0);
        assert_string_equal(bus.parity, "none");

        run_install(topts, deliver_noise, &o);
        assert_int_equal(o.result, -EBADMSG);
        assert_string_equal(o.reason, "unexpected frame 123");

        run_install(topts, deliver_bus_down, &o);
        assert_int_equal(o.result, -ENETDOWN);
        assert_string_equal(o.reason, "link lost: the CAN bus or adapter is down");
        gw_options_free(topts);
}

/* A protocol for another shape, or a frames transport without the frame ops, is refused. */
static void test_shapes_refused(void **state)
{
        struct gw_protocol_ops stream_proto = ping_protocol;
        struct gw_transport_ops old = frames_transport;
        struct gw_options *o = gw_options_new();
        struct gw_loop *loop;
        struct gw_flash *f = NULL;

        assert_int_equal(gw_loop_new(&loop), 0);
        stream_proto.shape = GW_LINK_STREAM;
        assert_int_equal(gw_flash_new(loop, "n", &frames_transport, o, &stream_proto, o, &f),
                         -EPROTO);
        old.recv_frame = NULL;
        assert_int_equal(gw_flash_new(loop, "n", &old, o, &ping_protocol, o, &f), -EPROTO);
        old = frames_transport;
        old.version = 4;
        assert_int_equal(gw_flash_new(loop, "n", &old, o, &ping_protocol, o, &f), -EPROTO);
        stream_proto = ping_protocol;
        stream_proto.version = 5;
        assert_int_equal(gw_flash_new(loop, "n", &frames_transport, o, &stream_proto, o, &f),
                         -EPROTO);
        assert_null(f);
        gw_options_free(o);
        gw_loop_free(loop);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_frames_round_trip),
            cmocka_unit_test(test_shapes_refused),
            cmocka_unit_test(test_link_error),
        };

        gw_log_set_max_level(getenv("GW_TEST_VERBOSE") ? LOG_DEBUG : LOG_EMERG);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
