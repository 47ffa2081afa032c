/* The plugin registry: built-ins from the static table, and out-of-tree modules loaded with
 * dlopen through the one entry symbol, refused on an ABI mismatch. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/log.h"
#include "gw/options.h"
#include "gw/registry.h"

static const char *module(const char *name)
{
        static char path[4096];
        const char *dir = getenv("GW_TEST_PLUGINS");

        assert_non_null(dir);
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        return path;
}

static void test_builtins(void **state)
{
        const struct gw_protocol_ops *p = gw_protocol_find("ymodem");
        const struct gw_transport_ops *t = gw_transport_find("uart");

        assert_non_null(p);
        assert_int_equal(p->shape, GW_LINK_STREAM);
        assert_true(p->version >= 1);
        assert_non_null(t);
        assert_int_equal(t->shape, GW_LINK_STREAM);
        assert_null(gw_protocol_find("no-such-protocol"));
        assert_null(gw_transport_find(NULL));
}

static void test_abi_mismatch_refused(void **state)
{
        assert_int_equal(gw_plugin_load(module("libplugin-badabi.so")), -EPROTO);
        assert_null(gw_transport_find("dummy-badabi"));
}

static void test_missing_entry_refused(void **state)
{
        assert_int_equal(gw_plugin_load(module("libplugin-noentry.so")), -ENOEXEC);
}

static void test_missing_file(void **state)
{
        assert_int_equal(gw_plugin_load(module("libplugin-does-not-exist.so")), -ENOEXEC);
}

static void test_load_and_use(void **state)
{
        const struct gw_transport_ops *t;
        struct gw_options *o = gw_options_new();
        char priv[64] = {0};
        size_t n = 0;

        assert_int_equal(gw_plugin_load(module("libplugin-dummy.so")), 0);
        t = gw_transport_find("dummy");
        assert_non_null(t);
        assert_true(t->priv_size <= sizeof(priv));
        assert_int_equal(t->open(priv, o, NULL), 0);
        assert_int_equal(t->write(priv, "abc", 3), 3);
        assert_int_equal(t->read(priv, priv, 1), -EAGAIN);
        t->close(priv);
        assert_int_equal(gw_options_set(o, "fail", "1"), 0);
        assert_int_equal(t->open(priv, o, NULL), -EIO);
        gw_options_free(o);

        /* Listed after the built-ins. */
        while (gw_transport_get(n))
                n++;
        assert_ptr_equal(gw_transport_get(n - 1), t);

        /* The same name twice is refused. */
        assert_int_equal(gw_plugin_load(module("libplugin-dummy.so")), -EEXIST);
}

static void test_load_dir(void **state)
{
        char dir[] = "/tmp/gw-plugins.XXXXXX", link[4200];

        assert_non_null(mkdtemp(dir));
        /* A missing directory is fine: no plugins. */
        assert_int_equal(gw_plugin_load_dir("/nonexistent/gw-plugins"), 0);
        snprintf(link, sizeof(link), "%s/dummy2.so", dir);
        assert_int_equal(symlink(module("libplugin-dummy2.so"), link), 0);
        snprintf(link, sizeof(link), "%s/bad.so", dir);
        assert_int_equal(symlink(module("libplugin-badabi.so"), link), 0);
        snprintf(link, sizeof(link), "%s/README", dir);
        assert_int_equal(symlink("/etc/hostname", link), 0);
        /* One good module loads; the bad one is skipped, not fatal. */
        assert_int_equal(gw_plugin_load_dir(dir), 1);
        assert_non_null(gw_transport_find("dummy2"));
        unlink(link);
        snprintf(link, sizeof(link), "%s/bad.so", dir);
        unlink(link);
        snprintf(link, sizeof(link), "%s/dummy2.so", dir);
        unlink(link);
        rmdir(dir);
}

/* opts from "k=v k=v" (no spaces in values). */
static struct gw_options *kv(const char *spec)
{
        struct gw_options *o = gw_options_new();
        char buf[512], *save = NULL;

        assert_non_null(o);
        snprintf(buf, sizeof(buf), "%s", spec);
        for (char *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
                char *eq = strchr(tok, '=');

                assert_non_null(eq);
                *eq = '\0';
                assert_int_equal(gw_options_set(o, tok, eq + 1), 0);
        }
        return o;
}

