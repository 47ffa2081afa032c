/* Permission problems on device nodes. Transports return -EACCES; the daemon and gwflash turn it
 * into one message that names the device node, who may open it, who we are, and the fix (the
 * udev rules gatewayd installs, README.udev). */
#pragma once

#include <stddef.h>

#include "gw/plugin.h"

/* The rules file gatewayd installs into udev's rules directory. */
#define GW_UDEV_RULES_FILE "60-gatewayd.rules"

/* The device node that a link with opts would open and could not: for a transport that can
 * enumerate and tell which device opts pick (USB), the first such device it could not open;
 * else the node behind opts' "port" (a serial port; symbolic links resolved). Written into buf
 * (n bytes); returns 0, or -ENOENT when no node can be named. */
int gw_access_denied_node(const struct gw_transport_ops *t, const struct gw_options *opts,
                          char *buf, size_t n);

/* "permission denied on NODE (owner root, group dialout, mode 0660; this process runs as
 * gatewayd): add the device to the gatewayd group: see .../README.udev, or run: sudo udevadm
 * trigger after installing 60-gatewayd.rules", cut to n bytes. Without a node to name it says
 * so and gives the same fix. */
void gw_access_explain(const struct gw_transport_ops *t, const struct gw_options *opts, char *buf,
                       size_t n);
