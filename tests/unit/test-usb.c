/* Unit tests for the usb transport, what needs no device: the device-selection options
 * ("VID:PID[,serial=S][,path=P]", "dfu-usb"), port path syntax, matching a device against
 * them, the libusb error adapter, and open() failing cleanly. The integration test
 * gwflash-usb drives real transfers against the DFU emulator. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libusb.h>

#include "../../transports/usb/usb.h"
#include "gw/options.h"
#include "gw/plugin.h"

extern const struct gw_transport_ops gw_transport_usb_ops;

static const struct gw_transport_ops *ops = &gw_transport_usb_ops;

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

static void test_parse_id(void **state)
{
        static const struct {
                const char *s;
                int r;
                uint16_t vid, pid;
        } v[] = {
            {"0483:df11", 0, 0x0483, 0xdf11}, {"0483:DF11", 0, 0x0483, 0xdf11},
            {"483:df11", 0, 0x0483, 0xdf11},  {"1:2", 0, 1, 2},
            {"ffff:ffff", 0, 0xffff, 0xffff}, {"0000:0000", 0, 0, 0},
            {"10483:df11", -EINVAL, 0, 0},    {"0483:df110", -EINVAL, 0, 0},
            {"0483df11", -EINVAL, 0, 0},      {":df11", -EINVAL, 0, 0},
            {"0483:", -EINVAL, 0, 0},         {"0x483:df11", -EINVAL, 0, 0},
            {"0483:dg11", -EINVAL, 0, 0},     {"0483:df11:1", -EINVAL, 0, 0},
            {" 0483:df11", -EINVAL, 0, 0},    {"", -EINVAL, 0, 0},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                uint16_t vid = 0x5555, pid = 0x5555;

                assert_int_equal(gw_usb_parse_id(v[i].s, &vid, &pid), v[i].r);
                if (v[i].r == 0) {
                        assert_int_equal(vid, v[i].vid);
                        assert_int_equal(pid, v[i].pid);
                } else {
                        /* ret_* written only on success. */
                        assert_int_equal(vid, 0x5555);
                        assert_int_equal(pid, 0x5555);
                }
        }
        assert_int_equal(gw_usb_parse_id(NULL, NULL, NULL), -EINVAL);
}

static void test_check_path(void **state)
{
        static const struct {
                const char *s;
                int r;
        } v[] = {
            {"1-2", 0},
            {"1-2.3", 0},
            {"255-255.255", 0},
            {"3-1.2.3.4.5.6.7", 0},
            {"3-1.2.3.4.5.6.7.8", -EINVAL}, /* USB has at most 7 tiers below the root */
            {"0-1", -EINVAL},
            {"1-0", -EINVAL},
            {"256-1", -EINVAL},
            {"1-256", -EINVAL},
            {"1-0001", -EINVAL},
            {"1", -EINVAL},
            {"1-", -EINVAL},
            {"1-2.", -EINVAL},
            {"1-2..3", -EINVAL},
            {"-2", -EINVAL},
            {"1-2-3", -EINVAL},
            {"a-1", -EINVAL},
            {"1-2 ", -EINVAL},
            {"", -EINVAL},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                if (gw_usb_check_path(v[i].s) != v[i].r)
                        fail_msg("path '%s': expected %d", v[i].s, v[i].r);
        }
        assert_int_equal(gw_usb_check_path(NULL), -EINVAL);
}

/* Options from "key=value" pairs, NULL-terminated. */
static struct gw_options *options(const char *first, ...)
{
        struct gw_options *o = gw_options_new();
        const char *kv = first;
        va_list ap;

        assert_non_null(o);
        va_start(ap, first);
        while (kv) {
                const char *eq = strchr(kv, '=');
                char key[64];

                assert_non_null(eq);
                snprintf(key, sizeof(key), "%.*s", (int) (eq - kv), kv);
                assert_int_equal(gw_options_set(o, key, eq + 1), 0);
                kv = va_arg(ap, const char *);
        }
        va_end(ap);
        return o;
}

