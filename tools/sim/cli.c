/* Command-line and main-loop helpers of the simulators (see cli.h). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/signalfd.h>

#include "cli.h"

void gw_sim_log(bool verbose, const char *prog, const char *fmt, ...)
{
        va_list ap;

        if (!verbose)
                return;
        va_start(ap, fmt);
        fprintf(stderr, "%s: ", prog);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}

int gw_sim_parse_u64(const char *str, int base, uint64_t max, uint64_t *ret)
{
        unsigned long long v;
        char *end;

        if (!str || *str < '0' || *str > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(str, &end, base);
        if (errno != 0 || *end != '\0' || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

int gw_sim_signalfd(const int *signals, size_t n)
{
        sigset_t mask;
        int fd, r;

        signal(SIGPIPE, SIG_IGN);
        sigemptyset(&mask);
        for (size_t i = 0; i < n; i++)
                sigaddset(&mask, signals[i]);
        r = pthread_sigmask(SIG_BLOCK, &mask, NULL);
        if (r != 0)
                return -r;
        fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        if (fd < 0)
                return -errno;
        return fd;
}

struct timespec gw_sim_timeout(uint64_t at_ns, uint64_t now_ns)
{
        uint64_t left = at_ns > now_ns ? at_ns - now_ns : 0;

        return (struct timespec){.tv_sec = (time_t) (left / 1000000000ULL),
                                 .tv_nsec = (long) (left % 1000000000ULL)};
}
