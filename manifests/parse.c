/* The gatewayd/manifest body: a strict schema over the bounded YAML tree, into the plain
 * structs of manifests/gw/manifest.h. Unknown, missing, duplicate and mistyped fields are
 * refused with the path of the field. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw/options.h"
#include "manifest-internal.h"

#define NAME_MAX_LEN     GW_MANIFEST_ID_MAX
#define TOKEN_MAX_LEN    128
#define HW_KEY_MAX_LEN   64
#define HW_VALUE_MAX_LEN 256
#define OPT_KEY_MAX_LEN  64
#define URL_MAX_LEN      GW_MANIFEST_YAML_MAX_SCALAR

static void image_done(struct gw_manifest_image *img)
{
        free(img->name);
        free(img->version);
        gw_strv_free(img->targets, img->n_targets);
        for (size_t i = 0; i < img->n_hardware; i++) {
                free(img->hardware[i].key);
                free(img->hardware[i].value);
        }
        free(img->hardware);
        free(img->protocol);
        gw_options_free(img->options);
        free(img->url);
        gw_strv_free(img->mirrors, img->n_mirrors);
        free(img->delta_url);
        free(img->recipients);
}

struct gw_manifest *gw_manifest_free(struct gw_manifest *m)
{
        if (!m)
                return NULL;
        free(m->id);
        gw_strv_free(m->gateway_hardware, m->n_gateway_hardware);
        for (size_t i = 0; i < m->n_images; i++)
                image_done(&m->images[i]);
        free(m->images);
        free(m->signers);
        free(m);
        return NULL;
}

static int digits(const char *s, size_t n, int *ret)
{
        int v = 0;

        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                v = v * 10 + (s[i] - '0');
        }
        *ret = v;
        return 0;
}

/* RFC 3339 in UTC only: YYYY-MM-DDTHH:MM:SS[.fraction]Z; the fraction is dropped. */
static int parse_time(const char *s, time_t *ret)
{
        static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        struct tm tm = {0};
        int year, mon, day, hour, min, sec;
        size_t len = strlen(s), i = 19;
        time_t t;

        if (len < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
                return -EINVAL;
        if (digits(s, 4, &year) < 0 || digits(s + 5, 2, &mon) < 0 || digits(s + 8, 2, &day) < 0 ||
            digits(s + 11, 2, &hour) < 0 || digits(s + 14, 2, &min) < 0 ||
            digits(s + 17, 2, &sec) < 0)
                return -EINVAL;
        if (s[i] == '.') {
                i++;
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                while (s[i] >= '0' && s[i] <= '9')
                        i++;
        }
        if (s[i] != 'Z' || i + 1 != len)
                return -EINVAL;
        if (year < 1970 || mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] || hour > 23 ||
            min > 59 || sec > 60)
                return -EINVAL;
        if (mon == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
                return -EINVAL;
        tm.tm_year = year - 1900;
        tm.tm_mon = mon - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        t = timegm(&tm);
        if (t == (time_t) -1)
                return -EINVAL;
        *ret = t;
        return 0;
}

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static int parse_sha256(const struct ynode *n, const char *path, uint8_t ret[static 32],
                        struct gw_manifest_error *err)
{
        uint8_t v[32];

        if (n->type != YNODE_SCALAR || n->len != 64)
                goto bad;
        for (size_t i = 0; i < 32; i++) {
                int hi = hexval(n->value[2 * i]), lo = hexval(n->value[2 * i + 1]);

                if (hi < 0 || lo < 0)
                        goto bad;
                v[i] = (uint8_t) (hi << 4 | lo);
        }
        memcpy(ret, v, 32);
        return 0;
bad:
        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s: expected 64 hex digits (line %u)",
                                path, n->line);
}

