/* The event loop: poll() over the registered fds plus one signalfd, and one-shot timers on
 * CLOCK_MONOTONIC. Small and predictable: a gateway watches tens of fds, not thousands. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "gw/loop.h"

enum source_type {
        SOURCE_IO,
        SOURCE_TIMER,
        SOURCE_SIGNAL,
};

struct gw_source {
        struct gw_loop *loop;
        struct gw_source *next;
        enum source_type type;
        bool dead;
        void *userdata;
        union {
                struct {
                        int fd;
                        short events;
                        gw_io_cb cb;
                } io;
                struct {
                        uint64_t at; /* gw_now_us() time; 0 = disarmed */
                        gw_timer_cb cb;
                } timer;
                struct {
                        int signo;
                        gw_signal_cb cb;
                } sig;
        };
};

struct gw_loop {
        struct gw_source *sources;
        int signal_fd;
        sigset_t signals;
        bool dispatching;
        bool has_dead;
        bool exit;
        int exit_code;
        struct pollfd *pfds;
        struct gw_source **pfd_sources;
        size_t pfd_allocated;
};

static uint64_t now_nsec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

uint64_t gw_now_ms(void)
{
        return now_nsec() / 1000000u;
}

uint64_t gw_now_us(void)
{
        return now_nsec() / 1000u;
}

int gw_loop_new(struct gw_loop **ret)
{
        struct gw_loop *l = calloc(1, sizeof(*l));

        if (!l)
                return -ENOMEM;
        l->signal_fd = -1;
        sigemptyset(&l->signals);
        *ret = l;
        return 0;
}

static void source_unlink(struct gw_source *s)
{
        struct gw_source **p;

        for (p = &s->loop->sources; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        break;
                }
        free(s);
}

static void reap_dead(struct gw_loop *l)
{
        struct gw_source **p = &l->sources;

        while (*p) {
                struct gw_source *s = *p;

                if (s->dead) {
                        *p = s->next;
                        free(s);
                } else {
                        p = &s->next;
                }
        }
        l->has_dead = false;
}

struct gw_loop *gw_loop_free(struct gw_loop *l)
{
        if (!l)
                return NULL;
        while (l->sources) {
                struct gw_source *s = l->sources;

                l->sources = s->next;
                free(s);
        }
        if (l->signal_fd >= 0) {
                sigprocmask(SIG_UNBLOCK, &l->signals, NULL);
                close(l->signal_fd);
        }
        free(l->pfds);
        free(l->pfd_sources);
        free(l);
        return NULL;
}

static struct gw_source *source_new(struct gw_loop *l, enum source_type type, void *userdata)
{
        struct gw_source *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        s->loop = l;
        s->type = type;
        s->userdata = userdata;
        s->next = l->sources;
        l->sources = s;
        return s;
}

int gw_loop_add_io(struct gw_loop *l, int fd, short events, gw_io_cb cb, void *userdata,
                   struct gw_source **ret)
{
        struct gw_source *s;

        if (!l || fd < 0 || !cb)
                return -EINVAL;
        s = source_new(l, SOURCE_IO, userdata);
        if (!s)
                return -ENOMEM;
        s->io.fd = fd;
        s->io.events = events;
        s->io.cb = cb;
        if (ret)
                *ret = s;
        return 0;
}

int gw_source_set_io_events(struct gw_source *s, short events)
{
        if (!s || s->type != SOURCE_IO)
                return -EINVAL;
        s->io.events = events;
        return 0;
}

int gw_loop_add_timer(struct gw_loop *l, uint64_t at_ms, gw_timer_cb cb, void *userdata,
                      struct gw_source **ret)
{
        struct gw_source *s;

        if (!l || !cb)
                return -EINVAL;
        s = source_new(l, SOURCE_TIMER, userdata);
        if (!s)
                return -ENOMEM;
        s->timer.at = at_ms * 1000u;
        s->timer.cb = cb;
        if (ret)
                *ret = s;
        return 0;
}

int gw_source_set_time_us(struct gw_source *s, uint64_t at_us)
{
        if (!s || s->type != SOURCE_TIMER)
                return -EINVAL;
        s->timer.at = at_us;
        return 0;
}

int gw_source_set_time(struct gw_source *s, uint64_t at_ms)
{
        return gw_source_set_time_us(s, at_ms * 1000u);
}

int gw_loop_add_signal(struct gw_loop *l, int signo, gw_signal_cb cb, void *userdata,
                       struct gw_source **ret)
{
        struct gw_source *s;
        sigset_t one;
        int fd;

