/* The uds protocol's key sources (see seedkey.h): a dlopen'ed module called in place, or a
 * program started with posix_spawn (never a shell) whose standard output is read without
 * blocking whenever the protocol's timer polls it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "seedkey.h"

extern char **environ;

/* Environment entries passed on to a key program at most; ours plus its two. */
#define ENV_MAX 1024

int gw_uds_keymod_load(struct gw_uds_keymod *m, const char *path, char *why, size_t why_size)
{
        void *h;
        void *sym;

        memset(m, 0, sizeof(*m));
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
                const char *e = dlerror();

                snprintf(why, why_size, "cannot load seedkey-module %s: %s", path,
                         e ? e : "unknown error");
                return -ENOENT;
        }
        sym = dlsym(h, GW_UDS_SEEDKEY_SYMBOL);
        if (!sym) {
                snprintf(why, why_size, "seedkey-module %s does not export %s", path,
                         GW_UDS_SEEDKEY_SYMBOL);
                dlclose(h);
                return -ENOEXEC;
        }
        m->handle = h;
        /* POSIX guarantees a dlsym() result converts to a function pointer. */
        memcpy(&m->fn, &sym, sizeof(m->fn));
        return 0;
}

int gw_uds_keymod_compute(struct gw_uds_keymod *m, unsigned level, const uint8_t *seed,
                          size_t seed_len, const char *params, uint8_t *key, size_t key_size,
                          char *why, size_t why_size)
{
        int r;

        if (!m->fn) {
                snprintf(why, why_size, "no seedkey-module loaded");
                return -EINVAL;
        }
        r = m->fn(level, seed, seed_len, params, key, key_size);
        if (r < 0) {
                snprintf(why, why_size, "the seedkey-module failed: %s", strerror(-r));
                return r;
        }
        if (r == 0 || (size_t) r > key_size) {
                snprintf(why, why_size, "the seedkey-module returned a key of %d bytes", r);
                return -EINVAL;
        }
        return r;
}

void gw_uds_keymod_unload(struct gw_uds_keymod *m)
{
        if (m->handle)
                dlclose(m->handle);
        memset(m, 0, sizeof(*m));
}

static int hex_digit(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static bool is_space(char c)
{
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int gw_uds_parse_hex(const char *s, uint8_t *ret, size_t size)
{
        size_t n = 0, len;

        while (is_space(*s))
                s++;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
                s += 2;
        len = 0;
        while (s[len] && !is_space(s[len]))
                len++;
        for (size_t i = len; s[i]; i++)
                if (!is_space(s[i]))
                        return -EINVAL;
        if (len == 0 || len % 2 != 0 || len / 2 > size)
                return -EINVAL;
        for (size_t i = 0; i < len; i += 2) {
                int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);

                if (hi < 0 || lo < 0)
                        return -EINVAL;
                ret[n++] = (uint8_t) (hi << 4 | lo);
        }
        return (int) n;
}

static void to_hex(const uint8_t *p, size_t n, char *out)
{
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[p[i] >> 4];
                out[2 * i + 1] = digits[p[i] & 0x0f];
        }
        out[2 * n] = '\0';
}

