/* The exec protocol plugin: flashes a node by running an external flasher (openFPGALoader,
 * ecpprog, iceprog, esptool, a vendor's tool) as an argv list the node's configuration owns,
 * never through a shell. A state machine on a short timer tick: it reads the tool's output
 * without blocking, follows its progress, and reaps it with waitid(WNOHANG). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <regex.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "gw/plugin.h"

#include "debug.h"
#include "proc.h"

extern char **environ;

/* Limits on what the configuration gives: a command line, its items, the environment added,
 * the variables, the patterns. */
#define ARGV_MAX      64
#define ITEM_MAX      4096
#define OPTION_MAX    (ARGV_MAX * (ITEM_MAX + 8))
#define ENV_MAX       32
#define VARS_MAX      32
#define VAR_NAME_MAX  32
#define PATTERN_MAX   512
#define SUFFIX_MAX    8 /* the file name extension a temporary copy keeps, without the dot */
#define TOOL_NAME_MAX 48

/* Limits on the tool's output, which is untrusted: the bytes of one line looked at, the lines
 * kept for the error message, the facts identify takes, what one tick reads. */
#define LINE_MAX_LEN     512
#define TAIL_LINES       4
#define TAIL_LINE_MAX    160
#define MESSAGE_TAIL_MAX 200
#define FACTS_MAX        32
#define FACT_KEY_MAX     32
#define FACT_VALUE_MAX   128
#define READ_PER_TICK    (64u * 1024u)
#define DRAIN_MAX        (1024u * 1024u)

#define TICK_MS 25
/* After the tool's exit: how long what it wrote last may take to arrive. A pseudo-terminal
 * hands written bytes to its reader from a kernel worker, a little later. */
#define DRAIN_MS                500
#define DEFAULT_TIMEOUT_MS      600000
#define TIMEOUT_MAX_MS          86400000
#define DEFAULT_KILL_TIMEOUT_MS 5000
#define KILL_TIMEOUT_MAX_MS     600000

/* What identify takes from a line when the node names no identify-pattern: "key=value" or
 * "key: value". */
#define DEFAULT_FACT_PATTERN "^[[:space:]]*([A-Za-z0-9._-]+)[[:space:]]*[:=][[:space:]]*(.*)$"

enum exec_state {
        EXEC_IDLE,     /* init() done, no operation yet */
        EXEC_RUNNING,  /* the tool runs */
        EXEC_STOPPING, /* SIGTERM sent to its process group (timeout or cancel) */
        EXEC_KILLING,  /* SIGKILL sent: waiting to reap it */
        EXEC_DRAINING, /* reaped: reading what it wrote last */
        EXEC_DONE,
        EXEC_FAILED,
        _EXEC_STATE_MAX,
};

enum exec_op {
        OP_NONE,
        OP_INSTALL,
        OP_IDENTIFY,
};

enum stop_reason {
        STOP_NONE,
        STOP_TIMEOUT,
        STOP_CANCEL,
};

struct cmdline {
        char **items;
        size_t n;
};

struct exec {
        const struct gw_proto_host *host;

        /* Configuration (init). */
        struct cmdline command;
        struct cmdline identify_command; /* n == 0: the node is not identified */
        struct cmdline env;              /* "NAME=VALUE" added to the tool's environment */
        struct cmdline vars;             /* "name=value": {name} in an item */
        regex_t progress;
        bool has_progress;
        regex_t fact_re;
        bool has_fact_re;
        uint64_t timeout_ms;
        uint64_t kill_timeout_ms;
        uint64_t success_exit;
        bool terminal; /* the tool's output goes to a pseudo-terminal, else to a pipe */

        /* The operation. */
        enum exec_state state;
        enum exec_op op;
        enum stop_reason stop;
        int error;
        const struct gw_reader *reader;
        struct gw_options *facts;
        char image_path[PATH_MAX + 2]; /* what {image} is */
        char temp_path[PATH_MAX];      /* a private copy of an image without a file, or "" */
        char tool[TOOL_NAME_MAX + 1];  /* the tool's name, for messages */
        pid_t pid;                     /* the tool, also its process group; 0 = none */
        int out_fd;                    /* the read end of its stdout and stderr; -1 = none */
        uint64_t started;
        uint64_t deadline; /* the operation's end, then the kill's */
        uint64_t last_progress;
        siginfo_t exit_info; /* how it ended, once reaped */

        /* Output parsing. */
        char line[LINE_MAX_LEN + 1];
        size_t line_len;
        unsigned esc; /* where in an escape sequence the output is */
        bool after_cr;
        uint64_t out_bytes, out_lines;
        char tail[TAIL_LINES][TAIL_LINE_MAX + 1];
        size_t tail_n;            /* lines ever added to tail */
        bool tail_last_transient; /* the last line ended in a carriage return */
};

enum {
        ESC_NONE,
        ESC_START, /* ESC seen */
        ESC_CSI,   /* ESC [ ... up to a final byte */
        ESC_OSC,   /* ESC ] ... up to BEL or ESC */
};

static const char *const state_names[_EXEC_STATE_MAX] = {
    [EXEC_IDLE] = "idle",       [EXEC_RUNNING] = "running",   [EXEC_STOPPING] = "stopping",
    [EXEC_KILLING] = "killing", [EXEC_DRAINING] = "draining", [EXEC_DONE] = "done",
    [EXEC_FAILED] = "failed",
};

static const char *exec_state_to_string(enum exec_state s)
{
        if ((unsigned) s >= _EXEC_STATE_MAX)
                return NULL;
        return state_names[s];
}

static void set_state(struct exec *e, enum exec_state s)
{
        if (e->state == s)
                return;
        gw_proto_debug(e->host, "exec: %s -> %s", exec_state_to_string(e->state),
                       exec_state_to_string(s));
        e->state = s;
}

static uint64_t now_ms(struct exec *e)
{
        return e->host->now_ms(e->host->ctx);
}

static void arm_tick(struct exec *e)
{
        e->host->set_deadline(e->host->ctx, now_ms(e) + TICK_MS);
}

/* Enters FAILED with err and its reason; returns err. */
static int fail(struct exec *e, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct exec *e, int err, const char *fmt, ...)
{
        char msg[384];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(e->host, "exec: %s", msg);
        if (e->host->set_error)
                e->host->set_error(e->host->ctx, "%s", msg);
        e->error = err;
        set_state(e, EXEC_FAILED);
        e->host->set_deadline(e->host->ctx, 0);
        return err;
}

