/* What the fuzz targets share: the libFuzzer entry point each defines (also called by the
 * corpus runner, fuzz-main.c) and a check that aborts, so that both libFuzzer and the runner
 * report a broken invariant as a crash with its input. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs one input; must not crash, leak or take long, and always returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define fuzz_check(cond)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__,       \
                                #cond);                                                            \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)
