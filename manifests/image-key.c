/* Encrypted images: the per-image data key wrapped for each gateway that may read the image
 * (ECDH with the gateway's X25519 or P-256 key, HKDF-SHA256, AES-256-GCM), and the gateway's
 * own key pair. OpenSSL does the cryptography; docs/manifest.md says exactly what is computed,
 * so that another tool can produce the same. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "manifest-internal.h"

#define HKDF_INFO    "gatewayd image key v1"
#define KEY_FILE_MAX (16u * 1024u)

struct gw_gateway_key {
        EVP_PKEY *pkey;
        char keyid[65];
};

/* The key's SubjectPublicKeyInfo DER (malloc'd) and its keyid. */
static int spki(EVP_PKEY *pkey, uint8_t **ret_der, size_t *ret_len, char ret_keyid[static 65])
{
        uint8_t *der = NULL, digest[32];
        int len = i2d_PUBKEY(pkey, &der);

        if (len <= 0)
                return -EBADMSG;
        if (gw_sha256(der, (size_t) len, digest) < 0) {
                OPENSSL_free(der);
                return -EIO;
        }
        gw_hex(digest, 32, ret_keyid);
        if (ret_der) {
                *ret_der = malloc((size_t) len);
                if (!*ret_der) {
                        OPENSSL_free(der);
                        return -ENOMEM;
                }
                memcpy(*ret_der, der, (size_t) len);
                *ret_len = (size_t) len;
        }
        OPENSSL_free(der);
        return 0;
}

static bool key_type_ok(EVP_PKEY *pkey)
{
        if (EVP_PKEY_is_a(pkey, "X25519"))
                return true;
        if (EVP_PKEY_is_a(pkey, "EC")) {
                char group[32];
                size_t len = 0;

                return EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                      sizeof(group), &len) == 1 &&
                       strcmp(group, "prime256v1") == 0;
        }
        return false;
}

/* ECDH between priv and peer, then HKDF-SHA256 over the shared secret with both public keys
 * in the info: the key-encryption key. */
static int derive_kek(EVP_PKEY *priv, EVP_PKEY *peer, const uint8_t *eph_der, size_t eph_len,
                      const uint8_t *gw_der, size_t gw_len, uint8_t ret[static 32])
{
        EVP_PKEY_CTX *dctx = EVP_PKEY_CTX_new(priv, NULL), *kctx = NULL;
        uint8_t shared[66], *info = NULL;
        size_t shared_len = sizeof(shared), info_len = strlen(HKDF_INFO) + eph_len + gw_len;
        int r = -EBADMSG;

        info = malloc(info_len);
        if (!dctx || !info) {
                r = -ENOMEM;
                goto out;
        }
        memcpy(info, HKDF_INFO, strlen(HKDF_INFO));
        memcpy(info + strlen(HKDF_INFO), eph_der, eph_len);
        memcpy(info + strlen(HKDF_INFO) + eph_len, gw_der, gw_len);
        if (EVP_PKEY_derive_init(dctx) != 1 || EVP_PKEY_derive_set_peer(dctx, peer) != 1 ||
            EVP_PKEY_derive(dctx, shared, &shared_len) != 1)
                goto out;
        kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
        if (!kctx || EVP_PKEY_derive_init(kctx) != 1 ||
            EVP_PKEY_CTX_set_hkdf_md(kctx, EVP_sha256()) != 1 ||
            EVP_PKEY_CTX_set1_hkdf_key(kctx, shared, (int) shared_len) != 1 ||
            EVP_PKEY_CTX_add1_hkdf_info(kctx, info, (int) info_len) != 1)
                goto out;
        {
                size_t out_len = 32;

                if (EVP_PKEY_derive(kctx, ret, &out_len) != 1 || out_len != 32)
                        goto out;
        }
        r = 0;
out:
        OPENSSL_cleanse(shared, sizeof(shared));
        EVP_PKEY_CTX_free(dctx);
        EVP_PKEY_CTX_free(kctx);
        free(info);
        return r;
}

/* AES-256-GCM with a zero IV (each key-encryption key is used once) and the keyid as AAD. */
static int wrap_gcm(bool encrypt, const uint8_t kek[static 32], const char *keyid,
                    const uint8_t *in, uint8_t *out, uint8_t tag[static GW_IMAGE_TAG_SIZE])
{
        static const uint8_t iv[GW_IMAGE_NONCE_SIZE];
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int len = 0, ok;

        if (!c)
                return -ENOMEM;
        ok = EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, kek, iv, encrypt ? 1 : 0) == 1 &&
             EVP_CipherUpdate(c, NULL, &len, (const uint8_t *) keyid, 64) == 1 &&
             EVP_CipherUpdate(c, out, &len, in, GW_IMAGE_KEY_SIZE) == 1 && len == GW_IMAGE_KEY_SIZE;
        if (ok && !encrypt)
                ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, GW_IMAGE_TAG_SIZE, tag) == 1;
        if (ok)
                ok = EVP_CipherFinal_ex(c, out + len, &len) == 1;
        if (ok && encrypt)
                ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, GW_IMAGE_TAG_SIZE, tag) == 1;
        EVP_CIPHER_CTX_free(c);
        return ok ? 0 : -EBADMSG;
}