static void test_match_parse(void **state)
{
        static const struct {
                const char *usb, *serial, *path, *dfu, *reopen;
                int r;
                uint16_t vid, pid;
                const char *want_serial, *want_path, *want_reopen;
                bool has_dfu;
                uint16_t dfu_vid, dfu_pid;
                const char *why; /* a word the reason must contain */
        } v[] = {
            {.usb = "0483:df11", .vid = 0x0483, .pid = 0xdf11, .want_serial = "", .want_path = ""},
            {.usb = "0483:df11,serial=ABC123",
             .vid = 0x0483,
             .pid = 0xdf11,
             .want_serial = "ABC123",
             .want_path = ""},
            {.usb = "0483:df11,path=1-2.3",
             .vid = 0x0483,
             .pid = 0xdf11,
             .want_serial = "",
             .want_path = "1-2.3"},
            {.usb = "0483:df11,serial=S1,path=2-1",
             .vid = 0x0483,
             .pid = 0xdf11,
             .want_serial = "S1",
             .want_path = "2-1"},
            {.usb = "0483:df11,path=2-1,serial=S1",
             .vid = 0x0483,
             .pid = 0xdf11,
             .want_serial = "S1",
             .want_path = "2-1"},
            /* The separate options of gatewayd.yaml. */
            {.usb = "1209:0001",
             .serial = "X9",
             .path = "4-1.1",
             .vid = 0x1209,
             .pid = 0x0001,
             .want_serial = "X9",
             .want_path = "4-1.1"},
            /* Given twice: the same value is fine, two values are not. */
            {.usb = "1209:0001,serial=X9",
             .serial = "X9",
             .vid = 0x1209,
             .pid = 0x0001,
             .want_serial = "X9",
             .want_path = ""},
            {.usb = "1209:0001,serial=X9", .serial = "Y9", .r = -EINVAL, .why = "serial"},
            {.usb = "1209:0001,path=1-1", .path = "1-2", .r = -EINVAL, .why = "path"},
            /* The ids the board has in DFU mode. */
            {.usb = "1209:0001",
             .dfu = "0483:df11",
             .vid = 0x1209,
             .pid = 0x0001,
             .want_serial = "",
             .want_path = "",
             .has_dfu = true,
             .dfu_vid = 0x0483,
             .dfu_pid = 0xdf11},
            {.usb = "1209:0001", .dfu = "0483", .r = -EINVAL, .why = "dfu-usb"},
            /* The port the core looks for a re-enumerated board at. */
            {.usb = "1209:0001,serial=X9",
             .reopen = "3-1.4",
             .vid = 0x1209,
             .pid = 0x0001,
             .want_serial = "X9",
             .want_path = "",
             .want_reopen = "3-1.4"},
            {.usb = "1209:0001", .reopen = "3", .r = -EINVAL, .why = "reopen-path"},
            {.usb = "1209:0001", .reopen = "", .r = -EINVAL, .why = "reopen-path"},
            {.r = -EINVAL, .why = "required"},
            {.usb = "", .r = -EINVAL, .why = "required"},
            {.usb = "0483", .r = -EINVAL, .why = "VID:PID"},
            {.usb = "0483:df11,", .r = -EINVAL, .why = "serial=S"},
            {.usb = "0483:df11,serial=", .r = -EINVAL, .why = "serial"},
            {.usb = "0483:df11,path=1", .r = -EINVAL, .why = "path"},
            {.usb = "0483:df11,path=1-2.3.4.5.6.7.8.9", .r = -EINVAL, .why = "path"},
            {.usb = "0483:df11,alt=0", .r = -EINVAL, .why = "serial=S"},
            {.usb = "0483:df11;serial=x", .r = -EINVAL, .why = "VID:PID"},
            {.usb = "0483:df11,serial=0123456789012345678901234567890123456789012345678901234567890"
                    "1234567890123456789012345678901234567890123456789012345678901234567",
             .r = -EINVAL,
             .why = "127"},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct gw_options *o = gw_options_new();
                struct gw_usb_match m;
                const char *why = NULL;
                int r;

                assert_non_null(o);
                if (v[i].usb)
                        assert_int_equal(gw_options_set(o, "usb", v[i].usb), 0);
                if (v[i].serial)
                        assert_int_equal(gw_options_set(o, "serial", v[i].serial), 0);
                if (v[i].path)
                        assert_int_equal(gw_options_set(o, "path", v[i].path), 0);
                if (v[i].dfu)
                        assert_int_equal(gw_options_set(o, "dfu-usb", v[i].dfu), 0);
                if (v[i].reopen)
                        assert_int_equal(gw_options_set(o, GW_OPTION_REOPEN_PATH, v[i].reopen), 0);
                memset(&m, 0x5a, sizeof(m));
                r = gw_usb_match_parse(o, &m, &why);
                gw_options_free(o);
                if (r != v[i].r)
                        fail_msg("case %zu (%s): got %d, expected %d", i, v[i].usb ? v[i].usb : "-",
                                 r, v[i].r);
                if (r < 0) {
                        assert_non_null(why);
                        if (!strstr(why, v[i].why))
                                fail_msg("case %zu: reason '%s' lacks '%s'", i, why, v[i].why);
                        assert_int_equal(m.vid, 0x5a5a); /* untouched on failure */
                        continue;
                }
                assert_int_equal(m.vid, v[i].vid);
                assert_int_equal(m.pid, v[i].pid);
                assert_string_equal(m.serial, v[i].want_serial);
                assert_string_equal(m.path, v[i].want_path);
                assert_string_equal(m.reopen_path, v[i].want_reopen ? v[i].want_reopen : "");
                assert_int_equal(m.has_dfu_ids, v[i].has_dfu);
                if (v[i].has_dfu) {
                        assert_int_equal(m.dfu_vid, v[i].dfu_vid);
                        assert_int_equal(m.dfu_pid, v[i].dfu_pid);
                }
        }
}

