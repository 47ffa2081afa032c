/* The deployment engine, its entry: messages on the deploy and cancel topics, the manifest
 * phase (fetch, verify, map images to nodes, check each image's options against its node) and
 * a deployment's lifecycle. One deployment runs at a time; its later phases live beside this
 * file: fetch (deploy-fetch.c), check (deploy-check.c), flash (deploy-flash.c), roll back
 * (deploy-rollback.c), report (deploy-report.c), all over the journal (deploy-journal.c).
 * Nothing reaches a node before every image of the deployment is in the store and verified;
 * every state change is journalled before it is reported. */
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deploy-internal.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"
#include "journal.h"
#include "mqtt.h"
#include "request.h"
#include "status.h"

static void engine_next(struct gw_engine *e);

static struct deployment *deployment_free(struct deployment *d)
{
        if (!d)
                return NULL;
        gw_fetch_cancel(d->manifest_fetch);
        for (size_t i = 0; d->downloads && d->m && i < d->m->n_images; i++)
                gw_deploy_download_stop(&d->downloads[i]);
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                n->flash = gw_flash_free(n->flash);
                n->retry_timer = gw_source_free(n->retry_timer);
                n->attempts = 0;
                gw_file_reader_close(&n->reader);
                n->identified = gw_options_free(n->identified);
                gw_deploy_node_image_done(&n->rb_cur);
                gw_deploy_node_image_done(&n->rb_prev);
                n->active = n->reverting = n->revert_queued = n->canary = n->unchanged = false;
                n->dep = NULL;
        }
        free(d->downloads);
        free(d->nodes);
        gw_manifest_free(d->m);
        free(d->buf);
        free(d->manifest_url);
        free(d->id);
        free(d);
        return NULL;
}

void gw_deploy_deployment_fail(struct deployment *d, enum gw_error code, const char *fmt, ...)
{
        va_list ap;

        if (d->phase == PHASE_DONE)
                return;
        if (!d->error) {
                d->error = code;
                va_start(ap, fmt);
                vsnprintf(d->message, sizeof(d->message), fmt, ap);
                va_end(ap);
        }
        gw_deploy_deployment_finish(d);
}

void gw_deploy_deployment_finish(struct deployment *d)
{
        struct gw_engine *e = d->engine;
        bool ok = true;

        if (d->phase == PHASE_DONE)
                return;
        d->phase = PHASE_DONE;
        for (size_t i = 0; d->downloads && i < d->m->n_images; i++)
                gw_deploy_download_stop(&d->downloads[i]);
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                if (n->flash) {
                        /* Still running: stop it; its finished() sees PHASE_DONE. */
                        gw_flash_cancel(n->flash);
                }
                if (n->retry_timer) {
                        /* Waiting to try again: it does not. */
                        n->retry_timer = gw_source_free(n->retry_timer);
                        gw_deploy_node_set_active(n, false);
                }
                if (n->state != GW_NODE_SUCCESS && n->state != GW_NODE_FAILED &&
                    n->state != GW_NODE_REVERTED) {
                        n->error = d->error ? d->error : GW_ERR_INTERNAL;
                        snprintf(n->message, sizeof(n->message), "%.319s",
                                 d->error ? d->message : "not flashed");
                        gw_deploy_node_set_state(n, GW_NODE_FAILED);
                }
                if (n->state != GW_NODE_SUCCESS)
                        ok = false;
        }
        /* The deployment failed for the first node that did (a reverted node keeps the failure
         * it was rolled back for): its code says why. */
        for (size_t i = 0; !ok && !d->error && i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                if (n->state != GW_NODE_FAILED &&
                    !(n->state == GW_NODE_REVERTED && n->error != GW_ERR_NONE))
                        continue;
                d->error = n->error ? n->error : GW_ERR_FLASH_FAILED;
                snprintf(d->message, sizeof(d->message), "%.64s: %.319s", n->cfg->name, n->message);
        }
        if (d->interrupted) {
                gw_deploy_journal_deployment(d, "interrupted", NULL);
                gw_deploy_log(LOG_WARNING, d,
                              "Deployment %s interrupted; it runs again after the restart", d->id);
        } else {
                /* The report goes into the journal with the verdict, before it is published: a
                 * cut in between and the restart publishes it (gw_deploy_journal_done()). */
                gw_deploy_publish_deployment(d, true);
                gw_deploy_journal_deployment(d, d->error ? "failed" : "success", e->final_json);
                gw_deploy_final_publish(e);
                if (d->error)
                        gw_deploy_log(LOG_ERR, d, "Deployment %s failed: %s: %s", d->id,
                                      gw_error_to_string(d->error), d->message);
                else
                        gw_deploy_log(LOG_INFO, d, "Deployment %s succeeded on %zu node(s)", d->id,
                                      d->n_nodes);
        }
        gw_deploy_publish_inventory(e);
        e->current = deployment_free(d);
        engine_next(e);
}

