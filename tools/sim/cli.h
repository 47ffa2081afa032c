/* What the simulators' command lines and main loops share: verbose logging to stderr, number
 * options, and termination signals taken as a descriptor to poll. Shared by every simulator in
 * tools/sim. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* "PROG: message\n" on stderr when verbose; nothing otherwise. */
void gw_sim_log(bool verbose, const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A whole unsigned number at most max, in base (10, or 0 for C prefixes: 0x hex, 0 octal); it
 * must start with a digit. 0 or -EINVAL. */
int gw_sim_parse_u64(const char *str, int base, uint64_t max, uint64_t *ret);

/* Blocks the n signals in the calling thread (threads started later inherit that) and returns a
 * non-blocking signalfd delivering them, or -errno. SIGPIPE is ignored as well: a simulator
 * sees a peer that is gone as EPIPE. */
int gw_sim_signalfd(const int *signals, size_t n);

/* ppoll()'s timeout for an absolute deadline at_ns (gw_sim_now_ns() clock) at now_ns: what is
 * left of it, 0 when it passed. */
struct timespec gw_sim_timeout(uint64_t at_ns, uint64_t now_ns);
