/* Tests for the exec protocol plugin: the instance runs on the fake link's virtual clock (its
 * timer tick, timeouts and kill delays are virtual) while the tools are real child processes,
 * small /bin/sh scripts this test writes and exec spawns directly by path. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "fake-link.h"

extern const struct gw_protocol_ops gw_protocol_exec_ops;

/* Real time a test may take for one operation before it counts as hung. */
#define REAL_LIMIT_MS 20000

static char dir[256]; /* this run's scratch directory */

static uint64_t real_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000};

        nanosleep(&ts, NULL);
}

/* dir/name. */
static const char *path_of(const char *name)
{
        static char bufs[4][512];
        static unsigned next;
        char *b = bufs[next++ % 4];

        snprintf(b, sizeof(bufs[0]), "%s/%s", dir, name);
        return b;
}

/* Writes an executable /bin/sh script dir/name; returns its path. $D in body is the scratch
 * directory. */
static const char *tool(const char *name, const char *body)
{
        const char *p = path_of(name);
        FILE *f = fopen(p, "w");

        assert_non_null(f);
        fprintf(f, "#!/bin/sh\nD='%s'\n%s\n", dir, body);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(p, 0755), 0);
        return p;
}

static bool exists(const char *p)
{
        struct stat st;

        return stat(p, &st) == 0;
}

/* The whole of a small file, NUL-terminated, or NULL when it is missing. */
static char *slurp(const char *p, size_t *ret_len)
{
        static char buf[65536];
        FILE *f = fopen(p, "r");
        size_t n;

        if (!f)
                return NULL;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        if (ret_len)
                *ret_len = n;
        return buf;
}

/* Options from key, value pairs ending with NULL. */
static struct gw_options *opts_of(const char *key, ...)
{
        struct gw_options *o = gw_options_new();
        va_list ap;

        assert_non_null(o);
        va_start(ap, key);
        for (const char *k = key; k; k = va_arg(ap, const char *)) {
                const char *v = va_arg(ap, const char *);

                assert_int_equal(gw_options_set(o, k, v), 0);
        }
        va_end(ap);
        return o;
}

/* ["PATH"] plus extra items (already JSON: "\"a\",\"b\""), in a static buffer. */
static const char *argv_json(const char *path, const char *extra)
{
        static char bufs[2][2048];
        static unsigned next;
        char *b = bufs[next++ % 2];

        snprintf(b, sizeof(bufs[0]), "[\"%s\"%s%s]", path, extra ? "," : "", extra ? extra : "");
        return b;
}

struct mem_image {
        const uint8_t *data;
        size_t size;
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem_image *m = ctx;

        if (off >= m->size)
                return 0;
        if (n > m->size - off)
                n = m->size - off;
        memcpy(buf, m->data + off, n);
        return (ssize_t) n;
}

/* One test's world: the fake link, the options, an image in memory and on disk. */
struct world {
        struct fake_link f;
        struct gw_options *opts;
        uint8_t data[1000];
        struct mem_image mem;
        struct gw_reader reader;
        char image_path[512];
};

static void world_open(struct world *w, struct gw_options *opts)
{
        FILE *f;

        memset(w, 0, sizeof(*w));
        fake_link_init(&w->f, &gw_protocol_exec_ops);
        w->opts = opts;
        for (size_t i = 0; i < sizeof(w->data); i++)
                w->data[i] = (uint8_t) (i * 7 + 3);
        snprintf(w->image_path, sizeof(w->image_path), "%s", path_of("image.bin"));
        f = fopen(w->image_path, "w");
        assert_non_null(f);
        assert_int_equal(fwrite(w->data, 1, sizeof(w->data), f), sizeof(w->data));
        assert_int_equal(fclose(f), 0);
        w->mem = (struct mem_image){.data = w->data, .size = sizeof(w->data)};
        w->reader = (struct gw_reader){.size = sizeof(w->data),
                                       .name = "top.bit",
                                       .ctx = &w->mem,
                                       .pread = mem_pread,
                                       .path = w->image_path};
        if (fake_link_open(&w->f, opts) != 0)
                fail_msg("init refused the options: %s", w->f.error);
}

static void world_end(struct world *w)
{
        fake_link_done(&w->f);
        gw_options_free(w->opts);
}

/* Ticks the instance, as the loop's timer would, until it ends; the virtual clock moves to each
 * deadline, real time passes between ticks. */
static int drive(struct fake_link *f)
{
        uint64_t t0 = real_ms();

        while (f->last == GW_PROTO_CONTINUE) {
                if (real_ms() - t0 > REAL_LIMIT_MS)
                        fail_msg("still running after %d ms of real time", REAL_LIMIT_MS);
                assert_true(f->deadline != 0);
                assert_true(f->deadline <= f->now + 25);
                sleep_ms(2);
                fake_link_expire(f);
        }
        f->last_checked = true;
        return f->last;
}

