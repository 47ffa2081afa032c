/* Unit tests for the manifest library: envelope, signatures and thresholds, the strict body
 * schema and YAML limits, signing, trust roots, rotation and state. Keys are generated here,
 * at test time; no private key is committed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "gw/error.h"
#include "gw/manifest.h"
#include "gw/options.h"

static void *xmalloc(size_t n) __attribute__((returns_nonnull, malloc));

/* Test allocations never fail quietly. */
static void *xmalloc(size_t n)
{
        void *p = malloc(n);

        if (!p)
                abort();
        return p;
}

/* 2030-01-01T00:00:00Z: "now" for every check unless a case says otherwise. */
#define NOW ((time_t) 1893456000)

static const char good_body[] =
    "kind: gatewayd/manifest\n"
    "format: 1\n"
    "id: spring-release-r3\n"
    "sequence: 42\n"
    "expires: 2030-12-31T00:00:00Z\n"
    "gateway: { hardware: [gw-imx8-rev2, gw-imx8-rev3] }\n"
    "policy: { atomic: true, parallel: 8, canary: 1 }\n"
    "images:\n"
    "  - name: motor-ctrl\n"
    "    version: 1.4.2\n"
    "    targets: { class: stm32f4-motor }\n"
    "    hardware: { chip-id: 0x413 }\n"
    "    protocol: stm32-rom\n"
    "    options: { address: 0x08000000, verify: true }\n"
    "    size: 131072\n"
    "    sha256: 5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c\n"
    "    url: images/motor-ctrl-1.4.2.bin\n"
    "    mirrors: [https://mirror.example/motor-ctrl-1.4.2.bin]\n"
    "  - name: sensor\n"
    "    version: \"2.0\"\n"
    "    targets: { nodes: [sensor-1, sensor-2] }\n"
    "    protocol: ymodem\n"
    "    size: 1000\n"
    "    sha256: ABCDEFabcdef0123456789ABCDEFabcdef0123456789ABCDEFabcdef01234567\n"
    "    url: images/sensor.bin\n";

/* Keys made once per run: two Ed25519 (a, b), one P-256 (c). */
static struct {
        struct gw_signer *signer;
        char *pub;
} keys[3];

static char *pem_of(EVP_PKEY *pkey, bool private)
{
        BIO *bio = BIO_new(BIO_s_mem());
        char *data = NULL, *s;
        long n;

        assert_non_null(bio);
        if (private)
                assert_int_equal(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL), 1);
        else
                assert_int_equal(PEM_write_bio_PUBKEY(bio, pkey), 1);
        n = BIO_get_mem_data(bio, &data);
        assert_true(n > 0);
        s = strndup(data, (size_t) n);
        assert_non_null(s);
        BIO_free(bio);
        return s;
}

static int setup_keys(void **state)
{
        for (int i = 0; i < 3; i++) {
                EVP_PKEY *pkey = i < 2 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                                       : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
                char *priv;

                if (!pkey)
                        return -1;
                priv = pem_of(pkey, true);
                keys[i].pub = pem_of(pkey, false);
                if (gw_signer_load_pem(priv, strlen(priv), &keys[i].signer) < 0)
                        return -1;
                free(priv);
                EVP_PKEY_free(pkey);
        }
        return 0;
}

static int teardown_keys(void **state)
{
        for (int i = 0; i < 3; i++) {
                keys[i].signer = gw_signer_free(keys[i].signer);
                free(keys[i].pub);
        }
        return 0;
}

/* A trust root of the keys in mask (bit i = keys[i]) with a threshold. */
static struct gw_trust *trust_of(unsigned mask, unsigned threshold)
{
        struct gw_trust *t = NULL;

        assert_int_equal(gw_trust_new(threshold, 1, &t), 0);
        for (int i = 0; i < 3; i++)
                if (mask & (1u << i))
                        assert_int_equal(gw_trust_add_key_pem(t, keys[i].pub, strlen(keys[i].pub)),
                                         0);
        return t;
}

/* body signed by each key in mask, in index order. */
static char *sign_with(const char *body, unsigned mask, size_t *ret_len)
{
        struct gw_manifest_error err = {0};
        char *buf = strdup(body);
        size_t len = strlen(body);

        assert_non_null(buf);
        for (int i = 0; i < 3; i++) {
                char *out = NULL;
                size_t out_len = 0;

                if (!(mask & (1u << i)))
                        continue;
                if (gw_manifest_sign(keys[i].signer, buf, len, 0, &out, &out_len, &err) < 0)
                        fail_msg("sign: %s: %s", gw_error_to_string(err.code), err.message);
                free(buf);
                buf = out;
                len = out_len;
        }
        *ret_len = len;
        return buf;
}

/* s with the first occurrence of find replaced by repl (find must occur). */
static char *replace(const char *s, const char *find, const char *repl)
{
        const char *at = strstr(s, find);
        size_t pre, n;
        char *out;

        if (!at)
                fail_msg("'%s' not found", find);
        pre = (size_t) (at - s);
        n = strlen(s) - strlen(find) + strlen(repl);
        out = xmalloc(n + 1);
        assert_non_null(out);
        memcpy(out, s, pre);
        strcpy(out + pre, repl);
        strcat(out, at + strlen(find));
        return out;
}

static enum gw_error verify(const struct gw_trust *t, const char *buf, size_t len,
                            const struct gw_manifest_verify_params *p, char *ret_msg,
                            struct gw_manifest **ret_m)
{
        struct gw_manifest_verify_params def = {.now = NOW};
        struct gw_manifest_error err = {.code = GW_ERR_NONE};
        struct gw_manifest *m = NULL;
        int r;

        r = gw_manifest_verify(t, p ?: &def, buf, len, &m, &err);
        if (ret_msg)
                strcpy(ret_msg, r < 0 ? err.message : "");
        if (r < 0) {
                assert_null(m);
                assert_int_not_equal(err.code, GW_ERR_NONE);
                return err.code;
        }
        assert_non_null(m);
        if (ret_m)
                *ret_m = m;
        else
                gw_manifest_free(m);
        return GW_ERR_NONE;
}

