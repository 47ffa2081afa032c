/* The daemon as a whole: configuration, trust root, store, fetcher, MQTT session and the
 * deployment engine wired to one loop. main.c only parses the command line. */
#pragma once

#include "config.h"

/* Loads plugins and checks that everything the configuration names exists: every node's
 * transport and protocol, the trust root. Logs each problem; returns 0 or the first error. */
int gw_daemon_check(const struct gw_config *cfg);
/* Runs until SIGTERM or SIGINT; returns 0 after a clean shutdown, else -errno. */
int gw_daemon_run(const struct gw_config *cfg);
