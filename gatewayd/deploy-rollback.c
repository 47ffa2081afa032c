/* The deployment engine's rollbacks: a node that failed, and in an atomic deployment every node
 * that took its image, is given the image it ran before (from the store, as its journal record
 * names it), no more at a time than policy.parallel allows. */
#include <stdio.h>
#include <string.h>

#include "deploy-internal.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "status.h"

void gw_deploy_revert_more(struct deployment *d)
{
        unsigned parallel = d->m->policy.parallel ? d->m->policy.parallel : 1;

        for (size_t i = 0; i < d->n_nodes && d->n_active < parallel; i++) {
                struct node_rt *n = d->nodes[i];

                if (!n->revert_queued)
                        continue;
                n->revert_queued = false;
                /* A node without a previous image stays as it is. */
                gw_deploy_node_revert(n);
        }
}

bool gw_deploy_node_revert(struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {
            .progress = gw_deploy_on_flash_progress,
            .finished = gw_deploy_on_install_finished,
            .resumed = gw_deploy_on_flash_resumed,
        };
        struct deployment *d = n->dep;
        const struct node_image *im = &n->rb_cur;
        int r;

        if (d->cancelled || !im->known)
                return false;
        if (!gw_store_has(d->engine->env.store, im->sha256, im->size)) {
                gw_deploy_log_node(LOG_WARNING, n,
                                   "%s: previous image %s %s is not in the store, cannot roll back",
                                   n->cfg->name, im->name, im->version);
                return false;
        }
        gw_deploy_log_node(LOG_INFO, n, "%s: rolling back to %s %s", n->cfg->name, im->name,
                           im->version);
        n->reverting = true;
        gw_deploy_node_set_active(n, true);
        /* The progress is the rollback's from its first report on, not what the node took of
         * the image it is rolled back from. */
        n->bytes = 0;
        n->total = im->size;
        n->last_pct = -1;
        n->resumed_from = 0;
        gw_deploy_node_set_state(n, GW_NODE_REVERTING);
        /* A fresh link with the previous image's options (a DfuSe address may differ). */
        r = gw_deploy_node_reader_open(d, n, im->sha256, im->name, im->version);
        if (r >= 0)
                r = gw_deploy_node_open(d, n, im->options);
        if (r >= 0) {
                n->t0 = gw_now_ms();
                gw_deploy_journal_node_writing(d->engine, n, im);
                r = gw_flash_install(n->flash, &n->reader, &cbs, n);
        }
        if (r < 0) {
                gw_deploy_log_node(LOG_ERR, n, "%s: rolling back to %s %s failed: %s", n->cfg->name,
                                   im->name, im->version, strerror(-r));
                gw_file_reader_close(&n->reader);
                n->reverting = false;
                if (!n->error)
                        n->error = GW_ERR_FLASH_FAILED;
                gw_deploy_node_set_state(n, GW_NODE_FAILED);
                gw_deploy_node_set_active(n, false);
                return false;
        }
        return true;
}

void gw_deploy_deployment_halt(struct deployment *d)
{
        if (d->halted)
                return;
        d->halted = true;
        gw_deploy_log(LOG_WARNING, d,
                      "Deployment %s is atomic: rolling back the nodes that took their image",
                      d->id);
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                if (n->state != GW_NODE_SUCCESS || n->active)
                        continue;
                if (n->unchanged) {
                        /* It ran this image before the deployment: that is what it goes back
                         * to. */
                        snprintf(n->message, sizeof(n->message),
                                 "rolled back: another node failed; it ran this image before");
                        gw_deploy_node_set_state(n, GW_NODE_REVERTED);
                        continue;
                }
                snprintf(n->message, sizeof(n->message), "rolled back: another node failed");
                n->revert_queued = true;
        }
        gw_deploy_revert_more(d);
}