static int result(const struct exec *e)
{
        if (e->state == EXEC_DONE)
                return GW_PROTO_DONE;
        if (e->state == EXEC_FAILED)
                return e->error;
        return GW_PROTO_CONTINUE;
}

/* ---- Configuration ------------------------------------------------------------------- */

static void cmdline_free(struct cmdline *c)
{
        for (size_t i = 0; i < c->n; i++)
                free(c->items[i]);
        free(c->items);
        *c = (struct cmdline){0};
}

/* init() touches nothing: a bad option is only explained. */
static int bad_option(struct exec *e, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad_option(struct exec *e, const char *key, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(e->host, "exec: option %s: %s", key, msg);
        if (e->host->set_error)
                e->host->set_error(e->host->ctx, "option %s: %s", key, msg);
        return -EINVAL;
}

/* A JSON array of min..max strings (a YAML list in gatewayd.yaml arrives so), each 1 to ITEM_MAX
 * bytes without NUL, into ret. */
static int parse_list(struct exec *e, const char *key, const char *value, size_t min, size_t max,
                      struct cmdline *ret)
{
        struct cmdline c = {0};
        json_error_t jerr;
        size_t len = strlen(value);
        json_t *a;
        int r = 0;

        if (len > OPTION_MAX)
                return bad_option(e, key, "longer than %d bytes", OPTION_MAX);
        a = json_loadb(value, len, 0, &jerr);
        if (!a || !json_is_array(a) || json_array_size(a) < min || json_array_size(a) > max) {
                json_decref(a);
                return bad_option(e, key,
                                  "expected a list of %zu to %zu strings (in gatewayd.yaml a YAML "
                                  "list, on the command line a JSON array: '[\"tool\", \"-x\"]')",
                                  min, max);
        }
        c.items = calloc(json_array_size(a), sizeof(*c.items));
        if (!c.items) {
                json_decref(a);
                return -ENOMEM;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
                json_t *v = json_array_get(a, i);
                const char *s = json_string_value(v);

                if (!s || json_string_length(v) != strlen(s) || strlen(s) > ITEM_MAX) {
                        r = bad_option(e, key, "item %zu: expected a string of at most %d bytes",
                                       i + 1, ITEM_MAX);
                        break;
                }
                c.items[i] = strdup(s);
                if (!c.items[i]) {
                        r = -ENOMEM;
                        break;
                }
                c.n = i + 1;
        }
        json_decref(a);
        if (r < 0) {
                cmdline_free(&c);
                return r;
        }
        *ret = c;
        return 0;
}

static bool var_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static bool reserved_var(const char *name, size_t n)
{
        static const char *const reserved[] = {"image", "size", "name"};

        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
                if (strlen(reserved[i]) == n && memcmp(reserved[i], name, n) == 0)
                        return true;
        return false;
}

/* The value of variable name[0..n) from the vars option, or NULL. */
static const char *var_value(const struct exec *e, const char *name, size_t n)
{
        for (size_t i = 0; i < e->vars.n; i++)
                if (strncmp(e->vars.items[i], name, n) == 0 && e->vars.items[i][n] == '=')
                        return e->vars.items[i] + n + 1;
        return NULL;
}

/* The values placeholders take in one operation; NULL where the operation has none. */
struct subst {
        const char *image;
        const char *size;
        const char *name;
};

static const char *subst_value(const struct subst *s, const char *name, size_t n)
{
        if (n == 5 && memcmp(name, "image", 5) == 0)
                return s->image;
        if (n == 4 && memcmp(name, "size", 4) == 0)
                return s->size;
        return s->name;
}

/* Expands the placeholders of tmpl: {image}, {size}, {name}, a variable's {name}, {{ and }}.
 * Writes the result into out (out_size bytes, may be NULL to measure) and returns its length,
 * or -EINVAL with the reason in why: an unknown placeholder, a stray brace, or one without a
 * value here (s NULL: only checks). The value never splits the item: it is one argument. */
static ssize_t expand(const struct exec *e, const char *tmpl, const struct subst *s, char *out,
                      size_t out_size, char *why, size_t why_size)
{
        size_t len = 0;

        for (const char *p = tmpl; *p;) {
                const char *v = NULL, *name;
                size_t vlen, n;
                char one;

                if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
                        one = p[0];
                        v = &one;
                        vlen = 1;
                        p += 2;
                } else if (p[0] == '}') {
                        snprintf(why, why_size, "a '}' that closes nothing (write '}}' for one)");
                        return -EINVAL;
                } else if (p[0] != '{') {
                        v = p;
                        vlen = strcspn(p, "{}");
                        p += vlen;
                } else {
                        name = p + 1;
                        n = 0;
                        while (n <= VAR_NAME_MAX && var_char(name[n]))
                                n++;
                        if (name[n] != '}' || n == 0 || n > VAR_NAME_MAX) {
                                snprintf(why, why_size,
                                         "a '{' that starts no placeholder (write '{{' for one)");
                                return -EINVAL;
                        }
                        p = name + n + 1;
                        if (reserved_var(name, n)) {
                                const char *val = s ? subst_value(s, name, n) : "";

                                if (!val) {
                                        snprintf(why, why_size, "{%.*s} has no value here", (int) n,
                                                 name);
                                        return -EINVAL;
                                }
                                v = val;
                        } else {
                                v = var_value(e, name, n);
                                if (!v) {
                                        snprintf(why, why_size,
                                                 "unknown placeholder {%.*s} (known: {image}, "
                                                 "{size}, {name} and the node's vars)",
                                                 (int) n, name);
                                        return -EINVAL;
                                }
                        }
                        vlen = strlen(v);
                }
                if (out && len + vlen < out_size)
                        memcpy(out + len, v, vlen);
                len += vlen;
        }
        if (out && len < out_size)
                out[len] = '\0';
        return (ssize_t) len;
}

