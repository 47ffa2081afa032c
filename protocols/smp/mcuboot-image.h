/* MCUboot image files as the smp plugin reads them: the 32-byte header, the body, the protected
 * TLV area (magic 0x6908) and the TLV area (magic 0x6907) holding the image's SHA-256 (type
 * 0x10), which MCUboot computes over header, body and protected TLVs, and which img_mgmt reports
 * as the slot's "hash". All fields little-endian. Read through a gw_reader, bounded by its size. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "gw/plugin.h"

#define GW_MCUBOOT_MAGIC          0x96f3b83du
#define GW_MCUBOOT_HEADER_SIZE    32
#define GW_MCUBOOT_TLV_INFO       0x6907
#define GW_MCUBOOT_TLV_PROT       0x6908
#define GW_MCUBOOT_TLV_SHA256     0x10
#define GW_MCUBOOT_HASH_LEN       32
#define GW_MCUBOOT_F_NON_BOOTABLE 0x10u
/* TLVs walked in both areas together before the image counts as malformed. */
#define GW_MCUBOOT_TLVS_MAX 128
/* "255.255.65535.4294967295" and its NUL. */
#define GW_MCUBOOT_VERSION_MAX 25

struct gw_mcuboot_image {
        uint32_t load_addr;
        uint16_t hdr_size, protect_tlv_size;
        uint32_t img_size, flags;
        uint8_t major, minor;
        uint16_t revision;
        uint32_t build;
        uint64_t hashed;  /* bytes the hash covers: header, body, protected TLVs */
        uint64_t tlv_end; /* where the TLV area ends (the file may go on: padding, a trailer) */
        unsigned n_tlvs;
        uint8_t hash[GW_MCUBOOT_HASH_LEN]; /* the SHA-256 TLV */
};

/* Parses reader's header and TLV areas. 0, -EBADMSG (not an MCUboot image, or a malformed one:
 * the reason goes into why, one line), or the reader's error. Writes *ret only on success. */
int gw_mcuboot_parse(const struct gw_reader *reader, struct gw_mcuboot_image *ret, char *why,
                     size_t why_size);
/* Reads the whole image once: ret_hash gets the SHA-256 of header, body and protected TLVs (to
 * compare with img->hash), ret_file_sha the SHA-256 of every byte of the file (what an upload's
 * "sha" carries); either may be NULL. 0, -EIO (the reader ended early) or the reader's error. */
int gw_mcuboot_digest(const struct gw_reader *reader, const struct gw_mcuboot_image *img,
                      uint8_t ret_hash[GW_MCUBOOT_HASH_LEN],
                      uint8_t ret_file_sha[GW_MCUBOOT_HASH_LEN]);
/* The version the way img_mgmt prints it: "1.4.2", or "1.4.2.5" when the build number is not 0
 * (imgtool writes that one 1.4.2+5). buf holds GW_MCUBOOT_VERSION_MAX bytes. */
void gw_mcuboot_version_string(const struct gw_mcuboot_image *img, char *buf, size_t n);
