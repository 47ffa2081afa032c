/* gatewayd --udev-rules: udev rules that give group gatewayd the device nodes of the nodes a
 * configuration names, so that the service runs unprivileged with access to exactly those. */
#pragma once

#include <stdio.h>

#include "config.h"

/* Where the rules go: after 60-serial.rules, whose ID_SERIAL a rule may match on. */
#define GW_UDEV_LOCAL_RULES "/etc/udev/rules.d/61-gatewayd-nodes.rules"

/* Writes one rule per device node the nodes of cfg open (a USB node: its ids, serial and port,
 * and its DFU-mode ids; a serial port: the USB adapter behind it, found under sysfs, else its
 * kernel name, else the ID_SERIAL its /dev/serial/by-id/ name carries), each after a comment
 * saying which node it is for; a node whose device cannot be told gets a comment saying what to
 * write by hand. sysfs is the sysfs mount ("/sys"). Returns the number of rules written, or
 * -errno when out cannot be written. */
int gw_udev_rules_write(const struct gw_config *cfg, const char *sysfs, FILE *out);
