/* The TUF/Uptane attack classes that the manifest library itself must stop, one test per
 * class, each showing the input it rejects and the stable code it is rejected with. The
 * daemon-level versions (through gatewayd and a broker) live in tests/integration/. Keys are
 * generated at test time. */
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

/* 2030-01-01T00:00:00Z, and the body's expiry a year later. */
#define NOW     ((time_t) 1893456000)
#define EXPIRES ((time_t) 1924905600)
#define DAY     ((time_t) 86400)

enum { KA = 1, KB = 2, KC = 4, KD = 8 }; /* key masks: a, b, d Ed25519; c P-256 */
#define N_KEYS 4

static const char body_42[] = "kind: gatewayd/manifest\n"
                              "format: 1\n"
                              "id: attack-test\n"
                              "sequence: 42\n"
                              "expires: 2030-12-31T00:00:00Z\n"
                              "gateway: { hardware: [gw-imx8-rev2] }\n"
                              "images:\n"
                              "  - name: motor-ctrl\n"
                              "    version: 1.4.2\n"
                              "    targets: { class: stm32f4-motor }\n"
                              "    hardware: { chip-id: 0x413, board: rev-b }\n"
                              "    protocol: stm32-rom\n"
                              "    size: 131072\n"
                              "    sha256: "
                              "5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c\n"
                              "    url: images/motor-ctrl-1.4.2.bin\n";

static struct {
        struct gw_signer *signer;
        char *pub;
} keys[N_KEYS];

static void *xmalloc(size_t n) __attribute__((returns_nonnull, malloc));

static void *xmalloc(size_t n)
{
        void *p = malloc(n);

        if (!p)
                abort();
        return p;
}

static char *xstrdup(const char *s)
{
        char *p = strdup(s);

        if (!p)
                abort();
        return p;
}

static char *pem_of(EVP_PKEY *pkey, bool private)
{
        BIO *bio = BIO_new(BIO_s_mem());
        char *data = NULL, *s;
        long n;

        if (!bio)
                abort();
        if (private ? PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) != 1
                    : PEM_write_bio_PUBKEY(bio, pkey) != 1)
                abort();
        n = BIO_get_mem_data(bio, &data);
        s = strndup(data, (size_t) n);
        if (!s)
                abort();
        BIO_free(bio);
        return s;
}

static int setup_keys(void **state)
{
        for (int i = 0; i < N_KEYS; i++) {
                EVP_PKEY *pkey = i == 2 ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")
                                        : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
                char *priv;

                if (!pkey)
                        return -1;
                priv = pem_of(pkey, true);
                keys[i].pub = pem_of(pkey, false);
                if (gw_signer_load_pem(priv, strlen(priv), &keys[i].signer) < 0)
                        return -1;
                explicit_bzero(priv, strlen(priv));
                free(priv);
                EVP_PKEY_free(pkey);
        }
        return 0;
}

static int teardown_keys(void **state)
{
        for (int i = 0; i < N_KEYS; i++) {
                keys[i].signer = gw_signer_free(keys[i].signer);
                free(keys[i].pub);
        }
        return 0;
}

static struct gw_trust *trust_of(unsigned mask, unsigned threshold, uint64_t version)
{
        struct gw_trust *t = NULL;

        assert_int_equal(gw_trust_new(threshold, version, &t), 0);
        for (int i = 0; i < N_KEYS; i++)
                if (mask & (1u << i))
                        assert_int_equal(gw_trust_add_key_pem(t, keys[i].pub, strlen(keys[i].pub)),
                                         0);
        return t;
}