/* ---- the good manifest, field by field ---- */

static void test_good(void **state)
{
        struct gw_trust *t = trust_of(1, 1);
        struct gw_manifest *m = NULL;
        uint8_t digest[32];
        unsigned int dlen = 0;
        size_t len;
        char *buf = sign_with(good_body, 1, &len);
        char msg[256];
        uint64_t u = 0;

        assert_int_equal(verify(t, buf, len, NULL, msg, &m), GW_ERR_NONE);
        assert_int_equal(m->format, 1);
        assert_string_equal(m->id, "spring-release-r3");
        assert_int_equal(m->sequence, 42);
        assert_int_equal(m->expires, 1924905600); /* 2030-12-31T00:00:00Z */
        assert_int_equal(m->n_gateway_hardware, 2);
        assert_string_equal(m->gateway_hardware[1], "gw-imx8-rev3");
        assert_true(m->policy.atomic);
        assert_int_equal(m->policy.parallel, 8);
        assert_int_equal(m->policy.canary, 1);
        assert_false(m->policy.allow_downgrade);
        assert_int_equal(m->n_images, 2);

        assert_string_equal(m->images[0].name, "motor-ctrl");
        assert_string_equal(m->images[0].version, "1.4.2");
        assert_int_equal(m->images[0].target_kind, GW_TARGET_CLASS);
        assert_int_equal(m->images[0].n_targets, 1);
        assert_string_equal(m->images[0].targets[0], "stm32f4-motor");
        assert_int_equal(m->images[0].n_hardware, 1);
        assert_string_equal(m->images[0].hardware[0].key, "chip-id");
        assert_string_equal(m->images[0].hardware[0].value, "0x413");
        assert_string_equal(m->images[0].protocol, "stm32-rom");
        assert_int_equal(gw_options_count(m->images[0].options), 2);
        assert_int_equal(gw_options_get_u64(m->images[0].options, "address", 0, 0, UINT64_MAX, &u),
                         0);
        assert_int_equal(u, 0x08000000);
        assert_int_equal(m->images[0].size, 131072);
        assert_int_equal(m->images[0].sha256[0], 0x5f);
        assert_int_equal(m->images[0].sha256[31], 0x0c);
        assert_string_equal(m->images[0].url, "images/motor-ctrl-1.4.2.bin");
        assert_int_equal(m->images[0].n_mirrors, 1);

        assert_string_equal(m->images[1].version, "2.0");
        assert_int_equal(m->images[1].target_kind, GW_TARGET_NODES);
        assert_int_equal(m->images[1].n_targets, 2);
        assert_string_equal(m->images[1].targets[1], "sensor-2");
        assert_int_equal(m->images[1].n_hardware, 0);
        assert_int_equal(gw_options_count(m->images[1].options), 0);
        assert_int_equal(m->images[1].sha256[0], 0xab);

        /* The whole-file hash and the signer. */
        assert_int_equal(EVP_Digest(buf, len, digest, &dlen, EVP_sha256(), NULL), 1);
        assert_memory_equal(m->sha256, digest, 32);
        assert_int_equal(m->n_signers, 1);
        assert_string_equal(m->signers[0], gw_signer_keyid(keys[0].signer));

        gw_manifest_free(m);
        free(buf);
        gw_trust_free(t);
}

/* ---- envelope and signatures ---- */

enum mutation {
        MUT_NONE,
        MUT_BODY_BYTE,  /* flip one byte of the body after signing */
        MUT_SIG_BYTE,   /* change one base64 character of the first signature */
        MUT_NO_SEP,     /* remove the "---" line */
        MUT_DUP_SIG,    /* repeat the first signature entry */
        MUT_UNKNOWN_ID, /* replace the keyid by one no trusted key has */
        MUT_BAD_B64,    /* a signature that is not base64 */
        MUT_EMPTY_SIGS, /* "signatures: []" */
        MUT_LEADING_SEP /* the body starts with a "---" line of its own */
};

struct sig_case {
        const char *name;
        unsigned sign_mask;  /* who signs */
        unsigned trust_mask; /* who is trusted */
        unsigned threshold;
        enum mutation mut;
        size_t max_size;
        enum gw_error expect;
};

static const struct sig_case sig_cases[] = {
    {"ed25519 good", 1, 1, 1, MUT_NONE, 0, GW_ERR_NONE},
    {"p256 good", 4, 4, 1, MUT_NONE, 0, GW_ERR_NONE},
    {"two of two", 3, 3, 2, MUT_NONE, 0, GW_ERR_NONE},
    {"ed25519 + p256, threshold 2", 5, 7, 2, MUT_NONE, 0, GW_ERR_NONE},
    {"extra untrusted signer ignored", 7, 1, 1, MUT_NONE, 0, GW_ERR_NONE},
    {"body starting with ---", 1, 1, 1, MUT_LEADING_SEP, 0, GW_ERR_NONE},
    {"tampered body byte", 1, 1, 1, MUT_BODY_BYTE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"tampered body byte p256", 4, 4, 1, MUT_BODY_BYTE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"tampered signature", 1, 1, 1, MUT_SIG_BYTE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"tampered signature p256", 4, 4, 1, MUT_SIG_BYTE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"wrong key", 2, 1, 1, MUT_NONE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"unknown keyid only", 1, 1, 1, MUT_UNKNOWN_ID, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"one key twice, threshold 2", 1, 3, 2, MUT_DUP_SIG, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"one of two, threshold 2", 2, 3, 2, MUT_NONE, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"no signatures", 1, 1, 1, MUT_EMPTY_SIGS, 0, GW_ERR_THRESHOLD_NOT_MET},
    {"missing ---", 1, 1, 1, MUT_NO_SEP, 0, GW_ERR_ENVELOPE_MALFORMED},
    {"signature not base64", 1, 1, 1, MUT_BAD_B64, 0, GW_ERR_ENVELOPE_MALFORMED},
    {"oversize", 1, 1, 1, MUT_NONE, 512, GW_ERR_MANIFEST_TOO_LARGE},
};

