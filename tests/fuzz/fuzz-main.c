/* The corpus runner linked with each fuzz target when it is not built for libFuzzer: it runs
 * LLVMFuzzerTestOneInput() once on every regular file in the directories (or files) named on
 * the command line, in name order, so the seed corpora and the crash regressions run as
 * ordinary tests under any compiler. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/* libFuzzer's default -max_len is far below this; a seed larger than it is a mistake. */
#define INPUT_MAX (4 * 1024 * 1024)

static int read_file(int dirfd, const char *name, uint8_t **ret, size_t *ret_len)
{
        struct stat st;
        uint8_t *buf;
        size_t len = 0;
        int fd;

        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        if (!S_ISREG(st.st_mode) || st.st_size > INPUT_MAX) {
                close(fd);
                return S_ISREG(st.st_mode) ? -EFBIG : -EISDIR;
        }
        /* One byte more than the size, so that an empty file is not a NULL buffer. */
        buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        while (len < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t) st.st_size - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        int r = n < 0 ? -errno : -EIO;

                        free(buf);
                        close(fd);
                        return r;
                }
                len += (size_t) n;
        }
        close(fd);
        *ret = buf;
        *ret_len = len;
        return 0;
}

/* Runs the file name in dirfd (dir is only for messages; NULL when name is a whole path). */
static int run_one(int dirfd, const char *dir, const char *name)
{
        uint8_t *buf = NULL;
        size_t len = 0;
        int r;

        r = read_file(dirfd, name, &buf, &len);
        if (r < 0) {
                fprintf(stderr, "%s%s%s: %s\n", dir ? dir : "", dir ? "/" : "", name, strerror(-r));
                return r;
        }
        /* Printed first: when the target crashes, the last line names the input. */
        fprintf(stderr, "running %s%s%s (%zu bytes)\n", dir ? dir : "", dir ? "/" : "", name, len);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        return 0;
}

static int cmp_names(const void *a, const void *b)
{
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Runs every regular file in dir; returns how many, or -errno. */
static int run_dir(const char *dir)
{
        struct dirent *de;
        char **names = NULL;
        size_t n = 0, cap = 0;
        int r = 0, count = 0, dfd;
        DIR *d;

        d = opendir(dir);
        if (!d)
                return -errno;
        for (;;) {
                errno = 0;
                de = readdir(d);
                if (!de)
                        break;
                if (de->d_name[0] == '.')
                        continue;
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 64;
                        char **p = realloc(names, ncap * sizeof(*names));

                        if (!p) {
                                r = -ENOMEM;
                                goto out;
                        }
                        names = p;
                        cap = ncap;
                }
                names[n] = strdup(de->d_name);
                if (!names[n]) {
                        r = -ENOMEM;
                        goto out;
                }
                n++;
        }
        if (errno != 0) {
                r = -errno;
                goto out;
        }
        if (n > 0)
                qsort(names, n, sizeof(*names), cmp_names);
        dfd = dirfd(d);
        for (size_t i = 0; i < n; i++) {
                r = run_one(dfd, dir, names[i]);
                if (r < 0)
                        goto out;
                count++;
        }
        r = count;
out:
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        closedir(d);
        return r;
}

int main(int argc, char **argv)
{
        int total = 0;

        if (argc < 2) {
                fprintf(stderr, "Usage: %s DIR|FILE...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++) {
                struct stat st;
                int r;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
                        return 1;
                }
                if (S_ISDIR(st.st_mode))
                        r = run_dir(argv[i]);
                else
                        r = run_one(AT_FDCWD, NULL, argv[i]) < 0 ? -EIO : 1;
                if (r < 0) {
                        fprintf(stderr, "%s: %s\n", argv[i], strerror(-r));
                        return 1;
                }
                total += r;
        }
        /* An empty corpus tests nothing: fail rather than pass silently. */
        if (total == 0) {
                fprintf(stderr, "no inputs found in the given paths\n");
                return 1;
        }
        printf("%d inputs ran without a crash\n", total);
        return 0;
}
