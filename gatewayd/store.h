/* The image store: content-addressed by SHA-256 under <state-dir>/images. Images arrive in a
 * temporary file, are hashed while they stream, and are renamed into place only once their
 * size and hash match the signed manifest. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/codec.h"

struct gw_store;

int gw_store_open(const char *state_dir, struct gw_store **ret);
struct gw_store *gw_store_free(struct gw_store *s);

/* "<state-dir>/images/<hex>" in *ret (malloc'd). */
int gw_store_path(const struct gw_store *s, const uint8_t sha256[32], char **ret);
/* True when the image is in the store with this size and hash (it is re-hashed: storage can
 * rot, and nothing unverified reaches a node). */
bool gw_store_has(const struct gw_store *s, const uint8_t sha256[32], uint64_t size);
/* Opens a new temporary file for an image; *ret_path is malloc'd. */
int gw_store_begin(const struct gw_store *s, const uint8_t sha256[32], int *ret_fd,
                   char **ret_path);
/* Checks what was written (size and the hash the fetcher computed while it streamed), then
 * fsyncs and renames it into place. Removes the temporary file either way. -EFBIG /
 * -EBADMSG on a mismatch. Closes fd. */
int gw_store_commit(const struct gw_store *s, int fd, const char *tmp_path,
                    const uint8_t sha256[32], uint64_t size, const uint8_t got_sha256[32],
                    uint64_t got_size);
/* Drops a temporary file and closes fd. */
void gw_store_abort(int fd, const char *tmp_path);
