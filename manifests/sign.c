/* Signing: private keys (generate, load, PEM out), signatures over the DSSE PAE of a body,
 * and re-emitting a manifest as its unchanged body + "---" + a signatures document. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "manifest-internal.h"

#define PRIVATE_PEM_MAX_SIZE (16 * 1024)

struct gw_signer {
        EVP_PKEY *pkey;
        enum gw_key_type type;
        char keyid[65];
};

static int signer_wrap(EVP_PKEY *pkey, struct gw_signer **ret)
{
        struct gw_signer *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        r = gw_key_describe(pkey, &s->type, s->keyid);
        if (r < 0) {
                free(s);
                return r;
        }
        s->pkey = pkey;
        *ret = s;
        return 0;
}

int gw_signer_generate(enum gw_key_type type, struct gw_signer **ret)
{
        EVP_PKEY *pkey;
        int r;

        if (type == GW_KEY_ED25519)
                pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        else if (type == GW_KEY_P256)
                pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        else
                return -EPROTONOSUPPORT;
        if (!pkey) {
                ERR_clear_error();
                return -EIO;
        }
        r = signer_wrap(pkey, ret);
        if (r < 0)
                EVP_PKEY_free(pkey);
        return r;
}

/* Never prompt for a passphrase: an encrypted key simply fails to load. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
        return -1;
}

int gw_signer_load_pem(const void *pem, size_t len, struct gw_signer **ret)
{
        EVP_PKEY *pkey;
        BIO *bio;
        int r;

        if (len > PRIVATE_PEM_MAX_SIZE)
                return -EFBIG;
        bio = BIO_new_mem_buf(pem, (int) len);
        if (!bio)
                return -ENOMEM;
        pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
        BIO_free(bio);
        ERR_clear_error();
        if (!pkey)
                return -EBADMSG;
        r = signer_wrap(pkey, ret);
        if (r < 0)
                EVP_PKEY_free(pkey);
        return r;
}

int gw_signer_load_file(const char *path, struct gw_signer **ret)
{
        char *buf = NULL;
        size_t len = 0;
        int r;

        r = gw_read_file(path, PRIVATE_PEM_MAX_SIZE, &buf, &len);
        if (r < 0)
                return r;
        r = gw_signer_load_pem(buf, len, ret);
        OPENSSL_cleanse(buf, len);
        free(buf);
        return r;
}

struct gw_signer *gw_signer_free(struct gw_signer *s)
{
        if (!s)
                return NULL;
        EVP_PKEY_free(s->pkey);
        free(s);
        return NULL;
}

const char *gw_signer_keyid(const struct gw_signer *s)
{
        return s->keyid;
}

enum gw_key_type gw_signer_type(const struct gw_signer *s)
{
        return s->type;
}

static int bio_to_string(BIO *bio, char **ret)
{
        char *data = NULL, *s;
        long n;

        n = BIO_get_mem_data(bio, &data);
        if (n <= 0)
                return -EIO;
        s = malloc((size_t) n + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, data, (size_t) n);
        s[n] = '\0';
        *ret = s;
        return 0;
}

static int signer_pem(const struct gw_signer *s, bool private, char **ret)
{
        BIO *bio;
        int ok, r;

        bio = BIO_new(BIO_s_secmem());
        if (!bio)
                return -ENOMEM;
        if (private)
                ok = PEM_write_bio_PrivateKey(bio, s->pkey, NULL, NULL, 0, NULL, NULL);
        else
                ok = PEM_write_bio_PUBKEY(bio, s->pkey);
        r = ok == 1 ? bio_to_string(bio, ret) : -EIO;
        BIO_free(bio);
        ERR_clear_error();
        return r;
}

int gw_signer_private_pem(const struct gw_signer *s, char **ret)
{
        return signer_pem(s, true, ret);
}

int gw_signer_public_pem(const struct gw_signer *s, char **ret)
{
        return signer_pem(s, false, ret);
}

int gw_signer_sign(const struct gw_signer *s, const char *type, const void *body, size_t len,
                   uint8_t **ret, size_t *ret_len)
{
        EVP_MD_CTX *ctx = NULL;
        uint8_t *pae = NULL, *sig = NULL;
        size_t pae_len = 0, sig_len = 0;
        int r;

        r = gw_envelope_pae(type, body, len, &pae, &pae_len);
        if (r < 0)
                return r;
        ctx = EVP_MD_CTX_new();
        if (!ctx) {
                r = -ENOMEM;
                goto out;
        }
        /* Ed25519 signs the PAE itself (no digest); P-256 signs its SHA-256, DER-encoded. */
        if (EVP_DigestSignInit(ctx, NULL, s->type == GW_KEY_P256 ? EVP_sha256() : NULL, NULL,
                               s->pkey) != 1 ||
            EVP_DigestSign(ctx, NULL, &sig_len, pae, pae_len) != 1) {
                r = -EIO;
                goto out;
        }
        sig = malloc(sig_len);
        if (!sig) {
                r = -ENOMEM;
                goto out;
        }
        if (EVP_DigestSign(ctx, sig, &sig_len, pae, pae_len) != 1) {
                r = -EIO;
                goto out;
        }
        *ret = sig;
        *ret_len = sig_len;
        sig = NULL;
        r = 0;
