/* Unit tests for the uart transport, run against real pseudo-terminal pairs: the termios path it
 * takes for ptys, option errors, hangup detection and enumeration. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/options.h"
#include "gw/plugin.h"

extern const struct gw_transport_ops gw_transport_uart_ops;

static const struct gw_transport_ops *ops = &gw_transport_uart_ops;

/* The debug lines the transport logged, for checking which path it took. */
static char logbuf[8192];

static void test_logv(void *ctx, int level, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void test_logv(void *ctx, int level, const char *fmt, va_list ap)
{
        size_t used = strlen(logbuf);

        if (used + 2 >= sizeof(logbuf))
                return;
        vsnprintf(logbuf + used, sizeof(logbuf) - used - 1, fmt, ap);
        strcat(logbuf, "\n");
}

static uint64_t test_now_ms(void *ctx)
{
        return 0;
}

static const struct gw_plugin_services svc = {
    .version = GW_SERVICES_VERSION,
    .logv = test_logv,
    .now_ms = test_now_ms,
};

struct fixture {
        int master;
        char slave[128];
        void *priv;
        bool open;
};

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));
        struct termios tio;

        assert_non_null(f);
        f->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        assert_true(f->master >= 0);
        assert_int_equal(grantpt(f->master), 0);
        assert_int_equal(unlockpt(f->master), 0);
        assert_int_equal(ptsname_r(f->master, f->slave, sizeof(f->slave)), 0);
        /* The master side raw too, so nothing is echoed or translated on the way. */
        assert_int_equal(tcgetattr(f->master, &tio), 0);
        cfmakeraw(&tio);
        assert_int_equal(tcsetattr(f->master, TCSANOW, &tio), 0);
        f->priv = calloc(1, ops->priv_size);
        assert_non_null(f->priv);
        logbuf[0] = '\0';
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        if (f->open)
                ops->close(f->priv);
        if (f->master >= 0)
                close(f->master);
        free(f->priv);
        free(f);
        return 0;
}

/* Opens the transport with "port" = path and the given key/value pairs (NULL-terminated). */
static int open_with(struct fixture *f, const char *path, ...)
{
        struct gw_options *o = gw_options_new();
        const char *k;
        va_list ap;
        int r;

        assert_non_null(o);
        if (path)
                assert_int_equal(gw_options_set(o, "port", path), 0);
        va_start(ap, path);
        while ((k = va_arg(ap, const char *))) {
                const char *v = va_arg(ap, const char *);

                assert_int_equal(gw_options_set(o, k, v), 0);
        }
        va_end(ap);
        r = ops->open(f->priv, o, &svc);
        gw_options_free(o);
        if (r == 0)
                f->open = true;
        return r;
}

/* Reads exactly n bytes from the transport, waiting on its fd (bounded: 2 s). */
static void read_all(struct fixture *f, uint8_t *buf, size_t n)
{
        size_t got = 0;

        while (got < n) {
                struct pollfd p = {.fd = ops->get_fd(f->priv), .events = POLLIN};
                ssize_t r;

                assert_int_equal(poll(&p, 1, 2000), 1);
                r = ops->read(f->priv, buf + got, n - got);
                if (r == -EAGAIN)
                        continue;
                assert_true(r > 0);
                got += (size_t) r;
        }
}

static void test_pty_bytes_both_ways(void **state)
{
        struct fixture *f = *state;
        uint8_t out[256], in[256];
        size_t got = 0;

        for (size_t i = 0; i < sizeof(out); i++)
                out[i] = (uint8_t) i;
        assert_int_equal(open_with(f, f->slave, NULL), 0);
        assert_non_null(strstr(logbuf, "termios"));
        assert_true(ops->get_fd(f->priv) >= 0);

        /* Device to host: every byte value arrives unchanged. */
        assert_int_equal(write(f->master, out, sizeof(out)), (ssize_t) sizeof(out));
        memset(in, 0, sizeof(in));
        read_all(f, in, sizeof(in));
        assert_memory_equal(in, out, sizeof(out));

        /* Host to device. */
        assert_int_equal(ops->write(f->priv, out, sizeof(out)), (ssize_t) sizeof(out));
        memset(in, 0, sizeof(in));
        while (got < sizeof(in)) {
                struct pollfd p = {.fd = f->master, .events = POLLIN};
                ssize_t r;

                assert_int_equal(poll(&p, 1, 2000), 1);
                r = read(f->master, in + got, sizeof(in) - got);
                assert_true(r > 0);
                got += (size_t) r;
        }
        assert_memory_equal(in, out, sizeof(out));
}

