/* DFU files as build tools write them, all untrusted: the DFU suffix (DFU 1.1 appendix B: the
 * file's last bytes, "UFD", the ids it is meant for and a CRC-32 of the rest; dfu-suffix) and
 * ST's DfuSe container (UM0391: a "DfuSe" prefix, targets for alternate settings, elements
 * with their load address; dfuse-pack). Read through a gw_reader, never loaded whole. Shared
 * by the dfu protocol, its tests and fuzzer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/plugin.h"

#define GW_DFU_SUFFIX_LEN 16u     /* the suffix's fixed part; bLength may declare more */
#define GW_DFU_ID_ANY     0xffffu /* a suffix id that matches any device */

/* Bounds on a DfuSe container (bTargets is one byte; elements are counted over all targets). */
#define GW_DFUSE_FILE_ELEMENTS_MAX 1024u

enum gw_dfu_file_format {
        /* A suffix when the file ends with "UFD" and a length of 16 or more (its CRC must then
         * match); a DfuSe container when, besides, the rest starts with the "DfuSe" prefix.
         * Otherwise the whole file is the image. */
        GW_DFU_FORMAT_AUTO = 0,
        GW_DFU_FORMAT_RAW, /* the whole file is the image: nothing is parsed */
        GW_DFU_FORMAT_DFU, /* as AUTO, but a file without a valid suffix is refused */
};

struct gw_dfu_suffix {
        uint16_t bcd_device, pid, vid; /* GW_DFU_ID_ANY: any device */
        uint16_t bcd_dfu;              /* 0x0100 for a plain image, 0x011a for a DfuSe container */
        uint8_t length;                /* bLength: the suffix's size, 16 or more */
        uint32_t crc;                  /* dwCRC, found equal to the computed one */
};

struct gw_dfu_element {
        uint8_t alt;      /* bAlternateSetting of the target holding it */
        uint32_t address; /* dwElementAddress */
        uint32_t size;    /* dwElementSize, never 0 (empty elements are dropped) */
        uint64_t offset;  /* where its bytes start in the file */
};

struct gw_dfu_file {
        bool has_suffix;
        struct gw_dfu_suffix suffix;
        uint64_t payload_size; /* the bytes before the suffix: the image itself unless dfuse */
        bool dfuse;            /* a DfuSe container: the image is its elements */
        /* DfuSe: the elements of all targets, ordered by (alt, address); within one alt no two
         * overlap and none reaches past 4 GiB. Allocated; NULL when there are none. */
        struct gw_dfu_element *elements;
        size_t n_elements;
        uint64_t elements_size; /* the sum of their sizes */
};

/* Parses the file r reads as format says. 0, or on failure with a one-line reason in why:
 * -EBADMSG (a suffix whose CRC does not match, a bLength past the file's start, with
 * GW_DFU_FORMAT_DFU no suffix at all; a DfuSe container that is truncated, whose sizes
 * disagree with each other or with the file, with a wrong signature, more than
 * GW_DFUSE_FILE_ELEMENTS_MAX elements, overlapping elements or one past 4 GiB, or without a
 * suffix declaring bcdDFU 0x011a), -ENOMEM, or the reader's -errno. ret is written only on
 * success; release it with gw_dfu_file_done(). */
int gw_dfu_file_parse(const struct gw_reader *r, enum gw_dfu_file_format format,
                      struct gw_dfu_file *ret, char *why, size_t why_size);

/* Frees what gw_dfu_file_parse() allocated and zeroes f. f may be zeroed already. */
void gw_dfu_file_done(struct gw_dfu_file *f);

/* Does the suffix allow a device with these ids (its DFU-mode ids, or the run-time ids it had
 * before it was detached)? true when the file has no suffix, or each of its ids is
 * GW_DFU_ID_ANY or equal. bcdDevice is not compared (dfu-util does not either). */
bool gw_dfu_file_matches(const struct gw_dfu_file *f, uint16_t vid, uint16_t pid);
