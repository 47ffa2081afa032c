/* The deployment engine's fetch phase: every image of the deployment into the content-addressed
 * store, hashed and capped while it streams, mirrors tried in turn, one deadline for all. */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "deploy-internal.h"
#include "gw/log.h"
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
                           dl->blob ? dl->blob->size : dl->dep->m->images[dl->image].size);
}

void gw_deploy_download_stop(struct download *dl)
{
        gw_fetch_cancel(dl->fetch);
        dl->fetch = NULL;
        dl->decode = gw_decode_free(dl->decode);
        if (dl->tmp)
                gw_store_abort(dl->fd, dl->tmp);
        free(dl->tmp);
        dl->tmp = NULL;
        dl->fd = -1;
        if (dl->out_tmp)
                gw_store_abort(dl->out_fd, dl->out_tmp);
        free(dl->out_tmp);
        dl->out_tmp = NULL;
        dl->out_fd = -1;
}

/* How the image travels in this attempt, for messages. */
static const char *route(const struct download *dl)
{
        const struct gw_manifest_image *img = &dl->dep->m->images[dl->image];

        if (dl->delta)
                return "delta";
        if (!dl->blob)
                return "image";
        if (img->n_recipients > 0)
                return img->compression == GW_COMPRESSION_ZSTD ? "compressed, encrypted image"
                                                               : "encrypted image";
        return "compressed image";
}

/* The image is in the store (result 0), or this attempt failed with code and message: the
 * next source (a mirror; the full image after a delta) or the deployment's failure. */
static void attempt_ended(struct download *dl, int result, enum gw_error code, const char *message)
{
        struct deployment *d = dl->dep;
        const struct gw_manifest_image *img = &d->m->images[dl->image];

        gw_deploy_download_stop(dl);
        if (result == 0) {
                gw_deploy_log(LOG_INFO, d,
                              "Deployment %s: image %s verified (%llu bytes, %llu fetched as %s)",
                              d->id, img->name, (unsigned long long) img->size,
                              (unsigned long long) dl->bytes, route(dl));
                dl->done = true;
                if (--d->n_downloads_left == 0)
                        gw_deploy_identify_phase(d);
                else
                        gw_deploy_changed(d->engine);
                return;
        }
        if (dl->delta) {
                gw_deploy_log(LOG_WARNING, d,
                              "Deployment %s: image %s: the delta failed (%s: %s); fetching the "
                              "full image",
                              d->id, img->name, gw_error_to_string(code), message);
                dl->delta = false;
                dl->url_index = 0;
                download_start(dl);
                return;
        }
        /* A mirror may have what the first source did not. */
        if (dl->url_index < img->n_mirrors) {
                gw_deploy_log(LOG_WARNING, d,
                              "Deployment %s: image %s: %s: %s; trying the next mirror", d->id,
                              img->name, gw_error_to_string(code), message);
                dl->url_index++;
                /* On failure download_start() has already failed the deployment. */
                download_start(dl);
                return;
        }
        gw_deploy_deployment_fail(d, code, "image %s: %s", img->name, message);
}

static void on_decode_finished(void *userdata, int result, enum gw_error code, const char *message,
                               const uint8_t sha256[32], uint64_t bytes)
{
        struct download *dl = userdata;
        struct deployment *d = dl->dep;
        const struct gw_manifest_image *img = &d->m->images[dl->image];
        int r;

        /* dl->decode is freed by attempt_ended(), from inside its own callback (allowed). */
        if (result < 0) {
                attempt_ended(dl, result, code, message);
                return;
        }
        r = gw_store_commit(d->engine->env.store, dl->out_fd, dl->out_tmp, img->sha256, img->size,
                            sha256, bytes);
        free(dl->out_tmp);
        dl->out_tmp = NULL;
        dl->out_fd = -1;
        if (r == -EFBIG)
                attempt_ended(dl, r, GW_ERR_IMAGE_SIZE_MISMATCH,
                              "it decodes to a size that differs from the manifest");
        else if (r == -EBADMSG)
                attempt_ended(dl, r, GW_ERR_IMAGE_HASH_MISMATCH,
                              dl->delta ? "the delta decodes to an image whose SHA-256 differs "
                                          "from the manifest (is the base right?)"
                                        : "it decodes to an image whose SHA-256 differs from "
                                          "the manifest");
        else if (r < 0)
                attempt_ended(dl, r, GW_ERR_DOWNLOAD_FAILED, "cannot store the image");
        else
                attempt_ended(dl, 0, GW_ERR_NONE, NULL);
}