/* A mapping of distinct scalar keys to scalar values, at most max pairs. */
static int check_flat_map(const struct ynode *n, const char *path, size_t max, size_t key_max,
                          struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];

        if (n->type != YNODE_MAP)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected a mapping (line %u)", path, n->line);
        if (n->n / 2 > max)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: more than %zu entries (line %u)", path, max, n->line);
        for (size_t i = 0; i < n->n; i += 2) {
                const struct ynode *k = n->items[i];
                char *tmp = NULL;
                int r;

                r = gw_schema_string(k, path, key_max, GW_CHARSET_TOKEN, &tmp, err);
                if (r < 0)
                        return r;
                free(tmp);
                gw_path_key(sub, path, k->value);
                for (size_t j = 0; j < i; j += 2)
                        if (strcmp(n->items[j]->value, k->value) == 0)
                                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                        "%s: duplicate field (line %u)", sub,
                                                        k->line);
                if (n->items[i + 1]->type != YNODE_SCALAR)
                        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                "%s: expected a scalar (line %u)", sub,
                                                n->items[i + 1]->line);
        }
        return 0;
}

static int parse_hardware(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                          struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];
        int r;

        r = check_flat_map(n, path, GW_MANIFEST_MAX_HARDWARE, HW_KEY_MAX_LEN, err);
        if (r < 0)
                return r;
        img->hardware = calloc(n->n / 2 + 1, sizeof(*img->hardware));
        if (!img->hardware)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        for (size_t i = 0; i < n->n; i += 2) {
                struct gw_manifest_hw *hw = &img->hardware[img->n_hardware];

                gw_path_key(sub, path, n->items[i]->value);
                r = gw_schema_string(n->items[i + 1], sub, HW_VALUE_MAX_LEN, GW_CHARSET_PRINTABLE,
                                     &hw->value, err);
                if (r < 0)
                        return r;
                hw->key = strdup(n->items[i]->value);
                img->n_hardware++;
                if (!hw->key)
                        return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        }
        return 0;
}

static int parse_options(const struct ynode *n, const char *path, struct gw_options *o,
                         struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];
        int r;

        r = check_flat_map(n, path, GW_MANIFEST_MAX_OPTIONS, OPT_KEY_MAX_LEN, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n->n; i += 2) {
                char *value = NULL;

                gw_path_key(sub, path, n->items[i]->value);
                r = gw_schema_string(n->items[i + 1], sub, GW_MANIFEST_YAML_MAX_SCALAR,
                                     GW_CHARSET_PRINTABLE, &value, err);
                if (r < 0)
                        return r;
                r = gw_options_set(o, n->items[i]->value, value);
                free(value);
                if (r < 0)
                        return gw_manifest_fail(
                            err, r == -ENOMEM ? GW_ERR_INTERNAL : GW_ERR_SCHEMA_INVALID,
                            "%s: not accepted as an option", sub);
        }
        return 0;
}

static int parse_targets(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                         struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"class", false}, {"node", false}, {"nodes", false}, {NULL, false}};
        char sub[GW_PATH_MAX];
        const struct ynode *v;
        int r;

        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;
        if (n->n != 2)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected exactly one of class, node, nodes (line %u)",
                                        path, n->line);
        v = n->items[1];
        gw_path_key(sub, path, n->items[0]->value);
        if (strcmp(n->items[0]->value, "nodes") == 0) {
                img->target_kind = GW_TARGET_NODES;
                return gw_schema_strings(v, sub, 1, GW_MANIFEST_MAX_TARGETS, TOKEN_MAX_LEN,
                                         GW_CHARSET_TOKEN, &img->targets, &img->n_targets, err);
        }
        img->target_kind =
            strcmp(n->items[0]->value, "class") == 0 ? GW_TARGET_CLASS : GW_TARGET_NODE;
        img->targets = calloc(2, sizeof(*img->targets));
        if (!img->targets)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        r = gw_schema_string(v, sub, TOKEN_MAX_LEN, GW_CHARSET_TOKEN, &img->targets[0], err);
        if (r < 0)
                return r;
        img->n_targets = 1;
        return 0;
}

/* Exactly len bytes of strict base64 into ret. */
static int parse_base64(const struct ynode *n, const char *path, uint8_t *ret, size_t len,
                        struct gw_manifest_error *err)
{
        uint8_t *v = NULL;
        size_t vlen = 0;

