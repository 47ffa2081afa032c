/* Unit tests for gatewayd/status.c: every encoder against the exact bytes it must publish,
 * escaping of awkward strings, omitted members and refused inputs. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "status.h"

#define TS      ((time_t) 1795305600) /* 2026-11-22T00:00:00Z */
#define TS_TEXT "\"ts\":\"2026-11-22T00:00:00Z\""

/* Takes &s rather than s: the order in which arguments are evaluated is unspecified. */
static void expect_json(int r, char **ret, const char *expected)
{
        char *json = *ret;

        *ret = NULL;
        assert_int_equal(r, 0);
        assert_non_null(json);
        if (strcmp(json, expected) != 0)
                fail_msg("\n got      %s\n expected %s", json, expected);
        free(json);
}

static void test_node_states(void **state)
{
        static const char *const names[] = {
            "idle",     "queued",  "downloading", "verifying", "flashing", "activating",
            "checking", "success", "failed",      "reverting", "reverted",
        };

        assert_int_equal(sizeof(names) / sizeof(names[0]), _GW_NODE_STATE_MAX);
        for (int i = 0; i < _GW_NODE_STATE_MAX; i++) {
                assert_string_equal(gw_node_state_to_string((enum gw_node_state) i), names[i]);
                assert_int_equal(gw_node_state_from_string(names[i]), i);
        }
        assert_null(gw_node_state_to_string(_GW_NODE_STATE_MAX));
        assert_null(gw_node_state_to_string((enum gw_node_state) - 1));
        assert_int_equal(gw_node_state_from_string("Idle"), -EINVAL);
        assert_int_equal(gw_node_state_from_string(""), -EINVAL);
        assert_int_equal(gw_node_state_from_string(NULL), -EINVAL);
}

static void test_timestamp(void **state)
{
        char buf[GW_TIMESTAMP_MAX];

        assert_int_equal(gw_status_timestamp(0, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "1970-01-01T00:00:00Z");
        assert_int_equal(gw_status_timestamp(1795352709, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "2026-11-22T13:05:09Z");
        assert_int_equal(gw_status_timestamp(253402300799, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "9999-12-31T23:59:59Z");
        assert_int_equal(gw_status_timestamp(253402300800, buf, sizeof(buf)), -ERANGE);
        assert_int_equal(gw_status_timestamp(0, buf, sizeof(buf) - 1), -EINVAL);
}

static void test_gateway(void **state)
{
        char *s = NULL;

        expect_json(gw_status_gateway_json(true, "0.1.0", TS, &s), &s,
                    "{\"state\":\"online\",\"version\":\"0.1.0\"," TS_TEXT "}");
        expect_json(gw_status_gateway_json(false, "0.1.0", 0, &s), &s,
                    "{\"state\":\"offline\",\"version\":\"0.1.0\","
                    "\"ts\":\"1970-01-01T00:00:00Z\"}");
        assert_int_equal(gw_status_gateway_json(true, NULL, TS, &s), -EINVAL);
        assert_int_equal(gw_status_gateway_json(true, "0.1.0", 253402300800, &s), -EINVAL);
}

static void test_node(void **state)
{
        struct gw_node_status st;
        char *s = NULL;

        gw_node_status_init(&st, GW_NODE_IDLE);
        expect_json(gw_status_node_json(&st, TS, &s), &s, "{\"state\":\"idle\"," TS_TEXT "}");

        st = (struct gw_node_status){
            .state = GW_NODE_DOWNLOADING,
            .deployment = "spring-r3",
            .image = "motor-ctrl",
            .version = "1.4.2",
            .progress = 42,
            .bytes = 55050,
            .total = 131072,
            .rate_bps = 11520,
            /* Ignored outside state failed. */
            .error = GW_ERR_DOWNLOAD_FAILED,
            .error_message = "x",
        };
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"downloading\",\"deployment\":\"spring-r3\","
                    "\"image\":\"motor-ctrl\",\"version\":\"1.4.2\",\"progress\":42,"
                    "\"bytes\":55050,\"total\":131072,\"rate_bps\":11520," TS_TEXT "}");

        /* 64-bit sizes survive. */
        gw_node_status_init(&st, GW_NODE_FLASHING);
        st.bytes = 0;
        st.total = INT64_C(5000000000);
        st.progress = 0;
        expect_json(
            gw_status_node_json(&st, TS, &s), &s,
            "{\"state\":\"flashing\",\"progress\":0,\"bytes\":0,\"total\":5000000000," TS_TEXT "}");
        /* A second attempt (node retries) says so; the first does not. */
        st.attempt = 2;
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"flashing\",\"progress\":0,\"bytes\":0,\"total\":5000000000,"
                    "\"attempt\":2," TS_TEXT "}");
        st.attempt = 1;
        expect_json(
            gw_status_node_json(&st, TS, &s), &s,
            "{\"state\":\"flashing\",\"progress\":0,\"bytes\":0,\"total\":5000000000," TS_TEXT "}");
        /* An install that continued a write the node kept says where it started. */
        gw_node_status_init(&st, GW_NODE_FLASHING);
        st.resumed_from = 40960;
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"flashing\",\"resumed_from\":40960," TS_TEXT "}");
        /* A node that already ran the image and was not written says so. */
        gw_node_status_init(&st, GW_NODE_SUCCESS);
        st.unchanged = true;
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"success\",\"unchanged\":true," TS_TEXT "}");

        gw_node_status_init(&st, GW_NODE_FAILED);
        st.deployment = "d1";
        st.error = GW_ERR_FLASH_FAILED;
        st.error_message = "node-1: NAK at block 7";
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"failed\",\"deployment\":\"d1\",\"error\":{\"code\":"
                    "\"flash-failed\",\"message\":\"node-1: NAK at block 7\"}," TS_TEXT "}");
        st.error_message = NULL;
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"failed\",\"deployment\":\"d1\",\"error\":{\"code\":"
                    "\"flash-failed\",\"message\":\"\"}," TS_TEXT "}");
        /* Failed without a code: no error member rather than a made-up one. */
        st.error = GW_ERR_NONE;
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"failed\",\"deployment\":\"d1\"," TS_TEXT "}");

        gw_node_status_init(&st, GW_NODE_FLASHING);
        st.progress = 101;
        assert_int_equal(gw_status_node_json(&st, TS, &s), -EINVAL);
        gw_node_status_init(&st, _GW_NODE_STATE_MAX);
        assert_int_equal(gw_status_node_json(&st, TS, &s), -EINVAL);
        gw_node_status_init(&st, GW_NODE_FAILED);
        st.error = _GW_ERR_MAX;
        assert_int_equal(gw_status_node_json(&st, TS, &s), -EINVAL);
        assert_int_equal(gw_status_node_json(NULL, TS, &s), -EINVAL);
}

