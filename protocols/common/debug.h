/* A protocol's debug lines through its host's log. Shared by the protocols (protocols/common). */
#pragma once

#include "gw/plugin.h"

/* One debug line through host->logv; nothing when host or its logv is NULL. */
void gw_proto_debug(const struct gw_proto_host *host, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