        if (n->type != YNODE_SCALAR || gw_base64_decode(n->value, n->len, &v, &vlen) < 0 ||
            vlen != len) {
                free(v);
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected base64 of %zu bytes (line %u)", path, len,
                                        n->line);
        }
        memcpy(ret, v, len);
        free(v);
        return 0;
}

/* size, sha256 and (for encrypted images) nonce of a blob, in map n. */
static int parse_blob(const struct ynode *n, const char *path, struct gw_manifest_blob *b,
                      struct gw_manifest_error *err)
{
        char sub[GW_PATH_MAX];
        const struct ynode *v;
        int r;

        gw_path_key(sub, path, "size");
        r = gw_schema_u64(gw_ynode_get(n, "size"), sub, 1, UINT64_MAX, &b->size, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "sha256");
        r = parse_sha256(gw_ynode_get(n, "sha256"), sub, b->sha256, err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "nonce");
        if (v) {
                gw_path_key(sub, path, "nonce");
                r = parse_base64(v, sub, b->nonce, GW_IMAGE_NONCE_SIZE, err);
                if (r < 0)
                        return r;
                b->has_nonce = true;
        }
        return 0;
}

static int parse_transfer(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                          struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"size", true},   {"sha256", true}, {"compression", false},
            {"nonce", false}, {NULL, false},
        };
        char sub[GW_PATH_MAX];
        const struct ynode *v;
        int r;

        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;
        r = parse_blob(n, path, &img->transfer_blob, err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "compression");
        if (v) {
                gw_path_key(sub, path, "compression");
                if (v->type != YNODE_SCALAR || strcmp(v->value, "zstd") != 0)
                        return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                "%s: expected zstd (line %u)", sub, v->line);
                img->compression = GW_COMPRESSION_ZSTD;
        }
        img->has_transfer = true;
        return 0;
}

static int parse_delta(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                       struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"base-sha256", true}, {"base-size", true}, {"url", true}, {"size", true},
            {"sha256", true},      {"nonce", false},    {NULL, false},
        };
        char sub[GW_PATH_MAX];
        int r;

        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "base-sha256");
        r = parse_sha256(gw_ynode_get(n, "base-sha256"), sub, img->delta_base_sha256, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "base-size");
        r = gw_schema_u64(gw_ynode_get(n, "base-size"), sub, 1, UINT64_MAX, &img->delta_base_size,
                          err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "url");
        r = gw_schema_string(gw_ynode_get(n, "url"), sub, URL_MAX_LEN, GW_CHARSET_TOKEN,
                             &img->delta_url, err);
        if (r < 0)
                return r;
        r = parse_blob(n, path, &img->delta_blob, err);
        if (r < 0)
                return r;
        img->has_delta = true;
        return 0;
}

static int parse_recipient(const struct ynode *n, const char *path,
                           struct gw_manifest_recipient *rc, struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"keyid", true},
            {"ephemeral", true},
            {"wrapped-key", true},
            {NULL, false},
        };
        char sub[GW_PATH_MAX];
        const struct ynode *v;
        uint8_t *der = NULL;
        size_t der_len = 0;
        int r;

        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "keyid");
        v = gw_ynode_get(n, "keyid");
        if (v->type != YNODE_SCALAR || v->len != 64 || strspn(v->value, "0123456789abcdef") != 64)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected 64 lowercase hex digits (line %u)", sub,
                                        v->line);
        memcpy(rc->keyid, v->value, 65);
        gw_path_key(sub, path, "ephemeral");
        v = gw_ynode_get(n, "ephemeral");
        if (v->type != YNODE_SCALAR || gw_base64_decode(v->value, v->len, &der, &der_len) < 0 ||
            der_len == 0 || der_len > GW_IMAGE_EPHEMERAL_MAX) {
                free(der);
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected base64 of a public key (DER, at most %d "
                                        "bytes) (line %u)",
                                        sub, GW_IMAGE_EPHEMERAL_MAX, v->line);
        }
        memcpy(rc->ephemeral, der, der_len);
        rc->ephemeral_len = der_len;
        free(der);
        gw_path_key(sub, path, "wrapped-key");
        return parse_base64(gw_ynode_get(n, "wrapped-key"), sub, rc->wrapped, GW_IMAGE_WRAPPED_SIZE,
                            err);
}