static void close_fd(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

int gw_uds_keyprog_start(struct gw_uds_keyprog *p, const char *path, char *const *args,
                         size_t n_args, unsigned level, const uint8_t *seed, size_t seed_len,
                         bool seed_on_stdin, char *why, size_t why_size)
{
        char seed_hex[2 * GW_UDS_SEED_MAX + 2], env_seed[sizeof(seed_hex) + 16], env_level[32];
        char *argv[GW_UDS_KEYPROG_ARGS_MAX + 3];
        char **envp = NULL;
        size_t argc = 0, n_env = 0;
        int out[2] = {-1, -1}, in[2] = {-1, -1};
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        pid_t pid;
        int r;

        memset(p, 0, sizeof(*p));
        p->out_fd = -1;
        if (seed_len == 0 || seed_len > GW_UDS_SEED_MAX || n_args > GW_UDS_KEYPROG_ARGS_MAX) {
                snprintf(why, why_size, "seed of %zu bytes or %zu arguments: too many", seed_len,
                         n_args);
                return -EINVAL;
        }
        to_hex(seed, seed_len, seed_hex);
        argv[argc++] = (char *) path;
        for (size_t i = 0; i < n_args; i++)
                argv[argc++] = args[i];
        if (!seed_on_stdin)
                argv[argc++] = seed_hex;
        argv[argc] = NULL;

        while (environ && environ[n_env] && n_env < ENV_MAX)
                n_env++;
        envp = calloc(n_env + 3, sizeof(*envp));
        if (!envp) {
                snprintf(why, why_size, "out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0, j = 0; i < n_env; i++)
                if (strncmp(environ[i], "GW_UDS_SEED=", 12) != 0 &&
                    strncmp(environ[i], "GW_UDS_LEVEL=", 13) != 0)
                        envp[j++] = environ[i];
        snprintf(env_seed, sizeof(env_seed), "GW_UDS_SEED=%s", seed_hex);
        snprintf(env_level, sizeof(env_level), "GW_UDS_LEVEL=%u", level);
        for (size_t j = 0;; j++)
                if (!envp[j]) {
                        envp[j] = env_seed;
                        envp[j + 1] = env_level;
                        break;
                }

        if (pipe2(out, O_CLOEXEC) < 0 || (seed_on_stdin && pipe2(in, O_CLOEXEC) < 0)) {
                r = -errno;
                snprintf(why, why_size, "cannot make a pipe for the key program: %s", strerror(-r));
                goto out;
        }
        if (fcntl(out[0], F_SETFL, O_NONBLOCK) < 0) {
                r = -errno;
                snprintf(why, why_size, "cannot make the key program's pipe non-blocking: %s",
                         strerror(-r));
                goto out;
        }
        if (seed_on_stdin) {
                /* Far below PIPE_BUF: the line is in the pipe before the program runs. */
                size_t n = strlen(seed_hex);

                seed_hex[n] = '\n';
                if (write(in[1], seed_hex, n + 1) != (ssize_t) (n + 1)) {
                        r = -EIO;
                        snprintf(why, why_size, "cannot write the seed for the key program");
                        goto out;
                }
                seed_hex[n] = '\0';
                close_fd(&in[1]);
        }

        r = posix_spawn_file_actions_init(&fa);
        if (r != 0) {
                r = -r;
                snprintf(why, why_size, "posix_spawn_file_actions_init: %s", strerror(-r));
                goto out;
        }
        r = posix_spawnattr_init(&attr);
        if (r != 0) {
                posix_spawn_file_actions_destroy(&fa);
                r = -r;
                snprintf(why, why_size, "posix_spawnattr_init: %s", strerror(-r));
                goto out;
        }
        sigemptyset(&none);
        sigfillset(&all);
        r = posix_spawnattr_setsigmask(&attr, &none);
        if (r == 0)
                r = posix_spawnattr_setsigdefault(&attr, &all);
        if (r == 0)
                r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        if (r == 0 && seed_on_stdin)
                r = posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
        else if (r == 0)
                r = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        if (r == 0)
                r = posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
        if (r == 0)
                r = posix_spawn(&pid, path, &fa, &attr, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        if (r != 0) {
                r = -r;
                snprintf(why, why_size, "cannot start seedkey-program %s: %s", path, strerror(-r));
                goto out;
        }
        p->pid = pid;
        p->out_fd = out[0];
        out[0] = -1;
        r = 0;
out:
        close_fd(&out[0]);
        close_fd(&out[1]);
        close_fd(&in[0]);
        close_fd(&in[1]);
        free(envp);
        return r;
}

/* The program ended (status as waitpid() reports it): its output must be one key in hex. */
static int finish(struct gw_uds_keyprog *p, int status, uint8_t *key, size_t key_size, char *why,
                  size_t why_size)
{
        int n;

        p->pid = 0;
        close_fd(&p->out_fd);
        if (WIFSIGNALED(status)) {
                snprintf(why, why_size, "the seedkey-program was killed by signal %d",
                         WTERMSIG(status));
                return -EIO;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                snprintf(why, why_size, "the seedkey-program exited with status %d",
                         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
                return -EIO;
        }
        p->out[p->len] = '\0';
        if (strlen(p->out) != p->len) {
                snprintf(why, why_size, "the seedkey-program wrote a NUL byte");
                return -EINVAL;
        }
        n = gw_uds_parse_hex(p->out, key, key_size);
        if (n < 0) {
                snprintf(why, why_size,
                         "the seedkey-program did not write one key in hex (1 to %zu bytes): "
                         "\"%.40s\"",
                         key_size, p->out);
                return -EINVAL;
        }
        return n;
}

int gw_uds_keyprog_poll(struct gw_uds_keyprog *p, uint8_t *key, size_t key_size, char *why,
                        size_t why_size)
{
        int status = 0;
        pid_t w;

        if (p->pid <= 0) {
                snprintf(why, why_size, "no seedkey-program running");
                return -ECHILD;
        }
        while (!p->eof) {
                char buf[256];
                ssize_t n = read(p->out_fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n < 0) {
                        int r = -errno;

                        snprintf(why, why_size, "reading the seedkey-program's output: %s",
                                 strerror(-r));
                        gw_uds_keyprog_stop(p);
                        return r;
                }
                if (n == 0) {
                        p->eof = true;
                        break;
                }
                if (p->len + (size_t) n > GW_UDS_KEYPROG_OUTPUT_MAX) {
                        snprintf(why, why_size, "the seedkey-program wrote more than %d bytes",
                                 GW_UDS_KEYPROG_OUTPUT_MAX);
                        gw_uds_keyprog_stop(p);
                        return -EMSGSIZE;
                }
                memcpy(p->out + p->len, buf, (size_t) n);
                p->len += (size_t) n;
        }
        if (!p->eof)
                return 0;
        w = waitpid(p->pid, &status, WNOHANG);
        if (w == 0)
                return 0; /* it closed its output and has not exited yet */
        if (w < 0) {
                int r = -errno;

                snprintf(why, why_size, "waiting for the seedkey-program: %s", strerror(-r));
                p->pid = 0;
                close_fd(&p->out_fd);
                return r;
        }
        return finish(p, status, key, key_size, why, why_size);
}

void gw_uds_keyprog_stop(struct gw_uds_keyprog *p)
{
        /* SIGKILL cannot be caught: the wait is for the kernel to tear it down, bounded. */
        gw_proc_kill_reap(p->pid, false, GW_PROC_REAP_MS);
        p->pid = 0;
        close_fd(&p->out_fd);
}
