/* The simulators' control channel (control.c): a FIFO made and removed, a regular file read from
 * its end and re-read when due, lines split across writes, overlong lines dropped, and the word
 * splitter. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#include "control.h"

struct lines {
        char got[8][GW_SIM_CONTROL_LINE_MAX];
        unsigned n;
};

static void on_line(char *line, void *userdata)
{
        struct lines *l = userdata;

        assert_true(l->n < 8);
        snprintf(l->got[l->n++], sizeof(l->got[0]), "%s", line);
}

struct dir {
        char path[64];
        char ctl[96];
};

static int dir_setup(void **state)
{
        struct dir *d = calloc(1, sizeof(*d));

        assert_non_null(d);
        snprintf(d->path, sizeof(d->path), "/tmp/gw-sim-control.XXXXXX");
        assert_non_null(mkdtemp(d->path));
        snprintf(d->ctl, sizeof(d->ctl), "%s/ctl", d->path);
        *state = d;
        return 0;
}

static int dir_teardown(void **state)
{
        struct dir *d = *state;

        unlink(d->ctl);
        rmdir(d->path);
        free(d);
        return 0;
}

static void put(const char *path, const char *text, int flags)
{
        int fd = open(path, O_WRONLY | O_CLOEXEC | flags, 0644);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
}

static void test_fifo_made_read_and_removed(void **state)
{
        struct dir *d = *state;
        struct gw_sim_control c = {0};
        struct lines l = {0};
        struct stat st;

        assert_int_equal(gw_sim_control_open(&c, d->ctl), 0);
        assert_int_equal(stat(d->ctl, &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
        assert_true(gw_sim_control_poll_fd(&c) >= 0);
        assert_false(gw_sim_control_rereads(&c));
        assert_int_equal(gw_sim_control_open(&c, d->ctl), -EBUSY);

        /* Nothing written: nothing read, and no end-of-file although no writer but ours. */
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 0);
        /* Two writers one after the other; a line split between them. */
        put(d->ctl, "drop-byte 3\nsil", O_NONBLOCK);
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 1);
        assert_string_equal(l.got[0], "drop-byte 3");
        put(d->ctl, "ent\n\n", O_NONBLOCK);
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 3);
        assert_string_equal(l.got[1], "silent");
        assert_string_equal(l.got[2], "");

        gw_sim_control_done(&c);
        assert_int_equal(stat(d->ctl, &st), -1);
        assert_int_equal(errno, ENOENT);
        assert_int_equal(gw_sim_control_poll_fd(&c), -1);
        gw_sim_control_done(&c); /* a closed channel is accepted */
}

static void test_fifo_not_ours_is_kept(void **state)
{
        struct dir *d = *state;
        struct gw_sim_control c = {0};
        struct stat st;

        assert_int_equal(mkfifo(d->ctl, 0600), 0);
        assert_int_equal(gw_sim_control_open(&c, d->ctl), 0);
        gw_sim_control_done(&c);
        assert_int_equal(stat(d->ctl, &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
}

static void test_file_read_from_its_end(void **state)
{
        struct dir *d = *state;
        struct gw_sim_control c = {0};
        struct lines l = {0};
        char big[GW_SIM_CONTROL_LINE_MAX + 10];

        put(d->ctl, "old 1\n", O_CREAT | O_TRUNC);
        assert_int_equal(gw_sim_control_open(&c, d->ctl), 0);
        assert_int_equal(gw_sim_control_poll_fd(&c), -1);
        assert_true(gw_sim_control_rereads(&c));
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 0);

        /* An overlong line is dropped whole; the next one is heard. */
        memset(big, 'x', sizeof(big) - 2);
        big[sizeof(big) - 2] = '\n';
        big[sizeof(big) - 1] = '\0';
        put(d->ctl, big, O_APPEND);
        put(d->ctl, "new 2\npart", O_APPEND);
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 1);
        assert_string_equal(l.got[0], "new 2");
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 1);
        put(d->ctl, "ial\n", O_APPEND);
        gw_sim_control_read(&c, on_line, &l);
        assert_int_equal(l.n, 2);
        assert_string_equal(l.got[1], "partial");

        gw_sim_control_done(&c);
        assert_int_equal(access(d->ctl, F_OK), 0); /* a file is never removed */
}

