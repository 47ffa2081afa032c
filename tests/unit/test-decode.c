/* The image decoder (gatewayd/decode.c) on real files and a real loop: zstd, zstd patch-from
 * against a base (a delta), AES-256-GCM, and both together, each checked by the SHA-256 of
 * what came out; and the bad cases: a truncated stream, a stream that decodes to more than the
 * manifest says, a delta against the wrong base, a tampered ciphertext, a wrong key. The
 * inputs are made here with libzstd and OpenSSL, independently of the decoder. */
#define ZSTD_STATIC_LINKING_ONLY
#include <errno.h>
#include <fcntl.h>
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
#include <zstd.h>

#include "decode.h"
#include "gw/log.h"

static char dir[] = "/tmp/gw-test-decode.XXXXXX";

struct result {
        struct gw_loop *loop;
        bool done;
        int r;
        enum gw_error code;
        char message[256];
        uint8_t sha[32];
        uint64_t bytes;
};

static void on_finished(void *userdata, int result, enum gw_error code, const char *message,
                        const uint8_t sha256[32], uint64_t bytes)
{
        struct result *res = userdata;

        res->done = true;
        res->r = result;
        res->code = code;
        snprintf(res->message, sizeof(res->message), "%s", message ? message : "");
        if (sha256)
                memcpy(res->sha, sha256, 32);
        res->bytes = bytes;
}

static void sha256(const void *data, size_t n, uint8_t ret[32])
{
        unsigned int len = 0;

        assert_int_equal(EVP_Digest(data, n, ret, &len, EVP_sha256(), NULL), 1);
}

static char *write_file(const char *name, const void *data, size_t n)
{
        char *path;
        int fd;

        assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, n), (ssize_t) n);
        close(fd);
        return path;
}

/* A firmware-like image: repetitive structure with some noise, deterministic. */
static uint8_t *make_image(size_t n, unsigned seed)
{
        uint8_t *p = malloc(n);
        uint32_t x = seed * 2654435761u + 1;

        assert_non_null(p);
        for (size_t i = 0; i < n; i++) {
                x = x * 1103515245u + 12345u;
                p[i] = (i % 64 < 48) ? (uint8_t) (i / 64) : (uint8_t) (x >> 24);
        }
        return p;
}

static uint8_t *zstd_compress(const void *src, size_t n, const void *prefix, size_t prefix_n,
                              size_t *ret_n)
{
        ZSTD_CCtx *c = ZSTD_createCCtx();
        size_t cap = ZSTD_compressBound(n), r;
        uint8_t *out = malloc(cap);

        assert_non_null(c);
        assert_non_null(out);
        if (prefix) {
                assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, 27)));
                assert_false(ZSTD_isError(ZSTD_CCtx_refPrefix(c, prefix, prefix_n)));
        }
        r = ZSTD_compress2(c, out, cap, src, n);
        assert_false(ZSTD_isError(r));
        ZSTD_freeCCtx(c);
        *ret_n = r;
        return out;
}

/* AES-256-GCM of src with aad, the tag appended. */
static uint8_t *gcm_encrypt(const uint8_t key[32], const uint8_t nonce[12], const uint8_t aad[32],
                            const void *src, size_t n, size_t *ret_n)
{
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        uint8_t *out = malloc(n + 16);
        int len = 0, fin = 0;

        assert_non_null(out);
        assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce), 1);
        assert_int_equal(EVP_EncryptUpdate(c, NULL, &len, aad, 32), 1);
        assert_int_equal(EVP_EncryptUpdate(c, out, &len, src, (int) n), 1);
        assert_int_equal(EVP_EncryptFinal_ex(c, out + len, &fin), 1);
        assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + n), 1);
        EVP_CIPHER_CTX_free(c);
        *ret_n = n + 16;
        return out;
}

