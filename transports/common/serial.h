/* What the transports on a serial port share (uart, and can's slcan backend): the termios speed
 * of a standard rate and, through libserialport, a USB serial port's ids. */
#pragma once

#include <stdint.h>
#include <termios.h>

/* The termios speed for a standard rate of baud bits/s (50 to 4000000); B0 when there is none. */
speed_t gw_serial_speed(uint32_t baud);

struct sp_port;
struct gw_link_info;

/* A USB serial port's vendor and product ids and serial number into info; info is left as it is
 * for another kind of port. The serial number lives as long as the port. Built only with
 * libserialport. */
void gw_serial_usb_ids(struct sp_port *port, struct gw_link_info *info);
