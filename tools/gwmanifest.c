/* gwmanifest: author, sign, verify and show gatewayd manifests (and gatewayd/keys documents)
 * from the shell. Exit 0 on success, 1 when a manifest is invalid or an operation fails,
 * 2 on usage errors. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "gw-config.h"
#include "gw/codec.h"
#include "gw/error.h"
#include "gw/manifest.h"
#include "gw/options.h"
#include "gwmanifest-travel.h"

#define EXIT_USAGE 2

static const char *prog = "gwmanifest";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "%s: ", prog);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry '%s --help'.\n", prog);
        return EXIT_USAGE;
}

static int fail_code(const struct gw_manifest_error *err)
{
        fprintf(stderr, "error: %s: %s\n", gw_error_to_string(err->code), err->message);
        return EXIT_FAILURE;
}

static int fail_errno(int r, const char *what)
{
        fprintf(stderr, "error: %s: %s\n", what, strerror(-r));
        return EXIT_FAILURE;
}

/* Reads a whole file of at most max bytes. */
static int read_all(const char *path, size_t max, char **ret, size_t *ret_len)
{
        char *buf;
        size_t len = 0;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        buf = malloc(max + 2);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        while (len <= max) {
                ssize_t n = read(fd, buf + len, max + 1 - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        close(fd);
        if (r == 0 && len > max)
                r = -EFBIG;
        if (r < 0) {
                free(buf);
                return r;
        }
        buf[len] = '\0';
        *ret = buf;
        *ret_len = len;
        return 0;
}

static int fsync_dir_of(const char *path)
{
        char *copy = strdup(path);
        int fd, r = 0;

        if (!copy)
                return -ENOMEM;
        fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        free(copy);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                r = -errno;
        close(fd);
        return r;
}

/* Replaces path with data atomically: temp file beside it, fsync, rename, fsync dir. */
static int write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
        char *tmp;
        size_t off = 0;
        int fd, r = 0;

        if (asprintf(&tmp, "%s.XXXXXX", path) < 0)
                return -ENOMEM;
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                free(tmp);
                return r;
        }
        if (fchmod(fd, mode) < 0)
                r = -errno;
        while (r == 0 && off < len) {
                ssize_t n = write(fd, (const char *) data + off, len - off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        r = -errno;
                else
                        off += (size_t) n;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                (void) unlink(tmp);
        free(tmp);
        return r < 0 ? r : fsync_dir_of(path);
}

/* ---- times, scalars, files ---- */

static void format_time(time_t t, char ret[static 32])
{
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(ret, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(ret, 32, "%lld", (long long) t);
}

/* A time on the command line: RFC 3339 UTC (2026-12-31T00:00:00Z), a date (2026-12-31,
 * midnight UTC), @SECONDS since the epoch, or +N[smhdw] from now. */
static int parse_when(const char *s, time_t now, time_t *ret)
{
        struct tm tm = {0};
        const char *end;
        uint64_t n;
        char *num;
        size_t len = strlen(s);

        if (s[0] == '@')
                return gw_parse_u64(s + 1, &n) < 0 || n > INT32_MAX * 1024ull
                           ? -EINVAL
                           : (*ret = (time_t) n, 0);
        if (s[0] == '+' && len >= 3) {
                static const struct {
                        char unit;
                        uint64_t secs;
                } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'w', 604800}};

                for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                        if (s[len - 1] != units[i].unit)
                                continue;
                        num = strndup(s + 1, len - 2);
                        if (!num)
                                return -ENOMEM;
                        if (gw_parse_u64(num, &n) < 0 ||
                            n > 100000ull * 366 * 86400 / units[i].secs) {
                                free(num);
                                return -EINVAL;
                        }
                        free(num);
                        *ret = now + (time_t) (n * units[i].secs);
                        return 0;
                }
                return -EINVAL;
        }
        end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
        if (!end || *end) {
                memset(&tm, 0, sizeof(tm));
                end = strptime(s, "%Y-%m-%d", &tm);
                if (!end || *end || len != 10)
                        return -EINVAL;
        }
        *ret = timegm(&tm);
        return *ret == (time_t) -1 ? -EINVAL : 0;
}

/* Characters a value may hold unquoted, in block and in flow context alike. */
static bool plain_ok(const char *s)
{
        size_t n = strlen(s);

        if (n == 0 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') ||
                        (s[0] >= '0' && s[0] <= '9')))
                return false;
        if (s[n - 1] == ':' || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
            strcmp(s, "NULL") == 0)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9') || strchr("._/:+@=-~%", *p)))
                        return false;
        return true;
}

/* Writes s as a YAML scalar: plain when that reads back the same, else double-quoted. */
static int put_scalar(FILE *f, const char *s)
{
        if (plain_ok(s))
                return fputs(s, f) < 0 ? -EIO : 0;
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p < 0x20 || *p == 0x7f)
                        return -EINVAL;
                if (*p == '"' || *p == '\\')
                        fputc('\\', f);
                fputc(*p, f);
        }
        fputc('"', f);
        return 0;
}

static bool name_ok(const char *s)
{
        size_t n = strlen(s);

        if (n == 0 || n > GW_MANIFEST_ID_MAX)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9') || strchr("._-", *p)))
                        return false;
        return true;
}

static bool token_ok(const char *s)
{
        size_t n = strlen(s);

        if (n == 0 || n > 128)
                return false;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (*p <= 0x20 || *p >= 0x7f)
                        return false;
        return true;
}

/* Writes data to path: atomically replacing it when force, else only when it is new. NULL
 * path: stdout. */
static int write_out(const char *path, const char *data, size_t len, mode_t mode, bool force);

/* The body of a file: all of it, or what precedes the "---" line of its signatures document.
 * *ret_n_sigs = number of signatures found (0 when none or unreadable). */
static size_t body_of(const char *buf, size_t len, size_t *ret_n_sigs)
{
        struct gw_manifest_error err = {0};
        char(*ids)[65] = NULL;
        size_t body_len, sigs_off, n = 0;

        *ret_n_sigs = 0;
        if (gw_envelope_split(buf, len, &body_len, &sigs_off) < 0)
                return len;
        if (gw_envelope_keyids(buf + sigs_off, len - sigs_off, &ids, &n, &err) < 0) {
                /* A "---" that does not start a signatures document is part of the body
                 * (the same rule gw_manifest_sign applies). */
                if (!strstr(buf + sigs_off, "signatures"))
                        return len;
                return body_len;
        }
        free(ids);
        *ret_n_sigs = n;
        return body_len;
}

/* ---- keygen ---- */

static int write_new(const char *path, const char *data, mode_t mode, bool force)
{
        size_t len = strlen(data), off = 0;
        int fd, r = 0;

        if (force)
                return write_atomic(path, data, len, mode);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd < 0)
                return -errno;
        while (r == 0 && off < len) {
                ssize_t n = write(fd, data + off, len - off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        r = -errno;
                else
                        off += (size_t) n;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r < 0)
                (void) unlink(path);
        return r;
}