static int parse_encryption(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                            struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"cipher", true},
            {"recipients", true},
            {NULL, false},
        };
        char sub[GW_PATH_MAX];
        const struct ynode *v, *list;
        int r;

        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "cipher");
        v = gw_ynode_get(n, "cipher");
        if (v->type != YNODE_SCALAR || strcmp(v->value, "aes-256-gcm") != 0)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: expected aes-256-gcm (line %u)", sub, v->line);
        gw_path_key(sub, path, "recipients");
        list = gw_ynode_get(n, "recipients");
        r = gw_schema_seq(list, sub, 1, GW_MANIFEST_MAX_RECIPIENTS, err);
        if (r < 0)
                return r;
        img->recipients = calloc(list->n, sizeof(*img->recipients));
        if (!img->recipients)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        for (size_t i = 0; i < list->n; i++) {
                char item[GW_PATH_MAX];

                gw_path_index(item, sub, i);
                r = parse_recipient(list->items[i], item, &img->recipients[i], err);
                if (r < 0)
                        return r;
                img->n_recipients = i + 1;
        }
        return 0;
}

/* The travel fields together: encryption needs a transfer, and every blob its nonce; a
 * transfer must change something; a delta's base is not the image itself. */
static int check_travel(const char *path, const struct gw_manifest_image *img,
                        struct gw_manifest_error *err)
{
        bool enc = img->n_recipients > 0;

        if (enc && !img->has_transfer)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: encryption needs transfer (its size, sha256 and "
                                        "nonce)",
                                        path);
        if (img->has_transfer && img->transfer_blob.has_nonce != enc)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s.transfer: %s", path,
                                        enc ? "an encrypted image needs a nonce"
                                            : "a nonce without encryption");
        if (img->has_delta && img->delta_blob.has_nonce != enc)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID, "%s.delta: %s", path,
                                        enc ? "an encrypted image needs a nonce"
                                            : "a nonce without encryption");
        if (img->has_transfer && !enc && img->compression == GW_COMPRESSION_NONE)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s.transfer: neither compressed nor encrypted", path);
        if (enc && img->has_transfer && img->has_delta &&
            memcmp(img->transfer_blob.nonce, img->delta_blob.nonce, GW_IMAGE_NONCE_SIZE) == 0)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s: transfer and delta share a nonce (GCM forbids it)",
                                        path);
        if (img->has_delta && memcmp(img->delta_base_sha256, img->sha256, 32) == 0)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "%s.delta: the base is the image itself", path);
        for (size_t i = 0; i < img->n_recipients; i++)
                for (size_t j = 0; j < i; j++)
                        if (strcmp(img->recipients[i].keyid, img->recipients[j].keyid) == 0)
                                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                        "%s.encryption.recipients[%zu]: keyid "
                                                        "listed twice",
                                                        path, i);
        return 0;
}

