/* Unit tests for gatewayd/config.c: a full configuration, defaults, relative paths, and a table
 * of broken files, each with the exact "file:line:column: path: message" it must produce. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static int parse(const char *text, struct gw_config **ret, char **ret_error)
{
        return gw_config_parse(text, strlen(text), "/etc/gw/t.yaml", NULL, ret, ret_error);
}

static const char full_yaml[] =
    "gateway:\n"
    "  id: gw-demo-1\n"
    "  hardware: gw-imx8-rev2\n"
    "state-dir: state\n"
    "plugin-dir: /usr/lib/gw/plugins\n"
    "log-level: debug\n"
    "mqtt:\n"
    "  host: broker.example\n"
    "  port: 8884\n"
    "  client-id: cid\n"
    "  prefix: site/a/gw\n"
    "  keepalive: 45\n"
    "  username: u\n"
    "  password: \"p w\"\n"
    "  max-payload: 0x10000\n"
    "  reconnect-min: 2\n"
    "  reconnect-max: 30\n"
    "  connect-timeout: 7\n"
    "  tls: { ca: tls/ca.pem, cert: /abs/c.pem, key: tls/k.pem, insecure: true }\n"
    "trust:\n"
    "  public-keys: [a.pub, /k/b.pub]\n"
    "  threshold: 2\n"
    "limits:\n"
    "  manifest-size: 2048\n"
    "  image-size: 4096\n"
    "fetch:\n"
    "  min-rate: 0\n"
    "  rate-window: 5\n"
    "  deadline: 60\n"
    "  connect-timeout: 3\n"
    "nodes:\n"
    "  - name: node-1\n"
    "    class: demo-mcu\n"
    "    hardware: { chip-id: \"0x413\", rev: 2 }\n"
    "    transport: { type: uart, port: /dev/ttyUSB0, baud: 115200 }\n"
    "    protocol: { type: ymodem, ack-timeout-ms: 5000 }\n"
    "    retries: 3\n"
    "  - name: node.2\n"
    "    transport:\n"
    "      type: can\n"
    "    protocol:\n"
    "      type: uds\n"
    "      tx-id: '0x7e0'\n"
    "      command: [flash, \"a b\", \"{image}\", '\"q\"']\n";

static void test_full(void **state)
{
        struct gw_config *c = NULL;
        const struct gw_node_config *n;
        char *error = NULL;

        assert_int_equal(parse(full_yaml, &c, &error), 0);
        assert_null(error);
        assert_string_equal(c->path, "/etc/gw/t.yaml");
        assert_string_equal(c->gateway_id, "gw-demo-1");
        assert_string_equal(c->gateway_hardware, "gw-imx8-rev2");
        assert_string_equal(c->state_dir, "/etc/gw/state");
        assert_string_equal(c->plugin_dir, "/usr/lib/gw/plugins");
        assert_int_equal(c->log_level, LOG_DEBUG);

        assert_string_equal(c->mqtt.host, "broker.example");
        assert_int_equal(c->mqtt.port, 8884);
        assert_string_equal(c->mqtt.client_id, "cid");
        assert_string_equal(c->mqtt.prefix, "site/a/gw");
        assert_int_equal(c->mqtt.keepalive, 45);
        assert_string_equal(c->mqtt.username, "u");
        assert_string_equal(c->mqtt.password, "p w");
        assert_int_equal(c->mqtt.max_payload, 65536);
        assert_int_equal(c->mqtt.reconnect_min, 2);
        assert_int_equal(c->mqtt.reconnect_max, 30);
        assert_int_equal(c->mqtt.connect_timeout, 7);
        assert_true(c->mqtt.tls);
        assert_string_equal(c->mqtt.tls_ca, "/etc/gw/tls/ca.pem");
        assert_string_equal(c->mqtt.tls_cert, "/abs/c.pem");
        assert_string_equal(c->mqtt.tls_key, "/etc/gw/tls/k.pem");
        assert_true(c->mqtt.tls_insecure);

        assert_null(c->trust.keys);
        assert_int_equal(c->trust.n_public_keys, 2);
        assert_string_equal(c->trust.public_keys[0], "/etc/gw/a.pub");
        assert_string_equal(c->trust.public_keys[1], "/k/b.pub");
        assert_int_equal(c->trust.threshold, 2);

        assert_int_equal(c->manifest_size_max, 2048);
        assert_int_equal(c->image_size_max, 4096);
        assert_int_equal(c->fetch_min_rate, 0);
        assert_int_equal(c->fetch_rate_window, 5);
        assert_int_equal(c->fetch_deadline, 60);
        assert_int_equal(c->fetch_connect_timeout, 3);

        assert_int_equal(c->n_nodes, 2);
        n = gw_config_find_node(c, "node-1");
        assert_ptr_equal(n, &c->nodes[0]);
        assert_string_equal(n->class_name, "demo-mcu");
        assert_int_equal(gw_options_count(n->hardware), 2);
        assert_string_equal(gw_options_get(n->hardware, "chip-id"), "0x413");
        assert_string_equal(gw_options_get(n->hardware, "rev"), "2");
        assert_string_equal(n->transport, "uart");
        assert_int_equal(gw_options_count(n->transport_opts), 2);
        assert_string_equal(gw_options_key(n->transport_opts, 0), "port");
        assert_string_equal(gw_options_value(n->transport_opts, 0), "/dev/ttyUSB0");
        assert_string_equal(gw_options_get(n->transport_opts, "baud"), "115200");
        assert_null(gw_options_get(n->transport_opts, "type"));
        assert_string_equal(n->protocol, "ymodem");
        assert_string_equal(gw_options_get(n->protocol_opts, "ack-timeout-ms"), "5000");
        assert_int_equal(n->pos.line, 32);
        assert_int_equal(n->pos.column, 5);
        assert_int_equal(n->transport_pos.line, 35);
        assert_int_equal(n->transport_pos.column, 16);
        assert_int_equal(n->retries, 3);

        n = gw_config_find_node(c, "node.2");
        assert_ptr_equal(n, &c->nodes[1]);
        assert_null(n->class_name);
        assert_int_equal(gw_options_count(n->hardware), 0);
        assert_string_equal(n->transport, "can");
        assert_int_equal(gw_options_count(n->transport_opts), 0);
        assert_string_equal(n->protocol, "uds");
        assert_string_equal(gw_options_get(n->protocol_opts, "tx-id"), "0x7e0");
        /* A list reaches the plugin as a JSON array, every item whole. */
        assert_string_equal(gw_options_get(n->protocol_opts, "command"),
                            "[\"flash\",\"a b\",\"{image}\",\"\\\"q\\\"\"]");
        assert_int_equal(n->retries, 0);
        assert_int_equal(n->protocol_pos.line, 42);
        assert_int_equal(n->protocol_pos.column, 7);

        assert_null(gw_config_find_node(c, "node-3"));
        assert_null(gw_config_find_node(c, NULL));
        assert_null(gw_config_free(c));
}

