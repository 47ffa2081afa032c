/* The libsystemd adapter: sd_notify, sd_watchdog_enabled and sd_journal_sendv behind our own
 * names, so that the rest of the tree neither includes <systemd/...> nor cares whether this
 * build has libsystemd (GW_HAVE_SYSTEMD in gw-config.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "gw-config.h"
#include "gw/systemd.h"

#if GW_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#endif

bool gw_sd_supported(void)
{
        return GW_HAVE_SYSTEMD;
}

bool gw_sd_journal_stream_is(int fd)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        int used = 0;

        if (!e || sscanf(e, "%llu:%llu%n", &dev, &ino, &used) != 2 || e[used] != '\0')
                return false;
        if (fstat(fd, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

#if GW_HAVE_SYSTEMD

int gw_sd_notify(const char *state)
{
        return sd_notify(0, state);
}

int gw_sd_watchdog_usec(uint64_t *ret_usec)
{
        uint64_t usec = 0;
        int r = sd_watchdog_enabled(0, &usec);

        if (r > 0)
                *ret_usec = usec;
        return r;
}

int gw_sd_journal_send(int level, int error, const char *ident, const char *file, int line,
                       const char *func, const char *deployment, const char *node,
                       const char *message)
{
        /* Fields are bounded by what they are built from: the message is at most what log.c
         * formats, ids and names are at most 64 characters (config and manifest limits). */
        char prio[16], err[32], code_file[512], code_line[32], id[128], dep[160], nod[160];
        char msg[sizeof("MESSAGE=") + GW_SD_MESSAGE_MAX];
        struct iovec iov[7];
        size_t n = 0;
        int r;

        iov[n++] = (struct iovec){
            .iov_base = msg, .iov_len = (size_t) snprintf(msg, sizeof(msg), "MESSAGE=%s", message)};
        if (iov[0].iov_len >= sizeof(msg))
                iov[0].iov_len = sizeof(msg) - 1;
        snprintf(prio, sizeof(prio), "PRIORITY=%d", level & 7);
        iov[n++] = (struct iovec){.iov_base = prio, .iov_len = strlen(prio)};
        if (ident) {
                snprintf(id, sizeof(id), "SYSLOG_IDENTIFIER=%s", ident);
                iov[n++] = (struct iovec){.iov_base = id, .iov_len = strlen(id)};
        }
        if (error) {
                snprintf(err, sizeof(err), "ERRNO=%d", error < 0 ? -error : error);
                iov[n++] = (struct iovec){.iov_base = err, .iov_len = strlen(err)};
        }
        if (deployment) {
                snprintf(dep, sizeof(dep), "GW_DEPLOYMENT=%s", deployment);
                iov[n++] = (struct iovec){.iov_base = dep, .iov_len = strlen(dep)};
        }
        if (node) {
                snprintf(nod, sizeof(nod), "GW_NODE=%s", node);
                iov[n++] = (struct iovec){.iov_base = nod, .iov_len = strlen(nod)};
        }
        snprintf(code_file, sizeof(code_file), "CODE_FILE=%s", file);
        snprintf(code_line, sizeof(code_line), "CODE_LINE=%d", line);
        r = sd_journal_sendv_with_location(code_file, code_line, func, iov, (int) n);
        return r < 0 ? r : 0;
}

#else

int gw_sd_notify(const char *state)
{
        (void) state;
        return -EOPNOTSUPP;
}

int gw_sd_watchdog_usec(uint64_t *ret_usec)
{
        (void) ret_usec;
        return -EOPNOTSUPP;
}

int gw_sd_journal_send(int level, int error, const char *ident, const char *file, int line,
                       const char *func, const char *deployment, const char *node,
                       const char *message)
{
        (void) level, (void) error, (void) ident, (void) file, (void) line, (void) func;
        (void) deployment, (void) node, (void) message;
        return -EOPNOTSUPP;
}

#endif