/* Decodes in_path into a fresh output file of out_size bytes; waits for the result. */
static void run(struct gw_decode_params *p, uint64_t out_size, struct result *res)
{
        struct gw_decode *d = NULL;
        char *out_path;
        int r;

        memset(res, 0, sizeof(*res));
        assert_true(asprintf(&out_path, "%s/out", dir) > 0);
        p->out_fd = open(out_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(p->out_fd >= 0);
        p->out_size = out_size;
        p->finished = on_finished;
        p->userdata = res;
        assert_int_equal(gw_loop_new(&res->loop), 0);
        r = gw_decode_start(res->loop, p, &d);
        assert_int_equal(r, 0);
        assert_false(res->done); /* never from inside the start */
        for (int i = 0; i < 10000 && !res->done; i++)
                assert_int_equal(gw_loop_iterate(res->loop, 1000), 0);
        assert_true(res->done);
        gw_decode_free(d);
        gw_loop_free(res->loop);
        close(p->out_fd);
        free(out_path);
}

static void expect_image(const struct result *res, const uint8_t *img, size_t n)
{
        uint8_t want[32];

        sha256(img, n, want);
        assert_int_equal(res->r, 0);
        assert_int_equal(res->bytes, n);
        assert_memory_equal(res->sha, want, 32);
}

static void test_zstd(void **state)
{
        size_t n = 3 * GW_DECODE_STEP + 12345, zn;
        uint8_t *img = make_image(n, 1), *z = zstd_compress(img, n, NULL, 0, &zn);
        struct gw_decode_params p = {.zstd = true};
        struct result res;

        assert_true(zn < n / 2);
        p.in_path = write_file("img.zst", z, zn);
        p.in_size = zn;
        run(&p, n, &res);
        expect_image(&res, img, n);

        /* Truncated: ends inside the frame. */
        p.in_size = zn - 100;
        run(&p, n, &res);
        assert_int_equal(res.code, GW_ERR_DECODE_FAILED);
        assert_non_null(strstr(res.message, "truncated"));

        /* The manifest says fewer bytes than it decompresses to. */
        p.in_size = zn;
        run(&p, n - 1, &res);
        assert_int_equal(res.code, GW_ERR_IMAGE_SIZE_MISMATCH);
        /* ... or more. */
        run(&p, n + 1, &res);
        assert_int_equal(res.code, GW_ERR_IMAGE_SIZE_MISMATCH);

        /* Not zstd at all. */
        free((char *) p.in_path);
        p.in_path = write_file("img.bin", img, 4096);
        p.in_size = 4096;
        run(&p, n, &res);
        assert_int_equal(res.code, GW_ERR_DECODE_FAILED);
        free((char *) p.in_path);
        free(img);
        free(z);
}

static void test_delta(void **state)
{
        size_t n = 2 * GW_DECODE_STEP + 777, zn, dn;
        uint8_t *base = make_image(n, 2), *img = malloc(n), *other = make_image(n, 3), *delta;
        struct gw_decode_params p = {.zstd = true};
        struct result res;

        assert_non_null(img);
        /* A typical change: a few patched regions and a shifted tail. */
        memcpy(img, base, n);
        memset(img + 1000, 0xab, 300);
        memcpy(img + 500000, base + 500100, n - 500100);
        delta = zstd_compress(img, n, base, n, &dn);
        free(zstd_compress(img, n, NULL, 0, &zn));
        assert_true(dn < zn / 10);

        p.in_path = write_file("img.patch", delta, dn);
        p.in_size = dn;
        p.base_path = write_file("base", base, n);
        p.base_size = n;
        run(&p, n, &res);
        expect_image(&res, img, n);

        /* Against the wrong base: it does not decode, or decodes to another image. */
        free((char *) p.base_path);
        p.base_path = write_file("other", other, n);
        run(&p, n, &res);
        if (res.r == 0) {
                uint8_t want[32];

                sha256(img, n, want);
                assert_memory_not_equal(res.sha, want, 32);
        } else {
                assert_true(res.code == GW_ERR_DECODE_FAILED ||
                            res.code == GW_ERR_IMAGE_SIZE_MISMATCH);
        }
        free((char *) p.in_path);
        free((char *) p.base_path);
        free(base);
        free(img);
        free(other);
        free(delta);
}

static void test_encrypted(void **state)
{
        size_t n = GW_DECODE_STEP + 4321, cn, zn, czn;
        uint8_t key[32], nonce[12], aad[32], *img = make_image(n, 4), *c, *z, *cz;
        struct gw_decode_params p = {.encrypted = true};
        struct result res;

        for (int i = 0; i < 32; i++)
                key[i] = (uint8_t) (i * 7 + 1);
        memset(nonce, 0x42, sizeof(nonce));
        sha256(img, n, aad);
        c = gcm_encrypt(key, nonce, aad, img, n, &cn);
        memcpy(p.key, key, 32);
        memcpy(p.nonce, nonce, 12);
        memcpy(p.aad, aad, 32);
        p.in_path = write_file("img.enc", c, cn);
        p.in_size = cn;
        run(&p, n, &res);
        expect_image(&res, img, n);

        /* One flipped bit anywhere: it does not authenticate. */
        c[cn / 2] ^= 0x01;
        free((char *) p.in_path);
        p.in_path = write_file("img.enc", c, cn);
        run(&p, n, &res);
        assert_int_equal(res.code, GW_ERR_DECRYPT_FAILED);
        c[cn / 2] ^= 0x01;

        /* The wrong key. */
        free((char *) p.in_path);
        p.in_path = write_file("img.enc", c, cn);
        p.key[0] ^= 0x80;
        run(&p, n, &res);
        assert_int_equal(res.code, GW_ERR_DECRYPT_FAILED);
        memcpy(p.key, key, 32);

        /* Bound to the image: another image's hash as AAD fails too. */
        p.aad[5] ^= 1;
        run(&p, n, &res);
        assert_int_equal(res.code, GW_ERR_DECRYPT_FAILED);
        memcpy(p.aad, aad, 32);

        /* Compressed, then encrypted. */
        z = zstd_compress(img, n, NULL, 0, &zn);
        cz = gcm_encrypt(key, nonce, aad, z, zn, &czn);
        free((char *) p.in_path);
        p.in_path = write_file("img.zst.enc", cz, czn);
        p.in_size = czn;
        p.zstd = true;
        run(&p, n, &res);
        expect_image(&res, img, n);
        free((char *) p.in_path);
        free(img);
        free(c);
        free(z);
        free(cz);
}

static void test_bad_params(void **state)
{
        struct gw_decode_params p = {.in_path = "/nonexistent",
                                     .in_size = 10,
                                     .out_fd = 0,
                                     .out_size = 10,
                                     .finished = on_finished};
        struct gw_decode *d = NULL;
        struct gw_loop *loop;

        assert_int_equal(gw_loop_new(&loop), 0);
        assert_int_equal(gw_decode_start(loop, &p, &d), -ENOENT);
        p.base_path = "/x"; /* a base without zstd */
        p.base_size = 10;
        assert_int_equal(gw_decode_start(loop, &p, &d), -EINVAL);
        assert_null(d);
        gw_loop_free(loop);
}

static int setup_dir(void **state)
{
        assert_non_null(mkdtemp(dir));
        return 0;
}

static int teardown_dir(void **state)
{
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_zstd),
            cmocka_unit_test(test_delta),
            cmocka_unit_test(test_encrypted),
            cmocka_unit_test(test_bad_params),
        };

        gw_log_set_max_level(getenv("GW_TEST_VERBOSE") ? LOG_DEBUG : LOG_EMERG);
        return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
