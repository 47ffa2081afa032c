/* A transport's debug lines (see debug.h). */
#include <stdarg.h>
#include <syslog.h>

#include "debug.h"

void gw_transport_debug(const struct gw_plugin_services *svc, const char *fmt, ...)
{
        va_list ap;

        if (!svc || !svc->logv)
                return;
        va_start(ap, fmt);
        svc->logv(svc->ctx, LOG_DEBUG, fmt, ap);
        va_end(ap);
}
