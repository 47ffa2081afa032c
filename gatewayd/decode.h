/* Turning a fetched blob into the image: AES-256-GCM decryption, zstd decompression, and zstd
 * patch-from against a base image (a delta), streamed in bounded steps on the loop straight
 * into the store's temporary file, hashed as it is written. Memory stays flat in the image's
 * size: the output and the delta's base are mapped files, the only buffers are one step's. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "gw/error.h"
#include "gw/loop.h"
#include "gw/manifest.h"

/* Input read per step of the loop. */
#define GW_DECODE_STEP (1024u * 1024u)

struct gw_decode;

struct gw_decode_params {
        const char *in_path; /* the fetched blob, already checked against its size and hash */
        uint64_t in_size;
        bool zstd;             /* the (decrypted) blob is zstd frames */
        const char *base_path; /* a delta: the base image the zstd frame refers to; or NULL */
        uint64_t base_size;
        bool encrypted; /* AES-256-GCM, the 16-byte tag after the ciphertext */
        uint8_t key[GW_IMAGE_KEY_SIZE];
        uint8_t nonce[GW_IMAGE_NONCE_SIZE];
        uint8_t aad[32];   /* the image's SHA-256, bound to the ciphertext */
        int out_fd;        /* the image goes here, from offset 0; stays the caller's */
        uint64_t out_size; /* exactly this many bytes must come out */
        /* Called once, from the loop, unless gw_decode_free() came first: result 0 with the
         * SHA-256 and size of what was written, or -errno with code (decrypt-failed,
         * decode-failed, image-size-mismatch, internal) and a message. */
        void (*finished)(void *userdata, int result, enum gw_error code, const char *message,
                         const uint8_t sha256[32], uint64_t bytes);
        void *userdata;
};

/* Starts decoding; nothing is called back from inside this call. The key is copied (and wiped
 * when the decode ends). 0 or -errno (-ENOSPC: the output cannot be allocated). */
int gw_decode_start(struct gw_loop *loop, const struct gw_decode_params *p, struct gw_decode **ret);
/* Stops a running decode without calling finished(). Accepts NULL. */
struct gw_decode *gw_decode_free(struct gw_decode *d);
