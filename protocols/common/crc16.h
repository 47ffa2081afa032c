/* CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection, no final xor): the check
 * value XMODEM and YMODEM append big-endian to every block, and MCUboot's serial framing after
 * every SMP packet. Shared by the ymodem and smp plugins (protocols/common). */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Continues crc over n bytes of buf; start with crc = 0. CRC-16/XMODEM("123456789") = 0x31c3. */
uint16_t gw_crc16_xmodem(uint16_t crc, const void *buf, size_t n);
