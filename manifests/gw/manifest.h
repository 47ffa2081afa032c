/* The manifest library: split the two-document envelope, check signatures against a trust
 * root, parse the signed body into plain C data, sign bodies, and load or rotate the keys.
 * The format and exactly what is signed are in docs/manifest.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gw/error.h"

struct gw_options;

#define GW_MANIFEST_MAX_SIZE_DEFAULT ((size_t) 1024 * 1024)
#define GW_MANIFEST_PAYLOAD_TYPE     "application/vnd.gatewayd.manifest+yaml"
#define GW_KEYS_PAYLOAD_TYPE         "application/vnd.gatewayd.keys+yaml"

/* Schema bounds (a manifest over any of them is schema-invalid). */
#define GW_MANIFEST_MAX_IMAGES   256
#define GW_MANIFEST_MAX_TARGETS  256
#define GW_MANIFEST_MAX_OPTIONS  64
#define GW_MANIFEST_MAX_HARDWARE 64
#define GW_MANIFEST_MAX_MIRRORS  16
#define GW_MANIFEST_MAX_KEYS     64
#define GW_MANIFEST_MAX_SIGS     64
#define GW_MANIFEST_ID_MAX       128
/* Nodes flashed at once when the policy does not say. */
#define GW_MANIFEST_PARALLEL_DEFAULT 8
/* YAML bounds (a body over any of them is body-malformed). */
#define GW_MANIFEST_YAML_MAX_DEPTH  16
#define GW_MANIFEST_YAML_MAX_SCALAR 4096
#define GW_MANIFEST_YAML_MAX_NODES  65536

/* Why a call failed: the stable code (printed as gw_error_to_string(code)) and a message
 * naming the field or check, e.g. "images[1].sha256: expected 64 hex digits". Every function
 * taking one fills it on failure only; it may be NULL. */
struct gw_manifest_error {
        enum gw_error code;
        char message[256];
};

/* ---- Public keys and trust roots ------------------------------------------------------ */

enum gw_key_type {
        GW_KEY_ED25519 = 1,
        GW_KEY_P256,
};

/* A set of public keys (Ed25519 or ECDSA P-256, each counted once), a threshold and a
 * version. Opaque; immutable once built. */
struct gw_trust;

/* An empty trust root with the given threshold (>= 1) and version. 0 or -EINVAL/-ENOMEM. */
int gw_trust_new(unsigned threshold, uint64_t version, struct gw_trust **ret);
struct gw_trust *gw_trust_free(struct gw_trust *t);
/* Adds a PEM SubjectPublicKeyInfo (len bytes, need not be NUL-terminated). A key already in
 * the set is not added twice (returns 0). -EBADMSG when the PEM does not parse,
 * -EPROTONOSUPPORT for any key type other than Ed25519 and P-256, -E2BIG past
 * GW_MANIFEST_MAX_KEYS, -ENOMEM. */
int gw_trust_add_key_pem(struct gw_trust *t, const void *pem, size_t len);
/* The same, reading a .pub file (at most 16 KiB). Also -errno from open/read. */
int gw_trust_add_key_file(struct gw_trust *t, const char *path);
/* Loads a provisioned trust root: a gatewayd/keys document in the two-document form. Its
 * signatures are NOT checked (the root is trusted because it was provisioned; the signature
 * document may be "signatures: []"), but it must parse. threshold <= number of keys.
 * Negative errno with err filled (envelope-malformed, body-malformed, schema-invalid, ...). */
int gw_trust_load_buffer(const void *buf, size_t len, size_t max_size, struct gw_trust **ret,
                         struct gw_manifest_error *err);
/* The same from a file; max_size 0 means GW_MANIFEST_MAX_SIZE_DEFAULT. */
int gw_trust_load_file(const char *path, size_t max_size, struct gw_trust **ret,
                       struct gw_manifest_error *err);
/* A key rotation: buf is a gatewayd/keys document that must be signed by a threshold of the
 * keys in current (else threshold-not-met) and by a threshold of its own keys, with version
 * exactly current's version + 1 (else keys-rotation-invalid). On success *ret is the new
 * root (the caller persists buf itself). */
int gw_trust_rotate(const struct gw_trust *current, const void *buf, size_t len, size_t max_size,
                    struct gw_trust **ret, struct gw_manifest_error *err);

unsigned gw_trust_threshold(const struct gw_trust *t);
uint64_t gw_trust_version(const struct gw_trust *t);
size_t gw_trust_key_count(const struct gw_trust *t);
/* The i-th key's keyid (64 lowercase hex digits) and type; NULL / 0 past the end. */
const char *gw_trust_keyid(const struct gw_trust *t, size_t i);
enum gw_key_type gw_trust_key_type(const struct gw_trust *t, size_t i);