static void test_escaping(void **state)
{
        struct gw_node_status st;
        char *s = NULL;

        gw_node_status_init(&st, GW_NODE_FAILED);
        st.error = GW_ERR_VERIFY_FAILED;
        /* Quotes, backslash, control characters, DEL, and multi-byte UTF-8 kept as is. */
        st.error_message = "say \"hi\"\\ \n\t\r\b\f\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac "
                           "\xf0\x9f\x94\xa5";
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"failed\",\"error\":{\"code\":\"verify-failed\",\"message\":"
                    "\"say \\\"hi\\\"\\\\ \\n\\t\\r\\b\\f\\u0001\\u001F\x7f caf\xc3\xa9 "
                    "\xe2\x82\xac \xf0\x9f\x94\xa5\"}," TS_TEXT "}");

        /* Invalid UTF-8 (a lone continuation byte, a truncated sequence, an overlong '/', a
         * surrogate) becomes '?' byte by byte; valid neighbours stay. */
        st.error_message = "a\x80z \xc3 \xc0\xaf \xed\xa0\x80 \xc3\xa9";
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"failed\",\"error\":{\"code\":\"verify-failed\",\"message\":"
                    "\"a?z ? ?? ??? \xc3\xa9\"}," TS_TEXT "}");

        /* "</script>"-like and slash need no escaping in JSON; jansson leaves '/' alone. */
        gw_node_status_init(&st, GW_NODE_SUCCESS);
        st.image = "a/b</c>";
        expect_json(gw_status_node_json(&st, TS, &s), &s,
                    "{\"state\":\"success\",\"image\":\"a/b</c>\"," TS_TEXT "}");
}

