/* How long a CAN or CAN FD frame occupies the bus: its bits on the wire, stuff bits counted
 * from the bits actually sent (ISO 11898-1), split into the nominal and the data phase. Pure
 * arithmetic, shared by the can transport (bus-load pacing) and can-sim (the bus model). */
#pragma once

#include <stdint.h>

#include "gw/plugin.h"

/* Interframe space counted with every frame: the 3-bit intermission. */
#define GW_CAN_IFS_BITS 3

struct gw_can_bits {
        uint32_t nominal; /* bits at the nominal bitrate, the intermission included */
        uint32_t data;    /* bits at the data bitrate (CAN FD with BRS: ESI to the CRC); else 0 */
        uint32_t stuff;   /* stuff bits among them (dynamic and, for FD, fixed) */
};

/* The bits of f on the wire. Classic frames: SOF to the CRC sequence stuffed after every five
 * equal bits (the CRC-15 computed from the frame), then CRC delimiter, ACK slot and
 * delimiter, EOF, intermission. CAN FD (ISO CRC): dynamic stuffing from SOF to the end of the
 * data field, then the stuff count (4 bits) and CRC-17 (up to 16 data bytes) or CRC-21 with a
 * fixed stuff bit before the stuff count and after every 4 bits; with BRS, ESI to the last CRC
 * bit are data-phase bits. 0, or -EINVAL for a frame no bus carries (bad length or id). */
int gw_can_frame_bits(const struct gw_can_frame *f, struct gw_can_bits *ret);

/* Nanoseconds on a bus at bitrate (nominal) and data_bitrate (the data phase; 0: the data
 * phase at the nominal rate too), rounded up. bitrate must not be 0. */
uint64_t gw_can_bits_ns(const struct gw_can_bits *b, uint32_t bitrate, uint32_t data_bitrate);

/* The CRC-15 of classic CAN (polynomial 0x4599, initial 0) over nbits bits, most significant
 * bit of bits[0] first. For tests: "123456789" as 72 bits gives 0x059e. */
uint16_t gw_can_crc15(const uint8_t *bits, uint32_t nbits);

/* The data length of a DLC (0..15: 0..8, then 12, 16, 20, 24, 32, 48, 64), and the DLC of a
 * frame of exactly len bytes; -EINVAL when there is none. */
int gw_can_dlc_to_len(unsigned dlc);
int gw_can_len_to_dlc(unsigned len);