/* body (a manifest or keys document) signed by each key in mask with gw_manifest_sign. */
static char *sign_with(const char *body, unsigned mask, size_t *ret_len)
{
        struct gw_manifest_error err = {0};
        char *buf = xstrdup(body);
        size_t len = strlen(body);

        for (int i = 0; i < N_KEYS; i++) {
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

/* One signatures entry by key i over PAE(type, body), whatever body is (no parsing). */
static char *sig_entry(int i, const char *type, const char *body, size_t len)
{
        uint8_t *sig = NULL;
        size_t sig_len = 0;
        char *b64, *entry;

        assert_int_equal(gw_signer_sign(keys[i].signer, type, body, len, &sig, &sig_len), 0);
        b64 = xmalloc(sig_len * 2 + 4);
        EVP_EncodeBlock((unsigned char *) b64, sig, (int) sig_len);
        entry = xmalloc(strlen(b64) + 128);
        sprintf(entry, "  - keyid: %s\n    sig: %s\n", gw_signer_keyid(keys[i].signer), b64);
        free(b64);
        free(sig);
        return entry;
}

/* A raw envelope: body bytes as given + "---" + signatures by the keys in mask over type. */
static char *envelope(const char *body, const char *type, unsigned mask, size_t *ret_len)
{
        size_t blen = strlen(body), cap = blen + 64;
        char *buf;

        for (int i = 0; i < N_KEYS; i++)
                cap += 256;
        buf = xmalloc(cap);
        memcpy(buf, body, blen);
        strcpy(buf + blen, mask ? "---\nsignatures:\n" : "---\nsignatures: []\n");
        for (int i = 0; i < N_KEYS; i++) {
                char *e;

                if (!(mask & (1u << i)))
                        continue;
                e = sig_entry(i, type, body, blen);
                strcat(buf, e);
                free(e);
        }
        *ret_len = strlen(buf);
        return buf;
}

static char *replace(const char *s, const char *find, const char *repl)
{
        const char *at = strstr(s, find);
        size_t pre;
        char *out;

        if (!at)
                fail_msg("'%s' not found", find);
        pre = (size_t) (at - s);
        out = xmalloc(strlen(s) - strlen(find) + strlen(repl) + 1);
        memcpy(out, s, pre);
        strcpy(out + pre, repl);
        strcat(out, at + strlen(find));
        return out;
}

/* Verifies and returns the code; the message is checked to name what it should. */
static enum gw_error verify_msg(const struct gw_trust *t, const char *buf, size_t len,
                                const struct gw_manifest_verify_params *p, const char *want_in_msg)
{
        struct gw_manifest_verify_params def = {.now = NOW};
        struct gw_manifest_error err = {.code = GW_ERR_NONE};
        struct gw_manifest *m = NULL;
        int r;

        r = gw_manifest_verify(t, p ?: &def, buf, len, &m, &err);
        if (r >= 0) {
                assert_non_null(m);
                gw_manifest_free(m);
                return GW_ERR_NONE;
        }
        assert_null(m);
        if (want_in_msg && !strstr(err.message, want_in_msg))
                fail_msg("message \"%s\" lacks \"%s\"", err.message, want_in_msg);
        return err.code;
}

static enum gw_error verify(const struct gw_trust *t, const char *buf, size_t len,
                            const struct gw_manifest_verify_params *p)
{
        return verify_msg(t, buf, len, p, NULL);
}

/* A gatewayd/keys body listing the keys in mask. */
static char *keys_doc(uint64_t version, unsigned threshold, unsigned mask)
{
        char *doc = xmalloc(16384), *p;

        p = doc + sprintf(doc,
                          "kind: gatewayd/keys\nformat: 1\nversion: %llu\nthreshold: %u\nkeys:\n",
                          (unsigned long long) version, threshold);
        for (int i = 0; i < N_KEYS; i++) {
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

static enum gw_error rotate(const struct gw_trust *cur, const char *buf, size_t len,
                            struct gw_trust **ret)
{
        struct gw_manifest_error err = {.code = GW_ERR_NONE};
        struct gw_trust *next = NULL;
        int r;

        r = gw_trust_rotate(cur, buf, len, 0, &next, &err);
        if (r < 0) {
                assert_null(next);
                return err.code;
        }
        if (ret)
                *ret = next;
        else
                gw_trust_free(next);
        return GW_ERR_NONE;
}

/* ---- arbitrary installation: only a threshold of trusted keys over these bytes ---- */

static void test_arbitrary_installation_unsigned_wrong_key_tampered(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        size_t len;
        char *buf;

        /* A bare body, never signed: no envelope at all. */
        assert_int_equal(verify(t, body_42, strlen(body_42), NULL), GW_ERR_ENVELOPE_MALFORMED);
        /* An envelope with no signatures. */
        buf = envelope(body_42, GW_MANIFEST_PAYLOAD_TYPE, 0, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* Signed, but by keys the gateway does not trust (their keyids are ignored). */
        buf = sign_with(body_42, KB | KC | KD, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* Signed by the trusted key, then one body byte changed: url points elsewhere. */
        buf = sign_with(body_42, KA, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_NONE);
        *strstr(buf, "motor-ctrl-1.4.2.bin") = 'X';
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* Signed, then a line added after the body's end, still before "---". */
        buf = sign_with(body_42, KA, &len);
        {
                char *evil = replace(buf, "---\n", "    mirrors: [http://evil/]\n---\n");

                assert_int_equal(verify(t, evil, strlen(evil), NULL), GW_ERR_THRESHOLD_NOT_MET);
                free(evil);
        }
        free(buf);
        gw_trust_free(t);
}

/* ---- endless data: bounded before and while parsing ---- */

static void test_endless_data_size_cap_before_parsing(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        struct gw_manifest_verify_params p = {.now = NOW};
        struct gw_manifest_error err = {0};
        struct gw_trust *next = NULL;
        size_t big = GW_MANIFEST_MAX_SIZE_DEFAULT + 1, len;
        char *junk = xmalloc(big), *buf;

        /* Over the default 1 MiB: refused as too large, not as malformed, so nothing of it
         * (not even the envelope) was looked at. */
        memset(junk, 0xff, big);
        assert_int_equal(verify(t, junk, big, &p), GW_ERR_MANIFEST_TOO_LARGE);
        assert_int_equal(gw_trust_rotate(t, junk, big, 0, &next, &err), -EFBIG);
        assert_int_equal(err.code, GW_ERR_MANIFEST_TOO_LARGE);
        assert_int_equal(gw_trust_load_buffer(junk, big, 0, &next, &err), -EFBIG);
        {
                struct gw_manifest *m = NULL;

                assert_int_equal(gw_manifest_parse_body(junk, big, &m, &err), -EFBIG);
                assert_null(m);
        }
        free(junk);

        /* The cap is configurable: a valid manifest one byte over it is refused. */
        buf = sign_with(body_42, KA, &len);
        p.max_size = len - 1;
        assert_int_equal(verify(t, buf, len, &p), GW_ERR_MANIFEST_TOO_LARGE);
        p.max_size = len;
        assert_int_equal(verify(t, buf, len, &p), GW_ERR_NONE);
        free(buf);
        gw_trust_free(t);
}

/* A body that is signed (a compromised or careless signer) but built to exhaust the parser:
 * each is refused as body-malformed within the YAML limits. */
static void test_endless_data_yaml_bombs(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        struct {
                const char *name, *msg;
                char *body;
        } bombs[5];
        size_t n = 0, off;
        char *b;

        /* Billion laughs: anchors and aliases are refused outright. */
        bombs[n].name = "alias bomb";
        bombs[n].msg = "anchors";
        bombs[n++].body = replace(body_42, "images:\n",
                                  "x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                                  "y: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                  "z: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nimages:\n");
        /* One 512 KiB scalar. */
        b = xmalloc(512 * 1024 + 64);
        off = (size_t) sprintf(b, "kind: gatewayd/manifest\nid: ");
        memset(b + off, 'x', 512 * 1024);
        strcpy(b + off + 512 * 1024, "\n");
        bombs[n].name = "scalar bomb";
        bombs[n].msg = "scalar longer";
        bombs[n++].body = b;
        /* 200000 elements of a flow list. */
        b = xmalloc(400000 + 64);
        off = (size_t) sprintf(b, "kind: gatewayd/manifest\nx: [");
        for (int i = 0; i < 200000; i++) {
                b[off++] = '1';
                b[off++] = ',';
        }
        strcpy(b + off, "1]\n");
        bombs[n].name = "element bomb";
        bombs[n].msg = "nodes";
        bombs[n++].body = b;
        /* 100000 levels of nesting. */
        b = xmalloc(200000 + 64);
        off = (size_t) sprintf(b, "x: ");
        memset(b + off, '[', 100000);
        memset(b + off + 100000, ']', 100000);
        strcpy(b + off + 200000, "\n");
        bombs[n].name = "depth bomb";
        bombs[n].msg = "deeper";
        bombs[n++].body = b;
        /* Many documents in the body. */
        b = xmalloc(100000);
        off = (size_t) sprintf(b, "a: 1\n");
        for (int i = 1; i < 10000; i++)
                off += (size_t) sprintf(b + off, "---\na: 1\n");
        bombs[n].name = "document bomb";
        bombs[n].msg = "more than one";
        bombs[n++].body = b;

        for (size_t i = 0; i < n; i++) {
                size_t len;
                char *buf = envelope(bombs[i].body, GW_MANIFEST_PAYLOAD_TYPE, KA, &len);
                struct gw_manifest_error err = {0};
                struct gw_manifest *m = NULL;
                enum gw_error got;

                got = verify_msg(t, buf, len, NULL, bombs[i].msg);
                if (got != GW_ERR_BODY_MALFORMED)
                        fail_msg("%s: expected body-malformed, got %s", bombs[i].name,
                                 gw_error_to_string(got));
                /* The same limits hold for tools that parse bodies unsigned. */
                assert_true(gw_manifest_parse_body(bombs[i].body, strlen(bombs[i].body), &m, &err) <
                            0);
                assert_int_equal(err.code, GW_ERR_BODY_MALFORMED);
                free(buf);
                free(bombs[i].body);
        }

        /* The signatures document has its own bounds: 65 entries, an alias in it. */
        {
                size_t len = strlen(body_42);
                char *buf = xmalloc(len + 65 * 256 + 64), *p = buf;

                p += sprintf(p, "%s---\nsignatures:\n", body_42);
                for (int i = 0; i < GW_MANIFEST_MAX_SIGS + 1; i++) {
                        char *e = sig_entry(0, GW_MANIFEST_PAYLOAD_TYPE, body_42, len);

                        p = stpcpy(p, e);
                        free(e);
                }
                assert_int_equal(verify_msg(t, buf, strlen(buf), NULL, "signatures"),
                                 GW_ERR_ENVELOPE_MALFORMED);
                free(buf);
                buf = xmalloc(len + 256);
                sprintf(buf, "%s---\nsignatures: &x []\nother: *x\n", body_42);
                assert_int_equal(verify(t, buf, strlen(buf), NULL), GW_ERR_ENVELOPE_MALFORMED);
                free(buf);
        }
        gw_trust_free(t);
}

/* ---- extraneous dependencies: nothing the schema does not name gets in ---- */

static void test_extraneous_dependencies_unknown_fields(void **state)
{
        static const struct {
                const char *find, *repl, *path;
        } v[] = {
            {"format: 1\n", "format: 1\ndepends: [evil-image]\n", "depends: unknown field"},
            {"    protocol: stm32-rom\n", "    protocol: stm32-rom\n    requires: [bootloader]\n",
             "images[0].requires: unknown field"},
            {"{ class: stm32f4-motor }", "{ class: stm32f4-motor, also: [gw] }",
             "images[0].targets.also: unknown field"},
            {"{ hardware: [gw-imx8-rev2] }", "{ hardware: [gw-imx8-rev2], exec: x }",
             "gateway.exec: unknown field"},
            {"images:\n", "policy: { atomic: true, pre-install: x }\nimages:\n",
             "policy.pre-install: unknown field"},
            {"    url: images/motor-ctrl-1.4.2.bin\n",
             "    url: images/motor-ctrl-1.4.2.bin\n  - { name: extra }\n",
             "images[1].version: missing field"},
        };
        struct gw_trust *t = trust_of(KA, 1, 1);

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                char *body = replace(body_42, v[i].find, v[i].repl);
                size_t len;
                char *buf = envelope(body, GW_MANIFEST_PAYLOAD_TYPE, KA, &len);

                assert_int_equal(verify_msg(t, buf, len, NULL, v[i].path), GW_ERR_SCHEMA_INVALID);
                free(buf);
                free(body);
        }
        /* Nor in the signatures document. */
        {
                size_t len;
                char *buf = sign_with(body_42, KA, &len);
                char *evil = replace(buf, "signatures:\n", "extra: 1\nsignatures:\n");

                assert_int_equal(verify_msg(t, evil, strlen(evil), NULL, "extra"),
                                 GW_ERR_ENVELOPE_MALFORMED);
                free(evil);
                free(buf);
        }
        gw_trust_free(t);
}

/* ---- fast-forward: a rotation resets the sequence the old keys pushed up ---- */

static void test_fast_forward_recovered_by_rotation(void **state)
{
        struct gw_trust *old = trust_of(KA, 1, 1), *next = NULL;
        struct gw_manifest_state st = {0};
        struct gw_manifest_verify_params p = {.now = NOW, .state = &st};
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        char *ff_body = replace(body_42, "sequence: 42", "sequence: 18446744073709551615");
        char *doc = keys_doc(2, 1, KC), *rot, *ff, *good;
        size_t ff_len, rot_len, good_len;
        time_t ltt;

        /* Key a is stolen; the attacker makes the gateway accept the largest sequence. */
        ff = sign_with(ff_body, KA, &ff_len);
        assert_int_equal(gw_manifest_verify(old, &p, ff, ff_len, &m, &err), 0);
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);
        ltt = st.latest_trusted_time;

        /* Legitimate manifests (sequence 42) are now blocked... */
        good = sign_with(body_42, KA, &good_len);
        assert_int_equal(verify(old, good, good_len, &p), GW_ERR_SEQUENCE_ROLLBACK);
        free(good);

        /* ... until a rotation to new keys {c}, signed by a (current) and c (new). */
        rot = sign_with(doc, KA | KC, &rot_len);
        assert_int_equal(rotate(old, rot, rot_len, &next), GW_ERR_NONE);
        assert_int_equal(gw_trust_version(next), 2);

        /* Under the new root, with the old state the new sequence is still refused; the
         * daemon resets the sequence when it accepts a rotation, keeping the trusted time. */
        good = sign_with(body_42, KC, &good_len);
        assert_int_equal(verify(next, good, good_len, &p), GW_ERR_SEQUENCE_ROLLBACK);
        gw_manifest_state_rotated(&st, old);
        assert_false(st.has_sequence);
        assert_int_equal(st.latest_trusted_time, ltt);
        /* Key a, retired, keeps the floor it reached: the attacker's sequence. */
        assert_int_equal(st.n_floors, 1);
        assert_true(st.floors[0].floor == UINT64_MAX);
        assert_int_equal(verify(next, good, good_len, &p), GW_ERR_NONE);
        /* No state at all is the same as a reset one. */
        p.state = NULL;
        assert_int_equal(verify(next, good, good_len, &p), GW_ERR_NONE);
        p.state = &st;
        /* The attacker's manifest, signed by the retired key, no longer verifies. */
        assert_int_equal(verify(next, ff, ff_len, &p), GW_ERR_THRESHOLD_NOT_MET);

        free(good);
        free(rot);
        free(ff);
        free(doc);
        free(ff_body);
        gw_trust_free(next);
        gw_trust_free(old);
}

/* ---- replay across a rotation: keys carried over keep their floor ---- */

static void test_replay_across_rotation(void **state)
{
        struct gw_trust *old = trust_of(KA | KB, 1, 1), *next = NULL;
        struct gw_manifest_state st = {0}, loaded = {0};
        struct gw_manifest_verify_params p = {.now = NOW, .state = &st};
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        char *body_10 = replace(body_42, "sequence: 42", "sequence: 10");
        char *body_43 = replace(body_42, "sequence: 42", "sequence: 43");
        char *body_7 = replace(body_42, "sequence: 42", "sequence: 7");
        char *doc = keys_doc(2, 1, KB | KC), *rot, *buf, *old_10, dir[] = "/tmp/gw-floor.XXXXXX";
        size_t len, old_10_len;

        /* Under root 1 {a, b}: sequence 10 signed by b, then 42 signed by a, accepted. */
        buf = sign_with(body_10, KB, &len);
        assert_int_equal(gw_manifest_verify(old, &p, buf, len, &m, &err), 0);
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);
        old_10 = buf;
        old_10_len = len;
        buf = sign_with(body_42, KA, &len);
        assert_int_equal(gw_manifest_verify(old, &p, buf, len, &m, &err), 0);
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);
        free(buf);

        /* Rotation to root 2 {b, c}: a is retired, b carried over. */
        rot = sign_with(doc, KA | KB | KC, &len);
        assert_int_equal(rotate(old, rot, len, &next), GW_ERR_NONE);
        gw_manifest_state_rotated(&st, old);
        assert_false(st.has_sequence);
        assert_int_equal(st.n_floors, 2);
        assert_true(st.floors[0].floor == 42 && st.floors[1].floor == 42);

        /* The old manifest 10, signed by b alone, is a replay: refused, though the new root
         * trusts b and the sequence was reset. */
        assert_int_equal(verify_msg(next, old_10, old_10_len, &p, "may be a replay"),
                         GW_ERR_SEQUENCE_ROLLBACK);
        /* b alone must beat its floor: 7 no, 43 yes. */
        buf = sign_with(body_7, KB, &len);
        assert_int_equal(verify(next, buf, len, &p), GW_ERR_SEQUENCE_ROLLBACK);
        free(buf);
        buf = sign_with(body_43, KB, &len);
        assert_int_equal(verify(next, buf, len, &p), GW_ERR_NONE);
        free(buf);
        /* A signature by c, the new key, says it was signed after the rotation: the new root's
         * own sequence applies, from nothing. */
        buf = sign_with(body_7, KC, &len);
        assert_int_equal(verify(next, buf, len, &p), GW_ERR_NONE);
        free(buf);
        buf = sign_with(body_7, KB | KC, &len);
        assert_int_equal(verify(next, buf, len, &p), GW_ERR_NONE);
        free(buf);

        /* The floors survive a save and a load, and a corrupt floor line is refused. */
        assert_non_null(mkdtemp(dir));
        assert_int_equal(gw_manifest_state_save(dir, &st), 0);
        assert_int_equal(gw_manifest_state_load(dir, &loaded), 0);
        assert_int_equal(loaded.n_floors, 2);
        assert_string_equal(loaded.floors[1].keyid, st.floors[1].keyid);
        assert_true(loaded.floors[1].floor == 42);
        assert_false(loaded.has_sequence);
        {
                char path[4200];
                FILE *f;

                snprintf(path, sizeof(path), "%s/manifest-state", dir);
                f = fopen(path, "a");
                assert_non_null(f);
                fputs("key-floor 12zz 5\n", f);
                fclose(f);
                assert_int_equal(gw_manifest_state_load(dir, &loaded), -EBADMSG);
                unlink(path);
        }
        rmdir(dir);

        /* A second rotation keeps b's floor (the higher of the old one and the new last
         * sequence) and drops what the root no longer has. */
        {
                struct gw_manifest_state st2 = st;

                gw_manifest_state_advance(&st2, &(struct gw_manifest){.sequence = 5}, NOW);
                gw_manifest_state_rotated(&st2, next);
                assert_int_equal(st2.n_floors, 2); /* b (42 stays above 5) and c (5) */
                for (size_t i = 0; i < st2.n_floors; i++)
                        assert_true(st2.floors[i].floor == 42 || st2.floors[i].floor == 5);
        }

        free(old_10);
        free(rot);
        free(doc);
        free(body_10);
        free(body_43);
        free(body_7);
        gw_trust_free(next);
        gw_trust_free(old);
}

/* ---- indefinite freeze: an old manifest stays expired whatever the clock says ---- */

static void test_indefinite_freeze_expiry_and_trusted_time(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        struct gw_manifest_state st = {0};
        struct gw_manifest_verify_params p = {.now = NOW, .state = &st};
        struct gw_manifest *m = NULL;
        struct gw_manifest_error err = {0};
        size_t len;
        char *buf = sign_with(body_42, KA, &len);

        /* Valid now, and accepted: the trusted time moves to NOW. */
        assert_int_equal(gw_manifest_verify(t, &p, buf, len, &m, &err), 0);
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);
        assert_int_equal(st.latest_trusted_time, NOW);

        /* Expired: at the expiry second itself and after it. */
        p.now = EXPIRES;
        assert_int_equal(verify_msg(t, buf, len, &p, "expired 2030-12-31T00:00:00Z"),
                         GW_ERR_EXPIRED);
        p.now = EXPIRES + 1;
        assert_int_equal(verify(t, buf, len, &p), GW_ERR_EXPIRED);

        /* A gateway offline past the expiry: it once saw a later time (a later manifest
         * accepted at EXPIRES + DAY), reboots without RTC, the clock says 1970. */
        m = NULL;
        gw_manifest_state_advance(&st, &(struct gw_manifest){.sequence = 42}, EXPIRES + DAY);
        memset(st.sha256, 0, sizeof(st.sha256));
        st.has_sequence = false;
        p.now = 0;
        assert_int_equal(verify_msg(t, buf, len, &p, "trusted time is 2031-01-01T00:00:00Z"),
                         GW_ERR_EXPIRED);

        /* The trusted time never moves backwards, whatever time an acceptance reports. */
        gw_manifest_state_advance(&st, &(struct gw_manifest){.sequence = 43}, 0);
        assert_int_equal(st.latest_trusted_time, EXPIRES + DAY);
        /* ... and a rotation does not reset it either. */
        gw_manifest_state_rotated(&st, NULL);
        assert_int_equal(st.latest_trusted_time, EXPIRES + DAY);
        assert_int_equal(verify(t, buf, len, &p), GW_ERR_EXPIRED);

        /* Without any trusted time, a clock at 1970 alone would let it through: that is why
         * the daemon persists the state. */
        p.state = NULL;
        assert_int_equal(verify(t, buf, len, &p), GW_ERR_NONE);

        free(buf);
        gw_trust_free(t);
}

/* ---- mix-and-match: signatures belong to one body and one payload type ---- */

static void test_mix_and_match_signatures_bound_to_body_and_type(void **state)
{
        struct gw_trust *t = trust_of(KA | KC, 1, 1), *root = trust_of(KA | KB, 2, 1);
        char *body_43 = replace(body_42, "sequence: 42", "sequence: 43");
        size_t len42, len43, len;
        char *buf42 = sign_with(body_42, KA | KC, &len42);
        char *buf43 = sign_with(body_43, KA | KC, &len43);
        char *mixed, *sep, *buf, *doc;

        /* Body 43 with the signatures document of manifest 42. */
        sep = strstr(buf42, "---\n");
        mixed = xmalloc(strlen(body_43) + strlen(sep) + 1);
        strcpy(mixed, body_43);
        strcat(mixed, sep);
        assert_int_equal(verify(t, mixed, strlen(mixed), NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(mixed);

        /* A signature by a trusted key over the same bytes, but as a keys document
         * (Ed25519 and P-256 alike). */
        buf = envelope(body_42, GW_KEYS_PAYLOAD_TYPE, KA, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        buf = envelope(body_42, GW_KEYS_PAYLOAD_TYPE, KC, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* The right type is accepted (the test above fails for the type alone). */
        buf = envelope(body_42, GW_MANIFEST_PAYLOAD_TYPE, KC, &len);
        assert_int_equal(verify(t, buf, len, NULL), GW_ERR_NONE);
        free(buf);

        /* And the other way: manifest signatures over a keys document do not rotate. */
        doc = keys_doc(2, 1, KC);
        buf = envelope(doc, GW_MANIFEST_PAYLOAD_TYPE, KA | KB | KC, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        buf = envelope(doc, GW_KEYS_PAYLOAD_TYPE, KA | KB | KC, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_NONE);
        free(buf);
        /* A manifest signed as a manifest is not a keys document either. */
        assert_int_equal(rotate(root, buf42, len42, NULL), GW_ERR_THRESHOLD_NOT_MET);

        free(doc);
        free(buf42);
        free(buf43);
        free(body_43);
        gw_trust_free(root);
        gw_trust_free(t);
}

/* ---- rollback: never an older or a different manifest under a used sequence ---- */

static void test_rollback_sequence_persisted(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        struct gw_manifest_state st = {0}, loaded = {0};
        struct gw_manifest_verify_params p = {.now = NOW, .state = &st};
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        char *body_41 = replace(body_42, "sequence: 42", "sequence: 41");
        char *body_42b = replace(body_42, "version: 1.4.2", "version: 1.4.3");
        size_t len42, len41, len42b, len42c;
        char *buf42 = sign_with(body_42, KA, &len42);
        char *buf41 = sign_with(body_41, KA, &len41);
        char *buf42b = sign_with(body_42b, KA, &len42b);
        char *buf42c = sign_with(body_42, KA | KB, &len42c); /* same body, other file bytes */
        char dir[] = "/tmp/test-attacks-XXXXXX", path[64];

        assert_int_equal(gw_manifest_verify(t, &p, buf42, len42, &m, &err), 0);
        gw_manifest_state_advance(&st, m, NOW);
        m = gw_manifest_free(m);

        /* Persisted, then read back as a restarted gateway would. */
        assert_non_null(mkdtemp(dir));
        assert_int_equal(gw_manifest_state_save(dir, &st), 0);
        memset(&st, 0, sizeof(st));
        assert_int_equal(gw_manifest_state_load(dir, &loaded), 0);
        p.state = &loaded;

        assert_int_equal(verify_msg(t, buf41, len41, &p, "below the last accepted 42"),
                         GW_ERR_SEQUENCE_ROLLBACK);
        assert_int_equal(verify_msg(t, buf42b, len42b, &p, "already used"),
                         GW_ERR_SEQUENCE_ROLLBACK);
        assert_int_equal(verify(t, buf42c, len42c, &p), GW_ERR_SEQUENCE_ROLLBACK);
        /* The byte-identical retry is the one exception. */
        assert_int_equal(verify(t, buf42, len42, &p), GW_ERR_NONE);

        snprintf(path, sizeof(path), "%s/manifest-state", dir);
        unlink(path);
        rmdir(dir);
        free(buf42);
        free(buf41);
        free(buf42b);
        free(buf42c);
        free(body_41);
        free(body_42b);
        gw_trust_free(t);
}

/* ---- key compromise: one key is never enough where the root says two ---- */

static void test_key_compromise_threshold_and_rotation(void **state)
{
        struct gw_trust *root = trust_of(KA | KB, 2, 1);
        size_t len;
        char *buf, *doc, *e, *twice;

        /* Key a alone, a twice, a with an untrusted key. */
        buf = sign_with(body_42, KA, &len);
        assert_int_equal(verify_msg(root, buf, len, NULL, "1 valid signature(s)"),
                         GW_ERR_THRESHOLD_NOT_MET);
        e = sig_entry(0, GW_MANIFEST_PAYLOAD_TYPE, body_42, strlen(body_42));
        twice = xmalloc(len + strlen(e) + 1);
        strcpy(twice, buf);
        strcat(twice, e);
        assert_int_equal(verify(root, twice, strlen(twice), NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(twice);
        free(e);
        free(buf);
        buf = sign_with(body_42, KA | KC | KD, &len);
        assert_int_equal(verify(root, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        buf = sign_with(body_42, KA | KB, &len);
        assert_int_equal(verify(root, buf, len, NULL), GW_ERR_NONE);
        free(buf);

        /* Rotation to {c, d} threshold 2, version 2. */
        doc = keys_doc(2, 2, KC | KD);
        /* Only the new keys (the attacker's own): the current root did not vouch. */
        buf = sign_with(doc, KC | KD, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* One current key (compromised) and the new keys. */
        buf = sign_with(doc, KA | KC | KD, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(buf);
        /* The compromised current key twice. */
        buf = sign_with(doc, KA | KC | KD, &len);
        e = sig_entry(0, GW_KEYS_PAYLOAD_TYPE, doc, strlen(doc));
        twice = xmalloc(len + strlen(e) + 1);
        strcpy(twice, buf);
        strcat(twice, e);
        assert_int_equal(rotate(root, twice, strlen(twice), NULL), GW_ERR_THRESHOLD_NOT_MET);
        free(twice);
        free(e);
        free(buf);
        /* Only the old keys: the new keys did not accept the role. */
        buf = sign_with(doc, KA | KB, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_KEYS_ROTATION_INVALID);
        free(buf);
        /* Old keys and one new key signing twice (threshold 2 of new). */
        buf = sign_with(doc, KA | KB | KC, &len);
        e = sig_entry(2, GW_KEYS_PAYLOAD_TYPE, doc, strlen(doc));
        twice = xmalloc(len + strlen(e) + 1);
        strcpy(twice, buf);
        strcat(twice, e);
        assert_int_equal(rotate(root, twice, strlen(twice), NULL), GW_ERR_KEYS_ROTATION_INVALID);
        free(twice);
        free(e);
        free(buf);
        /* Everything right: accepted. */
        buf = sign_with(doc, KA | KB | KC | KD, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_NONE);
        free(buf);
        free(doc);

        /* Version skip (3) and replay of the current version (1): refused. */
        doc = keys_doc(3, 2, KC | KD);
        buf = sign_with(doc, KA | KB | KC | KD, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_KEYS_ROTATION_INVALID);
        free(buf);
        free(doc);
        doc = keys_doc(1, 2, KC | KD);
        buf = sign_with(doc, KA | KB | KC | KD, &len);
        assert_int_equal(rotate(root, buf, len, NULL), GW_ERR_KEYS_ROTATION_INVALID);
        free(buf);
        free(doc);
        gw_trust_free(root);
}

/* ---- wrong software: gateway, node hardware, versions ---- */

static void test_wrong_software_hardware_and_downgrade(void **state)
{
        struct gw_trust *t = trust_of(KA, 1, 1);
        struct gw_manifest_verify_params p = {.now = NOW, .gateway_hardware = "gw-rpi4"};
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        struct gw_options *o = gw_options_new();
        size_t len;
        char *buf = sign_with(body_42, KA, &len);
        const struct gw_manifest_image *img;

        /* A gateway not listed in gateway.hardware. */
        assert_int_equal(verify_msg(t, buf, len, &p, "gw-rpi4"), GW_ERR_GATEWAY_INCOMPATIBLE);
        p.gateway_hardware = "gw-imx8-rev2";
        assert_int_equal(gw_manifest_verify(t, &p, buf, len, &m, &err), 0);
        img = &m->images[0];

        /* Per-node hardware: chip-id 0x413 and board rev-b needed. */
        assert_non_null(o);
        assert_int_equal(gw_manifest_check_hardware(img, NULL, &err), -ENODEV);
        assert_int_equal(err.code, GW_ERR_NODE_INCOMPATIBLE);
        assert_int_equal(gw_options_set(o, "chip-id", "0x411"), 0);
        assert_int_equal(gw_options_set(o, "board", "rev-b"), 0);
        err.code = GW_ERR_NONE;
        assert_int_equal(gw_manifest_check_hardware(img, o, &err), -ENODEV);
        assert_int_equal(err.code, GW_ERR_NODE_INCOMPATIBLE);
        assert_non_null(strstr(err.message, "chip-id"));
        assert_non_null(strstr(err.message, "0x411"));
        assert_int_equal(gw_options_set(o, "chip-id", "1043"), 0); /* = 0x413 */
        assert_int_equal(gw_manifest_check_hardware(img, o, &err), 0);
        assert_int_equal(gw_options_set(o, "board", "rev-c"), 0);
        assert_int_equal(gw_manifest_check_hardware(img, o, &err), -ENODEV);
        assert_non_null(strstr(err.message, "board"));
        gw_options_free(o);
        o = gw_options_new();
        assert_int_equal(gw_options_set(o, "chip-id", "0x413"), 0);
        assert_int_equal(gw_manifest_check_hardware(img, o, &err), -ENODEV); /* no board */
        assert_non_null(strstr(err.message, "does not report board"));

        /* Anti-downgrade: the image is 1.4.2. */
        err.code = GW_ERR_NONE;
        assert_int_equal(gw_manifest_check_downgrade(m, img, "1.4.10", &err), -ESTALE);
        assert_int_equal(err.code, GW_ERR_DOWNGRADE);
        assert_int_equal(gw_manifest_check_downgrade(m, img, "2.0.0-rc1", &err), -ESTALE);
        assert_int_equal(gw_manifest_check_downgrade(m, img, "1.4.2", &err), 0);
        assert_int_equal(gw_manifest_check_downgrade(m, img, "1.4.2-rc3", &err), 0);
        assert_int_equal(gw_manifest_check_downgrade(m, img, "v1.4.1", &err), 0);
        assert_int_equal(gw_manifest_check_downgrade(m, img, NULL, &err), 0);
        /* ... unless the signed policy allows it. */
        m->policy.allow_downgrade = true;
        assert_int_equal(gw_manifest_check_downgrade(m, img, "1.4.10", &err), 0);

        gw_options_free(o);
        gw_manifest_free(m);
        free(buf);
        gw_trust_free(t);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_arbitrary_installation_unsigned_wrong_key_tampered),
            cmocka_unit_test(test_endless_data_size_cap_before_parsing),
            cmocka_unit_test(test_endless_data_yaml_bombs),
            cmocka_unit_test(test_extraneous_dependencies_unknown_fields),
            cmocka_unit_test(test_fast_forward_recovered_by_rotation),
            cmocka_unit_test(test_replay_across_rotation),
            cmocka_unit_test(test_indefinite_freeze_expiry_and_trusted_time),
            cmocka_unit_test(test_mix_and_match_signatures_bound_to_body_and_type),
            cmocka_unit_test(test_rollback_sequence_persisted),
            cmocka_unit_test(test_key_compromise_threshold_and_rotation),
            cmocka_unit_test(test_wrong_software_hardware_and_downgrade),
        };

        return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