static char *mutate(char *buf, size_t *len, enum mutation mut)
{
        char *sep = strstr(buf, "\n---\n"), *p, *out = NULL;

        assert_non_null(sep);
        switch (mut) {
        case MUT_NONE:
        case MUT_LEADING_SEP:
                return buf;
        case MUT_BODY_BYTE:
                p = strstr(buf, "sequence: 42");
                p[11] = '3';
                return buf;
        case MUT_SIG_BYTE:
                p = strstr(buf, "sig: ") + 5 + 10;
                *p = *p == 'A' ? 'B' : 'A';
                return buf;
        case MUT_NO_SEP:
                memmove(sep + 1, sep + 5, strlen(sep + 5) + 1);
                *len = strlen(buf);
                return buf;
        case MUT_DUP_SIG: {
                char *entry = strstr(buf, "  - keyid:");
                char *copy = strdup(entry);

                out = xmalloc(strlen(buf) + strlen(copy) + 1);
                strcpy(out, buf);
                strcat(out, copy);
                free(copy);
                break;
        }
        case MUT_UNKNOWN_ID:
                p = strstr(buf, "keyid: ") + 7;
                memset(p, 'e', 64);
                return buf;
        case MUT_BAD_B64:
                p = strstr(buf, "sig: ") + 5;
                p[3] = '*';
                return buf;
        case MUT_EMPTY_SIGS:
                strcpy(sep + 5, "signatures: []\n");
                *len = strlen(buf);
                return buf;
        default:
                fail();
        }
        free(buf);
        *len = strlen(out);
        return out;
}

static void test_signatures(void **state)
{
        for (size_t i = 0; i < sizeof(sig_cases) / sizeof(sig_cases[0]); i++) {
                const struct sig_case *c = &sig_cases[i];
                struct gw_manifest_verify_params p = {.now = NOW, .max_size = c->max_size};
                struct gw_trust *t = trust_of(c->trust_mask, c->threshold);
                char *body = c->mut == MUT_LEADING_SEP ? replace(good_body, "kind:", "---\nkind:")
                                                       : strdup(good_body);
                size_t len;
                char *buf = sign_with(body, c->sign_mask, &len);
                char msg[256];
                enum gw_error got;

                buf = mutate(buf, &len, c->mut);
                got = verify(t, buf, len, &p, msg, NULL);
                if (got != c->expect)
                        fail_msg("%s: expected %s, got %s (%s)", c->name,
                                 gw_error_to_string(c->expect), gw_error_to_string(got), msg);
                free(buf);
                free(body);
                gw_trust_free(t);
        }
}

/* ---- body: YAML limits and the strict schema ---- */

struct body_case {
        const char *name;
        const char *find;
        const char *repl;
        enum gw_error expect;
        const char *msg; /* expected in the message, or NULL */
};

