/* Fuzz target for the manifest library (manifests/): the bytes are a manifest or a keys
 * document as a gateway receives it. They go through the envelope splitter, the body parser
 * (and the per-node version and hardware checks on what it parsed), the full verifier against
 * two fixed one-key trust roots (Ed25519, P-256; the seeds carry valid signatures by both),
 * the keys loader and a key rotation; each image's options go through its protocol's option
 * check (the protocol's init(), when it is built in), as the daemon runs it when it maps
 * nodes. Each result is checked against the contract in manifests/gw/manifest.h. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "gw/manifest.h"
#include "gw/options.h"
#include "gw/registry.h"

#include "fuzz-manifest-keys.h"
#include "fuzz.h"

/* 2030-01-01T00:00:00Z: the seeds expire in 2031 (valid) or in 2029 (expired). */
#define NOW              ((time_t) 1893456000)
#define LAST_SEQUENCE    41
#define GATEWAY_HARDWARE "gw-imx8-rev2"

static struct gw_trust *trust_ed25519, *trust_p256;

static struct gw_trust *trust_of(const char *pem, enum gw_key_type type)
{
        struct gw_trust *t = NULL;

        fuzz_check(gw_trust_new(1, 1, &t) == 0);
        fuzz_check(gw_trust_add_key_pem(t, pem, strlen(pem)) == 0);
        fuzz_check(gw_trust_key_count(t) == 1 && gw_trust_key_type(t, 0) == type);
        return t;
}

/* Built once and kept: they are the fixed trust roots of every run. */
static void setup(void)
{
        if (trust_ed25519)
                return;
        trust_ed25519 = trust_of(FUZZ_KEY_ED25519_PEM, GW_KEY_ED25519);
        trust_p256 = trust_of(FUZZ_KEY_P256_PEM, GW_KEY_P256);
}