out:
        ERR_clear_error();
        free(sig);
        free(pae);
        EVP_MD_CTX_free(ctx);
        return r;
}

/* Does the part after the last "---" line look like a signatures document (a mapping with a
 * top-level "signatures" key)? Anything else means the file is still a bare body. */
static bool looks_like_sigs(const char *buf, size_t len)
{
        struct ynode *root = NULL;
        bool yes;

        if (gw_ytree_load(buf, len, GW_ERR_ENVELOPE_MALFORMED, &root, NULL) < 0)
                return false;
        yes = gw_ynode_get(root, "signatures") != NULL;
        gw_ytree_free(root);
        return yes;
}

/* The payload type for a body: from its kind, after the body passed its schema. */
static int body_type(const char *body, size_t len, const char **ret, struct gw_manifest_error *err)
{
        struct ynode *root = NULL;
        struct gw_manifest *m = NULL;
        struct gw_trust *t = NULL;
        const char *kind;
        int r;

        r = gw_ytree_load(body, len, GW_ERR_BODY_MALFORMED, &root, err);
        if (r < 0)
                return r;
        kind = gw_ytree_kind(root) ?: "";
        if (strcmp(kind, "gatewayd/manifest") == 0) {
                r = gw_manifest_from_tree(root, &m, err);
                *ret = GW_MANIFEST_PAYLOAD_TYPE;
        } else if (strcmp(kind, "gatewayd/keys") == 0) {
                r = gw_keys_from_tree(root, &t, err);
                *ret = GW_KEYS_PAYLOAD_TYPE;
        } else
                r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                     "kind: expected gatewayd/manifest or gatewayd/keys");
        gw_manifest_free(m);
        gw_trust_free(t);
        gw_ytree_free(root);
        return r;
}

int gw_document_type(const void *buf, size_t len, const char **ret, struct gw_manifest_error *err)
{
        struct ynode *root = NULL;
        size_t body_len = len, sigs_off;
        const char *kind;
        int r;

        if (len > GW_MANIFEST_MAX_SIZE_DEFAULT)
                return gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                        "%zu bytes, more than the %zu allowed", len,
                                        GW_MANIFEST_MAX_SIZE_DEFAULT);
        if (gw_envelope_split(buf, len, &body_len, &sigs_off) < 0 ||
            !looks_like_sigs((const char *) buf + sigs_off, len - sigs_off))
                body_len = len;
        r = gw_ytree_load(buf, body_len, GW_ERR_BODY_MALFORMED, &root, err);
        if (r < 0)
                return r;
        kind = gw_ytree_kind(root) ?: "";
        if (strcmp(kind, "gatewayd/manifest") == 0)
                *ret = GW_MANIFEST_PAYLOAD_TYPE;
        else if (strcmp(kind, "gatewayd/keys") == 0)
                *ret = GW_KEYS_PAYLOAD_TYPE;
        else
                r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                     "kind: expected gatewayd/manifest or gatewayd/keys");
        gw_ytree_free(root);
        return r;
}

