/* gwmanifest add-image's travel encodings: the image compressed with zstd, a zstd patch-from
 * delta against an older image, and AES-256-GCM encryption with the data key wrapped for each
 * gateway (manifests/image-key.c). Each writes its blob next to the image and returns what the
 * manifest says of it. The inverse is gatewayd/decode.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <zstd.h>

#include "gw/codec.h"
#include "gwmanifest-travel.h"

/* The level gwmanifest compresses at: slow to make, fast to decode, small to fetch. */
#define ZSTD_LEVEL 19
#define IMAGE_MAX  ((size_t) 4 << 30)

int gw_travel_read(const char *path, struct gw_travel_buf *ret)
{
        struct stat st;
        uint8_t *p;
        size_t done = 0;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                r = -errno;
        else if (!S_ISREG(st.st_mode))
                r = -EINVAL;
        else if ((uint64_t) st.st_size > IMAGE_MAX)
                r = -EFBIG;
        if (r < 0) {
                close(fd);
                return r;
        }
        p = malloc(st.st_size ? (size_t) st.st_size : 1);
        if (!p) {
                close(fd);
                return -ENOMEM;
        }
        while (done < (size_t) st.st_size) {
                ssize_t n = read(fd, p + done, (size_t) st.st_size - done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -EIO;
                        break;
                }
                done += (size_t) n;
        }
        close(fd);
        if (r < 0) {
                free(p);
                return r;
        }
        *ret = (struct gw_travel_buf){.data = p, .len = done};
        return 0;
}

void gw_travel_buf_done(struct gw_travel_buf *b)
{
        if (!b)
                return;
        free(b->data);
        *b = (struct gw_travel_buf){0};
}

int gw_travel_sha256(const struct gw_travel_buf *b, uint8_t ret[static 32], char ret_hex[static 65])
{
        unsigned int len = 0;

        if (EVP_Digest(b->data, b->len, ret, &len, EVP_sha256(), NULL) != 1 || len != 32)
                return -EIO;
        gw_hex(ret, 32, ret_hex);
        return 0;
}

/* zstd of src at ZSTD_LEVEL; with base, a patch-from frame that refers to it (the window
 * covers the base and the image, long-distance matching finds the moved parts). */
int gw_travel_zstd(const struct gw_travel_buf *src, const struct gw_travel_buf *base,
                   struct gw_travel_buf *ret)
{
        ZSTD_CCtx *c = ZSTD_createCCtx();
        size_t cap = ZSTD_compressBound(src->len), n;
        uint8_t *out = malloc(cap);
        int r = 0;

        if (!c || !out) {
                r = -ENOMEM;
                goto out;
        }
        if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, ZSTD_LEVEL)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)) ||
            ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(c, src->len))) {
                r = -EIO;
                goto out;
        }
        if (base) {
                size_t span = base->len > src->len ? base->len : src->len;
                int wlog = 10;

                while (wlog < 31 && ((size_t) 1 << wlog) < span)
                        wlog++;
                if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, wlog)) ||
                    ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_enableLongDistanceMatching, 1)) ||
                    ZSTD_isError(ZSTD_CCtx_refPrefix(c, base->data, base->len))) {
                        r = -EIO;
                        goto out;
                }
        }
        n = ZSTD_compress2(c, out, cap, src->data, src->len);
        if (ZSTD_isError(n)) {
                r = -EIO;
                goto out;
        }
        *ret = (struct gw_travel_buf){.data = out, .len = n};
        out = NULL;
out:
        ZSTD_freeCCtx(c);
        free(out);
        return r;
}

/* AES-256-GCM of src under key and nonce, the image's SHA-256 as AAD, the tag appended. */
int gw_travel_encrypt(const struct gw_travel_buf *src, const uint8_t key[static 32],
                      const uint8_t nonce[static 12], const uint8_t image_sha256[static 32],
                      struct gw_travel_buf *ret)
{
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        uint8_t *out = malloc(src->len + 16);
        size_t done = 0;
        int len = 0, ok;

        if (!c || !out) {
                EVP_CIPHER_CTX_free(c);
                free(out);
                return -ENOMEM;
        }
        ok = EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
             EVP_EncryptInit_ex(c, NULL, NULL, key, nonce) == 1 &&
             EVP_EncryptUpdate(c, NULL, &len, image_sha256, 32) == 1;
        /* In pieces: EVP takes an int length. */
        while (ok && done < src->len) {
                size_t piece = src->len - done > (1u << 30) ? (1u << 30) : src->len - done;

                ok = EVP_EncryptUpdate(c, out + done, &len, src->data + done, (int) piece) == 1 &&
                     (size_t) len == piece;
                done += piece;
        }
        ok = ok && EVP_EncryptFinal_ex(c, out + done, &len) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + src->len) == 1;
        EVP_CIPHER_CTX_free(c);
        if (!ok) {
                free(out);
                return -EIO;
        }
        *ret = (struct gw_travel_buf){.data = out, .len = src->len + 16};
        return 0;
}
