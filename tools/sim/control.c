/* The simulators' run-time control channel (see control.h): a FIFO kept open by our own writer,
 * or a regular file read from where it ended when we opened it, split into lines. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control.h"

int gw_sim_control_open(struct gw_sim_control *c, const char *path)
{
        struct stat st;
        bool made = false;
        int fd, wfd = -1, r;

        if (c->open)
                return -EBUSY;
        if (stat(path, &st) < 0) {
                if (errno != ENOENT || mkfifo(path, 0600) < 0)
                        return -errno;
                made = true;
                st.st_mode = S_IFIFO;
                st.st_size = 0;
        }
        if (S_ISFIFO(st.st_mode)) {
                fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
                /* Our own writer keeps the FIFO from reporting end-of-file between writers. */
                if (fd >= 0)
                        wfd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        } else if (S_ISREG(st.st_mode)) {
                /* Commands appended while we run: what is there already is old. */
                fd = open(path, O_RDONLY | O_CLOEXEC);
        } else {
                return -EINVAL;
        }
        if (fd < 0 || (S_ISFIFO(st.st_mode) && wfd < 0)) {
                r = -errno;
                if (fd >= 0)
                        close(fd);
                if (made)
                        unlink(path);
                return r;
        }
        *c = (struct gw_sim_control){
            .path = path,
            .open = true,
            .fifo = S_ISFIFO(st.st_mode),
            .made = made,
            .fd = fd,
            .wfd = wfd,
            .off = S_ISFIFO(st.st_mode) ? 0 : st.st_size,
        };
        return 0;
}

int gw_sim_control_poll_fd(const struct gw_sim_control *c)
{
        return c->open && c->fifo ? c->fd : -1;
}

bool gw_sim_control_rereads(const struct gw_sim_control *c)
{
        return c->open && !c->fifo;
}

static void take_bytes(struct gw_sim_control *c, const char *buf, size_t n,
                       void (*on_line)(char *line, void *userdata), void *userdata)
{
        for (size_t i = 0; i < n; i++) {
                if (buf[i] == '\n') {
                        c->line[c->len] = '\0';
                        if (!c->overlong)
                                on_line(c->line, userdata);
                        c->len = 0;
                        c->overlong = false;
                } else if (c->len + 1 < sizeof(c->line)) {
                        c->line[c->len++] = buf[i];
                } else {
                        c->overlong = true;
                }
        }
}

void gw_sim_control_read(struct gw_sim_control *c, void (*on_line)(char *line, void *userdata),
                         void *userdata)
{
        char buf[512];
        ssize_t n;

        if (!c->open)
                return;
        for (;;) {
                if (c->fifo)
                        n = read(c->fd, buf, sizeof(buf));
                else
                        n = pread(c->fd, buf, sizeof(buf), c->off);
                if (n <= 0)
                        return;
                c->off += n;
                take_bytes(c, buf, (size_t) n, on_line, userdata);
        }
}

uint64_t gw_sim_control_reread(struct gw_sim_control *c, uint64_t now_ns,
                               void (*on_line)(char *line, void *userdata), void *userdata)
{
        if (!gw_sim_control_rereads(c))
                return UINT64_MAX;
        if (now_ns >= c->reread_ns) {
                gw_sim_control_read(c, on_line, userdata);
                c->reread_ns = now_ns + (uint64_t) GW_SIM_CONTROL_RECHECK_MS * 1000000u;
        }
        return c->reread_ns;
}

int gw_sim_control_words(char *line, char **words, size_t max)
{
        char *save = NULL, *w;
        size_t n = 0;

        for (w = strtok_r(line, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
                if (n == 0 && w[0] == '#')
                        return 0;
                if (n == max)
                        return -E2BIG;
                words[n++] = w;
        }
        return (int) n;
}

void gw_sim_control_done(struct gw_sim_control *c)
{
        if (!c->open)
                return;
        close(c->fd);
        if (c->wfd >= 0)
                close(c->wfd);
        if (c->made)
                unlink(c->path);
        *c = (struct gw_sim_control){.open = false};
}
