/* A transport's debug lines through the plugin services' log. Shared by the transports
 * (transports/common). */
#pragma once

#include "gw/plugin.h"

/* One debug line through svc->logv; nothing when svc or its logv is NULL. */
void gw_transport_debug(const struct gw_plugin_services *svc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
