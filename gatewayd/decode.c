/* The image decoder (see decode.h): one bounded step per turn of the loop, from the fetched
 * blob through AES-256-GCM (OpenSSL) and zstd (libzstd, with the base image as a referenced
 * prefix for a delta) into the mapped output file. libzstd's and OpenSSL's errors become a
 * code and a message here and nowhere else. */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_d_stableOutBuffer */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "decode.h"
#include "gw/log.h"

struct gw_decode {
        struct gw_decode_params p;
        struct gw_source *timer;
        int in_fd;
        uint64_t in_off;   /* input bytes consumed */
        uint64_t body_end; /* where the ciphertext ends (the tag follows), or in_size */
        uint8_t *out;      /* the mapped output file */
        uint64_t out_pos;
        uint64_t hashed;  /* output bytes hashed so far */
        const void *base; /* the mapped base image (a delta), or NULL */
        ZSTD_DCtx *zstd;
        bool frame_done; /* the last zstd call ended a frame (0 returned) */
        EVP_CIPHER_CTX *cipher;
        EVP_MD_CTX *sha;
        uint8_t *in_buf, *plain; /* one step's input, and its plaintext */
};

static void step_done(struct gw_decode *d)
{
        if (d->out && d->out != MAP_FAILED)
                munmap(d->out, d->p.out_size);
        d->out = NULL;
        if (d->base && d->base != MAP_FAILED)
                munmap((void *) d->base, d->p.base_size);
        d->base = NULL;
        if (d->in_fd >= 0)
                close(d->in_fd);
        d->in_fd = -1;
        ZSTD_freeDCtx(d->zstd);
        d->zstd = NULL;
        EVP_CIPHER_CTX_free(d->cipher);
        d->cipher = NULL;
        EVP_MD_CTX_free(d->sha);
        d->sha = NULL;
        OPENSSL_cleanse(d->p.key, sizeof(d->p.key));
        free(d->in_buf);
        free(d->plain);
        d->in_buf = d->plain = NULL;
}

struct gw_decode *gw_decode_free(struct gw_decode *d)
{
        if (!d)
                return NULL;
        gw_source_free(d->timer);
        step_done(d);
        free(d);
        return NULL;
}

/* Ends the decode with an error; d is freed by the caller's finished() or later. */
static void fail(struct gw_decode *d, int r, enum gw_error code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct gw_decode *d, int r, enum gw_error code, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_source_set_time(d->timer, 0);
        step_done(d);
        d->p.finished(d->p.userdata, r, code, msg, NULL, 0);
}

/* Hashes what the step wrote. */
static int hash_new(struct gw_decode *d)
{
        if (d->out_pos > d->hashed &&
            EVP_DigestUpdate(d->sha, d->out + d->hashed, d->out_pos - d->hashed) != 1)
                return -EIO;
        d->hashed = d->out_pos;
        return 0;
}

/* Puts n plaintext bytes into the output: through zstd, or as they are. */
static int emit(struct gw_decode *d, const uint8_t *buf, size_t n)
{
        ZSTD_inBuffer in = {buf, n, 0};

        if (!d->zstd) {
                if (n > d->p.out_size - d->out_pos) {
                        fail(d, -EFBIG, GW_ERR_IMAGE_SIZE_MISMATCH,
                             "decodes to more than the %llu bytes the manifest says",
                             (unsigned long long) d->p.out_size);
                        return -EFBIG;
                }
                memcpy(d->out + d->out_pos, buf, n);
                d->out_pos += n;
                return 0;
        }
        while (in.pos < in.size) {
                /* The same output buffer every call, as ZSTD_d_stableOutBuffer requires: zstd
                 * then keeps no window of its own. */
                ZSTD_outBuffer out = {d->out, (size_t) d->p.out_size, (size_t) d->out_pos};
                size_t r = ZSTD_decompressStream(d->zstd, &out, &in);

                d->out_pos = out.pos;
                if (ZSTD_isError(r)) {
                        ZSTD_ErrorCode e = ZSTD_getErrorCode(r);

                        if (e == ZSTD_error_dstSize_tooSmall) {
                                fail(d, -EFBIG, GW_ERR_IMAGE_SIZE_MISMATCH,
                                     "decompresses to more than the %llu bytes the manifest "
                                     "says",
                                     (unsigned long long) d->p.out_size);
                                return -EFBIG;
                        }
                        fail(d, -EBADMSG, GW_ERR_DECODE_FAILED, "%s does not decompress: %s",
                             d->base ? "the delta" : "the zstd stream", ZSTD_getErrorName(r));
                        return -EBADMSG;
                }
                d->frame_done = r == 0;
                if (r != 0 && out.pos == out.size && in.pos < in.size) {
                        fail(d, -EFBIG, GW_ERR_IMAGE_SIZE_MISMATCH,
                             "decompresses to more than the %llu bytes the manifest says",
                             (unsigned long long) d->p.out_size);
                        return -EFBIG;
                }
        }
        return 0;
}

