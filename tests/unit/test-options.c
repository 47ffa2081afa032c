/* struct gw_options: ordered pairs and strict typed getters, driven by tables of vectors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "gw/options.h"

static void test_parse_u64(void **state)
{
        static const struct {
                const char *in;
                int r;
                uint64_t v;
        } vectors[] = {
            {"0", 0, 0},
            {"115200", 0, 115200},
            {"0x413", 0, 0x413},
            {"0X08000000", 0, 0x08000000},
            {"18446744073709551615", 0, UINT64_MAX},
            {"18446744073709551616", -ERANGE, 0},
            {"", -EINVAL, 0},
            {"-1", -EINVAL, 0},
            {"+1", -EINVAL, 0},
            {" 1", -EINVAL, 0},
            {"1 ", -EINVAL, 0},
            {"12a", -EINVAL, 0},
            {"0x", -EINVAL, 0},
            {"0x-1", -EINVAL, 0},
            {"abc", -EINVAL, 0},
        };

        for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
                uint64_t v = 12345;
                int r = gw_parse_u64(vectors[i].in, &v);

                if (r != vectors[i].r)
                        fail_msg("'%s': got %d, want %d", vectors[i].in, r, vectors[i].r);
                assert_int_equal(v, r == 0 ? vectors[i].v : 12345);
        }
}

static void test_set_get_order(void **state)
{
        struct gw_options *o = gw_options_new(), *p = gw_options_new();

        assert_int_equal(gw_options_set(o, "port", "/dev/ttyUSB0"), 0);
        assert_int_equal(gw_options_set(o, "baud", "115200"), 0);
        assert_int_equal(gw_options_set(o, "port", "/dev/ttyUSB1"), 0);
        assert_int_equal(gw_options_count(o), 2);
        assert_string_equal(gw_options_key(o, 0), "port");
        assert_string_equal(gw_options_value(o, 0), "/dev/ttyUSB1");
        assert_string_equal(gw_options_key(o, 1), "baud");
        assert_null(gw_options_key(o, 2));
        assert_null(gw_options_get(o, "parity"));
        assert_null(gw_options_get(NULL, "port"));
        assert_int_equal(gw_options_set(o, "", "x"), -EINVAL);
        assert_int_equal(gw_options_set(o, "k", NULL), -EINVAL);

        /* Merging: the source wins, new keys are appended. */
        assert_int_equal(gw_options_set(p, "baud", "921600"), 0);
        assert_int_equal(gw_options_set(p, "parity", "even"), 0);
        assert_int_equal(gw_options_merge(o, p), 0);
        assert_string_equal(gw_options_get(o, "baud"), "921600");
        assert_string_equal(gw_options_key(o, 2), "parity");
        gw_options_free(p);
        gw_options_free(o);
        assert_null(gw_options_free(NULL));
}

static void test_typed_getters(void **state)
{
        struct gw_options *o = gw_options_new();
        uint64_t v = 0;
        bool b = false;

        gw_options_set(o, "baud", "115200");
        gw_options_set(o, "bad", "fast");
        gw_options_set(o, "yes", "Yes");
        gw_options_set(o, "off", "off");
        assert_int_equal(gw_options_get_u64(o, "baud", 9600, 50, 4000000, &v), 0);
        assert_int_equal(v, 115200);
        assert_int_equal(gw_options_get_u64(o, "missing", 9600, 50, 4000000, &v), 0);
        assert_int_equal(v, 9600);
        assert_int_equal(gw_options_get_u64(o, "bad", 9600, 50, 4000000, &v), -EINVAL);
        assert_int_equal(gw_options_get_u64(o, "baud", 9600, 50, 100000, &v), -EINVAL);
        assert_int_equal(gw_options_get_u64(o, "baud", 9600, 200000, 300000, &v), -EINVAL);
        assert_int_equal(gw_options_get_bool(o, "yes", false, &b), 0);
        assert_true(b);
        assert_int_equal(gw_options_get_bool(o, "off", true, &b), 0);
        assert_false(b);
        assert_int_equal(gw_options_get_bool(o, "missing", true, &b), 0);
        assert_true(b);
        assert_int_equal(gw_options_get_bool(o, "bad", true, &b), -EINVAL);
        gw_options_free(o);
}

static void test_bounded(void **state)
{
        struct gw_options *o = gw_options_new();
        char key[32];
        int r = 0;
        size_t i;

        for (i = 0; i < 1000 && r == 0; i++) {
                snprintf(key, sizeof(key), "k%zu", i);
                r = gw_options_set(o, key, "v");
        }
        assert_int_equal(r, -E2BIG);
        assert_true(gw_options_count(o) < 1000);
        gw_options_free(o);
}

/* "key=value" strings (gwflash -o, a protocol's link defaults): the value is everything after
 * the first '='; no '=' or no key is refused, nothing set. */
static void test_set_kv(void **state)
{
        struct gw_options *o = gw_options_new();

        assert_non_null(o);
        assert_int_equal(gw_options_set_kv(o, "parity=even"), 0);
        assert_int_equal(gw_options_set_kv(o, "command=[\"a=b\"]"), 0);
        assert_int_equal(gw_options_set_kv(o, "empty="), 0);
        assert_string_equal(gw_options_get(o, "parity"), "even");
        assert_string_equal(gw_options_get(o, "command"), "[\"a=b\"]");
        assert_string_equal(gw_options_get(o, "empty"), "");
        assert_int_equal(gw_options_set_kv(o, "=x"), -EINVAL);
        assert_int_equal(gw_options_set_kv(o, "novalue"), -EINVAL);
        assert_int_equal(gw_options_set_kv(o, NULL), -EINVAL);
        assert_int_equal(gw_options_count(o), 3);
        gw_options_free(o);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_u64),     cmocka_unit_test(test_set_get_order),
            cmocka_unit_test(test_typed_getters), cmocka_unit_test(test_bounded),
            cmocka_unit_test(test_set_kv),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