/* Rejected before any node was touched: the verdict goes on the deployment topic only. */
static void deployment_reject(struct deployment *d, enum gw_error code, const char *message)
{
        struct gw_engine *e = d->engine;
        char name[300];
        char *s = NULL;

        gw_deploy_log(LOG_ERR, d, "Deployment %s rejected: %s: %s", d->id, gw_error_to_string(code),
                      message);
        if (d->sha_hex[0]) {
                json_t *o =
                    json_pack("{s:s, s:s, s:s, s:s}", "id", d->id, "manifest_sha256", d->sha_hex,
                              "state", "rejected", "error", gw_error_to_string(code));

                s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
                json_decref(o);
                snprintf(name, sizeof(name), "deployments/%s.json", d->id);
                if (s)
                        gw_journal_write(gw_deploy_state_dir(e), name, s, strlen(s));
                free(s);
        }
        gw_deploy_publish_rejected(e, d->id, code, message);
        d->phase = PHASE_DONE;
        e->current = deployment_free(d);
        engine_next(e);
}

/* May img go to node n? Its hardware map against what the node is known to be, then
 * anti-downgrade against the version the journal says the node runs (unless the signed
 * policy allows downgrades). A node whose protocol cannot identify is known by its configured
 * hardware map alone; one that can is checked after the downloads, against what it reports
 * merged over its configured map (gw_deploy_identify_phase()), and here only against downgrades.
 * Sets d->error and d->message on refusal. */
static int node_check(struct deployment *d, const struct node_rt *n,
                      const struct gw_manifest_image *img)
{
        struct gw_manifest_error err = {0};
        int r = 0;

        if (!gw_deploy_can_identify(n))
                r = gw_manifest_check_hardware(img, n->cfg->hardware, &err);
        if (r >= 0)
                r = gw_manifest_check_downgrade(d->m, img, n->installed_version, &err);
        if (r < 0) {
                d->error = err.code ? err.code : GW_ERR_INTERNAL;
                snprintf(d->message, sizeof(d->message), "node %s: %s", n->cfg->name,
                         err.message[0] ? err.message : strerror(-r));
        }
        return r;
}

/* The image's options over the node's protocol settings, as the node's plugins will take
 * them: an option the protocol does not read or a value it refuses would fail the node at
 * flashing time, after other nodes took their images, so it refuses the deployment here. Sets
 * d->error and d->message on refusal. */
static int node_check_options(struct deployment *d, const struct node_rt *n,
                              const struct gw_manifest_image *img)
{
        const struct gw_transport_ops *t = gw_transport_find(n->cfg->transport);
        const struct gw_protocol_ops *p = gw_deploy_node_protocol(n);
        struct gw_options *popts;
        char why[512];
        int r;

        if (!t || !p)
                return 0; /* gw_deploy_node_open() reports it */
        r = gw_plugin_check_image_options(p, img->options, why, sizeof(why));
        if (r < 0) {
                d->error = GW_ERR_NODE_INCOMPATIBLE;
                snprintf(d->message, sizeof(d->message), "image %.64s for node %.64s: %.250s",
                         img->name, n->cfg->name, why);
                return r;
        }
        r = gw_deploy_node_protocol_opts(n, img->options, &popts);
        if (r < 0)
                return r;
        r = gw_plugin_check_options(t, n->cfg->transport_opts, p, popts, why, sizeof(why));
        if (r < 0) {
                d->error = GW_ERR_NODE_INCOMPATIBLE;
                snprintf(d->message, sizeof(d->message), "image %.64s for node %.64s: %.250s",
                         img->name, n->cfg->name, why);
        }
        gw_options_free(popts);
        return r;
}