static const struct body_case body_cases[] = {
    {"yaml alias", "sequence: 42\n", "sequence: &s 42\nid2: *s\n", GW_ERR_BODY_MALFORMED,
     "anchors"},
    {"yaml alias only", "    url: images/sensor.bin\n", "    url: images/sensor.bin\n  - *img\n",
     GW_ERR_BODY_MALFORMED, NULL},
    {"yaml anchor", "  - name: sensor\n", "  - &img\n    name: sensor\n", GW_ERR_BODY_MALFORMED,
     "anchors"},
    {"yaml tag", "sequence: 42", "sequence: !!int 42", GW_ERR_BODY_MALFORMED, "tags"},
    {"too deep", "policy:", "x: [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]\npolicy:",
     GW_ERR_BODY_MALFORMED, "deeper"},
    {"yaml syntax", "format: 1\n", "format: [1\n", GW_ERR_BODY_MALFORMED, "line"},
    {"second document", "images:\n", "---\nimages:\n", GW_ERR_BODY_MALFORMED, NULL},
    {"unknown field", "format: 1\n", "format: 1\ncolour: red\n", GW_ERR_SCHEMA_INVALID,
     "colour: unknown field"},
    {"unknown image field", "    protocol: ymodem\n", "    protocol: ymodem\n    speed: 3\n",
     GW_ERR_SCHEMA_INVALID, "images[1].speed: unknown field"},
    {"duplicate field", "sequence: 42\n", "sequence: 42\nsequence: 43\n", GW_ERR_SCHEMA_INVALID,
     "sequence: duplicate field"},
    {"duplicate option", "verify: true", "verify: true, verify: false", GW_ERR_SCHEMA_INVALID,
     "images[0].options.verify: duplicate"},
    {"missing field", "expires: 2030-12-31T00:00:00Z\n", "", GW_ERR_SCHEMA_INVALID,
     "expires: missing field"},
    {"missing image field", "    url: images/sensor.bin\n", "", GW_ERR_SCHEMA_INVALID,
     "images[1].url: missing field"},
    {"wrong type: quoted int", "sequence: 42", "sequence: \"42\"", GW_ERR_SCHEMA_INVALID,
     "sequence: expected an unsigned"},
    {"wrong type: negative", "sequence: 42", "sequence: -1", GW_ERR_SCHEMA_INVALID, "sequence"},
    {"wrong type: list for string", "id: spring-release-r3", "id: [a]", GW_ERR_SCHEMA_INVALID,
     "id: expected a string"},
    {"wrong type: bool", "atomic: true", "atomic: yes", GW_ERR_SCHEMA_INVALID, "policy.atomic"},
    {"wrong type: null", "protocol: ymodem", "protocol: ~", GW_ERR_SCHEMA_INVALID,
     "images[1].protocol: expected a string"},
    {"overflow", "size: 1000", "size: 18446744073709551616", GW_ERR_SCHEMA_INVALID,
     "images[1].size"},
    {"bad sha256", "ABCDEFabcdef0123456789ABCDEFabcdef0123456789ABCDEFabcdef01234567",
     "ABCDEFabcdef0123456789ABCDEFabcdef0123456789ABCDEFabcdef0123456", GW_ERR_SCHEMA_INVALID,
     "images[1].sha256: expected 64 hex digits"},
    {"non-hex sha256", "5f0c5f0c5f0c", "5f0c5f0c5f0g", GW_ERR_SCHEMA_INVALID,
     "images[0].sha256: expected 64 hex digits"},
    {"bad id", "id: spring-release-r3", "id: spring/release", GW_ERR_SCHEMA_INVALID, "id:"},
    {"wrong kind", "kind: gatewayd/manifest", "kind: gatewayd/keys", GW_ERR_SCHEMA_INVALID, "kind"},
    {"format 2", "format: 1", "format: 2", GW_ERR_SCHEMA_INVALID, "format"},
    {"bad time", "2030-12-31T00:00:00Z", "2030-12-31 00:00:00", GW_ERR_SCHEMA_INVALID, "expires"},
    {"not utc", "2030-12-31T00:00:00Z", "2030-12-31T00:00:00+01:00", GW_ERR_SCHEMA_INVALID,
     "expires"},
    {"feb 30", "2030-12-31T00:00:00Z", "2030-02-30T00:00:00Z", GW_ERR_SCHEMA_INVALID, "expires"},
    {"two targets", "{ class: stm32f4-motor }", "{ class: stm32f4-motor, node: m1 }",
     GW_ERR_SCHEMA_INVALID, "images[0].targets: expected exactly one"},
    {"empty nodes", "[sensor-1, sensor-2]", "[]", GW_ERR_SCHEMA_INVALID, "images[1].targets.nodes"},
    {"duplicate image name", "name: sensor", "name: motor-ctrl", GW_ERR_SCHEMA_INVALID,
     "images[1].name"},
    {"parallel 0", "parallel: 8", "parallel: 0", GW_ERR_SCHEMA_INVALID, "policy.parallel"},
    {"expired", "2030-12-31T00:00:00Z", "2029-12-31T23:59:59Z", GW_ERR_EXPIRED, NULL},
    {"expires now", "2030-12-31T00:00:00Z", "2030-01-01T00:00:00Z", GW_ERR_EXPIRED, NULL},
    {"fraction and leap day", "2030-12-31T00:00:00Z", "2032-02-29T00:00:00.5Z", GW_ERR_NONE, NULL},
    {"allow-downgrade", "canary: 1", "canary: 1, allow-downgrade: true", GW_ERR_NONE, NULL},
    {"no gateway section", "gateway: { hardware: [gw-imx8-rev2, gw-imx8-rev3] }\n", "", GW_ERR_NONE,
     NULL},
    {"targets node", "{ class: stm32f4-motor }", "{ node: motor-1 }", GW_ERR_NONE, NULL},
    /* How images travel. */
    {"transfer zstd", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 500, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, compression: zstd }",
     GW_ERR_NONE, NULL},
    {"transfer that changes nothing", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 500, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111 }",
     GW_ERR_SCHEMA_INVALID, "neither compressed nor encrypted"},
    {"transfer gzip", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 500, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, compression: gzip }",
     GW_ERR_SCHEMA_INVALID, "images[1].transfer.compression"},
    {"encrypted", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_NONE, NULL},
    {"encryption without transfer", "url: images/sensor.bin",
     "url: images/sensor.bin\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_SCHEMA_INVALID, "encryption needs transfer"},
    {"encrypted without nonce", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, compression: zstd }\n    "
     "encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_SCHEMA_INVALID, "needs a nonce"},
    {"nonce without encryption", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, compression: zstd, nonce: "
     "AAECAwQFBgcICQoL }",
     GW_ERR_SCHEMA_INVALID, "a nonce without encryption"},
    {"nonce of 9 bytes", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcI }\n    "
     "encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_SCHEMA_INVALID, "images[1].transfer.nonce: expected base64 of 12 bytes"},
    {"no recipients", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    encryption: { cipher: aes-256-gcm, recipients: [] }",
     GW_ERR_SCHEMA_INVALID, "images[1].encryption.recipients"},
    {"cipher chacha", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    encryption: { cipher: chacha20, recipients: [] }",
     GW_ERR_SCHEMA_INVALID, "images[1].encryption.cipher"},
    {"delta", "url: images/sensor.bin",
     "url: images/sensor.bin\n    delta: { base-sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, base-size: 900, url: "
     "d.patch, size: 40, sha256: 2222222222222222222222222222222222222222222222222222222222222222 "
     "}",
     GW_ERR_NONE, NULL},
    {"delta of the image itself", "url: images/sensor.bin",
     "url: images/sensor.bin\n    delta: { base-sha256: "
     "ABCDEFabcdef0123456789ABCDEFabcdef0123456789ABCDEFabcdef01234567, base-size: 900, url: "
     "d.patch, size: 40, sha256: 2222222222222222222222222222222222222222222222222222222222222222 "
     "}",
     GW_ERR_SCHEMA_INVALID, "the base is the image itself"},
    {"delta without url", "url: images/sensor.bin",
     "url: images/sensor.bin\n    delta: { base-sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, base-size: 900, size: 40, "
     "sha256: 2222222222222222222222222222222222222222222222222222222222222222 }",
     GW_ERR_SCHEMA_INVALID, "images[1].delta"},
    {"encrypted delta sharing the nonce", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    delta: { base-sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, base-size: 900, url: "
     "d.patch, size: 40, sha256: 2222222222222222222222222222222222222222222222222222222222222222, "
     "nonce: AAECAwQFBgcICQoL }\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_SCHEMA_INVALID, "share a nonce"},
    {"encrypted delta", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    delta: { base-sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, base-size: 900, url: "
     "d.patch, size: 40, sha256: 2222222222222222222222222222222222222222222222222222222222222222, "
     "nonce: DAsKCQgHBgUEAwIB }\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_NONE, NULL},
    {"recipient listed twice", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }, { keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "\"xMmWMNgBVgXmA01aXI6SajwUVL4mnGGR5hK2QXGpRZFCCSga35+kyYqmgiF4xfmp\" }] }",
     GW_ERR_SCHEMA_INVALID, "keyid listed twice"},
    {"wrapped key too short", "url: images/sensor.bin",
     "url: images/sensor.bin\n    transfer: { size: 1016, sha256: "
     "1111111111111111111111111111111111111111111111111111111111111111, nonce: AAECAwQFBgcICQoL "
     "}\n    encryption: { cipher: aes-256-gcm, recipients: [{ keyid: "
     "abababababababababababababababababababababababababababababababab, ephemeral: "
     "\"MCowBQYDK2VuAyEAMcRe3G1jeqgwYoXAZO13uGS7371IsuQnRVXEdQ0CdnY=\", wrapped-key: "
     "AAECAwQFBgcICQoL }] }",
     GW_ERR_SCHEMA_INVALID, "wrapped-key"},
};

static void test_body(void **state)
{
        struct gw_trust *t = trust_of(1, 1);

        for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
                const struct body_case *c = &body_cases[i];
                char *body = replace(good_body, c->find, c->repl);
                char msg[256];
                size_t len;
                char *buf;
                enum gw_error got;

                /* Sign the bytes as they are: gw_manifest_sign refuses bodies that do not
                 * parse, so build the envelope by hand with a valid signature. */
                {
                        uint8_t *sig = NULL;
                        size_t sig_len = 0;
                        char *b64;

                        assert_int_equal(gw_signer_sign(keys[0].signer, GW_MANIFEST_PAYLOAD_TYPE,
                                                        body, strlen(body), &sig, &sig_len),
                                         0);
                        b64 = xmalloc(sig_len * 2 + 4);
                        assert_non_null(b64);
                        EVP_EncodeBlock((unsigned char *) b64, sig, (int) sig_len);
                        buf = xmalloc(strlen(body) + 300);
                        assert_non_null(buf);
                        sprintf(buf, "%s---\nsignatures:\n  - keyid: %s\n    sig: %s\n", body,
                                gw_signer_keyid(keys[0].signer), b64);
                        len = strlen(buf);
                        free(b64);
                        free(sig);
                }
                got = verify(t, buf, len, NULL, msg, NULL);
                if (got != c->expect)
                        fail_msg("%s: expected %s, got %s (%s)", c->name,
                                 gw_error_to_string(c->expect), gw_error_to_string(got), msg);
                if (c->msg && !strstr(msg, c->msg))
                        fail_msg("%s: message \"%s\" lacks \"%s\"", c->name, msg, c->msg);
                free(buf);
                free(body);
        }
        gw_trust_free(t);
}

/* Limits that need generated bodies: long scalars, too many images. */
static void test_limits(void **state)
{
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        char *long_id = xmalloc(GW_MANIFEST_YAML_MAX_SCALAR + 2);
        char *body, *repl;
        size_t n;

        /* A scalar over the cap is body-malformed, before any schema check. */
        memset(long_id, 'x', GW_MANIFEST_YAML_MAX_SCALAR + 1);
        long_id[GW_MANIFEST_YAML_MAX_SCALAR + 1] = '\0';
        repl = xmalloc(strlen(long_id) + 8);
        sprintf(repl, "id: %s", long_id);
        body = replace(good_body, "id: spring-release-r3", repl);
        assert_true(gw_manifest_parse_body(body, strlen(body), &m, &err) < 0);
        assert_int_equal(err.code, GW_ERR_BODY_MALFORMED);
        assert_non_null(strstr(err.message, "scalar longer"));
        free(body);
        free(repl);

        /* An id within the scalar cap but over the id limit is schema-invalid. */
        long_id[GW_MANIFEST_ID_MAX + 1] = '\0';
        repl = xmalloc(strlen(long_id) + 8);
        sprintf(repl, "id: %s", long_id);
        body = replace(good_body, "id: spring-release-r3", repl);
        assert_true(gw_manifest_parse_body(body, strlen(body), &m, &err) < 0);
        assert_int_equal(err.code, GW_ERR_SCHEMA_INVALID);
        free(body);
        free(repl);
        free(long_id);

        /* 257 images. */
        n = strlen(good_body) + 300 * (GW_MANIFEST_MAX_IMAGES + 1);
        body = xmalloc(n);
        strcpy(body, good_body);
        strstr(body, "  - name: motor-ctrl")[0] = '\0';
        for (int i = 0; i <= GW_MANIFEST_MAX_IMAGES; i++)
                sprintf(body + strlen(body),
                        "  - {name: i%d, version: 1, targets: {node: n}, protocol: p, size: 1, "
                        "sha256: %064d, url: u}\n",
                        i, 0);
        assert_true(gw_manifest_parse_body(body, strlen(body), &m, &err) < 0);
        assert_int_equal(err.code, GW_ERR_SCHEMA_INVALID);
        assert_non_null(strstr(err.message, "images"));
        /* ... and 256 are fine. */
        *strstr(body, "  - {name: i256") = '\0';
        assert_int_equal(gw_manifest_parse_body(body, strlen(body), &m, &err), 0);
        assert_int_equal(m->n_images, GW_MANIFEST_MAX_IMAGES);
        m = gw_manifest_free(m);
        free(body);
}

/* Gateway hardware, sequence and trusted time. */
static void test_context(void **state)
{
        struct gw_trust *t = trust_of(1, 1);
        struct gw_manifest_state st = {0};
        struct gw_manifest *m = NULL;
        size_t len, len2;
        char *buf = sign_with(good_body, 1, &len);
        char *body2 = replace(good_body, "sequence: 42", "sequence: 41");
        char *buf2 = sign_with(body2, 1, &len2);
        char dir[] = "/tmp/test-manifest-XXXXXX";
        struct gw_manifest_state loaded = {0};
        struct gw_manifest_verify_params p = {.now = NOW, .gateway_hardware = "gw-imx8-rev3"};

        assert_int_equal(verify(t, buf, len, &p, NULL, &m), GW_ERR_NONE);
        p.gateway_hardware = "gw-other";
        assert_int_equal(verify(t, buf, len, &p, NULL, NULL), GW_ERR_GATEWAY_INCOMPATIBLE);
        p.gateway_hardware = NULL;

        /* Accept sequence 42: then 42 again (same bytes) passes, 41 and a different 42 not. */
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);
        p.state = &st;
        assert_int_equal(verify(t, buf, len, &p, NULL, NULL), GW_ERR_NONE);
        assert_int_equal(verify(t, buf2, len2, &p, NULL, NULL), GW_ERR_SEQUENCE_ROLLBACK);
        free(buf2);
        buf2 = sign_with(good_body, 4 | 1, &len2); /* same body, other bytes */
        assert_int_equal(verify(t, buf2, len2, &p, NULL, NULL), GW_ERR_SEQUENCE_ROLLBACK);

        /* A clock that went back does not revive an expired manifest. */
        st.latest_trusted_time = 1924905600 + 10;
        assert_int_equal(verify(t, buf, len, &p, NULL, NULL), GW_ERR_EXPIRED);

        /* Persisted and read back. */
        assert_non_null(mkdtemp(dir));
        assert_int_equal(gw_manifest_state_load(dir, &loaded), 0);
        assert_false(loaded.has_sequence);
        assert_int_equal(gw_manifest_state_save(dir, &st), 0);
        assert_int_equal(gw_manifest_state_load(dir, &loaded), 0);
        assert_true(loaded.has_sequence);
        assert_int_equal(loaded.sequence, 42);
        assert_memory_equal(loaded.sha256, st.sha256, 32);
        assert_int_equal(loaded.latest_trusted_time, st.latest_trusted_time);
        {
                char path[256];

                snprintf(path, sizeof(path), "%s/manifest-state", dir);
                unlink(path);
                rmdir(dir);
        }
        free(buf);
        free(buf2);
        free(body2);
        gw_trust_free(t);
}

/* ---- signing ---- */

static int count(const char *s, const char *what)
{
        int n = 0;

        for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
                n++;
        return n;
}

static void test_sign(void **state)
{
        struct gw_manifest_error err = {0};
        char *out = NULL, *again = NULL, *body = NULL;
        size_t len = 0, len2 = 0;
        char *buf = sign_with(good_body, 1 | 4, &len);
        char *sep;

        /* Body bytes unchanged, one entry per key. */
        assert_memory_equal(buf, good_body, strlen(good_body));
        assert_memory_equal(buf + strlen(good_body), "---\nsignatures:\n", 16);
        assert_int_equal(count(buf, "keyid:"), 2);

        /* Re-signing with a key replaces its entry, in place. */
        assert_int_equal(gw_manifest_sign(keys[0].signer, buf, len, 0, &out, &len2, &err), 0);
        assert_int_equal(count(out, "keyid:"), 2);
        sep = strstr(out, "keyid: ");
        assert_memory_equal(sep + 7, gw_signer_keyid(keys[0].signer), 64);
        free(out);

        /* A bare body without a final newline gets one, and is signed with it. */
        body = strndup(good_body, strlen(good_body) - 1);
        assert_int_equal(
            gw_manifest_sign(keys[0].signer, body, strlen(body), 0, &again, &len2, &err), 0);
        assert_memory_equal(again, good_body, strlen(good_body));
        {
                struct gw_trust *t = trust_of(1, 1);

                assert_int_equal(verify(t, again, len2, NULL, NULL, NULL), GW_ERR_NONE);
                gw_trust_free(t);
        }
        free(again);
        free(body);

        /* A body that does not parse is not signed. */
        body = replace(good_body, "format: 1\n", "format: 1\nformat: 1\n");
        assert_true(gw_manifest_sign(keys[0].signer, body, strlen(body), 0, &again, &len2, &err) <
                    0);
        assert_int_equal(err.code, GW_ERR_SCHEMA_INVALID);
        free(body);
        free(buf);
}

/* ---- keys: types, keyids, trust documents, rotation ---- */

static char *keys_doc(uint64_t version, unsigned threshold, unsigned mask)
{
        char *doc = xmalloc(8192), *p;

        assert_non_null(doc);
        p = doc + sprintf(doc,
                          "kind: gatewayd/keys\nformat: 1\nversion: %llu\nthreshold: %u\nkeys:\n",
                          (unsigned long long) version, threshold);
        for (int i = 0; i < 3; i++) {
                if (!(mask & (1u << i)))
                        continue;
                p += sprintf(p, "  - public: |\n");
                for (const char *l = keys[i].pub; *l;) {
                        const char *nl = strchr(l, '\n');
                        size_t n = nl ? (size_t) (nl - l) : strlen(l);

                        p += sprintf(p, "      %.*s\n", (int) n, l);
                        l += n + (nl ? 1 : 0);
                }
        }
        return doc;
}

static void test_keys(void **state)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *root = NULL, *next = NULL, *t = NULL;
        EVP_PKEY *other;
        char keyid[65], *pem, *doc, *buf;
        size_t len;

        /* keyid = SHA-256 of the SPKI DER, the same from the public and the private side. */
        assert_int_equal(gw_key_id_from_pem(keys[2].pub, strlen(keys[2].pub), keyid), 0);
        assert_string_equal(keyid, gw_signer_keyid(keys[2].signer));
        assert_int_equal(strlen(keyid), 64);

        /* Only Ed25519 and P-256. */
        other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        assert_non_null(other);
        pem = pem_of(other, false);
        assert_int_equal(gw_key_id_from_pem(pem, strlen(pem), keyid), -EPROTONOSUPPORT);
        free(pem);
        EVP_PKEY_free(other);
        other = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
        assert_non_null(other);
        pem = pem_of(other, false);
        assert_int_equal(gw_key_id_from_pem(pem, strlen(pem), keyid), -EPROTONOSUPPORT);
        free(pem);
        EVP_PKEY_free(other);
        assert_int_equal(gw_key_id_from_pem("junk", 4, keyid), -EBADMSG);

        /* A key added twice counts once. */
        t = trust_of(1, 1);
        assert_int_equal(gw_trust_add_key_pem(t, keys[0].pub, strlen(keys[0].pub)), 0);
        assert_int_equal(gw_trust_key_count(t), 1);
        t = gw_trust_free(t);

        /* The provisioned root: "signatures: []" is enough. */
        doc = keys_doc(1, 2, 3);
        buf = xmalloc(strlen(doc) + 32);
        sprintf(buf, "%s---\nsignatures: []\n", doc);
        assert_int_equal(gw_trust_load_buffer(buf, strlen(buf), 0, &root, &err), 0);
        assert_int_equal(gw_trust_threshold(root), 2);
        assert_int_equal(gw_trust_version(root), 1);
        assert_int_equal(gw_trust_key_count(root), 2);
        assert_string_equal(gw_trust_keyid(root, 1), gw_signer_keyid(keys[1].signer));
        assert_int_equal(gw_trust_key_type(root, 0), GW_KEY_ED25519);
        free(buf);
        free(doc);

        /* ... a root whose threshold exceeds its keys is refused. */
        doc = keys_doc(1, 3, 3);
        buf = xmalloc(strlen(doc) + 32);
        sprintf(buf, "%s---\nsignatures: []\n", doc);
        assert_true(gw_trust_load_buffer(buf, strlen(buf), 0, &t, &err) < 0);
        assert_int_equal(err.code, GW_ERR_SCHEMA_INVALID);
        free(buf);
        free(doc);

        /* Rotation to {c}, version 2: needs 2 of {a, b} and 1 of {c}. */
        doc = keys_doc(2, 1, 4);
        buf = sign_with(doc, 1 | 2 | 4, &len);
        assert_int_equal(gw_trust_rotate(root, buf, len, 0, &next, &err), 0);
        assert_int_equal(gw_trust_version(next), 2);
        assert_string_equal(gw_trust_keyid(next, 0), gw_signer_keyid(keys[2].signer));
        next = gw_trust_free(next);
        free(buf);

        buf = sign_with(doc, 1 | 4, &len);
        assert_true(gw_trust_rotate(root, buf, len, 0, &next, &err) < 0);
        assert_int_equal(err.code, GW_ERR_THRESHOLD_NOT_MET);
        free(buf);

        buf = sign_with(doc, 1 | 2, &len);
        assert_true(gw_trust_rotate(root, buf, len, 0, &next, &err) < 0);
        assert_int_equal(err.code, GW_ERR_KEYS_ROTATION_INVALID);
        free(buf);
        free(doc);

        doc = keys_doc(3, 1, 4);
        buf = sign_with(doc, 1 | 2 | 4, &len);
        assert_true(gw_trust_rotate(root, buf, len, 0, &next, &err) < 0);
        assert_int_equal(err.code, GW_ERR_KEYS_ROTATION_INVALID);
        free(buf);
        free(doc);

        /* A keys document signature is not a manifest signature (payload types differ). */
        {
                uint8_t *sig = NULL;
                size_t sig_len = 0;
                char *b64, *m;
                struct gw_trust *ta = trust_of(1, 1);

                assert_int_equal(gw_signer_sign(keys[0].signer, GW_KEYS_PAYLOAD_TYPE, good_body,
                                                strlen(good_body), &sig, &sig_len),
                                 0);
                b64 = xmalloc(sig_len * 2 + 4);
                EVP_EncodeBlock((unsigned char *) b64, sig, (int) sig_len);
                m = xmalloc(strlen(good_body) + 300);
                sprintf(m, "%s---\nsignatures:\n  - keyid: %s\n    sig: %s\n", good_body,
                        gw_signer_keyid(keys[0].signer), b64);
                assert_int_equal(verify(ta, m, strlen(m), NULL, NULL, NULL),
                                 GW_ERR_THRESHOLD_NOT_MET);
                free(m);
                free(b64);
                free(sig);
                gw_trust_free(ta);
        }
        gw_trust_free(root);
}

/* ---- small pieces ---- */

static void test_envelope_split(void **state)
{
        static const struct {
                const char *in;
                int ret;
                size_t body, sigs;
        } v[] = {
            {"a: 1\n---\nb: 2\n", 0, 5, 9},
            {"---\na: 1\n---\nb: 2\n", 0, 9, 13},
            {"a: 1\n---\nb: 2\n---\n", 0, 14, 18},
            {"a: 1\n---", 0, 5, 8},
            {"a: 1\n--- \nb\n", -EBADMSG, 0, 0},
            {"a: 1\n----\nb\n", -EBADMSG, 0, 0},
            {"a: 1\nx---\nb\n", -EBADMSG, 0, 0},
            {"a: 1\n---\r\nb\n", -EBADMSG, 0, 0},
            {"", -EBADMSG, 0, 0},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                size_t body = 0, sigs = 0;
                int r = gw_envelope_split(v[i].in, strlen(v[i].in), &body, &sigs);

                assert_int_equal(r, v[i].ret);
                if (r == 0) {
                        assert_int_equal(body, v[i].body);
                        assert_int_equal(sigs, v[i].sigs);
                }
        }
}

static void test_pae(void **state)
{
        uint8_t *pae = NULL;
        size_t len = 0;
        static const char expect[] = "DSSEv1 38 application/vnd.gatewayd.manifest+yaml 5 a: 1\n";

        assert_int_equal(gw_envelope_pae(GW_MANIFEST_PAYLOAD_TYPE, "a: 1\n", 5, &pae, &len), 0);
        assert_int_equal(len, strlen(expect));
        assert_memory_equal(pae, expect, len);
        free(pae);
}

/* Version order for anti-downgrade: a < b in every row, and each row is antisymmetric. */
static void test_version_compare(void **state)
{
        static const struct {
                const char *a, *b;
                int expect;
        } v[] = {
            {"1.4.2", "1.4.10", -1}, /* numeric, not bytewise */
            {"1.9", "1.10", -1},
            {"2", "10", -1},
            {"1.4", "1.4.0", 0}, /* missing components are 0 */
            {"1.4.0.1", "1.4", 1},
            {"007", "7", 0},
            {"1.4.0-rc1", "1.4.0", -1}, /* a pre-release sorts before its release */
            {"1.4.0-rc2", "1.4.0-rc10", -1},
            {"1.4.0-rc", "1.4.0-rc1", -1},
            {"1.0-alpha", "1.0-beta", -1},
            {"1.0-rc", "1.0-rc.1", -1},
            {"1.0-rc.2", "1.0-rc.10", -1},
            {"1.0-1", "1.0-alpha", -1},
            {"1.3.9", "1.4.0-rc1", -1},
            {"v1.2", "1.2", 0},
            {"V2.0", "v1.9", 1},
            {"1.2+build5", "1.2+build4", 0},
            {"1.2+b", "1.2-rc1", 1},
            {"1.a", "1.b", -1},
            {"1.2", "1.2a", -1},
            {"r100", "r99", 1},
            {"", "0", 0},
            {"18446744073709551616", "18446744073709551615", 1},
            {"99999999999999999999999999", "100000000000000000000000000", -1},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                int ab = gw_version_compare(v[i].a, v[i].b);
                int ba = gw_version_compare(v[i].b, v[i].a);

                if ((ab > 0) - (ab < 0) != v[i].expect || (ba > 0) - (ba < 0) != -v[i].expect)
                        fail_msg("%s vs %s: got %d / %d, expected %d", v[i].a, v[i].b, ab, ba,
                                 v[i].expect);
                assert_int_equal(gw_version_compare(v[i].a, v[i].a), 0);
        }
        assert_true(gw_version_compare(NULL, "1") < 0);
        assert_int_equal(gw_version_compare(NULL, NULL), 0);
}

/* A data key wrapped for X25519 and P-256 gateway keys unwraps with the right key only, and a
 * wrapped key changed in any byte does not unwrap. */
static void test_image_keys(void **state)
{
        char path[] = "/tmp/gw-test-gwkey.XXXXXX";
        struct gw_manifest_recipient rc[2];
        struct gw_manifest_image img = {.name = "app", .recipients = rc, .n_recipients = 2};
        struct gw_gateway_key *k[2] = {NULL, NULL};
        struct gw_manifest_error err = {0};
        uint8_t key[GW_IMAGE_KEY_SIZE], got[GW_IMAGE_KEY_SIZE];
        char *priv[2], *pub[2], id[2][65];
        int fd;

        assert_int_equal(gw_image_key_new(key), 0);
        for (int i = 0; i < 2; i++) {
                assert_int_equal(gw_gateway_key_generate(i == 1, &priv[i], &pub[i], id[i]), 0);
                assert_int_equal(gw_image_key_wrap(pub[i], strlen(pub[i]), key, &rc[i]), 0);
                assert_string_equal(rc[i].keyid, id[i]);
                fd = mkstemp(path);
                assert_true(fd >= 0);
                assert_int_equal(write(fd, priv[i], strlen(priv[i])), (ssize_t) strlen(priv[i]));
                close(fd);
                assert_int_equal(gw_gateway_key_load(path, &k[i]), 0);
                unlink(path);
                strcpy(path, "/tmp/gw-test-gwkey.XXXXXX");
                assert_string_equal(gw_gateway_key_id(k[i]), id[i]);
        }
        for (int i = 0; i < 2; i++) {
                memset(got, 0, sizeof(got));
                assert_int_equal(gw_image_key_unwrap(k[i], &img, got, &err), 0);
                assert_memory_equal(got, key, sizeof(key));
        }
        /* Only the other gateway's entry: not for this key. */
        img.n_recipients = 1;
        assert_true(gw_image_key_unwrap(k[1], &img, got, &err) < 0);
        assert_int_equal(err.code, GW_ERR_DECRYPT_FAILED);
        assert_non_null(strstr(err.message, "not encrypted for this gateway"));
        /* No key configured. */
        assert_true(gw_image_key_unwrap(NULL, &img, got, &err) < 0);
        assert_non_null(strstr(err.message, "no decryption key"));
        /* Any byte of the wrapped key or the ephemeral key changed. */
        for (size_t b = 0; b < sizeof(rc[0].wrapped); b += 7) {
                rc[0].wrapped[b] ^= 0x10;
                assert_true(gw_image_key_unwrap(k[0], &img, got, &err) < 0);
                assert_int_equal(err.code, GW_ERR_DECRYPT_FAILED);
                rc[0].wrapped[b] ^= 0x10;
        }
        rc[0].ephemeral[rc[0].ephemeral_len - 1] ^= 0x01;
        assert_true(gw_image_key_unwrap(k[0], &img, got, &err) < 0);
        /* A P-256 ephemeral key handed to an X25519 gateway key. */
        memcpy(rc[0].ephemeral, rc[1].ephemeral, rc[1].ephemeral_len);
        rc[0].ephemeral_len = rc[1].ephemeral_len;
        assert_true(gw_image_key_unwrap(k[0], &img, got, &err) < 0);
        /* Not a key this scheme takes: Ed25519. */
        assert_int_equal(gw_image_key_wrap(keys[0].pub, strlen(keys[0].pub), key, &rc[0]),
                         -EPROTONOSUPPORT);
        for (int i = 0; i < 2; i++) {
                gw_gateway_key_free(k[i]);
                free(priv[i]);
                free(pub[i]);
        }
}

static void test_error_strings(void **state)
{
        for (int e = 0; e < _GW_ERR_MAX; e++) {
                const char *s = gw_error_to_string(e);

                assert_non_null(s);
                assert_int_equal(gw_error_from_string(s), e);
        }
        assert_string_equal(gw_error_to_string(GW_ERR_SCHEMA_INVALID), "schema-invalid");
        assert_string_equal(gw_error_to_string(GW_ERR_PAYLOAD_INVALID), "payload-invalid");
        assert_string_equal(gw_error_to_string(GW_ERR_INTERNAL), "internal");
        assert_null(gw_error_to_string(_GW_ERR_MAX));
        assert_int_equal(gw_error_from_string("no-such-code"), -EINVAL);
        assert_int_equal(gw_error_from_string(NULL), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_envelope_split), cmocka_unit_test(test_pae),
            cmocka_unit_test(test_error_strings),  cmocka_unit_test(test_image_keys),
            cmocka_unit_test(test_good),           cmocka_unit_test(test_signatures),
            cmocka_unit_test(test_body),           cmocka_unit_test(test_limits),
            cmocka_unit_test(test_context),        cmocka_unit_test(test_sign),
            cmocka_unit_test(test_keys),           cmocka_unit_test(test_version_compare),
        };

        return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
