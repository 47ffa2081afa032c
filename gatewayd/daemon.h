/* The daemon as a whole: configuration, trust root, store, fetcher, MQTT session and the
 * deployment engine wired to one loop. main.c only parses the command line. */
#pragma once

#include <stdint.h>

#include "config.h"
#include "gw/manifest.h"

/* Loads plugins and checks that everything the configuration names exists: every node's
 * transport and protocol, the trust root. Logs each problem; returns 0 or the first error. */
int gw_daemon_check(const struct gw_config *cfg);
/* Runs until SIGTERM or SIGINT; returns 0 after a clean shutdown, else -errno. */
int gw_daemon_run(const struct gw_config *cfg);
/* gatewayd --rotate-keys: checks the gatewayd/keys document in the file at path as a rotation
 * of the trust root in force (the one in the state dir, else the provisioned one): signed by a
 * threshold of the current keys and of its own, version exactly one more. When valid it is
 * persisted in the state dir (a running gatewayd takes it before its next deployment), the
 * manifest sequence state is reset (fast-forward recovery), *ret_version is the new version
 * and 0 is returned; else -errno with err filled. */
int gw_daemon_rotate_keys(const struct gw_config *cfg, const char *path, uint64_t *ret_version,
                          struct gw_manifest_error *err);
