/* The MQTT v5 session of gatewayd (libmosquitto), driven by the loop: persistent session,
 * retained online/offline state with a will, reconnect with exponential backoff, and a
 * payload cap enforced before anyone parses a message. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "gw/loop.h"
#include "gw/mosquitto-errno.h"

struct gw_mqtt;

struct gw_mqtt_callbacks {
        /* The session is up and subscribed (again). */
        void (*connected)(void *userdata);
        /* A message on <prefix>/<suffix> ("deploy", "cancel", "keys"). payload is the library's,
         * valid for the call; len is at most the configured max-payload (bigger ones are reported
         * with oversize set and payload NULL). */
        void (*message)(void *userdata, const char *suffix, const void *payload, size_t len,
                        bool oversize, bool retained);
};

/* The topic suffixes gatewayd subscribes to under its prefix. */
#define GW_MQTT_TOPIC_DEPLOY "deploy"
#define GW_MQTT_TOPIC_CANCEL "cancel"
#define GW_MQTT_TOPIC_KEYS   "keys"

int gw_mqtt_new(struct gw_loop *loop, const struct gw_mqtt_config *cfg, const char *version,
                const struct gw_mqtt_callbacks *cb, void *userdata, struct gw_mqtt **ret);
/* Starts connecting; failures are retried with backoff, never fatal. */
int gw_mqtt_start(struct gw_mqtt *m);
/* Publishes payload (a NUL-terminated string) on <prefix>/<suffix>. Queued by libmosquitto
 * while disconnected is not possible: returns -ENOTCONN then, and the caller's retained
 * state is republished on reconnect by its connected() callback. */
int gw_mqtt_publish(struct gw_mqtt *m, const char *suffix, const char *payload, int qos,
                    bool retain);
bool gw_mqtt_is_connected(const struct gw_mqtt *m);
/* Publishes the retained offline state, disconnects cleanly (the will is not sent) and
 * flushes, waiting at most timeout_ms. */
void gw_mqtt_stop(struct gw_mqtt *m, int timeout_ms);
struct gw_mqtt *gw_mqtt_free(struct gw_mqtt *m);