static void test_empty_read_is_eagain(void **state)
{
        struct fixture *f = *state;
        uint8_t b;

        assert_int_equal(open_with(f, f->slave, "baud", "921600", NULL), 0);
        assert_int_equal(ops->read(f->priv, &b, 1), -EAGAIN);
        assert_int_equal(ops->read(f->priv, &b, 1), -EAGAIN);
}

static void test_hangup(void **state)
{
        struct fixture *f = *state;
        struct pollfd p;
        uint8_t b[4];
        size_t got = 0;
        ssize_t r = 0;

        assert_int_equal(open_with(f, f->slave, NULL), 0);
        /* Bytes sent before the hangup are still delivered first. */
        assert_int_equal(write(f->master, "ok", 2), 2);
        close(f->master);
        f->master = -1;
        p = (struct pollfd){.fd = ops->get_fd(f->priv), .events = POLLIN};
        assert_int_equal(poll(&p, 1, 2000), 1);
        assert_true(p.revents & POLLHUP);
        for (int i = 0; i < 4; i++) {
                r = ops->read(f->priv, b + got, sizeof(b) - got);
                if (r <= 0)
                        break;
                got += (size_t) r;
        }
        assert_int_equal(r, -EPIPE);
        /* The kernel may drop what was queued when the master hangs up; never garble it. */
        if (got > 0) {
                assert_int_equal(got, 2);
                assert_memory_equal(b, "ok", 2);
        }
        assert_int_equal(ops->read(f->priv, b, sizeof(b)), -EPIPE);
        assert_int_equal(ops->write(f->priv, "x", 1), -EPIPE);
}

/* Serial bridges are reached through a stable symlink, like the simulators' --link. */
static void test_symlink_and_settings(void **state)
{
        struct fixture *f = *state;
        char link[64];
        uint8_t in[3];

        snprintf(link, sizeof(link), "/tmp/test-uart-%d", (int) getpid());
        unlink(link);
        assert_int_equal(symlink(f->slave, link), 0);
        /* A pty takes 8E2 and RTS/CTS without complaint; parity is dropped by the pty itself. */
        assert_int_equal(open_with(f, link, "parity", "even", "stop-bits", "2", "flow", "rtscts",
                                   "data-bits", "8", NULL),
                         0);
        unlink(link);
        assert_int_equal(write(f->master, "abc", 3), 3);
        read_all(f, in, sizeof(in));
        assert_memory_equal(in, "abc", 3);
}

/* A rate without a Bxxx constant goes through termios2 / BOTHER. */
static void test_nonstandard_baud(void **state)
{
        struct fixture *f = *state;
        uint8_t in[1];

        assert_int_equal(open_with(f, f->slave, "baud", "250000", "flow", "xonxoff", NULL), 0);
        assert_int_equal(write(f->master, "z", 1), 1);
        read_all(f, in, 1);
        assert_int_equal(in[0], 'z');
}

static void test_option_errors(void **state)
{
        static const struct {
                const char *key, *value;
        } bad[] = {
            {"baud", "abc"},         {"baud", "0"},       {"baud", "115200x"}, {"baud", "-9600"},
            {"baud", "99999999999"}, {"parity", "maybe"}, {"parity", ""},      {"stop-bits", "3"},
            {"stop-bits", "1.5"},    {"data-bits", "9"},  {"data-bits", "4"},  {"flow", "dsrdtr"},
        };
        struct fixture *f = *state;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                logbuf[0] = '\0';
                assert_int_equal(open_with(f, f->slave, bad[i].key, bad[i].value, NULL), -EINVAL);
                /* The reason is logged at debug level and names the option. */
                assert_non_null(strstr(logbuf, bad[i].key));
        }
        /* No port at all. */
        assert_int_equal(open_with(f, NULL, "baud", "9600", NULL), -EINVAL);
        assert_non_null(strstr(logbuf, "port"));
        /* Empty port. */
        assert_int_equal(open_with(f, "", NULL), -EINVAL);
}