static void test_defaults(void **state)
{
        struct gw_config *c = NULL;
        const char *text;

        assert_int_equal(parse("gateway: { id: gw-1 }\n"
                               "trust: { keys: keys.yaml }\n",
                               &c, NULL),
                         0);
        assert_string_equal(c->gateway_id, "gw-1");
        assert_null(c->gateway_hardware);
        assert_string_equal(c->state_dir, "/var/lib/gatewayd");
        assert_null(c->plugin_dir);
        assert_int_equal(c->log_level, LOG_INFO);
        assert_string_equal(c->mqtt.host, "localhost");
        assert_int_equal(c->mqtt.port, 1883);
        assert_string_equal(c->mqtt.client_id, "gatewayd-gw-1");
        assert_string_equal(c->mqtt.prefix, "gatewayd/gw-1");
        assert_int_equal(c->mqtt.keepalive, 30);
        assert_null(c->mqtt.username);
        assert_null(c->mqtt.password);
        assert_int_equal(c->mqtt.max_payload, 262144);
        assert_int_equal(c->mqtt.reconnect_min, 1);
        assert_int_equal(c->mqtt.reconnect_max, 60);
        assert_int_equal(c->mqtt.connect_timeout, 10);
        assert_false(c->mqtt.tls);
        assert_null(c->mqtt.tls_ca);
        assert_string_equal(c->trust.keys, "/etc/gw/keys.yaml");
        assert_int_equal(c->trust.n_public_keys, 0);
        assert_int_equal(c->manifest_size_max, 1048576);
        assert_int_equal(c->image_size_max, 268435456);
        assert_int_equal(c->fetch_min_rate, 1024);
        assert_int_equal(c->fetch_rate_window, 30);
        assert_int_equal(c->fetch_deadline, 3600);
        assert_int_equal(c->fetch_connect_timeout, 10);
        assert_int_equal(c->n_nodes, 0);
        gw_config_free(c);

        /* TLS changes the default port; an empty tls mapping means system CAs, no client cert. */
        assert_int_equal(parse("gateway: { id: gw-1 }\n"
                               "trust: { public-keys: [k.pub] }\n"
                               "mqtt: { tls: {} }\n",
                               &c, NULL),
                         0);
        assert_true(c->mqtt.tls);
        assert_int_equal(c->mqtt.port, 8883);
        assert_null(c->mqtt.tls_ca);
        assert_null(c->mqtt.tls_cert);
        assert_int_equal(c->trust.threshold, 1);
        assert_string_equal(c->trust.public_keys[0], "/etc/gw/k.pub");
        gw_config_free(c);

        /* A name without a directory: paths are relative to ".". */
        text = "gateway: { id: g }\ntrust: { keys: k.yaml }\n";
        assert_int_equal(gw_config_parse(text, strlen(text), "t.yaml", NULL, &c, NULL), 0);
        assert_string_equal(c->trust.keys, "./k.yaml");
        gw_config_free(c);
        assert_null(gw_config_free(NULL));
}

