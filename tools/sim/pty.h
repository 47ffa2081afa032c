/* The simulated device's end of its serial line: a pseudo-terminal master, its slave raw, and a
 * symlink under the name the host is given. Shared by every simulator on a pty. */
#pragma once

#include <stddef.h>

/* Opens a pty master (non-blocking, close-on-exec) into *ret_master with its slave set raw (the
 * setting outlives the call) and named in slave; then, when link is not NULL, points link at it,
 * replacing a stale symlink atomically (never anything else at that name). What fails is
 * printed as "PROG: ...". 0 or -errno (*ret_master closed again). */
int gw_sim_pty_open(const char *prog, const char *link, char *slave, size_t slave_size,
                    int *ret_master);
/* Removes link if it still points at slave (another simulator may have taken the name).
 * link may be NULL. */
void gw_sim_pty_unlink(const char *link, const char *slave);
