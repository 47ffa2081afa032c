/* The simulators' main-loop wait (see loop.h). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "loop.h"

uint64_t gw_sim_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

int gw_sim_wait(const struct gw_sim_wait *w, int master, short events, uint64_t at_ns,
                uint32_t *signo)
{
        struct pollfd p[3];
        struct timespec ts;
        nfds_t np = 0;
        int imaster = -1, isig, ictl = -1;
        uint64_t reread;

        *signo = 0;
        reread = gw_sim_control_reread(w->ctl, gw_sim_now_ns(), w->on_line, w->userdata);
        if (reread < at_ns)
                at_ns = reread;
        if (master >= 0) {
                imaster = (int) np;
                p[np++] = (struct pollfd){.fd = master, .events = events};
        }
        isig = (int) np;
        p[np++] = (struct pollfd){.fd = w->sigfd, .events = POLLIN};
        if (gw_sim_control_poll_fd(w->ctl) >= 0) {
                ictl = (int) np;
                p[np++] = (struct pollfd){.fd = gw_sim_control_poll_fd(w->ctl), .events = POLLIN};
        }
        /* Nothing due (UINT64_MAX): wait for input alone. */
        ts = gw_sim_timeout(at_ns, gw_sim_now_ns());
        if (ppoll(p, np, at_ns == UINT64_MAX ? NULL : &ts, NULL) < 0)
                return errno == EINTR ? 0 : -errno;
        if (p[isig].revents & POLLIN) {
                struct signalfd_siginfo si;

                if (read(w->sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
                        *signo = si.ssi_signo;
                else
                        *signo = SIGTERM;
                return 0;
        }
        if (ictl >= 0 && p[ictl].revents)
                gw_sim_control_read(w->ctl, w->on_line, w->userdata);
        return imaster >= 0 ? p[imaster].revents : 0;
}