/* A node's options checked before anything opens: unknown keys and bad values are refused
 * with a reason naming the plugin and the option; good ones pass; the transport and the
 * protocol sets are checked apart, or as one set (gwflash's). */
static void test_check_options(void **state)
{
        static const struct {
                const char *t, *topts, *p, *popts; /* popts NULL: one set for both */
                int r;
                const char *why[3]; /* words the reason must contain */
        } v[] = {
            {"uart",
             "port=/dev/ttyS0 baud=115200 parity=even",
             "ymodem",
             "ack-timeout-ms=5000 retries=3",
             0,
             {NULL}},
            {"uart",
             "port=/dev/ttyS0 baudrate=9600",
             "ymodem",
             "",
             -EINVAL,
             {"transport uart", "unknown option 'baudrate'", "port, baud"}},
            {"uart",
             "port=/dev/ttyS0 baud=9",
             "ymodem",
             "",
             -EINVAL,
             {"transport uart", "option baud", "50"}},
            {"uart", "baud=9600", "ymodem", "", -EINVAL, {"transport uart", "option port"}},
            {"uart", "port=/dev/ttyS0 flow=maybe", "ymodem", "", -EINVAL, {"option flow"}},
            {"uart",
             "port=/dev/ttyS0",
             "ymodem",
             "ack-timeout=5",
             -EINVAL,
             {"protocol ymodem", "unknown option 'ack-timeout'", "ack-timeout-ms"}},
            {"uart",
             "port=/dev/ttyS0",
             "ymodem",
             "ack-timeout-ms=0",
             -EINVAL,
             {"protocol ymodem", "option ack-timeout-ms", "1 to 3600000"}},
            {"uart", "port=/dev/ttyS0", "ymodem", "filename=a/b", -EINVAL, {"option filename"}},
            /* A transport key in the protocol's set is a mistake too. */
            {"uart",
             "port=/dev/ttyS0",
             "ymodem",
             "baud=9600",
             -EINVAL,
             {"protocol ymodem", "unknown option 'baud'"}},
            /* One set for both: a key either reads is fine, one neither reads is not. */
            {"uart", "port=/dev/ttyS0 baud=9600 retries=2", "ymodem", NULL, 0, {NULL}},
            {"uart",
             "port=/dev/ttyS0 colour=red",
             "ymodem",
             NULL,
             -EINVAL,
             {"unknown option 'colour'", "transport uart reads", "protocol ymodem reads"}},
            {"uart",
             "port=/dev/ttyS0 retries=5000",
             "ymodem",
             NULL,
             -EINVAL,
             {"protocol ymodem", "option retries"}},
            {"usb", "usb=0483:df11 serial=A1", "dfu", "alt=0 address=0x08000000", 0, {NULL}},
            {"usb", "usb=0483", "dfu", "", -EINVAL, {"transport usb", "VID:PID"}},
            {"usb", "usb=0483:df11 dfu-usb=x", "dfu", "", -EINVAL, {"transport usb", "dfu-usb"}},
            /* The core's own key is not a node's. */
            {"usb",
             "usb=0483:df11 reopen-path=1-1",
             "dfu",
             "",
             -EINVAL,
             {"unknown option 'reopen-path'"}},
            {"usb",
             "usb=0483:df11",
             "dfu",
             "transfer-size=8192",
             -EINVAL,
             {"protocol dfu", "option transfer-size"}},
            /* An out-of-tree transport that lists no options: given the benefit of the
             * doubt. */
            {"dummy", "anything=1", "ymodem", "", 0, {NULL}},
        };
        char why[1024];

        /* The dummy module (test_load_and_use loaded it; load it here when run alone). */
        if (!gw_transport_find("dummy"))
                assert_int_equal(gw_plugin_load(module("libplugin-dummy.so")), 0);
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                const struct gw_transport_ops *t = gw_transport_find(v[i].t);
                const struct gw_protocol_ops *p = gw_protocol_find(v[i].p);
                struct gw_options *to, *po;
                int r;

                if (!t || !p) {
                        print_message("case %zu: %s or %s not built in, skipped\n", i, v[i].t,
                                      v[i].p);
                        continue;
                }
                to = kv(v[i].topts);
                po = v[i].popts ? kv(v[i].popts) : to;
                why[0] = '\0';
                r = gw_plugin_check_options(t, to, p, po, why, sizeof(why));
                if (r != v[i].r)
                        fail_msg("case %zu: got %d (%s), expected %d", i, r, why, v[i].r);
                for (size_t k = 0; k < 3 && v[i].why[k]; k++)
                        if (!strstr(why, v[i].why[k]))
                                fail_msg("case %zu: reason '%s' lacks '%s'", i, why, v[i].why[k]);
                if (po != to)
                        gw_options_free(po);
                gw_options_free(to);
        }
        assert_int_equal(gw_plugin_check_options(NULL, NULL, NULL, NULL, why, sizeof(why)),
                         -EINVAL);
}