/* Checks every item of c for placeholders that are unknown, or have no value in identify. */
static int check_cmdline(struct exec *e, const char *key, const struct cmdline *c, bool identify)
{
        char why[160];

        for (size_t i = 0; i < c->n; i++) {
                ssize_t n = expand(e, c->items[i], NULL, NULL, 0, why, sizeof(why));

                if (n >= 0 && identify) {
                        static const struct subst none = {0};

                        /* Without a reader, {image}, {size} and {name} have no value. */
                        n = expand(e, c->items[i], &none, NULL, 0, why, sizeof(why));
                }
                if (n < 0)
                        return bad_option(e, key, "item %zu: %s", i + 1, why);
        }
        if (c->n > 0 && c->items[0][0] == '\0')
                return bad_option(e, key, "the program (item 1) is empty");
        return 0;
}

static int parse_env(struct exec *e, const char *value)
{
        int r = parse_list(e, "env", value, 1, ENV_MAX, &e->env);

        if (r < 0)
                return r;
        for (size_t i = 0; i < e->env.n; i++) {
                const char *s = e->env.items[i];
                size_t n =
                    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_");

                if (n == 0 || s[n] != '=' || (s[0] >= '0' && s[0] <= '9'))
                        return bad_option(e, "env", "item %zu: expected NAME=VALUE", i + 1);
        }
        return 0;
}

static int parse_vars(struct exec *e, const char *value)
{
        int r = parse_list(e, "vars", value, 1, VARS_MAX, &e->vars);

        if (r < 0)
                return r;
        for (size_t i = 0; i < e->vars.n; i++) {
                const char *s = e->vars.items[i];
                size_t n = 0;

                while (n <= VAR_NAME_MAX && var_char(s[n]))
                        n++;
                if (n == 0 || n > VAR_NAME_MAX || s[n] != '=')
                        return bad_option(e, "vars",
                                          "item %zu: expected name=value, the name of 1 to %d "
                                          "of [a-z0-9_-]",
                                          i + 1, VAR_NAME_MAX);
                if (reserved_var(s, n))
                        return bad_option(e, "vars", "item %zu: {%.*s} is exec's own", i + 1,
                                          (int) n, s);
        }
        return 0;
}

static int compile(struct exec *e, const char *key, const char *pattern, regex_t *re,
                   size_t min_groups, size_t max_groups, bool *ret_compiled)
{
        char msg[128];
        int r;

        if (strlen(pattern) == 0 || strlen(pattern) > PATTERN_MAX)
                return bad_option(e, key, "expected a pattern of 1 to %d bytes", PATTERN_MAX);
        r = regcomp(re, pattern, REG_EXTENDED);
        if (r != 0) {
                regerror(r, re, msg, sizeof(msg));
                return bad_option(e, key, "not a POSIX extended regular expression: %s", msg);
        }
        *ret_compiled = true;
        if (re->re_nsub < min_groups || re->re_nsub > max_groups) {
                if (min_groups == max_groups)
                        return bad_option(e, key, "expected %zu groups, it has %zu", min_groups,
                                          re->re_nsub);
                return bad_option(e, key, "expected %zu to %zu groups, it has %zu", min_groups,
                                  max_groups, re->re_nsub);
        }
        return 0;
}

static void config_free(struct exec *e)
{
        cmdline_free(&e->command);
        cmdline_free(&e->identify_command);
        cmdline_free(&e->env);
        cmdline_free(&e->vars);
        if (e->has_progress)
                regfree(&e->progress);
        if (e->has_fact_re)
                regfree(&e->fact_re);
        e->has_progress = e->has_fact_re = false;
}

static int parse_config(struct exec *e, const struct gw_options *opts)
{
        const char *v;
        int r;

        if (gw_options_get_u64(opts, "timeout-ms", DEFAULT_TIMEOUT_MS, 1, TIMEOUT_MAX_MS,
                               &e->timeout_ms) < 0)
                return bad_option(e, "timeout-ms", "expected 1 to %d", TIMEOUT_MAX_MS);
        if (gw_options_get_u64(opts, "kill-timeout-ms", DEFAULT_KILL_TIMEOUT_MS, 1,
                               KILL_TIMEOUT_MAX_MS, &e->kill_timeout_ms) < 0)
                return bad_option(e, "kill-timeout-ms", "expected 1 to %d", KILL_TIMEOUT_MAX_MS);
        if (gw_options_get_u64(opts, "success-exit", 0, 0, 255, &e->success_exit) < 0)
                return bad_option(e, "success-exit", "expected 0 to 255");
        if (gw_options_get_bool(opts, "terminal", true, &e->terminal) < 0)
                return bad_option(e, "terminal", "expected true or false");
        /* vars first: the command lines are checked against them. */
        v = gw_options_get(opts, "vars");
        if (v && (r = parse_vars(e, v)) < 0)
                return r;
        v = gw_options_get(opts, "env");
        if (v && (r = parse_env(e, v)) < 0)
                return r;
        v = gw_options_get(opts, "command");
        if (!v)
                return bad_option(e, "command",
                                  "required: the flasher's argv, e.g. "
                                  "[openFPGALoader, -b, ulx3s, \"{image}\"]");
        r = parse_list(e, "command", v, 1, ARGV_MAX, &e->command);
        if (r >= 0)
                r = check_cmdline(e, "command", &e->command, false);
        if (r < 0)
                return r;
        v = gw_options_get(opts, "identify-command");
        if (v) {
                r = parse_list(e, "identify-command", v, 1, ARGV_MAX, &e->identify_command);
                if (r >= 0)
                        r = check_cmdline(e, "identify-command", &e->identify_command, true);
                if (r < 0)
                        return r;
        }
        v = gw_options_get(opts, "progress");
        if (v) {
                r = compile(e, "progress", v, &e->progress, 1, 2, &e->has_progress);
                if (r < 0)
                        return r;
        }
        v = gw_options_get(opts, "identify-pattern");
        if (v && e->identify_command.n == 0)
                return bad_option(e, "identify-pattern", "goes with identify-command");
        return compile(e, "identify-pattern", v ? v : DEFAULT_FACT_PATTERN, &e->fact_re, 2, 2,
                       &e->has_fact_re);
}

static int exec_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct exec *e = priv;
        int r;

        e->host = host;
        e->state = EXEC_IDLE;
        e->out_fd = -1;
        r = parse_config(e, opts);
        if (r < 0)
                config_free(e); /* done() is not called after a failed init() */
        return r;
}

/* ---- The tool's output ---------------------------------------------------------------- */