static void test_missing_and_wrong_paths(void **state)
{
        struct fixture *f = *state;

        assert_int_equal(open_with(f, "/dev/ttyGW-does-not-exist", NULL), -ENOENT);
        assert_int_equal(open_with(f, "/nonexistent-dir/ttyUSB0", NULL), -ENOENT);
        /* Not a character device. */
        assert_int_equal(open_with(f, "/tmp", NULL), -EINVAL);
        /* A character device that is no terminal. */
        assert_int_equal(open_with(f, "/dev/null", NULL), -EINVAL);
}

static int count_cb(const struct gw_link_info *info, void *userdata)
{
        size_t *n = userdata;

        assert_non_null(info->path);
        assert_string_equal(info->transport, "uart");
        (*n)++;
        return 0;
}

static int stop_cb(const struct gw_link_info *info, void *userdata)
{
        return 42;
}

static void test_enumerate(void **state)
{
        size_t n = 0;
        int r;

        (void) state;
        assert_non_null(ops->enumerate);
        r = ops->enumerate(&svc, count_cb, &n);
        assert_int_equal(r, 0);
        /* Stopping early hands back the callback's value, when there is anything to list. */
        r = ops->enumerate(&svc, stop_cb, NULL);
        assert_int_equal(r, n > 0 ? 42 : 0);
}

/* Parity on a pty, opened again and again (as gatewayd does per deployment): the pty drops
 * parity, which must not make the second open fail (glibc's tcsetattr() reads PARENB back). */
static void test_parity_on_pty_reopened(void **state)
{
        struct fixture *f = *state;

        for (int i = 0; i < 3; i++) {
                assert_int_equal(open_with(f, f->slave, "parity", "even", "baud", "460800", NULL),
                                 0);
                ops->close(f->priv);
                f->open = false;
        }
}

/* A pty has no modem lines: set_lines says so (-ENOTTY) instead of pretending; a line the ABI
 * does not name is refused. */
static void test_set_lines_pty(void **state)
{
        struct fixture *f = *state;

        assert_non_null(ops->set_lines);
        assert_int_equal(open_with(f, f->slave, NULL), 0);
        assert_int_equal(ops->set_lines(f->priv, GW_LINE_DTR, GW_LINE_DTR), -ENOTTY);
        assert_int_equal(ops->set_lines(f->priv, GW_LINE_RTS, 0), -ENOTTY);
        assert_int_equal(ops->set_lines(f->priv, 1u << 7, 0), -EINVAL);
        /* Nothing asked: nothing touched. */
        assert_int_equal(ops->set_lines(f->priv, 0, 0), 0);
}

static void test_ops_table(void **state)
{
        (void) state;
        assert_int_equal(ops->version, GW_TRANSPORT_OPS_VERSION);
        assert_string_equal(ops->name, "uart");
        assert_int_equal(ops->shape, GW_LINK_STREAM);
        assert_true(ops->priv_size > 0);
        assert_non_null(ops->open);
        assert_non_null(ops->close);
        assert_non_null(ops->get_fd);
        assert_non_null(ops->read);
        assert_non_null(ops->write);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_ops_table),
            cmocka_unit_test_setup_teardown(test_pty_bytes_both_ways, setup, teardown),
            cmocka_unit_test_setup_teardown(test_empty_read_is_eagain, setup, teardown),
            cmocka_unit_test_setup_teardown(test_hangup, setup, teardown),
            cmocka_unit_test_setup_teardown(test_symlink_and_settings, setup, teardown),
            cmocka_unit_test_setup_teardown(test_nonstandard_baud, setup, teardown),
            cmocka_unit_test_setup_teardown(test_option_errors, setup, teardown),
            cmocka_unit_test_setup_teardown(test_missing_and_wrong_paths, setup, teardown),
            cmocka_unit_test(test_enumerate),
            cmocka_unit_test_setup_teardown(test_set_lines_pty, setup, teardown),
            cmocka_unit_test_setup_teardown(test_parity_on_pty_reopened, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