static int map_nodes(struct deployment *d)
{
        struct gw_engine *e = d->engine;
        const struct gw_manifest *m = d->m;
        int r;

        d->nodes = calloc(e->n_nodes ? e->n_nodes : 1, sizeof(*d->nodes));
        if (!d->nodes)
                return -ENOMEM;
        for (size_t i = 0; i < e->n_nodes; i++)
                e->nodes[i].image = SIZE_MAX;

        for (size_t i = 0; i < m->n_images; i++) {
                const struct gw_manifest_image *img = &m->images[i];

                if (img->size > e->env.cfg->image_size_max) {
                        d->error = GW_ERR_IMAGE_SIZE_MISMATCH;
                        snprintf(d->message, sizeof(d->message),
                                 "image %s: %llu bytes is over this gateway's limit of %llu",
                                 img->name, (unsigned long long) img->size,
                                 (unsigned long long) e->env.cfg->image_size_max);
                        return -EFBIG;
                }
                for (size_t t = 0; t < img->n_targets; t++) {
                        bool found = false;

                        for (size_t k = 0; k < e->n_nodes; k++) {
                                struct node_rt *n = &e->nodes[k];
                                const char *cls = n->cfg->class_name;
                                bool match = img->target_kind == GW_TARGET_CLASS
                                                 ? cls && strcmp(cls, img->targets[t]) == 0
                                                 : strcmp(n->cfg->name, img->targets[t]) == 0;

                                if (!match)
                                        continue;
                                found = true;
                                if (n->image != SIZE_MAX && n->image != i) {
                                        d->error = GW_ERR_SCHEMA_INVALID;
                                        snprintf(d->message, sizeof(d->message),
                                                 "node %s is targeted by images %s and %s",
                                                 n->cfg->name, m->images[n->image].name, img->name);
                                        return -EINVAL;
                                }
                                if (n->image == i)
                                        continue;
                                if (strcmp(n->cfg->protocol, img->protocol) != 0) {
                                        d->error = GW_ERR_NODE_INCOMPATIBLE;
                                        snprintf(d->message, sizeof(d->message),
                                                 "image %s is for protocol %s, node %s speaks %s",
                                                 img->name, img->protocol, n->cfg->name,
                                                 n->cfg->protocol);
                                        return -EINVAL;
                                }
                                r = node_check(d, n, img);
                                if (r >= 0)
                                        r = node_check_options(d, n, img);
                                if (r < 0)
                                        return r;
                                n->image = i;
                                d->nodes[d->n_nodes++] = n;
                        }
                        if (!found && img->target_kind != GW_TARGET_CLASS) {
                                d->error = GW_ERR_NODE_UNKNOWN;
                                snprintf(d->message, sizeof(d->message),
                                         "image %s targets node %s, which this gateway does not "
                                         "have",
                                         img->name, img->targets[t]);
                                return -ENOENT;
                        }
                }
        }
        if (d->n_nodes == 0) {
                d->error = GW_ERR_NODE_UNKNOWN;
                snprintf(d->message, sizeof(d->message),
                         "no node of this gateway is targeted by the manifest");
                return -ENOENT;
        }
        return 0;
}

static void manifest_report(void *userdata, const char *check, enum gw_error code,
                            const char *detail)
{
        struct deployment *d = userdata;

        gw_deploy_log(LOG_DEBUG, d, "Deployment %s: check %s: %s%s%s", d->id, check,
                      code ? gw_error_to_string(code) : "ok", detail ? ": " : "",
                      detail ? detail : "");
}

