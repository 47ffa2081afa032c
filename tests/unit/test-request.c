/* Unit tests for gatewayd/request.c: a table of deploy and cancel payloads, good and bad, with
 * the result, error code, message and id each must produce. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "request.h"

#define MAX_PAYLOAD  4096
#define MAX_MANIFEST 64

struct deploy_case {
        const char *name;
        const char *payload;
        size_t len;         /* 0: strlen(payload) */
        size_t max_payload; /* 0: MAX_PAYLOAD */
        int result;
        /* On success: */
        const char *url;
        const char *manifest; /* decoded, manifest_size = strlen */
        /* On failure: */
        enum gw_error code;
        const char *message; /* a substring of err.message */
        const char *err_id;  /* err.id, NULL when the id was not usable */
};

#define ID128                                                                                      \
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"                         \
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde."

#define OK_URL(n, p, u)                                                                            \
        {                                                                                          \
                .name = n, .payload = p, .url = u                                                  \
        }
#define OK_INLINE(n, p, m)                                                                         \
        {                                                                                          \
                .name = n, .payload = p, .manifest = m                                             \
        }
#define BAD(n, p, msg, eid)                                                                        \
        {                                                                                          \
                .name = n, .payload = p, .result = -EINVAL, .code = GW_ERR_PAYLOAD_INVALID,        \
                .message = msg, .err_id = eid                                                      \
        }

