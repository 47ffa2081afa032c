/* Wires the daemon's parts to one loop and runs it until a signal asks it to stop. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "deploy.h"
#include "fetch.h"
#include "gw-config.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/manifest.h"
#include "gw/registry.h"
#include "journal.h"
#include "mqtt.h"
#include "store.h"

struct daemon {
        const struct gw_config *cfg;
        struct gw_loop *loop;
        struct gw_trust *trust;
        struct gw_store *store;
        struct gw_fetcher *fetcher;
        struct gw_mqtt *mqtt;
        struct gw_engine *engine;
        bool stopping;
};

static int load_trust(const struct gw_config *cfg, struct gw_trust **ret)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *t = NULL;
        int r;

        if (cfg->trust.keys) {
                r = gw_trust_load_file(cfg->trust.keys, 0, &t, &err);
                if (r < 0)
                        return gw_log_error_errno(r, "Cannot load trust root %s: %s: %s",
                                                  cfg->trust.keys, gw_error_to_string(err.code),
                                                  err.message);
        } else if (cfg->trust.n_public_keys > 0) {
                r = gw_trust_new(cfg->trust.threshold ? cfg->trust.threshold : 1, 1, &t);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < cfg->trust.n_public_keys; i++) {
                        r = gw_trust_add_key_file(t, cfg->trust.public_keys[i]);
                        if (r < 0) {
                                gw_trust_free(t);
                                return gw_log_error_errno(r, "Cannot load public key %s: %m",
                                                          cfg->trust.public_keys[i]);
                        }
                }
                if (gw_trust_key_count(t) < gw_trust_threshold(t)) {
                        gw_trust_free(t);
                        return gw_log_error_errno(-EINVAL,
                                                  "trust.threshold %u is more than the %zu "
                                                  "distinct keys given",
                                                  cfg->trust.threshold, cfg->trust.n_public_keys);
                }
        } else {
                return gw_log_error_errno(-EINVAL,
                                          "%s: no trust keys configured: gatewayd "
                                          "refuses to run without a way to verify "
                                          "manifests",
                                          cfg->path);
        }
        *ret = t;
        return 0;
}

int gw_daemon_check(const struct gw_config *cfg)
{
        struct gw_trust *t = NULL;
        int r, ret = 0;

        if (cfg->plugin_dir) {
                r = gw_plugin_load_dir(cfg->plugin_dir);
                if (r < 0)
                        ret = r;
        }
        for (size_t i = 0; i < cfg->n_nodes; i++) {
                const struct gw_node_config *n = &cfg->nodes[i];
                const struct gw_transport_ops *t_ops = gw_transport_find(n->transport);
                const struct gw_protocol_ops *p_ops = gw_protocol_find(n->protocol);

                if (!t_ops)
                        ret = gw_log_error_errno(-ENOPROTOOPT,
                                                 "%s: node %s: transport '%s' is not built in "
                                                 "and no plugin provides it",
                                                 cfg->path, n->name, n->transport);
                if (!p_ops)
                        ret = gw_log_error_errno(-ENOPROTOOPT,
                                                 "%s: node %s: protocol '%s' is not built in "
                                                 "and no plugin provides it",
                                                 cfg->path, n->name, n->protocol);
                if (t_ops && p_ops && t_ops->shape != p_ops->shape)
                        ret = gw_log_error_errno(
                            -EPROTO,
                            "%s: node %s: protocol %s needs a %s link but "
                            "transport %s gives a %s link",
                            cfg->path, n->name, n->protocol, gw_link_shape_to_string(p_ops->shape),
                            n->transport, gw_link_shape_to_string(t_ops->shape));
        }
        r = load_trust(cfg, &t);
        if (r < 0)
                ret = r;
        gw_trust_free(t);
        return ret;
}

static int on_stop_signal(struct gw_source *s, int signo, void *userdata)
{
        struct daemon *d = userdata;

        if (d->stopping)
                return 0;
        d->stopping = true;
        gw_log_info("Received %s, shutting down", strsignal(signo));
        /* Nodes mid-flash get the protocol's abort and a failed status; the desired state is
         * still retained on the broker, so the deployment runs again after the restart. */
        gw_engine_shutdown(d->engine);
        gw_loop_exit(d->loop, 0);
        return 0;
}

static int publish_cb(void *userdata, const char *suffix, const char *payload, bool retain)
{
        struct daemon *d = userdata;

        return gw_mqtt_publish(d->mqtt, suffix, payload, 1, retain);
}

static void mqtt_connected(void *userdata)
{
        struct daemon *d = userdata;

        gw_engine_connected(d->engine);
}

static void mqtt_message(void *userdata, const char *suffix, const void *payload, size_t len,
                         bool oversize, bool retained)
{
        struct daemon *d = userdata;

        if (d->stopping)
                return;
        gw_engine_message(d->engine, suffix, payload, len, oversize);
}

int gw_daemon_run(const struct gw_config *cfg)
{
        static const struct gw_mqtt_callbacks mcb = {
            .connected = mqtt_connected,
            .message = mqtt_message,
        };
        struct daemon d = {.cfg = cfg};
        struct gw_engine_env env;
        int r;

        r = gw_daemon_check(cfg);
        if (r < 0)
                return r;
        r = load_trust(cfg, &d.trust);
        if (r < 0)
                return r;
        r = gw_journal_mkdir(cfg->state_dir, NULL);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot create state directory %s: %m", cfg->state_dir);
                goto out;
        }
        r = gw_store_open(cfg->state_dir, &d.store);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot open the image store in %s: %m", cfg->state_dir);
                goto out;
        }
        r = gw_loop_new(&d.loop);
        if (r < 0)
                goto out;
        r = gw_loop_add_signal(d.loop, SIGTERM, on_stop_signal, &d, NULL);
        if (r >= 0)
                r = gw_loop_add_signal(d.loop, SIGINT, on_stop_signal, &d, NULL);
        if (r < 0)
                goto out;
        signal(SIGPIPE, SIG_IGN);
        r = gw_fetcher_new(d.loop, &d.fetcher);
        if (r < 0)
                goto out;
        env = (struct gw_engine_env){
            .loop = d.loop,
            .cfg = cfg,
            .trust = d.trust,
            .store = d.store,
            .fetcher = d.fetcher,
            .publish = publish_cb,
            .userdata = &d,
        };
        r = gw_engine_new(&env, &d.engine);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot set up the deployment engine in %s: %m",
                                   cfg->state_dir);
                goto out;
        }
        r = gw_mqtt_new(d.loop, &cfg->mqtt, GW_VERSION, &mcb, &d, &d.mqtt);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot set up the MQTT session: %m");
                goto out;
        }
        gw_log_info("gatewayd %s: gateway %s, %zu node(s), broker %s:%u, prefix %s", GW_VERSION,
                    cfg->gateway_id, cfg->n_nodes, cfg->mqtt.host, cfg->mqtt.port,
                    cfg->mqtt.prefix);
        gw_mqtt_start(d.mqtt);
        r = gw_loop_run(d.loop);
        if (r < 0)
                gw_log_error_errno(r, "Main loop failed: %m");
        gw_mqtt_stop(d.mqtt, 2000);
out:
        gw_engine_free(d.engine);
        gw_mqtt_free(d.mqtt);
        gw_fetcher_free(d.fetcher);
        gw_store_free(d.store);
        gw_trust_free(d.trust);
        gw_loop_free(d.loop);
        return r;
}
