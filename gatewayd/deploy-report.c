/* The deployment engine's reports upstream: node status, deployment progress and verdicts
 * (the final one kept and republished on every reconnect), and the inventory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deploy-internal.h"
#include "gw/log.h"
#include "status.h"

void gw_deploy_publish(struct gw_engine *e, const char *suffix, char *payload, bool retain)
{
        if (!payload)
                return;
        if (e->env.publish)
                e->env.publish(e->env.userdata, suffix, payload, retain);
        free(payload);
}

void gw_deploy_publish_node(struct gw_engine *e, struct node_rt *n)
{
        struct gw_node_status s;
        char topic[256], *json = NULL;
        struct deployment *d = n->dep;

        gw_node_status_init(&s, n->state);
        if (d) {
                const struct gw_manifest_image *img = d->m ? &d->m->images[n->image] : NULL;

                s.deployment = d->id;
                if (img) {
                        s.image = img->name;
                        s.version = img->version;
                }
                /* Rolling back: the image it is given (and then runs) again. */
                if ((n->state == GW_NODE_REVERTING || n->state == GW_NODE_REVERTED) &&
                    n->rb_cur.known && !n->unchanged) {
                        s.image = n->rb_cur.name;
                        s.version = n->rb_cur.version;
                }
                if (n->total > 0) {
                        uint64_t el = gw_now_ms() - n->t0;

                        s.bytes = (int64_t) n->bytes;
                        s.total = (int64_t) n->total;
                        s.progress = (int) (n->bytes * 100 / n->total);
                        s.rate_bps = el > 0 ? (int64_t) (n->bytes * 1000 / el) : 0;
                }
                if (n->attempts > 0 && n->state == GW_NODE_FLASHING)
                        s.attempt = (int) n->attempts + 1;
                s.unchanged = n->unchanged;
                if (n->resumed_from &&
                    (n->state == GW_NODE_FLASHING || n->state == GW_NODE_REVERTING))
                        s.resumed_from = (int64_t) n->resumed_from;
        } else if (n->installed_version) {
                s.version = n->installed_version;
        }
        if (n->state == GW_NODE_FAILED) {
                s.error = n->error;
                s.error_message = n->message;
        }
        if (gw_status_node_json(&s, time(NULL), &json) < 0)
                return;
        snprintf(topic, sizeof(topic), "nodes/%s/status", n->cfg->name);
        n->last_publish = gw_now_ms();
        gw_deploy_publish(e, topic, json, true);
}

void gw_deploy_changed(struct gw_engine *e)
{
        if (e->env.changed)
                e->env.changed(e->env.userdata);
}

void gw_deploy_node_set_state(struct node_rt *n, enum gw_node_state state)
{
        if (n->state == state)
                return;
        gw_deploy_log_node(LOG_DEBUG, n, "%s: %s -> %s", n->cfg->name,
                           gw_node_state_to_string(n->state), gw_node_state_to_string(state));
        n->state = state;
        if (n->dep) {
                gw_deploy_publish_node(n->dep->engine, n);
                gw_deploy_changed(n->dep->engine);
        }
}

void gw_deploy_publish_rejected(struct gw_engine *e, const char *id, enum gw_error code,
                                const char *message)
{
        char topic[256], *json = NULL;

        if (gw_status_deployment_rejected_json(id ? id : "", code, message, time(NULL), &json) < 0)
                return;
        /* Without a readable id there is no deployment topic to retain the verdict on. */
        snprintf(topic, sizeof(topic), "deployments/%s", id ? id : "invalid");
        gw_deploy_publish(e, topic, json, id != NULL);
}

void gw_deploy_final_keep(struct gw_engine *e, const char *topic, char *json)
{
        free(e->final_topic);
        free(e->final_json);
        e->final_topic = topic ? strdup(topic) : NULL;
        e->final_json = json;
}

void gw_deploy_publish_deployment(struct deployment *d, bool final)
{
        struct gw_deployment_node *nodes = calloc(d->n_nodes ? d->n_nodes : 1, sizeof(*nodes));
        char topic[256], *json = NULL;
        bool success = !d->error;
        int r;

        /* The previous deployment's report is never taken for this one's, even when building
         * this one fails. */
        if (final)
                gw_deploy_final_keep(d->engine, NULL, NULL);
        if (!nodes)
                return;
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];
                const struct gw_manifest_image *img = &d->m->images[n->image];
                bool reverted = n->state == GW_NODE_REVERTED && n->rb_cur.known && !n->unchanged;

                nodes[i] = (struct gw_deployment_node){
                    .name = n->cfg->name,
                    .state = n->state,
                    .progress = final ? -1 : (n->total ? (int) (n->bytes * 100 / n->total) : 0),
                    .image = final ? (reverted ? n->rb_cur.name : img->name) : NULL,
                    .version = final ? (reverted ? n->rb_cur.version : img->version) : NULL,
                    .unchanged = n->unchanged,
                    .error = final && (n->state == GW_NODE_FAILED || n->state == GW_NODE_REVERTED)
                                 ? n->error
                                 : GW_ERR_NONE,
                    .error_message = n->message,
                };
        }
        if (final)
                r = gw_status_deployment_final_json(d->id, success, d->error, d->message, nodes,
                                                    d->n_nodes, time(NULL), &json);
        else
                r = gw_status_deployment_progress_json(d->id, nodes, d->n_nodes, time(NULL), &json);
        free(nodes);
        if (r < 0)
                return;
        snprintf(topic, sizeof(topic), "deployments/%s", d->id);
        if (final) {
                /* Kept, journalled with the verdict and then published (gw_deploy_final_publish()),
                 * and published again on every reconnect. */
                gw_deploy_final_keep(d->engine, topic, json);
                return;
        }
        gw_deploy_publish(d->engine, topic, json, false);
}

void gw_deploy_final_publish(struct gw_engine *e)
{
        if (e->final_topic && e->final_json && e->env.publish)
                e->env.publish(e->env.userdata, e->final_topic, e->final_json, true);
}

void gw_deploy_publish_inventory(struct gw_engine *e)
{
        struct gw_inventory_node *inv = calloc(e->n_nodes ? e->n_nodes : 1, sizeof(*inv));
        char *json = NULL;
        int r;

        if (!inv)
                return;
        for (size_t i = 0; i < e->n_nodes; i++) {
                const struct gw_node_config *c = e->nodes[i].cfg;

                inv[i] = (struct gw_inventory_node){
                    .name = c->name,
                    .transport = c->transport,
                    .protocol = c->protocol,
                    .class_name = c->class_name,
                    .hardware = c->hardware,
                    .version = e->nodes[i].installed_version,
                    .incomplete_image =
                        e->nodes[i].incomplete.known ? e->nodes[i].incomplete.name : NULL,
                    .incomplete_version =
                        e->nodes[i].incomplete.known ? e->nodes[i].incomplete.version : NULL,
                };
        }
        if (e->env.inventory)
                r = gw_inventory_json(e->env.inventory, inv, e->n_nodes, time(NULL), &json);
        else
                r = gw_status_inventory_json(inv, e->n_nodes, time(NULL), &json);
        if (r == 0)
                gw_deploy_publish(e, "inventory", json, true);
        free(inv);
}

void gw_engine_inventory_changed(struct gw_engine *e)
{
        gw_deploy_publish_inventory(e);
}