int gw_image_key_new(uint8_t ret[static GW_IMAGE_KEY_SIZE])
{
        return RAND_bytes(ret, GW_IMAGE_KEY_SIZE) == 1 ? 0 : -EIO;
}

int gw_image_nonce_new(uint8_t ret[static GW_IMAGE_NONCE_SIZE])
{
        return RAND_bytes(ret, GW_IMAGE_NONCE_SIZE) == 1 ? 0 : -EIO;
}

int gw_image_key_wrap(const void *pub_pem, size_t len, const uint8_t key[static GW_IMAGE_KEY_SIZE],
                      struct gw_manifest_recipient *ret)
{
        struct gw_manifest_recipient rc = {0};
        EVP_PKEY *gw = NULL, *eph = NULL;
        EVP_PKEY_CTX *gctx = NULL;
        uint8_t *gw_der = NULL, *eph_der = NULL, kek[32];
        size_t gw_len = 0, eph_len = 0;
        char eph_id[65];
        BIO *bio;
        int r;

        bio = BIO_new_mem_buf(pub_pem, (int) len);
        if (!bio)
                return -ENOMEM;
        gw = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        BIO_free(bio);
        if (!gw)
                return -EBADMSG;
        if (!key_type_ok(gw)) {
                r = -EPROTONOSUPPORT;
                goto out;
        }
        r = spki(gw, &gw_der, &gw_len, rc.keyid);
        if (r < 0)
                goto out;
        /* An ephemeral key of the same type (and curve) as the gateway's. */
        gctx = EVP_PKEY_CTX_new_from_pkey(NULL, gw, NULL);
        if (!gctx || EVP_PKEY_keygen_init(gctx) != 1 || EVP_PKEY_keygen(gctx, &eph) != 1) {
                r = -EIO;
                goto out;
        }
        r = spki(eph, &eph_der, &eph_len, eph_id);
        if (r < 0)
                goto out;
        if (eph_len > sizeof(rc.ephemeral)) {
                r = -E2BIG;
                goto out;
        }
        r = derive_kek(eph, gw, eph_der, eph_len, gw_der, gw_len, kek);
        if (r >= 0)
                r = wrap_gcm(true, kek, rc.keyid, key, rc.wrapped, rc.wrapped + GW_IMAGE_KEY_SIZE);
        if (r < 0)
                goto out;
        memcpy(rc.ephemeral, eph_der, eph_len);
        rc.ephemeral_len = eph_len;
        *ret = rc;
out:
        OPENSSL_cleanse(kek, sizeof(kek));
        EVP_PKEY_CTX_free(gctx);
        EVP_PKEY_free(gw);
        EVP_PKEY_free(eph);
        free(gw_der);
        free(eph_der);
        return r;
}

int gw_gateway_key_load(const char *path, struct gw_gateway_key **ret)
{
        struct gw_gateway_key *k;
        char *buf = NULL;
        size_t len = 0;
        BIO *bio;
        int r;

        r = gw_read_file(path, KEY_FILE_MAX, &buf, &len);
        if (r < 0)
                return r;
        k = calloc(1, sizeof(*k));
        bio = BIO_new_mem_buf(buf, (int) len);
        if (!k || !bio) {
                r = -ENOMEM;
                goto fail;
        }
        k->pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        if (!k->pkey) {
                r = -EBADMSG;
                goto fail;
        }
        if (!key_type_ok(k->pkey)) {
                r = -EPROTONOSUPPORT;
                goto fail;
        }
        r = spki(k->pkey, NULL, NULL, k->keyid);
        if (r < 0)
                goto fail;
        BIO_free(bio);
        OPENSSL_cleanse(buf, len);
        free(buf);
        *ret = k;
        return 0;
fail:
        BIO_free(bio);
        OPENSSL_cleanse(buf, len);
        free(buf);
        gw_gateway_key_free(k);
        return r;
}

struct gw_gateway_key *gw_gateway_key_free(struct gw_gateway_key *k)
{
        if (!k)
                return NULL;
        EVP_PKEY_free(k->pkey);
        free(k);
        return NULL;
}