/* keyid of a PEM SubjectPublicKeyInfo into ret (65 bytes with the NUL). 0 or -EBADMSG,
 * -EPROTONOSUPPORT. */
int gw_key_id_from_pem(const void *pem, size_t len, char ret[static 65]);

/* ---- The parsed manifest --------------------------------------------------------------- */

enum gw_target_kind {
        GW_TARGET_CLASS = 1, /* targets: { class: S }   -> targets[0] = S */
        GW_TARGET_NODE,      /* targets: { node: S }    -> targets[0] = S */
        GW_TARGET_NODES,     /* targets: { nodes: [...] } -> targets[0..n_targets) */
};

/* One "key: value" pair of an image's hardware map (e.g. chip-id: 0x413), values verbatim. */
struct gw_manifest_hw {
        char *key;
        char *value;
};

/* How the image travels, when its URL does not give the image itself. */
enum gw_compression {
        GW_COMPRESSION_NONE = 0,
        GW_COMPRESSION_ZSTD, /* one or more zstd frames of the image */
};

#define GW_IMAGE_NONCE_SIZE        12 /* AES-256-GCM's IV */
#define GW_IMAGE_KEY_SIZE          32 /* AES-256 */
#define GW_IMAGE_TAG_SIZE          16 /* AES-256-GCM's tag, after the ciphertext */
#define GW_IMAGE_WRAPPED_SIZE      (GW_IMAGE_KEY_SIZE + GW_IMAGE_TAG_SIZE)
#define GW_IMAGE_EPHEMERAL_MAX     256 /* DER SubjectPublicKeyInfo of an X25519 or P-256 key */
#define GW_MANIFEST_MAX_RECIPIENTS 64

/* What a URL gives: the bytes fetched, capped at size and checked against sha256 before
 * anything else reads them. */
struct gw_manifest_blob {
        uint64_t size;
        uint8_t sha256[32];
        bool has_nonce; /* encrypted images: the blob's AES-256-GCM IV */
        uint8_t nonce[GW_IMAGE_NONCE_SIZE];
};

/* The image's data key, wrapped for one gateway: an ephemeral key pair of the gateway key's
 * type (X25519 or P-256), ECDH with the gateway's public key, HKDF-SHA256 into a key that
 * encrypts the data key with AES-256-GCM (docs/manifest.md says exactly how). */
struct gw_manifest_recipient {
        char keyid[65]; /* SHA-256 of the gateway key's SubjectPublicKeyInfo DER, hex */
        uint8_t ephemeral[GW_IMAGE_EPHEMERAL_MAX]; /* the ephemeral public key, DER SPKI */
        size_t ephemeral_len;
        uint8_t wrapped[GW_IMAGE_WRAPPED_SIZE]; /* the data key's ciphertext and tag */
};

struct gw_manifest_image {
        char *name;    /* [A-Za-z0-9._-]{1,128}, unique within the manifest */
        char *version; /* verbatim, printable, <= 128 */
        enum gw_target_kind target_kind;
        char **targets; /* n_targets >= 1 */
        size_t n_targets;
        struct gw_manifest_hw *hardware; /* may be empty */
        size_t n_hardware;
        char *protocol;
        struct gw_options *options; /* never NULL; empty when the field is absent */
        uint64_t size;
        uint8_t sha256[32];
        char *url; /* verbatim; relative URLs are relative to the manifest's URL */
        char **mirrors;
        size_t n_mirrors;

        /* transfer: the URL gives transfer_blob, not the image: compressed (compression) and/or
         * encrypted (n_recipients > 0). size and sha256 above stay the image's own. */
        bool has_transfer;
        struct gw_manifest_blob transfer_blob;
        enum gw_compression compression;
        /* delta: a zstd patch against an older image (delta_base_sha256, delta_base_size): a
         * gateway whose store holds the base fetches delta_url instead of url. */
        bool has_delta;
        uint8_t delta_base_sha256[32];
        uint64_t delta_base_size;
        char *delta_url;
        struct gw_manifest_blob delta_blob;
        /* encryption (aes-256-gcm): every blob the image travels as is encrypted with one data
         * key, wrapped for each gateway that may read it. */
        struct gw_manifest_recipient *recipients;
        size_t n_recipients;
};

