/* Encodings shared by the manifest library, the daemon and the tools. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Strict standard base64 (RFC 4648 section 4): padded to a multiple of four, no whitespace,
 * '=' only at the end, unused bits zero, so that every byte string has exactly one encoding.
 * *ret is malloc'd. 0, -EBADMSG when s is not such base64, or -ENOMEM. */
int gw_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_len);
/* The bytes decode_len bytes of base64 of length len decode to, without decoding (len must
 * be a multiple of four): lets a caller refuse an oversized input before allocating. */
size_t gw_base64_decoded_size(const char *s, size_t len);
/* *ret is malloc'd and NUL-terminated. 0, -EOVERFLOW or -ENOMEM. */
int gw_base64_encode(const uint8_t *data, size_t len, char **ret);

/* Lowercase hex of len bytes into ret, which holds 2 * len + 1 bytes. */
void gw_hex(const uint8_t *data, size_t len, char *ret);
