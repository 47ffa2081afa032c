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

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_builtins),
            cmocka_unit_test(test_abi_mismatch_refused),
            cmocka_unit_test(test_missing_entry_refused),
            cmocka_unit_test(test_missing_file),
            cmocka_unit_test(test_load_and_use),
            cmocka_unit_test(test_load_dir),
        };

        gw_log_set_max_level(getenv("GW_TEST_VERBOSE") ? LOG_DEBUG : LOG_EMERG);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