struct gw_manifest_policy {
        bool atomic;          /* default false */
        unsigned parallel;    /* 1..1024, default GW_MANIFEST_PARALLEL_DEFAULT */
        unsigned canary;      /* 0..1024, default 0 */
        bool allow_downgrade; /* default false */
};

/* Plain data; the daemon reads it directly. Freed with gw_manifest_free(). */
struct gw_manifest {
        unsigned format; /* 1 */
        char *id;        /* [A-Za-z0-9._-]{1,128} */
        uint64_t sequence;
        time_t expires;
        char **gateway_hardware; /* empty: any gateway */
        size_t n_gateway_hardware;
        struct gw_manifest_policy policy;
        struct gw_manifest_image *images; /* n_images >= 1 */
        size_t n_images;
        /* SHA-256 of the whole manifest bytes as received (body and signatures): the daemon
         * uses it to recognise a deployment it already did. */
        uint8_t sha256[32];
        /* keyids (64 hex digits) of the keys whose signatures were valid. */
        char (*signers)[65];
        size_t n_signers;
};

struct gw_manifest *gw_manifest_free(struct gw_manifest *m);

/* Parses a body (the signed document alone, no signatures) without checking anything but
 * YAML and schema: for tools that show or edit unsigned manifests. sha256 and signers are
 * left zero. Negative errno with err (body-malformed, schema-invalid). */
int gw_manifest_parse_body(const void *body, size_t len, struct gw_manifest **ret,
                           struct gw_manifest_error *err);

/* ---- Verification ------------------------------------------------------------------------ */

/* What a gateway persists between deployments (the daemon keeps it in its state dir; see
 * gw_manifest_state_load/save). */
struct gw_manifest_key_floor {
        char keyid[65];
        uint64_t floor; /* the last sequence accepted while this key was trusted, at a rotation */
};

struct gw_manifest_state {
        bool has_sequence;
        uint64_t sequence;  /* of the last accepted manifest */
        uint8_t sha256[32]; /* its whole-file hash: equal sequence is a retry only if equal */
        time_t latest_trusted_time; /* never moves backwards; 0 = none yet */
        /* Keys that were trusted before a key rotation reset the sequence. A manifest that only
         * such keys signed may have been signed before that rotation: it is accepted only with
         * a sequence above the lowest floor of its signers (replay protection across
         * rotations). At most GW_MANIFEST_MAX_KEYS. */
        struct gw_manifest_key_floor floors[GW_MANIFEST_MAX_KEYS];
        size_t n_floors;
};

/* Called once per check, in order, as it is decided: check is a short name ("size",
 * "envelope", "signature", "threshold", "body", "expiry", "sequence", "gateway-hardware"),
 * code GW_ERR_NONE when it passed (for "signature", per signature, the code is
 * GW_ERR_NONE for a counted one and GW_ERR_THRESHOLD_NOT_MET for one that did not count),
 * detail a human sentence. Must not call back into the library with the same objects. */
typedef void (*gw_manifest_report_fn)(void *userdata, const char *check, enum gw_error code,
                                      const char *detail);

struct gw_manifest_verify_params {
        size_t max_size; /* 0: GW_MANIFEST_MAX_SIZE_DEFAULT */
        /* Wall-clock time now (time(NULL)). A manifest is expired when
         * max(now, state->latest_trusted_time) >= expires. */
        time_t now;
        /* NULL: no sequence check and latest-trusted-time unknown. */
        const struct gw_manifest_state *state;
        /* This gateway's hardware id; NULL: not checked. */
        const char *gateway_hardware;
        gw_manifest_report_fn report; /* may be NULL */
        void *userdata;
};

/* The daemon's one entry point. Checks, in this order, each failing with its own code:
 * size cap (manifest-too-large), envelope split on the last "---" line and the signatures
 * document (envelope-malformed), signatures over PAE(GW_MANIFEST_PAYLOAD_TYPE, body) by at
 * least threshold distinct keys of trust (threshold-not-met; unknown keyids are ignored, a
 * key counts once), then and only then the body's YAML (body-malformed) and schema
 * (schema-invalid), expiry (expired), sequence against state (sequence-rollback: lower, or
 * equal with a different hash), gateway hardware (gateway-incompatible). Does not block
 * beyond CPU work. On success *ret owns a new manifest; on failure returns a negative errno
 * (-EFBIG, -EBADMSG, -EKEYREJECTED, -EKEYEXPIRED, -ESTALE, -ENODEV, -ENOMEM) and fills err. */
int gw_manifest_verify(const struct gw_trust *trust, const struct gw_manifest_verify_params *p,
                       const void *buf, size_t len, struct gw_manifest **ret,
                       struct gw_manifest_error *err);

