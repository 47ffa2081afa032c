/* A protocol's debug lines (see debug.h). */
#include <stdarg.h>
#include <syslog.h>

#include "debug.h"

void gw_proto_debug(const struct gw_proto_host *host, const char *fmt, ...)
{
        va_list ap;

        if (!host || !host->logv)
                return;
        va_start(ap, fmt);
        host->logv(host->ctx, LOG_DEBUG, fmt, ap);
        va_end(ap);
}
