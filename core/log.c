/* Logging to stderr, syslog and/or the journal. One line per message; errno-style helpers return
 * the negative error they were given so callers can log and return in one statement. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gw/log.h"
#include "gw/systemd.h"

static unsigned log_targets = GW_LOG_STDERR;
static int log_max_level = LOG_INFO;
static int syslog_open;
static char log_ident[64] = "gatewayd";

static const char *const level_names[] = {
    [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit", [LOG_ERR] = "error",
    [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void gw_log_open(const char *ident, unsigned targets)
{
        log_targets = targets;
        snprintf(log_ident, sizeof(log_ident), "%s", ident);
        if ((targets & GW_LOG_SYSLOG) && !syslog_open) {
                openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
                syslog_open = 1;
        }
}

void gw_log_close(void)
{
        if (syslog_open)
                closelog();
        syslog_open = 0;
        log_targets = GW_LOG_STDERR;
}

void gw_log_set_max_level(int level)
{
        if (level >= LOG_EMERG && level <= LOG_DEBUG)
                log_max_level = level;
}

int gw_log_get_max_level(void)
{
        return log_max_level;
}

static int log_emit(int level, int error, const char *file, int line, const char *func,
                    const char *deployment, const char *node, const char *fmt, va_list ap)
{
        int r = error < 0 ? error : -error;
        bool to_stderr = log_targets & GW_LOG_STDERR;
        char msg[GW_SD_MESSAGE_MAX];
        int saved = errno;

        if (level > log_max_level)
                return r;

        /* %m prints strerror(errno): make it the error we were given. */
        if (error != 0)
                errno = -r;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        errno = saved;

        /* A message the journal does not take (journald gone, built without libsystemd) is not
         * lost: it goes to stderr, which systemd connects to the journal's stream anyway. */
        if ((log_targets & GW_LOG_JOURNAL) &&
            gw_sd_journal_send(level, error ? -r : 0, log_ident, file, line, func, deployment, node,
                               msg) < 0)
                to_stderr = true;
        if (to_stderr) {
                if (log_max_level >= LOG_DEBUG)
                        fprintf(stderr, "%s: %s (%s:%d)\n", level_names[level & 7], msg, file,
                                line);
                else if (level <= LOG_WARNING)
                        fprintf(stderr, "%s: %s\n", level_names[level & 7], msg);
                else
                        fprintf(stderr, "%s\n", msg);
        }
        if (log_targets & GW_LOG_SYSLOG)
                syslog(level, "%s", msg);
        return r;
}

int gw_log_internalv(int level, int error, const char *file, int line, const char *func,
                     const char *fmt, va_list ap)
{
        return log_emit(level, error, file, line, func, NULL, NULL, fmt, ap);
}

int gw_log_internal_about(int level, int error, const char *file, int line, const char *func,
                          const char *deployment, const char *node, const char *fmt, ...)
{
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = log_emit(level, error, file, line, func, deployment, node, fmt, ap);
        va_end(ap);
        return r;
}

int gw_log_internal(int level, int error, const char *file, int line, const char *func,
                    const char *fmt, ...)
{
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = gw_log_internalv(level, error, file, line, func, fmt, ap);
        va_end(ap);
        return r;
}
