/* The journal: small state files in the state directory, each replaced atomically
 * (write to a temporary file, fsync, rename, fsync the directory), so that after a power
 * loss at any instant a file holds either its old or its new content. */
#pragma once

#include <stddef.h>

/* Creates dir/sub (and dir) with mode 0700 when missing. 0 or -errno. */
int gw_journal_mkdir(const char *dir, const char *sub);
/* Replaces dir/name with data. name may contain one '/' (a subdirectory that exists). */
int gw_journal_write(const char *dir, const char *name, const void *data, size_t len);
/* Reads the regular file path whole (at most max bytes, NUL-terminated in *ret; ret_len may
 * be NULL). -ENOENT when absent, -EFBIG when bigger, -EINVAL when not a regular file. */
int gw_read_whole_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* The same for dir/name. */
int gw_journal_read(const char *dir, const char *name, size_t max, char **ret, size_t *ret_len);
/* Removes what writes cut short by a crash or a power loss left behind in dir/sub (dir when
 * sub is NULL): the journal's "<name>.tmp.<pid>", the image store's ".<sha256>.XXXXXX" and
 * ".manifest-state.tmp". Nothing reads them, but a gateway that keeps losing power would pile
 * them up. Call it before anything writes there. Returns how many were removed, or -errno. */
int gw_journal_sweep(const char *dir, const char *sub);
