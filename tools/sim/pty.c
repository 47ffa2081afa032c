/* The simulators' pseudo-terminals (see pty.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "pty.h"

static int open_master(char *slave, size_t slave_size, int *ret_master)
{
        struct termios tio;
        int master, fd, r;

        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0)
                return -errno;
        if (grantpt(master) < 0 || unlockpt(master) < 0 ||
            ptsname_r(master, slave, slave_size) != 0)
                goto fail;
        /* Raw on the slave side; the setting outlives this descriptor. */
        fd = open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                goto fail;
        if (tcgetattr(fd, &tio) == 0) {
                cfmakeraw(&tio);
                tio.c_cflag |= CLOCAL | CREAD;
                tcsetattr(fd, TCSANOW, &tio);
        }
        close(fd);
        if (fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK) < 0)
                goto fail;
        *ret_master = master;
        return 0;
fail:
        r = -errno;
        close(master);
        return r;
}

static int make_link(const char *link, const char *slave)
{
        char tmp[PATH_MAX];
        struct stat st;

        if (lstat(link, &st) == 0 && !S_ISLNK(st.st_mode))
                return -EEXIST; /* not ours to replace */
        if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", link, (int) getpid()) >= (int) sizeof(tmp))
                return -ENAMETOOLONG;
        unlink(tmp);
        if (symlink(slave, tmp) < 0)
                return -errno;
        if (rename(tmp, link) < 0) {
                int r = -errno;

                unlink(tmp);
                return r;
        }
        return 0;
}

int gw_sim_pty_open(const char *prog, const char *link, char *slave, size_t slave_size,
                    int *ret_master)
{
        int master = -1, r;

        r = open_master(slave, slave_size, &master);
        if (r < 0) {
                fprintf(stderr, "%s: cannot create a pseudo-terminal: %s\n", prog, strerror(-r));
                return r;
        }
        if (link) {
                r = make_link(link, slave);
                if (r < 0) {
                        fprintf(stderr, "%s: cannot link %s to %s: %s\n", prog, link, slave,
                                strerror(-r));
                        close(master);
                        return r;
                }
        }
        *ret_master = master;
        return 0;
}

void gw_sim_pty_unlink(const char *link, const char *slave)
{
        char target[PATH_MAX];
        ssize_t n;

        if (!link)
                return;
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return;
        target[n] = '\0';
        if (strcmp(target, slave) == 0)
                unlink(link);
}