/* The state a gateway persists after it accepted m at time now: sequence and hash of m,
 * latest trusted time moved forward only. */
void gw_manifest_state_advance(struct gw_manifest_state *s, const struct gw_manifest *m,
                               time_t now);
/* When a key rotation away from old_root is accepted (gw_trust_rotate), before the new root is
 * persisted: records, for every key of old_root, the last accepted sequence as its floor (the
 * higher of that and an earlier floor), drops the floors of keys old_root no longer has,
 * forgets the last sequence and its hash, and keeps the latest trusted time, which never moves
 * backwards. The new root then starts a sequence of its own (fast-forward recovery: a huge
 * sequence signed with compromised old keys no longer blocks manifests its new keys sign),
 * while a manifest signed only by keys carried over from old_root still has to beat their
 * floor, so none signed before the rotation can be replayed. old_root NULL: only the reset
 * (a rotation whose floors were already recorded). The caller saves s. */
void gw_manifest_state_rotated(struct gw_manifest_state *s, const struct gw_trust *old_root);
/* Reads DIR/manifest-state. A missing file is an empty state (returns 0). -EBADMSG when it
 * does not parse, -errno otherwise. */
int gw_manifest_state_load(const char *dir, struct gw_manifest_state *ret);
/* Writes DIR/manifest-state atomically (temp file, fsync, rename, fsync of DIR). */
int gw_manifest_state_save(const char *dir, const struct gw_manifest_state *s);

/* ---- Per-node checks (after identify) ---------------------------------------------------- */

/* Orders two version strings: < 0 when a is older than b, 0 when they are the same version,
 * > 0 when a is newer. Semver-like (docs/manifest.md, "Version order"): an optional leading
 * "v" before a digit is dropped; build metadata after '+' is ignored; the release part (before
 * the first '-') is dot-separated components, a missing one counting as 0 (1.4 == 1.4.0);
 * within a component, runs of digits compare numerically and other runs bytewise, digits
 * before letters ("rc2" < "rc10"); a pre-release ("-rc1") sorts before its release, and
 * pre-releases compare component by component, the shorter list first. NULL sorts first.
 * A total order; pure function. */
int gw_version_compare(const char *a, const char *b);

/* Anti-downgrade for one node: -ESTALE with err code downgrade when img->version is older
 * than installed_version (gw_version_compare) and !m->policy.allow_downgrade. 0 when it is
 * the same or newer, when the policy allows downgrades, or when installed_version is NULL or
 * empty (the node did not say what it runs). -EINVAL when m or img is NULL. */
int gw_manifest_check_downgrade(const struct gw_manifest *m, const struct gw_manifest_image *img,
                                const char *installed_version, struct gw_manifest_error *err);

/* Per-node hardware: every key of img->hardware must be present in reported (what the
 * protocol's identify() said; may be NULL = nothing reported) with an equal value. Values
 * that both parse as unsigned integers (decimal or 0x hex) compare by value ("0x413" equals
 * "1043"), others byte for byte. Keys reported but not in img->hardware are ignored.
 * 0, or -ENODEV with err code node-incompatible naming the key; -EINVAL when img is NULL. */
int gw_manifest_check_hardware(const struct gw_manifest_image *img,
                               const struct gw_options *reported, struct gw_manifest_error *err);

/* ---- Envelope and signing --------------------------------------------------------------- */

/* Splits buf on the last line that is exactly "---": *ret_body_len = bytes before that
 * line, *ret_sigs = offset of the signatures document after it. -EBADMSG when there is no
 * such line. Pure arithmetic, no allocation. */
int gw_envelope_split(const void *buf, size_t len, size_t *ret_body_len, size_t *ret_sigs);
/* The keyids a signatures document (the part after the "---" line) lists, in order, without
 * checking any signature: for tools that show a manifest. *ret is malloc'd. Negative errno
 * with err (envelope-malformed). */
int gw_envelope_keyids(const void *sigs, size_t len, char (**ret)[65], size_t *ret_n,
                       struct gw_manifest_error *err);
/* DSSE pre-authentication encoding: "DSSEv1 <len(type)> <type> <len(body)> <body>".
 * *ret is malloc'd. 0 or -ENOMEM/-EOVERFLOW. */
int gw_envelope_pae(const char *type, const void *body, size_t len, uint8_t **ret, size_t *ret_len);

/* A private key for signing (PEM PKCS#8, unencrypted). Opaque. */
struct gw_signer;

