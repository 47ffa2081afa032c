/* The test seed-to-key algorithm of docs/can-contract.md (key = rotl32(seed ^ secret, 7),
 * big-endian; not a real one), built twice: as the uds-seedkey program (the seed in hex as an
 * argument or on stdin, the key in hex on stdout) and as a seed-to-key module for the uds
 * protocol (gw-uds-seedkey.h; seedkey-params "secret=0x5A5AA5A5" or just the number). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-uds-seedkey.h"

#define DEFAULT_SECRET 0x5a5aa5a5u
#define SEED_LEN       4

static int parse_u32(const char *s, uint32_t *ret)
{
        unsigned long long v;
        char *end = NULL;

        if (!s || !*s)
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 0);
        if (errno != 0 || *end != '\0' || v > UINT32_MAX || s[0] == '-')
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

/* params: NULL (the default secret), "secret=N" or "N". */
static int parse_secret(const char *params, uint32_t *ret)
{
        if (!params) {
                *ret = DEFAULT_SECRET;
                return 0;
        }
        if (strncmp(params, "secret=", 7) == 0)
                params += 7;
        return parse_u32(params, ret);
}

static uint32_t compute(uint32_t seed, uint32_t secret)
{
        uint32_t x = seed ^ secret;

        return x << 7 | x >> 25;
}

int gw_uds_seedkey_v1(unsigned level, const uint8_t *seed, size_t seed_len, const char *params,
                      uint8_t *key, size_t key_size)
{
        uint32_t secret, s, k;

        if (!seed || seed_len != SEED_LEN || !key || key_size < SEED_LEN)
                return -EINVAL;
        if (parse_secret(params, &secret) < 0)
                return -EINVAL;
        s = (uint32_t) seed[0] << 24 | (uint32_t) seed[1] << 16 | (uint32_t) seed[2] << 8 | seed[3];
        k = compute(s, secret);
        key[0] = (uint8_t) (k >> 24);
        key[1] = (uint8_t) (k >> 16);
        key[2] = (uint8_t) (k >> 8);
        key[3] = (uint8_t) k;
        return SEED_LEN;
}

#ifdef UDS_SEEDKEY_PROGRAM
static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Exactly 8 hex digits, an optional 0x before, whitespace around. */
static int parse_seed(const char *s, uint8_t seed[SEED_LEN])
{
        size_t n = 0;

        while (*s == ' ' || *s == '\t')
                s++;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
                s += 2;
        for (; n < 2 * SEED_LEN; n++)
                if (hex_value(s[n]) < 0)
                        return -EINVAL;
        for (const char *p = s + n; *p; p++)
                if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
                        return -EINVAL;
        for (size_t i = 0; i < SEED_LEN; i++)
                seed[i] = (uint8_t) (hex_value(s[2 * i]) << 4 | hex_value(s[2 * i + 1]));
        return 0;
}

static void usage(FILE *out)
{
        fprintf(out, "Usage: uds-seedkey [--secret N] [--level N] [SEED]\n"
                     "Prints the key for SEED (8 hex digits; read from standard input when not\n"
                     "given) with the test algorithm key = rotl32(seed ^ secret, 7).\n"
                     "The secret defaults to 0x5A5AA5A5.\n");
}

int main(int argc, char **argv)
{
        uint32_t secret = DEFAULT_SECRET, level = 1;
        const char *seed_arg = NULL;
        char line[1024];
        uint8_t seed[SEED_LEN], key[SEED_LEN];

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--help") == 0) {
                        usage(stdout);
                        return 0;
                }
                if ((strcmp(argv[i], "--secret") == 0 || strcmp(argv[i], "--level") == 0) &&
                    i + 1 < argc) {
                        if (parse_u32(argv[i + 1], argv[i][2] == 's' ? &secret : &level) < 0) {
                                fprintf(stderr, "uds-seedkey: %s: not a number: %s\n", argv[i],
                                        argv[i + 1]);
                                return 2;
                        }
                        i++;
                        continue;
                }
                if (argv[i][0] == '-' || seed_arg) {
                        usage(stderr);
                        return 2;
                }
                seed_arg = argv[i];
        }
        if (!seed_arg) {
                if (!fgets(line, sizeof(line), stdin)) {
                        fprintf(stderr, "uds-seedkey: no seed on standard input\n");
                        return 1;
                }
                seed_arg = line;
        }
        if (parse_seed(seed_arg, seed) < 0) {
                fprintf(stderr, "uds-seedkey: the seed must be 8 hex digits\n");
                return 1;
        }
        if (level == 0 || level % 2 == 0 || level > 0x7d) {
                fprintf(stderr, "uds-seedkey: level %u is no requestSeed level\n", level);
                return 1;
        }
        {
                char params[32];

                snprintf(params, sizeof(params), "secret=%u", secret);
                if (gw_uds_seedkey_v1(level, seed, sizeof(seed), params, key, sizeof(key)) !=
                    SEED_LEN)
                        return 1;
        }
        printf("%02x%02x%02x%02x\n", key[0], key[1], key[2], key[3]);
        return 0;
}
#endif
