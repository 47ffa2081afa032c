/* Atomic replacement of small state files: the journal of deployments and the per-node
 * records. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"

int gw_journal_mkdir(const char *dir, const char *sub)
{
        char path[4096];

        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (!sub)
                return 0;
        if (snprintf(path, sizeof(path), "%s/%s", dir, sub) >= (int) sizeof(path))
                return -ENAMETOOLONG;
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int fsync_dir_of(const char *path)
{
        char copy[4096];
        int fd, r = 0;

        if (snprintf(copy, sizeof(copy), "%s", path) >= (int) sizeof(copy))
                return -ENAMETOOLONG;
        fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                r = -errno;
        close(fd);
        return r;
}

int gw_journal_write(const char *dir, const char *name, const void *data, size_t len)
{
        char path[4096], tmp[4200];
        const char *p = data;
        int fd, r = 0;

        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int) sizeof(path))
                return -ENAMETOOLONG;
        snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid());
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        while (len > 0) {
                ssize_t n = write(fd, p, len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -EIO;
                        break;
                }
                p += n;
                len -= (size_t) n;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return r;
        }
        return fsync_dir_of(path);
}

int gw_read_whole_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
        struct stat st;
        char *buf;
        size_t got = 0;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size > max) {
                close(fd);
                return S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
        }
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        while (got < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t) st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                got += (size_t) n;
        }
        close(fd);
        buf[got] = '\0';
        *ret = buf;
        if (ret_len)
                *ret_len = got;
        return 0;
}

int gw_journal_read(const char *dir, const char *name, size_t max, char **ret, size_t *ret_len)
{
        char path[4096];

        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int) sizeof(path))
                return -ENAMETOOLONG;
        return gw_read_whole_file(path, max, ret, ret_len);
}

/* A leftover of an interrupted write-then-rename, by the names this program gives them. */
static bool is_leftover(const char *name)
{
        const char *t = strstr(name, ".tmp.");
        size_t n = strlen(name);

        if (strcmp(name, ".manifest-state.tmp") == 0)
                return true;
        /* gw_journal_write(): "<name>.tmp.<pid>" */
        if (t && t > name && t[5] && strspn(t + 5, "0123456789") == strlen(t + 5))
                return true;
        /* gw_store_begin(): ".<64 hex digits>.<6 characters>" */
        return n == 1 + 64 + 1 + 6 && name[0] == '.' && name[65] == '.' &&
               strspn(name + 1, "0123456789abcdef") == 64;
}

int gw_journal_sweep(const char *dir, const char *sub)
{
        char path[4096];
        struct dirent *e;
        int removed = 0;
        DIR *d;

        if ((size_t) snprintf(path, sizeof(path), "%s%s%s", dir, sub ? "/" : "", sub ? sub : "") >=
            sizeof(path))
                return -ENAMETOOLONG;
        d = opendir(path);
        if (!d)
                return errno == ENOENT ? 0 : -errno;
        while ((e = readdir(d))) {
                if (!is_leftover(e->d_name))
                        continue;
                if (unlinkat(dirfd(d), e->d_name, 0) == 0)
                        removed++;
        }
        closedir(d);
        return removed;
}