/* Adds a finished line to the tail kept for the error message. A line that ended in a bare
 * carriage return (a progress bar redrawn in place) is replaced by the next one, as a
 * terminal would show it. */
static void tail_add(struct exec *e, const char *line, bool transient)
{
        size_t slot;

        if (e->tail_n > 0 && e->tail_last_transient)
                slot = (e->tail_n - 1) % TAIL_LINES;
        else
                slot = e->tail_n++ % TAIL_LINES;
        snprintf(e->tail[slot], sizeof(e->tail[slot]), "%s", line);
        e->tail_last_transient = transient;
}

/* The i-th newest line of the tail (1: the newest). */
static const char *tail_line(const struct exec *e, size_t i)
{
        return e->tail[(e->tail_n - i) % TAIL_LINES];
}

/* The last lines of the output, oldest first, joined by " | " within MESSAGE_TAIL_MAX bytes;
 * the newest line always comes (cut to fit if it must be). */
static void tail_text(const struct exec *e, char *buf, size_t size)
{
        size_t have = e->tail_n < TAIL_LINES ? e->tail_n : TAIL_LINES;
        size_t limit = size - 1 < MESSAGE_TAIL_MAX ? size - 1 : MESSAGE_TAIL_MAX;
        size_t n = 0, used = 0;

        /* How many of the newest lines fit. */
        while (n < have) {
                size_t len = strlen(tail_line(e, n + 1)) + (n > 0 ? 3 : 0);

                if (n > 0 && used + len > limit)
                        break;
                used += len;
                n++;
        }
        buf[0] = '\0';
        used = 0;
        for (size_t i = n; i >= 1 && used < limit; i--) {
                int k = snprintf(buf + used, limit + 1 - used, "%s%s", used ? " | " : "",
                                 tail_line(e, i));

                if (k < 0)
                        break;
                used += (size_t) k;
        }
}

/* A decimal number with an optional fraction ("45", "45.5", "7,5"): hundredths, or -1. */
static int64_t parse_percent(const char *s, size_t n)
{
        int64_t whole = 0, frac = 0;
        size_t i = 0, digits = 0;

        while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (++digits > 3)
                        return -1;
                whole = whole * 10 + (s[i++] - '0');
        }
        if (digits == 0)
                return -1;
        if (i < n && (s[i] == '.' || s[i] == ',')) {
                size_t fd = 0;

                for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                        if (fd < 2) {
                                frac = frac * 10 + (s[i] - '0');
                                fd++;
                        }
                if (fd == 1)
                        frac *= 10;
        }
        if (i != n)
                return -1;
        whole = whole * 100 + frac;
        return whole > 10000 ? -1 : whole;
}

/* A decimal count of at most 18 digits, or -1. */
static int64_t parse_count(const char *s, size_t n)
{
        int64_t v = 0;

        if (n == 0 || n > 18)
                return -1;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -1;
                v = v * 10 + (s[i] - '0');
        }
        return v;
}

static void report_progress(struct exec *e, uint64_t done)
{
        uint64_t total = e->reader->size;

        if (done > total)
                done = total;
        if (done == e->last_progress)
                return;
        e->last_progress = done;
        if (e->host->progress)
                e->host->progress(e->host->ctx, done, total);
}

/* The progress pattern on one line: a percent, or done and total, as bytes of the image. */
static void match_progress(struct exec *e, const char *line)
{
        regmatch_t m[3];
        uint64_t total = e->reader->size;
        unsigned __int128 bytes;

        if (regexec(&e->progress, line, 3, m, 0) != 0 || m[1].rm_so < 0)
                return;
        if (e->progress.re_nsub == 1) {
                int64_t p = parse_percent(line + m[1].rm_so, (size_t) (m[1].rm_eo - m[1].rm_so));

                if (p < 0)
                        return;
                bytes = (unsigned __int128) total * (uint64_t) p / 10000;
        } else {
                int64_t d, t;

                if (m[2].rm_so < 0)
                        return;
                d = parse_count(line + m[1].rm_so, (size_t) (m[1].rm_eo - m[1].rm_so));
                t = parse_count(line + m[2].rm_so, (size_t) (m[2].rm_eo - m[2].rm_so));
                if (d < 0 || t <= 0 || d > t)
                        return;
                bytes = (unsigned __int128) total * (uint64_t) d / (uint64_t) t;
        }
        report_progress(e, (uint64_t) bytes);
}

/* identify: a fact from one line, as the identify pattern's two groups say. */
static void match_fact(struct exec *e, const char *line)
{
        char key[FACT_KEY_MAX + 1], value[FACT_VALUE_MAX + 1];
        regmatch_t m[3];
        size_t kn, vn;
        int r;

        if (regexec(&e->fact_re, line, 3, m, 0) != 0 || m[1].rm_so < 0 || m[2].rm_so < 0)
                return;
        kn = (size_t) (m[1].rm_eo - m[1].rm_so);
        vn = (size_t) (m[2].rm_eo - m[2].rm_so);
        while (vn > 0 && line[m[2].rm_so + (regoff_t) vn - 1] == ' ')
                vn--;
        if (kn == 0 || kn > FACT_KEY_MAX || vn == 0 || vn > FACT_VALUE_MAX)
                return;
        for (size_t i = 0; i < kn; i++) {
                char c = line[m[1].rm_so + (regoff_t) i];

                if (c >= 'A' && c <= 'Z')
                        c = (char) (c - 'A' + 'a');
                else if (c == ' ')
                        c = '-';
                key[i] = c;
        }
        key[kn] = '\0';
        memcpy(value, line + m[2].rm_so, vn);
        value[vn] = '\0';
        if (!gw_options_get(e->facts, key) && gw_options_count(e->facts) >= FACTS_MAX) {
                gw_proto_debug(e->host, "exec: identify: more than %d facts, ignoring %s",
                               FACTS_MAX, key);
                return;
        }
        r = gw_options_set(e->facts, key, value);
        if (r < 0)
                gw_proto_debug(e->host, "exec: identify: cannot keep %s: %s, ignoring", key,
                               strerror(-r));
}