static void manifest_ready(struct deployment *d)
{
        struct gw_engine *e = d->engine;
        const struct gw_config *cfg = e->env.cfg;
        struct gw_manifest_error err = {0};
        struct gw_manifest_state st = {0};
        struct gw_manifest_verify_params p;
        uint8_t sha[32];
        unsigned len = 0;
        const char **names;
        char *json = NULL, *final = NULL;
        json_t *rollback;
        int r;

        if (EVP_Digest(d->buf, d->len, sha, &len, EVP_sha256(), NULL) != 1) {
                deployment_reject(d, GW_ERR_INTERNAL, "cannot hash the manifest");
                return;
        }
        gw_hex(sha, 32, d->sha_hex);
        if (gw_deploy_journal_done(e, d->id, d->sha_hex, &final)) {
                gw_deploy_log(LOG_INFO, d,
                              "Deployment %s with manifest %.12s was already done, ignoring", d->id,
                              d->sha_hex);
                /* Its report again, retained: the broker may never have had it (a cut between
                 * the journal and the publication), and it costs nothing when it has. */
                if (final) {
                        char topic[300];

                        snprintf(topic, sizeof(topic), "deployments/%s", d->id);
                        gw_deploy_final_keep(e, topic, final);
                        gw_deploy_final_publish(e);
                }
                d->phase = PHASE_DONE;
                e->current = deployment_free(d);
                engine_next(e);
                return;
        }
        r = gw_manifest_state_load(cfg->state_dir, &st);
        if (r < 0) {
                gw_log_warning_errno(r, "Cannot read the manifest state in %s: %m", cfg->state_dir);
                deployment_reject(d, GW_ERR_INTERNAL, "cannot read the gateway's manifest state");
                return;
        }
        p = (struct gw_manifest_verify_params){
            .max_size = cfg->manifest_size_max,
            .now = time(NULL),
            .state = &st,
            .gateway_hardware = cfg->gateway_hardware,
            .report = manifest_report,
            .userdata = d,
        };
        r = gw_manifest_verify(e->env.trust(e->env.userdata), &p, d->buf, d->len, &d->m, &err);
        if (r < 0) {
                deployment_reject(d, err.code ? err.code : GW_ERR_INTERNAL, err.message);
                return;
        }
        r = map_nodes(d);
        if (r < 0) {
                for (size_t i = 0; i < d->n_nodes; i++)
                        d->nodes[i]->image = SIZE_MAX;
                d->n_nodes = 0;
                deployment_reject(d, d->error ? d->error : GW_ERR_INTERNAL, d->message);
                return;
        }
        /* Accepted: the sequence and trusted time move forward before anything else happens,
         * so that a replay of an older manifest is refused even after a crash. */
        gw_manifest_state_advance(&st, d->m, time(NULL));
        r = gw_manifest_state_save(cfg->state_dir, &st);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot persist the manifest state: %m");
                for (size_t i = 0; i < d->n_nodes; i++)
                        d->nodes[i]->image = SIZE_MAX;
                d->n_nodes = 0;
                deployment_reject(d, GW_ERR_INTERNAL, "cannot persist the manifest state");
                return;
        }
        /* A run again after a crash keeps the rollback targets of the first run; a deployment
         * that ended (gw_deploy_journal_done) never gets here. */
        rollback = gw_deploy_rollback_recorded(e, d->id, d->sha_hex);
        d->resumed = rollback != NULL;
        if (rollback)
                gw_deploy_log(
                    LOG_INFO, d,
                    "Deployment %s runs again: it rolls back to what the nodes ran when it "
                    "was first accepted",
                    d->id);
        for (size_t i = 0; i < d->n_nodes; i++) {
                const json_t *rec =
                    rollback ? json_object_get(rollback, d->nodes[i]->cfg->name) : NULL;

                d->nodes[i]->dep = d;
                d->nodes[i]->error = GW_ERR_NONE;
                d->nodes[i]->message[0] = '\0';
                d->nodes[i]->bytes = d->nodes[i]->total = 0;
                d->nodes[i]->state = GW_NODE_IDLE;
                d->nodes[i]->active = d->nodes[i]->reverting = false;
                d->nodes[i]->revert_queued = false;
                /* What a rollback restores; without memory it is simply not possible. */
                if (json_is_object(rec)) {
                        gw_deploy_node_image_from_json(&d->nodes[i]->rb_cur, rec, "");
                        gw_deploy_node_image_from_json(&d->nodes[i]->rb_prev, rec, "previous_");
                } else if (gw_deploy_node_image_copy(&d->nodes[i]->rb_cur, &d->nodes[i]->cur) < 0 ||
                           gw_deploy_node_image_copy(&d->nodes[i]->rb_prev, &d->nodes[i]->prev) <
                               0) {
                        gw_deploy_node_image_done(&d->nodes[i]->rb_cur);
                }
        }
        json_decref(rollback);
        gw_deploy_journal_deployment(d, "accepted", NULL);
        names = calloc(d->n_nodes, sizeof(*names));
        if (names) {
                for (size_t i = 0; i < d->n_nodes; i++)
                        names[i] = d->nodes[i]->cfg->name;
                if (gw_status_deployment_accepted_json(d->id, d->sha_hex, names, d->n_nodes,
                                                       time(NULL), &json) == 0) {
                        char topic[256];

                        snprintf(topic, sizeof(topic), "deployments/%s", d->id);
                        gw_deploy_publish(e, topic, json, false);
                }
                free(names);
        }
        gw_deploy_log(
            LOG_INFO, d,
            "Deployment %s accepted: manifest %s sequence %llu, %zu image(s), %zu node(s)", d->id,
            d->m->id, (unsigned long long) d->m->sequence, d->m->n_images, d->n_nodes);
        /* One deadline for all downloads: a server that trickles each image just above the
         * minimum rate, or fails each mirror slowly, cannot stretch the deployment. */
        if (cfg->fetch_deadline)
                d->deadline_ms = gw_now_ms() + (uint64_t) cfg->fetch_deadline * 1000u;
        for (size_t i = 0; i < d->n_nodes; i++)
                gw_deploy_node_set_state(d->nodes[i], GW_NODE_QUEUED);
        gw_deploy_download_phase(d);
}