const char *gw_gateway_key_id(const struct gw_gateway_key *k)
{
        return k ? k->keyid : NULL;
}

int gw_image_key_unwrap(const struct gw_gateway_key *k, const struct gw_manifest_image *img,
                        uint8_t ret[static GW_IMAGE_KEY_SIZE], struct gw_manifest_error *err)
{
        const struct gw_manifest_recipient *rc = NULL;
        EVP_PKEY *eph = NULL;
        const uint8_t *p;
        uint8_t *gw_der = NULL, kek[32], key[GW_IMAGE_KEY_SIZE], tag[GW_IMAGE_TAG_SIZE];
        size_t gw_len = 0;
        char keyid[65];
        int r;

        if (!k)
                return gw_manifest_fail(err, GW_ERR_DECRYPT_FAILED,
                                        "image %s is encrypted and this gateway has no "
                                        "decryption key (decryption-key in gatewayd.yaml)",
                                        img->name);
        for (size_t i = 0; i < img->n_recipients && !rc; i++)
                if (strcmp(img->recipients[i].keyid, k->keyid) == 0)
                        rc = &img->recipients[i];
        if (!rc)
                return gw_manifest_fail(err, GW_ERR_DECRYPT_FAILED,
                                        "image %s is not encrypted for this gateway's key %.16s",
                                        img->name, k->keyid);
        p = rc->ephemeral;
        eph = d2i_PUBKEY(NULL, &p, (long) rc->ephemeral_len);
        if (!eph || p != rc->ephemeral + rc->ephemeral_len ||
            EVP_PKEY_get_base_id(eph) != EVP_PKEY_get_base_id(k->pkey)) {
                r = gw_manifest_fail(err, GW_ERR_DECRYPT_FAILED,
                                     "image %s: the ephemeral key is not a key of this "
                                     "gateway key's type",
                                     img->name);
                goto out;
        }
        r = spki(k->pkey, &gw_der, &gw_len, keyid);
        if (r >= 0)
                r = derive_kek(k->pkey, eph, rc->ephemeral, rc->ephemeral_len, gw_der, gw_len, kek);
        if (r >= 0) {
                memcpy(tag, rc->wrapped + GW_IMAGE_KEY_SIZE, sizeof(tag));
                r = wrap_gcm(false, kek, rc->keyid, rc->wrapped, key, tag);
        }
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_DECRYPT_FAILED,
                                     "image %s: the data key does not unwrap with this "
                                     "gateway's key (wrong key, or the wrapped key was altered)",
                                     img->name);
                goto out;
        }
        memcpy(ret, key, sizeof(key));
out:
        OPENSSL_cleanse(kek, sizeof(kek));
        OPENSSL_cleanse(key, sizeof(key));
        EVP_PKEY_free(eph);
        free(gw_der);
        return r;
}

/* PEM of pkey's private (PKCS#8) or public (SPKI) half, malloc'd. */
static int pem_of(EVP_PKEY *pkey, bool private_half, char **ret)
{
        BIO *mem = BIO_new(BIO_s_mem());
        char *data = NULL, *s;
        long n;
        int ok;

        if (!mem)
                return -ENOMEM;
        ok = private_half ? PEM_write_bio_PrivateKey(mem, pkey, NULL, NULL, 0, NULL, NULL)
                          : PEM_write_bio_PUBKEY(mem, pkey);
        n = ok == 1 ? BIO_get_mem_data(mem, &data) : 0;
        s = n > 0 ? strndup(data, (size_t) n) : NULL;
        if (n > 0)
                OPENSSL_cleanse(data, (size_t) n);
        BIO_free(mem);
        if (!s)
                return ok == 1 ? -ENOMEM : -EIO;
        *ret = s;
        return 0;
}

int gw_gateway_key_generate(bool p256, char **ret_private_pem, char **ret_public_pem,
                            char ret_keyid[static 65])
{
        EVP_PKEY *pkey = p256 ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")
                              : EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
        char *priv = NULL, *pub = NULL;
        int r;

        if (!pkey)
                return -EIO;
        r = spki(pkey, NULL, NULL, ret_keyid);
        if (r >= 0)
                r = pem_of(pkey, true, &priv);
        if (r >= 0)
                r = pem_of(pkey, false, &pub);
        EVP_PKEY_free(pkey);
        if (r < 0) {
                if (priv)
                        OPENSSL_cleanse(priv, strlen(priv));
                free(priv);
                free(pub);
                return r;
        }
        *ret_private_pem = priv;
        *ret_public_pem = pub;
        return 0;
}