        if (!l || !cb || signo <= 0 || signo >= NSIG)
                return -EINVAL;
        sigemptyset(&one);
        sigaddset(&one, signo);
        if (sigprocmask(SIG_BLOCK, &one, NULL) < 0)
                return -errno;
        sigaddset(&l->signals, signo);
        fd = signalfd(l->signal_fd, &l->signals, SFD_NONBLOCK | SFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        l->signal_fd = fd;
        s = source_new(l, SOURCE_SIGNAL, userdata);
        if (!s)
                return -ENOMEM;
        s->sig.signo = signo;
        s->sig.cb = cb;
        if (ret)
                *ret = s;
        return 0;
}

struct gw_source *gw_source_free(struct gw_source *s)
{
        if (!s)
                return NULL;
        if (s->loop->dispatching) {
                s->dead = true;
                s->loop->has_dead = true;
        } else {
                source_unlink(s);
        }
        return NULL;
}

static int ensure_pfds(struct gw_loop *l, size_t n)
{
        struct pollfd *p;
        struct gw_source **ps;

        if (n <= l->pfd_allocated)
                return 0;
        p = realloc(l->pfds, n * sizeof(*p));
        if (!p)
                return -ENOMEM;
        l->pfds = p;
        ps = realloc(l->pfd_sources, n * sizeof(*ps));
        if (!ps)
                return -ENOMEM;
        l->pfd_sources = ps;
        l->pfd_allocated = n;
        return 0;
}

static int dispatch_signals(struct gw_loop *l)
{
        struct signalfd_siginfo si;

        for (;;) {
                ssize_t n = read(l->signal_fd, &si, sizeof(si));

                if (n != (ssize_t) sizeof(si))
                        return 0;
                for (struct gw_source *s = l->sources; s; s = s->next) {
                        if (s->dead || s->type != SOURCE_SIGNAL ||
                            s->sig.signo != (int) si.ssi_signo)
                                continue;
                        int r = s->sig.cb(s, s->sig.signo, s->userdata);

                        if (r < 0)
                                return r;
                }
        }
}

int gw_loop_iterate(struct gw_loop *l, int timeout_ms)
{
        uint64_t now, next = UINT64_MAX, wait_ns = UINT64_MAX;
        struct timespec ts, *tsp = NULL;
        size_t n = 0, count = 1;
        int r = 0;

        for (struct gw_source *s = l->sources; s; s = s->next)
                count++;
        r = ensure_pfds(l, count);
        if (r < 0)
                return r;

        for (struct gw_source *s = l->sources; s; s = s->next) {
                if (s->type == SOURCE_IO) {
                        l->pfds[n] = (struct pollfd){.fd = s->io.fd, .events = s->io.events};
                        l->pfd_sources[n++] = s;
                } else if (s->type == SOURCE_TIMER && s->timer.at != 0 && s->timer.at < next) {
                        next = s->timer.at;
                }
        }
        if (l->signal_fd >= 0) {
                l->pfds[n] = (struct pollfd){.fd = l->signal_fd, .events = POLLIN};
                l->pfd_sources[n++] = NULL;
        }

        /* Wait to the microsecond: a timer due at T fires as soon as the clock reaches T, not up
         * to a millisecond later as a poll() timeout rounded from a rounded clock would. */
        if (timeout_ms >= 0)
                wait_ns = (uint64_t) timeout_ms * 1000000u;
        if (next != UINT64_MAX) {
                uint64_t due = next * 1000u, now_ns = now_nsec();
                uint64_t until = due > now_ns ? due - now_ns : 0;

                if (until < wait_ns)
                        wait_ns = until;
        }
        if (wait_ns != UINT64_MAX) {
                if (wait_ns > 60000000000u)
                        wait_ns = 60000000000u;
                ts.tv_sec = (time_t) (wait_ns / 1000000000u);
                ts.tv_nsec = (long) (wait_ns % 1000000000u);
                tsp = &ts;
        }
        if (ppoll(l->pfds, n, tsp, NULL) < 0) {
                if (errno == EINTR)
                        return 0;
                return -errno;
        }

        l->dispatching = true;
        now = gw_now_us();
        for (struct gw_source *s = l->sources; s && r >= 0; s = s->next) {
                if (s->dead || s->type != SOURCE_TIMER || s->timer.at == 0 || s->timer.at > now)
                        continue;
                s->timer.at = 0; /* one-shot: the callback may re-arm */
                r = s->timer.cb(s, now / 1000u, s->userdata);
        }
        for (size_t i = 0; i < n && r >= 0; i++) {
                struct gw_source *s = l->pfd_sources[i];

                if (l->pfds[i].revents == 0)
                        continue;
                if (!s) {
                        r = dispatch_signals(l);
                        continue;
                }
                if (s->dead)
                        continue;
                r = s->io.cb(s, s->io.fd, l->pfds[i].revents, s->userdata);
        }
        l->dispatching = false;
        if (l->has_dead)
                reap_dead(l);
        return r < 0 ? r : 0;
}

int gw_loop_run(struct gw_loop *l)
{
        l->exit = false;
        while (!l->exit) {
                int r = gw_loop_iterate(l, -1);

                if (r < 0)
                        return r;
        }
        return l->exit_code;
}

void gw_loop_exit(struct gw_loop *l, int code)
{
        l->exit = true;
        l->exit_code = code;
}
