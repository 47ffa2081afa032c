/* Internal to manifests/: the bounded YAML tree, strict schema helpers, keys and signature
 * lists shared by the parse, verify, sign and keys code. Nothing here is public API. */
#pragma once

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/codec.h"
#include "gw/manifest.h"

/* ---- errors (envelope.c) ---- */

/* Fills err (may be NULL) with code and the formatted message; returns the negative errno
 * that goes with code (gw_manifest_errno). */
int gw_manifest_fail(struct gw_manifest_error *err, enum gw_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int gw_manifest_errno(enum gw_error code);

/* Reads a whole file of at most max bytes into a malloc'd, NUL-terminated buffer. -EFBIG
 * when larger, -errno otherwise. */
int gw_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* SHA-256 of data, 0 or -EIO. */
int gw_sha256(const void *data, size_t len, uint8_t ret[static 32]);

/* ---- bounded YAML tree (yaml.c) ---- */

enum ynode_type {
        YNODE_SCALAR,
        YNODE_SEQ,
        YNODE_MAP,
};

struct ynode {
        enum ynode_type type;
        unsigned line;
        /* scalar */
        char *value; /* NUL-terminated, no embedded NUL */
        size_t len;
        bool plain;
        /* sequence: items[0..n); mapping: keys at even, values at odd indexes, n = 2 * pairs */
        struct ynode **items;
        size_t n;
};

/* Parses exactly one YAML document from buf into a tree, refusing aliases, anchors, tags,
 * depth > GW_MANIFEST_YAML_MAX_DEPTH, scalars > GW_MANIFEST_YAML_MAX_SCALAR and more than
 * GW_MANIFEST_YAML_MAX_NODES nodes. Failures are reported with code (body-malformed for a
 * body, envelope-malformed for a signatures document). */
int gw_ytree_load(const void *buf, size_t len, enum gw_error code, struct ynode **ret,
                  struct gw_manifest_error *err);
struct ynode *gw_ytree_free(struct ynode *n);

#define GW_PATH_MAX 160

struct gw_field {
        const char *name;
        bool required;
};

/* path joins: "a" + "b" = "a.b", "" + "b" = "b", "a" + [3] = "a[3]". Truncates safely. */
void gw_path_key(char *dst, const char *path, const char *key);
void gw_path_index(char *dst, const char *path, size_t i);

/* n must be a mapping whose keys are distinct scalars from fields (NULL-name terminated),
 * with every required one present. schema-invalid otherwise. */
int gw_schema_map(const struct ynode *n, const char *path, const struct gw_field *fields,
                  struct gw_manifest_error *err);
/* A mapping's value for key, or NULL. */
const struct ynode *gw_ynode_get(const struct ynode *map, const char *key);

enum gw_charset {
        GW_CHARSET_PRINTABLE, /* no control characters (any UTF-8 above 0x7f allowed) */
        GW_CHARSET_NAME,      /* [A-Za-z0-9._-] */
        GW_CHARSET_TOKEN,     /* printable ASCII without spaces */
};

int gw_schema_string(const struct ynode *n, const char *path, size_t max, enum gw_charset cs,
                     char **ret, struct gw_manifest_error *err);
int gw_schema_u64(const struct ynode *n, const char *path, uint64_t min, uint64_t max,
                  uint64_t *ret, struct gw_manifest_error *err);
int gw_schema_bool(const struct ynode *n, const char *path, bool *ret,
                   struct gw_manifest_error *err);
int gw_schema_seq(const struct ynode *n, const char *path, size_t min, size_t max,
                  struct gw_manifest_error *err);
/* A list of strings, each checked like gw_schema_string. *ret is a malloc'd array. */
int gw_schema_strings(const struct ynode *n, const char *path, size_t min, size_t max,
                      size_t maxlen, enum gw_charset cs, char ***ret, size_t *ret_n,
                      struct gw_manifest_error *err);
/* The top-level "kind" scalar of a body tree, or NULL. */
const char *gw_ytree_kind(const struct ynode *root);

void gw_strv_free(char **v, size_t n);

/* ---- keys (keys.c) ---- */

struct gw_key {
        EVP_PKEY *pkey;
        enum gw_key_type type;
        char keyid[65];
};

struct gw_trust {
        unsigned threshold;
        uint64_t version;
        struct gw_key *keys;
        size_t n_keys;
};

/* Type and keyid of a public or private key; -EPROTONOSUPPORT unless Ed25519 or P-256. */
int gw_key_describe(EVP_PKEY *pkey, enum gw_key_type *ret_type, char ret_keyid[static 65]);
/* 1 when sig is a valid signature of msg by k, 0 when not. */
int gw_key_verify(const struct gw_key *k, const uint8_t *msg, size_t len, const uint8_t *sig,
                  size_t sig_len);
/* The trust root described by a gatewayd/keys body tree. */
int gw_keys_from_tree(const struct ynode *root, struct gw_trust **ret,
                      struct gw_manifest_error *err);

/* ---- signatures documents (verify.c) ---- */

struct gw_sig_entry {
        char keyid[65];
        uint8_t *sig;
        size_t sig_len;
};

struct gw_sigs {
        struct gw_sig_entry *v;
        size_t n;
};

/* Parses a signatures document ("signatures: [{keyid, sig}...]"); envelope-malformed. */
int gw_sigs_parse(const void *buf, size_t len, struct gw_sigs *ret, struct gw_manifest_error *err);
void gw_sigs_done(struct gw_sigs *s);
/* Counts the distinct keys of t with a valid signature over PAE(type, body). When
 * ret_signers is not NULL, it receives their keyids (malloc'd). */
int gw_sigs_count(const struct gw_trust *t, const char *type, const void *body, size_t len,
                  const struct gw_sigs *s, gw_manifest_report_fn report, void *userdata,
                  size_t *ret_count, char (**ret_signers)[65]);

/* ---- manifest body (parse.c) ---- */

int gw_manifest_from_tree(const struct ynode *root, struct gw_manifest **ret,
                          struct gw_manifest_error *err);

/* The sequence a manifest must beat because every key that signed it was trusted before the
 * last key rotation (see struct gw_manifest_state): *ret_bound says whether one applies. */
uint64_t gw_manifest_state_floor(const struct gw_manifest_state *s, const struct gw_manifest *m,
                                 bool *ret_bound);
