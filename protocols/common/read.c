/* Reading an image whole pieces at a time (see read.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "read.h"

int gw_reader_read_exact(const struct gw_reader *r, void *buf, size_t n, uint64_t off, char *why,
                         size_t why_size)
{
        size_t got = 0;

        while (got < n) {
                ssize_t k = r->pread(r->ctx, (uint8_t *) buf + got, n - got, off + got);

                if (k < 0) {
                        if (why)
                                snprintf(why, why_size,
                                         "reading the image at %" PRIu64 " failed: %s", off + got,
                                         strerror((int) -k));
                        return (int) k;
                }
                if (k == 0 || (size_t) k > n - got) {
                        if (why)
                                snprintf(why, why_size,
                                         "the image ended at %" PRIu64 ", before its size %" PRIu64,
                                         off + got, r->size);
                        return -EIO;
                }
                got += (size_t) k;
        }
        return 0;
}
