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

#include "gw/error.h"
#include "gw/manifest.h"
#include "gw/options.h"

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
        char *priv = NULL, *pub = NULL, *pub_path = NULL;
        bool force = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "t:o:fh", opts, NULL)) >= 0) {
                switch (c) {
                case 't':
                        if (strcmp(optarg, "ed25519") == 0)
                                type = GW_KEY_ED25519;
                        else if (strcmp(optarg, "p256") == 0)
                                type = GW_KEY_P256;
                        else
                                return usage_error("keygen: --type must be ed25519 or p256");
                        break;
                case 'o':
                        out = optarg;
                        break;
                case 'f':
                        force = true;
                        break;
                case 'h':
                        printf("Usage: %s keygen --type ed25519|p256 --out NAME [--force]\n\n"
                               "Writes NAME (the private key, PKCS#8 PEM, mode 0600) and NAME.pub\n"
                               "(the public key, SubjectPublicKeyInfo PEM) and prints the keyid.\n"
                               "Existing files are kept unless --force is given.\n",
                               prog);
                        return EXIT_SUCCESS;
                default:
                        return usage_error("keygen: bad option");
                }
        }
        if (!type || !out || optind != argc)
                return usage_error("keygen: needs --type and --out, and no other argument");

        r = gw_signer_generate(type, &s);
        if (r < 0)
                return fail_errno(r, "key generation failed");
        r = gw_signer_private_pem(s, &priv);
        if (r >= 0)
                r = gw_signer_public_pem(s, &pub);
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
        printf("%s\n", gw_signer_keyid(s));
out:
        if (priv)
                explicit_bzero(priv, strlen(priv));
        free(priv);
        free(pub);
        free(pub_path);
        gw_signer_free(s);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
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
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct gw_manifest_verify_params p = {.report = print_check};
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
        while ((c = getopt_long(argc, argv, "t:k:T:s:H:m:qh", opts, NULL)) >= 0) {
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
                case 'h':
                        printf(
                            "Usage: %s verify (--trust KEYS.yaml | --key NAME.pub... "
                            "[--threshold N])\n"
                            "          [--state DIR] [--hardware ID] [--max-size BYTES] "
                            "[--quiet] FILE\n\n"
                            "Checks FILE as gatewayd would and prints each check. --trust takes\n"
                            "a gatewayd/keys document (its threshold applies); --key takes\n"
                            "public keys (threshold 1 unless --threshold). --state reads the\n"
                            "last accepted sequence and trusted time from DIR/manifest-state\n"
                            "(read only). --hardware checks gateway.hardware.\n"
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
        p.now = time(NULL);
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

static void format_time(time_t t, char ret[static 32])
{
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(ret, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(ret, 32, "%lld", (long long) t);
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

static int help(FILE *f)
{
        fprintf(f,
                "Usage: %s COMMAND [OPTIONS]\n\n"
                "Commands:\n"
                "  keygen --type ed25519|p256 --out NAME   make a signing key pair\n"
                "  sign --key NAME FILE                    add or replace NAME's signature\n"
                "  verify (--trust KEYS.yaml | --key NAME.pub...) [--state DIR] FILE\n"
                "                                          check FILE as gatewayd would\n"
                "  show [--json] FILE                      print a manifest\n\n"
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
            {"keygen", cmd_keygen},
            {"sign", cmd_sign},
            {"verify", cmd_verify},
            {"show", cmd_show},
        };

        if (argc < 2)
                return help(stderr);
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
            strcmp(argv[1], "help") == 0)
                return help(stdout);
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(argv[1], commands[i].name) == 0)
                        return commands[i].run(argc - 1, argv + 1);
        return usage_error("unknown command '%s'", argv[1]);
}
