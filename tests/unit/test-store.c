/* The image store and the journal: images enter the store only with the size and hash the
 * manifest declared, a rotten stored image is not trusted, state files are replaced whole. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal.h"
#include "store.h"

struct fixture {
        char dir[64];
        struct gw_store *store;
};

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        snprintf(f->dir, sizeof(f->dir), "/tmp/gw-store.XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        if (gw_store_open(f->dir, &f->store) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;
        char cmd[128];

        gw_store_free(f->store);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        if (system(cmd) != 0)
                return -1;
        free(f);
        return 0;
}

static void sha256(const void *data, size_t n, uint8_t out[32])
{
        unsigned len = 0;

        assert_int_equal(EVP_Digest(data, n, out, &len, EVP_sha256(), NULL), 1);
}

/* Writes data through gw_store_begin/commit as the fetcher would, declaring want_sha and
 * want_size as the manifest would. */
static int put(struct fixture *f, const void *data, size_t n, const uint8_t want_sha[32],
               uint64_t want_size)
{
        uint8_t got[32];
        char *tmp = NULL;
        int fd = -1, r;

        r = gw_store_begin(f->store, want_sha, &fd, &tmp);
        assert_int_equal(r, 0);
        assert_int_equal(write(fd, data, n), (ssize_t) n);
        sha256(data, n, got);
        r = gw_store_commit(f->store, fd, tmp, want_sha, want_size, got, n);
        /* The temporary file is gone whatever the verdict. */
        assert_int_equal(access(tmp, F_OK), -1);
        free(tmp);
        return r;
}

static void test_commit_and_has(void **state)
{
        struct fixture *f = *state;
        static const char img[] = "firmware image bytes";
        uint8_t sha[32];
        char *path = NULL;

        sha256(img, sizeof(img), sha);
        assert_false(gw_store_has(f->store, sha, sizeof(img)));
        assert_int_equal(put(f, img, sizeof(img), sha, sizeof(img)), 0);
        assert_true(gw_store_has(f->store, sha, sizeof(img)));
        /* The declared size is part of the identity. */
        assert_false(gw_store_has(f->store, sha, sizeof(img) + 1));
        assert_int_equal(gw_store_path(f->store, sha, &path), 0);
        assert_non_null(strstr(path, "/images/"));
        free(path);
}

static void test_mismatches_refused(void **state)
{
        struct fixture *f = *state;
        static const char img[] = "the real image";
        static const char evil[] = "a different one";
        uint8_t sha[32], evil_sha[32];

        sha256(img, sizeof(img), sha);
        sha256(evil, sizeof(evil), evil_sha);
        /* Right size, wrong bytes. */
        assert_int_equal(put(f, evil, sizeof(img), sha, sizeof(img)), -EBADMSG);
        assert_false(gw_store_has(f->store, sha, sizeof(img)));
        /* Wrong size. */
        assert_int_equal(put(f, img, sizeof(img) - 1, sha, sizeof(img)), -EFBIG);
        assert_false(gw_store_has(f->store, sha, sizeof(img)));
}

static void test_rotten_image_not_trusted(void **state)
{
        struct fixture *f = *state;
        static const char img[] = "bits that will rot on the flash card";
        uint8_t sha[32];
        char *path = NULL;
        int fd;

        sha256(img, sizeof(img), sha);
        assert_int_equal(put(f, img, sizeof(img), sha, sizeof(img)), 0);
        assert_int_equal(gw_store_path(f->store, sha, &path), 0);
        fd = open(path, O_WRONLY);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, "X", 1, 3), 1);
        close(fd);
        free(path);
        assert_false(gw_store_has(f->store, sha, sizeof(img)));
}

static void test_journal_roundtrip(void **state)
{
        struct fixture *f = *state;
        char *buf = NULL;
        size_t len = 0;

        assert_int_equal(gw_journal_mkdir(f->dir, "deployments"), 0);
        assert_int_equal(gw_journal_read(f->dir, "deployments/x.json", 1024, &buf, &len), -ENOENT);
        assert_int_equal(gw_journal_write(f->dir, "deployments/x.json", "{\"a\":1}", 7), 0);
        assert_int_equal(gw_journal_read(f->dir, "deployments/x.json", 1024, &buf, &len), 0);
        assert_int_equal(len, 7);
        assert_string_equal(buf, "{\"a\":1}");
        free(buf);
        /* Replaced whole, never appended. */
        assert_int_equal(gw_journal_write(f->dir, "deployments/x.json", "{}", 2), 0);
        assert_int_equal(gw_journal_read(f->dir, "deployments/x.json", 1024, &buf, &len), 0);
        assert_string_equal(buf, "{}");
        free(buf);
        /* Bounded reads. */
        assert_int_equal(gw_journal_read(f->dir, "deployments/x.json", 1, &buf, &len), -EFBIG);
        /* A directory that does not exist is an error, not a crash. */
        assert_true(gw_journal_write(f->dir, "missing/x.json", "{}", 2) < 0);
}

/* What interrupted writes leave is swept, by the names the writers give it, and nothing else:
 * a real temporary file of the store (as gw_store_begin makes it, then abandoned), a journal
 * one, the manifest state's; kept: records, a dotfile, names that only look alike. */
static void test_sweep_leftovers(void **state)
{
        struct fixture *f = *state;
        static const char *const gone[] = {"x.json.tmp.123", ".manifest-state.tmp"};
        static const char *const kept[] = {"x.json",    ".keep",   "x.tmp.",
                                           "x.tmp.12a", ".tmp.1x", ".abc.XXXXXX"};
        uint8_t sha[32] = {1, 2, 3};
        char path[256], *tmp = NULL;
        int fd = -1;

        assert_int_equal(gw_store_begin(f->store, sha, &fd, &tmp), 0);
        close(fd); /* the power went: neither committed nor aborted */
        assert_int_equal(gw_journal_mkdir(f->dir, "nodes"), 0);
        for (size_t i = 0; i < 2; i++) {
                snprintf(path, sizeof(path), "%s/%s", f->dir, gone[i]);
                close(open(path, O_CREAT | O_WRONLY, 0600));
        }
        for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
                snprintf(path, sizeof(path), "%s/nodes/%s", f->dir, kept[i]);
                close(open(path, O_CREAT | O_WRONLY, 0600));
        }
        assert_int_equal(gw_journal_sweep(f->dir, "images"), 1);
        assert_int_equal(access(tmp, F_OK), -1);
        assert_int_equal(gw_journal_sweep(f->dir, NULL), 2);
        assert_int_equal(gw_journal_sweep(f->dir, "nodes"), 0);
        for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
                snprintf(path, sizeof(path), "%s/nodes/%s", f->dir, kept[i]);
                assert_int_equal(access(path, F_OK), 0);
        }
        assert_int_equal(gw_journal_sweep(f->dir, "no-such-dir"), 0);
        free(tmp);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_commit_and_has, setup, teardown),
            cmocka_unit_test_setup_teardown(test_mismatches_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_rotten_image_not_trusted, setup, teardown),
            cmocka_unit_test_setup_teardown(test_journal_roundtrip, setup, teardown),
            cmocka_unit_test_setup_teardown(test_sweep_leftovers, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
