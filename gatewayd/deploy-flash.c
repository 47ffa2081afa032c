/* The deployment engine's flash phase: nodes flashed in parallel up to policy.parallel,
 * canaries first, each install checked by identify afterwards and tried again when the node's
 * retries say so; a failed node is rolled back (deploy-rollback.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy-internal.h"
#include "gw/access.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"
#include "status.h"

static int flash_node(struct deployment *d, struct node_rt *n);
static void flash_start_more(struct deployment *d);

const struct gw_protocol_ops *gw_deploy_node_protocol(const struct node_rt *n)
{
        return gw_protocol_find(n->cfg->protocol);
}

bool gw_deploy_can_identify(const struct node_rt *n)
{
        const struct gw_protocol_ops *p = gw_deploy_node_protocol(n);

        return p && p->identify;
}

void gw_deploy_node_set_active(struct node_rt *n, bool active)
{
        if (n->active == active)
                return;
        n->active = active;
        if (active)
                n->dep->n_active++;
        else
                n->dep->n_active--;
}

int gw_deploy_node_protocol_opts(const struct node_rt *n, const struct gw_options *opts,
                                 struct gw_options **ret)
{
        struct gw_options *o = gw_options_new();
        int r;

        if (!o)
                return -ENOMEM;
        r = gw_options_merge(o, n->cfg->protocol_opts);
        if (r >= 0)
                r = gw_options_merge(o, opts);
        if (r < 0) {
                gw_options_free(o);
                return r;
        }
        *ret = o;
        return 0;
}

int gw_deploy_node_open(struct deployment *d, struct node_rt *n, const struct gw_options *opts)
{
        const struct gw_transport_ops *t = gw_transport_find(n->cfg->transport);
        const struct gw_protocol_ops *p = gw_deploy_node_protocol(n);
        struct gw_options *popts;
        int r;

        n->flash = gw_flash_free(n->flash);
        if (!t || !p) {
                snprintf(n->message, sizeof(n->message), "no plugin for %s/%s", n->cfg->transport,
                         n->cfg->protocol);
                return -ENOPROTOOPT;
        }
        r = gw_deploy_node_protocol_opts(n, opts, &popts);
        if (r < 0)
                return r;
        r = gw_flash_new(d->engine->env.loop, n->cfg->name, t, n->cfg->transport_opts, p, popts,
                         &n->flash);
        gw_options_free(popts);
        if (r == -EACCES) {
                /* The one thing the gateway's owner must fix on the gateway itself: say which
                 * device node and how, here and in the node's status upstream. */
                char why[448];

                gw_access_explain(t, n->cfg->transport_opts, why, sizeof(why));
                snprintf(n->message, sizeof(n->message), "cannot open %s link: %s",
                         n->cfg->transport, why);
        } else if (r < 0) {
                snprintf(n->message, sizeof(n->message), "cannot open %s link: %s",
                         n->cfg->transport, strerror(-r));
        }
        return r;
}

int gw_deploy_node_reader_open(struct deployment *d, struct node_rt *n, const uint8_t sha256[32],
                               const char *name, const char *version)
{
        char *path = NULL, *fname = NULL;
        int r;

        gw_file_reader_close(&n->reader);
        r = gw_store_path(d->engine->env.store, sha256, &path);
        if (r >= 0 && asprintf(&fname, "%s-%s.bin", name, version) < 0)
                r = -ENOMEM;
        if (r >= 0)
                r = gw_file_reader_open(path, fname, &n->reader);
        if (r < 0)
                snprintf(n->message, sizeof(n->message), "image missing from the store");
        free(fname);
        free(path);
        return r;
}

void gw_deploy_on_flash_resumed(void *userdata, uint64_t offset)
{
        struct node_rt *n = userdata;

        n->resumed_from = offset;
        if (n->confirmed_at_start)
                gw_deploy_log_node(
                    LOG_INFO, n,
                    "%s: resuming at %llu of %llu bytes (%llu were confirmed before the "
                    "interruption)",
                    n->cfg->name, (unsigned long long) offset, (unsigned long long) n->total,
                    (unsigned long long) n->confirmed_at_start);
        else
                gw_deploy_log_node(
                    LOG_INFO, n, "%s: resuming at %llu of %llu bytes (the node kept them)",
                    n->cfg->name, (unsigned long long) offset, (unsigned long long) n->total);
        gw_deploy_publish_node(n->dep->engine, n);
}

