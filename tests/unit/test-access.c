/* Unit tests for core/access.c: which device node an -EACCES is about (the device a transport's
 * enumerate() and claims() pick, else the node behind "port", symbolic links resolved) and the
 * message naming it, its owner, group and mode, who we run as, and the fix. */
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw-config.h"
#include "gw/access.h"
#include "gw/options.h"

static char dir[PATH_MAX];
static char node_a[PATH_MAX + 16], node_b[PATH_MAX + 16];

#define FIX                                                                                        \
        "add the device to the gatewayd group: see " GW_DOC_DIR "/README.udev, or run: sudo "      \
        "udevadm trigger after installing 60-gatewayd.rules"

/* A USB-like transport: two devices with the same ids, the second one not openable. */
static int fake_enumerate(const struct gw_plugin_services *svc, gw_link_enum_cb cb, void *userdata)
{
        const struct gw_link_info devs[] = {
            {.transport = "fakeusb", .path = "1-1", .vid = 0x0483, .pid = 0xdf11, .node = node_a},
            {.transport = "fakeusb",
             .path = "1-2",
             .vid = 0x0483,
             .pid = 0xdf11,
             .node = node_b,
             .error = -EACCES},
            {.transport = "fakeusb", .path = "1-3", .vid = 0x1209, .pid = 1, .error = -EACCES},
        };

        for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++) {
                int r = cb(&devs[i], userdata);

                if (r)
                        return r;
        }
        return 0;
}

/* opts "usb" = "0483:df11" picks the first two; anything else none. */
static int fake_claims(const struct gw_options *opts, const struct gw_link_info *info)
{
        const char *usb = gw_options_get(opts, "usb");

        return usb && strcmp(usb, "0483:df11") == 0 && info->vid == 0x0483 ? 1 : 0;
}

static const struct gw_transport_ops fake_usb = {
    .version = 3,
    .name = "fakeusb",
    .shape = GW_LINK_CONTROL,
    .enumerate = fake_enumerate,
    .claims = fake_claims,
};

static const struct gw_transport_ops plain = {.version = 1, .name = "plain"};

static int setup(void **state)
{
        FILE *f;

        snprintf(dir, sizeof(dir), "%s/gw-test-access.XXXXXX", P_tmpdir);
        assert_non_null(mkdtemp(dir));
        snprintf(node_a, sizeof(node_a), "%s/001", dir);
        snprintf(node_b, sizeof(node_b), "%s/002", dir);
        for (int i = 0; i < 2; i++) {
                f = fopen(i ? node_b : node_a, "w");
                assert_non_null(f);
                fclose(f);
        }
        assert_int_equal(chmod(node_b, 0604), 0);
        return 0;
}

static int teardown(void **state)
{
        char link[PATH_MAX + 16];

        snprintf(link, sizeof(link), "%s/by-id", dir);
        unlink(link);
        unlink(node_a);
        unlink(node_b);
        return rmdir(dir);
}

static struct gw_options *opts_of(const char *key, const char *value)
{
        struct gw_options *o = gw_options_new();

        assert_non_null(o);
        if (key)
                assert_int_equal(gw_options_set(o, key, value), 0);
        return o;
}

static void test_node_from_enumerate(void **state)
{
        struct gw_options *o = opts_of("usb", "0483:df11");
        char buf[PATH_MAX];

        assert_int_equal(gw_access_denied_node(&fake_usb, o, buf, sizeof(buf)), 0);
        /* Not the first device it claims (that one opened), the one that was refused. */
        assert_string_equal(buf, node_b);
        gw_options_free(o);
        /* Ids nothing claims, and no port: nothing to name. */
        o = opts_of("usb", "1209:0001");
        assert_int_equal(gw_access_denied_node(&fake_usb, o, buf, sizeof(buf)), -ENOENT);
        gw_options_free(o);
}

static void test_node_from_port(void **state)
{
        char link[PATH_MAX + 16], buf[PATH_MAX];
        struct gw_options *o;

        snprintf(link, sizeof(link), "%s/by-id", dir);
        assert_int_equal(symlink(node_a, link), 0);
        o = opts_of("port", link);
        assert_int_equal(gw_access_denied_node(&plain, o, buf, sizeof(buf)), 0);
        assert_string_equal(buf, node_a); /* the node, not the link */
        gw_options_free(o);
        o = opts_of("port", "ttyUSB0"); /* not a path */
        assert_int_equal(gw_access_denied_node(&plain, o, buf, sizeof(buf)), -ENOENT);
        gw_options_free(o);
        o = opts_of(NULL, NULL);
        assert_int_equal(gw_access_denied_node(&plain, o, buf, sizeof(buf)), -ENOENT);
        gw_options_free(o);
}

static void test_explain(void **state)
{
        struct gw_options *o = opts_of("usb", "0483:df11");
        const struct passwd *me = getpwuid(geteuid()), *owner;
        char buf[PATH_MAX * 2], expected[PATH_MAX * 3], who[64];
        struct stat st;

        assert_int_equal(stat(node_b, &st), 0);
        owner = getpwuid(st.st_uid);
        snprintf(who, sizeof(who), "%s", me ? me->pw_name : "?");
        gw_access_explain(&fake_usb, o, buf, sizeof(buf));
        /* Owner and group: the test's own user and its group, whatever they are named. */
        snprintf(expected, sizeof(expected), "permission denied on %s (owner %s, group ", node_b,
                 owner ? owner->pw_name : "?");
        if (strncmp(buf, expected, strlen(expected)) != 0)
                fail_msg("got %s", buf);
        assert_non_null(strstr(buf, ", mode 0604; this process runs as "));
        assert_non_null(strstr(buf, who));
        /* ... and ends with the fix. */
        assert_true(strlen(buf) > strlen("): " FIX));
        assert_string_equal(buf + strlen(buf) - strlen("): " FIX), "): " FIX);
        gw_options_free(o);

        /* Nothing to name: the fix all the same. */
        o = opts_of(NULL, NULL);
        gw_access_explain(&plain, o, buf, sizeof(buf));
        assert_string_equal(buf, "permission denied on the device node: " FIX);
        gw_options_free(o);

        /* A node that is gone by now: named, without owner and mode. */
        o = opts_of("port", "/nonexistent/ttyUSB9");
        gw_access_explain(&plain, o, buf, sizeof(buf));
        snprintf(expected, sizeof(expected),
                 "permission denied on /nonexistent/ttyUSB9 (this process runs as %s): " FIX, who);
        assert_string_equal(buf, expected);
        gw_options_free(o);

        /* Cut to the buffer, always terminated. */
        o = opts_of("usb", "0483:df11");
        gw_access_explain(&fake_usb, o, buf, 16);
        assert_int_equal(strlen(buf), 15);
        gw_options_free(o);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_node_from_enumerate),
            cmocka_unit_test(test_node_from_port),
            cmocka_unit_test(test_explain),
        };

        return cmocka_run_group_tests_name("access", tests, setup, teardown);
}