static bool is_keyid(const char *s)
{
        return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static void check_error(const struct gw_manifest_error *err)
{
        fuzz_check(err->code > GW_ERR_NONE && err->code < _GW_ERR_MAX);
        fuzz_check(memchr(err->message, '\0', sizeof(err->message)) != NULL);
}

static bool is_dashes_line(const uint8_t *data, size_t size, size_t at)
{
        return size - at >= 3 && memcmp(data + at, "---", 3) == 0 &&
               (size - at == 3 || data[at + 3] == '\n');
}

/* The split is on the last line that is exactly "---". */
static void fuzz_split(const uint8_t *data, size_t size, size_t *ret_body_len, size_t *ret_sigs,
                       bool *ret_ok)
{
        size_t body_len = SIZE_MAX, sigs = SIZE_MAX;
        int r;

        r = gw_envelope_split(data, size, &body_len, &sigs);
        *ret_ok = r == 0;
        if (r < 0) {
                fuzz_check(r == -EBADMSG);
                fuzz_check(body_len == SIZE_MAX && sigs == SIZE_MAX);
                for (size_t at = 0; at < size; at++)
                        if (at == 0 || data[at - 1] == '\n')
                                fuzz_check(!is_dashes_line(data, size, at));
                return;
        }
        fuzz_check(body_len <= size && sigs <= size && body_len + 3 <= sigs);
        fuzz_check(body_len == 0 || data[body_len - 1] == '\n');
        fuzz_check(is_dashes_line(data, size, body_len));
        fuzz_check(sigs == body_len + 4 || (sigs == size && size == body_len + 3));
        for (size_t at = sigs; at < size; at++)
                if (data[at - 1] == '\n')
                        fuzz_check(!is_dashes_line(data, size, at));
        *ret_body_len = body_len;
        *ret_sigs = sigs;
}

static void fuzz_keyids(const uint8_t *sigs, size_t len)
{
        struct gw_manifest_error err = {0};
        char(*keyids)[65] = NULL;
        size_t n = 0;
        int r;

        r = gw_envelope_keyids(sigs, len, &keyids, &n, &err);
        if (r < 0) {
                check_error(&err);
                return;
        }
        fuzz_check(n <= GW_MANIFEST_MAX_SIGS);
        for (size_t i = 0; i < n; i++)
                fuzz_check(is_keyid(keyids[i]));
        free(keyids);
}

/* An image's options as the daemon checks them for a node of the image's protocol: with a
 * transport of the protocol's link shape and minimal settings of its own. Either accepted or
 * refused with a reason, never anything else. */
static void check_image_options(const struct gw_manifest_image *im)
{
        const struct gw_protocol_ops *p = gw_protocol_find(im->protocol);
        const struct gw_transport_ops *t;
        struct gw_options *topts;
        char why[512];
        int r;

        if (!p)
                return;
        t = gw_transport_find(p->shape == GW_LINK_STREAM ? "uart" : "usb");
        if (!t || t->shape != p->shape)
                return;
        topts = gw_options_new();
        fuzz_check(topts != NULL);
        fuzz_check(gw_options_set(topts, p->shape == GW_LINK_STREAM ? "port" : "usb",
                                  p->shape == GW_LINK_STREAM ? "/dev/null" : "0483:df11") == 0);
        why[0] = 'x';
        r = gw_plugin_check_options(t, topts, p, im->options, why, sizeof(why));
        fuzz_check(r == 0 || r == -EINVAL);
        fuzz_check(memchr(why, '\0', sizeof(why)) != NULL);
        if (r < 0)
                fuzz_check(why[0] != '\0');
        gw_options_free(topts);
}

static void check_manifest(const struct gw_manifest *m)
{
        fuzz_check(m->format == 1);
        fuzz_check(m->id && strlen(m->id) >= 1 && strlen(m->id) <= GW_MANIFEST_ID_MAX);
        fuzz_check(m->n_images >= 1 && m->n_images <= GW_MANIFEST_MAX_IMAGES);
        fuzz_check(m->n_gateway_hardware <= GW_MANIFEST_MAX_HARDWARE);
        fuzz_check(m->policy.parallel >= 1 && m->policy.parallel <= 1024);
        fuzz_check(m->policy.canary <= 1024);
        for (size_t i = 0; i < m->n_images; i++) {
                const struct gw_manifest_image *im = &m->images[i];

                fuzz_check(im->name && im->version && im->protocol && im->url && im->options);
                fuzz_check(im->target_kind >= GW_TARGET_CLASS &&
                           im->target_kind <= GW_TARGET_NODES);
                fuzz_check(im->n_targets >= 1 && im->n_targets <= GW_MANIFEST_MAX_TARGETS);
                if (im->target_kind != GW_TARGET_NODES)
                        fuzz_check(im->n_targets == 1);
                fuzz_check(im->size >= 1);
                fuzz_check(im->n_hardware <= GW_MANIFEST_MAX_HARDWARE);
                fuzz_check(im->n_mirrors <= GW_MANIFEST_MAX_MIRRORS);
                for (size_t j = 0; j < i; j++) {
                        const char *a = im->version, *b = m->images[j].version;
                        int ab = gw_version_compare(a, b), ba = gw_version_compare(b, a);

                        fuzz_check(strcmp(m->images[j].name, im->name) != 0);
                        /* The version order is antisymmetric on whatever versions parse. */
                        fuzz_check((ab > 0) == (ba < 0) && (ab == 0) == (ba == 0));
                }
                fuzz_check(gw_version_compare(im->version, im->version) == 0);
                /* Per-node checks: the same version is never a downgrade, and a node that
                 * reports exactly the image's hardware map is compatible. */
                fuzz_check(gw_manifest_check_downgrade(m, im, im->version, NULL) == 0);
                {
                        struct gw_options *o = gw_options_new();

                        fuzz_check(o != NULL);
                        for (size_t k = 0; k < im->n_hardware; k++)
                                fuzz_check(gw_options_set(o, im->hardware[k].key,
                                                          im->hardware[k].value) == 0);
                        fuzz_check(gw_manifest_check_hardware(im, o, NULL) == 0);
                        gw_options_free(o);
                }
                check_image_options(im);
        }
}

static void fuzz_body(const uint8_t *body, size_t len)
{
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        int r;

        r = gw_manifest_parse_body(body, len, &m, &err);
        if (r < 0) {
                fuzz_check(!m);
                check_error(&err);
                fuzz_check(err.code == GW_ERR_BODY_MALFORMED || err.code == GW_ERR_SCHEMA_INVALID);
                return;
        }
        check_manifest(m);
        fuzz_check(m->n_signers == 0);
        gw_manifest_free(m);
}

static void report(void *userdata, const char *check, enum gw_error code, const char *detail)
{
        unsigned *calls = userdata;

        fuzz_check(check && detail);
        fuzz_check(code >= GW_ERR_NONE && code < _GW_ERR_MAX);
        (*calls)++;
}

static void fuzz_verify(const struct gw_trust *trust, const uint8_t *data, size_t size,
                        bool split_ok, size_t body_len)
{
        const struct gw_manifest_state state = {
            .has_sequence = true,
            .sequence = LAST_SEQUENCE,
            .latest_trusted_time = NOW - 3600,
        };
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL, *body = NULL;
        unsigned calls = 0;
        struct gw_manifest_verify_params p = {
            .now = NOW,
            .state = &state,
            .gateway_hardware = GATEWAY_HARDWARE,
            .report = report,
            .userdata = &calls,
        };
        uint8_t sha[SHA256_DIGEST_LENGTH];
        bool listed = false;
        int r;

        r = gw_manifest_verify(trust, &p, data, size, &m, &err);
        fuzz_check(calls >= 1);
        if (r < 0) {
                fuzz_check(!m);
                check_error(&err);
                fuzz_check(r == -EFBIG || r == -EBADMSG || r == -EKEYREJECTED ||
                           r == -EKEYEXPIRED || r == -ESTALE || r == -ENODEV || r == -ENOMEM);
                if (!split_ok && size <= GW_MANIFEST_MAX_SIZE_DEFAULT)
                        fuzz_check(err.code == GW_ERR_ENVELOPE_MALFORMED);
                return;
        }
        /* Accepted: signed by the one trusted key, and every later check passed. */
        fuzz_check(split_ok);
        check_manifest(m);
        fuzz_check(m->n_signers == 1 && strcmp(m->signers[0], gw_trust_keyid(trust, 0)) == 0);
        SHA256(data, size, sha);
        fuzz_check(memcmp(m->sha256, sha, sizeof(sha)) == 0);
        fuzz_check(m->expires > NOW);
        fuzz_check(m->sequence > LAST_SEQUENCE);
        for (size_t i = 0; i < m->n_gateway_hardware; i++)
                listed = listed || strcmp(m->gateway_hardware[i], GATEWAY_HARDWARE) == 0;
        fuzz_check(m->n_gateway_hardware == 0 || listed);
        /* The body alone parses to the same manifest. */
        fuzz_check(gw_manifest_parse_body(data, body_len, &body, &err) == 0);
        fuzz_check(strcmp(body->id, m->id) == 0 && body->sequence == m->sequence &&
                   body->n_images == m->n_images);
        gw_manifest_free(body);
        gw_manifest_free(m);
}

/* The size cap comes first: one byte over it is refused whatever the bytes are. */
static void fuzz_cap(const uint8_t *data, size_t size)
{
        struct gw_manifest_verify_params p = {.now = NOW, .max_size = size - 1};
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;

        if (size <= 1)
                return;
        fuzz_check(gw_manifest_verify(trust_ed25519, &p, data, size, &m, &err) == -EFBIG);
        fuzz_check(!m && err.code == GW_ERR_MANIFEST_TOO_LARGE);
}

static void check_trust(const struct gw_trust *t)
{
        size_t n = gw_trust_key_count(t);

        fuzz_check(n >= 1 && n <= GW_MANIFEST_MAX_KEYS);
        fuzz_check(gw_trust_threshold(t) >= 1 && gw_trust_threshold(t) <= n);
        for (size_t i = 0; i < n; i++) {
                enum gw_key_type type = gw_trust_key_type(t, i);

                fuzz_check(is_keyid(gw_trust_keyid(t, i)));
                fuzz_check(type == GW_KEY_ED25519 || type == GW_KEY_P256);
                for (size_t j = 0; j < i; j++)
                        fuzz_check(strcmp(gw_trust_keyid(t, i), gw_trust_keyid(t, j)) != 0);
        }
        fuzz_check(!gw_trust_keyid(t, n));
}

static void fuzz_keys(const uint8_t *data, size_t size)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *t = NULL;
        int r;

        r = gw_trust_load_buffer(data, size, GW_MANIFEST_MAX_SIZE_DEFAULT, &t, &err);
        if (r < 0) {
                fuzz_check(!t);
                check_error(&err);
        } else {
                check_trust(t);
                gw_trust_free(t);
                t = NULL;
        }

        /* A rotation from the Ed25519 root (version 1): signed by it, version 2. */
        r = gw_trust_rotate(trust_ed25519, data, size, GW_MANIFEST_MAX_SIZE_DEFAULT, &t, &err);
        if (r < 0) {
                fuzz_check(!t);
                check_error(&err);
                return;
        }
        check_trust(t);
        fuzz_check(gw_trust_version(t) == gw_trust_version(trust_ed25519) + 1);
        gw_trust_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        size_t body_len = 0, sigs = 0;
        bool split_ok;

        setup();
        fuzz_split(data, size, &body_len, &sigs, &split_ok);
        if (split_ok) {
                fuzz_keyids(data + sigs, size - sigs);
                fuzz_body(data, body_len);
        }
        fuzz_body(data, size);
        fuzz_verify(trust_ed25519, data, size, split_ok, body_len);
        fuzz_verify(trust_p256, data, size, split_ok, body_len);
        fuzz_cap(data, size);
        fuzz_keys(data, size);
        return 0;
}