void gw_deploy_on_flash_progress(void *userdata, uint64_t done, uint64_t total)
{
        struct node_rt *n = userdata;
        uint64_t now = gw_now_ms();
        int pct = total ? (int) (done * 100 / total) : 100;

        n->bytes = done;
        n->total = total;
        gw_deploy_journal_node_confirmed(n->dep->engine, n, done);
        if (pct != n->last_pct &&
            (now - n->last_publish >= PROGRESS_INTERVAL_MS || done == total)) {
                n->last_pct = pct;
                gw_deploy_publish_node(n->dep->engine, n);
                gw_deploy_publish_deployment(n->dep, false);
        }
}

/* A canary node ended: the others may go when every canary succeeded; one that did not stops
 * the rollout, and the deployment fails with its error. */
static void canary_ended(struct deployment *d, struct node_rt *n)
{
        if (!n->canary)
                return;
        n->canary = false;
        d->canary_left--;
        if (n->state == GW_NODE_SUCCESS || d->canary_failed)
                return;
        d->canary_failed = true;
        if (!d->error) {
                d->error = n->error ? n->error : GW_ERR_FLASH_FAILED;
                snprintf(d->message, sizeof(d->message), "%.64s (canary): %.319s", n->cfg->name,
                         n->message);
        }
        gw_deploy_log(LOG_WARNING, d,
                      "Deployment %s: canary node %s did not take its image; the other nodes "
                      "are not flashed",
                      d->id, n->cfg->name);
}

/* The node's job ended for good in this deployment (success, failed or reverted). */
static void node_ended(struct node_rt *n)
{
        struct deployment *d = n->dep;

        canary_ended(d, n);
        gw_deploy_node_set_active(n, false);
        gw_deploy_publish_deployment(d, false);
        gw_deploy_revert_more(d);
        flash_start_more(d);
}

/* A node failed to take its image (code says how): it is rolled back when the journal and the
 * store have its previous image; an atomic deployment rolls back every other node too. */
static void node_failed(struct node_rt *n, enum gw_error code, const char *fmt, ...)
{
        struct deployment *d = n->dep;
        const struct gw_manifest_image *img = &d->m->images[n->image];
        va_list ap;

        n->error = code;
        va_start(ap, fmt);
        vsnprintf(n->message, sizeof(n->message), fmt, ap);
        va_end(ap);
        gw_deploy_log_node(LOG_ERR, n, "%s: %s %s: %s: %s", n->cfg->name, img->name, img->version,
                           gw_error_to_string(code), n->message);
        if (d->m->policy.atomic && !d->cancelled) {
                if (!d->error) {
                        d->error = code;
                        snprintf(d->message, sizeof(d->message), "%.64s: %.319s", n->cfg->name,
                                 n->message);
                }
                gw_deploy_deployment_halt(d);
        }
        if ((code == GW_ERR_FLASH_FAILED || code == GW_ERR_VERIFY_FAILED) &&
            gw_deploy_node_revert(n))
                return;
        gw_deploy_node_set_state(n, GW_NODE_FAILED);
        node_ended(n);
}

static void node_succeeded(struct node_rt *n)
{
        struct deployment *d = n->dep;

        gw_deploy_node_set_state(n, GW_NODE_SUCCESS);
        if (d->halted) {
                snprintf(n->message, sizeof(n->message), "rolled back: another node failed");
                if (gw_deploy_node_revert(n))
                        return;
        }
        node_ended(n);
}

/* identify() after the install: the node must answer, and report the image's version when it
 * reports a version at all. */
static void on_check_finished(void *userdata, int result, const char *reason)
{
        struct node_rt *n = userdata;
        struct deployment *d = n->dep;
        const struct gw_manifest_image *img = &d->m->images[n->image];
        const char *v;

        if (d->phase != PHASE_FLASH) {
                /* Stopped by gw_deploy_deployment_finish(), which decides the node's state. */
                return;
        }
        if (result < 0) {
                node_failed(n, GW_ERR_VERIFY_FAILED, "no answer to identify after flashing: %s",
                            reason ? reason : strerror(-result));
                return;
        }
        v = gw_options_get(n->identified, "version");
        if (v && gw_version_compare(v, img->version) != 0) {
                node_failed(n, GW_ERR_VERIFY_FAILED, "reports version %.64s after flashing %.64s",
                            v, img->version);
                return;
        }
        gw_deploy_log_node(LOG_INFO, n, "%s: checked: it answers%s%s", n->cfg->name,
                           v ? " with version " : "", v ? v : "");
        node_succeeded(n);
}

