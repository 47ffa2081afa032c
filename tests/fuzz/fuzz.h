/* What the fuzz targets share: the libFuzzer entry point each defines (also called by the
 * corpus runner, fuzz-main.c) and a check that aborts, so that both libFuzzer and the runner
 * report a broken invariant as a crash with its input. */
#pragma once

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

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

/* How a fuzzed host's image reader misbehaves, as the input chooses. */
enum fuzz_read {
        FUZZ_READ_WHOLE,     /* pread returns all it is asked for */
        FUZZ_READ_SHORT,     /* at most 100 bytes per call */
        FUZZ_READ_FAIL,      /* -EIO past the first KiB */
        FUZZ_READ_TRUNCATED, /* the image ends at half its declared size */
};

/* A gw_reader's pread over image[0..size) served the way mode says; the protocol must ask for
 * bytes inside the image only. */
static inline ssize_t fuzz_read_image(const uint8_t *image, uint64_t size, enum fuzz_read mode,
                                      void *buf, size_t n, uint64_t off)
{
        uint64_t end = mode == FUZZ_READ_TRUNCATED ? size / 2 : size;

        fuzz_check(n >= 1 && off < size && n <= size - off);
        if (mode == FUZZ_READ_SHORT && n > 100)
                n = 100;
        if (mode == FUZZ_READ_FAIL && off + n > 1024)
                return -EIO;
        if (off >= end)
                return 0;
        if (n > end - off)
                n = (size_t) (end - off);
        memcpy(buf, image + off, n);
        return (ssize_t) n;
}
