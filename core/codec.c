/* Encodings shared by the manifest library, the daemon and the tools: strict base64 (over
 * OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock) and lowercase hex. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include <openssl/evp.h>

#include "gw/codec.h"

static int b64_value(char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int gw_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_len)
{
        size_t pad = 0;
        uint8_t *out;
        int n;

        if (len == 0 || len % 4 != 0 || len > INT_MAX)
                return -EBADMSG;
        if (s[len - 1] == '=')
                pad++;
        if (s[len - 2] == '=')
                pad++;
        for (size_t i = 0; i < len - pad; i++)
                if (b64_value(s[i]) < 0)
                        return -EBADMSG;
        /* The bits a padded final group leaves over must be zero (one encoding only). */
        if (pad == 2 && (b64_value(s[len - 3]) & 0x0f) != 0)
                return -EBADMSG;
        if (pad == 1 && (b64_value(s[len - 2]) & 0x03) != 0)
                return -EBADMSG;

        out = malloc(len / 4 * 3 + 1);
        if (!out)
                return -ENOMEM;
        /* EVP_DecodeBlock counts padding as zero bytes; subtract it. */
        n = EVP_DecodeBlock(out, (const unsigned char *) s, (int) len);
        if (n < 0 || (size_t) n < pad) {
                free(out);
                return -EBADMSG;
        }
        *ret = out;
        *ret_len = (size_t) n - pad;
        return 0;
}

size_t gw_base64_decoded_size(const char *s, size_t len)
{
        size_t pad = 0;

        if (len < 4)
                return 0;
        if (s[len - 1] == '=')
                pad++;
        if (s[len - 2] == '=')
                pad++;
        return len / 4 * 3 - pad;
}

int gw_base64_encode(const uint8_t *data, size_t len, char **ret)
{
        char *out;

        if (len > INT_MAX / 2)
                return -EOVERFLOW;
        out = malloc((len + 2) / 3 * 4 + 1);
        if (!out)
                return -ENOMEM;
        (void) EVP_EncodeBlock((unsigned char *) out, data, (int) len);
        *ret = out;
        return 0;
}

void gw_hex(const uint8_t *data, size_t len, char *ret)
{
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < len; i++) {
                ret[2 * i] = digits[data[i] >> 4];
                ret[2 * i + 1] = digits[data[i] & 0x0f];
        }
        ret[2 * len] = '\0';
}
