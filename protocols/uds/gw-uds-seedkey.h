/* The seed-to-key module ABI of the uds protocol: a shared module named by a node's
 * seedkey-module option turns the seed an ECU sends for SecurityAccess into the key it wants.
 * Installed for out-of-tree modules; docs/protocols.md describes it with the program form. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The one symbol a module exports; the version is part of its name, so a module built for
 * another version is refused (not found) rather than called wrongly. */
#define GW_UDS_SEEDKEY_SYMBOL "gw_uds_seedkey_v1"

/* The longest seed and key the protocol handles, in bytes. */
#define GW_UDS_SEED_MAX 256
#define GW_UDS_KEY_MAX  256

/* Computes the key for seed (seed_len bytes, 1..GW_UDS_SEED_MAX) at security level (the odd
 * requestSeed sub-function, 0x01..0x7d) into key (key_size bytes, GW_UDS_KEY_MAX). params is the
 * node's seedkey-params option, or NULL. Returns the key's length (1..key_size), or a negative
 * errno (-EINVAL: a seed or params it cannot use). Called on the gateway's loop thread: it must
 * return promptly and never wait on the network or the user; an algorithm that does belongs in
 * a seedkey-program. It may be called many times, for many nodes, from one loaded copy: keep no
 * state between calls. */
typedef int (*gw_uds_seedkey_fn)(unsigned level, const uint8_t *seed, size_t seed_len,
                                 const char *params, uint8_t *key, size_t key_size);

int gw_uds_seedkey_v1(unsigned level, const uint8_t *seed, size_t seed_len, const char *params,
                      uint8_t *key, size_t key_size);
