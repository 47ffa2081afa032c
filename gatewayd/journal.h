/* The journal: small state files in the state directory, each replaced atomically
 * (write to a temporary file, fsync, rename, fsync the directory), so that after a power
 * loss at any instant a file holds either its old or its new content. */
#pragma once

#include <stddef.h>

/* Creates dir/sub (and dir) with mode 0700 when missing. 0 or -errno. */
int gw_journal_mkdir(const char *dir, const char *sub);
/* Replaces dir/name with data. name may contain one '/' (a subdirectory that exists). */
int gw_journal_write(const char *dir, const char *name, const void *data, size_t len);
/* Reads dir/name (at most max bytes, NUL-terminated in *ret). -ENOENT when absent, -EFBIG. */
int gw_journal_read(const char *dir, const char *name, size_t max, char **ret, size_t *ret_len);
