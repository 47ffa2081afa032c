/* The event loop: fds, one-shot timers, signals, sources freed from their own callbacks,
 * and exit codes. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/loop.h"

struct rec {
        int order[8];
        int n;
        struct gw_loop *loop;
        char got;
};

static int record_cb(struct gw_source *s, uint64_t now, void *userdata)
{
        int *slot = userdata;

        assert_true(now > 0);
        (*slot)++;
        return 0;
}

static void test_timers_fire_once_in_time(void **state)
{
        struct gw_loop *l;
        struct gw_source *a, *b;
        int fa = 0, fb = 0;
        uint64_t t0 = gw_now_ms();

        assert_int_equal(gw_loop_new(&l), 0);
        assert_int_equal(gw_loop_add_timer(l, t0 + 30, record_cb, &fa, &a), 0);
        assert_int_equal(gw_loop_add_timer(l, 0, record_cb, &fb, &b), 0); /* disarmed */
        while (fa == 0)
                assert_int_equal(gw_loop_iterate(l, 1000), 0);
        assert_true(gw_now_ms() >= t0 + 30);
        assert_int_equal(fb, 0);
        /* One-shot: iterating again does not fire it. */
        assert_int_equal(gw_loop_iterate(l, 20), 0);
        assert_int_equal(fa, 1);
        /* Re-armed, it fires again. */
        assert_int_equal(gw_source_set_time(a, gw_now_ms()), 0);
        assert_int_equal(gw_loop_iterate(l, 1000), 0);
        assert_int_equal(fa, 2);
        gw_source_free(a);
        gw_source_free(b);
        gw_loop_free(l);
}

/* A microsecond deadline fires once the clock has passed it, never before. How late it fires
 * is printed, not asserted: that is the machine's scheduling latency. */
static void test_timer_microseconds(void **state)
{
        struct gw_loop *l;
        struct gw_source *a;
        int fa = 0;
        uint64_t late_max = 0;

        assert_int_equal(gw_loop_new(&l), 0);
        assert_int_equal(gw_loop_add_timer(l, 0, record_cb, &fa, &a), 0);
        for (int i = 0; i < 20; i++) {
                uint64_t at = gw_now_us() + 1500, fired;

                assert_int_equal(gw_source_set_time_us(a, at), 0);
                while (fa == i)
                        assert_int_equal(gw_loop_iterate(l, 1000), 0);
                fired = gw_now_us();
                assert_true(fired >= at);
                if (fired - at > late_max)
                        late_max = fired - at;
        }
        assert_int_equal(fa, 20);
        /* The ms and us clocks are the same clock. */
        assert_true(gw_now_us() / 1000 >= gw_now_ms() - 1);
        assert_true(gw_now_ms() >= gw_now_us() / 1000);
        print_message("latest firing: %llu us after the deadline\n", (unsigned long long) late_max);
        gw_source_free(a);
        gw_loop_free(l);
}

static int io_cb(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct rec *r = userdata;

        assert_true(revents & POLLIN);
        assert_int_equal(read(fd, &r->got, 1), 1);
        /* Freeing our own source from the callback is allowed. */
        gw_source_free(s);
        r->n++;
        return 0;
}

static void test_io_and_self_free(void **state)
{
        struct gw_loop *l;
        struct rec r = {0};
        int p[2];

        assert_int_equal(pipe(p), 0);
        assert_int_equal(gw_loop_new(&l), 0);
        assert_int_equal(gw_loop_add_io(l, p[0], POLLIN, io_cb, &r, NULL), 0);
        assert_int_equal(write(p[1], "x", 1), 1);
        assert_int_equal(write(p[1], "y", 1), 1);
        assert_int_equal(gw_loop_iterate(l, 1000), 0);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.got, 'x');
        /* The source is gone: data still waiting is not dispatched. */
        assert_int_equal(gw_loop_iterate(l, 10), 0);
        assert_int_equal(r.n, 1);
        gw_loop_free(l);
        close(p[0]);
        close(p[1]);
}

static int sig_cb(struct gw_source *s, int signo, void *userdata)
{
        struct rec *r = userdata;

        r->order[r->n++] = signo;
        gw_loop_exit(r->loop, 7);
        return 0;
}

static void test_signal_and_exit_code(void **state)
{
        struct rec r = {0};

        assert_int_equal(gw_loop_new(&r.loop), 0);
        assert_int_equal(gw_loop_add_signal(r.loop, SIGUSR1, sig_cb, &r, NULL), 0);
        raise(SIGUSR1);
        assert_int_equal(gw_loop_run(r.loop), 7);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.order[0], SIGUSR1);
        gw_loop_free(r.loop);
}

static int failing_cb(struct gw_source *s, uint64_t now, void *userdata)
{
        return -EIO;
}

static void test_callback_error_stops_loop(void **state)
{
        struct gw_loop *l;

        assert_int_equal(gw_loop_new(&l), 0);
        assert_int_equal(gw_loop_add_timer(l, gw_now_ms(), failing_cb, NULL, NULL), 0);
        assert_int_equal(gw_loop_run(l), -EIO);
        gw_loop_free(l);
}

static void test_bad_arguments(void **state)
{
        struct gw_loop *l;

        assert_int_equal(gw_loop_new(&l), 0);
        assert_int_equal(gw_loop_add_io(l, -1, POLLIN, io_cb, NULL, NULL), -EINVAL);
        assert_int_equal(gw_loop_add_timer(l, 1, NULL, NULL, NULL), -EINVAL);
        assert_int_equal(gw_loop_add_signal(l, 0, sig_cb, NULL, NULL), -EINVAL);
        assert_null(gw_source_free(NULL));
        assert_null(gw_loop_free(NULL));
        gw_loop_free(l);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_timers_fire_once_in_time),
            cmocka_unit_test(test_timer_microseconds),
            cmocka_unit_test(test_io_and_self_free),
            cmocka_unit_test(test_signal_and_exit_code),
            cmocka_unit_test(test_callback_error_stops_loop),
            cmocka_unit_test(test_bad_arguments),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
