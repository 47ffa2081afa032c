/* Public keys and trust roots: PEM SubjectPublicKeyInfo loading (Ed25519 and P-256 only),
 * keyids, signature checks, the gatewayd/keys document and key rotation. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "manifest-internal.h"

#define PEM_MAX_SIZE (16 * 1024)

int gw_key_describe(EVP_PKEY *pkey, enum gw_key_type *ret_type, char ret_keyid[static 65])
{
        unsigned char *der = NULL;
        uint8_t digest[32];
        enum gw_key_type type;
        int n, r;

        switch (EVP_PKEY_get_base_id(pkey)) {
        case EVP_PKEY_ED25519:
                type = GW_KEY_ED25519;
                break;
        case EVP_PKEY_EC: {
                char group[64];
                size_t glen = 0;

                if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) != 1 ||
                    OBJ_sn2nid(group) != NID_X9_62_prime256v1)
                        return -EPROTONOSUPPORT;
                type = GW_KEY_P256;
                break;
        }
        default:
                return -EPROTONOSUPPORT;
        }

        n = i2d_PUBKEY(pkey, &der);
        if (n <= 0)
                return -EIO;
        r = gw_sha256(der, (size_t) n, digest);
        OPENSSL_free(der);
        if (r < 0)
                return r;
        gw_hex(digest, sizeof(digest), ret_keyid);
        *ret_type = type;
        return 0;
}

/* Parses exactly one PEM "PUBLIC KEY" block. Its DER must be the canonical encoding (what
 * OpenSSL writes back), so that a key has one keyid whoever computes it. */
static int key_load_public(const void *pem, size_t len, struct gw_key *ret)
{
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL, *der = NULL;
        const unsigned char *p;
        long dlen = 0;
        EVP_PKEY *pkey = NULL;
        BIO *bio;
        int n, r;

        if (len > PEM_MAX_SIZE)
                return -EFBIG;
        bio = BIO_new_mem_buf(pem, (int) len);
        if (!bio)
                return -ENOMEM;
        if (PEM_read_bio(bio, &name, &header, &data, &dlen) != 1 ||
            strcmp(name, "PUBLIC KEY") != 0 || dlen <= 0) {
                r = -EBADMSG;
                goto out;
        }
        p = data;
        pkey = d2i_PUBKEY(NULL, &p, dlen);
        if (!pkey || p != data + dlen) {
                r = -EBADMSG;
                goto out;
        }
        n = i2d_PUBKEY(pkey, &der);
        if (n != dlen || memcmp(der, data, (size_t) n) != 0) {
                r = -EBADMSG;
                goto out;
        }
        r = gw_key_describe(pkey, &ret->type, ret->keyid);
        if (r < 0)
                goto out;
        ret->pkey = pkey;
        pkey = NULL;
out:
        ERR_clear_error();
        EVP_PKEY_free(pkey);
        OPENSSL_free(der);
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        BIO_free(bio);
        return r;
}

int gw_key_id_from_pem(const void *pem, size_t len, char ret[static 65])
{
        struct gw_key k = {0};
        int r;

        r = key_load_public(pem, len, &k);
        if (r < 0)
                return r;
        memcpy(ret, k.keyid, sizeof(k.keyid));
        EVP_PKEY_free(k.pkey);
        return 0;
}

int gw_key_verify(const struct gw_key *k, const uint8_t *msg, size_t len, const uint8_t *sig,
                  size_t sig_len)
{
        EVP_MD_CTX *ctx;
        int ok = 0;

        ctx = EVP_MD_CTX_new();
        if (!ctx)
                return 0;
        /* Ed25519 is a one-shot scheme over the message itself: no digest. */
        if (EVP_DigestVerifyInit(ctx, NULL, k->type == GW_KEY_P256 ? EVP_sha256() : NULL, NULL,
                                 k->pkey) == 1)
                ok = EVP_DigestVerify(ctx, sig, sig_len, msg, len) == 1;
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        return ok;
}

/* ---- trust roots ---- */

int gw_trust_new(unsigned threshold, uint64_t version, struct gw_trust **ret)
{
        struct gw_trust *t;

        if (threshold < 1 || threshold > GW_MANIFEST_MAX_KEYS)
                return -EINVAL;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->threshold = threshold;
        t->version = version;
        *ret = t;
        return 0;
}

struct gw_trust *gw_trust_free(struct gw_trust *t)
{
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_keys; i++)
                EVP_PKEY_free(t->keys[i].pkey);
        free(t->keys);
        free(t);
        return NULL;
}