/* The input ended: the tag must authenticate, the last frame must be whole, the size exact. */
static void finish(struct gw_decode *d)
{
        uint8_t digest[32];
        unsigned int dlen = 0;
        int len = 0;

        if (d->cipher) {
                uint8_t tag[GW_IMAGE_TAG_SIZE];
                ssize_t n = pread(d->in_fd, tag, sizeof(tag), (off_t) d->body_end);

                if (n != (ssize_t) sizeof(tag) ||
                    EVP_CIPHER_CTX_ctrl(d->cipher, EVP_CTRL_GCM_SET_TAG, sizeof(tag), tag) != 1 ||
                    EVP_DecryptFinal_ex(d->cipher, NULL, &len) != 1) {
                        fail(d, -EBADMSG, GW_ERR_DECRYPT_FAILED,
                             "the ciphertext does not authenticate (wrong key, or altered)");
                        return;
                }
        }
        if (d->zstd && !d->frame_done) {
                fail(d, -EBADMSG, GW_ERR_DECODE_FAILED,
                     "%s is truncated: it ends inside a zstd frame",
                     d->base ? "the delta" : "the zstd stream");
                return;
        }
        if (hash_new(d) < 0 || EVP_DigestFinal_ex(d->sha, digest, &dlen) != 1 || dlen != 32) {
                fail(d, -EIO, GW_ERR_INTERNAL, "hashing the image failed");
                return;
        }
        if (d->out_pos != d->p.out_size) {
                uint64_t got = d->out_pos;

                fail(d, -EBADMSG, GW_ERR_IMAGE_SIZE_MISMATCH,
                     "decodes to %llu bytes, the manifest says %llu", (unsigned long long) got,
                     (unsigned long long) d->p.out_size);
                return;
        }
        gw_source_set_time(d->timer, 0);
        step_done(d);
        d->p.finished(d->p.userdata, 0, GW_ERR_NONE, NULL, digest, d->p.out_size);
}

static int on_step(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_decode *d = userdata;
        size_t want = GW_DECODE_STEP;
        ssize_t n;

        if (d->in_off >= d->body_end) {
                finish(d);
                return 0;
        }
        if (want > d->body_end - d->in_off)
                want = (size_t) (d->body_end - d->in_off);
        n = pread(d->in_fd, d->in_buf, want, (off_t) d->in_off);
        if (n <= 0) {
                fail(d, n < 0 ? -errno : -EIO, GW_ERR_INTERNAL, "reading the download: %s",
                     n < 0 ? strerror(errno) : "it is shorter than it was");
                return 0;
        }
        d->in_off += (uint64_t) n;
        if (d->cipher) {
                int len = 0;

                if (EVP_DecryptUpdate(d->cipher, d->plain, &len, d->in_buf, (int) n) != 1 ||
                    len != n) {
                        fail(d, -EIO, GW_ERR_INTERNAL, "decrypting failed");
                        return 0;
                }
                if (emit(d, d->plain, (size_t) len) < 0)
                        return 0;
        } else if (emit(d, d->in_buf, (size_t) n) < 0) {
                return 0;
        }
        if (hash_new(d) < 0) {
                fail(d, -EIO, GW_ERR_INTERNAL, "hashing the image failed");
                return 0;
        }
        gw_source_set_time(d->timer, gw_now_ms());
        return 0;
}

