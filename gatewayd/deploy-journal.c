/* The deployment engine's journal: a deployment's state, and per node the image it runs, the
 * one it ran before, and one being written, so that a power cut at any instant leaves a record
 * that tells what to finish or undo. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deploy-internal.h"
#include "gw/log.h"
#include "journal.h"

static int node_image_to_json(json_t *o, const char *prefix, const struct node_image *im);

const char *gw_deploy_state_dir(const struct gw_engine *e)
{
        return e->env.cfg->state_dir;
}

int gw_deploy_journal_deployment(struct deployment *d, const char *state, const char *final)
{
        json_t *o = json_pack("{s:s, s:s, s:s}", "id", d->id, "manifest_sha256", d->sha_hex,
                              "state", state);
        json_t *nodes = json_object(), *rollback = json_object();
        char name[300], *s;
        int r = 0;

        if (!o || !nodes || !rollback) {
                json_decref(o);
                json_decref(nodes);
                json_decref(rollback);
                return -ENOMEM;
        }
        for (size_t i = 0; i < d->n_nodes; i++) {
                const struct node_rt *n = d->nodes[i];
                json_t *rb = json_object();

                json_object_set_new(nodes, n->cfg->name,
                                    json_string(gw_node_state_to_string(n->state)));
                if (!rb || node_image_to_json(rb, "", &n->rb_cur) < 0 ||
                    node_image_to_json(rb, "previous_", &n->rb_prev) < 0)
                        r = -ENOMEM;
                json_object_set_new(rollback, n->cfg->name, rb);
        }
        json_object_set_new(o, "nodes", nodes);
        json_object_set_new(o, "rollback", rollback);
        /* The final report, with the verdict (see gw_deploy_deployment_finish()). */
        if (final)
                json_object_set_new(o, "final", json_string(final));
        if (r < 0) {
                json_decref(o);
                return r;
        }
        if (d->error)
                json_object_set_new(o, "error", json_string(gw_error_to_string(d->error)));
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!s)
                return -ENOMEM;
        snprintf(name, sizeof(name), "deployments/%s.json", d->id);
        r = gw_journal_write(gw_deploy_state_dir(d->engine), name, s, strlen(s));
        free(s);
        if (r < 0)
                gw_log_about(LOG_WARNING, r, d->id, NULL,
                             "Deployment %s: cannot write the journal: %m", d->id);
        return r;
}