static int cmd_keygen(int argc, char **argv)
{
        static const struct option opts[] = {
            {"type", required_argument, NULL, 't'},
            {"out", required_argument, NULL, 'o'},
            {"force", no_argument, NULL, 'f'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        enum gw_key_type type = 0;
        const char *out = NULL;
        struct gw_signer *s = NULL;
        char *priv = NULL, *pub = NULL, *pub_path = NULL, keyid[65] = "";
        bool force = false, x25519 = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "t:o:fh", opts, NULL)) >= 0) {
                switch (c) {
                case 't':
                        if (strcmp(optarg, "ed25519") == 0)
                                type = GW_KEY_ED25519;
                        else if (strcmp(optarg, "p256") == 0)
                                type = GW_KEY_P256;
                        else if (strcmp(optarg, "x25519") == 0)
                                x25519 = true;
                        else
                                return usage_error(
                                    "keygen: --type must be ed25519, p256 or x25519");
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        printf(
                            "Usage: %s keygen --type ed25519|p256|x25519 --out NAME [--force]\n\n"
                            "Writes NAME (the private key, PKCS#8 PEM, mode 0600) and NAME.pub\n"
                            "(the public key, SubjectPublicKeyInfo PEM) and prints the keyid.\n"
                            "Existing files are kept unless --force is given. ed25519 and p256\n"
                            "keys sign manifests; x25519 (or p256) keys are a gateway's\n"
                            "decryption-key, which add-image --encrypt-for NAME.pub encrypts\n"
                            "images for.\n",
                            prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("keygen: bad option");
                }
        }
        if ((!type && !x25519) || !out || optind != argc)
                return usage_error("keygen: needs --type and --out, and no other argument");

        if (x25519) {
                r = gw_gateway_key_generate(false, &priv, &pub, keyid);
        } else {
                r = gw_signer_generate(type, &s);
                if (r < 0)
                        return fail_errno(r, "key generation failed");
                r = gw_signer_private_pem(s, &priv);
                if (r >= 0)
                        r = gw_signer_public_pem(s, &pub);
                if (r >= 0)
                        snprintf(keyid, sizeof(keyid), "%s", gw_signer_keyid(s));
        }
        if (r < 0) {
                fail_errno(r, "PEM encoding failed");
                goto out;
        }
        if (asprintf(&pub_path, "%s.pub", out) < 0) {
                r = -ENOMEM;
                fail_errno(r, out);
                goto out;
        }
        r = write_new(out, priv, 0600, force);
        if (r < 0) {
                fail_errno(r, out);
                goto out;
        }
        r = write_new(pub_path, pub, 0644, force);
        if (r < 0) {
                fail_errno(r, pub_path);
                (void) unlink(out);
                goto out;
        }
        printf("%s\n", keyid);
out:
        if (priv)
                explicit_bzero(priv, strlen(priv));
        free(priv);
        free(pub);
        free(pub_path);
        gw_signer_free(s);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int write_out(const char *path, const char *data, size_t len, mode_t mode, bool force)
{
        if (!path)
                return fwrite(data, 1, len, stdout) == len && fflush(stdout) == 0 ? 0 : -EIO;
        if (force)
                return write_atomic(path, data, len, mode);
        return write_new(path, data, mode, false);
}

/* ---- init ---- */

static int cmd_init(int argc, char **argv)
{
        static const struct option opts[] = {
            {"id", required_argument, NULL, 'i'},
            {"sequence", required_argument, NULL, 's'},
            {"expires", required_argument, NULL, 'e'},
            {"out", required_argument, NULL, 'o'},
            {"force", no_argument, NULL, 'f'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        const char *out = NULL;
        char id[GW_MANIFEST_ID_MAX + 1], when[32], *text = NULL;
        uint64_t sequence = 1;
        time_t now = time(NULL), expires = now + 30 * 86400;
        size_t text_len = 0;
        bool force = false;
        struct tm tm;
        FILE *f;
        int c, r;

        if (!gmtime_r(&now, &tm) || strftime(id, sizeof(id), "release-%Y%m%d", &tm) == 0)
                snprintf(id, sizeof(id), "release");
        while ((c = getopt_long(argc, argv, "i:s:e:o:fh", opts, NULL)) >= 0) {
                switch (c) {
                case 'i':
                        if (!name_ok(optarg))
                                return usage_error("init: --id must be 1 to %d of [A-Za-z0-9._-]",
                                                   GW_MANIFEST_ID_MAX);
                        snprintf(id, sizeof(id), "%s", optarg);
                        break;
                case 's':
                        if (gw_parse_u64(optarg, &sequence) < 0)
                                return usage_error("init: bad --sequence");
                        break;
                case 'e':
                        if (parse_when(optarg, now, &expires) < 0)
                                return usage_error("init: bad --expires (2026-12-31T00:00:00Z, "
                                                   "2026-12-31 or +30d)");
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        printf("Usage: %s init [--id ID] [--sequence N] [--expires WHEN] "
                               "[--out FILE] [--force]\n\n"
                               "Writes a commented template manifest (to stdout without --out;\n"
                               "an existing FILE is kept unless --force). Defaults: id\n"
                               "release-YYYYMMDD, sequence 1, expires +30d. WHEN is\n"
                               "2026-12-31T00:00:00Z, 2026-12-31, @UNIXTIME or +N[smhdw].\n"
                               "Then: add-image, lint, sign.\n",
                               prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("init: bad option");
                }
        }
        if (optind != argc)
                return usage_error("init: takes no FILE argument (use --out FILE)");
        format_time(expires, when);

        f = open_memstream(&text, &text_len);
        if (!f)
                return fail_errno(-errno, "init");
        fprintf(f,
                "# A gatewayd manifest (docs/manifest.md), made by `gwmanifest init`.\n"
                "# Everything above the \"---\" line that `sign` adds is signed byte for byte:\n"
                "# edit first, then sign with each release key. Typical flow:\n"
                "#   gwmanifest add-image fw.bin --name N --version V --node X --protocol P FILE\n"
                "#   gwmanifest lint FILE\n"
                "#   gwmanifest sign --key KEY FILE\n"
                "kind: gatewayd/manifest\n"
                "format: 1\n"
                "id: %s\n"
                "# Strictly increasing for every manifest signed under this trust root; a\n"
                "# gateway refuses a lower one (an equal one only as a byte-identical retry).\n"
                "sequence: %llu\n"
                "# Gateways refuse the manifest from this time on (RFC 3339, UTC).\n"
                "expires: %s\n"
                "# Only gateways whose hardware id is listed may take it:\n"
                "# gateway: { hardware: [gw-imx8-rev2] }\n"
                "policy:\n"
                "  atomic: false          # true: every node succeeds, or all are rolled back\n"
                "  parallel: 8            # nodes flashed at once\n"
                "  canary: 0              # nodes flashed first, before the others\n"
                "  allow-downgrade: false # true: nodes may get an older version\n"
                "# One entry per image; `gwmanifest add-image` appends them here.\n"
                "images: []\n",
                id, (unsigned long long) sequence, when);
        if (fclose(f) != 0)
                return fail_errno(-EIO, "init");
        r = write_out(out, text, text_len, 0644, force);
        free(text);
        if (r < 0)
                return fail_errno(r, out ? out : "stdout");
        if (out)
                fprintf(stderr, "wrote %s: add images with '%s add-image'\n", out, prog);
        return EXIT_SUCCESS;
}

/* ---- add-image ---- */

struct kv_list {
        char **v; /* "key=value" as given */
        size_t n;
};

static int kv_add(struct kv_list *l, const char *arg)
{
        const char *eq = strchr(arg, '=');
        char **v;

        if (!eq || eq == arg || !eq[1])
                return -EINVAL;
        v = realloc(l->v, (l->n + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        l->v = v;
        l->v[l->n++] = (char *) arg;
        return 0;
}

/* "{ k: v, k2: v2 }" for key=value pairs. */
static int put_kv_map(FILE *f, const struct kv_list *l)
{
        int r = 0;

        fputs("{ ", f);
        for (size_t i = 0; r >= 0 && i < l->n; i++) {
                char *key = strndup(l->v[i], (size_t) (strchr(l->v[i], '=') - l->v[i]));

                if (!key)
                        return -ENOMEM;
                if (i)
                        fputs(", ", f);
                r = put_scalar(f, key);
                fputs(": ", f);
                if (r >= 0)
                        r = put_scalar(f, strchr(l->v[i], '=') + 1);
                free(key);
        }
        fputs(" }", f);
        return r;
}

static int hash_file(const char *path, uint64_t *ret_size, char ret_hex[static 65])
{
        uint8_t digest[32], chunk[65536];
        unsigned int dlen = 0;
        uint64_t size = 0;
        EVP_MD_CTX *ctx;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ctx = EVP_MD_CTX_new();
        if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
                r = -ENOMEM;
        while (r == 0) {
                ssize_t n = read(fd, chunk, sizeof(chunk));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        r = -errno;
                else if (n == 0)
                        break;
                else if (EVP_DigestUpdate(ctx, chunk, (size_t) n) != 1)
                        r = -EIO;
                else
                        size += (uint64_t) n;
        }
        if (r == 0 && (EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 || dlen != 32))
                r = -EIO;
        EVP_MD_CTX_free(ctx);
        close(fd);
        if (r < 0)
                return r;
        gw_hex(digest, 32, ret_hex);
        *ret_size = size;
        return 0;
}

/* Where to insert a new entry in body (a top-level "images:" block list), and how far its
 * "-" is indented. -ENOENT: no "images:" line (append one); -EMEDIUMTYPE: a flow list we do
 * not edit. *ret_empty_flow: the line is "images: []" (to be rewritten). */
static int find_images(const char *body, size_t len, size_t *ret_line, size_t *ret_insert,
                       unsigned *ret_indent, bool *ret_empty_flow)
{
        size_t i = 0;

        while (i < len) {
                size_t eol = i;
                const char *rest;

                while (eol < len && body[eol] != '\n')
                        eol++;
                if (eol - i >= 7 && memcmp(body + i, "images:", 7) == 0) {
                        size_t insert = eol < len ? eol + 1 : len, j;
                        unsigned indent = 2;
                        bool first = true;

                        rest = body + i + 7;
                        while (rest < body + eol && *rest == ' ')
                                rest++;
                        *ret_empty_flow = false;
                        if (rest + 2 <= body + eol && memcmp(rest, "[]", 2) == 0)
                                *ret_empty_flow = true;
                        else if (rest < body + eol && *rest != '#')
                                return -EMEDIUMTYPE;
                        /* The block runs over blank, comment and indented lines (and "-" at
                         * column 0: an indentless sequence); insert after its last content. */
                        for (j = insert; j < len;) {
                                size_t e = j, k = j;

                                while (e < len && body[e] != '\n')
                                        e++;
                                while (k < e && body[k] == ' ')
                                        k++;
                                if (k < e && body[k] != '#') {
                                        if (k == j && body[k] != '-')
                                                break;
                                        if (first && body[k] == '-') {
                                                indent = (unsigned) (k - j);
                                                first = false;
                                        }
                                        insert = e < len ? e + 1 : len;
                                }
                                j = e < len ? e + 1 : len;
                        }
                        *ret_line = i;
                        *ret_insert = insert;
                        *ret_indent = indent;
                        return 0;
                }
                i = eol + 1;
        }
        return -ENOENT;
}

/* What add-image's --compress, --delta-from and --encrypt-for ask for, and what they made. */
struct travel {
        bool compress;
        const char *delta_from, *delta_url;
        const char **encrypt_for; /* public key files */
        size_t n_encrypt_for;

        bool has_transfer, has_delta;
        char *transfer_path, *delta_path; /* the blobs written next to the image */
        char transfer_sha[65], delta_sha[65], base_sha[65];
        uint64_t transfer_size, delta_size, base_size;
        char transfer_nonce[32], delta_nonce[32]; /* base64 of 12 bytes */
        struct gw_manifest_recipient *recipients;
};

static void travel_done(struct travel *t)
{
        free(t->transfer_path);
        free(t->delta_path);
        free(t->recipients);
}

static int nonce_b64(uint8_t nonce[static GW_IMAGE_NONCE_SIZE], char ret[static 32])
{
        char *s = NULL;
        int r = gw_image_nonce_new(nonce);

        if (r >= 0)
                r = gw_base64_encode(nonce, GW_IMAGE_NONCE_SIZE, &s);
        if (r < 0)
                return r;
        snprintf(ret, 32, "%s", s);
        free(s);
        return 0;
}

/* Writes blob to path, with its size and SHA-256. */
static int travel_emit(const char *path, const struct gw_travel_buf *blob, uint64_t *ret_size,
                       char ret_sha[static 65])
{
        uint8_t sha[32];
        int r = write_atomic(path, blob->data, blob->len, 0644);

        if (r < 0)
                return r;
        *ret_size = blob->len;
        return gw_travel_sha256(blob, sha, ret_sha);
}

/* Makes the blobs add-image was asked for, next to image: IMAGE.zst, IMAGE[.zst].enc,
 * IMAGE.delta-<base>[.enc]. Reports what failed on stderr. */
static int travel_make(const char *image, struct travel *t)
{
        struct gw_travel_buf img = {0}, base = {0}, z = {0}, enc = {0}, d = {0}, denc = {0};
        uint8_t key[GW_IMAGE_KEY_SIZE], img_sha[32], base_sha[32], nonce[GW_IMAGE_NONCE_SIZE];
        const struct gw_travel_buf *transfer = NULL;
        bool encrypt = t->n_encrypt_for > 0;
        char hex[65];
        int r;

        r = gw_travel_read(image, &img);
        if (r < 0)
                return fail_errno(r, image), r;
        r = gw_travel_sha256(&img, img_sha, hex);
        if (r >= 0 && encrypt) {
                r = gw_image_key_new(key);
                t->recipients = calloc(t->n_encrypt_for, sizeof(*t->recipients));
                if (r >= 0 && !t->recipients)
                        r = -ENOMEM;
                for (size_t i = 0; r >= 0 && i < t->n_encrypt_for; i++) {
                        char *pem = NULL;
                        size_t len = 0;

                        r = read_all(t->encrypt_for[i], 16384, &pem, &len);
                        if (r >= 0)
                                r = gw_image_key_wrap(pem, len, key, &t->recipients[i]);
                        free(pem);
                        if (r < 0) {
                                fprintf(stderr, "error: %s: %s\n", t->encrypt_for[i],
                                        r == -EPROTONOSUPPORT ? "not an X25519 or P-256 public key"
                                        : r == -EBADMSG       ? "not a PEM public key"
                                                              : strerror(-r));
                                goto out;
                        }
                }
        }
        if (r >= 0 && t->compress) {
                r = gw_travel_zstd(&img, NULL, &z);
                transfer = &z;
        }
        if (r >= 0 && encrypt) {
                r = nonce_b64(nonce, t->transfer_nonce);
                if (r >= 0)
                        r = gw_travel_encrypt(transfer ? transfer : &img, key, nonce, img_sha,
                                              &enc);
                transfer = &enc;
        }
        if (r >= 0 && transfer) {
                if (asprintf(&t->transfer_path, "%s%s%s", image, t->compress ? ".zst" : "",
                             encrypt ? ".enc" : "") < 0)
                        r = -ENOMEM;
                if (r >= 0)
                        r = travel_emit(t->transfer_path, transfer, &t->transfer_size,
                                        t->transfer_sha);
                t->has_transfer = r >= 0;
        }
        if (r >= 0 && t->delta_from) {
                r = gw_travel_read(t->delta_from, &base);
                if (r < 0) {
                        fail_errno(r, t->delta_from);
                        goto out;
                }
                t->base_size = base.len;
                r = gw_travel_sha256(&base, base_sha, t->base_sha);
                if (r >= 0 && strcmp(t->base_sha, hex) == 0) {
                        fprintf(stderr, "error: %s is the image itself: no delta to make\n",
                                t->delta_from);
                        r = -EINVAL;
                        goto out;
                }
                if (r >= 0)
                        r = gw_travel_zstd(&img, &base, &d);
                if (r >= 0 && encrypt) {
                        r = nonce_b64(nonce, t->delta_nonce);
                        if (r >= 0)
                                r = gw_travel_encrypt(&d, key, nonce, img_sha, &denc);
                }
                if (r >= 0 && asprintf(&t->delta_path, "%s.delta-%.12s%s", image, t->base_sha,
                                       encrypt ? ".enc" : "") < 0)
                        r = -ENOMEM;
                if (r >= 0)
                        r = travel_emit(t->delta_path, encrypt ? &denc : &d, &t->delta_size,
                                        t->delta_sha);
                t->has_delta = r >= 0;
        }
        if (r < 0)
                fail_errno(r, "add-image");
out:
        OPENSSL_cleanse(key, sizeof(key));
        gw_travel_buf_done(&img);
        gw_travel_buf_done(&base);
        gw_travel_buf_done(&z);
        gw_travel_buf_done(&enc);
        gw_travel_buf_done(&d);
        gw_travel_buf_done(&denc);
        return r;
}

/* The manifest lines for what travel_make() made. */
static int travel_print(FILE *f, unsigned indent, const struct travel *t)
{
        int r = 0;

        if (t->has_transfer) {
                fprintf(f, "%*stransfer: { size: %llu, sha256: %s", indent, "",
                        (unsigned long long) t->transfer_size, t->transfer_sha);
                if (t->compress)
                        fputs(", compression: zstd", f);
                if (t->n_encrypt_for)
                        fprintf(f, ", nonce: \"%s\"", t->transfer_nonce);
                fputs(" }\n", f);
        }
        if (t->has_delta) {
                char *base = strdup(t->delta_path);
                const char *url = t->delta_url;

                if (!base)
                        return -ENOMEM;
                if (!url)
                        url = basename(base);
                fprintf(f, "%*sdelta:\n%*sbase-sha256: %s\n%*sbase-size: %llu\n%*surl: ", indent,
                        "", indent + 2, "", t->base_sha, indent + 2, "",
                        (unsigned long long) t->base_size, indent + 2, "");
                r = put_scalar(f, url);
                fprintf(f, "\n%*ssize: %llu\n%*ssha256: %s\n", indent + 2, "",
                        (unsigned long long) t->delta_size, indent + 2, "", t->delta_sha);
                if (t->n_encrypt_for)
                        fprintf(f, "%*snonce: \"%s\"\n", indent + 2, "", t->delta_nonce);
                free(base);
        }
        if (t->n_encrypt_for && r >= 0) {
                fprintf(f, "%*sencryption:\n%*scipher: aes-256-gcm\n%*srecipients:\n", indent, "",
                        indent + 2, "", indent + 2, "");
                for (size_t i = 0; r >= 0 && i < t->n_encrypt_for; i++) {
                        const struct gw_manifest_recipient *rc = &t->recipients[i];
                        char *eph = NULL, *wrapped = NULL;

                        r = gw_base64_encode(rc->ephemeral, rc->ephemeral_len, &eph);
                        if (r >= 0)
                                r = gw_base64_encode(rc->wrapped, sizeof(rc->wrapped), &wrapped);
                        if (r >= 0)
                                fprintf(f,
                                        "%*s- keyid: %s\n%*sephemeral: \"%s\"\n%*swrapped-key: "
                                        "\"%s\"\n",
                                        indent + 4, "", rc->keyid, indent + 6, "", eph, indent + 6,
                                        "", wrapped);
                        free(eph);
                        free(wrapped);
                }
        }
        return r;
}

static int cmd_add_image(int argc, char **argv)
{
        static const struct option opts[] = {
            {"name", required_argument, NULL, 'n'},
            {"version", required_argument, NULL, 'v'},
            {"node", required_argument, NULL, 'N'},
            {"nodes", required_argument, NULL, 'M'},
            {"class", required_argument, NULL, 'c'},
            {"protocol", required_argument, NULL, 'p'},
            {"option", required_argument, NULL, 'O'},
            {"hardware", required_argument, NULL, 'H'},
            {"url", required_argument, NULL, 'u'},
            {"mirror", required_argument, NULL, 'm'},
            {"help", no_argument, NULL, 'h'},
            {"compress", no_argument, NULL, 'z'},
            {"delta-from", required_argument, NULL, 'd'},
            {"delta-url", required_argument, NULL, 'D'},
            {"encrypt-for", required_argument, NULL, 'e'},
            {},
        };
        struct travel travel = {0};
        struct gw_manifest_error err = {0};
        struct gw_manifest *old = NULL, *m = NULL;
        struct kv_list options = {0}, hardware = {0};
        const char *name = NULL, *version = NULL, *protocol = NULL, *url = NULL;
        const char *target_kind = NULL, *target = NULL, *image, *file;
        const char **mirrors = NULL;
        size_t n_mirrors = 0, len = 0, body_len, n_sigs, line = 0, insert = 0, out_len = 0;
        char *buf = NULL, *out = NULL, *base = NULL, sha[65];
        unsigned indent = 2;
        bool empty_flow = false;
        uint64_t size = 0;
        struct stat st;
        FILE *f = NULL;
        int c, r, ret = EXIT_FAILURE;

        mirrors = calloc((size_t) argc + 1, sizeof(*mirrors));
        travel.encrypt_for = calloc((size_t) argc + 1, sizeof(*travel.encrypt_for));
        if (!mirrors || !travel.encrypt_for) {
                free(mirrors);
                free(travel.encrypt_for);
                return fail_errno(-ENOMEM, "add-image");
        }
        while ((c = getopt_long(argc, argv, "n:v:N:M:c:p:O:H:u:m:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'n':
                        name = optarg;
                        break;
                case 'v':
                        version = optarg;
                        break;
                case 'N':
                case 'M':
                case 'c':
                        if (target_kind) {
                                ret = usage_error("add-image: one of --node, --nodes, --class");
                                goto out;
                        }
                        target_kind = c == 'N' ? "node" : c == 'M' ? "nodes" : "class";
                        target = optarg;
                        break;
                case 'p':
                        protocol = optarg;
                        break;
                case 'O':
                case 'H':
                        r = kv_add(c == 'O' ? &options : &hardware, optarg);
                        if (r < 0) {
                                ret = r == -ENOMEM ? fail_errno(r, "add-image")
                                                   : usage_error("add-image: --%s takes KEY=VALUE",
                                                                 c == 'O' ? "option" : "hardware");
                                goto out;
                        }
                        break;
                case 'u':
                        url = optarg;
                        break;
                case 'm':
                        mirrors[n_mirrors++] = optarg;
                        break;
                case 'z':
                        travel.compress = true;
                        break;
                case 'd':
                        travel.delta_from = optarg;
                        break;
                case 'D':
                        travel.delta_url = optarg;
                        break;
                case 'e':
                        travel.encrypt_for[travel.n_encrypt_for++] = optarg;
                        break;
                case 'h':
                        printf("Usage: %s add-image IMAGE --name NAME --version V\n"
                               "          (--node X | --nodes A,B,... | --class C) --protocol P\n"
                               "          [--option KEY=VALUE]... [--hardware KEY=VALUE]...\n"
                               "          [--url URL] [--mirror URL]...\n"
                               "          [--compress] [--delta-from OLD [--delta-url URL]]\n"
                               "          [--encrypt-for GATEWAY.pub]... MANIFEST\n\n"
                               "Appends IMAGE to MANIFEST's images with its size and SHA-256\n"
                               "(computed here). --url defaults to IMAGE's file name, relative to\n"
                               "the manifest's URL. --hardware pairs are checked against what the\n"
                               "node reports; --option pairs go to the protocol plugin. Comments\n"
                               "and layout of MANIFEST are kept; a duplicate NAME is refused. Any\n"
                               "signatures are dropped (the body changed): sign again.\n\n"
                               "How it travels (each blob is written next to IMAGE; publish it\n"
                               "beside the manifest):\n"
                               "  --compress           zstd: IMAGE.zst is what gateways fetch\n"
                               "  --delta-from OLD     also a zstd patch from OLD to IMAGE\n"
                               "                       (IMAGE.delta-<OLD's hash>), fetched by a\n"
                               "                       gateway that holds OLD, the others fetch\n"
                               "                       the full image\n"
                               "  --encrypt-for KEY    AES-256-GCM, readable by the gateway whose\n"
                               "                       X25519 or P-256 public key is KEY\n"
                               "                       (repeatable; IMAGE[.zst].enc)\n",
                               prog);
                        ret = EXIT_SUCCESS;
                        goto out;
                default:
                        ret = usage_error("add-image: bad option");
                        goto out;
                }
        }
        if (optind + 2 != argc || !name || !version || !target_kind || !protocol) {
                ret = usage_error("add-image: needs IMAGE, --name, --version, one of --node/"
                                  "--nodes/--class, --protocol and MANIFEST");
                goto out;
        }
        if (!name_ok(name) || !token_ok(version) || !token_ok(protocol) ||
            (url && !token_ok(url))) {
                ret = usage_error("add-image: --name is [A-Za-z0-9._-]{1,128}; --version, "
                                  "--protocol and --url are printable ASCII without spaces");
                goto out;
        }
        image = argv[optind];
        file = argv[optind + 1];

        r = hash_file(image, &size, sha);
        if (r < 0) {
                fail_errno(r, image);
                goto out;
        }
        if (size == 0) {
                fprintf(stderr, "error: %s: empty file\n", image);
                goto out;
        }
        if ((travel.compress || travel.delta_from || travel.n_encrypt_for) &&
            travel_make(image, &travel) < 0)
                goto out;
        if (!url) {
                base = strdup(travel.transfer_path ? travel.transfer_path : image);
                if (!base) {
                        fail_errno(-ENOMEM, "add-image");
                        goto out;
                }
                url = basename(base);
        }

        if (stat(file, &st) < 0) {
                fail_errno(-errno, file);
                goto out;
        }
        r = read_all(file, GW_MANIFEST_MAX_SIZE_DEFAULT, &buf, &len);
        if (r < 0) {
                fail_errno(r, file);
                goto out;
        }
        body_len = body_of(buf, len, &n_sigs);
        /* A duplicate name, said plainly (the full parse below would also refuse it). */
        if (gw_manifest_parse_body(buf, body_len, &old, &err) >= 0)
                for (size_t i = 0; i < old->n_images; i++)
                        if (strcmp(old->images[i].name, name) == 0) {
                                fprintf(stderr, "error: %s already has an image named %s\n", file,
                                        name);
                                goto out;
                        }
        r = find_images(buf, body_len, &line, &insert, &indent, &empty_flow);
        if (r == -EMEDIUMTYPE) {
                fprintf(stderr,
                        "error: %s: images is a flow list; add-image edits block lists "
                        "(\"images:\" followed by \"  - name: ...\" lines)\n",
                        file);
                goto out;
        }

        f = open_memstream(&out, &out_len);
        if (!f) {
                fail_errno(-ENOMEM, "add-image");
                goto out;
        }
        if (r == -ENOENT) {
                fwrite(buf, 1, body_len, f);
                if (body_len > 0 && buf[body_len - 1] != '\n')
                        fputc('\n', f);
                fputs("images:\n", f);
        } else if (empty_flow) {
                const char *eol = memchr(buf + line, '\n', body_len - line);
                const char *hash =
                    memchr(buf + line, '#', (size_t) ((eol ?: buf + body_len) - (buf + line)));

                fwrite(buf, 1, line, f);
                fputs("images:", f);
                if (hash) {
                        fputc(' ', f);
                        fwrite(hash, 1, (size_t) ((eol ?: buf + body_len) - hash), f);
                }
                fputc('\n', f);
                insert = eol ? (size_t) (eol + 1 - buf) : body_len;
        } else {
                fwrite(buf, 1, insert, f);
                if (insert > 0 && buf[insert - 1] != '\n')
                        fputc('\n', f);
        }
        r = 0;
        fprintf(f, "%*s- name: %s\n%*sversion: ", indent, "", name, indent + 2, "");
        r = put_scalar(f, version);
        fprintf(f, "\n%*stargets: { %s: ", indent + 2, "", target_kind);
        if (strcmp(target_kind, "nodes") == 0) {
                char *list = strdup(target), *save = NULL, *tok;
                bool first = true;

                if (!list) {
                        fclose(f);
                        fail_errno(-ENOMEM, "add-image");
                        goto out;
                }
                fputc('[', f);
                for (tok = strtok_r(list, ",", &save); tok && r >= 0;
                     tok = strtok_r(NULL, ",", &save)) {
                        fputs(first ? "" : ", ", f);
                        r = token_ok(tok) ? put_scalar(f, tok) : -EINVAL;
                        first = false;
                }
                fputc(']', f);
                free(list);
                if (first)
                        r = -EINVAL;
        } else if (r >= 0)
                r = token_ok(target) ? put_scalar(f, target) : -EINVAL;
        fputs(" }\n", f);
        if (hardware.n > 0 && r >= 0) {
                fprintf(f, "%*shardware: ", indent + 2, "");
                r = put_kv_map(f, &hardware);
                fputc('\n', f);
        }
        fprintf(f, "%*sprotocol: ", indent + 2, "");
        if (r >= 0)
                r = put_scalar(f, protocol);
        fputc('\n', f);
        if (options.n > 0 && r >= 0) {
                fprintf(f, "%*soptions: ", indent + 2, "");
                r = put_kv_map(f, &options);
                fputc('\n', f);
        }
        fprintf(f, "%*ssize: %llu\n%*ssha256: %s\n%*surl: ", indent + 2, "",
                (unsigned long long) size, indent + 2, "", sha, indent + 2, "");
        if (r >= 0)
                r = put_scalar(f, url);
        fputc('\n', f);
        if (n_mirrors > 0) {
                fprintf(f, "%*smirrors: [", indent + 2, "");
                for (size_t i = 0; i < n_mirrors && r >= 0; i++) {
                        fputs(i ? ", " : "", f);
                        r = token_ok(mirrors[i]) ? put_scalar(f, mirrors[i]) : -EINVAL;
                }
                fputs("]\n", f);
        }
        if (r >= 0)
                r = travel_print(f, indent + 2, &travel);
        if (r == -ENOENT)
                r = 0;
        if (insert < body_len)
                fwrite(buf + insert, 1, body_len - insert, f);
        if (fclose(f) != 0 && r >= 0)
                r = -EIO;
        if (r < 0) {
                if (r == -EINVAL)
                        ret = usage_error("add-image: a target, key or value holds characters "
                                          "a manifest cannot (control characters, spaces in "
                                          "targets or URLs)");
                else
                        fail_errno(r, "add-image");
                goto out;
        }
        /* The result must be a valid body, with the new image in it. */
        if (gw_manifest_parse_body(out, out_len, &m, &err) < 0) {
                fprintf(stderr, "error: %s: %s (%s not changed)\n", gw_error_to_string(err.code),
                        err.message, file);
                goto out;
        }
        r = write_atomic(file, out, out_len, st.st_mode & 07777);
        if (r < 0) {
                fail_errno(r, file);
                goto out;
        }
        if (n_sigs > 0)
                fprintf(stderr,
                        "note: %s had %zu signature(s); the body changed, so they were dropped: "
                        "sign it again\n",
                        file, n_sigs);
        printf("added %s %s (%llu bytes, sha256 %.16s...) to %s: %zu image(s)\n", name, version,
               (unsigned long long) size, sha, file, m->n_images);
        if (travel.has_transfer)
                printf("  travels as %s: %llu bytes%s\n", travel.transfer_path,
                       (unsigned long long) travel.transfer_size,
                       travel.n_encrypt_for ? ", encrypted" : "");
        if (travel.has_delta)
                printf("  delta from %.16s...: %s, %llu bytes\n", travel.base_sha,
                       travel.delta_path, (unsigned long long) travel.delta_size);
        ret = EXIT_SUCCESS;
out:
        gw_manifest_free(old);
        gw_manifest_free(m);
        free(options.v);
        free(hardware.v);
        free(mirrors);
        free(travel.encrypt_for);
        travel_done(&travel);
        free(base);
        free(buf);
        free(out);
        return ret;
}

/* ---- keys-init ---- */

/* The canonical SPKI PEM of a public key file (or of the public half of a private one). */
static int read_public_pem(const char *path, char **ret)
{
        EVP_PKEY *pkey = NULL;
        BIO *in = NULL, *mem = NULL;
        char *data = NULL, *s;
        long n;
        int r = 0;

        in = BIO_new_file(path, "r");
        if (!in)
                return -ENOENT;
        pkey = PEM_read_bio_PUBKEY(in, NULL, NULL, NULL);
        mem = BIO_new(BIO_s_mem());
        if (!pkey || !mem || PEM_write_bio_PUBKEY(mem, pkey) != 1)
                r = -EBADMSG;
        if (r == 0) {
                n = BIO_get_mem_data(mem, &data);
                s = n > 0 ? strndup(data, (size_t) n) : NULL;
                if (!s)
                        r = -ENOMEM;
                else
                        *ret = s;
        }
        EVP_PKEY_free(pkey);
        BIO_free(in);
        BIO_free(mem);
        return r;
}

static int cmd_keys_init(int argc, char **argv)
{
        static const struct option opts[] = {
            {"key", required_argument, NULL, 'k'},
            {"threshold", required_argument, NULL, 'T'},
            {"version", required_argument, NULL, 'v'},
            {"out", required_argument, NULL, 'o'},
            {"force", no_argument, NULL, 'f'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_error err = {0};
        struct gw_trust *t = NULL;
        const char **key_files = NULL, *out = NULL;
        size_t n_keys = 0, text_len = 0;
        uint64_t threshold = 0, version = 1;
        char *text = NULL;
        bool force = false;
        FILE *f = NULL;
        int c, r, ret = EXIT_FAILURE;

        key_files = calloc((size_t) argc + 1, sizeof(*key_files));
        if (!key_files)
                return fail_errno(-ENOMEM, "keys-init");
        while ((c = getopt_long(argc, argv, "k:T:v:o:fh", opts, NULL)) >= 0) {
                switch (c) {
                case 'k':
                        key_files[n_keys++] = optarg;
                        break;
                case 'T':
                        if (gw_parse_u64(optarg, &threshold) < 0 || threshold < 1 ||
                            threshold > GW_MANIFEST_MAX_KEYS) {
                                ret = usage_error("keys-init: bad --threshold");
                                goto out;
                        }
                        break;
                case 'v':
                        if (gw_parse_u64(optarg, &version) < 0 || version < 1 ||
                            version == UINT64_MAX) {
                                ret = usage_error("keys-init: bad --version");
                                goto out;
                        }
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        printf(
                            "Usage: %s keys-init --key A.pub [--key B.pub]... --threshold N\n"
                            "          [--version V] [--out KEYS.yaml] [--force]\n\n"
                            "Writes a gatewayd/keys document (a trust root) listing the public\n"
                            "keys, with an empty signatures document: as version 1 it can be\n"
                            "provisioned on a gateway as it is. As a rotation (version = the\n"
                            "current version + 1), sign it with a threshold of the current keys\n"
                            "and a threshold of its own ('%s sign --key K KEYS.yaml'), then\n"
                            "check it with '%s verify --trust CURRENT.yaml KEYS.yaml'.\n",
                            prog, prog, prog);
                        ret = EXIT_SUCCESS;
                        goto out;
                default:
                        ret = usage_error("keys-init: bad option");
                        goto out;
                }
        }
        if (optind != argc || n_keys == 0 || threshold == 0) {
                ret = usage_error("keys-init: needs --key (one or more) and --threshold");
                goto out;
        }
        if (threshold > n_keys) {
                ret = usage_error("keys-init: --threshold %llu is more than the %zu key(s)",
                                  (unsigned long long) threshold, n_keys);
                goto out;
        }

        f = open_memstream(&text, &text_len);
        if (!f) {
                fail_errno(-ENOMEM, "keys-init");
                goto out;
        }
        fprintf(f,
                "# A gatewayd trust root (docs/manifest.md), made by `gwmanifest keys-init`:\n"
                "# a gateway holding it accepts what %llu of these %zu key(s) signed.\n"
                "kind: gatewayd/keys\nformat: 1\nversion: %llu\nthreshold: %llu\nkeys:\n",
                (unsigned long long) threshold, n_keys, (unsigned long long) version,
                (unsigned long long) threshold);
        for (size_t i = 0; i < n_keys; i++) {
                char *pem = NULL, keyid[65];

                r = read_public_pem(key_files[i], &pem);
                if (r >= 0)
                        r = gw_key_id_from_pem(pem, strlen(pem), keyid);
                if (r < 0) {
                        fprintf(stderr, "error: %s: %s\n", key_files[i],
                                r == -ENOENT            ? "cannot open"
                                : r == -EPROTONOSUPPORT ? "only Ed25519 and P-256 keys are "
                                                          "supported"
                                                        : "not a PEM public key");
                        free(pem);
                        fclose(f);
                        f = NULL;
                        goto out;
                }
                fprintf(f, "  # %s (%s)\n  - public: |\n", keyid, key_files[i]);
                for (char *l = pem, *nl; *l; l = nl + 1) {
                        nl = strchr(l, '\n');
                        if (!nl)
                                nl = l + strlen(l) - 1;
                        fprintf(f, "      %.*s\n", (int) (nl - l + (*nl != '\n')), l);
                }
                free(pem);
        }
        fputs("---\nsignatures: []\n", f);
        if (fclose(f) != 0) {
                f = NULL;
                fail_errno(-EIO, "keys-init");
                goto out;
        }
        f = NULL;
        /* What we wrote must load as a trust root (a key listed twice is refused here). */
        r = gw_trust_load_buffer(text, text_len, 0, &t, &err);
        if (r < 0) {
                fail_code(&err);
                goto out;
        }
        r = write_out(out, text, text_len, 0644, force);
        if (r < 0) {
                fail_errno(r, out ? out : "stdout");
                goto out;
        }
        if (out)
                fprintf(stderr, "wrote %s: version %llu, threshold %u of %zu key(s)\n", out,
                        (unsigned long long) version, gw_trust_threshold(t), gw_trust_key_count(t));
        ret = EXIT_SUCCESS;
out:
        gw_trust_free(t);
        free(text);
        free(key_files);
        return ret;
}

/* ---- sign ---- */

static int cmd_sign(int argc, char **argv)
{
        static const struct option opts[] = {
            {"key", required_argument, NULL, 'k'},
            {"max-size", required_argument, NULL, 'm'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_error err = {0};
        struct gw_signer *s = NULL;
        const char *key = NULL, *file;
        char *buf = NULL, *out = NULL;
        size_t len = 0, out_len = 0, max_size = GW_MANIFEST_MAX_SIZE_DEFAULT;
        struct stat st;
        uint64_t u;
        int c, r, ret = EXIT_FAILURE;

        while ((c = getopt_long(argc, argv, "k:m:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'k':
                        key = optarg;
                        break;
                case 'm':
                        if (gw_parse_u64(optarg, &u) < 0 || u == 0 || u > SIZE_MAX / 2)
                                return usage_error("sign: bad --max-size");
                        max_size = (size_t) u;
                        break;
                case 'h':
                        printf(
                            "Usage: %s sign --key NAME [--max-size BYTES] FILE\n\n"
                            "Adds NAME's signature to FILE (a manifest or a gatewayd/keys\n"
                            "document), replacing an earlier signature by the same key. The\n"
                            "body bytes are kept as they are; the file is replaced atomically.\n",
                            prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("sign: bad option");
                }
        }
        if (!key || optind + 1 != argc)
                return usage_error("sign: needs --key NAME and one FILE");
        file = argv[optind];

        r = gw_signer_load_file(key, &s);
        if (r < 0)
                return fail_errno(r, key);
        if (stat(file, &st) < 0) {
                fail_errno(-errno, file);
                goto out;
        }
        r = read_all(file, max_size, &buf, &len);
        if (r == -EFBIG) {
                err = (struct gw_manifest_error){.code = GW_ERR_MANIFEST_TOO_LARGE};
                snprintf(err.message, sizeof(err.message), "%s: more than %zu bytes", file,
                         max_size);
                fail_code(&err);
                goto out;
        }
        if (r < 0) {
                fail_errno(r, file);
                goto out;
        }
        r = gw_manifest_sign(s, buf, len, max_size, &out, &out_len, &err);
        if (r < 0) {
                fail_code(&err);
                goto out;
        }
        r = write_atomic(file, out, out_len, st.st_mode & 07777);
        if (r < 0) {
                fail_errno(r, file);
                goto out;
        }
        printf("signed %s with %s\n", file, gw_signer_keyid(s));
        ret = EXIT_SUCCESS;
out:
        free(buf);
        free(out);
        gw_signer_free(s);
        return ret;
}

/* ---- verify ---- */

static void print_check(void *userdata, const char *check, enum gw_error code, const char *detail)
{
        size_t n = strlen(detail);
        /* A signature by an untrusted key, or a second one by a counted key, does not fail
         * anything: it is not counted. */
        bool ignored = n >= 9 && strcmp(detail + n - 9, ", ignored") == 0;

        printf("  %-17s %-7s %s\n", check,
               code == GW_ERR_NONE ? "ok"
               : ignored           ? "ignored"
                                   : "FAIL",
               detail);
}

static int verify_rotation(const struct gw_trust *trust, const char *file, const char *buf,
                           size_t len, size_t max_size, bool quiet);

static int cmd_verify(int argc, char **argv)
{
        static const struct option opts[] = {
            {"trust", required_argument, NULL, 't'},
            {"key", required_argument, NULL, 'k'},
            {"threshold", required_argument, NULL, 'T'},
            {"state", required_argument, NULL, 's'},
            {"hardware", required_argument, NULL, 'H'},
            {"max-size", required_argument, NULL, 'm'},
            {"quiet", no_argument, NULL, 'q'},
            {"now", required_argument, NULL, 'N'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_verify_params p = {.report = print_check};
        const char *type = NULL;
        time_t now = time(NULL);
        struct gw_manifest_error err = {0};
        struct gw_manifest_state state = {0};
        struct gw_manifest *m = NULL;
        struct gw_trust *trust = NULL;
        const char *trust_file = NULL, *state_dir = NULL, *file;
        const char **key_files = NULL;
        size_t n_keys = 0, len = 0;
        unsigned threshold = 1;
        char *buf = NULL;
        uint64_t u;
        int c, r, ret = EXIT_FAILURE;

        key_files = calloc((size_t) argc + 1, sizeof(*key_files));
        if (!key_files)
                return fail_errno(-ENOMEM, "verify");
        p.max_size = GW_MANIFEST_MAX_SIZE_DEFAULT;
        while ((c = getopt_long(argc, argv, "t:k:T:s:H:m:qN:h", opts, NULL)) >= 0) {
                switch (c) {
                case 't':
                        trust_file = optarg;
                        break;
                case 'k':
                        key_files[n_keys++] = optarg;
                        break;
                case 'T':
                        if (gw_parse_u64(optarg, &u) < 0 || u < 1 || u > GW_MANIFEST_MAX_KEYS) {
                                free(key_files);
                                return usage_error("verify: bad --threshold");
                        }
                        threshold = (unsigned) u;
                        break;
                case 's':
                        state_dir = optarg;
                        break;
                case 'H':
                        p.gateway_hardware = optarg;
                        break;
                case 'm':
                        if (gw_parse_u64(optarg, &u) < 0 || u == 0 || u > SIZE_MAX / 2) {
                                free(key_files);
                                return usage_error("verify: bad --max-size");
                        }
                        p.max_size = (size_t) u;
                        break;
                case 'q':
                        p.report = NULL;
                        break;
                case 'N':
                        if (parse_when(optarg, now, &now) < 0) {
                                free(key_files);
                                return usage_error("verify: bad --now");
                        }
                        break;
                case 'h':
                        printf(
                            "Usage: %s verify (--trust KEYS.yaml | --key NAME.pub... "
                            "[--threshold N])\n"
                            "          [--state DIR] [--hardware ID] [--now WHEN] "
                            "[--max-size BYTES] [--quiet] FILE\n\n"
                            "Checks FILE as gatewayd would and prints each check. --trust takes\n"
                            "a gatewayd/keys document (its threshold applies); --key takes\n"
                            "public keys (threshold 1 unless --threshold). --state reads the\n"
                            "last accepted sequence and trusted time from DIR/manifest-state\n"
                            "(read only). --hardware checks gateway.hardware. --now sets the\n"
                            "clock (2026-12-31T00:00:00Z, 2026-12-31, @UNIXTIME, +N[smhdw]).\n"
                            "When FILE is a gatewayd/keys document, it is checked as a rotation\n"
                            "of --trust: version + 1, signed by a threshold of the current keys\n"
                            "and by a threshold of its own.\n"
                            "Exit 0 when valid, 1 with \"error: <code>: <message>\" when not.\n",
                            prog);
                        free(key_files);
                        return EXIT_SUCCESS;
                default:
                        free(key_files);
                        return usage_error("verify: bad option");
                }
        }
        if (optind + 1 != argc || (!trust_file) == (n_keys == 0) ||
            (trust_file && threshold != 1)) {
                free(key_files);
                return usage_error("verify: needs one FILE and either --trust or --key "
                                   "(--threshold only with --key)");
        }
        file = argv[optind];

        if (trust_file) {
                r = gw_trust_load_file(trust_file, 0, &trust, &err);
                if (r < 0) {
                        fprintf(stderr, "error: %s: trust %s: %s\n", gw_error_to_string(err.code),
                                trust_file, err.message);
                        goto out;
                }
        } else {
                if (threshold > n_keys) {
                        free(key_files);
                        return usage_error("verify: --threshold is more than the keys given");
                }
                r = gw_trust_new(threshold, 1, &trust);
                if (r < 0) {
                        fail_errno(r, "verify");
                        goto out;
                }
                for (size_t i = 0; i < n_keys; i++) {
                        r = gw_trust_add_key_file(trust, key_files[i]);
                        if (r < 0) {
                                fprintf(stderr, "error: %s: %s\n", key_files[i],
                                        r == -EPROTONOSUPPORT
                                            ? "only Ed25519 and P-256 keys are supported"
                                        : r == -EBADMSG ? "not a PEM public key"
                                                        : strerror(-r));
                                goto out;
                        }
                }
        }
        if (state_dir) {
                r = gw_manifest_state_load(state_dir, &state);
                if (r < 0) {
                        fail_errno(r, state_dir);
                        goto out;
                }
                p.state = &state;
        }

        r = read_all(file, p.max_size, &buf, &len);
        if (r == -EFBIG) {
                err = (struct gw_manifest_error){.code = GW_ERR_MANIFEST_TOO_LARGE};
                snprintf(err.message, sizeof(err.message), "%s: more than %zu bytes", file,
                         p.max_size);
                if (p.report)
                        print_check(NULL, "size", err.code, err.message);
                fail_code(&err);
                goto out;
        }
        if (r < 0) {
                fail_errno(r, file);
                goto out;
        }
        if (gw_document_type(buf, len, &type, &err) >= 0 &&
            strcmp(type, GW_KEYS_PAYLOAD_TYPE) == 0) {
                if (!trust_file) {
                        ret = usage_error("verify: a gatewayd/keys document is verified as a "
                                          "rotation of --trust KEYS.yaml");
                        goto out;
                }
                ret = verify_rotation(trust, file, buf, len, p.max_size, !p.report);
                goto out;
        }
        p.now = now;
        if (p.report)
                printf("%s: trust v%llu, threshold %u of %zu key(s)\n", file,
                       (unsigned long long) gw_trust_version(trust), gw_trust_threshold(trust),
                       gw_trust_key_count(trust));
        fflush(stdout);
        r = gw_manifest_verify(trust, &p, buf, len, &m, &err);
        fflush(stdout);
        if (r < 0) {
                fail_code(&err);
                goto out;
        }
        if (p.report)
                printf("valid\n");
        ret = EXIT_SUCCESS;
out:
        gw_manifest_free(m);
        gw_trust_free(trust);
        free(buf);
        free(key_files);
        return ret;
}

/* ---- show ---- */

static const char *target_kind_name(enum gw_target_kind k)
{
        return k == GW_TARGET_CLASS ? "class" : k == GW_TARGET_NODE ? "node" : "nodes";
}

static void hex(const uint8_t *d, size_t n, char *ret)
{
        for (size_t i = 0; i < n; i++)
                sprintf(ret + 2 * i, "%02x", d[i]);
}

static json_t *strv_json(char **v, size_t n)
{
        json_t *a = json_array();

        for (size_t i = 0; a && i < n; i++)
                json_array_append_new(a, json_string(v[i]));
        return a;
}

static int show_json(const struct gw_manifest *m, char (*sigs)[65], size_t n_sigs,
                     const uint8_t file_sha[32])
{
        char when[32], h[65];
        json_t *root, *images, *sa;
        int r;

        format_time(m->expires, when);
        hex(file_sha, 32, h);
        images = json_array();
        sa = json_array();
        for (size_t i = 0; i < n_sigs; i++)
                json_array_append_new(sa, json_string(sigs[i]));
        for (size_t i = 0; i < m->n_images; i++) {
                const struct gw_manifest_image *img = &m->images[i];
                json_t *hw = json_object(), *opts = json_object(), *targets;
                char ih[65];

                for (size_t j = 0; j < img->n_hardware; j++)
                        json_object_set_new(hw, img->hardware[j].key,
                                            json_string(img->hardware[j].value));
                for (size_t j = 0; j < gw_options_count(img->options); j++)
                        json_object_set_new(opts, gw_options_key(img->options, j),
                                            json_string(gw_options_value(img->options, j)));
                if (img->target_kind == GW_TARGET_NODES)
                        targets =
                            json_pack("{s:o}", "nodes", strv_json(img->targets, img->n_targets));
                else
                        targets =
                            json_pack("{s:s}", target_kind_name(img->target_kind), img->targets[0]);
                hex(img->sha256, 32, ih);
                json_array_append_new(
                    images, json_pack("{s:s, s:s, s:o, s:o, s:s, s:o, s:I, s:s, s:s, s:o}", "name",
                                      img->name, "version", img->version, "targets", targets,
                                      "hardware", hw, "protocol", img->protocol, "options", opts,
                                      "size", (json_int_t) img->size, "sha256", ih, "url", img->url,
                                      "mirrors", strv_json(img->mirrors, img->n_mirrors)));
        }
        root = json_pack("{s:s, s:i, s:s, s:I, s:s, s:I, s:{s:o}, s:{s:b, s:i, s:i, s:b}, s:o, "
                         "s:o, s:s}",
                         "kind", "gatewayd/manifest", "format", (int) m->format, "id", m->id,
                         "sequence", (json_int_t) m->sequence, "expires", when, "expires_unix",
                         (json_int_t) m->expires, "gateway", "hardware",
                         strv_json(m->gateway_hardware, m->n_gateway_hardware), "policy", "atomic",
                         m->policy.atomic, "parallel", (int) m->policy.parallel, "canary",
                         (int) m->policy.canary, "allow-downgrade", m->policy.allow_downgrade,
                         "images", images, "signatures", sa, "file_sha256", h);
        if (!root)
                return -ENOMEM;
        r = json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\n");
        json_decref(root);
        return r < 0 ? -EIO : 0;
}

static void show_table(const struct gw_manifest *m, char (*sigs)[65], size_t n_sigs,
                       const uint8_t file_sha[32])
{
        char when[32], h[65];

        format_time(m->expires, when);
        hex(file_sha, 32, h);
        printf("id        %s\nsequence  %llu\nexpires   %s\n", m->id,
               (unsigned long long) m->sequence, when);
        printf("gateway   ");
        if (m->n_gateway_hardware == 0)
                printf("any");
        for (size_t i = 0; i < m->n_gateway_hardware; i++)
                printf("%s%s", i ? ", " : "", m->gateway_hardware[i]);
        printf("\npolicy    atomic %s, parallel %u, canary %u, allow-downgrade %s\n",
               m->policy.atomic ? "yes" : "no", m->policy.parallel, m->policy.canary,
               m->policy.allow_downgrade ? "yes" : "no");
        printf("sha256    %s (whole file)\n", h);
        printf("signed by %zu key(s), not verified here:\n", n_sigs);
        for (size_t i = 0; i < n_sigs; i++)
                printf("          %s\n", sigs[i]);
        printf("\n%-20s %-12s %-12s %-24s %12s  %s\n", "IMAGE", "VERSION", "PROTOCOL", "TARGETS",
               "SIZE", "SHA256");
        for (size_t i = 0; i < m->n_images; i++) {
                const struct gw_manifest_image *img = &m->images[i];
                char targets[25];
                int n;

                n = snprintf(targets, sizeof(targets), "%s:%s%s",
                             target_kind_name(img->target_kind), img->targets[0],
                             img->n_targets > 1 ? ",..." : "");
                if (n < 0)
                        targets[0] = '\0';
                hex(img->sha256, 8, h);
                printf("%-20s %-12s %-12s %-24s %12llu  %s...\n", img->name, img->version,
                       img->protocol, targets, (unsigned long long) img->size, h);
                printf("  url %s\n", img->url);
                for (size_t j = 0; j < img->n_hardware; j++)
                        printf("  hardware %s = %s\n", img->hardware[j].key,
                               img->hardware[j].value);
                for (size_t j = 0; j < gw_options_count(img->options); j++)
                        printf("  option %s = %s\n", gw_options_key(img->options, j),
                               gw_options_value(img->options, j));
        }
}

static int cmd_show(int argc, char **argv)
{
        static const struct option opts[] = {
            {"json", no_argument, NULL, 'j'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        char(*sigs)[65] = NULL;
        size_t len = 0, body_len, sigs_off, n_sigs = 0;
        uint8_t file_sha[32];
        unsigned int dlen = 0;
        bool json = false;
        char *buf = NULL;
        int c, r, ret = EXIT_FAILURE;

        while ((c = getopt_long(argc, argv, "jh", opts, NULL)) >= 0) {
                switch (c) {
                case 'j':
                        json = true;
                        break;
                case 'h':
                        printf("Usage: %s show [--json] FILE\n\n"
                               "Prints a manifest's fields and images (signatures are listed, not\n"
                               "verified: use verify for that).\n",
                               prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("show: bad option");
                }
        }
        if (optind + 1 != argc)
                return usage_error("show: needs one FILE");

        r = read_all(argv[optind], GW_MANIFEST_MAX_SIZE_DEFAULT, &buf, &len);
        if (r < 0)
                return fail_errno(r, argv[optind]);
        body_len = len;
        /* A signed file, or a bare body not signed yet. */
        if (gw_envelope_split(buf, len, &body_len, &sigs_off) < 0 ||
            gw_envelope_keyids(buf + sigs_off, len - sigs_off, &sigs, &n_sigs, &err) < 0)
                body_len = len;
        r = gw_manifest_parse_body(buf, body_len, &m, &err);
        if (r < 0) {
                fail_code(&err);
                goto out;
        }
        /* The same whole-file hash the daemon computes. */
        if (EVP_Digest(buf, len, file_sha, &dlen, EVP_sha256(), NULL) != 1 || dlen != 32) {
                fail_errno(-EIO, "SHA-256");
                goto out;
        }
        if (json) {
                r = show_json(m, sigs, n_sigs, file_sha);
                if (r < 0) {
                        fail_errno(r, "JSON output");
                        goto out;
                }
        } else
                show_table(m, sigs, n_sigs, file_sha);
        ret = EXIT_SUCCESS;
out:
        gw_manifest_free(m);
        free(sigs);
        free(buf);
        return ret;
}

/* ---- lint ---- */

static int lint_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int lint_warn(const char *fmt, ...)
{
        va_list ap;

        printf("warning: ");
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        return 1;
}

static bool is_relative_url(const char *u)
{
        return !strstr(u, "://");
}

static unsigned lint_manifest(const struct gw_manifest *m, size_t n_sigs, time_t now)
{
        unsigned n = 0;
        char when[32];

        if (n_sigs == 0)
                n += lint_warn("not signed yet: '%s sign --key KEY FILE'", prog);
        if (m->sequence == 0)
                n += lint_warn("sequence: 0 leaves no room below; start at 1");
        format_time(m->expires, when);
        if (m->expires <= now)
                n += lint_warn("expires: %s is already past: every gateway refuses it", when);
        else if (m->expires - now > 366 * 86400)
                n += lint_warn("expires: %s is more than a year away: the manifest can be "
                               "replayed to a gateway that missed later ones until then",
                               when);
        if (m->policy.allow_downgrade)
                n += lint_warn("policy.allow-downgrade: true: nodes may be given older versions");
        for (size_t i = 0; i < m->n_images; i++) {
                const struct gw_manifest_image *a = &m->images[i];

                if (is_relative_url(a->url) && a->n_mirrors == 0)
                        n += lint_warn("images[%zu].url: %s is relative and there are no mirrors: "
                                       "it resolves only against the manifest's own URL (a "
                                       "manifest sent inline over MQTT has none)",
                                       i, a->url);
                for (size_t k = 0; k < a->n_targets; k++)
                        for (size_t l = 0; l < k; l++)
                                if (strcmp(a->targets[k], a->targets[l]) == 0)
                                        n += lint_warn("images[%zu].targets.nodes: %s is listed "
                                                       "twice",
                                                       i, a->targets[k]);
                for (size_t j = 0; j < i; j++) {
                        const struct gw_manifest_image *b = &m->images[j];
                        bool a_class = a->target_kind == GW_TARGET_CLASS;
                        bool b_class = b->target_kind == GW_TARGET_CLASS;

                        if (a_class != b_class)
                                continue;
                        for (size_t k = 0; k < a->n_targets; k++)
                                for (size_t l = 0; l < b->n_targets; l++)
                                        if (strcmp(a->targets[k], b->targets[l]) == 0)
                                                n += lint_warn(
                                                    "images[%zu].targets: %s %s is also a target "
                                                    "of images[%zu] (%s): it would be flashed "
                                                    "twice",
                                                    i, a_class ? "class" : "node", a->targets[k], j,
                                                    b->name);
                }
        }
        return n;
}

static int cmd_lint(int argc, char **argv)
{
        static const struct option opts[] = {
            {"now", required_argument, NULL, 'N'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_error err = {0};
        struct gw_manifest *m = NULL;
        struct gw_trust *t = NULL;
        const char *type = NULL, *file;
        size_t len = 0, body_len, sigs_off, n_sigs = 0;
        char(*ids)[65] = NULL;
        char *buf = NULL, *doc = NULL;
        time_t now = time(NULL);
        unsigned warnings = 0;
        int c, r, ret = EXIT_FAILURE;

        while ((c = getopt_long(argc, argv, "N:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'N':
                        if (parse_when(optarg, time(NULL), &now) < 0)
                                return usage_error("lint: bad --now");
                        break;
                case 'h':
                        printf("Usage: %s lint [--now WHEN] FILE\n\n"
                               "Checks a manifest or gatewayd/keys document without its\n"
                               "signatures: YAML and schema (errors: exit 1 with \"error: <code>:\n"
                               "<message>\"), then sanity warnings (exit 0): not signed, already\n"
                               "expired or expiring far away, sequence 0, an image's relative URL\n"
                               "without mirrors, a node or class targeted twice, downgrades\n"
                               "allowed, a threshold of 1 among several keys.\n",
                               prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("lint: bad option");
                }
        }
        if (optind + 1 != argc)
                return usage_error("lint: needs one FILE");
        file = argv[optind];
        r = read_all(file, GW_MANIFEST_MAX_SIZE_DEFAULT, &buf, &len);
        if (r == -EFBIG) {
                err = (struct gw_manifest_error){.code = GW_ERR_MANIFEST_TOO_LARGE};
                snprintf(err.message, sizeof(err.message), "%s: more than %zu bytes", file,
                         GW_MANIFEST_MAX_SIZE_DEFAULT);
                return fail_code(&err);
        }
        if (r < 0)
                return fail_errno(r, file);
        r = gw_document_type(buf, len, &type, &err);
        if (r < 0) {
                fail_code(&err);
                goto out;
        }
        body_len = body_of(buf, len, &n_sigs);
        if (body_len < len) {
                /* A signatures document is there: it must be well formed. */
                r = gw_envelope_split(buf, len, &body_len, &sigs_off);
                if (r >= 0)
                        r = gw_envelope_keyids(buf + sigs_off, len - sigs_off, &ids, &n_sigs, &err);
                if (r < 0) {
                        fail_code(&err);
                        goto out;
                }
        }

        if (strcmp(type, GW_KEYS_PAYLOAD_TYPE) == 0) {
                doc = malloc(body_len + 32);
                if (!doc) {
                        fail_errno(-ENOMEM, "lint");
                        goto out;
                }
                memcpy(doc, buf, body_len);
                memcpy(doc + body_len, "---\nsignatures: []\n", 20);
                r = gw_trust_load_buffer(doc, body_len + 19, 0, &t, &err);
                if (r < 0) {
                        fail_code(&err);
                        goto out;
                }
                if (gw_trust_threshold(t) == 1 && gw_trust_key_count(t) > 1)
                        warnings += lint_warn("threshold: 1 of %zu keys: any one of them alone "
                                              "signs for the gateway",
                                              gw_trust_key_count(t));
                if (n_sigs == 0 && gw_trust_version(t) > 1)
                        warnings += lint_warn("not signed yet: a rotation to version %llu needs a "
                                              "threshold of the current keys and of its own",
                                              (unsigned long long) gw_trust_version(t));
        } else {
                r = gw_manifest_parse_body(buf, body_len, &m, &err);
                if (r < 0) {
                        fail_code(&err);
                        if (strstr(err.message, "images: expected 1 to"))
                                fprintf(stderr, "hint: add images with '%s add-image'\n", prog);
                        goto out;
                }
                warnings = lint_manifest(m, n_sigs, now);
        }
        if (warnings)
                printf("%s: valid %s, %u warning(s)\n", file, m ? "manifest" : "keys document",
                       warnings);
        else
                printf("%s: valid %s, no warnings\n", file, m ? "manifest" : "keys document");
        ret = EXIT_SUCCESS;
out:
        gw_manifest_free(m);
        gw_trust_free(t);
        free(ids);
        free(doc);
        free(buf);
        return ret;
}

/* ---- verify a keys document as a rotation ---- */

static int verify_rotation(const struct gw_trust *trust, const char *file, const char *buf,
                           size_t len, size_t max_size, bool quiet)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *next = NULL;
        char(*ids)[65] = NULL;
        size_t body_len, sigs_off, n = 0;
        int r;

        if (!quiet) {
                printf("%s: keys rotation of trust v%llu, threshold %u of %zu key(s)\n", file,
                       (unsigned long long) gw_trust_version(trust), gw_trust_threshold(trust),
                       gw_trust_key_count(trust));
                if (gw_envelope_split(buf, len, &body_len, &sigs_off) >= 0 &&
                    gw_envelope_keyids(buf + sigs_off, len - sigs_off, &ids, &n, &err) >= 0)
                        for (size_t i = 0; i < n; i++) {
                                bool current = false;

                                for (size_t k = 0; k < gw_trust_key_count(trust); k++)
                                        current |= strcmp(gw_trust_keyid(trust, k), ids[i]) == 0;
                                printf("  %-17s %-7s %.16s...: %s\n", "signer", "listed", ids[i],
                                       current ? "a current key" : "not a current key");
                        }
                free(ids);
        }
        fflush(stdout);
        r = gw_trust_rotate(trust, buf, len, max_size, &next, &err);
        if (r < 0) {
                if (!quiet)
                        print_check(NULL, "rotation", err.code, err.message);
                return fail_code(&err);
        }
        if (!quiet) {
                printf("  %-17s %-7s version %llu -> %llu; signed by a threshold of the current "
                       "and of the new keys\n",
                       "rotation", "ok", (unsigned long long) gw_trust_version(trust),
                       (unsigned long long) gw_trust_version(next));
                printf("  new trust: threshold %u of %zu key(s)\n", gw_trust_threshold(next),
                       gw_trust_key_count(next));
                for (size_t k = 0; k < gw_trust_key_count(next); k++)
                        printf("    %s %s\n", gw_trust_keyid(next, k),
                               gw_trust_key_type(next, k) == GW_KEY_ED25519 ? "ed25519" : "p256");
                printf("valid\n");
        }
        gw_trust_free(next);
        return EXIT_SUCCESS;
}

static int help(FILE *f)
{
        fprintf(f,
                "Usage: %s COMMAND [OPTIONS]\n\n"
                "Commands:\n"
                "  keygen --type ed25519|p256 --out NAME   make a signing key pair\n"
                "  init [--id ID] [--sequence N] [--expires WHEN] [--out FILE]\n"
                "                                          write a commented template manifest\n"
                "  add-image IMAGE --name N --version V (--node X | --nodes A,B | --class C)\n"
                "            --protocol P [--option K=V]... [--hardware K=V]... [--url U]\n"
                "            [--mirror U]... MANIFEST      append an image (size, sha256)\n"
                "  lint FILE                               schema and sanity warnings\n"
                "  sign --key NAME FILE                    add or replace NAME's signature\n"
                "  verify (--trust KEYS.yaml | --key NAME.pub...) [--threshold N]\n"
                "         [--state DIR] [--now WHEN] FILE  check FILE as gatewayd would (a\n"
                "                                          keys FILE: as a rotation of --trust)\n"
                "  show [--json] FILE                      print a manifest\n"
                "  keys-init --key A.pub... --threshold N [--version V] [--out KEYS.yaml]\n"
                "                                          write a gatewayd/keys document\n"
                "  --version                               print the version\n\n"
                "'%s COMMAND --help' describes each command. Exit status: 0 success,\n"
                "1 invalid manifest or failure, 2 usage error.\n",
                prog, prog);
        return f == stdout ? EXIT_SUCCESS : EXIT_USAGE;
}

int main(int argc, char **argv)
{
        static const struct {
                const char *name;
                int (*run)(int argc, char **argv);
        } commands[] = {
            {"keygen", cmd_keygen}, {"sign", cmd_sign},           {"verify", cmd_verify},
            {"show", cmd_show},     {"init", cmd_init},           {"add-image", cmd_add_image},
            {"lint", cmd_lint},     {"keys-init", cmd_keys_init},
        };

        if (argc < 2)
                return help(stderr);
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
            strcmp(argv[1], "help") == 0)
                return help(stdout);
        if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
                printf("gwmanifest %s\n", GW_VERSION);
                return EXIT_SUCCESS;
        }
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(argv[1], commands[i].name) == 0)
                        return commands[i].run(argc - 1, argv + 1);
        return usage_error("unknown command '%s'", argv[1]);
}