static void on_manifest_fetched(void *userdata, int result, enum gw_error code, const char *message,
                                const uint8_t sha256[32], uint64_t bytes, uint8_t *mem)
{
        struct deployment *d = userdata;

        d->manifest_fetch = NULL;
        if (result < 0) {
                free(mem);
                /* Over the cap is the manifest's fault, not the image's. */
                if (code == GW_ERR_IMAGE_SIZE_MISMATCH)
                        code = GW_ERR_MANIFEST_TOO_LARGE;
                deployment_reject(d, code, message ? message : "cannot fetch the manifest");
                return;
        }
        d->buf = mem;
        d->len = (size_t) bytes;
        if (!d->buf) {
                /* An empty body: still "a manifest", and it fails the envelope check. */
                d->buf = calloc(1, 1);
                d->len = 0;
        }
        manifest_ready(d);
}

static void deployment_start(struct gw_engine *e, struct gw_deploy_request *req)
{
        struct deployment *d = calloc(1, sizeof(*d));
        const struct gw_config *cfg = e->env.cfg;

        if (!d) {
                gw_log_about(LOG_ERR, 0, req->id, NULL, "Deployment %s: out of memory", req->id);
                gw_deploy_request_done(req);
                return;
        }
        d->engine = e;
        d->id = req->id;
        d->manifest_url = req->manifest_url;
        d->buf = req->manifest;
        d->len = req->manifest_size;
        *req = (struct gw_deploy_request){0};
        d->phase = PHASE_MANIFEST;
        e->current = d;
        gw_deploy_changed(e);
        gw_deploy_log(LOG_INFO, d, "Deployment %s: received%s%s", d->id,
                      d->manifest_url ? ", fetching " : "",
                      d->manifest_url ? d->manifest_url : " with an inline manifest");

        if (d->manifest_url) {
                struct gw_fetch_params p = {
                    .url = d->manifest_url,
                    .fd = -1,
                    .max_bytes = cfg->manifest_size_max,
                    .min_rate = cfg->fetch_min_rate,
                    .rate_window_s = cfg->fetch_rate_window,
                    .connect_timeout_s = cfg->fetch_connect_timeout,
                    .finished = on_manifest_fetched,
                    .userdata = d,
                };
                int r;

                if (cfg->fetch_deadline)
                        p.deadline_ms = gw_now_ms() + (uint64_t) cfg->fetch_deadline * 1000u;
                r = gw_fetch_start(e->env.fetcher, &p, &d->manifest_fetch);
                if (r < 0)
                        deployment_reject(d, GW_ERR_DOWNLOAD_FAILED, "cannot fetch the manifest");
                return;
        }
        manifest_ready(d);
}

static void engine_next(struct gw_engine *e)
{
        struct gw_deploy_request req;

        if (e->current || !e->has_pending) {
                /* Idle now, or still busy with the one that runs. */
                gw_deploy_changed(e);
                return;
        }
        req = e->pending;
        e->pending = (struct gw_deploy_request){0};
        e->has_pending = false;
        deployment_start(e, &req);
}

/* The same id and the same manifest source: a redelivery, not a new desired state. */
static bool same_request(const struct deployment *d, const struct gw_deploy_request *req)
{
        if (strcmp(d->id, req->id) != 0)
                return false;
        if (d->manifest_url || req->manifest_url)
                return d->manifest_url && req->manifest_url &&
                       strcmp(d->manifest_url, req->manifest_url) == 0;
        return d->buf && d->len == req->manifest_size && memcmp(d->buf, req->manifest, d->len) == 0;
}

