/* The two-document envelope: split on the last "---" line, DSSE pre-authentication encoding,
 * and the small helpers everything else shares (error filling, base64, hex, SHA-256). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "manifest-internal.h"

int gw_manifest_errno(enum gw_error code)
{
        switch (code) {
        case GW_ERR_NONE:
                return 0;
        case GW_ERR_MANIFEST_TOO_LARGE:
                return -EFBIG;
        case GW_ERR_THRESHOLD_NOT_MET:
        case GW_ERR_KEYS_ROTATION_INVALID:
                return -EKEYREJECTED;
        case GW_ERR_EXPIRED:
                return -EKEYEXPIRED;
        case GW_ERR_SEQUENCE_ROLLBACK:
        case GW_ERR_DOWNGRADE:
                return -ESTALE;
        case GW_ERR_GATEWAY_INCOMPATIBLE:
        case GW_ERR_NODE_INCOMPATIBLE:
                return -ENODEV;
        case GW_ERR_INTERNAL:
                return -ENOMEM;
        case GW_ERR_DECRYPT_FAILED:
                return -EKEYREJECTED;
        default:
                return -EBADMSG;
        }
}

int gw_manifest_fail(struct gw_manifest_error *err, enum gw_error code, const char *fmt, ...)
{
        if (err) {
                va_list ap;

                err->code = code;
                va_start(ap, fmt);
                (void) vsnprintf(err->message, sizeof(err->message), fmt, ap);
                va_end(ap);
        }
        return gw_manifest_errno(code);
}

int gw_envelope_split(const void *buf, size_t len, size_t *ret_body_len, size_t *ret_sigs)
{
        const char *p = buf;

        if (!buf && len > 0)
                return -EINVAL;
        /* Walk back over line starts: a line starts at 0 or after '\n'. The line must be
         * exactly "---", ended by '\n' or by the end of the buffer. */
        for (size_t i = len; i-- > 0;) {
                if (i > 0 && p[i - 1] != '\n')
                        continue;
                if (len - i < 3 || memcmp(p + i, "---", 3) != 0)
                        continue;
                if (len - i == 3) {
                        *ret_body_len = i;
                        *ret_sigs = len;
                        return 0;
                }
                if (p[i + 3] == '\n') {
                        *ret_body_len = i;
                        *ret_sigs = i + 4;
                        return 0;
                }
        }
        return -EBADMSG;
}

int gw_envelope_pae(const char *type, const void *body, size_t len, uint8_t **ret, size_t *ret_len)
{
        char head[128];
        size_t tlen = strlen(type);
        int n;
        uint8_t *pae;

        if (tlen > 64)
                return -EINVAL;
        n = snprintf(head, sizeof(head), "DSSEv1 %zu %s %zu ", tlen, type, len);
        if (n < 0 || (size_t) n >= sizeof(head))
                return -EOVERFLOW;
        if (len > SIZE_MAX - (size_t) n)
                return -EOVERFLOW;
        pae = malloc((size_t) n + len + 1);
        if (!pae)
                return -ENOMEM;
        memcpy(pae, head, (size_t) n);
        if (len > 0)
                memcpy(pae + n, body, len);
        *ret = pae;
        *ret_len = (size_t) n + len;
        return 0;
}

int gw_sha256(const void *data, size_t len, uint8_t ret[static 32])
{
        unsigned int n = 0;

        if (EVP_Digest(data, len, ret, &n, EVP_sha256(), NULL) != 1 || n != 32)
                return -EIO;
        return 0;
}

int gw_read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
        char *buf = NULL;
        size_t len = 0;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        buf = malloc(max + 2);
        if (!buf) {
                r = -ENOMEM;
                goto out;
        }
        /* Read up to max + 1 bytes: one more than allowed tells "too large". */
        while (len <= max) {
                ssize_t n = read(fd, buf + len, max + 1 - len);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        if (len > max) {
                r = -EFBIG;
                goto out;
        }
        buf[len] = '\0';
        *ret = buf;
        *ret_len = len;
        buf = NULL;
        r = 0;
out:
        free(buf);
        close(fd);
        return r;
}