/* The blob arrived whole and checked: decode it into the store. */
static void decode_start(struct download *dl)
{
        struct deployment *d = dl->dep;
        const struct gw_manifest_image *img = &d->m->images[dl->image];
        struct gw_manifest_error err = {0};
        struct gw_decode_params p = {
            .in_path = dl->tmp,
            .in_size = dl->blob->size,
            .zstd = dl->delta || img->compression == GW_COMPRESSION_ZSTD,
            .encrypted = img->n_recipients > 0,
            .out_size = img->size,
            .finished = on_decode_finished,
            .userdata = dl,
        };
        char *base = NULL;
        int r;

        if (p.encrypted) {
                r = gw_image_key_unwrap(d->engine->env.decrypt_key, img, p.key, &err);
                if (r < 0) {
                        attempt_ended(dl, r, err.code, err.message);
                        return;
                }
                memcpy(p.nonce, dl->blob->nonce, sizeof(p.nonce));
                memcpy(p.aad, img->sha256, sizeof(p.aad));
        }
        if (dl->delta) {
                r = gw_store_path(d->engine->env.store, img->delta_base_sha256, &base);
                if (r < 0) {
                        attempt_ended(dl, r, GW_ERR_INTERNAL, "out of memory");
                        return;
                }
                p.base_path = base;
                p.base_size = img->delta_base_size;
        }
        r = gw_store_begin(d->engine->env.store, img->sha256, &dl->out_fd, &dl->out_tmp);
        if (r >= 0) {
                p.out_fd = dl->out_fd;
                r = gw_decode_start(d->engine->env.loop, &p, &dl->decode);
        }
        OPENSSL_cleanse(p.key, sizeof(p.key));
        free(base);
        if (r < 0)
                attempt_ended(dl, r, r == -ENOSPC ? GW_ERR_DOWNLOAD_FAILED : GW_ERR_INTERNAL,
                              r == -ENOSPC ? "no room in the store for the image"
                                           : "cannot start decoding");
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
        if (result < 0) {
                attempt_ended(dl, result, code, message);
                return;
        }
        dl->bytes = bytes;
        nodes_of_image_set(d, dl->image, GW_NODE_VERIFYING, bytes,
                           dl->blob ? dl->blob->size : img->size);
        if (dl->blob) {
                /* What was fetched is checked before anything reads it. */
                if (bytes != dl->blob->size)
                        attempt_ended(dl, -EFBIG, GW_ERR_IMAGE_SIZE_MISMATCH,
                                      "the download's size differs from the manifest");
                else if (memcmp(sha256, dl->blob->sha256, 32) != 0)
                        attempt_ended(dl, -EBADMSG, GW_ERR_IMAGE_HASH_MISMATCH,
                                      "the download's SHA-256 differs from the manifest");
                else
                        decode_start(dl);
                return;
        }
        r = gw_store_commit(d->engine->env.store, dl->fd, dl->tmp, img->sha256, img->size, sha256,
                            bytes);
        free(dl->tmp);
        dl->tmp = NULL;
        dl->fd = -1;
        if (r == -EFBIG)
                attempt_ended(dl, r, GW_ERR_IMAGE_SIZE_MISMATCH, "size differs from the manifest");
        else if (r == -EBADMSG)
                attempt_ended(dl, r, GW_ERR_IMAGE_HASH_MISMATCH,
                              "SHA-256 differs from the manifest");
        else if (r < 0)
                attempt_ended(dl, r, GW_ERR_DOWNLOAD_FAILED, "cannot store the image");
        else
                attempt_ended(dl, 0, GW_ERR_NONE, NULL);
}

static int download_start(struct download *dl)
{
        struct deployment *d = dl->dep;
        const struct gw_config *cfg = d->engine->env.cfg;
        const struct gw_manifest_image *img = &d->m->images[dl->image];
        const char *ref = dl->delta            ? img->delta_url
                          : dl->url_index == 0 ? img->url
                                               : img->mirrors[dl->url_index - 1];
        struct gw_fetch_params p;
        char *url = NULL;
        int r;

        dl->blob = dl->delta ? &img->delta_blob : img->has_transfer ? &img->transfer_blob : NULL;
        dl->bytes = 0;
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
        r = gw_store_begin(d->engine->env.store, dl->blob ? dl->blob->sha256 : img->sha256, &dl->fd,
                           &dl->tmp);
        if (r < 0) {
                free(url);
                gw_deploy_deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot store: %s",
                                          img->name, strerror(-r));
                return r;
        }
        p = (struct gw_fetch_params){
            .url = url,
            .fd = dl->fd,
            .max_bytes = dl->blob ? dl->blob->size : img->size,
            .min_rate = cfg->fetch_min_rate,
            .rate_window_s = cfg->fetch_rate_window,
            .deadline_ms = d->deadline_ms,
            .connect_timeout_s = cfg->fetch_connect_timeout,
            .progress = on_download_progress,
            .finished = on_download_finished,
            .userdata = dl,
        };
        gw_deploy_log(LOG_INFO, d, "Deployment %s: fetching image %s (%s, %llu bytes) from %s",
                      d->id, img->name, route(dl), (unsigned long long) p.max_bytes, url);
        r = gw_fetch_start(d->engine->env.fetcher, &p, &dl->fetch);
        free(url);
        if (r < 0) {
                gw_deploy_download_stop(dl);
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
                const struct gw_manifest_image *img = &d->m->images[i];

                d->downloads[i] = (struct download){.dep = d, .image = i, .fd = -1, .out_fd = -1};
                /* A delta when the store holds its base (whole and verified). */
                d->downloads[i].delta =
                    img->has_delta && gw_store_has(d->engine->env.store, img->delta_base_sha256,
                                                   img->delta_base_size);
        }
        /* Count first: a download may finish (and the phase move on) while we start the next. */
        for (size_t i = 0; i < d->m->n_images; i++) {
                bool used = false;

                for (size_t j = 0; j < d->n_nodes; j++)
                        used = used || d->nodes[j]->image == i;
                /* Once per digest: an image equal to one already being fetched comes with it. */
                for (size_t j = 0; used && j < i; j++)
                        if (!d->downloads[j].done &&
                            memcmp(d->m->images[j].sha256, d->m->images[i].sha256, 32) == 0 &&
                            d->m->images[j].size == d->m->images[i].size)
                                used = false;
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