/* Ticks until cond(f) or the end. */
static void drive_until(struct fake_link *f, bool (*cond)(struct fake_link *f))
{
        uint64_t t0 = real_ms();

        while (f->last == GW_PROTO_CONTINUE && !cond(f)) {
                if (real_ms() - t0 > REAL_LIMIT_MS)
                        fail_msg("condition not met after %d ms of real time", REAL_LIMIT_MS);
                sleep_ms(2);
                fake_link_expire(f);
        }
}

static int install(struct world *w)
{
        return fake_link_install(&w->f, &w->reader);
}

/* Waits (boundedly) for process pid to be gone. */
static bool gone(pid_t pid)
{
        for (int i = 0; i < 200; i++) {
                if (kill(pid, 0) < 0 && errno == ESRCH)
                        return true;
                sleep_ms(10);
        }
        return false;
}

static pid_t read_pid(const char *name)
{
        for (int i = 0; i < 200; i++) {
                const char *s = slurp(path_of(name), NULL);

                if (s && atoi(s) > 0 && strchr(s, '\n'))
                        return (pid_t) atoi(s);
                sleep_ms(10);
        }
        fail_msg("no pid in %s", name);
        return 0;
}

/* ---- Command lines --------------------------------------------------------------------- */

/* Every item arrives as one argument, placeholders expanded inside it. */
static void test_argv_substitution(void **state)
{
        const char *t = tool("args", "printf '%s\\n' \"$@\" > \"$D/args.out\"");
        struct world w;
        char want[2048];
        const char *got;

        world_open(
            &w, opts_of("command",
                        argv_json(t, "\"{image}\",\"--size={size}\",\"a b  {name} c\","
                                     "\"{{literal}} }}{{\",\"-b\",\"{board}\",\"x{image}y\",\"\","
                                     "\"$(touch pwned) ; *\""),
                        "vars", "[\"board=ulx3s v2\",\"cable-1=xvc\"]", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_int_equal(w.f.progress_done, 1000);
        assert_int_equal(w.f.progress_total, 1000);
        snprintf(want, sizeof(want),
                 "%s\n--size=1000\na b  top.bit c\n{literal} }{\n-b\nulx3s v2\nx%sy\n\n$(touch "
                 "pwned) ; *\n",
                 w.image_path, w.image_path);
        got = slurp(path_of("args.out"), NULL);
        assert_non_null(got);
        assert_string_equal(got, want);
        assert_false(exists(path_of("pwned")));
        assert_false(exists("pwned"));
        world_end(&w);
}

/* {name} is made harmless; a relative image path that looks like an option gets "./". */
static void test_name_and_path_made_safe(void **state)
{
        const char *t = tool("args2", "printf '%s\\n' \"$@\" > \"$D/args2.out\"");
        struct world w;
        char cwd[512], rel[600];
        const char *got;

        world_open(&w, opts_of("command", argv_json(t, "\"{name}\",\"{image}\""), NULL));
        w.reader.name = "-rf/../x y$1.bit";
        /* A relative path starting with '-': the image, reached from the scratch directory. */
        assert_non_null(getcwd(cwd, sizeof(cwd)));
        assert_int_equal(chdir(dir), 0);
        assert_int_equal(rename("image.bin", "-image.bin"), 0);
        snprintf(rel, sizeof(rel), "-image.bin");
        w.reader.path = rel;
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_int_equal(chdir(cwd), 0);
        got = slurp(path_of("args2.out"), NULL);
        assert_non_null(got);
        assert_string_equal(got, "_rf_.._x_y_1.bit\n./-image.bin\n");
        world_end(&w);
}

/* Options init() refuses, each with its reason. */
static const struct bad_case {
        const char *key, *value, *why;
} bad_cases[] = {
    {"command", "openFPGALoader -b ulx3s", "expected a list of 1 to 64 strings"},
    {"command", "[]", "expected a list of 1 to 64 strings"},
    {"command", "[\"tool\", 3]", "item 2: expected a string"},
    {"command", "[\"tool\", [\"x\"]]", "item 2: expected a string"},
    {"command", "{\"a\":\"b\"}", "expected a list"},
    {"command", "[\"\"]", "the program (item 1) is empty"},
    {"command", "[\"tool\", \"{imag}\"]", "item 2: unknown placeholder {imag}"},
    {"command", "[\"tool\", \"{IMAGE}\"]", "item 2: a '{' that starts no placeholder"},
    {"command", "[\"tool\", \"{image\"]", "item 2: a '{' that starts no placeholder"},
    {"command", "[\"tool\", \"a}b\"]", "item 2: a '}' that closes nothing"},
    {"command", "[\"tool\", \"{}\"]", "item 2: a '{' that starts no placeholder"},
    {"command", "[\"a\\u0000b\"]", "expected a list"},
    {"identify-command", "[\"tool\", \"{image}\"]", "item 2: {image} has no value here"},
    {"identify-command", "[\"tool\", \"{size}\"]", "item 2: {size} has no value here"},
    {"identify-pattern", "(a)(b)", "goes with identify-command"},
    {"progress", "([0-9]+", "not a POSIX extended regular expression"},
    {"progress", "no groups", "expected 1 to 2 groups, it has 0"},
    {"progress", "(a)(b)(c)", "expected 1 to 2 groups, it has 3"},
    {"progress", "", "expected a pattern of 1 to 512 bytes"},
    {"timeout-ms", "0", "expected 1 to 86400000"},
    {"timeout-ms", "soon", "expected 1 to 86400000"},
    {"kill-timeout-ms", "600001", "expected 1 to 600000"},
    {"success-exit", "256", "expected 0 to 255"},
    {"terminal", "maybe", "expected true or false"},
    {"env", "[\"1X=2\"]", "item 1: expected NAME=VALUE"},
    {"env", "[\"NOEQUALS\"]", "item 1: expected NAME=VALUE"},
    {"vars", "[\"image=x\"]", "item 1: {image} is exec's own"},
    {"vars", "[\"Board=x\"]", "item 1: expected name=value"},
    {"vars", "[\"ok=1\",\"=x\"]", "item 2: expected name=value"},
};

static void test_bad_options(void **state)
{
        for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
                const struct bad_case *c = &bad_cases[i];
                struct gw_options *o = gw_options_new();
                struct fake_link f;

                assert_non_null(o);
                if (strcmp(c->key, "command") != 0)
                        assert_int_equal(gw_options_set(o, "command", "[\"tool\"]"), 0);
                assert_int_equal(gw_options_set(o, c->key, c->value), 0);
                fake_link_init(&f, &gw_protocol_exec_ops);
                if (fake_link_open(&f, o) != -EINVAL)
                        fail_msg("case %zu (%s=%s): accepted", i, c->key, c->value);
                if (!strstr(f.error, c->why) || strncmp(f.error, "option ", 7) != 0)
                        fail_msg("case %zu (%s=%s): reason '%s', expected '%s'", i, c->key,
                                 c->value, f.error, c->why);
                fake_link_done(&f);
                gw_options_free(o);
        }
}

/* Limits on the command line itself, and a missing command. */
static void test_option_limits(void **state)
{
        static char big[70000];
        struct gw_options *o;
        struct fake_link f;
        size_t n = 0;

        /* 65 items. */
        n += (size_t) snprintf(big + n, sizeof(big) - n, "[\"t\"");
        for (int i = 0; i < 64; i++)
                n += (size_t) snprintf(big + n, sizeof(big) - n, ",\"x\"");
        snprintf(big + n, sizeof(big) - n, "]");
        o = opts_of("command", big, NULL);
        fake_link_init(&f, &gw_protocol_exec_ops);
        assert_int_equal(fake_link_open(&f, o), -EINVAL);
        assert_non_null(strstr(f.error, "1 to 64 strings"));
        gw_options_free(o);

        /* An item of 4097 bytes. */
        n = (size_t) snprintf(big, sizeof(big), "[\"t\",\"");
        memset(big + n, 'a', 4097);
        n += 4097;
        snprintf(big + n, sizeof(big) - n, "\"]");
        o = opts_of("command", big, NULL);
        fake_link_init(&f, &gw_protocol_exec_ops);
        assert_int_equal(fake_link_open(&f, o), -EINVAL);
        assert_non_null(strstr(f.error, "item 2: expected a string of at most 4096 bytes"));
        gw_options_free(o);

        /* No command. */
        o = opts_of("timeout-ms", "5", NULL);
        fake_link_init(&f, &gw_protocol_exec_ops);
        assert_int_equal(fake_link_open(&f, o), -EINVAL);
        assert_non_null(strstr(f.error, "option command: required"));
        gw_options_free(o);

        /* Everything at once, valid. */
        o = opts_of("command", "[\"t\",\"{image}\",\"{v}\"]", "identify-command",
                    "[\"t\",\"--id\",\"{v}\"]", "identify-pattern", "^(k)=(v)$", "progress",
                    "([0-9]+)/([0-9]+)", "timeout-ms", "86400000", "kill-timeout-ms", "1",
                    "success-exit", "255", "env", "[\"A=1\",\"B_2=x=y\"]", "vars", "[\"v=1\"]",
                    NULL);
        fake_link_init(&f, &gw_protocol_exec_ops);
        if (fake_link_open(&f, o) != 0)
                fail_msg("refused: %s", f.error);
        fake_link_done(&f);
        gw_options_free(o);
}

/* The keys a manifest may not set: everything that reaches the argv, environment or result. */
static void test_node_options(void **state)
{
        const struct gw_protocol_ops *p = &gw_protocol_exec_ops;
        static const char *const node_only[] = {
            "command", "identify-command", "identify-pattern", "progress", "env",
            "vars",    "success-exit",     "kill-timeout-ms",  "terminal"};
        char why[256];
        size_t n = 0;

        assert_true(p->version >= 7);
        assert_non_null(p->node_options);
        for (size_t i = 0; p->node_options[i]; i++, n++) {
                bool listed = false;

                for (size_t j = 0; p->options[j]; j++)
                        listed |= strcmp(p->options[j], p->node_options[i]) == 0;
                assert_true(listed);
                assert_string_not_equal(p->node_options[i], "timeout-ms");
        }
        assert_int_equal(n, sizeof(node_only) / sizeof(node_only[0]));
        for (size_t i = 0; i < n; i++) {
                struct gw_options *o = opts_of(node_only[i], "x", NULL);

                assert_int_equal(gw_plugin_check_image_options(p, o, why, sizeof(why)), -EPERM);
                assert_non_null(strstr(why, node_only[i]));
                gw_options_free(o);
        }
        {
                struct gw_options *o = opts_of("timeout-ms", "900000", NULL);

                assert_int_equal(gw_plugin_check_image_options(p, o, why, sizeof(why)), 0);
                gw_options_free(o);
        }
        assert_ptr_equal(gw_protocol_find("exec"), p);
        assert_non_null(gw_transport_find("none"));
}

/* The transport such nodes use: a link to nothing that never fails. */
static void test_transport_none(void **state)
{
        const struct gw_transport_ops *t = gw_transport_find("none");
        struct gw_plugin_services svc = {.version = GW_SERVICES_VERSION};
        struct gw_options *o = opts_of("port", "/dev/ttyUSB9", NULL);
        struct gw_options *p = opts_of("command", "[\"true\"]", NULL);
        char why[512], buf[16];
        void *priv;

        assert_non_null(t);
        assert_int_equal(t->shape, GW_LINK_STREAM);
        assert_int_equal(t->shape, gw_protocol_exec_ops.shape);
        priv = calloc(1, t->priv_size);
        assert_non_null(priv);
        /* The port is a label: never opened, even when it does not exist. */
        assert_int_equal(t->open(priv, o, &svc), 0);
        assert_true(t->get_fd(priv) >= 0);
        assert_int_equal(t->read(priv, buf, sizeof(buf)), -EAGAIN);
        assert_int_equal(t->write(priv, "abc", 3), 3);
        t->close(priv);
        assert_int_equal(t->open(priv, NULL, &svc), 0);
        t->close(priv);
        free(priv);
        /* Checked like any node's options. */
        assert_int_equal(gw_plugin_check_options(t, o, &gw_protocol_exec_ops, p, why, sizeof(why)),
                         0);
        gw_options_set(o, "baud", "9600");
        assert_int_equal(gw_plugin_check_options(t, o, &gw_protocol_exec_ops, p, why, sizeof(why)),
                         -EINVAL);
        assert_non_null(strstr(why, "transport none: unknown option 'baud'"));
        gw_options_free(o);
        o = opts_of("port", "", NULL);
        assert_int_equal(gw_plugin_check_options(t, o, &gw_protocol_exec_ops, p, why, sizeof(why)),
                         -EINVAL);
        assert_non_null(strstr(why, "option port: expected 1 to 4095 bytes"));
        gw_options_free(o);
        gw_options_free(p);
}

/* ---- Results ------------------------------------------------------------------------------ */

static bool at_half(struct fake_link *f)
{
        return f->progress_done == 500;
}

static bool at_three_quarters(struct fake_link *f)
{
        return f->progress_done == 750;
}

/* A percent: progress follows the tool's lines (bare CR ones too), as bytes of the image. */
static void test_progress_percent(void **state)
{
        const char *t =
            tool("pct", "printf 'Erasing: 100%%\\n' >/dev/null\n"
                        "printf 'Writing: [##      ]  12.5%%\\r'\n"
                        "printf 'Writing: [####    ]  50%%\\r'\n"
                        "i=0; while [ ! -e \"$D/go\" ] && [ $i -lt 2000 ]; do sleep 0.01; "
                        "i=$((i+1)); done\n"
                        "printf 'Writing: [########] 100%%\\nDone\\n'");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t, NULL), "progress",
                               "Writing: \\[[# ]*\\] *([0-9.]+)%", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(w.f.progress_done, 0);
        assert_int_equal(w.f.progress_total, 1000);
        drive_until(&w.f, at_half);
        assert_int_equal(w.f.last, GW_PROTO_CONTINUE);
        assert_int_equal(w.f.progress_done, 500);
        fclose(fopen(path_of("go"), "w"));
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_int_equal(w.f.progress_done, 1000);
        world_end(&w);
        unlink(path_of("go"));
}

