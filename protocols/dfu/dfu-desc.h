/* Decoders for what a DFU device tells about itself, all untrusted: the DFU functional
 * descriptor, the six bytes of a DFU_GETSTATUS reply, and the DfuSe memory layout carried in
 * an alternate setting's name (ST AN3156). Shared by the dfu protocol, its tests and fuzzer. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* libusb on Linux refuses bigger control transfers: wTransferSize is capped to this. */
#define GW_DFU_TRANSFER_MAX 4096u
#define GW_DFU_BCD_DFUSE    0x011au

/* bmAttributes of the functional descriptor. */
#define GW_DFU_ATTR_CAN_DNLOAD        0x01u
#define GW_DFU_ATTR_CAN_UPLOAD        0x02u
#define GW_DFU_ATTR_MANIFEST_TOLERANT 0x04u
#define GW_DFU_ATTR_WILL_DETACH       0x08u

struct gw_dfu_functional {
        uint8_t attributes;
        uint16_t detach_timeout_ms; /* wDetachTimeOut */
        uint16_t transfer_size;     /* wTransferSize as the device declares it, never 0 */
        uint16_t bcd_dfu;           /* bcdDFUVersion; 0x0100 when a DFU 1.0 descriptor omits it */
};

/* Finds the DFU functional descriptor (type 0x21) among the class-specific descriptors in
 * p[0..n). 0, -ENOENT (none there) or -EBADMSG (a descriptor overruns the buffer, or the
 * functional one is shorter than 7 bytes or declares a transfer size of 0). */
int gw_dfu_parse_functional(const uint8_t *p, size_t n, struct gw_dfu_functional *ret);

/* bState values (DFU 1.1 section 6.1.2). */
enum gw_dfu_dev_state {
        GW_DFU_APP_IDLE = 0,
        GW_DFU_APP_DETACH = 1,
        GW_DFU_IDLE = 2,
        GW_DFU_DNLOAD_SYNC = 3,
        GW_DFU_DNBUSY = 4,
        GW_DFU_DNLOAD_IDLE = 5,
        GW_DFU_MANIFEST_SYNC = 6,
        GW_DFU_MANIFEST = 7,
        GW_DFU_MANIFEST_WAIT_RESET = 8,
        GW_DFU_UPLOAD_IDLE = 9,
        GW_DFU_ERROR = 10,
        _GW_DFU_DEV_STATE_MAX,
};

/* bStatus values: 0 = OK, then errTARGET (0x01) ... errSTALLEDPKT (0x0f). */
#define GW_DFU_STATUS_OK  0x00u
#define GW_DFU_STATUS_MAX 0x0fu

#define GW_DFU_STATUS_LEN 6u

struct gw_dfu_status {
        uint8_t status;
        uint32_t poll_timeout_ms; /* bwPollTimeout, 24 bits */
        uint8_t state;            /* an enum gw_dfu_dev_state */
        uint8_t istring;
};

/* Decodes a GETSTATUS reply. 0, or -EBADMSG (shorter than 6 bytes, an unknown bState or
 * bStatus). Extra bytes after the sixth are ignored. */
int gw_dfu_parse_status(const uint8_t *p, size_t n, struct gw_dfu_status *ret);

/* "dfuDNLOAD_IDLE"; NULL when s is out of range. */
const char *gw_dfu_dev_state_to_string(unsigned s);
/* "errWRITE"; NULL when s is out of range. */
const char *gw_dfu_status_to_string(unsigned s);
/* What the status means, for error messages: "the device cannot write to its memory". */
const char *gw_dfu_status_to_message(unsigned s);
/* The -errno install() fails with for status s (s != OK); -EPROTO when out of range. */
int gw_dfu_status_to_errno(unsigned s);

/* DfuSe memory layout: "@Internal Flash /0x08000000/04*016Kg,01*064Kg/0x1FFF7800/01*512 e".
 * Each "N*SIZE<unit><type>" group becomes a segment of N pages; unit ' ' or 'B' (bytes), 'K',
 * 'M'; type 'a'..'g' = 'a' - 1 plus the readable (1), erasable (2) and writable (4) bits. */
#define GW_DFUSE_READABLE 0x1u
#define GW_DFUSE_ERASABLE 0x2u
#define GW_DFUSE_WRITABLE 0x4u

#define GW_DFUSE_SEGMENTS_MAX 32u
#define GW_DFUSE_NAME_MAX     63u

struct gw_dfuse_segment {
        uint32_t start;
        uint32_t page_size;
        uint32_t pages;
        uint8_t type; /* GW_DFUSE_* bits */
};

struct gw_dfuse_layout {
        char name[GW_DFUSE_NAME_MAX + 1]; /* between '@' and the first '/', trailing blanks cut */
        size_t n;
        struct gw_dfuse_segment seg[GW_DFUSE_SEGMENTS_MAX];
};

/* Parses s. 0 or -EBADMSG (not a layout, malformed, more than GW_DFUSE_SEGMENTS_MAX groups,
 * a page count or size of 0, a segment reaching past 4 GiB). ret is written only on success. */
int gw_dfuse_parse_layout(const char *s, struct gw_dfuse_layout *ret);

/* The segment holding addr and, in *ret_page_start / *ret_page_end (exclusive, may be
 * 2^32), its page around addr; NULL when no segment holds addr. */
const struct gw_dfuse_segment *gw_dfuse_find_page(const struct gw_dfuse_layout *l, uint32_t addr,
                                                  uint64_t *ret_page_start, uint64_t *ret_page_end);

/* Checks that [addr, addr + size) lies in writable segments. 0, or -ENOSPC with the first
 * address that is not writable (or not described at all, or at 4 GiB) in *ret_bad. */
int gw_dfuse_check_writable(const struct gw_dfuse_layout *l, uint32_t addr, uint64_t size,
                            uint64_t *ret_bad);

/* The same for readable segments (what an upload may read). */
int gw_dfuse_check_readable(const struct gw_dfuse_layout *l, uint32_t addr, uint64_t size,
                            uint64_t *ret_bad);

/* The start of the first writable (readable) segment; -ENOENT when there is none. */
int gw_dfuse_first_writable(const struct gw_dfuse_layout *l, uint32_t *ret);
int gw_dfuse_first_readable(const struct gw_dfuse_layout *l, uint32_t *ret);