static ssize_t bytes_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        static const uint8_t data[64] = {0};

        if (off >= sizeof(data))
                return 0;
        if (n > sizeof(data) - off)
                n = sizeof(data) - off;
        memcpy(buf, data + off, n);
        return (ssize_t) n;
}

/* gw_plugin_check_image: a protocol without check_image accepts anything; one with it gets an
 * instance prepared by init(), whose refusal (here a bad option, caught by init()) comes back
 * with its reason. */
static void test_check_image(void **state)
{
        const struct gw_protocol_ops *y = gw_protocol_find("ymodem");
        const struct gw_protocol_ops *d = gw_protocol_find("dfu");
        struct gw_reader r = {.size = 64, .name = "x.bin", .pread = bytes_pread};
        struct gw_options *o = gw_options_new();
        char why[256];

        assert_non_null(o);
        assert_int_equal(gw_plugin_check_image(NULL, o, &r, NULL, why, sizeof(why)), -EINVAL);
        assert_int_equal(gw_plugin_check_image(y ? y : d, o, NULL, NULL, why, sizeof(why)),
                         -EINVAL);
        if (y) {
                assert_null(y->check_image);
                assert_int_equal(gw_plugin_check_image(y, o, &r, NULL, why, sizeof(why)), 0);
        }
        if (d) {
                assert_int_equal(gw_plugin_check_image(d, o, &r, NULL, why, sizeof(why)), 0);
                assert_int_equal(gw_options_set(o, "format", "dfu"), 0);
                assert_int_equal(gw_plugin_check_image(d, o, &r, NULL, why, sizeof(why)), -EBADMSG);
                assert_non_null(strstr(why, "suffix"));
                assert_int_equal(gw_options_set(o, "format", "zip"), 0);
                assert_int_equal(gw_plugin_check_image(d, o, &r, NULL, why, sizeof(why)), -EINVAL);
                assert_non_null(strstr(why, "format"));
        }
        gw_options_free(o);
}

/* A protocol of ops version 5 as a plugin would declare it: link defaults, and installed()
 * saying yes when the facts' "hash" is "same". */
static int v5_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        return 0;
}

static void v5_done(void *priv)
{
}

static int v5_installed(void *priv, const struct gw_reader *reader, const struct gw_options *facts)
{
        const char *h = gw_options_get(facts, "hash");

        if (h && strcmp(h, "unreadable") == 0)
                return -EIO;
        return h && strcmp(h, "same") == 0;
}

static const char *const v5_defaults[] = {"parity=even", "baud=57600", "=x", "novalue", NULL};
static const char *const v5_keys[] = {NULL};

static const struct gw_protocol_ops v5_ops = {
    .version = 5,
    .name = "v5",
    .shape = GW_LINK_STREAM,
    .priv_size = 8,
    .init = v5_init,
    .done = v5_done,
    .options = v5_keys,
    .link_defaults = v5_defaults,
    .installed = v5_installed,
};

/* gw_plugin_link_options: a protocol's defaults go under the node's settings, which win;
 * malformed defaults are ignored; older protocols add nothing. check_options sees the
 * defaults (a default the transport refuses is reported). gw_plugin_installed asks
 * installed() only with facts. */