/* One line of output, printable ASCII only: progress, facts, the tail. */
static void end_line(struct exec *e, bool transient)
{
        size_t a = 0, b = e->line_len;

        e->line[e->line_len] = '\0';
        e->line_len = 0;
        while (a < b && e->line[a] == ' ')
                a++;
        while (b > a && e->line[b - 1] == ' ')
                b--;
        e->line[b] = '\0';
        if (a == b)
                return;
        e->out_lines++;
        if (e->op == OP_INSTALL && e->has_progress)
                match_progress(e, e->line + a);
        if (e->op == OP_IDENTIFY && e->facts)
                match_fact(e, e->line + a);
        tail_add(e, e->line + a, transient);
}

/* Feeds output bytes: lines end at LF or at a bare CR; escape sequences (colours, cursor
 * moves) are dropped, other control bytes and non-ASCII become '?' or a space; a line's bytes
 * past LINE_MAX_LEN are dropped. */
static void feed(struct exec *e, const uint8_t *buf, size_t n)
{
        e->out_bytes += n;
        for (size_t i = 0; i < n; i++) {
                uint8_t c = buf[i];

                if (c == '\n' || c == '\r') {
                        e->esc = ESC_NONE;
                        if (c == '\n' && e->after_cr && e->line_len == 0) {
                                /* CR LF: the line the CR ended stays. */
                                e->tail_last_transient = false;
                                e->after_cr = false;
                                continue;
                        }
                        end_line(e, c == '\r');
                        e->after_cr = c == '\r';
                        continue;
                }
                e->after_cr = false;
                switch (e->esc) {
                case ESC_START:
                        e->esc = c == '[' ? ESC_CSI : c == ']' ? ESC_OSC : ESC_NONE;
                        continue;
                case ESC_CSI:
                        if (c >= 0x40 && c <= 0x7e)
                                e->esc = ESC_NONE;
                        continue;
                case ESC_OSC:
                        if (c == 0x07)
                                e->esc = ESC_NONE;
                        else if (c == 0x1b)
                                e->esc = ESC_START;
                        continue;
                default:
                        break;
                }
                if (c == 0x1b) {
                        e->esc = ESC_START;
                        continue;
                }
                if (c == '\t')
                        c = ' ';
                else if (c < 0x20 || c > 0x7e)
                        c = '?';
                if (e->line_len < LINE_MAX_LEN)
                        e->line[e->line_len++] = (char) c;
        }
}

/* Reads what the tool wrote, up to max bytes; never waits. Closes the pipe at its end. */
static void pump(struct exec *e, size_t max)
{
        uint8_t buf[4096];
        size_t got = 0;

        while (e->out_fd >= 0 && got < max) {
                ssize_t n = read(e->out_fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0) {
                        /* The end: every writer is gone (or the pipe failed). */
                        close(e->out_fd);
                        e->out_fd = -1;
                        break;
                }
                feed(e, buf, (size_t) n);
                got += (size_t) n;
        }
}

/* ---- The child --------------------------------------------------------------------------- */

/* The environment with the env option's NAME=VALUE over the process's own. */
static char **build_env(struct exec *e)
{
        size_t n = 0, k = 0;
        char **out;

        while (environ && environ[n])
                n++;
        out = calloc(n + e->env.n + 1, sizeof(*out));
        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                bool overridden = false;

                for (size_t j = 0; j < e->env.n && !overridden; j++) {
                        size_t nl = strcspn(e->env.items[j], "=") + 1;

                        overridden = strncmp(environ[i], e->env.items[j], nl) == 0;
                }
                if (!overridden)
                        out[k++] = environ[i];
        }
        for (size_t j = 0; j < e->env.n; j++)
                out[k++] = e->env.items[j];
        return out;
}

/* A pseudo-terminal for the tool's output: tools write to a terminal as they would for a person
 * (line by line, progress bars redrawn in place), where a pipe would get their output in
 * blocks at the end. Raw, so that nothing is translated; 120 columns. fds[0] is the master
 * (non-blocking), fds[1] the tool's side. */
static int open_terminal(int fds[2])
{
        struct winsize ws = {.ws_row = 24, .ws_col = 120};
        struct termios t;
        char name[64];
        int m, s, r;

        m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (m < 0)
                return -errno;
        if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0) {
                r = -errno;
                close(m);
                return r;
        }
        s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (s < 0 || tcgetattr(s, &t) < 0) {
                r = -errno;
                if (s >= 0)
                        close(s);
                close(m);
                return r;
        }
        cfmakeraw(&t);
        if (tcsetattr(s, TCSANOW, &t) < 0 || ioctl(s, TIOCSWINSZ, &ws) < 0 ||
            fcntl(m, F_SETFL, O_NONBLOCK) < 0) {
                r = -errno;
                close(s);
                close(m);
                return r;
        }
        fds[0] = m;
        fds[1] = s;
        return 0;
}

static int open_pipe(int fds[2])
{
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        /* Only our end: the tool's stdout stays blocking. */
        if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0) {
                int r = -errno;

                close(fds[0]);
                close(fds[1]);
                return r;
        }
        return 0;
}

/* Starts argv[0] with argv: stdin /dev/null, stdout and stderr into one pseudo-terminal or pipe
 * whose other end is kept (non-blocking), in a process group of its own, with no signal
 * blocked or ignored, and no descriptor of ours. A program without '/' is looked up in PATH.
 * 0 or -errno. */
static int spawn(struct exec *e, char *const *argv)
{
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        char **envp = NULL;
        int fds[2], r;

        r = e->terminal ? open_terminal(fds) : open_pipe(fds);
        if (r < 0)
                return r;
        r = posix_spawn_file_actions_init(&fa);
        if (r != 0) {
                close(fds[0]);
                close(fds[1]);
                return -r;
        }
        r = posix_spawnattr_init(&attr);
        if (r != 0) {
                posix_spawn_file_actions_destroy(&fa);
                close(fds[0]);
                close(fds[1]);
                return -r;
        }
        sigemptyset(&none);
        sigfillset(&all);
        if (r == 0)
                r = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
        if (r == 0)
                r = posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
        /* The loop blocks the signals it reads through a signalfd: a tool must not inherit
         * that, nor an ignored SIGPIPE or SIGTERM. */
        if (r == 0)
                r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                        POSIX_SPAWN_SETSIGDEF);
        if (r == 0)
                r = posix_spawnattr_setpgroup(&attr, 0);
        if (r == 0)
                r = posix_spawnattr_setsigmask(&attr, &none);
        if (r == 0)
                r = posix_spawnattr_setsigdefault(&attr, &all);
        if (r == 0 && e->env.n > 0) {
                envp = build_env(e);
                if (!envp)
                        r = ENOMEM;
        }
        if (r == 0) {
                char *const *ev = envp ? envp : environ;

                if (strchr(argv[0], '/'))
                        r = posix_spawn(&e->pid, argv[0], &fa, &attr, argv, ev);
                else
                        r = posix_spawnp(&e->pid, argv[0], &fa, &attr, argv, ev);
        }
        free(envp);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
        close(fds[1]);
        if (r != 0) {
                e->pid = 0;
                close(fds[0]);
                return -r;
        }
        e->out_fd = fds[0];
        return 0;
}

