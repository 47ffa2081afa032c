/* The one adapter to libsystemd: service notifications (sd_notify: READY, STATUS, WATCHDOG,
 * STOPPING), the watchdog period systemd asks for, and native journal entries with our own
 * fields. Built without libsystemd (meson -Dsystemd=disabled) every call says so with
 * -EOPNOTSUPP and callers go on without it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* True when this build talks to systemd (libsystemd found at build time). */
bool gw_sd_supported(void);

/* Sends state ("READY=1", "STATUS=...", several separated by newlines) to the service manager
 * on $NOTIFY_SOCKET. Returns 1 when sent, 0 when not run as a notify service ($NOTIFY_SOCKET
 * unset), -errno on failure, -EOPNOTSUPP without libsystemd. The environment is kept: every
 * later notification goes to the same socket. */
int gw_sd_notify(const char *state);

/* The watchdog period the service manager expects keep-alives within ($WATCHDOG_USEC, checked
 * against $WATCHDOG_PID when set), in microseconds, in *ret_usec: returns 1 then, 0 when no
 * watchdog is asked for, -errno on malformed variables, -EOPNOTSUPP without libsystemd. */
int gw_sd_watchdog_usec(uint64_t *ret_usec);

/* Whether fd (stderr) is the stream systemd connected to the journal for this service, as
 * $JOURNAL_STREAM ("<st_dev>:<st_ino>") says: then logging natively with fields is better. */
bool gw_sd_journal_stream_is(int fd);

/* The longest message a journal entry carries (log.c formats at most this much). */
#define GW_SD_MESSAGE_MAX 2048

/* One journal entry: MESSAGE=message (cut at GW_SD_MESSAGE_MAX), PRIORITY=level,
 * SYSLOG_IDENTIFIER=ident, CODE_FILE, CODE_LINE, CODE_FUNC, ERRNO= when error != 0, GW_DEPLOYMENT=
 * and GW_NODE= when given (NULL: absent). Returns 0, -errno when journald cannot be reached,
 * -EOPNOTSUPP without libsystemd. */
int gw_sd_journal_send(int level, int error, const char *ident, const char *file, int line,
                       const char *func, const char *deployment, const char *node,
                       const char *message);
