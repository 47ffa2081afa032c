/* The content-addressed image store. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "store.h"

struct gw_store {
        char *dir; /* <state-dir>/images */
};

int gw_store_open(const char *state_dir, struct gw_store **ret)
{
        struct gw_store *s;
        int r;

        r = gw_journal_mkdir(state_dir, "images");
        if (r < 0)
                return r;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if (asprintf(&s->dir, "%s/images", state_dir) < 0) {
                free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

struct gw_store *gw_store_free(struct gw_store *s)
{
        if (s) {
                free(s->dir);
                free(s);
        }
        return NULL;
}

int gw_store_path(const struct gw_store *s, const uint8_t sha256[32], char **ret)
{
        char hex[65];

        gw_hex(sha256, 32, hex);
        return asprintf(ret, "%s/%s", s->dir, hex) < 0 ? -ENOMEM : 0;
}

static int hash_file(int fd, uint8_t out[32], uint64_t *ret_size)
{
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        uint8_t buf[65536];
        uint64_t total = 0;
        unsigned len = 0;
        int r = 0;

        if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(md);
                return -ENOMEM;
        }
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if (n == 0)
                        break;
                EVP_DigestUpdate(md, buf, (size_t) n);
                total += (uint64_t) n;
        }
        if (r == 0 && (EVP_DigestFinal_ex(md, out, &len) != 1 || len != 32))
                r = -EIO;
        EVP_MD_CTX_free(md);
        if (r == 0)
                *ret_size = total;
        return r;
}

bool gw_store_has(const struct gw_store *s, const uint8_t sha256[32], uint64_t size)
{
        uint8_t got[32];
        uint64_t got_size = 0;
        char *path = NULL;
        int fd, r;

        if (gw_store_path(s, sha256, &path) < 0)
                return false;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        free(path);
        if (fd < 0)
                return false;
        r = hash_file(fd, got, &got_size);
        close(fd);
        return r == 0 && got_size == size && memcmp(got, sha256, 32) == 0;
}

int gw_store_begin(const struct gw_store *s, const uint8_t sha256[32], int *ret_fd, char **ret_path)
{
        char hex[65], *path;
        int fd;

        gw_hex(sha256, 32, hex);
        if (asprintf(&path, "%s/.%s.XXXXXX", s->dir, hex) < 0)
                return -ENOMEM;
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) {
                int r = -errno;

                free(path);
                return r;
        }
        *ret_fd = fd;
        *ret_path = path;
        return 0;
}

void gw_store_abort(int fd, const char *tmp_path)
{
        if (fd >= 0)
                close(fd);
        if (tmp_path)
                unlink(tmp_path);
}

int gw_store_commit(const struct gw_store *s, int fd, const char *tmp_path,
                    const uint8_t sha256[32], uint64_t size, const uint8_t got_sha256[32],
                    uint64_t got_size)
{
        char *path = NULL;
        int r;

        if (got_size != size) {
                gw_store_abort(fd, tmp_path);
                return -EFBIG;
        }
        if (memcmp(got_sha256, sha256, 32) != 0) {
                gw_store_abort(fd, tmp_path);
                return -EBADMSG;
        }
        if (fsync(fd) < 0) {
                r = -errno;
                gw_store_abort(fd, tmp_path);
                return r;
        }
        close(fd);
        r = gw_store_path(s, sha256, &path);
        if (r < 0) {
                unlink(tmp_path);
                return r;
        }
        if (rename(tmp_path, path) < 0) {
                r = -errno;
                unlink(tmp_path);
                free(path);
                return r;
        }
        free(path);
        fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                fsync(fd);
                close(fd);
        }
        return 0;
}