/* Signals the tool's process group. */
static void signal_group(struct exec *e, int sig)
{
        if (e->pid > 0 && killpg(e->pid, sig) < 0 && errno != ESRCH)
                gw_proto_debug(e->host, "exec: cannot signal process group %d: %m", (int) e->pid);
}

/* Kills and reaps the tool now, if it still runs: for done(), which must leave nothing (a
 * tool stuck in the kernel is waited for GW_PROC_REAP_MS, then left). */
static void reap_now(struct exec *e)
{
        if (e->pid > 0 && gw_proc_kill_reap(e->pid, true, GW_PROC_REAP_MS) == -ETIMEDOUT)
                gw_proto_debug(e->host,
                               "exec: %s (pid %d) did not die of SIGKILL within %u ms, left behind",
                               e->tool, (int) e->pid, GW_PROC_REAP_MS);
        e->pid = 0;
        if (e->out_fd >= 0) {
                close(e->out_fd);
                e->out_fd = -1;
        }
}

static const char *signal_name(int sig, char *buf, size_t size)
{
        const char *abbrev = sigabbrev_np(sig);

        if (abbrev)
                snprintf(buf, size, "SIG%s", abbrev);
        else
                snprintf(buf, size, "signal %d", sig);
        return buf;
}

/* ms as seconds: "3", "1.5", "0.25". */
static const char *seconds(uint64_t ms, char *buf, size_t size)
{
        uint64_t frac = ms % 1000;
        int digits = 3;

        if (frac == 0) {
                snprintf(buf, size, "%" PRIu64, ms / 1000);
                return buf;
        }
        while (frac % 10 == 0) {
                frac /= 10;
                digits--;
        }
        snprintf(buf, size, "%" PRIu64 ".%0*" PRIu64, ms / 1000, digits, frac);
        return buf;
}

/* The tool ended: what it means for the operation. */
static int ended(struct exec *e, const siginfo_t *si)
{
        char tail[MESSAGE_TAIL_MAX + 1], sig[32], secs[32];
        const char *sep;

        tail_text(e, tail, sizeof(tail));
        sep = tail[0] ? ": " : " (no output)";
        gw_proto_debug(e->host,
                       "exec: %s ended (code %d, status %d) after %" PRIu64 " ms, %" PRIu64
                       " bytes and %" PRIu64 " lines of output",
                       e->tool, si->si_code, si->si_status, now_ms(e) - e->started, e->out_bytes,
                       e->out_lines);
        if (e->stop == STOP_CANCEL)
                return fail(e, -ECANCELED, "cancelled");
        if (e->stop == STOP_TIMEOUT) {
                if (e->out_bytes == 0)
                        return fail(e, -ETIMEDOUT, "%s: no result after %s s, and no output at all",
                                    e->tool, seconds(e->timeout_ms, secs, sizeof(secs)));
                return fail(e, -ETIMEDOUT, "%s: no result after %s s: %s", e->tool,
                            seconds(e->timeout_ms, secs, sizeof(secs)), tail);
        }
        if (si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED)
                return fail(e, -EIO, "%s: killed by %s%s%s%s", e->tool,
                            signal_name(si->si_status, sig, sizeof(sig)),
                            si->si_code == CLD_DUMPED ? " (core dumped)" : "", sep, tail);
        if (si->si_code != CLD_EXITED)
                return fail(e, -EIO, "%s: ended oddly (code %d)%s%s", e->tool, si->si_code, sep,
                            tail);
        if ((uint64_t) si->si_status != e->success_exit)
                return fail(e, -EIO, "%s: exit status %d%s%s", e->tool, si->si_status, sep, tail);
        if (e->op == OP_INSTALL) {
                e->last_progress = UINT64_MAX;
                report_progress(e, e->reader->size);
        }
        gw_proto_debug(e->host, "exec: %s succeeded", e->tool);
        set_state(e, EXEC_DONE);
        e->host->set_deadline(e->host->ctx, 0);
        return GW_PROTO_DONE;
}

/* DRAINING: reads what the tool wrote last until the end of its output (every writer gone) or
 * DRAIN_MS; then the result. */
static int drain(struct exec *e)
{
        pump(e, DRAIN_MAX);
        if (e->out_fd >= 0 && now_ms(e) < e->deadline) {
                arm_tick(e);
                return GW_PROTO_CONTINUE;
        }
        if (e->out_fd >= 0)
                gw_proto_debug(e->host,
                               "exec: the output of %s did not end %d ms after it exited, ignoring",
                               e->tool, DRAIN_MS);
        if (e->line_len > 0)
                end_line(e, false);
        reap_now(e);
        return ended(e, &e->exit_info);
}

/* Has the tool ended? Looks without reaping first, so that its process group id stays ours
 * while whatever it left in the group is killed (it would hold the output open for ever); then
 * reaps it and reads the rest of its output (DRAINING). 1 when it ended, with *ret what the
 * operation returns, 0 when it runs. */
static int check_exit(struct exec *e, int *ret)
{
        siginfo_t si;

        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t) e->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
                int err = errno;

                if (err == EINTR)
                        return 0;
                /* ECHILD: someone else reaped it (SIGCHLD ignored?). */
                e->pid = 0;
                reap_now(e);
                *ret = fail(e, -err, "%s: lost track of the tool: %s", e->tool, strerror(err));
                return 1;
        }
        if (si.si_pid == 0)
                return 0;
        signal_group(e, SIGKILL);
        while (waitpid(e->pid, NULL, 0) < 0 && errno == EINTR)
                ;
        e->pid = 0;
        e->exit_info = si;
        e->deadline = now_ms(e) + DRAIN_MS;
        set_state(e, EXEC_DRAINING);
        *ret = drain(e);
        return 1;
}

