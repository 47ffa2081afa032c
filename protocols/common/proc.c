/* Ending a helper process (see proc.h). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"

int gw_proc_kill_reap(pid_t pid, bool group, unsigned wait_ms)
{
        int fd;
        pid_t w;

        if (pid <= 0)
                return 0;
        if (group)
                killpg(pid, SIGKILL);
        else
                kill(pid, SIGKILL);
        /* A pidfd is readable once the process ended: a bounded wait, no polling. */
        fd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (fd >= 0) {
                struct pollfd p = {.fd = fd, .events = POLLIN};

                while (poll(&p, 1, (int) wait_ms) < 0 && errno == EINTR)
                        ;
                close(fd);
        }
        do
                w = waitpid(pid, NULL, WNOHANG);
        while (w < 0 && errno == EINTR);
        if (w < 0)
                return errno == ECHILD ? 0 : -errno;
        return w == pid ? 0 : -ETIMEDOUT;
}