static void test_deployment(void **state)
{
        static const char *const names[] = {"node-1", "node-2"};
        struct gw_deployment_node nodes[] = {
            {.name = "node-1",
             .state = GW_NODE_FLASHING,
             .progress = 50,
             .image = "motor-ctrl",
             .version = "1.4.2"},
            {.name = "node-2", .state = GW_NODE_QUEUED, .progress = -1},
        };
        char *s = NULL;

        expect_json(gw_status_deployment_accepted_json("spring-r3", "5f0c", names, 2, TS, &s), &s,
                    "{\"id\":\"spring-r3\",\"state\":\"accepted\",\"manifest_sha256\":\"5f0c\","
                    "\"nodes\":[\"node-1\",\"node-2\"]," TS_TEXT "}");
        expect_json(gw_status_deployment_accepted_json("d", "00", NULL, 0, TS, &s), &s,
                    "{\"id\":\"d\",\"state\":\"accepted\",\"manifest_sha256\":\"00\","
                    "\"nodes\":[]," TS_TEXT "}");

        expect_json(gw_status_deployment_rejected_json("d2", GW_ERR_THRESHOLD_NOT_MET,
                                                       "1 of 2 signatures", TS, &s),
                    &s,
                    "{\"id\":\"d2\",\"state\":\"rejected\",\"error\":{\"code\":"
                    "\"threshold-not-met\",\"message\":\"1 of 2 signatures\"}," TS_TEXT "}");

        /* Progress: state and progress only, image/version/error not shown. */
        nodes[1].error = GW_ERR_NODE_UNREACHABLE;
        expect_json(
            gw_status_deployment_progress_json("spring-r3", nodes, 2, TS, &s), &s,
            "{\"id\":\"spring-r3\",\"state\":\"running\",\"nodes\":{\"node-1\":{"
            "\"state\":\"flashing\",\"progress\":50},\"node-2\":{\"state\":\"queued\"}}," TS_TEXT
            "}");

        /* Final: image, version and error, no progress. */
        nodes[0].state = GW_NODE_REVERTED;
        nodes[0].error = GW_ERR_NONE;
        nodes[1].state = GW_NODE_FAILED;
        nodes[1].error_message = "no answer";
        expect_json(gw_status_deployment_final_json("spring-r3", false, GW_ERR_NODE_UNREACHABLE,
                                                    "node-2 did not answer", nodes, 2, TS, &s),
                    &s,
                    "{\"id\":\"spring-r3\",\"state\":\"failed\",\"error\":{\"code\":"
                    "\"node-unreachable\",\"message\":\"node-2 did not answer\"},\"nodes\":{"
                    "\"node-1\":{\"state\":\"reverted\",\"image\":\"motor-ctrl\",\"version\":"
                    "\"1.4.2\"},\"node-2\":{\"state\":\"failed\",\"error\":{\"code\":"
                    "\"node-unreachable\",\"message\":\"no answer\"}}}," TS_TEXT "}");

        nodes[0].state = GW_NODE_SUCCESS;
        nodes[1] = (struct gw_deployment_node){
            .name = "node-2", .state = GW_NODE_SUCCESS, .image = "motor-ctrl", .version = "1.4.2"};
        expect_json(gw_status_deployment_final_json("spring-r3", true, GW_ERR_FLASH_FAILED, "x",
                                                    nodes, 2, TS, &s),
                    &s,
                    "{\"id\":\"spring-r3\",\"state\":\"success\",\"nodes\":{\"node-1\":{"
                    "\"state\":\"success\",\"image\":\"motor-ctrl\",\"version\":\"1.4.2\"},"
                    "\"node-2\":{\"state\":\"success\",\"image\":\"motor-ctrl\",\"version\":"
                    "\"1.4.2\"}}," TS_TEXT "}");
        nodes[1].unchanged = true;
        expect_json(
            gw_status_deployment_final_json("spring-r3", true, GW_ERR_NONE, NULL, nodes, 2, TS, &s),
            &s,
            "{\"id\":\"spring-r3\",\"state\":\"success\",\"nodes\":{\"node-1\":{"
            "\"state\":\"success\",\"image\":\"motor-ctrl\",\"version\":\"1.4.2\"},"
            "\"node-2\":{\"state\":\"success\",\"image\":\"motor-ctrl\",\"version\":"
            "\"1.4.2\",\"unchanged\":true}}," TS_TEXT "}");

        /* Refused inputs. */
        assert_int_equal(gw_status_deployment_rejected_json("d", GW_ERR_NONE, "x", TS, &s),
                         -EINVAL);
        assert_int_equal(gw_status_deployment_rejected_json(NULL, GW_ERR_EXPIRED, "x", TS, &s),
                         -EINVAL);
        assert_int_equal(gw_status_deployment_accepted_json("d", NULL, names, 2, TS, &s), -EINVAL);
        assert_int_equal(gw_status_deployment_accepted_json("d", "00", NULL, 1, TS, &s), -EINVAL);
        nodes[1].name = "node-1"; /* duplicate */
        assert_int_equal(gw_status_deployment_progress_json("d", nodes, 2, TS, &s), -EINVAL);
        nodes[1].name = NULL;
        assert_int_equal(gw_status_deployment_final_json("d", true, 0, NULL, nodes, 2, TS, &s),
                         -EINVAL);
        nodes[1].name = "node-2";
        nodes[1].progress = 200;
        assert_int_equal(gw_status_deployment_progress_json("d", nodes, 2, TS, &s), -EINVAL);
}

