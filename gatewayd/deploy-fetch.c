/* The deployment engine's fetch phase: every image of the deployment into the content-addressed
 * store, hashed and capped while it streams, mirrors tried in turn, one deadline for all. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "deploy-internal.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"
#include "journal.h"
#include "mqtt.h"
#include "request.h"
#include "status.h"

static int download_start(struct download *dl);

static void nodes_of_image_set(struct deployment *d, size_t image, enum gw_node_state state,
                               uint64_t bytes, uint64_t total)
{
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                if (n->image != image)
                        continue;
                n->bytes = bytes;
                n->total = total;
                if (state == GW_NODE_DOWNLOADING && n->state != state)
                        n->t0 = gw_now_ms();
                if (n->state != state)
                        gw_deploy_node_set_state(n, state);
                else
                        gw_deploy_publish_node(d->engine, n);
        }
}

static void on_download_progress(void *userdata, uint64_t bytes)
{
        struct download *dl = userdata;
        uint64_t now = gw_now_ms();

        dl->bytes = bytes;
        if (now - dl->last_publish < PROGRESS_INTERVAL_MS)
                return;
        dl->last_publish = now;
        nodes_of_image_set(dl->dep, dl->image, GW_NODE_DOWNLOADING, bytes,
                           dl->dep->m->images[dl->image].size);
}

static void on_download_finished(void *userdata, int result, enum gw_error code,
                                 const char *message, const uint8_t sha256[32], uint64_t bytes,
                                 uint8_t *mem)
{
        struct download *dl = userdata;
        struct deployment *d = dl->dep;
        const struct gw_manifest_image *img = &d->m->images[dl->image];
        int r;

        dl->fetch = NULL;
        free(mem);
        if (result == 0) {
                nodes_of_image_set(d, dl->image, GW_NODE_VERIFYING, bytes, img->size);
                r = gw_store_commit(d->engine->env.store, dl->fd, dl->tmp, img->sha256, img->size,
                                    sha256, bytes);
                free(dl->tmp);
                dl->tmp = NULL;
                dl->fd = -1;
                if (r == -EFBIG) {
                        code = GW_ERR_IMAGE_SIZE_MISMATCH;
                        message = "size differs from the manifest";
                } else if (r == -EBADMSG) {
                        code = GW_ERR_IMAGE_HASH_MISMATCH;
                        message = "SHA-256 differs from the manifest";
                } else if (r < 0) {
                        code = GW_ERR_DOWNLOAD_FAILED;
                        message = "cannot store the image";
                }
                if (r == 0) {
                        gw_log_info("Deployment %s: image %s verified (%llu bytes)", d->id,
                                    img->name, (unsigned long long) bytes);
                        dl->done = true;
                        if (--d->n_downloads_left == 0)
                                gw_deploy_identify_phase(d);
                        return;
                }
        } else {
                gw_store_abort(dl->fd, dl->tmp);
                free(dl->tmp);
                dl->tmp = NULL;
                dl->fd = -1;
        }
        /* A mirror may have what the first source did not. */
        if (dl->url_index < img->n_mirrors) {
                gw_log_warning("Deployment %s: image %s: %s: %s; trying the next mirror", d->id,
                               img->name, gw_error_to_string(code), message);
                dl->url_index++;
                /* On failure download_start() has already failed the deployment. */
                download_start(dl);
                return;
        }
        gw_deploy_deployment_fail(d, code, "image %s: %s", img->name, message);
}

static int download_start(struct download *dl)
{
        struct deployment *d = dl->dep;
        const struct gw_config *cfg = d->engine->env.cfg;
        const struct gw_manifest_image *img = &d->m->images[dl->image];
        const char *ref = dl->url_index == 0 ? img->url : img->mirrors[dl->url_index - 1];
        struct gw_fetch_params p;
        char *url = NULL;
        int r;

        if (d->deadline_ms && gw_now_ms() >= d->deadline_ms) {
                gw_deploy_deployment_fail(
                    d, GW_ERR_DOWNLOAD_TOO_SLOW,
                    "image %s: the deadline of %u s for the deployment's downloads "
                    "passed",
                    img->name, cfg->fetch_deadline);
                return -ETIMEDOUT;
        }
        r = gw_url_resolve(d->manifest_url, ref, &url);
        if (r < 0) {
                gw_deploy_deployment_fail(d, GW_ERR_DOWNLOAD_FAILED,
                                          "image %s: cannot resolve URL '%s'%s", img->name, ref,
                                          d->manifest_url ? ""
                                                          : " (the manifest came inline: use an "
                                                            "absolute URL)");
                return r;
        }
        r = gw_store_begin(d->engine->env.store, img->sha256, &dl->fd, &dl->tmp);
        if (r < 0) {
                free(url);
                gw_deploy_deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot store: %s",
                                          img->name, strerror(-r));
                return r;
        }
        p = (struct gw_fetch_params){
            .url = url,
            .fd = dl->fd,
            .max_bytes = img->size,
            .min_rate = cfg->fetch_min_rate,
            .rate_window_s = cfg->fetch_rate_window,
            .deadline_ms = d->deadline_ms,
            .connect_timeout_s = cfg->fetch_connect_timeout,
            .progress = on_download_progress,
            .finished = on_download_finished,
            .userdata = dl,
        };
        gw_log_info("Deployment %s: fetching image %s from %s", d->id, img->name, url);
        r = gw_fetch_start(d->engine->env.fetcher, &p, &dl->fetch);
        free(url);
        if (r < 0) {
                gw_store_abort(dl->fd, dl->tmp);
                free(dl->tmp);
                dl->tmp = NULL;
                dl->fd = -1;
                gw_deploy_deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot fetch: %s",
                                          img->name, strerror(-r));
        }
        return r;
}

void gw_deploy_download_phase(struct deployment *d)
{
        d->phase = PHASE_DOWNLOAD;
        d->downloads = calloc(d->m->n_images, sizeof(*d->downloads));
        if (!d->downloads) {
                gw_deploy_deployment_fail(d, GW_ERR_INTERNAL, "out of memory");
                return;
        }
        for (size_t i = 0; i < d->m->n_images; i++) {
                d->downloads[i] = (struct download){.dep = d, .image = i, .fd = -1};
        }
        /* Count first: a download may finish (and the phase move on) while we start the next. */
        for (size_t i = 0; i < d->m->n_images; i++) {
                bool used = false;

                for (size_t j = 0; j < d->n_nodes; j++)
                        used = used || d->nodes[j]->image == i;
                d->downloads[i].done =
                    !used || gw_store_has(d->engine->env.store, d->m->images[i].sha256,
                                          d->m->images[i].size);
                if (!d->downloads[i].done)
                        d->n_downloads_left++;
        }
        if (d->n_downloads_left == 0) {
                gw_deploy_identify_phase(d);
                return;
        }
        for (size_t i = 0; i < d->m->n_images && d->phase == PHASE_DOWNLOAD; i++) {
                if (d->downloads[i].done)
                        continue;
                nodes_of_image_set(d, i, GW_NODE_DOWNLOADING, 0, d->m->images[i].size);
                if (download_start(&d->downloads[i]) < 0)
                        return;
        }
}