static const struct deploy_case deploy_cases[] = {
    OK_URL("https url", "{\"id\":\"d1\",\"manifest_url\":\"https://srv.example/m.yaml\"}",
           "https://srv.example/m.yaml"),
    OK_URL("http url with port and query",
           "{\"manifest_url\":\"http://10.0.0.1:8080/a/m.yaml?x=1\",\"id\":\"d1\"}",
           "http://10.0.0.1:8080/a/m.yaml?x=1"),
    OK_URL("file url", "{\"id\":\"d1\",\"manifest_url\":\"file:///srv/m.yaml\"}",
           "file:///srv/m.yaml"),
    OK_URL("file url localhost, scheme in capitals",
           "{\"id\":\"d1\",\"manifest_url\":\"FILE://localhost/srv/m.yaml\"}",
           "FILE://localhost/srv/m.yaml"),
    OK_URL("unknown members ignored",
           "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\",\"priority\":5,"
           "\"meta\":{\"a\":[1]}}",
           "http://h/m"),
    OK_URL("id of 128 characters", "{\"id\":\"" ID128 "\",\"manifest_url\":\"http://h/m\"}",
           "http://h/m"),
    OK_URL("whitespace around", " \n{ \"id\" : \"d1\" ,\t\"manifest_url\" : \"http://h/m\" }\n",
           "http://h/m"),
    OK_INLINE("inline, one pad", "{\"id\":\"d2\",\"manifest\":\"aGVsbG8=\"}", "hello"),
    OK_INLINE("inline, no pad", "{\"id\":\"d2\",\"manifest\":\"aGVsbG8h\"}", "hello!"),
    OK_INLINE("inline, two pads", "{\"id\":\"d2\",\"manifest\":\"aGVsbA==\"}", "hell"),
    OK_INLINE("inline, + and /", "{\"id\":\"d2\",\"manifest\":\"+/+/\"}", "\xfb\xff\xbf"),
    OK_INLINE("inline, exactly the cap",
              "{\"id\":\"d2\",\"manifest\":"
              "\"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MD"
              "EyMw==\"}",
              "0123456789012345678901234567890123456789012345678901234567890123"),

    BAD("not JSON", "deploy d1", "not valid JSON", NULL),
    BAD("truncated JSON", "{\"id\":\"d1\"", "not valid JSON", NULL),
    BAD("trailing garbage", "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\"} x", "not valid JSON",
        NULL),
    {.name = "NUL after the object",
     .payload = "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\"}\0",
     .len = 41,
     .result = -EINVAL,
     .code = GW_ERR_PAYLOAD_INVALID,
     .message = "not valid JSON"},
    BAD("escaped NUL in a string", "{\"id\":\"d\\u00001\",\"manifest_url\":\"http://h/m\"}",
        "not valid JSON", NULL),
    BAD("invalid UTF-8", "{\"id\":\"d1\",\"manifest_url\":\"http://h/\xff\"}", "not valid JSON",
        NULL),
    BAD("duplicate member", "{\"id\":\"d1\",\"id\":\"d2\",\"manifest_url\":\"http://h/m\"}",
        "duplicate", NULL),
    BAD("array", "[{\"id\":\"d1\"}]", "expected a JSON object", NULL),
    BAD("string", "\"d1\"", "expected a JSON object", NULL),
    BAD("null", "null", "expected a JSON object", NULL),
    BAD("nested too deep",
        "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\",\"x\":{\"a\":{\"b\":{\"c\":1}}}}",
        "nested deeper than 4 levels", NULL),
    BAD("number", "42", "expected a JSON object", NULL),
    BAD("nested arrays too deep", "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\",\"x\":[[[[]]]]}",
        "nested deeper than 4 levels", NULL),
    BAD("missing id", "{\"manifest_url\":\"http://h/m\"}", "missing member \"id\"", NULL),
    BAD("id is a number", "{\"id\":5,\"manifest_url\":\"http://h/m\"}", "\"id\" must be a string",
        NULL),
    BAD("id is null", "{\"id\":null,\"manifest_url\":\"http://h/m\"}", "\"id\" must be a string",
        NULL),
    BAD("empty id", "{\"id\":\"\",\"manifest_url\":\"http://h/m\"}",
        "\"id\" must match [A-Za-z0-9._-]{1,128}", NULL),
    BAD("id with a slash", "{\"id\":\"a/b\",\"manifest_url\":\"http://h/m\"}", "\"id\" must match",
        NULL),
    BAD("id with a space", "{\"id\":\"a b\",\"manifest_url\":\"http://h/m\"}", "\"id\" must match",
        NULL),
    BAD("id with a wildcard", "{\"id\":\"#\",\"manifest_url\":\"http://h/m\"}", "\"id\" must match",
        NULL),
    BAD("id non-ASCII", "{\"id\":\"caf\xc3\xa9\",\"manifest_url\":\"http://h/m\"}",
        "\"id\" must match", NULL),
    BAD("id of 129 characters", "{\"id\":\"" ID128 "x\",\"manifest_url\":\"http://h/m\"}",
        "\"id\" must match", NULL),
    BAD("both url and manifest",
        "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\",\"manifest\":\"aGVsbG8=\"}",
        "exactly one of \"manifest_url\" and \"manifest\"", "d1"),
    BAD("neither url nor manifest", "{\"id\":\"d1\"}",
        "exactly one of \"manifest_url\" and \"manifest\"", "d1"),
    BAD("url is null", "{\"id\":\"d1\",\"manifest_url\":null}", "\"manifest_url\" must be a string",
        "d1"),
    BAD("url is an object", "{\"id\":\"d1\",\"manifest_url\":{}}",
        "\"manifest_url\" must be a string", "d1"),
    BAD("relative url", "{\"id\":\"d1\",\"manifest_url\":\"m.yaml\"}",
        "\"manifest_url\" is not an absolute URL", "d1"),
    BAD("absolute path", "{\"id\":\"d1\",\"manifest_url\":\"/srv/m.yaml\"}",
        "\"manifest_url\" is not an absolute URL", "d1"),
    BAD("ftp url", "{\"id\":\"d1\",\"manifest_url\":\"ftp://h/m\"}",
        "\"manifest_url\" must use http, https or file", "d1"),
    BAD("scheme-relative url", "{\"id\":\"d1\",\"manifest_url\":\"//h/m\"}",
        "\"manifest_url\" is not an absolute URL", "d1"),
    BAD("no host", "{\"id\":\"d1\",\"manifest_url\":\"https:///m\"}",
        "\"manifest_url\" has no host", "d1"),
    BAD("nothing after scheme", "{\"id\":\"d1\",\"manifest_url\":\"http://\"}",
        "\"manifest_url\" has no host", "d1"),
    BAD("file url with a host", "{\"id\":\"d1\",\"manifest_url\":\"file://srv/m.yaml\"}",
        "\"manifest_url\" must be file:///path", "d1"),
    BAD("url with a space", "{\"id\":\"d1\",\"manifest_url\":\"http://h/a b\"}",
        "\"manifest_url\" contains spaces, control or non-ASCII characters", "d1"),
    BAD("url with a newline", "{\"id\":\"d1\",\"manifest_url\":\"http://h/a\\nb\"}",
        "\"manifest_url\" contains spaces", "d1"),
    BAD("empty url", "{\"id\":\"d1\",\"manifest_url\":\"\"}", "\"manifest_url\" is empty", "d1"),
    BAD("manifest is a number", "{\"id\":\"d1\",\"manifest\":5}", "\"manifest\" must be a string",
        "d1"),
    BAD("empty manifest", "{\"id\":\"d1\",\"manifest\":\"\"}", "\"manifest\" is empty", "d1"),
    BAD("base64 without padding", "{\"id\":\"d1\",\"manifest\":\"aGVsbG8\"}",
        "length 7 is not a multiple of 4", "d1"),
    BAD("base64 bad character", "{\"id\":\"d1\",\"manifest\":\"aGVs*G8=\"}", "not valid base64",
        "d1"),
    BAD("base64 url alphabet", "{\"id\":\"d1\",\"manifest\":\"-_-_\"}", "not valid base64", "d1"),
    BAD("base64 with a newline", "{\"id\":\"d1\",\"manifest\":\"aGVs\\nbG8h\"}",
        "length 9 is not a multiple of 4", "d1"),
    BAD("base64 with spaces", "{\"id\":\"d1\",\"manifest\":\"aGVs bG8\"}", "not valid base64",
        "d1"),
    BAD("base64 padding inside", "{\"id\":\"d1\",\"manifest\":\"aG==bG8h\"}", "not valid base64",
        "d1"),
    BAD("base64 only padding", "{\"id\":\"d1\",\"manifest\":\"====\"}", "not valid base64", "d1"),
    BAD("base64 non-canonical", "{\"id\":\"d1\",\"manifest\":\"aGVsbG9=\"}", "not valid base64",
        "d1"),
    BAD("base64 non-canonical, two pads", "{\"id\":\"d1\",\"manifest\":\"aGVsbB==\"}",
        "not valid base64", "d1"),
    {.name = "manifest over the cap",
     .payload = "{\"id\":\"d1\",\"manifest\":"
                "\"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5"
                "MDEyMzQ=\"}",
     .result = -EMSGSIZE,
     .code = GW_ERR_MANIFEST_TOO_LARGE,
     .message = "manifest of 65 bytes is larger than the limit of 64 bytes",
     .err_id = "d1"},
    {.name = "payload over the cap",
     .payload = "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\"}",
     .max_payload = 38,
     .result = -EMSGSIZE,
     .code = GW_ERR_PAYLOAD_TOO_LARGE,
     .message = "payload of 39 bytes is larger than the limit of 38 bytes"},
    {.name = "payload exactly the cap",
     .payload = "{\"id\":\"d1\",\"manifest_url\":\"http://h/m\"}",
     .max_payload = 39,
     .url = "http://h/m"},
    /* The cap applies before parsing: this would not even be JSON. */
    {.name = "garbage over the cap",
     .payload = "xxxxxxxxxxx",
     .max_payload = 10,
     .result = -EMSGSIZE,
     .code = GW_ERR_PAYLOAD_TOO_LARGE,
     .message = "payload of 11 bytes"},
};

