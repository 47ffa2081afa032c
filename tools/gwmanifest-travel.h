/* gwmanifest add-image's travel encodings (see gwmanifest-travel.c). */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* A whole file or blob in memory: gwmanifest runs on a build host, not on the gateway. */
struct gw_travel_buf {
        uint8_t *data;
        size_t len;
};

/* Reads a regular file (at most 4 GiB). 0 or -errno. */
int gw_travel_read(const char *path, struct gw_travel_buf *ret);
void gw_travel_buf_done(struct gw_travel_buf *b);
/* SHA-256 of b, raw and as lowercase hex. 0 or -EIO. */
int gw_travel_sha256(const struct gw_travel_buf *b, uint8_t ret[static 32],
                     char ret_hex[static 65]);
/* zstd of src; with base (not NULL), a patch-from delta against it. 0 or -ENOMEM/-EIO. */
int gw_travel_zstd(const struct gw_travel_buf *src, const struct gw_travel_buf *base,
                   struct gw_travel_buf *ret);
/* AES-256-GCM of src, the image's SHA-256 as additional data, the 16-byte tag appended. */
int gw_travel_encrypt(const struct gw_travel_buf *src, const uint8_t key[static 32],
                      const uint8_t nonce[static 12], const uint8_t image_sha256[static 32],
                      struct gw_travel_buf *ret);