static void node_check_start(struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_check_finished};
        int r;

        gw_deploy_node_set_state(n, GW_NODE_CHECKING);
        gw_options_free(n->identified);
        n->identified = gw_options_new();
        r = n->identified ? gw_flash_identify(n->flash, n->identified, &cbs, n) : -ENOMEM;
        if (r < 0)
                node_failed(n, GW_ERR_VERIFY_FAILED, "cannot identify after flashing: %s",
                            strerror(-r));
}

/* The retry timer fired: the link is opened again (a USB board may have come back elsewhere)
 * and the install starts over; the node kept its slot. */
static int on_retry_timer(struct gw_source *s, uint64_t now_ms, void *userdata)
{
        struct node_rt *n = userdata;
        struct deployment *d = n->dep;
        int r;

        n->retry_timer = gw_source_free(n->retry_timer);
        n->flash = gw_flash_free(n->flash);
        if (d->phase != PHASE_FLASH)
                return 0;
        if (d->halted || d->canary_failed) {
                /* Another node failed meanwhile: this one ends with its own last failure (and
                 * is rolled back like any node that failed on the way). */
                char why[sizeof(n->message)];

                snprintf(why, sizeof(why), "%s", n->message);
                node_failed(n, n->error, "%s", why);
                return 0;
        }
        gw_deploy_log_node(LOG_INFO, n, "%s: attempt %u of %u", n->cfg->name, n->attempts + 1,
                           n->cfg->retries + 1);
        r = flash_node(d, n);
        if (r == 1) {
                gw_deploy_node_set_state(n, GW_NODE_SUCCESS);
                node_ended(n);
        } else if (r < 0) {
                gw_deploy_node_set_active(
                    n, true); /* flash_node() gave the slot up; node_failed() ends it */
                node_failed(n, r == -ENOEXEC ? GW_ERR_NODE_INCOMPATIBLE : GW_ERR_NODE_UNREACHABLE,
                            "%s", n->message);
        }
        return 0;
}

/* A failure on the way (the link, the transfer, a read-back that differed), with attempts
 * left in the node's retries: the install runs again after RETRY_DELAY_MS, unless the
 * deployment is stopping. true then. The node never counts as having taken the image before
 * an attempt succeeds, so a rollback only follows the last failure. */
static bool node_retry(struct node_rt *n, enum gw_error code, const char *why)
{
        struct deployment *d = n->dep;
        int r;

        if ((code != GW_ERR_FLASH_FAILED && code != GW_ERR_NODE_UNREACHABLE) || d->cancelled ||
            d->halted || d->canary_failed || n->attempts >= n->cfg->retries)
                return false;
        r = gw_loop_add_timer(d->engine->env.loop, gw_now_ms() + RETRY_DELAY_MS, on_retry_timer, n,
                              &n->retry_timer);
        if (r < 0)
                return false;
        n->attempts++;
        n->bytes = 0;
        n->error = code;
        snprintf(n->message, sizeof(n->message), "%s", why);
        gw_deploy_log_node(LOG_WARNING, n,
                           "%s: attempt %u of %u failed (%s): %s; trying again in %u ms",
                           n->cfg->name, n->attempts, n->cfg->retries + 1, gw_error_to_string(code),
                           why, RETRY_DELAY_MS);
        return true;
}

/* Is the node asked what it runs once it took img (its protocol can identify it then, with
 * the image's options)? Otherwise the protocol's own verification is the check. */
static bool checks_after_install(const struct node_rt *n, const struct gw_manifest_image *img)
{
        struct gw_options *popts = NULL;
        bool r;

        if (!gw_deploy_can_identify(n))
                return false;
        if (gw_deploy_node_protocol_opts(n, img->options, &popts) < 0)
                return true;
        r = gw_plugin_identifies_after_install(gw_deploy_node_protocol(n), popts);
        gw_options_free(popts);
        return r;
}