static void test_deploy(void **state)
{
        const struct deploy_case *t = *state;
        struct gw_deploy_request req = {};
        struct gw_request_error err = {};
        size_t len = t->len ? t->len : strlen(t->payload);
        int r;

        r = gw_deploy_request_parse(t->payload, len, t->max_payload ? t->max_payload : MAX_PAYLOAD,
                                    MAX_MANIFEST, &req, &err);
        if (r != t->result)
                fail_msg("%s: got %d (%s), expected %d", t->name, r, err.message ? err.message : "",
                         t->result);
        if (r == 0) {
                assert_non_null(req.id);
                assert_null(err.message);
                if (t->url) {
                        assert_string_equal(req.manifest_url, t->url);
                        assert_null(req.manifest);
                        assert_int_equal(req.manifest_size, 0);
                } else {
                        assert_null(req.manifest_url);
                        assert_int_equal(req.manifest_size, strlen(t->manifest));
                        assert_memory_equal(req.manifest, t->manifest, req.manifest_size);
                }
                gw_deploy_request_done(&req);
                assert_null(req.id);
                return;
        }

        assert_null(req.id);
        assert_int_equal(err.code, t->code);
        assert_non_null(err.message);
        if (!strstr(err.message, t->message))
                fail_msg("%s: message \"%s\" lacks \"%s\"", t->name, err.message, t->message);
        if (t->err_id)
                assert_string_equal(err.id, t->err_id);
        else
                assert_null(err.id);
        gw_request_error_done(&err);
        assert_null(err.message);
        assert_int_equal(err.code, GW_ERR_NONE);
}

