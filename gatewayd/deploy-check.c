/* The deployment engine's check phase, after the downloads and before any node is written:
 * every node that can identify is asked what it is and runs, checked against its image's
 * hardware map and anti-downgrade, and each image is checked by the node's protocol. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy-internal.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"
#include "status.h"

bool gw_deploy_check_images(struct deployment *d)
{
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];
                const struct gw_manifest_image *img = &d->m->images[n->image];
                const struct gw_protocol_ops *p = gw_deploy_node_protocol(n);
                struct gw_reader reader = {0};
                struct gw_options *popts = NULL;
                char *path = NULL, why[400] = "";
                bool checked = false; /* the protocol read it: a failure is its refusal */
                bool check, installed;
                int r;

                check = p && p->version >= 4 && p->check_image;
                installed = p && p->version >= 5 && p->installed && n->identified;
                if (!check && !installed)
                        continue;
                r = gw_deploy_node_protocol_opts(n, img->options, &popts);
                if (r >= 0)
                        r = gw_store_path(d->engine->env.store, img->sha256, &path);
                if (r >= 0)
                        r = gw_file_reader_open(path, img->name, &reader);
                if (r >= 0) {
                        checked = true;
                        r = gw_plugin_check_image(p, popts, &reader, n->identified, why,
                                                  sizeof(why));
                } else {
                        snprintf(why, sizeof(why), "cannot read it from the store: %s",
                                 strerror(-r));
                }
                if (r >= 0 && installed) {
                        r = gw_plugin_installed(p, popts, &reader, n->identified, why, sizeof(why));
                        n->unchanged = r == 1;
                }
                gw_file_reader_close(&reader);
                free(path);
                gw_options_free(popts);
                if (r < 0) {
                        n->error = checked ? GW_ERR_NODE_INCOMPATIBLE : GW_ERR_INTERNAL;
                        snprintf(n->message, sizeof(n->message), "image %.64s: %.240s", img->name,
                                 why);
                        gw_deploy_node_set_state(n, GW_NODE_FAILED);
                        gw_deploy_deployment_fail(d, n->error, "node %.64s: %.400s", n->cfg->name,
                                                  n->message);
                        return false;
                }
        }
        return true;
}

/* What the node reported, merged over its configured hardware, against the image's hardware
 * map; and the version it reports, when it reports one, against anti-downgrade. */
static void on_identify_finished(void *userdata, int result, const char *reason)
{
        struct node_rt *n = userdata;
        struct deployment *d = n->dep;
        const struct gw_manifest_image *img = &d->m->images[n->image];
        struct gw_manifest_error err = {0};
        struct gw_options *hw;
        const char *v;
        int r;

        if (d->phase != PHASE_IDENTIFY)
                return;
        gw_deploy_node_set_active(n, false);
        d->n_identifying--;
        if (result < 0) {
                n->error = GW_ERR_NODE_UNREACHABLE;
                snprintf(n->message, sizeof(n->message), "identify failed: %s",
                         reason ? reason : strerror(-result));
                gw_deploy_node_set_state(n, GW_NODE_FAILED);
                gw_deploy_deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name,
                                          n->message);
                return;
        }
        for (size_t i = 0; i < gw_options_count(n->identified); i++)
                gw_deploy_log_node(LOG_DEBUG, n, "%s: identify: %s = %s", n->cfg->name,
                                   gw_options_key(n->identified, i),
                                   gw_options_value(n->identified, i));
        hw = gw_options_new();
        r = hw ? gw_options_merge(hw, n->cfg->hardware) : -ENOMEM;
        if (r >= 0)
                r = gw_options_merge(hw, n->identified);
        if (r >= 0)
                r = gw_manifest_check_hardware(img, hw, &err);
        gw_options_free(hw);
        v = gw_options_get(n->identified, "version");
        if (r >= 0 && v)
                r = gw_manifest_check_downgrade(d->m, img, v, &err);
        if (r < 0) {
                n->error = err.code ? err.code : GW_ERR_INTERNAL;
                snprintf(n->message, sizeof(n->message), "%s",
                         err.message[0] ? err.message : strerror(-r));
                gw_deploy_node_set_state(n, GW_NODE_FAILED);
                gw_deploy_deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name,
                                          n->message);
                return;
        }
        if (d->n_identifying == 0)
                gw_deploy_flash_phase(d);
}

void gw_deploy_identify_phase(struct deployment *d)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_identify_finished};

        d->phase = PHASE_IDENTIFY;
        /* The images as files first (no facts yet: a DFU file's CRC, an MCUboot header): one a
         * protocol refuses fails the deployment before any node is even asked. */
        if (!gw_deploy_check_images(d))
                return;
        for (size_t i = 0; i < d->n_nodes && d->phase == PHASE_IDENTIFY; i++) {
                struct node_rt *n = d->nodes[i];
                const struct gw_manifest_image *img = &d->m->images[n->image];
                int r;

                if (!gw_deploy_can_identify(n))
                        continue;
                r = gw_deploy_node_open(d, n, img->options);
                if (r >= 0) {
                        gw_options_free(n->identified);
                        n->identified = gw_options_new();
                        r = n->identified ? gw_flash_identify(n->flash, n->identified, &cbs, n)
                                          : -ENOMEM;
                        if (r < 0)
                                snprintf(n->message, sizeof(n->message), "cannot identify: %s",
                                         strerror(-r));
                }
                if (r < 0) {
                        n->error = GW_ERR_NODE_UNREACHABLE;
                        gw_deploy_node_set_state(n, GW_NODE_FAILED);
                        gw_deploy_deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name,
                                                  n->message);
                        return;
                }
                gw_deploy_node_set_active(n, true);
                d->n_identifying++;
                gw_deploy_node_set_state(n, GW_NODE_VERIFYING);
        }
        if (d->phase == PHASE_IDENTIFY && d->n_identifying == 0)
                gw_deploy_flash_phase(d);
}