struct outbuf {
        char *p;
        size_t len, alloc;
};

static int out_append(struct outbuf *o, const void *data, size_t len)
{
        if (o->alloc - o->len < len + 1) {
                size_t na = (o->len + len + 1) * 2;
                char *p = realloc(o->p, na);

                if (!p)
                        return -ENOMEM;
                o->p = p;
                o->alloc = na;
        }
        memcpy(o->p + o->len, data, len);
        o->len += len;
        o->p[o->len] = '\0';
        return 0;
}

static int out_sig(struct outbuf *o, const char *keyid, const uint8_t *sig, size_t sig_len)
{
        char *b64 = NULL;
        int r;

        r = gw_base64_encode(sig, sig_len, &b64);
        if (r < 0)
                return r;
        r = out_append(o, "  - keyid: ", 11);
        if (r >= 0)
                r = out_append(o, keyid, 64);
        if (r >= 0)
                r = out_append(o, "\n    sig: ", 10);
        if (r >= 0)
                r = out_append(o, b64, strlen(b64));
        if (r >= 0)
                r = out_append(o, "\n", 1);
        free(b64);
        return r;
}

int gw_manifest_sign(const struct gw_signer *s, const void *buf, size_t len, size_t max_size,
                     char **ret, size_t *ret_len, struct gw_manifest_error *err)
{
        const char *p = buf, *type = NULL;
        struct gw_sigs sigs = {0};
        struct outbuf o = {0};
        uint8_t *sig = NULL;
        size_t body_len = len, sigs_off, sig_len = 0;
        bool replaced = false;
        int r;

        if (max_size == 0)
                max_size = GW_MANIFEST_MAX_SIZE_DEFAULT;
        if (len > max_size)
                return gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                        "%zu bytes, more than the %zu allowed", len, max_size);
        if (gw_envelope_split(buf, len, &body_len, &sigs_off) >= 0 &&
            looks_like_sigs(p + sigs_off, len - sigs_off)) {
                r = gw_sigs_parse(p + sigs_off, len - sigs_off, &sigs, err);
                if (r < 0)
                        return r;
        } else
                body_len = len;

        r = out_append(&o, p, body_len);
        if (r >= 0 && body_len > 0 && p[body_len - 1] != '\n')
                r = out_append(&o, "\n", 1);
        if (r < 0)
                goto oom;
        /* o now holds the exact body that is signed. */
        r = body_type(o.p, o.len, &type, err);
        if (r < 0)
                goto out;
        r = gw_signer_sign(s, type, o.p, o.len, &sig, &sig_len);
        if (r == -ENOMEM)
                goto oom;
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "signing failed");
                goto out;
        }

        r = out_append(&o, "---\nsignatures:\n", 16);
        for (size_t i = 0; r >= 0 && i < sigs.n; i++) {
                if (strcmp(sigs.v[i].keyid, s->keyid) == 0) {
                        if (!replaced)
                                r = out_sig(&o, s->keyid, sig, sig_len);
                        replaced = true;
                        continue;
                }
                r = out_sig(&o, sigs.v[i].keyid, sigs.v[i].sig, sigs.v[i].sig_len);
        }
        if (r >= 0 && !replaced)
                r = out_sig(&o, s->keyid, sig, sig_len);
        if (r < 0)
                goto oom;
        if (o.len > max_size) {
                r = gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                     "the signed manifest would be %zu bytes, more than %zu", o.len,
                                     max_size);
                goto out;
        }
        *ret = o.p;
        *ret_len = o.len;
        o.p = NULL;
        r = 0;
        goto out;
oom:
        r = gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
out:
        free(o.p);
        free(sig);
        gw_sigs_done(&sigs);
        return r;
}
