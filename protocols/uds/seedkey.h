/* The two key sources of the uds protocol's SecurityAccess: a seed-to-key module loaded with
 * dlopen (gw-uds-seedkey.h), and an external program spawned without a shell whose output is
 * read without blocking, polled from the protocol's timer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gw-uds-seedkey.h"

/* The most a key program may write to its standard output. */
#define GW_UDS_KEYPROG_OUTPUT_MAX 1024
/* The most words seedkey-args may hold. */
#define GW_UDS_KEYPROG_ARGS_MAX 32

struct gw_uds_keymod {
        void *handle;
        gw_uds_seedkey_fn fn;
};

/* Loads the module at path. 0, or -errno with the reason in why. */
int gw_uds_keymod_load(struct gw_uds_keymod *m, const char *path, char *why, size_t why_size);
/* Runs it: the key's length, or -errno with the reason in why. */
int gw_uds_keymod_compute(struct gw_uds_keymod *m, unsigned level, const uint8_t *seed,
                          size_t seed_len, const char *params, uint8_t *key, size_t key_size,
                          char *why, size_t why_size);
void gw_uds_keymod_unload(struct gw_uds_keymod *m);

struct gw_uds_keyprog {
        pid_t pid; /* 0 = none running */
        int out_fd;
        bool eof;
        size_t len;
        char out[GW_UDS_KEYPROG_OUTPUT_MAX + 1];
};

/* Starts path with argv {path, args..., [seed hex]} (the seed as the last argument unless
 * seed_on_stdin, then it is written to the program's standard input, a line of hex), and
 * GW_UDS_SEED and GW_UDS_LEVEL in its environment. Its standard output is a pipe read by
 * gw_uds_keyprog_poll(); its standard error is ours. 0 or -errno with the reason in why. */
int gw_uds_keyprog_start(struct gw_uds_keyprog *p, const char *path, char *const *args,
                         size_t n_args, unsigned level, const uint8_t *seed, size_t seed_len,
                         bool seed_on_stdin, char *why, size_t why_size);
/* Reads what the program wrote so far, without blocking. 0: still running; the key's length
 * (> 0) once it exited 0 having written one key in hex; -errno with the reason in why (it
 * failed, wrote too much or no valid key). */
int gw_uds_keyprog_poll(struct gw_uds_keyprog *p, uint8_t *key, size_t key_size, char *why,
                        size_t why_size);
/* Kills and reaps a program still running; closes the pipe. */
void gw_uds_keyprog_stop(struct gw_uds_keyprog *p);

/* Parses a key written in hex: optional 0x, an even number of digits, whitespace around.
 * The key's length, or -EINVAL. */
int gw_uds_parse_hex(const char *s, uint8_t *ret, size_t size);