static int parse_image(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                       struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"name", true},        {"version", true},  {"targets", true},   {"hardware", false},
            {"protocol", true},    {"options", false}, {"size", true},      {"sha256", true},
            {"url", true},         {"mirrors", false}, {"transfer", false}, {"delta", false},
            {"encryption", false}, {NULL, false},
        };
        /* How the image travels, each section optional; check_travel() weighs them together. */
        static const struct {
                const char *key;
                int (*parse)(const struct ynode *n, const char *path, struct gw_manifest_image *img,
                             struct gw_manifest_error *err);
        } travel[] = {
            {"transfer", parse_transfer},
            {"delta", parse_delta},
            {"encryption", parse_encryption},
        };
        char sub[GW_PATH_MAX];
        const struct ynode *v;
        int r;

        img->options = gw_options_new();
        if (!img->options)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        r = gw_schema_map(n, path, fields, err);
        if (r < 0)
                return r;

        gw_path_key(sub, path, "name");
        r = gw_schema_string(gw_ynode_get(n, "name"), sub, NAME_MAX_LEN, GW_CHARSET_NAME,
                             &img->name, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "version");
        r = gw_schema_string(gw_ynode_get(n, "version"), sub, TOKEN_MAX_LEN, GW_CHARSET_TOKEN,
                             &img->version, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "targets");
        r = parse_targets(gw_ynode_get(n, "targets"), sub, img, err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "hardware");
        if (v) {
                gw_path_key(sub, path, "hardware");
                r = parse_hardware(v, sub, img, err);
                if (r < 0)
                        return r;
        }
        gw_path_key(sub, path, "protocol");
        r = gw_schema_string(gw_ynode_get(n, "protocol"), sub, TOKEN_MAX_LEN, GW_CHARSET_TOKEN,
                             &img->protocol, err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "options");
        if (v) {
                gw_path_key(sub, path, "options");
                r = parse_options(v, sub, img->options, err);
                if (r < 0)
                        return r;
        }
        gw_path_key(sub, path, "size");
        r = gw_schema_u64(gw_ynode_get(n, "size"), sub, 1, UINT64_MAX, &img->size, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "sha256");
        r = parse_sha256(gw_ynode_get(n, "sha256"), sub, img->sha256, err);
        if (r < 0)
                return r;
        gw_path_key(sub, path, "url");
        r = gw_schema_string(gw_ynode_get(n, "url"), sub, URL_MAX_LEN, GW_CHARSET_TOKEN, &img->url,
                             err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "mirrors");
        if (v) {
                gw_path_key(sub, path, "mirrors");
                r = gw_schema_strings(v, sub, 0, GW_MANIFEST_MAX_MIRRORS, URL_MAX_LEN,
                                      GW_CHARSET_TOKEN, &img->mirrors, &img->n_mirrors, err);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < sizeof(travel) / sizeof(travel[0]); i++) {
                v = gw_ynode_get(n, travel[i].key);
                if (!v)
                        continue;
                gw_path_key(sub, path, travel[i].key);
                r = travel[i].parse(v, sub, img, err);
                if (r < 0)
                        return r;
        }
        return check_travel(path, img, err);
}