/* A regular file is re-read only when its re-read is due; a FIFO and a closed channel never need
 * one. */
static void test_file_reread_when_due(void **state)
{
        const uint64_t every = (uint64_t) GW_SIM_CONTROL_RECHECK_MS * 1000000u, t0 = 5000;
        struct dir *d = *state;
        struct gw_sim_control c = {0};
        struct lines l = {0};

        assert_true(gw_sim_control_reread(&c, t0, on_line, &l) == UINT64_MAX);
        put(d->ctl, "", O_CREAT | O_TRUNC);
        assert_int_equal(gw_sim_control_open(&c, d->ctl), 0);
        put(d->ctl, "one\n", O_APPEND);
        assert_true(gw_sim_control_reread(&c, t0, on_line, &l) == t0 + every);
        assert_int_equal(l.n, 1);
        assert_string_equal(l.got[0], "one");

        put(d->ctl, "two\n", O_APPEND);
        assert_true(gw_sim_control_reread(&c, t0 + every - 1, on_line, &l) == t0 + every);
        assert_int_equal(l.n, 1);
        assert_true(gw_sim_control_reread(&c, t0 + every, on_line, &l) == t0 + 2 * every);
        assert_int_equal(l.n, 2);
        assert_string_equal(l.got[1], "two");
        gw_sim_control_done(&c);
        unlink(d->ctl);

        assert_int_equal(gw_sim_control_open(&c, d->ctl), 0); /* a FIFO */
        assert_true(gw_sim_control_reread(&c, t0, on_line, &l) == UINT64_MAX);
        gw_sim_control_done(&c);
}

static void test_open_refuses_other_kinds(void **state)
{
        struct dir *d = *state;
        struct gw_sim_control c = {0};
        char missing[128];

        assert_int_equal(gw_sim_control_open(&c, d->path), -EINVAL);
        assert_false(c.open);
        snprintf(missing, sizeof(missing), "%s/no/such", d->path);
        assert_int_equal(gw_sim_control_open(&c, missing), -ENOENT);
        assert_int_equal(access(missing, F_OK), -1);
}

static void test_words(void **state)
{
        static const struct {
                const char *line;
                size_t max;
                int n;
                const char *w0, *w1;
        } v[] = {
            {"corrupt-block 3", 2, 2, "corrupt-block", "3"},
            {"\tsilent\r", 2, 1, "silent", NULL},
            {"", 2, 0, NULL, NULL},
            {"   ", 2, 0, NULL, NULL},
            {"# a comment", 2, 0, NULL, NULL},
            {"  #x y z", 1, 0, NULL, NULL},
            {"a #b", 2, 2, "a", "#b"},
            {"a b c", 2, -E2BIG, "a", "b"},
            {"@A error write:3", 3, 3, "@A", "error"},
        };

        (void) state;
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                char line[64], *w[3] = {NULL, NULL, NULL};

                snprintf(line, sizeof(line), "%s", v[i].line);
                assert_int_equal(gw_sim_control_words(line, w, v[i].max), v[i].n);
                if (v[i].w0)
                        assert_string_equal(w[0], v[i].w0);
                if (v[i].w1)
                        assert_string_equal(w[1], v[i].w1);
                if (v[i].n >= 0 && (size_t) v[i].n < v[i].max)
                        assert_null(w[v[i].n]);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_fifo_made_read_and_removed, dir_setup,
                                            dir_teardown),
            cmocka_unit_test_setup_teardown(test_fifo_not_ours_is_kept, dir_setup, dir_teardown),
            cmocka_unit_test_setup_teardown(test_file_read_from_its_end, dir_setup, dir_teardown),
            cmocka_unit_test_setup_teardown(test_file_reread_when_due, dir_setup, dir_teardown),
            cmocka_unit_test_setup_teardown(test_open_refuses_other_kinds, dir_setup, dir_teardown),
            cmocka_unit_test(test_words),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
