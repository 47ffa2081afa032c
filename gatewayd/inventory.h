/* What is attached to the gateway now: whether each configured node's link is present (its USB
 * device attached, its serial port there) and which USB DFU devices no node claims. Kept up to
 * date from the transports' hotplug reports on the daemon's loop; <prefix>/inventory carries it. */
#pragma once

#include <stddef.h>
#include <time.h>

#include "config.h"
#include "gw/loop.h"
#include "status.h"

struct gw_inventory;

/* Hotplug reports are followed by a rescan once they have been quiet this long, or at the
 * latest this long after the first of a burst. */
#define GW_INVENTORY_DEBOUNCE_MS     200
#define GW_INVENTORY_DEBOUNCE_MAX_MS 1000
/* Serial ports, and USB when the transport cannot report hotplug, are looked at this often. */
#define GW_INVENTORY_POLL_MS 2000
/* Unclaimed devices listed at most. */
#define GW_INVENTORY_ATTACHED_MAX 64

/* Looks at what is attached now and watches for changes from loop: changed(userdata) is then
 * called from the loop each time what gw_inventory_json() reports has changed (never from
 * inside this call). cfg and loop must outlive the inventory. A transport that cannot report
 * hotplug or enumerate is not an error: its nodes' presence is polled or left unknown.
 * 0, -ENOMEM, or -errno from the loop. */
int gw_inventory_new(struct gw_loop *loop, const struct gw_config *cfg,
                     void (*changed)(void *userdata), void *userdata, struct gw_inventory **ret);
struct gw_inventory *gw_inventory_free(struct gw_inventory *inv);

/* Looks again now (what the debounce timer does). Returns 1 when something changed (without
 * calling changed()), else 0. */
int gw_inventory_refresh(struct gw_inventory *inv);

/* nodes[i] describes cfg->nodes[i] (n_nodes == cfg->n_nodes): fills in each one's presence and
 * encodes them with the unclaimed devices (gw_status_inventory_attached_json). */
int gw_inventory_json(const struct gw_inventory *inv, struct gw_inventory_node *nodes,
                      size_t n_nodes, time_t ts, char **ret);