static void test_inventory(void **state)
{
        struct gw_options *hw = gw_options_new();
        struct gw_inventory_node nodes[] = {
            {.name = "node-1",
             .transport = "uart",
             .protocol = "ymodem",
             .class_name = "demo-mcu",
             .hardware = hw,
             .version = "1.4.2"},
            {.name = "node-2",
             .transport = "usb",
             .protocol = "dfu",
             .incomplete_image = "fw",
             .incomplete_version = "2.0.0"},
        };
        char *s = NULL;

        assert_non_null(hw);
        assert_int_equal(gw_options_set(hw, "chip-id", "0x413"), 0);
        assert_int_equal(gw_options_set(hw, "rev", "B"), 0);

        expect_json(gw_status_inventory_json(nodes, 2, TS, &s), &s,
                    "{\"nodes\":[{\"name\":\"node-1\",\"transport\":\"uart\",\"protocol\":"
                    "\"ymodem\",\"class\":\"demo-mcu\",\"hardware\":{\"chip-id\":\"0x413\","
                    "\"rev\":\"B\"},\"version\":\"1.4.2\"},{\"name\":\"node-2\",\"transport\":"
                    "\"usb\",\"protocol\":\"dfu\",\"hardware\":{},\"incomplete\":{\"image\":"
                    "\"fw\",\"version\":\"2.0.0\"}}]," TS_TEXT "}");
        expect_json(gw_status_inventory_json(NULL, 0, TS, &s), &s, "{\"nodes\":[]," TS_TEXT "}");

        nodes[1].protocol = NULL;
        assert_int_equal(gw_status_inventory_json(nodes, 2, TS, &s), -EINVAL);
        assert_int_equal(gw_status_inventory_json(NULL, 1, TS, &s), -EINVAL);
        gw_options_free(hw);
}