static bool trust_has(const struct gw_trust *t, const char *keyid)
{
        for (size_t i = 0; i < t->n_keys; i++)
                if (strcmp(t->keys[i].keyid, keyid) == 0)
                        return true;
        return false;
}

/* 0 when added, 1 when the key was already there. */
static int trust_add(struct gw_trust *t, const void *pem, size_t len)
{
        struct gw_key k = {0};
        struct gw_key *v;
        int r;

        r = key_load_public(pem, len, &k);
        if (r < 0)
                return r;
        if (trust_has(t, k.keyid)) {
                EVP_PKEY_free(k.pkey);
                return 1;
        }
        if (t->n_keys >= GW_MANIFEST_MAX_KEYS) {
                EVP_PKEY_free(k.pkey);
                return -E2BIG;
        }
        v = realloc(t->keys, (t->n_keys + 1) * sizeof(*v));
        if (!v) {
                EVP_PKEY_free(k.pkey);
                return -ENOMEM;
        }
        t->keys = v;
        t->keys[t->n_keys++] = k;
        return 0;
}

int gw_trust_add_key_pem(struct gw_trust *t, const void *pem, size_t len)
{
        int r = trust_add(t, pem, len);

        return r < 0 ? r : 0;
}

int gw_trust_add_key_file(struct gw_trust *t, const char *path)
{
        char *buf = NULL;
        size_t len = 0;
        int r;

        r = gw_read_file(path, PEM_MAX_SIZE, &buf, &len);
        if (r < 0)
                return r;
        r = gw_trust_add_key_pem(t, buf, len);
        free(buf);
        return r;
}

unsigned gw_trust_threshold(const struct gw_trust *t)
{
        return t->threshold;
}

uint64_t gw_trust_version(const struct gw_trust *t)
{
        return t->version;
}

size_t gw_trust_key_count(const struct gw_trust *t)
{
        return t->n_keys;
}

const char *gw_trust_keyid(const struct gw_trust *t, size_t i)
{
        return i < t->n_keys ? t->keys[i].keyid : NULL;
}

enum gw_key_type gw_trust_key_type(const struct gw_trust *t, size_t i)
{
        return i < t->n_keys ? t->keys[i].type : 0;
}

/* ---- the gatewayd/keys document ---- */

int gw_keys_from_tree(const struct ynode *root, struct gw_trust **ret,
                      struct gw_manifest_error *err)
{
        static const struct gw_field top[] = {
            {"kind", true},      {"format", true}, {"version", true},
            {"threshold", true}, {"keys", true},   {NULL, false},
        };
        static const struct gw_field key_fields[] = {{"public", true}, {NULL, false}};
        const struct ynode *keys;
        struct gw_trust *t = NULL;
        uint64_t format, version, threshold;
        char path[GW_PATH_MAX];
        int r;

        r = gw_schema_map(root, "", top, err);
        if (r < 0)
                return r;
        if (strcmp(gw_ytree_kind(root) ?: "", "gatewayd/keys") != 0)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "kind: expected gatewayd/keys");
        r = gw_schema_u64(gw_ynode_get(root, "format"), "format", 1, 1, &format, err);
        if (r < 0)
                return r;
        r = gw_schema_u64(gw_ynode_get(root, "version"), "version", 1, UINT64_MAX - 1, &version,
                          err);
        if (r < 0)
                return r;
        r = gw_schema_u64(gw_ynode_get(root, "threshold"), "threshold", 1, GW_MANIFEST_MAX_KEYS,
                          &threshold, err);
        if (r < 0)
                return r;
        keys = gw_ynode_get(root, "keys");
        r = gw_schema_seq(keys, "keys", 1, GW_MANIFEST_MAX_KEYS, err);
        if (r < 0)
                return r;

        r = gw_trust_new((unsigned) threshold, version, &t);
        if (r < 0)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        for (size_t i = 0; i < keys->n; i++) {
                const struct ynode *k = keys->items[i], *pub;

                gw_path_index(path, "keys", i);
                r = gw_schema_map(k, path, key_fields, err);
                if (r < 0)
                        goto fail;
                pub = gw_ynode_get(k, "public");
                gw_path_key(path, path, "public");
                if (pub->type != YNODE_SCALAR) {
                        r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                             "%s: expected a PEM public key", path);
                        goto fail;
                }
                r = trust_add(t, pub->value, pub->len);
                if (r == 1) {
                        r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                             "%s: the same key is listed twice (line %u)", path,
                                             pub->line);
                        goto fail;
                }
                if (r < 0) {
                        r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: %s (line %u)", path,
                                             r == -EPROTONOSUPPORT
                                                 ? "only Ed25519 and P-256 keys are allowed"
                                                 : "not a PEM SubjectPublicKeyInfo",
                                             pub->line);
                        goto fail;
                }
        }
        if (threshold > t->n_keys) {
                r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                     "threshold: %llu is more than the %zu keys",
                                     (unsigned long long) threshold, t->n_keys);
                goto fail;
        }
        *ret = t;
        return 0;
