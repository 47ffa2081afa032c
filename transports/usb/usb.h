/* The usb transport's helpers that cross files: the one libusb error adapter, the parser of
 * the device-selection options ("usb" = "VID:PID[,serial=S][,path=P]", "dfu-usb") shared with
 * gwflash, and a scan that reports every matching device with why it could not be opened. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "gw/options.h"
#include "gw/plugin.h"

/* USB string descriptors hold at most 126 UTF-16 code units. */
#define GW_USB_SERIAL_MAX 127
/* "255-" and at most 7 ports of up to 3 digits, dot-separated. */
#define GW_USB_PATH_MAX  32
#define GW_USB_PORTS_MAX 7

/* Which device a link opens: one of two id pairs (the board as it runs, and as it comes back
 * in DFU mode after DFU_DETACH), narrowed by serial number and port path when given. */
struct gw_usb_match {
        uint16_t vid, pid;
        bool has_dfu_ids;
        uint16_t dfu_vid, dfu_pid;
        char serial[GW_USB_SERIAL_MAX + 1]; /* "" = any */
        char path[GW_USB_PATH_MAX + 1];     /* "" = any, else "1-2.3" */
        /* The board is looked for again at this port after it re-enumerated (option
         * GW_OPTION_REOPEN_PATH): any ids that match or, without dfu-usb, any board in DFU
         * mode there; its serial number is not compared. "" = not reopening. */
        char reopen_path[GW_USB_PATH_MAX + 1];
};

/* libusb error codes (< 0) and transfer statuses (>= 0) as 0 or a negative errno. */
int gw_usb_errno(int code);

/* "0483:df11" (1 to 4 hex digits each side). 0 or -EINVAL. */
int gw_usb_parse_id(const char *s, uint16_t *ret_vid, uint16_t *ret_pid);
/* A port path "BUS-PORT[.PORT]..." (bus 1-255, 1 to 7 ports of 1-255). 0 or -EINVAL. */
int gw_usb_check_path(const char *s);
/* Reads "usb" (required: "VID:PID[,serial=S][,path=P]"), "serial", "path", "dfu-usb" and
 * GW_OPTION_REOPEN_PATH from opts. 0 or -EINVAL; *ret_why (when not NULL) then says what is wrong,
 * statically allocated. */
int gw_usb_match_parse(const struct gw_options *opts, struct gw_usb_match *ret,
                       const char **ret_why);
/* Does a device with these ids, serial (NULL: unknown) and path match? A serial that must
 * match but is unknown does not match. */
bool gw_usb_match_device(const struct gw_usb_match *m, uint16_t vid, uint16_t pid,
                         const char *serial, const char *path);