static void on_deploy(struct gw_engine *e, const void *payload, size_t len, bool oversize)
{
        const struct gw_config *cfg = e->env.cfg;
        struct gw_request_error err = {0};
        struct gw_deploy_request req = {0};
        int r;

        if (oversize) {
                char msg[128];

                snprintf(msg, sizeof(msg), "payload of %zu bytes is over the cap of %zu", len,
                         cfg->mqtt.max_payload);
                gw_log_warning("Deploy message rejected: %s", msg);
                gw_deploy_publish_rejected(e, NULL, GW_ERR_PAYLOAD_TOO_LARGE, msg);
                return;
        }
        r = gw_deploy_request_parse(payload, len, cfg->mqtt.max_payload, cfg->manifest_size_max,
                                    &req, &err);
        if (r == GW_REQUEST_CLEARED) {
                gw_log_debug("Desired state cleared, nothing to do");
                return;
        }
        if (r < 0) {
                gw_log_warning("Deploy message rejected: %s: %s", gw_error_to_string(err.code),
                               err.message ? err.message : "invalid");
                gw_deploy_publish_rejected(e, err.id, err.code ? err.code : GW_ERR_PAYLOAD_INVALID,
                                           err.message ? err.message : "invalid payload");
                gw_request_error_done(&err);
                return;
        }
        if (e->current && same_request(e->current, &req)) {
                /* The retained desired state comes again after a reconnect. */
                gw_log_about(LOG_DEBUG, 0, req.id, NULL,
                             "Deployment %s is already running, ignoring", req.id);
                gw_deploy_request_done(&req);
                return;
        }
        if (e->current) {
                gw_log_about(LOG_INFO, 0, req.id, NULL, "Deployment %s queued behind %s", req.id,
                             e->current->id);
                gw_deploy_request_done(&e->pending);
                e->pending = req;
                e->has_pending = true;
                return;
        }
        deployment_start(e, &req);
}

static void on_cancel(struct gw_engine *e, const void *payload, size_t len, bool oversize)
{
        struct gw_request_error err = {0};
        struct gw_cancel_request req = {0};
        int r;

        if (oversize) {
                gw_log_warning("Cancel message over the payload cap, ignoring");
                return;
        }
        r = gw_cancel_request_parse(payload, len, e->env.cfg->mqtt.max_payload, &req, &err);
        if (r != 0) {
                if (r < 0)
                        gw_log_warning("Cancel message rejected: %s, ignoring",
                                       err.message ? err.message : "invalid");
                gw_request_error_done(&err);
                return;
        }
        if (e->has_pending && strcmp(e->pending.id, req.id) == 0) {
                gw_log_about(LOG_INFO, 0, req.id, NULL, "Deployment %s cancelled before it started",
                             req.id);
                gw_deploy_publish_rejected(e, req.id, GW_ERR_CANCELLED,
                                           "cancelled before it started");
                gw_deploy_request_done(&e->pending);
                e->has_pending = false;
        } else if (e->current && strcmp(e->current->id, req.id) == 0) {
                gw_log_about(LOG_INFO, 0, req.id, NULL, "Deployment %s: cancel requested", req.id);
                e->current->cancelled = true;
                if (e->current->phase == PHASE_MANIFEST)
                        deployment_reject(e->current, GW_ERR_CANCELLED, "cancelled");
                else
                        gw_deploy_deployment_fail(e->current, GW_ERR_CANCELLED, "cancelled");
        } else {
                gw_log_about(LOG_INFO, 0, req.id, NULL,
                             "Cancel for deployment %s, which is not running, ignoring", req.id);
        }
        gw_cancel_request_done(&req);
}

void gw_engine_message(struct gw_engine *e, const char *suffix, const void *payload, size_t len,
                       bool oversize)
{
        if (strcmp(suffix, GW_MQTT_TOPIC_DEPLOY) == 0)
                on_deploy(e, payload, len, oversize);
        else if (strcmp(suffix, GW_MQTT_TOPIC_CANCEL) == 0)
                on_cancel(e, payload, len, oversize);
}

