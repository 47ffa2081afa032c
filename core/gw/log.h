/* Logging for gatewayd and its tools: stderr, syslog or both, with systemd-style helpers
 * that log and return a negative errno in one line. Plugins do not call these directly;
 * they log through the services the core hands them (struct gw_plugin_services). */
#pragma once

#include <stdarg.h>
#include <syslog.h>

enum gw_log_target {
        GW_LOG_STDERR = 1 << 0,
        GW_LOG_SYSLOG = 1 << 1,
};

/* Where messages go (a mask of gw_log_target) and the program name for syslog. */
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

#define gw_log_full_errno(level, error, ...)                                                       \
        gw_log_internal((level), (error), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define gw_log_debug(...)   gw_log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define gw_log_info(...)    gw_log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define gw_log_notice(...)  gw_log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define gw_log_warning(...) gw_log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define gw_log_error(...)   gw_log_full_errno(LOG_ERR, 0, __VA_ARGS__)

#define gw_log_debug_errno(r, ...)   gw_log_full_errno(LOG_DEBUG, (r), __VA_ARGS__)
#define gw_log_warning_errno(r, ...) gw_log_full_errno(LOG_WARNING, (r), __VA_ARGS__)
#define gw_log_error_errno(r, ...)   gw_log_full_errno(LOG_ERR, (r), __VA_ARGS__)