/* Done and total: "block 3/4" is three quarters of the image's bytes. */
static void test_progress_done_total(void **state)
{
        const char *t =
            tool("frac", "echo 'block 3/4'\n"
                         "echo 'block 9/4'\n" /* nonsense: ignored */
                         "i=0; while [ ! -e \"$D/go2\" ] && [ $i -lt 2000 ]; do sleep 0.01; "
                         "i=$((i+1)); done\n"
                         "exit 0");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t, NULL), "progress",
                               "^block ([0-9]+)/([0-9]+)$", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        drive_until(&w.f, at_three_quarters);
        assert_int_equal(w.f.progress_done, 750);
        /* The nonsense line came too, and changed nothing. */
        for (int i = 0; i < 20; i++) {
                sleep_ms(2);
                fake_link_expire(&w.f);
        }
        assert_int_equal(w.f.progress_done, 750);
        fclose(fopen(path_of("go2"), "w"));
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_int_equal(w.f.progress_done, 1000);
        world_end(&w);
        unlink(path_of("go2"));
}

/* A failing tool: its exit status and its last lines, as a terminal shows them. */
static void test_exit_status(void **state)
{
        const char *t = tool("fails", "echo 'line 1'; echo 'line 2'; echo 'line 3'\n"
                                      "printf 'Writing:  10%%\\rWriting:  20%%\\r'\n"
                                      "printf 'Writing:  30%%\\r\\n'\n"
                                      "echo 'error: \\033[31mno FPGA\\033[0m found' >&2\n"
                                      "exit 3");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t, NULL), NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -EIO);
        assert_string_equal(w.f.error,
                            "fails: exit status 3: line 2 | line 3 | Writing:  30% | error: no "
                            "FPGA found");
        world_end(&w);
}

