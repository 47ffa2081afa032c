/* Reading an image through a protocol's reader (struct gw_reader), whole pieces at a time.
 * Shared by the protocols (protocols/common). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "gw/plugin.h"

/* Reads exactly n bytes at off into buf. 0; -EIO when the image ends first ("the image ended
 * at X, before its size Y" in why); the reader's -errno ("reading the image at X failed: ..."
 * in why). why may be NULL. */
int gw_reader_read_exact(const struct gw_reader *r, void *buf, size_t n, uint64_t off, char *why,
                         size_t why_size);