static int parse_policy(const struct ynode *n, struct gw_manifest_policy *p,
                        struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"atomic", false},          {"parallel", false}, {"canary", false},
            {"allow-downgrade", false}, {NULL, false},
        };
        const struct ynode *v;
        uint64_t u;
        int r;

        r = gw_schema_map(n, "policy", fields, err);
        if (r < 0)
                return r;
        v = gw_ynode_get(n, "atomic");
        if (v) {
                r = gw_schema_bool(v, "policy.atomic", &p->atomic, err);
                if (r < 0)
                        return r;
        }
        v = gw_ynode_get(n, "parallel");
        if (v) {
                r = gw_schema_u64(v, "policy.parallel", 1, 1024, &u, err);
                if (r < 0)
                        return r;
                p->parallel = (unsigned) u;
        }
        v = gw_ynode_get(n, "canary");
        if (v) {
                r = gw_schema_u64(v, "policy.canary", 0, 1024, &u, err);
                if (r < 0)
                        return r;
                p->canary = (unsigned) u;
        }
        v = gw_ynode_get(n, "allow-downgrade");
        if (v) {
                r = gw_schema_bool(v, "policy.allow-downgrade", &p->allow_downgrade, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

int gw_manifest_from_tree(const struct ynode *root, struct gw_manifest **ret,
                          struct gw_manifest_error *err)
{
        static const struct gw_field fields[] = {
            {"kind", true},     {"format", true},  {"id", true},
            {"sequence", true}, {"expires", true}, {"gateway", false},
            {"policy", false},  {"images", true},  {NULL, false},
        };
        static const struct gw_field gw_fields[] = {{"hardware", true}, {NULL, false}};
        const struct ynode *v, *images;
        struct gw_manifest *m;
        char path[GW_PATH_MAX];
        char *expires = NULL;
        uint64_t format;
        int r;

        r = gw_schema_map(root, "", fields, err);
        if (r < 0)
                return r;
        if (strcmp(gw_ytree_kind(root) ?: "", "gatewayd/manifest") != 0)
                return gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                        "kind: expected gatewayd/manifest");

        m = calloc(1, sizeof(*m));
        if (!m)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        m->policy = (struct gw_manifest_policy){.parallel = GW_MANIFEST_PARALLEL_DEFAULT};

        r = gw_schema_u64(gw_ynode_get(root, "format"), "format", 1, 1, &format, err);
        if (r < 0)
                goto fail;
        m->format = (unsigned) format;
        r = gw_schema_string(gw_ynode_get(root, "id"), "id", GW_MANIFEST_ID_MAX, GW_CHARSET_NAME,
                             &m->id, err);
        if (r < 0)
                goto fail;
        r = gw_schema_u64(gw_ynode_get(root, "sequence"), "sequence", 0, UINT64_MAX, &m->sequence,
                          err);
        if (r < 0)
                goto fail;
        v = gw_ynode_get(root, "expires");
        r = gw_schema_string(v, "expires", 64, GW_CHARSET_TOKEN, &expires, err);
        if (r < 0)
                goto fail;
        r = parse_time(expires, &m->expires);
        free(expires);
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                     "expires: expected an RFC 3339 UTC time such as "
                                     "2026-12-31T00:00:00Z (line %u)",
                                     v->line);
                goto fail;
        }
        v = gw_ynode_get(root, "gateway");
        if (v) {
                r = gw_schema_map(v, "gateway", gw_fields, err);
                if (r < 0)
                        goto fail;
                r = gw_schema_strings(gw_ynode_get(v, "hardware"), "gateway.hardware", 0,
                                      GW_MANIFEST_MAX_HARDWARE, TOKEN_MAX_LEN, GW_CHARSET_TOKEN,
                                      &m->gateway_hardware, &m->n_gateway_hardware, err);
                if (r < 0)
                        goto fail;
        }
        v = gw_ynode_get(root, "policy");
        if (v) {
                r = parse_policy(v, &m->policy, err);
                if (r < 0)
                        goto fail;
        }

        images = gw_ynode_get(root, "images");
        r = gw_schema_seq(images, "images", 1, GW_MANIFEST_MAX_IMAGES, err);
        if (r < 0)
                goto fail;
        m->images = calloc(images->n, sizeof(*m->images));
        if (!m->images) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
                goto fail;
        }
        for (size_t i = 0; i < images->n; i++) {
                gw_path_index(path, "images", i);
                m->n_images++;
                r = parse_image(images->items[i], path, &m->images[i], err);
                if (r < 0)
                        goto fail;
                for (size_t j = 0; j < i; j++)
                        if (strcmp(m->images[j].name, m->images[i].name) == 0) {
                                r = gw_manifest_fail(err, GW_ERR_SCHEMA_INVALID,
                                                     "%s.name: %s is used by images[%zu] too", path,
                                                     m->images[i].name, j);
                                goto fail;
                        }
        }
        *ret = m;
        return 0;
fail:
        gw_manifest_free(m);
        return r;
}

int gw_manifest_parse_body(const void *body, size_t len, struct gw_manifest **ret,
                           struct gw_manifest_error *err)
{
        struct ynode *root = NULL;
        int r;

        if (len > GW_MANIFEST_MAX_SIZE_DEFAULT)
                return gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                        "%zu bytes, more than the %zu allowed", len,
                                        GW_MANIFEST_MAX_SIZE_DEFAULT);
        r = gw_ytree_load(body, len, GW_ERR_BODY_MALFORMED, &root, err);
        if (r < 0)
                return r;
        r = gw_manifest_from_tree(root, ret, err);
        gw_ytree_free(root);
        return r;
}