void gw_deploy_on_install_finished(void *userdata, int result, const char *reason)
{
        struct node_rt *n = userdata;
        struct deployment *d = n->dep;
        const struct gw_manifest_image *img = &d->m->images[n->image];
        enum gw_error code;

        gw_file_reader_close(&n->reader);
        if (d->phase != PHASE_FLASH) {
                /* Stopped by gw_deploy_deployment_finish() (cancel, shutdown). */
                n->error =
                    result == -ECANCELED && d->cancelled ? GW_ERR_CANCELLED : GW_ERR_FLASH_FAILED;
                snprintf(n->message, sizeof(n->message), "%s", reason ? reason : strerror(-result));
                gw_deploy_node_set_state(n, GW_NODE_FAILED);
                return;
        }
        if (n->reverting) {
                const struct node_image *im = &n->rb_cur;

                n->reverting = false;
                if (result < 0) {
                        gw_deploy_log_node(LOG_ERR, n, "%s: rolling back to %s %s failed: %s",
                                           n->cfg->name, im->name, im->version,
                                           reason ? reason : strerror(-result));
                        if (!n->error)
                                n->error = GW_ERR_FLASH_FAILED;
                        snprintf(n->message + strlen(n->message),
                                 sizeof(n->message) - strlen(n->message),
                                 "; rolling back failed too: %s",
                                 reason ? reason : strerror(-result));
                        gw_deploy_node_set_state(n, GW_NODE_FAILED);
                } else {
                        /* The record is again what it was before the deployment. */
                        gw_deploy_node_image_copy(&n->cur, &n->rb_cur);
                        gw_deploy_node_image_copy(&n->prev, &n->rb_prev);
                        gw_deploy_node_image_done(&n->incomplete);
                        gw_deploy_journal_node_write(d->engine, n);
                        gw_deploy_log_node(LOG_INFO, n, "%s: rolled back to %s %s", n->cfg->name,
                                           im->name, im->version);
                        gw_deploy_node_set_state(n, GW_NODE_REVERTED);
                }
                node_ended(n);
                return;
        }
        if (result < 0) {
                /* A node that never acknowledged a byte is unreachable, or incompatible when
                 * the protocol refused the image for it (-ENOEXEC: a DFU file for other ids,
                 * seen once a board in run-time mode was detached); one that stopped midway
                 * failed to flash. */
                code =
                    (result == -ETIMEDOUT && n->bytes == 0) || result == -EPIPE || result == -ENOENT
                        ? GW_ERR_NODE_UNREACHABLE
                        : GW_ERR_FLASH_FAILED;
                if (result == -ENOEXEC && n->bytes == 0)
                        code = GW_ERR_NODE_INCOMPATIBLE;
                if (result == -ECANCELED && d->cancelled)
                        code = GW_ERR_CANCELLED;
                if (node_retry(n, code, reason ? reason : strerror(-result)))
                        return;
                node_failed(n, code, "%s", reason ? reason : strerror(-result));
                return;
        }
        gw_deploy_journal_node_installed(d->engine, n, img);
        gw_deploy_log_node(LOG_INFO, n, "%s: took %s %s (%llu bytes in %.1f s)", n->cfg->name,
                           img->name, img->version, (unsigned long long) n->total,
                           (double) (gw_now_ms() - n->t0) / 1000.0);
        if (checks_after_install(n, img))
                node_check_start(n);
        else
                node_succeeded(n);
}