/* Presence and the list of unclaimed devices: every member, omitted members, refused input. */
static void test_inventory_attached(void **state)
{
        struct gw_inventory_node nodes[] = {
            {.name = "board-a",
             .transport = "usb",
             .protocol = "dfu",
             .version = "2.0.1",
             .present = GW_PRESENCE_PRESENT},
            {.name = "board-b",
             .transport = "usb",
             .protocol = "dfu",
             .present = GW_PRESENCE_ABSENT},
            {.name = "can-1", .transport = "can", .protocol = "uds"},
        };
        struct gw_inventory_device devs[] = {
            {.vid = 0x483,
             .pid = 0xdf11,
             .serial = "3A7B",
             .path = "1-2.3",
             .description = "DFU in FS Mode; DFU alt 0 \"@Internal Flash\""},
            {.vid = 0x1d50, .pid = 0x6089, .path = "2-1"},
        };
        char *s = NULL;

        expect_json(gw_status_inventory_attached_json(nodes, 3, devs, 2, TS, &s), &s,
                    "{\"nodes\":[{\"name\":\"board-a\",\"transport\":\"usb\",\"protocol\":\"dfu\","
                    "\"hardware\":{},\"version\":\"2.0.1\",\"present\":true},{\"name\":"
                    "\"board-b\",\"transport\":\"usb\",\"protocol\":\"dfu\",\"hardware\":{},"
                    "\"present\":false},{\"name\":\"can-1\",\"transport\":\"can\",\"protocol\":"
                    "\"uds\",\"hardware\":{}}],\"attached\":[{\"usb\":\"0483:df11\",\"serial\":"
                    "\"3A7B\",\"path\":\"1-2.3\",\"description\":\"DFU in FS Mode; DFU alt 0 "
                    "\\\"@Internal Flash\\\"\"},{\"usb\":\"1d50:6089\",\"path\":\"2-1\"}]," TS_TEXT
                    "}");
        /* The encoder without the list says nothing of it, but still of presence. */
        expect_json(gw_status_inventory_json(&nodes[1], 1, TS, &s), &s,
                    "{\"nodes\":[{\"name\":\"board-b\",\"transport\":\"usb\",\"protocol\":\"dfu\","
                    "\"hardware\":{},\"present\":false}]," TS_TEXT "}");
        expect_json(gw_status_inventory_attached_json(NULL, 0, NULL, 0, TS, &s), &s,
                    "{\"nodes\":[],\"attached\":[]," TS_TEXT "}");
        /* A serial number straight from a device is not trusted to be UTF-8. */
        devs[1].serial = "\xff\x41";
        expect_json(gw_status_inventory_attached_json(NULL, 0, &devs[1], 1, TS, &s), &s,
                    "{\"nodes\":[],\"attached\":[{\"usb\":\"1d50:6089\",\"serial\":\"?A\","
                    "\"path\":\"2-1\"}]," TS_TEXT "}");

        /* docs/mqtt.md's example, byte for byte. */
        {
                struct gw_options *hw = gw_options_new();
                struct gw_inventory_node doc[] = {
                    {.name = "board-1",
                     .transport = "usb",
                     .protocol = "dfu",
                     .class_name = "dfu-board",
                     .version = "2.0.0",
                     .present = GW_PRESENCE_PRESENT},
                    {.name = "node-1",
                     .transport = "uart",
                     .protocol = "ymodem",
                     .class_name = "demo-mcu",
                     .hardware = hw,
                     .version = "1.4.1",
                     .present = GW_PRESENCE_ABSENT},
                };
                struct gw_inventory_device spare = {
                    .vid = 0x1d50,
                    .pid = 0x6089,
                    .serial = "SPARE-2",
                    .path = "1-2",
                    .description = "dfu-sim DFU 1.1 device; DFU alt 0 \"Internal Flash\"",
                };

                assert_non_null(hw);
                assert_int_equal(gw_options_set(hw, "chip-id", "0x413"), 0);
                expect_json(
                    gw_status_inventory_attached_json(doc, 2, &spare, 1, TS, &s), &s,
                    "{\"nodes\":[{\"name\":\"board-1\",\"transport\":\"usb\",\"protocol\":"
                    "\"dfu\",\"class\":\"dfu-board\",\"hardware\":{},\"version\":\"2.0.0\","
                    "\"present\":true},{\"name\":\"node-1\",\"transport\":\"uart\","
                    "\"protocol\":\"ymodem\",\"class\":\"demo-mcu\",\"hardware\":{\"chip-id\":"
                    "\"0x413\"},\"version\":\"1.4.1\",\"present\":false}],\"attached\":[{"
                    "\"usb\":\"1d50:6089\",\"serial\":\"SPARE-2\",\"path\":\"1-2\","
                    "\"description\":\"dfu-sim DFU 1.1 device; DFU alt 0 \\\"Internal "
                    "Flash\\\"\"}]," TS_TEXT "}");
                gw_options_free(hw);
        }

        devs[1].path = NULL;
        assert_int_equal(gw_status_inventory_attached_json(nodes, 3, devs, 2, TS, &s), -EINVAL);
        devs[1].path = "2-1";
        assert_int_equal(gw_status_inventory_attached_json(nodes, 3, NULL, 1, TS, &s), -EINVAL);
        nodes[2].present = (enum gw_presence) 7;
        assert_int_equal(gw_status_inventory_attached_json(nodes, 3, devs, 2, TS, &s), -EINVAL);
        assert_int_equal(gw_status_inventory_json(nodes, 3, TS, &s), -EINVAL);
        assert_null(s);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_node_states), cmocka_unit_test(test_timestamp),
            cmocka_unit_test(test_gateway),     cmocka_unit_test(test_node),
            cmocka_unit_test(test_escaping),    cmocka_unit_test(test_deployment),
            cmocka_unit_test(test_inventory),   cmocka_unit_test(test_inventory_attached),
        };

        return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