struct bad_case {
        const char *name;
        const char *yaml;
        const char *error; /* exact */
};

#define HEAD "gateway:\n  id: gw-1\ntrust:\n  keys: keys.yaml\n" /* lines 1-4 */
#define NODE_A                                                                                     \
        "  - name: a\n"                                                                            \
        "    transport: { type: uart }\n"                                                          \
        "    protocol: { type: ymodem }\n"

static const struct bad_case bad_cases[] = {
    {"unknown key", HEAD "mqtt:\n  tls:\n    ca: ca.pem\n    bad: 1\n",
     "/etc/gw/t.yaml:8:5: mqtt.tls: unknown key 'bad'"},
    {"unknown top-level key", HEAD "extra: 1\n", "/etc/gw/t.yaml:5:1: unknown key 'extra'"},
    {"empty list option", HEAD "nodes:\n  - name: a\n    transport: { type: uart, port: [] }\n",
     "/etc/gw/t.yaml:7:36: nodes[0].transport.port: expected a list of 1 to 64 strings"},
    {"list option of mappings",
     HEAD "nodes:\n  - name: a\n    transport: { type: uart, port: [{a: b}] }\n",
     "/etc/gw/t.yaml:7:37: nodes[0].transport.port[0]: expected a string, not a mapping"},
    {"retries out of range", HEAD "nodes:\n" NODE_A "    retries: 11\n",
     "/etc/gw/t.yaml:9:14: nodes[0].retries: 11 is out of range (0..10)"},
    {"unknown node key", HEAD "nodes:\n" NODE_A "  - name: b\n    colour: red\n",
     "/etc/gw/t.yaml:10:5: nodes[1]: unknown key 'colour'"},
    {"duplicate key", "gateway:\n  id: gw-1\n  id: gw-2\ntrust:\n  keys: k\n",
     "/etc/gw/t.yaml:3:3: gateway: duplicate key 'id' (first at line 2)"},
    {"duplicate option", HEAD "nodes:\n  - transport: { type: uart, baud: 1, baud: 2 }\n",
     "/etc/gw/t.yaml:6:39: nodes[0].transport: duplicate key 'baud' (first at line 6)"},
    {"wrong type: quoted integer", HEAD "mqtt:\n  port: \"1883\"\n",
     "/etc/gw/t.yaml:6:9: mqtt.port: expected an integer"},
    {"wrong type: list for integer", HEAD "mqtt:\n  keepalive: [1]\n",
     "/etc/gw/t.yaml:6:14: mqtt.keepalive: expected an integer"},
    {"wrong type: scalar for mapping", "gateway: gw-1\n",
     "/etc/gw/t.yaml:1:10: gateway: expected a mapping, not a scalar"},
    {"wrong type: mapping for string", HEAD "state-dir: { a: b }\n",
     "/etc/gw/t.yaml:5:12: state-dir: expected a string, not a mapping"},
    {"wrong type: null string", HEAD "mqtt:\n  host:\n",
     "/etc/gw/t.yaml:6:8: mqtt.host: expected a string, not null"},
    {"wrong type: boolean", HEAD "mqtt:\n  tls: { insecure: yes }\n",
     "/etc/gw/t.yaml:6:20: mqtt.tls.insecure: expected true or false"},
    {"wrong type: nested option",
     HEAD "nodes:\n  - name: a\n    transport: { type: uart, x: { y: 1 } }\n",
     "/etc/gw/t.yaml:7:33: nodes[0].transport.x: expected a string, not a mapping"},
    {"wrong type: nodes", HEAD "nodes: { a: 1 }\n",
     "/etc/gw/t.yaml:5:8: nodes: expected a list, not a mapping"},
    {"missing id", "gateway:\n  hardware: x\ntrust:\n  keys: k\n",
     "/etc/gw/t.yaml:2:3: gateway: missing required key 'id'"},
    {"missing gateway", "trust:\n  keys: k\n",
     "/etc/gw/t.yaml:1:1: missing required key 'gateway'"},
    {"missing trust", "gateway: { id: g }\n", "/etc/gw/t.yaml:1:1: missing required key 'trust'"},
    {"missing transport type", HEAD "nodes:\n  - name: a\n    transport: { port: x }\n",
     "/etc/gw/t.yaml:7:16: nodes[0].transport: missing required key 'type'"},
    {"missing node name",
     HEAD "nodes:\n  - transport: { type: uart }\n    protocol: { type: ymodem }\n",
     "/etc/gw/t.yaml:6:5: nodes[0]: missing required key 'name'"},
    {"bad id characters", "gateway:\n  id: \"gw 1\"\n",
     "/etc/gw/t.yaml:2:7: gateway.id: 'gw 1' is not a valid name ([A-Za-z0-9._-]{1,64})"},
    {"id too long",
     "gateway:\n  id: "
     "a12345678901234567890123456789012345678901234567890123456789012345\n",
     "/etc/gw/t.yaml:2:7: gateway.id: "
     "'a12345678901234567890123456789012345678901234567890123456789012345' is not a "
     "valid name ([A-Za-z0-9._-]{1,64})"},
    {"dot-dot node name", HEAD "nodes:\n  - name: ..\n",
     "/etc/gw/t.yaml:6:11: nodes[0].name: '..' is not a valid name ([A-Za-z0-9._-]{1,64})"},
    {"duplicate node name", HEAD "nodes:\n" NODE_A NODE_A,
     "/etc/gw/t.yaml:9:11: nodes[1].name: duplicate node name 'a' (also nodes[0])"},
    {"bad port number", HEAD "mqtt:\n  port: 65536\n",
     "/etc/gw/t.yaml:6:9: mqtt.port: 65536 is out of range (1..65535)"},
    {"port zero", HEAD "mqtt:\n  port: 0\n",
     "/etc/gw/t.yaml:6:9: mqtt.port: 0 is out of range (1..65535)"},
    {"connect-timeout zero", HEAD "mqtt:\n  connect-timeout: 0\n",
     "/etc/gw/t.yaml:6:20: mqtt.connect-timeout: 0 is out of range (1..600)"},
    {"connect-timeout too long", HEAD "mqtt:\n  connect-timeout: 601\n",
     "/etc/gw/t.yaml:6:20: mqtt.connect-timeout: 601 is out of range (1..600)"},
    {"negative number", HEAD "mqtt:\n  keepalive: -1\n",
     "/etc/gw/t.yaml:6:14: mqtt.keepalive: expected an integer"},
    {"reconnect-max below min", HEAD "mqtt: { reconnect-min: 10, reconnect-max: 5 }\n",
     "/etc/gw/t.yaml:5:43: mqtt.reconnect-max: reconnect-max (5) is less than "
     "reconnect-min (10)"},
    {"password without username", HEAD "mqtt: { password: x }\n",
     "/etc/gw/t.yaml:5:19: mqtt.password: needs 'username'"},
    {"cert without key", HEAD "mqtt:\n  tls: { cert: c.pem }\n",
     "/etc/gw/t.yaml:6:8: mqtt.tls: 'cert' and 'key' must be given together"},
    {"wildcard prefix", HEAD "mqtt: { prefix: a/+/b }\n",
     "/etc/gw/t.yaml:5:17: mqtt.prefix: 'a/+/b' is not a valid topic prefix (no wildcards, "
     "no leading or trailing '/')"},
    {"bad log level", HEAD "log-level: loud\n",
     "/etc/gw/t.yaml:5:12: log-level: unknown level 'loud' (debug, info, notice, warning, "
     "error)"},
    {"keys and public-keys", "gateway: { id: g }\ntrust: { keys: k, public-keys: [a] }\n",
     "/etc/gw/t.yaml:2:32: trust.public-keys: 'keys' and 'public-keys' are mutually "
     "exclusive"},
    {"threshold above key count",
     "gateway: { id: g }\ntrust: { public-keys: [a, b], threshold: 3 }\n",
     "/etc/gw/t.yaml:2:42: trust.threshold: 3 is out of range (1..2)"},
    {"threshold with keys", "gateway: { id: g }\ntrust: { keys: k, threshold: 1 }\n",
     "/etc/gw/t.yaml:2:30: trust.threshold: only applies with 'public-keys' (a keys "
     "document carries its own threshold)"},
    {"empty public-keys", "gateway: { id: g }\ntrust: { public-keys: [] }\n",
     "/etc/gw/t.yaml:2:23: trust.public-keys: must not be empty"},
    {"yaml syntax error", HEAD "mqtt:\n  host: a\n port: 1\n",
     "/etc/gw/t.yaml:7:2: YAML syntax error: did not find expected key while parsing a "
     "block mapping"},
    {"unclosed flow", HEAD "nodes: [a, b\n",
     "/etc/gw/t.yaml:6:1: YAML syntax error: did not find expected ',' or ']' while "
     "parsing a flow sequence"},
    {"alias rejected", "gateway:\n  id: gw-1\n  hardware: *hw\n",
     "/etc/gw/t.yaml:3:13: gateway.hardware: aliases are not allowed"},
    {"anchor rejected", "gateway:\n  id: &x gw-1\n",
     "/etc/gw/t.yaml:2:7: gateway.id: anchors are not allowed"},
    {"tag rejected", "gateway:\n  id: !!str gw-1\n",
     "/etc/gw/t.yaml:2:7: gateway.id: tags are not allowed"},
    {"too deep", HEAD "nodes: [[[[[[[[[x]]]]]]]]]\n",
     "/etc/gw/t.yaml:5:15: nodes[0][0][0][0][0][0][0]: nested deeper than 8 levels"},
    {"two documents", HEAD "---\na: 1\n", "/etc/gw/t.yaml:5:1: only one YAML document is allowed"},
    {"empty file", "", "/etc/gw/t.yaml: empty configuration"},
    {"comment only", "# nothing\n", "/etc/gw/t.yaml: empty configuration"},
    {"not a mapping", "- a\n", "/etc/gw/t.yaml:1:1: expected a mapping, not a list"},
    {"complex key", HEAD "? [a]\n: b\n", "/etc/gw/t.yaml:5:3: keys must be strings"},
};