static void test_match_device(void **state)
{
        struct gw_options *o;
        struct gw_usb_match m;

        o = options("usb=1209:0001", "dfu-usb=0483:df11", NULL);
        assert_int_equal(gw_usb_match_parse(o, &m, NULL), 0);
        gw_options_free(o);
        /* Either id pair: the board in runtime mode and after DFU_DETACH. */
        assert_true(gw_usb_match_device(&m, 0x1209, 0x0001, NULL, "1-1"));
        assert_true(gw_usb_match_device(&m, 0x0483, 0xdf11, "S", "1-1"));
        assert_false(gw_usb_match_device(&m, 0x0483, 0x0001, NULL, "1-1"));
        assert_false(gw_usb_match_device(&m, 0x1209, 0xdf11, NULL, "1-1"));

        o = options("usb=0483:df11,serial=AB", "path=1-2.3", NULL);
        assert_int_equal(gw_usb_match_parse(o, &m, NULL), 0);
        gw_options_free(o);
        assert_true(gw_usb_match_device(&m, 0x0483, 0xdf11, "AB", "1-2.3"));
        assert_false(gw_usb_match_device(&m, 0x0483, 0xdf11, "AC", "1-2.3"));
        assert_false(gw_usb_match_device(&m, 0x0483, 0xdf11, "AB", "1-2"));
        /* A serial that must match but cannot be read does not match. */
        assert_false(gw_usb_match_device(&m, 0x0483, 0xdf11, NULL, "1-2.3"));
        assert_false(gw_usb_match_device(&m, 0x0483, 0xdf11, "AB", NULL));
}

/* claims(): yes, no, and "perhaps" for a device whose serial could not be read. */
static void test_claims(void **state)
{
        struct gw_options *o = options("usb=0483:df11,serial=AB", NULL);
        struct gw_link_info info = {
            .transport = "usb", .path = "1-2", .vid = 0x0483, .pid = 0xdf11};

        info.serial = "AB";
        assert_int_equal(ops->claims(o, &info), 1);
        info.serial = "CD";
        assert_int_equal(ops->claims(o, &info), 0);
        /* Unknown serial: no, unless the device could not be opened to read it. */
        info.serial = NULL;
        assert_int_equal(ops->claims(o, &info), 0);
        info.error = -EACCES;
        assert_int_equal(ops->claims(o, &info), 2);
        /* ... and then only when everything else matches. */
        info.pid = 0xdf12;
        assert_int_equal(ops->claims(o, &info), 0);
        gw_options_free(o);
        /* Without a serial asked for there is no doubt. */
        o = options("usb=0483:df11", NULL);
        info.pid = 0xdf11;
        assert_int_equal(ops->claims(o, &info), 1);
        gw_options_free(o);
        o = options("usb=zz", NULL);
        assert_int_equal(ops->claims(o, &info), -EINVAL);
        gw_options_free(o);
}