void gw_engine_connected(struct gw_engine *e)
{
        gw_deploy_publish_inventory(e);
        for (size_t i = 0; i < e->n_nodes; i++)
                gw_deploy_publish_node(e, &e->nodes[i]);
        gw_deploy_final_publish(e);
}

void gw_engine_shutdown(struct gw_engine *e)
{
        struct deployment *d = e->current;

        if (e->has_pending) {
                gw_deploy_request_done(&e->pending);
                e->has_pending = false;
        }
        if (!d)
                return;
        if (d->phase == PHASE_MANIFEST) {
                /* Nothing decided yet, nothing journalled: it simply starts over. */
                d->phase = PHASE_DONE;
                e->current = deployment_free(d);
                return;
        }
        d->cancelled = true;
        d->interrupted = true;
        gw_deploy_deployment_fail(d, GW_ERR_CANCELLED, "gateway shutting down");
}

bool gw_engine_busy(const struct gw_engine *e)
{
        return e->current != NULL || e->has_pending;
}

static const char *phase_to_string(enum phase p)
{
        switch (p) {
        case PHASE_MANIFEST:
                return "manifest";
        case PHASE_DOWNLOAD:
                return "download";
        case PHASE_IDENTIFY:
                return "identify";
        case PHASE_FLASH:
                return "flash";
        case PHASE_DONE:
                return "done";
        }
        return NULL;
}

void gw_engine_progress(const struct gw_engine *e, struct gw_engine_progress *ret)
{
        const struct deployment *d = e->current;

        *ret = (struct gw_engine_progress){.queued = e->has_pending};
        if (!d)
                return;
        ret->deployment = d->id;
        ret->phase = phase_to_string(d->phase);
        ret->n_nodes = d->n_nodes;
        ret->reverting = d->halted;
        for (size_t i = 0; i < d->n_nodes; i++) {
                const struct node_rt *n = d->nodes[i];

                if (n->active)
                        ret->n_active++;
                if (n->active || n->revert_queued)
                        continue;
                if (n->state == GW_NODE_SUCCESS || n->state == GW_NODE_FAILED ||
                    n->state == GW_NODE_REVERTED)
                        ret->n_ended++;
                if (n->state == GW_NODE_FAILED || n->state == GW_NODE_REVERTED)
                        ret->n_failed++;
        }
        if (d->m) {
                ret->n_images = d->m->n_images;
                for (size_t i = 0; d->downloads && i < d->m->n_images; i++)
                        if (d->downloads[i].done)
                                ret->n_images_ready++;
                if (d->phase > PHASE_DOWNLOAD)
                        ret->n_images_ready = ret->n_images;
        }
}

int gw_engine_new(const struct gw_engine_env *env, struct gw_engine **ret)
{
        struct gw_engine *e = calloc(1, sizeof(*e));
        int r;

        if (!e)
                return -ENOMEM;
        e->env = *env;
        e->n_nodes = env->cfg->n_nodes;
        e->nodes = calloc(e->n_nodes ? e->n_nodes : 1, sizeof(*e->nodes));
        if (!e->nodes) {
                free(e);
                return -ENOMEM;
        }
        r = gw_journal_mkdir(env->cfg->state_dir, "deployments");
        if (r >= 0)
                r = gw_journal_mkdir(env->cfg->state_dir, "nodes");
        if (r < 0) {
                free(e->nodes);
                free(e);
                return r;
        }
        for (size_t i = 0; i < e->n_nodes; i++) {
                e->nodes[i].cfg = &env->cfg->nodes[i];
                e->nodes[i].state = GW_NODE_IDLE;
                e->nodes[i].image = SIZE_MAX;
                gw_deploy_journal_node_load(e, &e->nodes[i]);
        }
        *ret = e;
        return 0;
}

struct gw_engine *gw_engine_free(struct gw_engine *e)
{
        if (!e)
                return NULL;
        deployment_free(e->current);
        gw_deploy_request_done(&e->pending);
        for (size_t i = 0; i < e->n_nodes; i++) {
                free(e->nodes[i].installed_version);
                gw_deploy_node_image_done(&e->nodes[i].cur);
                gw_deploy_node_image_done(&e->nodes[i].prev);
                gw_deploy_node_image_done(&e->nodes[i].incomplete);
        }
        free(e->nodes);
        free(e->final_topic);
        free(e->final_json);
        free(e);
        return NULL;
}