/* Ends the tool: SIGTERM to its process group now, SIGKILL after kill-timeout-ms. */
static void stop(struct exec *e, enum stop_reason why)
{
        gw_proto_debug(e->host, "exec: stopping %s (process group %d): %s", e->tool, (int) e->pid,
                       why == STOP_TIMEOUT ? "timeout" : "cancelled");
        e->stop = why;
        signal_group(e, SIGTERM);
        e->deadline = now_ms(e) + e->kill_timeout_ms;
        set_state(e, EXEC_STOPPING);
}

/* ---- Operations ---------------------------------------------------------------------------- */

/* The file name extension of name ("bit" of "top.bit"), alphanumeric, or "". */
static void name_suffix(const char *name, char *buf, size_t size)
{
        const char *dot = name ? strrchr(name, '.') : NULL;
        size_t n;

        buf[0] = '\0';
        if (!dot || dot == name)
                return;
        n = strlen(dot + 1);
        if (n == 0 || n > SUFFIX_MAX || n + 2 > size)
                return;
        for (size_t i = 0; i < n; i++) {
                char c = dot[1 + i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
                        return;
        }
        snprintf(buf, size, ".%s", dot + 1);
}

/* An image that is no file of its own: a private copy (mode 0600) in $TMPDIR or /tmp, with the
 * name's extension (tools guess the format from it), removed by done(). */
static int copy_image(struct exec *e)
{
        const char *dir = secure_getenv("TMPDIR");
        char suffix[SUFFIX_MAX + 2], buf[64 * 1024];
        uint64_t off = 0;
        int fd, n;

        if (!dir || dir[0] != '/')
                dir = "/tmp";
        name_suffix(e->reader->name, suffix, sizeof(suffix));
        n = snprintf(e->temp_path, sizeof(e->temp_path), "%s/gw-exec-XXXXXX%s", dir, suffix);
        if (n < 0 || (size_t) n >= sizeof(e->temp_path)) {
                e->temp_path[0] = '\0';
                return fail(e, -ENAMETOOLONG, "TMPDIR is too long");
        }
        fd = mkostemps(e->temp_path, (int) strlen(suffix), O_CLOEXEC);
        if (fd < 0) {
                int r = -errno;

                e->temp_path[0] = '\0';
                return fail(e, r, "cannot make a temporary copy of the image in %s: %s", dir,
                            strerror(-r));
        }
        while (off < e->reader->size) {
                size_t want = e->reader->size - off < sizeof(buf) ? (size_t) (e->reader->size - off)
                                                                  : sizeof(buf);
                ssize_t got = e->reader->pread(e->reader->ctx, buf, want, off);
                size_t w = 0;

                if (got <= 0) {
                        close(fd);
                        return fail(e, got < 0 ? (int) got : -EIO,
                                    "reading the image at %" PRIu64 " failed: %s", off,
                                    got < 0 ? strerror((int) -got) : "it ended early");
                }
                while (w < (size_t) got) {
                        ssize_t k = write(fd, buf + w, (size_t) got - w);

                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0) {
                                int r = k < 0 ? -errno : -EIO;

                                close(fd);
                                return fail(e, r, "writing the temporary copy %s failed: %s",
                                            e->temp_path, strerror(-r));
                        }
                        w += (size_t) k;
                }
                off += (uint64_t) got;
        }
        if (close(fd) < 0)
                return fail(e, -errno, "writing the temporary copy %s failed: %m", e->temp_path);
        return 0;
}

/* {name}: the image's name with anything but [A-Za-z0-9._+-] made '_', never starting with
 * '-', so that it can be neither an option nor a path. */
static void safe_name(const char *name, char *buf, size_t size)
{
        size_t n = 0;

        for (const char *p = name ? name : "image"; *p && n + 1 < size; p++) {
                char c = *p;
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '+' || c == '-';

                buf[n] = ok && !(n == 0 && c == '-') ? c : '_';
                n++;
        }
        buf[n] = '\0';
        if (n == 0)
                snprintf(buf, size, "image");
}

static void cmdline_argv_free(char **argv)
{
        for (size_t i = 0; argv && argv[i]; i++)
                free(argv[i]);
        free(argv);
}

/* The command line with its placeholders expanded, NULL-terminated, into *ret. */
static int build_argv(struct exec *e, const struct cmdline *c, const struct subst *s, char ***ret)
{
        char **argv = calloc(c->n + 1, sizeof(*argv));
        char why[160];

        if (!argv)
                return -ENOMEM;
        for (size_t i = 0; i < c->n; i++) {
                ssize_t n = expand(e, c->items[i], s, NULL, 0, why, sizeof(why));

                if (n < 0) {
                        cmdline_argv_free(argv);
                        return fail(e, -EINVAL, "item %zu: %s", i + 1, why);
                }
                argv[i] = malloc((size_t) n + 1);
                if (!argv[i]) {
                        cmdline_argv_free(argv);
                        return -ENOMEM;
                }
                expand(e, c->items[i], s, argv[i], (size_t) n + 1, why, sizeof(why));
        }
        *ret = argv;
        return 0;
}

static void log_argv(struct exec *e, char *const *argv)
{
        char line[1024];
        size_t used = 0;

        line[0] = '\0';
        for (size_t i = 0; argv[i] && used + 1 < sizeof(line); i++) {
                int n = snprintf(line + used, sizeof(line) - used, "%s'%s'", i ? " " : "", argv[i]);

                if (n < 0)
                        break;
                used += (size_t) n;
        }
        gw_proto_debug(e->host, "exec: running %s", line);
}

