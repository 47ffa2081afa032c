/* The serial transports' shared helpers (see serial.h). */
#include <stddef.h>

#ifdef GW_HAVE_LIBSERIALPORT
#include <libserialport.h>

#include "gw/plugin.h"
#endif

#include "serial.h"

speed_t gw_serial_speed(uint32_t baud)
{
        static const struct {
                uint32_t baud;
                speed_t speed;
        } table[] = {
            {50, B50},           {75, B75},           {110, B110},         {134, B134},
            {150, B150},         {200, B200},         {300, B300},         {600, B600},
            {1200, B1200},       {1800, B1800},       {2400, B2400},       {4800, B4800},
            {9600, B9600},       {19200, B19200},     {38400, B38400},     {57600, B57600},
            {115200, B115200},   {230400, B230400},   {460800, B460800},   {500000, B500000},
            {576000, B576000},   {921600, B921600},   {1000000, B1000000}, {1152000, B1152000},
            {1500000, B1500000}, {2000000, B2000000}, {2500000, B2500000}, {3000000, B3000000},
            {3500000, B3500000}, {4000000, B4000000},
        };

        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (table[i].baud == baud)
                        return table[i].speed;
        return B0;
}

#ifdef GW_HAVE_LIBSERIALPORT
void gw_serial_usb_ids(struct sp_port *port, struct gw_link_info *info)
{
        int vid = 0, pid = 0;

        if (sp_get_port_transport(port) != SP_TRANSPORT_USB)
                return;
        if (sp_get_port_usb_vid_pid(port, &vid, &pid) == SP_OK && vid >= 0 && vid <= 0xffff &&
            pid >= 0 && pid <= 0xffff) {
                info->vid = (uint16_t) vid;
                info->pid = (uint16_t) pid;
        }
        info->serial = sp_get_port_usb_serial(port);
}
#endif