/* success-exit: another status means success; 0 then fails. No output is said. */
static void test_success_exit(void **state)
{
        const char *t1 = tool("exit1", "exit 1");
        const char *t0 = tool("exit0", "exit 0");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t1, NULL), "success-exit", "1", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        world_end(&w);
        world_open(&w, opts_of("command", argv_json(t0, NULL), "success-exit", "1", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -EIO);
        assert_string_equal(w.f.error, "exit0: exit status 0 (no output)");
        world_end(&w);
}

static void test_signal_death(void **state)
{
        const char *t = tool("segv", "echo 'programming...'\nkill -SEGV $$\nsleep 5");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t, NULL), NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -EIO);
        assert_non_null(strstr(w.f.error, "segv: killed by SIGSEGV"));
        assert_non_null(strstr(w.f.error, ": programming..."));
        world_end(&w);
}

static void test_missing_tool(void **state)
{
        struct world w;

        world_open(&w, opts_of("command", "[\"/nonexistent/flasher\",\"{image}\"]", NULL));
        assert_int_equal(install(&w), -ENOENT);
        assert_string_equal(w.f.error, "cannot run /nonexistent/flasher: no such program");
        world_end(&w);
        world_open(&w, opts_of("command", "[\"gw-no-such-flasher-here\"]", NULL));
        assert_int_equal(install(&w), -ENOENT);
        assert_string_equal(w.f.error, "cannot run gw-no-such-flasher-here: no such program in "
                                       "PATH");
        world_end(&w);
        /* There, but not executable (no x bit: not even root may run it). */
        {
                const char *p = tool("not-executable", "exit 0");
                char cmd[600], want[700];

                assert_int_equal(chmod(p, 0644), 0);
                snprintf(cmd, sizeof(cmd), "[\"%s\"]", p);
                world_open(&w, opts_of("command", cmd, NULL));
                assert_int_equal(install(&w), -EACCES);
                snprintf(want, sizeof(want), "cannot run %s: %s", p, strerror(EACCES));
                assert_string_equal(w.f.error, want);
                world_end(&w);
        }
}

