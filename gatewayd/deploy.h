/* The deployment engine: from a desired-state message to flashed nodes. It fetches and
 * verifies the manifest, maps images to nodes, downloads every image into the store
 * (verified while it streams), and only then flashes the nodes, reporting each step. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "fetch.h"
#include "gw/loop.h"
#include "gw/manifest.h"
#include "inventory.h"
#include "store.h"

struct gw_engine;

struct gw_engine_env {
        struct gw_loop *loop;
        const struct gw_config *cfg;
        /* The trust root to verify a manifest against, asked once per deployment just before
         * its manifest is verified: a key rotation that lands while a deployment runs applies
         * to the next one. The root stays the caller's and must stay alive until the next
         * call. Must not return NULL. */
        const struct gw_trust *(*trust)(void *userdata);
        struct gw_store *store;
        struct gw_fetcher *fetcher;
        /* Publishes payload on <prefix>/<suffix> at QoS 1. Failures (offline) are fine: the
         * engine republishes its retained state on connected(). */
        int (*publish)(void *userdata, const char *suffix, const char *payload, bool retain);
        void *userdata;
        /* What is attached: adds each node's presence and the unclaimed devices to
         * <prefix>/inventory. NULL: the inventory says nothing of them. Stays the caller's. */
        const struct gw_inventory *inventory;
        /* The gateway's key for encrypted images (decryption-key), or NULL: an encrypted image
         * then fails the deployment with decrypt-failed. Stays the caller's. */
        const struct gw_gateway_key *decrypt_key;
        /* Called after the running deployment, its phase or one of its nodes changed state (and
         * when a deployment ends): a cue to read gw_engine_progress() again. NULL: not told. */
        void (*changed)(void *userdata);
};

/* What the engine is doing now, in counts, for a one-line status (systemd's STATUS=). */
struct gw_engine_progress {
        const char *deployment; /* the running deployment's id, NULL when idle; the engine's */
        const char *phase;      /* "manifest", "download", "identify", "flash"; NULL when idle */
        size_t n_nodes;         /* nodes the deployment writes */
        size_t n_ended;         /* of those, ended: success, failed or reverted */
        size_t n_failed;        /* of the ended, failed or reverted */
        size_t n_active;        /* running a job now (identify, install, check, revert) */
        size_t n_images;        /* images of the manifest */
        size_t n_images_ready;  /* of those, in the store and verified */
        bool reverting;         /* an atomic deployment failed and rolls its nodes back */
        bool queued;            /* another desired state waits behind this one */
};

int gw_engine_new(const struct gw_engine_env *env, struct gw_engine **ret);
struct gw_engine *gw_engine_free(struct gw_engine *e);

/* What is attached changed (see gw_inventory_new()): republishes the inventory. */
void gw_engine_inventory_changed(struct gw_engine *e);
/* The MQTT session is up: republish the inventory and every node's status. */
void gw_engine_connected(struct gw_engine *e);
/* A message on <prefix>/<suffix>; see struct gw_mqtt_callbacks. */
void gw_engine_message(struct gw_engine *e, const char *suffix, const void *payload, size_t len,
                       bool oversize);
/* Stops for a shutdown: nodes mid-flash get the protocol's abort and a failed status, and
 * the deployment is journalled as interrupted (no final verdict), so that the retained
 * desired state runs it again after the restart. */
void gw_engine_shutdown(struct gw_engine *e);
bool gw_engine_busy(const struct gw_engine *e);
/* Fills *ret (all zero and NULL when idle); strings stay valid until the engine runs again. */
void gw_engine_progress(const struct gw_engine *e, struct gw_engine_progress *ret);