static void test_link_defaults_and_installed(void **state)
{
        struct gw_options *t = gw_options_new(), *o = NULL, *facts = gw_options_new();
        struct gw_reader r = {.size = 64, .name = "x.bin", .pread = bytes_pread};
        struct gw_protocol_ops old = v5_ops;
        char why[256];

        assert_non_null(t);
        assert_non_null(facts);
        assert_int_equal(gw_options_set(t, "port", "/dev/ttyS0"), 0);
        assert_int_equal(gw_options_set(t, "baud", "115200"), 0);
        assert_int_equal(gw_plugin_link_options(&v5_ops, t, &o), 0);
        assert_string_equal(gw_options_get(o, "parity"), "even");
        assert_string_equal(gw_options_get(o, "baud"), "115200");
        assert_string_equal(gw_options_get(o, "port"), "/dev/ttyS0");
        assert_int_equal(gw_options_count(o), 3);
        o = gw_options_free(o);
        old.version = 4;
        assert_int_equal(gw_plugin_link_options(&old, t, &o), 0);
        assert_null(gw_options_get(o, "parity"));
        o = gw_options_free(o);
        assert_int_equal(gw_plugin_link_options(NULL, t, &o), 0);
        assert_int_equal(gw_options_count(o), 2);
        o = gw_options_free(o);

        if (gw_transport_find("uart")) {
                assert_int_equal(gw_plugin_check_options(gw_transport_find("uart"), t, &v5_ops,
                                                         facts, why, sizeof(why)),
                                 0);
        }

        assert_int_equal(gw_plugin_installed(&v5_ops, t, &r, NULL, why, sizeof(why)), 0);
        assert_int_equal(gw_plugin_installed(&v5_ops, t, &r, facts, why, sizeof(why)), 0);
        assert_int_equal(gw_options_set(facts, "hash", "same"), 0);
        assert_int_equal(gw_plugin_installed(&v5_ops, t, &r, facts, why, sizeof(why)), 1);
        assert_int_equal(gw_plugin_installed(&old, t, &r, facts, why, sizeof(why)), 0);
        assert_int_equal(gw_options_set(facts, "hash", "unreadable"), 0);
        assert_int_equal(gw_plugin_installed(&v5_ops, t, &r, facts, why, sizeof(why)), -EIO);
        assert_true(why[0] != '\0');
        gw_options_free(facts);
        gw_options_free(t);
}

/* Whether identify reaches a node after an install: protocols that cannot tell say yes; stm32
 * says no after GO unless an entry sequence brings the bootloader back. */
static void test_identifies_after_install(void **state)
{
        const struct gw_protocol_ops *st = gw_protocol_find("stm32"),
                                     *y = gw_protocol_find("ymodem");
        struct gw_options *o = gw_options_new();

        assert_non_null(o);
        assert_false(gw_plugin_identifies_after_install(NULL, o));
        if (y)
                assert_false(gw_plugin_identifies_after_install(y, o)); /* no identify at all */
        assert_true(gw_plugin_identifies_after_install(&v5_ops, o) == false); /* no identify */
        if (st) {
                assert_false(gw_plugin_identifies_after_install(st, o));
                assert_int_equal(gw_options_set(o, "go", "false"), 0);
                assert_true(gw_plugin_identifies_after_install(st, o));
                assert_int_equal(gw_options_set(o, "go", "true"), 0);
                assert_int_equal(gw_options_set(o, "entry", "rts=1,dtr=1,wait=10,dtr=0,wait=50"),
                                 0);
                assert_true(gw_plugin_identifies_after_install(st, o));
                /* Options init() refuses: it cannot say yes. */
                assert_int_equal(gw_options_set(o, "go", "maybe"), 0);
                assert_false(gw_plugin_identifies_after_install(st, o));
        }
        gw_options_free(o);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_builtins),
            cmocka_unit_test(test_abi_mismatch_refused),
            cmocka_unit_test(test_missing_entry_refused),
            cmocka_unit_test(test_missing_file),
            cmocka_unit_test(test_load_and_use),
            cmocka_unit_test(test_load_dir),
            cmocka_unit_test(test_check_options),
            cmocka_unit_test(test_check_image),
            cmocka_unit_test(test_link_defaults_and_installed),
            cmocka_unit_test(test_identifies_after_install),
        };

        gw_log_set_max_level(getenv("GW_TEST_VERBOSE") ? LOG_DEBUG : LOG_EMERG);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