static void test_bad(void **state)
{
        const struct bad_case *t = *state;
        struct gw_config *c = NULL;
        char *error = NULL;

        assert_int_equal(parse(t->yaml, &c, &error), -EINVAL);
        assert_null(c);
        assert_non_null(error);
        if (strcmp(error, t->error) != 0)
                fail_msg("%s:\n got      %s\n expected %s", t->name, error, t->error);
        free(error);
}

static void test_bounds(void **state)
{
        struct gw_config *c = NULL;
        char *error = NULL, *big;
        size_t n;

        /* Oversize, before any parsing. */
        n = GW_CONFIG_MAX_FILE_SIZE + 1;
        big = malloc(n);
        assert_non_null(big);
        memset(big, '#', n);
        assert_int_equal(gw_config_parse(big, n, "t.yaml", NULL, &c, &error), -EFBIG);
        assert_string_equal(error, "t.yaml: larger than 1048576 bytes");
        free(error);
        error = NULL;

        /* A scalar over GW_CONFIG_MAX_SCALAR. */
        n = strlen(HEAD "state-dir: ") + GW_CONFIG_MAX_SCALAR + 2;
        strcpy(big, HEAD "state-dir: ");
        memset(big + strlen(big), 'x', GW_CONFIG_MAX_SCALAR + 1);
        big[n - 1] = '\n';
        assert_int_equal(gw_config_parse(big, n, "t.yaml", NULL, &c, &error), -EINVAL);
        assert_string_equal(error, "t.yaml:5:12: state-dir: value longer than 4096 bytes");
        free(error);
        error = NULL;

        /* More nodes than GW_CONFIG_MAX_NODES: reported at the first one too many. */
        strcpy(big, HEAD "nodes:\n");
        for (int i = 0; i <= GW_CONFIG_MAX_NODES; i++)
                strcat(big, "- {}\n");
        assert_int_equal(gw_config_parse(big, strlen(big), "t.yaml", NULL, &c, &error), -EINVAL);
        assert_string_equal(error, "t.yaml:262:3: nodes: too many entries (more than 256)");
        free(error);
        error = NULL;

        /* A NUL inside a double-quoted scalar. */
        assert_int_equal(parse("gateway: { id: \"a\\0b\" }\n", &c, &error), -EINVAL);
        assert_string_equal(error, "/etc/gw/t.yaml:1:16: gateway.id: value contains a NUL "
                                   "character");
        free(error);
        error = NULL;

        /* Invalid UTF-8 is a reader error, reported without a position. */
        assert_int_equal(parse("gateway: { id: \"\xff\" }\n", &c, &error), -EINVAL);
        assert_non_null(strstr(error, "/etc/gw/t.yaml: invalid YAML input at byte 16"));
        free(error);

        /* No ret_error: still fails cleanly. */
        assert_int_equal(parse("gateway: 1\n", &c, NULL), -EINVAL);
        assert_null(c);
        free(big);
}