static int setup(struct gw_decode *d)
{
        const struct gw_decode_params *p = &d->p;
        int r;

        d->in_fd = open(p->in_path, O_RDONLY | O_CLOEXEC);
        if (d->in_fd < 0)
                return -errno;
        d->body_end = p->in_size;
        if (p->encrypted) {
                if (p->in_size < GW_IMAGE_TAG_SIZE)
                        return -EBADMSG;
                d->body_end = p->in_size - GW_IMAGE_TAG_SIZE;
                d->cipher = EVP_CIPHER_CTX_new();
                if (!d->cipher)
                        return -ENOMEM;
                if (EVP_DecryptInit_ex(d->cipher, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
                    EVP_CIPHER_CTX_ctrl(d->cipher, EVP_CTRL_GCM_SET_IVLEN, GW_IMAGE_NONCE_SIZE,
                                        NULL) != 1 ||
                    EVP_DecryptInit_ex(d->cipher, NULL, NULL, p->key, p->nonce) != 1)
                        return -EIO;
                {
                        int len = 0;

                        if (EVP_DecryptUpdate(d->cipher, NULL, &len, p->aad, sizeof(p->aad)) != 1)
                                return -EIO;
                }
        }
        /* Blocks for the whole image now, so that a full disk is an error here and not a
         * SIGBUS while writing through the mapping. */
        r = posix_fallocate(p->out_fd, 0, (off_t) p->out_size);
        if (r != 0)
                return -r;
        d->out = mmap(NULL, p->out_size, PROT_READ | PROT_WRITE, MAP_SHARED, p->out_fd, 0);
        if (d->out == MAP_FAILED) {
                d->out = NULL;
                return -errno;
        }
        if (p->zstd) {
                d->zstd = ZSTD_createDCtx();
                if (!d->zstd)
                        return -ENOMEM;
                if (ZSTD_isError(ZSTD_DCtx_setParameter(d->zstd, ZSTD_d_stableOutBuffer, 1)) ||
                    ZSTD_isError(
                        ZSTD_DCtx_setParameter(d->zstd, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX)))
                        return -EIO;
                d->frame_done = true; /* no input yet: nothing unfinished */
        }
        if (p->base_path) {
                int fd = open(p->base_path, O_RDONLY | O_CLOEXEC);
                void *m;

                if (fd < 0)
                        return -errno;
                m = mmap(NULL, p->base_size, PROT_READ, MAP_PRIVATE, fd, 0);
                close(fd);
                if (m == MAP_FAILED)
                        return -errno;
                d->base = m;
                if (!d->zstd ||
                    ZSTD_isError(ZSTD_DCtx_refPrefix(d->zstd, d->base, (size_t) p->base_size)))
                        return -EINVAL;
        }
        d->sha = EVP_MD_CTX_new();
        d->in_buf = malloc(GW_DECODE_STEP);
        d->plain = p->encrypted ? malloc(GW_DECODE_STEP) : NULL;
        if (!d->sha || !d->in_buf || (p->encrypted && !d->plain))
                return -ENOMEM;
        if (EVP_DigestInit_ex(d->sha, EVP_sha256(), NULL) != 1)
                return -EIO;
        return 0;
}

int gw_decode_start(struct gw_loop *loop, const struct gw_decode_params *p, struct gw_decode **ret)
{
        struct gw_decode *d;
        int r;

        if (!loop || !p || !p->in_path || !p->finished || p->out_fd < 0 || p->out_size == 0 ||
            p->out_size > SIZE_MAX || p->base_size > SIZE_MAX || (p->base_path && !p->zstd) ||
            (p->base_path && p->base_size == 0))
                return -EINVAL;
        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->p = *p;
        d->in_fd = -1;
        r = setup(d);
        if (r >= 0)
                r = gw_loop_add_timer(loop, gw_now_ms(), on_step, d, &d->timer);
        if (r < 0) {
                gw_decode_free(d);
                return r;
        }
        *ret = d;
        return 0;
}