static void test_errno(void **state)
{
        static const struct {
                int code, e;
        } v[] = {
            {LIBUSB_SUCCESS, 0},
            {LIBUSB_TRANSFER_COMPLETED, 0},
            {LIBUSB_TRANSFER_STALL, -EPIPE},
            {LIBUSB_TRANSFER_NO_DEVICE, -ENODEV},
            {LIBUSB_TRANSFER_TIMED_OUT, -ETIMEDOUT},
            {LIBUSB_TRANSFER_CANCELLED, -ECANCELED},
            {LIBUSB_TRANSFER_OVERFLOW, -EOVERFLOW},
            {LIBUSB_TRANSFER_ERROR, -EIO},
            {LIBUSB_ERROR_IO, -EIO},
            {LIBUSB_ERROR_INVALID_PARAM, -EINVAL},
            {LIBUSB_ERROR_ACCESS, -EACCES},
            {LIBUSB_ERROR_NO_DEVICE, -ENODEV},
            {LIBUSB_ERROR_NOT_FOUND, -ENOENT},
            {LIBUSB_ERROR_BUSY, -EBUSY},
            {LIBUSB_ERROR_TIMEOUT, -ETIMEDOUT},
            {LIBUSB_ERROR_OVERFLOW, -EOVERFLOW},
            {LIBUSB_ERROR_PIPE, -EPIPE},
            {LIBUSB_ERROR_INTERRUPTED, -EINTR},
            {LIBUSB_ERROR_NO_MEM, -ENOMEM},
            {LIBUSB_ERROR_NOT_SUPPORTED, -EOPNOTSUPP},
            {LIBUSB_ERROR_OTHER, -EIO},
            {-1000, -EIO},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
                assert_int_equal(gw_usb_errno(v[i].code), v[i].e);
}

static void test_ops_shape(void **state)
{
        assert_string_equal(ops->name, "usb");
        assert_int_equal(ops->shape, GW_LINK_CONTROL);
        assert_true(ops->version >= 2);
        assert_non_null(ops->open);
        assert_non_null(ops->close);
        assert_non_null(ops->usb_info);
        assert_non_null(ops->select_alt);
        assert_non_null(ops->control);
        assert_non_null(ops->reset);
        assert_non_null(ops->enumerate);
        /* Not a stream. */
        assert_null(ops->get_fd);
        assert_null(ops->read);
}

static void test_open_errors(void **state)
{
        void *priv = calloc(1, ops->priv_size);
        struct gw_options *o;

        assert_non_null(priv);
        /* Bad options fail before any device is looked at, and say why. */
        logbuf[0] = '\0';
        o = options("usb=0483-df11", NULL);
        assert_int_equal(ops->open(priv, o, &svc), -EINVAL);
        gw_options_free(o);
        assert_non_null(strstr(logbuf, "VID:PID"));

        logbuf[0] = '\0';
        o = options("port=/dev/ttyUSB0", NULL);
        assert_int_equal(ops->open(priv, o, &svc), -EINVAL);
        gw_options_free(o);
        assert_non_null(strstr(logbuf, "required"));

        /* No such device (reserved ids): -ENODEV, and open can be retried (reopen does). */
        for (int i = 0; i < 3; i++) {
                logbuf[0] = '\0';
                o = options("usb=ffff:fffe,serial=none", "dfu-usb=ffff:fffd", NULL);
                assert_int_equal(ops->open(priv, o, &svc), -ENODEV);
                gw_options_free(o);
                assert_non_null(strstr(logbuf, "no device ffff:fffe"));
        }
        free(priv);
}

static int count_link(const struct gw_link_info *info, void *userdata)
{
        unsigned *n = userdata;

        assert_string_equal(info->transport, "usb");
        assert_int_equal(gw_usb_check_path(info->path), 0);
        assert_non_null(strstr(info->description, "DFU"));
        (*n)++;
        return 0;
}

static int stop_at_first(const struct gw_link_info *info, void *userdata)
{
        return 42;
}

static void test_enumerate(void **state)
{
        unsigned n = 0;
        int r;

        /* Whatever is attached (nothing on CI machines): every entry is a DFU device with a
         * valid port path, and a callback's non-zero value stops the walk. */
        assert_int_equal(ops->enumerate(&svc, count_link, &n), 0);
        r = ops->enumerate(NULL, stop_at_first, NULL);
        assert_true(n > 0 ? r == 42 : r == 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_id),    cmocka_unit_test(test_check_path),
            cmocka_unit_test(test_match_parse), cmocka_unit_test(test_match_device),
            cmocka_unit_test(test_claims),      cmocka_unit_test(test_errno),
            cmocka_unit_test(test_ops_shape),   cmocka_unit_test(test_open_errors),
            cmocka_unit_test(test_enumerate),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