/* Runs c for op; GW_PROTO_CONTINUE or a failure. */
static int start(struct exec *e, enum exec_op op, const struct cmdline *c, const struct subst *s)
{
        const char *base;
        char **argv = NULL;
        int r;

        r = build_argv(e, c, s, &argv);
        if (r < 0)
                return e->state == EXEC_FAILED ? r : fail(e, r, "%s", strerror(-r));
        base = strrchr(argv[0], '/');
        base = base && base[1] ? base + 1 : argv[0];
        snprintf(e->tool, sizeof(e->tool), "%s", base);
        e->op = op;
        e->stop = STOP_NONE;
        log_argv(e, argv);
        r = spawn(e, argv);
        if (r < 0) {
                if (r == -ENOENT)
                        r = fail(e, r, "cannot run %.200s: no such program%s", argv[0],
                                 strchr(argv[0], '/') ? "" : " in PATH");
                else
                        r = fail(e, r, "cannot run %.200s: %s", argv[0], strerror(-r));
                cmdline_argv_free(argv);
                return r;
        }
        cmdline_argv_free(argv);
        gw_proto_debug(e->host, "exec: %s runs as process %d", e->tool, (int) e->pid);
        e->started = now_ms(e);
        e->deadline = e->started + e->timeout_ms;
        set_state(e, EXEC_RUNNING);
        arm_tick(e);
        return GW_PROTO_CONTINUE;
}

static void exec_done(void *priv)
{
        struct exec *e = priv;

        reap_now(e);
        if (e->temp_path[0]) {
                if (unlink(e->temp_path) < 0)
                        gw_proto_debug(e->host, "exec: cannot remove %s: %m", e->temp_path);
                e->temp_path[0] = '\0';
        }
        config_free(e);
}

static int exec_install(void *priv, const struct gw_reader *reader)
{
        struct exec *e = priv;
        char size[24], name[256];
        struct subst s;
        int r;

        if (e->state != EXEC_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        e->reader = reader;
        e->last_progress = UINT64_MAX;
        if (reader->path && reader->path[0]) {
                /* A relative path that starts like an option is made unmistakably a path. */
                r = snprintf(e->image_path, sizeof(e->image_path), "%s%s",
                             reader->path[0] == '/' ? "" : "./", reader->path);
                if (r < 0 || (size_t) r >= sizeof(e->image_path))
                        return fail(e, -ENAMETOOLONG, "the image's path is too long");
        } else {
                r = copy_image(e);
                if (r < 0)
                        return r;
                snprintf(e->image_path, sizeof(e->image_path), "%s", e->temp_path);
        }
        snprintf(size, sizeof(size), "%" PRIu64, reader->size);
        safe_name(reader->name, name, sizeof(name));
        s = (struct subst){.image = e->image_path, .size = size, .name = name};
        r = start(e, OP_INSTALL, &e->command, &s);
        if (r >= 0)
                report_progress(e, 0);
        return r;
}

static int exec_identify(void *priv, struct gw_options *ret)
{
        struct exec *e = priv;
        static const struct subst none = {0};

        if (e->state != EXEC_IDLE)
                return -EBUSY;
        if (!ret)
                return -EINVAL;
        if (e->identify_command.n == 0) {
                /* Nothing to ask: the node reports nothing, and is not checked against it. */
                gw_proto_debug(e->host, "exec: no identify-command: nothing to report");
                set_state(e, EXEC_DONE);
                return GW_PROTO_DONE;
        }
        e->facts = ret;
        return start(e, OP_IDENTIFY, &e->identify_command, &none);
}

static int exec_input(void *priv, const uint8_t *buf, size_t n)
{
        struct exec *e = priv;

        /* The none transport has nothing to say; anything else is not ours to read. */
        return result(e);
}

static int exec_timeout(void *priv)
{
        struct exec *e = priv;
        uint64_t now;
        int r;

        if (e->state == EXEC_DRAINING)
                return drain(e);
        if (e->state != EXEC_RUNNING && e->state != EXEC_STOPPING && e->state != EXEC_KILLING)
                return result(e);
        pump(e, READ_PER_TICK);
        if (check_exit(e, &r))
                return r;
        now = now_ms(e);
        if (now >= e->deadline) {
                switch (e->state) {
                case EXEC_RUNNING:
                        stop(e, STOP_TIMEOUT);
                        break;
                case EXEC_STOPPING:
                        gw_proto_debug(e->host,
                                       "exec: %s outlived SIGTERM by %" PRIu64 " ms: SIGKILL",
                                       e->tool, e->kill_timeout_ms);
                        signal_group(e, SIGKILL);
                        e->deadline = now + e->kill_timeout_ms;
                        set_state(e, EXEC_KILLING);
                        break;
                default:
                        /* Not even SIGKILL ended it (a process stuck in the kernel): done()
                         * reaps it. */
                        return fail(e, e->stop == STOP_CANCEL ? -ECANCELED : -ETIMEDOUT,
                                    "%s: still there %" PRIu64 " ms after SIGKILL", e->tool,
                                    e->kill_timeout_ms);
                }
        }
        arm_tick(e);
        return GW_PROTO_CONTINUE;
}

static int exec_cancel(void *priv)
{
        struct exec *e = priv;

        switch (e->state) {
        case EXEC_RUNNING:
                stop(e, STOP_CANCEL);
                arm_tick(e);
                return GW_PROTO_CONTINUE;
        case EXEC_STOPPING:
        case EXEC_KILLING:
                e->stop = STOP_CANCEL;
                return GW_PROTO_CONTINUE;
        case EXEC_DRAINING:
                /* It ended by itself: what it said stands. */
                return GW_PROTO_CONTINUE;
        case EXEC_FAILED:
                return e->error == -ECANCELED ? e->error : -ECANCELED;
        default:
                set_state(e, EXEC_FAILED);
                e->error = -ECANCELED;
                e->host->set_deadline(e->host->ctx, 0);
                return -ECANCELED;
        }
}

/* clang-format off */
static const char *const exec_options[] = {
    "command", "identify-command", "identify-pattern", "progress", "timeout-ms",
    "kill-timeout-ms", "success-exit", "terminal", "env", "vars", NULL,
};

/* Everything that shapes the tool's command line, environment or how its result is read: only
 * the node's configuration sets it. A manifest may set timeout-ms alone. */
static const char *const exec_node_options[] = {
    "command", "identify-command", "identify-pattern", "progress", "env", "vars",
    "kill-timeout-ms", "success-exit", "terminal", NULL,
};
/* clang-format on */

const struct gw_protocol_ops gw_protocol_exec_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "exec",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct exec),
    .init = exec_init,
    .done = exec_done,
    .install = exec_install,
    .input = exec_input,
    .timeout = exec_timeout,
    .cancel = exec_cancel,
    .identify = exec_identify,
    .hangup = NULL,
    .options = exec_options,
    .node_options = exec_node_options,
};