/* A tool that prints nothing and hangs, with a child of its own: a timeout, on the virtual
 * clock; the whole process group goes. */
static void test_timeout_silent(void **state)
{
        const char *t = tool("hang", "sleep 1000 &\necho $! > \"$D/grandchild.pid\"\nwait");
        struct world w;
        uint64_t t0;
        pid_t grandchild;

        unlink(path_of("grandchild.pid"));
        world_open(&w, opts_of("command", argv_json(t, NULL), "timeout-ms", "3000",
                               "kill-timeout-ms", "500", NULL));
        t0 = w.f.now;
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        grandchild = read_pid("grandchild.pid");
        assert_true(grandchild > 0);
        assert_int_equal(drive(&w.f), -ETIMEDOUT);
        assert_true(w.f.now - t0 >= 3000);
        assert_true(w.f.now - t0 < 3500);
        assert_string_equal(w.f.error, "hang: no result after 3 s, and no output at all");
        assert_true(gone(grandchild));
        world_end(&w);
}

/* A tool that ignores SIGTERM is killed kill-timeout-ms later; what it said is reported. */
static void test_timeout_kill(void **state)
{
        const char *t = tool("stubborn", "trap '' TERM\necho 'Writing:  40%'\n"
                                         "while :; do sleep 0.05; done");
        struct world w;
        uint64_t t0;

        world_open(&w, opts_of("command", argv_json(t, NULL), "timeout-ms", "1000",
                               "kill-timeout-ms", "2000", NULL));
        t0 = w.f.now;
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -ETIMEDOUT);
        /* SIGTERM at 1 s did nothing; SIGKILL at 3 s did. */
        assert_true(w.f.now - t0 >= 3000);
        assert_true(w.f.now - t0 < 3500);
        assert_string_equal(w.f.error, "stubborn: no result after 1 s: Writing:  40%");
        world_end(&w);
}