int gw_signer_generate(enum gw_key_type type, struct gw_signer **ret);
/* -EBADMSG when it does not parse (encrypted keys are refused, never prompted for),
 * -EPROTONOSUPPORT for other key types. */
int gw_signer_load_pem(const void *pem, size_t len, struct gw_signer **ret);
int gw_signer_load_file(const char *path, struct gw_signer **ret);
struct gw_signer *gw_signer_free(struct gw_signer *s);
const char *gw_signer_keyid(const struct gw_signer *s);
enum gw_key_type gw_signer_type(const struct gw_signer *s);
/* PEM text of the private key (PKCS#8) and of the public key (SubjectPublicKeyInfo), each
 * malloc'd and NUL-terminated; the caller frees (and should wipe the private one). */
int gw_signer_private_pem(const struct gw_signer *s, char **ret);
int gw_signer_public_pem(const struct gw_signer *s, char **ret);
/* The raw signature over PAE(type, body): 64 bytes for Ed25519, DER for P-256. *ret is
 * malloc'd. */
int gw_signer_sign(const struct gw_signer *s, const char *type, const void *body, size_t len,
                   uint8_t **ret, size_t *ret_len);

/* What a document is, from its body's top-level "kind": *ret = GW_MANIFEST_PAYLOAD_TYPE or
 * GW_KEYS_PAYLOAD_TYPE. buf is a bare body or a whole two-document file (at most
 * GW_MANIFEST_MAX_SIZE_DEFAULT bytes); nothing else of the body is checked. For tools only:
 * a verifier never lets the data choose the type it is verified as. Negative errno with err
 * (manifest-too-large, body-malformed, schema-invalid). */
int gw_document_type(const void *buf, size_t len, const char **ret, struct gw_manifest_error *err);
/* Adds s's signature to a manifest or keys document (payload type from its "kind"), replacing
 * any earlier signature with the same keyid and keeping the others in order. buf is either
 * the two-document form, or a bare body (no "---" line, or a last "---" line not followed by
 * a signatures document), which is then the whole body ("\n" appended when it lacks one).
 * The body must parse. *ret is malloc'd: body bytes unchanged + "---\n" + the signatures
 * document. Negative errno with err. */
int gw_manifest_sign(const struct gw_signer *s, const void *buf, size_t len, size_t max_size,
                     char **ret, size_t *ret_len, struct gw_manifest_error *err);

/* ---- Encrypted images -------------------------------------------------------------------- */

/* A gateway's own key pair (X25519 or P-256), which encrypted images are wrapped for. */
struct gw_gateway_key;

/* Loads a PEM private key file (at most 16 KiB). 0, -EBADMSG (not a PEM private key),
 * -EPROTONOSUPPORT (neither X25519 nor P-256), -errno from reading it. */
int gw_gateway_key_load(const char *path, struct gw_gateway_key **ret);
struct gw_gateway_key *gw_gateway_key_free(struct gw_gateway_key *k);
/* Its keyid: SHA-256 of its SubjectPublicKeyInfo DER, 64 lowercase hex digits. */
const char *gw_gateway_key_id(const struct gw_gateway_key *k);
/* A new gateway key pair, X25519 (or P-256), as PEM: PKCS#8 private and SPKI public, both
 * malloc'd, and its keyid. 0, -EIO, -ENOMEM. */
int gw_gateway_key_generate(bool p256, char **ret_private_pem, char **ret_public_pem,
                            char ret_keyid[static 65]);

/* A fresh random data key, and a fresh random nonce for one blob. 0 or -EIO. */
int gw_image_key_new(uint8_t ret[static GW_IMAGE_KEY_SIZE]);
int gw_image_nonce_new(uint8_t ret[static GW_IMAGE_NONCE_SIZE]);
/* Wraps key for the gateway whose public key is pub_pem (PEM SubjectPublicKeyInfo, X25519 or
 * P-256): *ret is the recipient entry. 0, -EBADMSG, -EPROTONOSUPPORT, -EIO. */
int gw_image_key_wrap(const void *pub_pem, size_t len, const uint8_t key[static GW_IMAGE_KEY_SIZE],
                      struct gw_manifest_recipient *ret);
/* The data key of an encrypted image, unwrapped with the gateway's key k (NULL: none
 * configured). decrypt-failed with a message naming the reason: no key, no recipient entry
 * for k, a wrapped key that does not authenticate. */
int gw_image_key_unwrap(const struct gw_gateway_key *k, const struct gw_manifest_image *img,
                        uint8_t ret[static GW_IMAGE_KEY_SIZE], struct gw_manifest_error *err);