fail:
        gw_trust_free(t);
        return r;
}

/* Size cap, envelope split and signatures document: the common start of loading and
 * rotating. */
static int keys_open(const void *buf, size_t len, size_t max_size, size_t *ret_body_len,
                     struct gw_sigs *ret_sigs, struct gw_manifest_error *err)
{
        size_t body_len, sigs_off;

        if (max_size == 0)
                max_size = GW_MANIFEST_MAX_SIZE_DEFAULT;
        if (len > max_size)
                return gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                        "%zu bytes, more than the %zu allowed", len, max_size);
        if (gw_envelope_split(buf, len, &body_len, &sigs_off) < 0)
                return gw_manifest_fail(err, GW_ERR_ENVELOPE_MALFORMED,
                                        "no line \"---\" before a signatures document");
        *ret_body_len = body_len;
        return gw_sigs_parse((const char *) buf + sigs_off, len - sigs_off, ret_sigs, err);
}

static int keys_body(const void *body, size_t len, struct gw_trust **ret,
                     struct gw_manifest_error *err)
{
        struct ynode *root = NULL;
        int r;

        r = gw_ytree_load(body, len, GW_ERR_BODY_MALFORMED, &root, err);
        if (r >= 0)
                r = gw_keys_from_tree(root, ret, err);
        gw_ytree_free(root);
        return r;
}

int gw_trust_load_buffer(const void *buf, size_t len, size_t max_size, struct gw_trust **ret,
                         struct gw_manifest_error *err)
{
        struct gw_sigs sigs = {0};
        size_t body_len = 0;
        int r;

        r = keys_open(buf, len, max_size, &body_len, &sigs, err);
        if (r < 0)
                return r;
        gw_sigs_done(&sigs);
        return keys_body(buf, body_len, ret, err);
}

int gw_trust_load_file(const char *path, size_t max_size, struct gw_trust **ret,
                       struct gw_manifest_error *err)
{
        char *buf = NULL;
        size_t len = 0;
        int r;

        if (max_size == 0)
                max_size = GW_MANIFEST_MAX_SIZE_DEFAULT;
        r = gw_read_file(path, max_size, &buf, &len);
        if (r == -EFBIG)
                return gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE, "%s: more than %zu bytes",
                                        path, max_size);
        if (r < 0)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "%s: %s", path, strerror(-r));
        r = gw_trust_load_buffer(buf, len, max_size, ret, err);
        free(buf);
        return r;
}

int gw_trust_rotate(const struct gw_trust *current, const void *buf, size_t len, size_t max_size,
                    struct gw_trust **ret, struct gw_manifest_error *err)
{
        struct gw_trust *next = NULL;
        struct gw_sigs sigs = {0};
        size_t body_len = 0, count = 0;
        int r;

        r = keys_open(buf, len, max_size, &body_len, &sigs, err);
        if (r < 0)
                return r;
        /* The current keys first: nothing of the body is parsed before they vouch for it. */
        r = gw_sigs_count(current, GW_KEYS_PAYLOAD_TYPE, buf, body_len, &sigs, NULL, NULL, &count,
                          NULL);
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
                goto out;
        }
        if (count < current->threshold) {
                r = gw_manifest_fail(err, GW_ERR_THRESHOLD_NOT_MET,
                                     "%zu valid signatures by current keys, %u needed", count,
                                     current->threshold);
                goto out;
        }
        r = keys_body(buf, body_len, &next, err);
        if (r < 0)
                goto out;
        if (next->version != current->version + 1) {
                r = gw_manifest_fail(err, GW_ERR_KEYS_ROTATION_INVALID,
                                     "version %llu does not follow the current version %llu",
                                     (unsigned long long) next->version,
                                     (unsigned long long) current->version);
                goto out;
        }
        r = gw_sigs_count(next, GW_KEYS_PAYLOAD_TYPE, buf, body_len, &sigs, NULL, NULL, &count,
                          NULL);
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
                goto out;
        }
        if (count < next->threshold) {
                r = gw_manifest_fail(err, GW_ERR_KEYS_ROTATION_INVALID,
                                     "%zu valid signatures by the new keys, %u needed", count,
                                     next->threshold);
                goto out;
        }
        *ret = next;
        next = NULL;
        r = 0;
out:
        gw_sigs_done(&sigs);
        gw_trust_free(next);
        return r;
}
