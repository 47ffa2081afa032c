/* gatewayd as a systemd notify service: READY=1 once the loop runs, WATCHDOG=1 from a timer on
 * the loop at half the period systemd asks for (a stuck loop sends none and is restarted), a
 * STATUS= line saying what the gateway does, and STOPPING=1 on the way out. Outside systemd
 * (no $NOTIFY_SOCKET) or built without libsystemd, nothing is sent and nothing fails. */
#pragma once

#include <stdint.h>

#include "gw/loop.h"

struct gw_service;

/* Called from the loop every few seconds, so that a status built from things nobody reports (a
 * broker that went away) stays current. */
typedef void (*gw_service_tick_cb)(void *userdata);

/* Arms the readiness timer (READY=1 goes out on the loop's first iteration) and, when systemd
 * asks for one ($WATCHDOG_USEC), the keep-alive timer. */
int gw_service_new(struct gw_loop *loop, gw_service_tick_cb tick, void *userdata,
                   struct gw_service **ret);
struct gw_service *gw_service_free(struct gw_service *s);

/* The status line (STATUS=), sent when it differs from the last one sent; before READY=1 it is
 * kept and goes out with it. */
void gw_service_set_status(struct gw_service *s, const char *status);
/* STOPPING=1 with a last status line; keep-alives go on until the loop ends. */
void gw_service_stopping(struct gw_service *s, const char *status);
/* The watchdog period systemd asked for, in microseconds; 0 when none. */
uint64_t gw_service_watchdog_usec(const struct gw_service *s);