static bool said_started(struct fake_link *f)
{
        return exists(path_of("started"));
}

/* cancel(): the group is stopped, CONTINUE until it is reaped, then -ECANCELED. */
static void test_cancel(void **state)
{
        const char *t = tool("cancel", "sleep 1000 &\necho $! > \"$D/cancel.pid\"\n"
                                       "echo $$ > \"$D/started\"\necho working\nwait");
        struct world w;
        pid_t leader, grandchild;

        unlink(path_of("started"));
        world_open(&w, opts_of("command", argv_json(t, NULL), NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        drive_until(&w.f, said_started);
        leader = read_pid("started");
        grandchild = read_pid("cancel.pid");
        assert_int_equal(fake_link_cancel(&w.f), GW_PROTO_CONTINUE);
        assert_true(w.f.deadline != 0);
        assert_int_equal(drive(&w.f), -ECANCELED);
        assert_string_equal(w.f.error, "cancelled");
        assert_true(gone(leader));
        assert_true(gone(grandchild));
        /* Cancelling again, or after the end, says the same. */
        assert_int_equal(fake_link_cancel(&w.f), -ECANCELED);
        world_end(&w);
        unlink(path_of("started"));
}

/* done() while the tool runs: it is killed and reaped at once, nothing left behind. */
static void test_done_while_running(void **state)
{
        const char *t = tool("busy", "echo $$ > \"$D/busy.pid\"\nsleep 1000 &\n"
                                     "echo $! > \"$D/busy2.pid\"\nwait");
        struct world w;
        pid_t leader, child;

        unlink(path_of("busy.pid"));
        unlink(path_of("busy2.pid"));
        world_open(&w, opts_of("command", argv_json(t, NULL), NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        leader = read_pid("busy.pid");
        child = read_pid("busy2.pid");
        world_end(&w);
        /* Reaped by done(): no zombie answers. */
        assert_int_equal(kill(leader, 0), -1);
        assert_int_equal(errno, ESRCH);
        assert_true(gone(child));
}

/* A tool that exits leaving a helper behind in its process group, holding the output open: the
 * helper is killed, the result is the tool's own, its last line is read. */
static void test_leftover_helper(void **state)
{
        const char *t = tool("leaves", "sleep 1000 &\necho $! > \"$D/helper.pid\"\n"
                                       "echo 'programmed, bye'\nexit 5");
        struct world w;
        pid_t helper;

        unlink(path_of("helper.pid"));
        world_open(&w, opts_of("command", argv_json(t, NULL), NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -EIO);
        assert_string_equal(w.f.error, "leaves: exit status 5: programmed, bye");
        helper = read_pid("helper.pid");
        assert_true(gone(helper));
        world_end(&w);
}

/* Output is untrusted: a huge line without end, thousands of lines, binary bytes. The message
 * stays short and printable. */
static void test_output_bounds(void **state)
{
        const char *t = tool("flood", "head -c 300000 /dev/zero | tr '\\0' 'x'\n"
                                      "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; "
                                      "i=$((i+1)); done\n"
                                      "head -c 20000 /dev/urandom\n"
                                      "printf '\\n\\001\\377last\\tone\\033]0;title\\007!\\n'\n"
                                      "exit 7");
        struct world w;

        world_open(&w, opts_of("command", argv_json(t, NULL), "progress", "([0-9]+)%", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), -EIO);
        assert_true(strlen(w.f.error) < 256);
        assert_non_null(strstr(w.f.error, "flood: exit status 7: "));
        assert_non_null(strstr(w.f.error, "??last one!"));
        for (const char *p = w.f.error; *p; p++)
                assert_true(*p >= 0x20 && *p < 0x7f);
        world_end(&w);
}

/* env adds to the environment (over the process's own); the tool sees no blocked signal. */
static void test_env(void **state)
{
        const char *t = tool("env", "echo \"$GW_A/$GW_B/$HOME_SET\" > \"$D/env.out\"\n"
                                    "grep '^SigBlk' /proc/self/status >> \"$D/env.out\"");
        struct world w;
        sigset_t block, old;
        const char *got;

        setenv("GW_B", "outer", 1);
        /* As the loop does: signals it reads through a signalfd are blocked. */
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGINT);
        sigprocmask(SIG_BLOCK, &block, &old);
        world_open(&w, opts_of("command", argv_json(t, NULL), "env",
                               "[\"GW_A=one two\",\"GW_B=inner\",\"HOME_SET=1\"]", NULL));
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        sigprocmask(SIG_SETMASK, &old, NULL);
        got = slurp(path_of("env.out"), NULL);
        assert_non_null(got);
        assert_string_equal(got, "one two/inner/1\nSigBlk:\t0000000000000000\n");
        world_end(&w);
}

/* The tool writes to a terminal by default (as for a person: progress comes while it runs),
 * to a pipe with terminal: false; either way stdin is /dev/null. Output still arrives when
 * the tool exits at once. */
static void test_terminal(void **state)
{
        const char *t = tool("tty", "if [ -t 1 ] && [ -t 2 ]; then echo 'out: tty'; "
                                    "else echo 'out: pipe'; fi\n"
                                    "if [ -t 0 ]; then echo 'in: tty'; else echo 'in: other'; fi\n"
                                    "exit 4");
        static const struct {
                const char *terminal;
                const char *error;
        } cases[] = {
            {NULL, "tty: exit status 4: out: tty | in: other"},
            {"true", "tty: exit status 4: out: tty | in: other"},
            {"false", "tty: exit status 4: out: pipe | in: other"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct world w;

                world_open(&w, cases[i].terminal ? opts_of("command", argv_json(t, NULL),
                                                           "terminal", cases[i].terminal, NULL)
                                                 : opts_of("command", argv_json(t, NULL), NULL));
                assert_int_equal(install(&w), GW_PROTO_CONTINUE);
                assert_int_equal(drive(&w.f), -EIO);
                assert_string_equal(w.f.error, cases[i].error);
                world_end(&w);
        }
}

/* A reader without a file: a private copy (0600, with the name's extension), gone after done(). */
static void test_reader_without_path(void **state)
{
        const char *t = tool("copy", "echo \"$1\" > \"$D/copy.path\"\n"
                                     "stat -c %a \"$1\" >> \"$D/copy.path\"\n"
                                     "cat \"$1\" > \"$D/copy.data\"");
        struct world w;
        char path[512], mode[16];
        size_t n;
        const char *got;

        world_open(&w, opts_of("command", argv_json(t, "\"{image}\""), NULL));
        w.reader.path = NULL;
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        got = slurp(path_of("copy.path"), NULL);
        assert_non_null(got);
        assert_int_equal(sscanf(got, "%511s %15s", path, mode), 2);
        assert_string_equal(mode, "600");
        assert_non_null(strstr(path, "/gw-exec-"));
        assert_string_equal(path + strlen(path) - 4, ".bit");
        assert_true(exists(path));
        got = slurp(path_of("copy.data"), &n);
        assert_int_equal(n, sizeof(w.data));
        assert_memory_equal(got, w.data, n);
        world_end(&w);
        assert_false(exists(path));
}

/* ---- identify ------------------------------------------------------------------------------ */

static void test_identify_facts(void **state)
{
        const char *t = tool("ident", "echo 'Scanning the chain'\necho 'idcode=0x41111043'\n"
                                      "echo 'Family: ECP5 '\necho '  version = 1.4.2'\n"
                                      "echo 'no fact here'\necho 'empty='\n"
                                      "i=0; while [ $i -lt 40 ]; do echo \"k$i=v\"; i=$((i+1)); "
                                      "done\n"
                                      "printf 'long=%0200d\\n' 0");
        struct world w;
        struct gw_options *facts = gw_options_new();

        world_open(&w, opts_of("command", "[\"true\"]", "identify-command",
                               argv_json(t, "\"--id\""), NULL));
        assert_int_equal(w.f.ops->identify(w.f.priv, facts), GW_PROTO_CONTINUE);
        w.f.last = GW_PROTO_CONTINUE;
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_string_equal(gw_options_get(facts, "idcode"), "0x41111043");
        assert_string_equal(gw_options_get(facts, "family"), "ECP5");
        assert_string_equal(gw_options_get(facts, "version"), "1.4.2");
        assert_null(gw_options_get(facts, "empty"));
        assert_null(gw_options_get(facts, "long"));
        assert_string_equal(gw_options_get(facts, "k0"), "v");
        /* At most 32 facts. */
        assert_int_equal(gw_options_count(facts), 32);
        assert_null(gw_options_get(facts, "k39"));
        world_end(&w);
        gw_options_free(facts);
}

/* openFPGALoader --detect says "idcode 0x41111043": a pattern of the node's takes it. */
static void test_identify_pattern(void **state)
{
        const char *t = tool("detect", "printf 'index 0:\\n\\tidcode 0x41111043\\n\\tmanufacturer "
                                       "lattice\\n\\tfamily ECP5\\n\\tirlength 8\\n'");
        struct world w;
        struct gw_options *facts = gw_options_new();

        world_open(&w, opts_of("command", "[\"true\"]", "identify-command", argv_json(t, NULL),
                               "identify-pattern",
                               "^[[:space:]]*(idcode|manufacturer|family)[[:space:]]+(.+)$", NULL));
        assert_int_equal(w.f.ops->identify(w.f.priv, facts), GW_PROTO_CONTINUE);
        w.f.last = GW_PROTO_CONTINUE;
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        assert_int_equal(gw_options_count(facts), 3);
        assert_string_equal(gw_options_get(facts, "idcode"), "0x41111043");
        assert_string_equal(gw_options_get(facts, "manufacturer"), "lattice");
        assert_string_equal(gw_options_get(facts, "family"), "ECP5");
        world_end(&w);
        gw_options_free(facts);
}

static void test_identify_none_or_failing(void **state)
{
        const char *t = tool("identfail", "echo 'no cable found'; exit 2");
        struct world w;
        struct gw_options *facts = gw_options_new();

        /* Without identify-command: done at once, nothing reported, nothing run. */
        world_open(&w, opts_of("command", "[\"/nonexistent\"]", NULL));
        assert_int_equal(w.f.ops->identify(w.f.priv, facts), GW_PROTO_DONE);
        assert_int_equal(gw_options_count(facts), 0);
        world_end(&w);

        world_open(&w,
                   opts_of("command", "[\"true\"]", "identify-command", argv_json(t, NULL), NULL));
        assert_int_equal(w.f.ops->identify(w.f.priv, facts), GW_PROTO_CONTINUE);
        w.f.last = GW_PROTO_CONTINUE;
        assert_int_equal(drive(&w.f), -EIO);
        assert_string_equal(w.f.error, "identfail: exit status 2: no cable found");
        world_end(&w);
        gw_options_free(facts);
}

static void test_misuse(void **state)
{
        struct world w;
        struct gw_options *facts = gw_options_new();

        world_open(&w, opts_of("command", "[\"true\"]", NULL));
        assert_int_equal(w.f.ops->install(w.f.priv, NULL), -EINVAL);
        assert_int_equal(install(&w), GW_PROTO_CONTINUE);
        assert_int_equal(w.f.ops->install(w.f.priv, &w.reader), -EBUSY);
        assert_int_equal(w.f.ops->identify(w.f.priv, facts), -EBUSY);
        /* input() on the none link: nothing to do. */
        assert_int_equal(w.f.ops->input(w.f.priv, (const uint8_t *) "x", 1), GW_PROTO_CONTINUE);
        assert_int_equal(drive(&w.f), GW_PROTO_DONE);
        /* A stale tick after the end. */
        assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_DONE);
        world_end(&w);
        /* Cancel before anything ran. */
        world_open(&w, opts_of("command", "[\"true\"]", NULL));
        assert_int_equal(fake_link_cancel(&w.f), -ECANCELED);
        world_end(&w);
        gw_options_free(facts);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(p);
}

static int setup(void **state)
{
        const char *tmp = getenv("TMPDIR");

        snprintf(dir, sizeof(dir), "%s/gw-test-exec.XXXXXX", tmp && tmp[0] == '/' ? tmp : "/tmp");
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
        return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
        static const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_argv_substitution),
            cmocka_unit_test(test_name_and_path_made_safe),
            cmocka_unit_test(test_bad_options),
            cmocka_unit_test(test_option_limits),
            cmocka_unit_test(test_node_options),
            cmocka_unit_test(test_transport_none),
            cmocka_unit_test(test_progress_percent),
            cmocka_unit_test(test_progress_done_total),
            cmocka_unit_test(test_exit_status),
            cmocka_unit_test(test_success_exit),
            cmocka_unit_test(test_signal_death),
            cmocka_unit_test(test_missing_tool),
            cmocka_unit_test(test_timeout_silent),
            cmocka_unit_test(test_timeout_kill),
            cmocka_unit_test(test_cancel),
            cmocka_unit_test(test_done_while_running),
            cmocka_unit_test(test_leftover_helper),
            cmocka_unit_test(test_output_bounds),
            cmocka_unit_test(test_env),
            cmocka_unit_test(test_terminal),
            cmocka_unit_test(test_reader_without_path),
            cmocka_unit_test(test_identify_facts),
            cmocka_unit_test(test_identify_pattern),
            cmocka_unit_test(test_identify_none_or_failing),
            cmocka_unit_test(test_misuse),
        };

        return cmocka_run_group_tests_name("exec", tests, setup, teardown);
}
