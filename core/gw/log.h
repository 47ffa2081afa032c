/* Logging for gatewayd and its tools: stderr, syslog or the journal, with systemd-style helpers
 * that log and return a negative errno in one line, and messages about a deployment or a node
 * that carry GW_DEPLOYMENT= and GW_NODE= fields in the journal. Plugins do not call these
 * directly; they log through the services the core hands them (struct gw_plugin_services). */
#pragma once

#include <stdarg.h>
#include <syslog.h>

enum gw_log_target {
        GW_LOG_STDERR = 1 << 0,
        GW_LOG_SYSLOG = 1 << 1,
        /* Native journal entries with fields (libsystemd); a message the journal does not take
         * goes to stderr instead. */
        GW_LOG_JOURNAL = 1 << 2,
};

/* Where messages go (a mask of gw_log_target) and the program name for syslog and the
 * journal. */
void gw_log_open(const char *ident, unsigned targets);
void gw_log_close(void);
/* Messages above this syslog level (LOG_DEBUG, LOG_INFO, ...) are dropped. */
void gw_log_set_max_level(int level);
int gw_log_get_max_level(void);

/* Logs the message; returns -abs(error), or 0 when error is 0. With error != 0, errno is
 * set to abs(error) while formatting so that %m prints strerror(error). */
int gw_log_internal(int level, int error, const char *file, int line, const char *func,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int gw_log_internalv(int level, int error, const char *file, int line, const char *func,
                     const char *fmt, va_list ap) __attribute__((format(printf, 6, 0)));
/* The same about a deployment and/or a node (each NULL when not about one): the journal gets
 * them as GW_DEPLOYMENT= and GW_NODE=, so that `journalctl GW_DEPLOYMENT=ID` follows one
 * deployment; stderr and syslog get the message alone. */
int gw_log_internal_about(int level, int error, const char *file, int line, const char *func,
                          const char *deployment, const char *node, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

#define gw_log_full_errno(level, error, ...)                                                       \
        gw_log_internal((level), (error), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define gw_log_debug(...)   gw_log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define gw_log_info(...)    gw_log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define gw_log_notice(...)  gw_log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define gw_log_warning(...) gw_log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define gw_log_error(...)   gw_log_full_errno(LOG_ERR, 0, __VA_ARGS__)

#define gw_log_about(level, error, deployment, node, ...)                                          \
        gw_log_internal_about((level), (error), __FILE__, __LINE__, __func__, (deployment),        \
                              (node), __VA_ARGS__)

#define gw_log_debug_errno(r, ...)   gw_log_full_errno(LOG_DEBUG, (r), __VA_ARGS__)
#define gw_log_warning_errno(r, ...) gw_log_full_errno(LOG_WARNING, (r), __VA_ARGS__)
#define gw_log_error_errno(r, ...)   gw_log_full_errno(LOG_ERR, (r), __VA_ARGS__)