static void test_load(void **state)
{
        char dir[] = "/tmp/test-config-XXXXXX", path[64], real[PATH_MAX], expect[PATH_MAX + 64];
        struct gw_config *c = NULL;
        char *error = NULL;
        FILE *f;

        assert_non_null(mkdtemp(dir));
        assert_non_null(realpath(dir, real));
        snprintf(path, sizeof(path), "%s/gatewayd.yaml", dir);

        assert_int_equal(gw_config_load(path, &c, &error), -ENOENT);
        assert_non_null(strstr(error, "gatewayd.yaml: cannot open: "));
        free(error);
        error = NULL;

        f = fopen(path, "w");
        assert_non_null(f);
        fputs("gateway: { id: gw-1 }\ntrust: { keys: ../k.yaml }\nstate-dir: st\n", f);
        fclose(f);
        assert_int_equal(gw_config_load(path, &c, &error), 0);
        snprintf(expect, sizeof(expect), "%s/../k.yaml", real);
        assert_string_equal(c->trust.keys, expect);
        snprintf(expect, sizeof(expect), "%s/st", real);
        assert_string_equal(c->state_dir, expect);
        assert_string_equal(c->path, path);
        c = gw_config_free(c);

        /* Errors carry the path as given. */
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("gateway: { id: gw-1 }\ntrust: { keys: k, bad: 1 }\n", f);
        fclose(f);
        assert_int_equal(gw_config_load(path, &c, &error), -EINVAL);
        snprintf(expect, sizeof(expect), "%s:2:19: trust: unknown key 'bad'", path);
        assert_string_equal(error, expect);
        free(error);
        error = NULL;

        /* Oversize files are refused before they are read. */
        f = fopen(path, "w");
        assert_non_null(f);
        for (int i = 0; i <= GW_CONFIG_MAX_FILE_SIZE / 16; i++)
                fputs("# padding.......\n", f);
        fclose(f);
        assert_int_equal(gw_config_load(path, &c, &error), -EFBIG);
        snprintf(expect, sizeof(expect), "%s: larger than 1048576 bytes", path);
        assert_string_equal(error, expect);
        free(error);
        error = NULL;

        /* A directory is not a configuration file. */
        assert_int_equal(gw_config_load(dir, &c, &error), -EINVAL);
        free(error);

        assert_int_equal(unlink(path), 0);
        assert_int_equal(rmdir(dir), 0);
}