static int flash_node(struct deployment *d, struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {
            .progress = gw_deploy_on_flash_progress,
            .finished = gw_deploy_on_install_finished,
            .resumed = gw_deploy_on_flash_resumed,
        };
        const struct gw_manifest_image *img = &d->m->images[n->image];
        int r;

        /* Run again after a cut: a node whose record says it took this very image, whole, is
         * not written again. Where the protocol can identify it is checked as after a flash
         * (its link is open from the identify phase); else it is done (returns 1). */
        if (d->resumed && n->cur.known && !n->incomplete.known &&
            memcmp(n->cur.sha256, img->sha256, 32) == 0) {
                gw_deploy_log_node(
                    LOG_INFO, n,
                    "%s: took %s %s before the deployment was interrupted; not flashed "
                    "again",
                    n->cfg->name, img->name, img->version);
                n->bytes = n->total = img->size;
                if (!checks_after_install(n, img) || !n->flash)
                        return 1;
                gw_deploy_node_set_active(n, true);
                node_check_start(n);
                return 0;
        }
        if (n->unchanged) {
                gw_deploy_log_node(LOG_INFO, n,
                                   "%s: already runs %s %s (its protocol says so); not flashed",
                                   n->cfg->name, img->name, img->version);
                snprintf(n->message, sizeof(n->message), "already ran %.64s %.64s; not flashed",
                         img->name, img->version);
                n->bytes = n->total = img->size;
                gw_deploy_journal_node_installed(d->engine, n, img);
                n->flash = gw_flash_free(n->flash);
                return 1;
        }
        r = gw_deploy_node_reader_open(d, n, img->sha256, img->name, img->version);
        if (r < 0)
                return r;
        /* The link the identify phase opened is reused: a USB board is opened once. */
        if (!n->flash) {
                r = gw_deploy_node_open(d, n, img->options);
                if (r < 0) {
                        gw_file_reader_close(&n->reader);
                        return r;
                }
        }
        n->bytes = 0;
        n->total = img->size;
        n->t0 = gw_now_ms();
        n->last_pct = -1;
        n->resumed_from = 0;
        gw_deploy_node_set_active(n, true);
        gw_deploy_node_set_state(n, GW_NODE_FLASHING);
        {
                struct node_image im = {0};

                if (gw_deploy_node_image_from_manifest(&im, img) >= 0)
                        gw_deploy_journal_node_writing(d->engine, n, &im);
                gw_deploy_node_image_done(&im);
        }
        r = gw_flash_install(n->flash, &n->reader, &cbs, n);
        if (r < 0) {
                gw_deploy_node_set_active(n, false);
                const char *why = gw_flash_reason(n->flash);

                snprintf(n->message, sizeof(n->message), "cannot start: %.280s",
                         why && why[0] ? why : strerror(-r));
                n->flash = gw_flash_free(n->flash);
                gw_file_reader_close(&n->reader);
        }
        return r;
}

static void flash_start_more(struct deployment *d)
{
        unsigned parallel = d->m->policy.parallel ? d->m->policy.parallel : 1;

        while (d->phase == PHASE_FLASH && !d->halted && !d->canary_failed &&
               d->next_flash < d->n_nodes && d->n_active < parallel) {
                struct node_rt *n;
                int r;

                /* The canaries first, and only them until each of them succeeded. */
                if (d->next_flash >= d->canary_n && d->canary_left > 0)
                        break;
                n = d->nodes[d->next_flash++];
                r = flash_node(d, n);
                if (r == 1) {
                        /* Took it before an interruption: success without a slot. */
                        gw_deploy_node_set_state(n, GW_NODE_SUCCESS);
                        canary_ended(d, n);
                        continue;
                }
                if (r < 0) {
                        /* -ENOEXEC: the protocol refuses the image for this board. */
                        n->error =
                            r == -ENOEXEC ? GW_ERR_NODE_INCOMPATIBLE : GW_ERR_NODE_UNREACHABLE;
                        gw_deploy_log_node(LOG_ERR, n, "%s: %s", n->cfg->name, n->message);
                        gw_deploy_node_set_state(n, GW_NODE_FAILED);
                        canary_ended(d, n);
                        if (d->m->policy.atomic && !d->error) {
                                d->error = n->error;
                                snprintf(d->message, sizeof(d->message), "%.64s: %.319s",
                                         n->cfg->name, n->message);
                                gw_deploy_deployment_halt(d);
                        }
                }
        }
        if (d->phase == PHASE_FLASH && d->n_active == 0 &&
            (d->halted || d->canary_failed || d->next_flash == d->n_nodes))
                gw_deploy_deployment_finish(d);
}

void gw_deploy_flash_phase(struct deployment *d)
{
        /* Gateways flash many nodes at once; the manifest may ask for fewer. A node is flashed
         * by one job at a time, so nodes on independent links run in parallel. */
        if (!gw_deploy_check_images(d))
                return;
        d->phase = PHASE_FLASH;
        gw_deploy_journal_deployment(d, "flashing", NULL);
        d->canary_n = d->m->policy.canary < d->n_nodes ? d->m->policy.canary : 0;
        d->canary_left = d->canary_n;
        d->canary_failed = false;
        for (size_t i = 0; i < d->n_nodes; i++)
                d->nodes[i]->canary = i < d->canary_n;
        if (d->canary_n)
                gw_deploy_log(LOG_INFO, d,
                              "Deployment %s: all images verified, flashing %zu canary node(s) "
                              "first, then %zu more",
                              d->id, d->canary_n, d->n_nodes - d->canary_n);
        else
                gw_deploy_log(LOG_INFO, d,
                              "Deployment %s: all images verified, flashing %zu node(s)", d->id,
                              d->n_nodes);
        flash_start_more(d);
}