bool gw_deploy_journal_done(struct gw_engine *e, const char *id, const char *sha_hex,
                            char **ret_final)
{
        char name[300], *buf = NULL;
        json_t *o;
        bool done = false;

        *ret_final = NULL;

        snprintf(name, sizeof(name), "deployments/%s.json", id);
        if (gw_journal_read(gw_deploy_state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
                return false;
        o = json_loads(buf, 0, NULL);
        free(buf);
        if (o) {
                const char *sha = json_string_value(json_object_get(o, "manifest_sha256"));
                const char *st = json_string_value(json_object_get(o, "state"));

                const char *final = json_string_value(json_object_get(o, "final"));

                done = sha && st && strcmp(sha, sha_hex) == 0 &&
                       (strcmp(st, "success") == 0 || strcmp(st, "failed") == 0 ||
                        strcmp(st, "rejected") == 0);
                if (done && final)
                        *ret_final = strdup(final);
                json_decref(o);
        }
        return done;
}

json_t *gw_deploy_rollback_recorded(struct gw_engine *e, const char *id, const char *sha_hex)
{
        char name[300], *buf = NULL;
        json_t *o, *rb = NULL;

        snprintf(name, sizeof(name), "deployments/%s.json", id);
        if (gw_journal_read(gw_deploy_state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
                return NULL;
        o = json_loads(buf, 0, NULL);
        free(buf);
        if (o) {
                const char *sha = json_string_value(json_object_get(o, "manifest_sha256"));

                rb = json_object_get(o, "rollback");
                if (sha && strcmp(sha, sha_hex) == 0 && json_is_object(rb))
                        json_incref(rb);
                else
                        rb = NULL;
                json_decref(o);
        }
        return rb;
}

void gw_deploy_node_image_done(struct node_image *im)
{
        free(im->name);
        free(im->version);
        gw_options_free(im->options);
        *im = (struct node_image){0};
}

int gw_deploy_node_image_copy(struct node_image *dst, const struct node_image *src)
{
        struct node_image c = {0};

        if (src->known) {
                c = (struct node_image){
                    .known = true,
                    .name = strdup(src->name),
                    .version = strdup(src->version),
                    .size = src->size,
                    .options = gw_options_new(),
                };
                memcpy(c.sha256, src->sha256, 32);
                if (!c.name || !c.version || !c.options ||
                    gw_options_merge(c.options, src->options) < 0) {
                        gw_deploy_node_image_done(&c);
                        return -ENOMEM;
                }
        }
        gw_deploy_node_image_done(dst);
        *dst = c;
        return 0;
}

int gw_deploy_node_image_from_manifest(struct node_image *dst, const struct gw_manifest_image *img)
{
        struct node_image c = {
            .known = true,
            .name = img->name,
            .version = img->version,
            .size = img->size,
            .options = img->options,
        };

        memcpy(c.sha256, img->sha256, 32);
        return gw_deploy_node_image_copy(dst, &c);
}

static int unhex32(const char *s, uint8_t ret[32])
{
        uint8_t out[32];

        if (!s || strlen(s) != 64)
                return -EINVAL;
        for (size_t i = 0; i < 32; i++) {
                int v = 0;

                for (size_t k = 0; k < 2; k++) {
                        char c = s[2 * i + k];

                        v <<= 4;
                        if (c >= '0' && c <= '9')
                                v |= c - '0';
                        else if (c >= 'a' && c <= 'f')
                                v |= c - 'a' + 10;
                        else
                                return -EINVAL;
                }
                out[i] = (uint8_t) v;
        }
        memcpy(ret, out, 32);
        return 0;
}

/* Adds im as <prefix>image, <prefix>version, <prefix>sha256, <prefix>size, <prefix>options. */
static int node_image_to_json(json_t *o, const char *prefix, const struct node_image *im)
{
        char key[64], hex[65];
        json_t *opts;
        int r = 0;

        if (!im->known)
                return 0;
        opts = json_object();
        if (!opts)
                return -ENOMEM;
        for (size_t i = 0; i < gw_options_count(im->options); i++)
                r |= json_object_set_new(opts, gw_options_key(im->options, i),
                                         json_string(gw_options_value(im->options, i)));
        gw_hex(im->sha256, 32, hex);
        snprintf(key, sizeof(key), "%simage", prefix);
        r |= json_object_set_new(o, key, json_string(im->name));
        snprintf(key, sizeof(key), "%sversion", prefix);
        r |= json_object_set_new(o, key, json_string(im->version));
        snprintf(key, sizeof(key), "%ssha256", prefix);
        r |= json_object_set_new(o, key, json_string(hex));
        snprintf(key, sizeof(key), "%ssize", prefix);
        r |= json_object_set_new(o, key, json_integer((json_int_t) im->size));
        snprintf(key, sizeof(key), "%soptions", prefix);
        r |= json_object_set_new(o, key, opts);
        return r ? -ENOMEM : 0;
}

void gw_deploy_node_image_from_json(struct node_image *dst, const json_t *o, const char *prefix)
{
        char key[64];
        const json_t *opts;
        const char *k;
        json_t *v;
        struct node_image c = {.known = true};
        json_int_t size;

        gw_deploy_node_image_done(dst);
        snprintf(key, sizeof(key), "%simage", prefix);
        c.name = json_is_string(json_object_get(o, key))
                     ? strdup(json_string_value(json_object_get(o, key)))
                     : NULL;
        snprintf(key, sizeof(key), "%sversion", prefix);
        c.version = json_is_string(json_object_get(o, key))
                        ? strdup(json_string_value(json_object_get(o, key)))
                        : NULL;
        snprintf(key, sizeof(key), "%ssize", prefix);
        size = json_is_integer(json_object_get(o, key))
                   ? json_integer_value(json_object_get(o, key))
                   : -1;
        snprintf(key, sizeof(key), "%soptions", prefix);
        opts = json_object_get(o, key);
        c.options = gw_options_new();
        snprintf(key, sizeof(key), "%ssha256", prefix);
        if (!c.name || !c.version || size < 0 || !c.options || !json_is_object(opts) ||
            unhex32(json_string_value(json_object_get(o, key)), c.sha256) < 0) {
                gw_deploy_node_image_done(&c);
                return;
        }
        c.size = (uint64_t) size;
        json_object_foreach((json_t *) opts, k, v)
        {
                if (!json_is_string(v) || gw_options_set(c.options, k, json_string_value(v)) < 0) {
                        gw_deploy_node_image_done(&c);
                        return;
                }
        }
        *dst = c;
}

void gw_deploy_journal_node_write(struct gw_engine *e, struct node_rt *n)
{
        char name[300], *s = NULL;
        json_t *o = json_object();

        if (!o || node_image_to_json(o, "", &n->cur) < 0 ||
            node_image_to_json(o, "previous_", &n->prev) < 0 ||
            node_image_to_json(o, "incomplete_", &n->incomplete) < 0 ||
            (n->incomplete.known &&
             json_object_set_new(o, "incomplete_confirmed",
                                 json_integer((json_int_t) n->confirmed)) < 0) ||
            !(s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
                json_decref(o);
                gw_deploy_log_node(LOG_WARNING, n,
                                   "%s: cannot record the installed image: out of memory, ignoring",
                                   n->cfg->name);
                return;
        }
        json_decref(o);
        snprintf(name, sizeof(name), "nodes/%s.json", n->cfg->name);
        if (gw_journal_write(gw_deploy_state_dir(e), name, s, strlen(s)) < 0)
                gw_deploy_log_node(LOG_WARNING, n,
                                   "%s: cannot record the installed image, ignoring", n->cfg->name);
        free(s);
        free(n->installed_version);
        n->installed_version = n->cur.known ? strdup(n->cur.version) : NULL;
}

void gw_deploy_journal_node_installed(struct gw_engine *e, struct node_rt *n,
                                      const struct gw_manifest_image *img)
{
        struct node_image im = {0};

        if (gw_deploy_node_image_from_manifest(&im, img) < 0) {
                gw_deploy_log_node(LOG_WARNING, n,
                                   "%s: cannot record the installed image: out of memory, ignoring",
                                   n->cfg->name);
                return;
        }
        /* Taking the image it already runs (a deployment run again after a crash) leaves what
         * it ran before as it was. */
        if (n->cur.known && memcmp(n->cur.sha256, im.sha256, 32) == 0) {
                gw_deploy_node_image_done(&n->cur);
        } else {
                gw_deploy_node_image_done(&n->prev);
                n->prev = n->cur;
        }
        n->cur = im;
        gw_deploy_node_image_done(&n->incomplete);
        gw_deploy_journal_node_write(e, n);
}

void gw_deploy_journal_node_writing(struct gw_engine *e, struct node_rt *n,
                                    const struct node_image *im)
{
        n->confirmed = 0;
        if (gw_deploy_node_image_copy(&n->incomplete, im) < 0) {
                gw_deploy_log_node(
                    LOG_WARNING, n,
                    "%s: cannot record the image being written: out of memory, ignoring",
                    n->cfg->name);
                return;
        }
        gw_deploy_journal_node_write(e, n);
}

void gw_deploy_journal_node_load(struct gw_engine *e, struct node_rt *n)
{
        char name[300], *buf = NULL;
        json_t *o;

        snprintf(name, sizeof(name), "nodes/%s.json", n->cfg->name);
        if (gw_journal_read(gw_deploy_state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
                return;
        o = json_loads(buf, 0, NULL);
        free(buf);
        if (!o)
                return;
        if (json_is_string(json_object_get(o, "version")))
                n->installed_version = strdup(json_string_value(json_object_get(o, "version")));
        gw_deploy_node_image_from_json(&n->cur, o, "");
        gw_deploy_node_image_from_json(&n->prev, o, "previous_");
        gw_deploy_node_image_from_json(&n->incomplete, o, "incomplete_");
        if (n->incomplete.known && json_is_integer(json_object_get(o, "incomplete_confirmed"))) {
                json_int_t c = json_integer_value(json_object_get(o, "incomplete_confirmed"));

                if (c > 0 && (uint64_t) c <= n->incomplete.size)
                        n->confirmed = n->confirmed_at_start = (uint64_t) c;
        }
        json_decref(o);
}

void gw_deploy_journal_node_confirmed(struct gw_engine *e, struct node_rt *n, uint64_t done)
{
        uint64_t now = gw_now_ms();

        n->confirmed = done;
        if (!n->incomplete.known || now - n->confirmed_journalled_ms < CONFIRMED_INTERVAL_MS)
                return;
        n->confirmed_journalled_ms = now;
        gw_deploy_journal_node_write(e, n);
}