/* The reference example in docs/ must stay valid. */
static void test_example(void **state)
{
        const char *srcdir = getenv("GW_TEST_SRCDIR");
        char path[PATH_MAX];
        struct gw_config *c = NULL;
        char *error = NULL;

        if (!srcdir) {
                print_message("GW_TEST_SRCDIR not set (run through meson test): skipped\n");
                skip();
        }
        snprintf(path, sizeof(path), "%s/../../docs/gatewayd.example.yaml", srcdir);
        if (gw_config_load(path, &c, &error) < 0)
                fail_msg("%s", error);
        assert_string_equal(c->gateway_id, "gw-demo-1");
        assert_true(c->n_nodes >= 1);
        assert_non_null(gw_config_find_node(c, "node-1"));
        gw_config_free(c);
}

static void test_log_levels(void **state)
{
        assert_int_equal(gw_config_log_level_from_string("warning"), LOG_WARNING);
        assert_int_equal(gw_config_log_level_from_string("error"), LOG_ERR);
        assert_int_equal(gw_config_log_level_from_string("err"), -EINVAL);
        assert_int_equal(gw_config_log_level_from_string(NULL), -EINVAL);
        assert_string_equal(gw_config_log_level_to_string(LOG_NOTICE), "notice");
        assert_null(gw_config_log_level_to_string(LOG_CRIT));
        assert_null(gw_config_log_level_to_string(99));
}

int main(void)
{
        struct CMUnitTest tests[3 + sizeof(bad_cases) / sizeof(bad_cases[0]) + 3];
        size_t n = 0;

        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_full);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_defaults);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_log_levels);
        for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++)
                tests[n++] = (struct CMUnitTest){
                    .name = bad_cases[i].name,
                    .test_func = test_bad,
                    .initial_state = (void *) &bad_cases[i],
                };
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_bounds);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_load);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_example);
        return _cmocka_run_group_tests("config", tests, n, NULL, NULL);
}