static void test_deploy_special(void **state)
{
        struct gw_deploy_request req = {.id = (char *) "untouched"};
        struct gw_request_error err = {};
        char *deep;
        int r;

        /* A cleared retained message: empty, not an error, even with a NULL buffer. */
        assert_int_equal(gw_deploy_request_parse("", 0, MAX_PAYLOAD, MAX_MANIFEST, &req, &err),
                         GW_REQUEST_CLEARED);
        assert_null(req.id);
        assert_null(err.message);
        assert_int_equal(gw_deploy_request_parse(NULL, 0, MAX_PAYLOAD, MAX_MANIFEST, &req, &err),
                         GW_REQUEST_CLEARED);

        /* Deeper than jansson would ever take: refused by jansson itself, no stack overflow. */
        deep = malloc(20001);
        assert_non_null(deep);
        memset(deep, '[', 10000);
        memset(deep + 10000, ']', 10000);
        deep[20000] = '\0';
        r = gw_deploy_request_parse(deep, 20000, 20000, MAX_MANIFEST, &req, &err);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(err.code, GW_ERR_PAYLOAD_INVALID);
        gw_request_error_done(&err);
        free(deep);

        /* err may be NULL; ret may not. */
        assert_int_equal(gw_deploy_request_parse("[]", 2, MAX_PAYLOAD, MAX_MANIFEST, &req, NULL),
                         -EINVAL);
        assert_null(req.id);
        assert_int_equal(gw_deploy_request_parse("{}", 2, MAX_PAYLOAD, MAX_MANIFEST, NULL, NULL),
                         -EINVAL);
        gw_deploy_request_done(NULL);
        gw_request_error_done(NULL);
}

static void test_cancel(void **state)
{
        struct gw_cancel_request req = {};
        struct gw_request_error err = {};
        const char *p;

        p = "{\"id\":\"d1\"}";
        assert_int_equal(gw_cancel_request_parse(p, strlen(p), MAX_PAYLOAD, &req, &err), 0);
        assert_string_equal(req.id, "d1");
        gw_cancel_request_done(&req);
        assert_null(req.id);

        p = "{\"reason\":\"operator\",\"id\":\"d1\"}";
        assert_int_equal(gw_cancel_request_parse(p, strlen(p), MAX_PAYLOAD, &req, &err), 0);
        assert_string_equal(req.id, "d1");
        gw_cancel_request_done(&req);

        assert_int_equal(gw_cancel_request_parse("", 0, MAX_PAYLOAD, &req, &err),
                         GW_REQUEST_CLEARED);
        assert_null(req.id);

        p = "{}";
        assert_int_equal(gw_cancel_request_parse(p, strlen(p), MAX_PAYLOAD, &req, &err), -EINVAL);
        assert_int_equal(err.code, GW_ERR_PAYLOAD_INVALID);
        assert_string_equal(err.message, "missing member \"id\"");
        assert_null(req.id);
        gw_request_error_done(&err);

        p = "{\"id\":\"../x\"}";
        assert_int_equal(gw_cancel_request_parse(p, strlen(p), MAX_PAYLOAD, &req, &err), -EINVAL);
        assert_string_equal(err.message, "\"id\" must match [A-Za-z0-9._-]{1,128}");
        gw_request_error_done(&err);

        p = "{\"id\":\"d1\"}";
        assert_int_equal(gw_cancel_request_parse(p, strlen(p), 5, &req, &err), -EMSGSIZE);
        assert_int_equal(err.code, GW_ERR_PAYLOAD_TOO_LARGE);
        gw_request_error_done(&err);
}

static void test_id_valid(void **state)
{
        assert_true(gw_request_id_valid("spring-release_r3.1"));
        assert_false(gw_request_id_valid(""));
        assert_false(gw_request_id_valid(NULL));
        assert_false(gw_request_id_valid("a+b"));
        assert_true(gw_request_id_valid(ID128));
        assert_false(gw_request_id_valid(ID128 "0"));
}

int main(void)
{
        struct CMUnitTest tests[sizeof(deploy_cases) / sizeof(deploy_cases[0]) + 3];
        size_t n = 0;

        for (size_t i = 0; i < sizeof(deploy_cases) / sizeof(deploy_cases[0]); i++)
                tests[n++] = (struct CMUnitTest){
                    .name = deploy_cases[i].name,
                    .test_func = test_deploy,
                    .initial_state = (void *) &deploy_cases[i],
                };
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_deploy_special);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_cancel);
        tests[n++] = (struct CMUnitTest) cmocka_unit_test(test_id_valid);
        return _cmocka_run_group_tests("request", tests, n, NULL, NULL);
}
