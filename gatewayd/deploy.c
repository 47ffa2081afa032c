/* The deployment engine. One deployment runs at a time, in phases: manifest (fetch, verify,
 * map images to nodes), download (every image into the store, checked while it streams) and
 * flash (nodes in parallel up to policy.parallel). Nothing reaches a node before every image
 * of the deployment is in the store and verified. Every state change is journalled before it
 * is reported. */
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "deploy.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"
#include "journal.h"
#include "mqtt.h"
#include "request.h"
#include "status.h"

/* Node status is republished at most this often while bytes move. */
#define PROGRESS_INTERVAL_MS 250
#define RETRY_DELAY_MS       1000 /* before an install is tried again (node retries) */
/* A journal record is a few hundred bytes per node. */
#define JOURNAL_MAX (1024u * 1024u)

enum phase {
        PHASE_MANIFEST,
        PHASE_DOWNLOAD,
        PHASE_IDENTIFY, /* every node whose protocol can identify is asked what it is */
        PHASE_FLASH,
        PHASE_DONE,
};

/* An image a node runs or ran, as its journal record says: enough to flash it again from the
 * store (a single-bank node is rolled back by reflashing its previous image). */
struct node_image {
        bool known;
        char *name, *version;
        uint8_t sha256[32];
        uint64_t size;
        struct gw_options *options; /* the image's options it was installed with */
};

struct node_rt {
        const struct gw_node_config *cfg;
        enum gw_node_state state;
        char *installed_version;
        /* The journal record (nodes/<name>.json): what it runs, what it ran before, and an
         * image being written or whose writing did not finish (the node may hold part of it;
         * unknown when none). */
        struct node_image cur, prev, incomplete;
        /* Both as they were when the deployment started: what a rollback restores. */
        struct node_image rb_cur, rb_prev;
        /* What identify reported (before flashing, then again when checking). */
        struct gw_options *identified;
        bool active;        /* a job (identify, install, check, revert) is running for it */
        bool reverting;     /* the running install is the rollback */
        bool revert_queued; /* an atomic deployment halted: rolls back once a slot is free */
        bool canary;        /* one of policy.canary nodes flashed first, not yet ended */
        /* Its protocol says it already runs this deployment's image (installed()): it is not
         * written, and nothing is rolled back on it. */
        bool unchanged;
        /* While in a deployment: */
        struct deployment *dep;
        size_t image; /* index into the manifest's images */
        struct gw_flash *flash;
        struct gw_reader reader;
        unsigned attempts;             /* installs of this deployment's image that failed */
        struct gw_source *retry_timer; /* armed: the next attempt starts when it fires */
        uint64_t bytes, total;
        uint64_t t0, last_publish;
        int last_pct;
        enum gw_error error;
        char message[320];
};

struct download {
        struct deployment *dep;
        size_t image;
        size_t url_index; /* 0 = url, then mirrors */
        struct gw_fetch *fetch;
        int fd;
        char *tmp;
        uint64_t bytes;
        uint64_t last_publish;
        bool done;
};

struct deployment {
        struct gw_engine *engine;
        char *id;
        char *manifest_url;
        uint8_t *buf;
        size_t len;
        char sha_hex[65];
        struct gw_manifest *m;
        struct gw_fetch *manifest_fetch;
        enum phase phase;
        struct node_rt **nodes; /* the nodes this deployment flashes */
        size_t n_nodes;
        struct download *downloads; /* one per image */
        size_t n_downloads_left;
        size_t next_flash, n_active, n_identifying;
        /* A node failed in an atomic deployment: no node starts any more, and every node that
         * took its image is rolled back. */
        bool halted;
        /* policy.canary: the first canary_n nodes flash first; the others start only once each
         * of those succeeded (canary_left counts those still running), and never when one did
         * not (canary_failed). */
        size_t canary_n, canary_left;
        bool canary_failed;
        /* Run again after a crash or a power cut (its journal had it accepted, not ended). */
        bool resumed;
        /* Every download of the deployment, mirrors included, ends by this gw_now_ms() time
         * (fetch.deadline after it was accepted); 0: no deadline. */
        uint64_t deadline_ms;
        enum gw_error error;
        char message[400]; /* room for "<node>: <its message>" */
        bool cancelled;
        /* Stopped by a shutdown, not decided: journalled as interrupted, so that the retained
         * desired state runs it again after the restart. */
        bool interrupted;
};

struct gw_engine {
        struct gw_engine_env env;
        struct node_rt *nodes;
        size_t n_nodes;
        struct deployment *current;
        struct gw_deploy_request pending; /* the latest desired state that arrived while busy */
        bool has_pending;
        /* The last final verdict, republished on every (re)connect: it is retained upstream
         * and must not be lost to a broker that was away when it was decided. */
        char *final_topic;
        char *final_json;
};

static void engine_next(struct gw_engine *e);
static void deployment_finish(struct deployment *d);
static void node_set_active(struct node_rt *n, bool active);

/* ---- Publishing ---------------------------------------------------------------------- */

static void publish(struct gw_engine *e, const char *suffix, char *payload, bool retain)
{
        if (!payload)
                return;
        if (e->env.publish)
                e->env.publish(e->env.userdata, suffix, payload, retain);
        free(payload);
}

static void publish_node(struct gw_engine *e, struct node_rt *n)
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
        publish(e, topic, json, true);
}

static void node_set_state(struct node_rt *n, enum gw_node_state state)
{
        if (n->state == state)
                return;
        gw_log_debug("%s: %s -> %s", n->cfg->name, gw_node_state_to_string(n->state),
                     gw_node_state_to_string(state));
        n->state = state;
        if (n->dep)
                publish_node(n->dep->engine, n);
}

static void publish_rejected(struct gw_engine *e, const char *id, enum gw_error code,
                             const char *message)
{
        char topic[256], *json = NULL;

        if (gw_status_deployment_rejected_json(id ? id : "", code, message, time(NULL), &json) < 0)
                return;
        /* Without a readable id there is no deployment topic to retain the verdict on. */
        snprintf(topic, sizeof(topic), "deployments/%s", id ? id : "invalid");
        publish(e, topic, json, id != NULL);
}

/* The last final report (json, taken over) and its topic, republished on every reconnect;
 * NULL, NULL forgets it. */
static void final_keep(struct gw_engine *e, const char *topic, char *json)
{
        free(e->final_topic);
        free(e->final_json);
        e->final_topic = topic ? strdup(topic) : NULL;
        e->final_json = json;
}

static void publish_deployment(struct deployment *d, bool final)
{
        struct gw_deployment_node *nodes = calloc(d->n_nodes ? d->n_nodes : 1, sizeof(*nodes));
        char topic[256], *json = NULL;
        bool success = !d->error;
        int r;

        /* The previous deployment's report is never taken for this one's, even when building
         * this one fails. */
        if (final)
                final_keep(d->engine, NULL, NULL);
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
                /* Kept, journalled with the verdict and then published (final_publish()), and
                 * published again on every reconnect. */
                final_keep(d->engine, topic, json);
                return;
        }
        publish(d->engine, topic, json, false);
}

/* The final report kept by publish_deployment(d, true), retained. */
static void final_publish(struct gw_engine *e)
{
        if (e->final_topic && e->final_json && e->env.publish)
                e->env.publish(e->env.userdata, e->final_topic, e->final_json, true);
}

static void publish_inventory(struct gw_engine *e)
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
                publish(e, "inventory", json, true);
        free(inv);
}

void gw_engine_inventory_changed(struct gw_engine *e)
{
        publish_inventory(e);
}

/* ---- Journal --------------------------------------------------------------------------- */

static const char *state_dir(const struct gw_engine *e)
{
        return e->env.cfg->state_dir;
}

static int node_image_to_json(json_t *o, const char *prefix, const struct node_image *im);

/* deployments/<id>.json: {"id","manifest_sha256","state","nodes":{name:state},
 * "rollback":{name:{<image>, "previous_"<image>}},"final"?}: rollback holds what each node ran
 * when the deployment was first accepted, for a run after a crash (see rollback_recorded());
 * final (when given: the verdict's) the final report as published. */
static int journal_deployment(struct deployment *d, const char *state, const char *final)
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
        /* The final report, with the verdict (see deployment_finish()). */
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
        r = gw_journal_write(state_dir(d->engine), name, s, strlen(s));
        free(s);
        if (r < 0)
                gw_log_warning_errno(r, "Deployment %s: cannot write the journal: %m", d->id);
        return r;
}

/* True when the journal says this id with this manifest already ran to the end; *ret_final
 * then gets its final report when the journal has it (malloc'd; NULL otherwise). */
static bool journal_done(struct gw_engine *e, const char *id, const char *sha_hex, char **ret_final)
{
        char name[300], *buf = NULL;
        json_t *o;
        bool done = false;

        *ret_final = NULL;

        snprintf(name, sizeof(name), "deployments/%s.json", id);
        if (gw_journal_read(state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
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

/* The rollback record of a deployment that was accepted before but never ended (a crash, a
 * power cut, a shutdown): it runs again, and what its nodes ran before it is what it found
 * then, not what their records say now (a node that took its image before the cut already
 * names it). NULL when there is none. The caller releases it. */
static json_t *rollback_recorded(struct gw_engine *e, const char *id, const char *sha_hex)
{
        char name[300], *buf = NULL;
        json_t *o, *rb = NULL;

        snprintf(name, sizeof(name), "deployments/%s.json", id);
        if (gw_journal_read(state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
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

static void node_image_done(struct node_image *im)
{
        free(im->name);
        free(im->version);
        gw_options_free(im->options);
        *im = (struct node_image){0};
}

static int node_image_copy(struct node_image *dst, const struct node_image *src)
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
                        node_image_done(&c);
                        return -ENOMEM;
                }
        }
        node_image_done(dst);
        *dst = c;
        return 0;
}

static int node_image_from_manifest(struct node_image *dst, const struct gw_manifest_image *img)
{
        struct node_image c = {
            .known = true,
            .name = img->name,
            .version = img->version,
            .size = img->size,
            .options = img->options,
        };

        memcpy(c.sha256, img->sha256, 32);
        return node_image_copy(dst, &c);
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

/* The image under prefix in a node record; unknown when any part is missing or malformed
 * (records written before sizes and options were kept have only a version). */
static void node_image_from_json(struct node_image *dst, const json_t *o, const char *prefix)
{
        char key[64];
        const json_t *opts;
        const char *k;
        json_t *v;
        struct node_image c = {.known = true};
        json_int_t size;

        node_image_done(dst);
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
                node_image_done(&c);
                return;
        }
        c.size = (uint64_t) size;
        json_object_foreach((json_t *) opts, k, v)
        {
                if (!json_is_string(v) || gw_options_set(c.options, k, json_string_value(v)) < 0) {
                        node_image_done(&c);
                        return;
                }
        }
        *dst = c;
}

/* nodes/<name>.json: what the node runs now, and what it ran before (for rollback):
 * {"image","version","sha256","size","options",
 *  "previous_image","previous_version","previous_sha256","previous_size","previous_options"} */
static void journal_node_write(struct gw_engine *e, struct node_rt *n)
{
        char name[300], *s = NULL;
        json_t *o = json_object();

        if (!o || node_image_to_json(o, "", &n->cur) < 0 ||
            node_image_to_json(o, "previous_", &n->prev) < 0 ||
            node_image_to_json(o, "incomplete_", &n->incomplete) < 0 ||
            !(s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
                json_decref(o);
                gw_log_warning("%s: cannot record the installed image: out of memory, ignoring",
                               n->cfg->name);
                return;
        }
        json_decref(o);
        snprintf(name, sizeof(name), "nodes/%s.json", n->cfg->name);
        if (gw_journal_write(state_dir(e), name, s, strlen(s)) < 0)
                gw_log_warning("%s: cannot record the installed image, ignoring", n->cfg->name);
        free(s);
        free(n->installed_version);
        n->installed_version = n->cur.known ? strdup(n->cur.version) : NULL;
}

/* The node took img: it becomes the current image, the current one the previous. */
static void journal_node_installed(struct gw_engine *e, struct node_rt *n,
                                   const struct gw_manifest_image *img)
{
        struct node_image im = {0};

        if (node_image_from_manifest(&im, img) < 0) {
                gw_log_warning("%s: cannot record the installed image: out of memory, ignoring",
                               n->cfg->name);
                return;
        }
        /* Taking the image it already runs (a deployment run again after a crash) leaves what
         * it ran before as it was. */
        if (n->cur.known && memcmp(n->cur.sha256, im.sha256, 32) == 0) {
                node_image_done(&n->cur);
        } else {
                node_image_done(&n->prev);
                n->prev = n->cur;
        }
        n->cur = im;
        node_image_done(&n->incomplete);
        journal_node_write(e, n);
}

/* The node is about to be written with im: until it took it, its record says so, so that a
 * power cut or a failure mid-write leaves a record that does not claim the old image is whole. */
static void journal_node_writing(struct gw_engine *e, struct node_rt *n,
                                 const struct node_image *im)
{
        if (node_image_copy(&n->incomplete, im) < 0) {
                gw_log_warning("%s: cannot record the image being written: out of memory, ignoring",
                               n->cfg->name);
                return;
        }
        journal_node_write(e, n);
}

static void journal_node_load(struct gw_engine *e, struct node_rt *n)
{
        char name[300], *buf = NULL;
        json_t *o;

        snprintf(name, sizeof(name), "nodes/%s.json", n->cfg->name);
        if (gw_journal_read(state_dir(e), name, JOURNAL_MAX, &buf, NULL) < 0)
                return;
        o = json_loads(buf, 0, NULL);
        free(buf);
        if (!o)
                return;
        if (json_is_string(json_object_get(o, "version")))
                n->installed_version = strdup(json_string_value(json_object_get(o, "version")));
        node_image_from_json(&n->cur, o, "");
        node_image_from_json(&n->prev, o, "previous_");
        node_image_from_json(&n->incomplete, o, "incomplete_");
        json_decref(o);
}

/* ---- Deployment lifecycle ---------------------------------------------------------------- */

static struct deployment *deployment_free(struct deployment *d)
{
        if (!d)
                return NULL;
        gw_fetch_cancel(d->manifest_fetch);
        for (size_t i = 0; d->downloads && d->m && i < d->m->n_images; i++) {
                gw_fetch_cancel(d->downloads[i].fetch);
                if (d->downloads[i].tmp)
                        gw_store_abort(d->downloads[i].fd, d->downloads[i].tmp);
                free(d->downloads[i].tmp);
        }
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                n->flash = gw_flash_free(n->flash);
                n->retry_timer = gw_source_free(n->retry_timer);
                n->attempts = 0;
                gw_file_reader_close(&n->reader);
                n->identified = gw_options_free(n->identified);
                node_image_done(&n->rb_cur);
                node_image_done(&n->rb_prev);
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

/* Fails the whole deployment: nodes not yet finished are marked failed with the same code. */
static void deployment_fail(struct deployment *d, enum gw_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void deployment_fail(struct deployment *d, enum gw_error code, const char *fmt, ...)
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
        deployment_finish(d);
}

static void deployment_finish(struct deployment *d)
{
        struct gw_engine *e = d->engine;
        bool ok = true;

        if (d->phase == PHASE_DONE)
                return;
        d->phase = PHASE_DONE;
        for (size_t i = 0; d->downloads && i < d->m->n_images; i++) {
                gw_fetch_cancel(d->downloads[i].fetch);
                d->downloads[i].fetch = NULL;
        }
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];

                if (n->flash) {
                        /* Still running: stop it; its finished() sees PHASE_DONE. */
                        gw_flash_cancel(n->flash);
                }
                if (n->retry_timer) {
                        /* Waiting to try again: it does not. */
                        n->retry_timer = gw_source_free(n->retry_timer);
                        node_set_active(n, false);
                }
                if (n->state != GW_NODE_SUCCESS && n->state != GW_NODE_FAILED &&
                    n->state != GW_NODE_REVERTED) {
                        n->error = d->error ? d->error : GW_ERR_INTERNAL;
                        snprintf(n->message, sizeof(n->message), "%.319s",
                                 d->error ? d->message : "not flashed");
                        node_set_state(n, GW_NODE_FAILED);
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
                journal_deployment(d, "interrupted", NULL);
                gw_log_warning("Deployment %s interrupted; it runs again after the restart", d->id);
        } else {
                /* The report goes into the journal with the verdict, before it is published: a
                 * cut in between and the restart publishes it (journal_done()). */
                publish_deployment(d, true);
                journal_deployment(d, d->error ? "failed" : "success", e->final_json);
                final_publish(e);
                if (d->error)
                        gw_log_error("Deployment %s failed: %s: %s", d->id,
                                     gw_error_to_string(d->error), d->message);
                else
                        gw_log_info("Deployment %s succeeded on %zu node(s)", d->id, d->n_nodes);
        }
        publish_inventory(e);
        e->current = deployment_free(d);
        engine_next(e);
}

/* Rejected before any node was touched: the verdict goes on the deployment topic only. */
static void deployment_reject(struct deployment *d, enum gw_error code, const char *message)
{
        struct gw_engine *e = d->engine;
        char name[300];
        char *s = NULL;

        gw_log_error("Deployment %s rejected: %s: %s", d->id, gw_error_to_string(code), message);
        if (d->sha_hex[0]) {
                json_t *o =
                    json_pack("{s:s, s:s, s:s, s:s}", "id", d->id, "manifest_sha256", d->sha_hex,
                              "state", "rejected", "error", gw_error_to_string(code));

                s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
                json_decref(o);
                snprintf(name, sizeof(name), "deployments/%s.json", d->id);
                if (s)
                        gw_journal_write(state_dir(e), name, s, strlen(s));
                free(s);
        }
        publish_rejected(e, d->id, code, message);
        d->phase = PHASE_DONE;
        e->current = deployment_free(d);
        engine_next(e);
}

/* ---- Flash phase ------------------------------------------------------------------------- */

/* Every job of a node (identify, install, check, revert) runs on the node's one flash job, and
 * sets node->active while it runs; d->n_active counts them. */

static void flash_start_more(struct deployment *d);
static void node_failed(struct node_rt *n, enum gw_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const struct gw_protocol_ops *node_protocol(const struct node_rt *n)
{
        return gw_protocol_find(n->cfg->protocol);
}

static bool can_identify(const struct node_rt *n)
{
        const struct gw_protocol_ops *p = node_protocol(n);

        return p && p->identify;
}

static void node_set_active(struct node_rt *n, bool active)
{
        if (n->active == active)
                return;
        n->active = active;
        if (active)
                n->dep->n_active++;
        else
                n->dep->n_active--;
}

/* The node's protocol settings with opts (an image's options, may be NULL) on top, in *ret. */
static int node_protocol_opts(const struct node_rt *n, const struct gw_options *opts,
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

/* Opens the node's link with the node's protocol settings and opts (an image's options) on
 * top. Sets n->message on failure. */
static int node_open(struct deployment *d, struct node_rt *n, const struct gw_options *opts)
{
        const struct gw_transport_ops *t = gw_transport_find(n->cfg->transport);
        const struct gw_protocol_ops *p = node_protocol(n);
        struct gw_options *popts;
        int r;

        n->flash = gw_flash_free(n->flash);
        if (!t || !p) {
                snprintf(n->message, sizeof(n->message), "no plugin for %s/%s", n->cfg->transport,
                         n->cfg->protocol);
                return -ENOPROTOOPT;
        }
        r = node_protocol_opts(n, opts, &popts);
        if (r < 0)
                return r;
        r = gw_flash_new(d->engine->env.loop, n->cfg->name, t, n->cfg->transport_opts, p, popts,
                         &n->flash);
        gw_options_free(popts);
        if (r < 0)
                snprintf(n->message, sizeof(n->message), "cannot open %s link: %s",
                         n->cfg->transport, strerror(-r));
        return r;
}

/* Opens a reader on an image of the store, named as the node sees it (app-1.2.0.bin). */
static int node_reader_open(struct deployment *d, struct node_rt *n, const uint8_t sha256[32],
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

static void on_flash_progress(void *userdata, uint64_t done, uint64_t total)
{
        struct node_rt *n = userdata;
        uint64_t now = gw_now_ms();
        int pct = total ? (int) (done * 100 / total) : 100;

        n->bytes = done;
        n->total = total;
        if (pct != n->last_pct &&
            (now - n->last_publish >= PROGRESS_INTERVAL_MS || done == total)) {
                n->last_pct = pct;
                publish_node(n->dep->engine, n);
                publish_deployment(n->dep, false);
        }
}

static bool node_revert(struct node_rt *n);

/* Starts the rollbacks an atomic failure queued, as many as policy.parallel leaves room for:
 * a rollback is a flash like any other (the same power, bus and CPU budget). */
static void revert_more(struct deployment *d)
{
        unsigned parallel = d->m->policy.parallel ? d->m->policy.parallel : 1;

        for (size_t i = 0; i < d->n_nodes && d->n_active < parallel; i++) {
                struct node_rt *n = d->nodes[i];

                if (!n->revert_queued)
                        continue;
                n->revert_queued = false;
                /* A node without a previous image stays as it is. */
                node_revert(n);
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
        gw_log_warning("Deployment %s: canary node %s did not take its image; the other nodes "
                       "are not flashed",
                       d->id, n->cfg->name);
}

/* The node's job ended for good in this deployment (success, failed or reverted). */
static void node_ended(struct node_rt *n)
{
        struct deployment *d = n->dep;

        canary_ended(d, n);
        node_set_active(n, false);
        publish_deployment(d, false);
        revert_more(d);
        flash_start_more(d);
}

static void on_install_finished(void *userdata, int result, const char *reason);

/* Reflashes the image the node ran before this deployment. False when there is none to
 * reflash (no record of one, or it is gone from the store), or the rollback could not start:
 * the node then just fails, and the caller ends it. Never ends the node itself: a rollback
 * that fails at once inside revert_more() must not finish (and free) the deployment under its
 * caller. */
static bool node_revert(struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {
            .progress = on_flash_progress,
            .finished = on_install_finished,
        };
        struct deployment *d = n->dep;
        const struct node_image *im = &n->rb_cur;
        int r;

        if (d->cancelled || !im->known)
                return false;
        if (!gw_store_has(d->engine->env.store, im->sha256, im->size)) {
                gw_log_warning("%s: previous image %s %s is not in the store, cannot roll back",
                               n->cfg->name, im->name, im->version);
                return false;
        }
        gw_log_info("%s: rolling back to %s %s", n->cfg->name, im->name, im->version);
        n->reverting = true;
        node_set_active(n, true);
        node_set_state(n, GW_NODE_REVERTING);
        /* A fresh link with the previous image's options (a DfuSe address may differ). */
        r = node_reader_open(d, n, im->sha256, im->name, im->version);
        if (r >= 0)
                r = node_open(d, n, im->options);
        if (r >= 0) {
                n->bytes = 0;
                n->total = im->size;
                n->t0 = gw_now_ms();
                n->last_pct = -1;
                journal_node_writing(d->engine, n, im);
                r = gw_flash_install(n->flash, &n->reader, &cbs, n);
        }
        if (r < 0) {
                gw_log_error("%s: rolling back to %s %s failed: %s", n->cfg->name, im->name,
                             im->version, strerror(-r));
                gw_file_reader_close(&n->reader);
                n->reverting = false;
                if (!n->error)
                        n->error = GW_ERR_FLASH_FAILED;
                node_set_state(n, GW_NODE_FAILED);
                node_set_active(n, false);
                return false;
        }
        return true;
}

/* An atomic deployment failed: every node that took its image goes back to its previous one,
 * no more than policy.parallel at a time, and no node starts any more. Nodes still running are
 * rolled back when they end. */
static void deployment_halt(struct deployment *d)
{
        if (d->halted)
                return;
        d->halted = true;
        gw_log_warning("Deployment %s is atomic: rolling back the nodes that took their image",
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
                        node_set_state(n, GW_NODE_REVERTED);
                        continue;
                }
                snprintf(n->message, sizeof(n->message), "rolled back: another node failed");
                n->revert_queued = true;
        }
        revert_more(d);
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
        gw_log_error("%s: %s %s: %s: %s", n->cfg->name, img->name, img->version,
                     gw_error_to_string(code), n->message);
        if (d->m->policy.atomic && !d->cancelled) {
                if (!d->error) {
                        d->error = code;
                        snprintf(d->message, sizeof(d->message), "%.64s: %.319s", n->cfg->name,
                                 n->message);
                }
                deployment_halt(d);
        }
        if ((code == GW_ERR_FLASH_FAILED || code == GW_ERR_VERIFY_FAILED) && node_revert(n))
                return;
        node_set_state(n, GW_NODE_FAILED);
        node_ended(n);
}

static void node_succeeded(struct node_rt *n)
{
        struct deployment *d = n->dep;

        node_set_state(n, GW_NODE_SUCCESS);
        if (d->halted) {
                snprintf(n->message, sizeof(n->message), "rolled back: another node failed");
                if (node_revert(n))
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
                /* Stopped by deployment_finish(), which decides the node's state. */
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
        gw_log_info("%s: checked: it answers%s%s", n->cfg->name, v ? " with version " : "",
                    v ? v : "");
        node_succeeded(n);
}

static void node_check_start(struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_check_finished};
        int r;

        node_set_state(n, GW_NODE_CHECKING);
        gw_options_free(n->identified);
        n->identified = gw_options_new();
        r = n->identified ? gw_flash_identify(n->flash, n->identified, &cbs, n) : -ENOMEM;
        if (r < 0)
                node_failed(n, GW_ERR_VERIFY_FAILED, "cannot identify after flashing: %s",
                            strerror(-r));
}

static int flash_node(struct deployment *d, struct node_rt *n);

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
        gw_log_info("%s: attempt %u of %u", n->cfg->name, n->attempts + 1, n->cfg->retries + 1);
        r = flash_node(d, n);
        if (r == 1) {
                node_set_state(n, GW_NODE_SUCCESS);
                node_ended(n);
        } else if (r < 0) {
                node_set_active(n, true); /* flash_node() gave the slot up; node_failed() ends it */
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
        gw_log_warning("%s: attempt %u of %u failed (%s): %s; trying again in %u ms", n->cfg->name,
                       n->attempts, n->cfg->retries + 1, gw_error_to_string(code), why,
                       RETRY_DELAY_MS);
        return true;
}

static void on_install_finished(void *userdata, int result, const char *reason)
{
        struct node_rt *n = userdata;
        struct deployment *d = n->dep;
        const struct gw_manifest_image *img = &d->m->images[n->image];
        enum gw_error code;

        gw_file_reader_close(&n->reader);
        if (d->phase != PHASE_FLASH) {
                /* Stopped by deployment_finish() (cancel, shutdown). */
                n->error =
                    result == -ECANCELED && d->cancelled ? GW_ERR_CANCELLED : GW_ERR_FLASH_FAILED;
                snprintf(n->message, sizeof(n->message), "%s", reason ? reason : strerror(-result));
                node_set_state(n, GW_NODE_FAILED);
                return;
        }
        if (n->reverting) {
                const struct node_image *im = &n->rb_cur;

                n->reverting = false;
                if (result < 0) {
                        gw_log_error("%s: rolling back to %s %s failed: %s", n->cfg->name, im->name,
                                     im->version, reason ? reason : strerror(-result));
                        if (!n->error)
                                n->error = GW_ERR_FLASH_FAILED;
                        snprintf(n->message + strlen(n->message),
                                 sizeof(n->message) - strlen(n->message),
                                 "; rolling back failed too: %s",
                                 reason ? reason : strerror(-result));
                        node_set_state(n, GW_NODE_FAILED);
                } else {
                        /* The record is again what it was before the deployment. */
                        node_image_copy(&n->cur, &n->rb_cur);
                        node_image_copy(&n->prev, &n->rb_prev);
                        node_image_done(&n->incomplete);
                        journal_node_write(d->engine, n);
                        gw_log_info("%s: rolled back to %s %s", n->cfg->name, im->name,
                                    im->version);
                        node_set_state(n, GW_NODE_REVERTED);
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
        journal_node_installed(d->engine, n, img);
        gw_log_info("%s: took %s %s (%llu bytes in %.1f s)", n->cfg->name, img->name, img->version,
                    (unsigned long long) n->total, (double) (gw_now_ms() - n->t0) / 1000.0);
        if (can_identify(n))
                node_check_start(n);
        else
                node_succeeded(n);
}

static int flash_node(struct deployment *d, struct node_rt *n)
{
        static const struct gw_flash_callbacks cbs = {
            .progress = on_flash_progress,
            .finished = on_install_finished,
        };
        const struct gw_manifest_image *img = &d->m->images[n->image];
        int r;

        /* Run again after a cut: a node whose record says it took this very image, whole, is
         * not written again. Where the protocol can identify it is checked as after a flash
         * (its link is open from the identify phase); else it is done (returns 1). */
        if (d->resumed && n->cur.known && !n->incomplete.known &&
            memcmp(n->cur.sha256, img->sha256, 32) == 0) {
                gw_log_info("%s: took %s %s before the deployment was interrupted; not flashed "
                            "again",
                            n->cfg->name, img->name, img->version);
                n->bytes = n->total = img->size;
                if (!can_identify(n) || !n->flash)
                        return 1;
                node_set_active(n, true);
                node_check_start(n);
                return 0;
        }
        if (n->unchanged) {
                gw_log_info("%s: already runs %s %s (its protocol says so); not flashed",
                            n->cfg->name, img->name, img->version);
                snprintf(n->message, sizeof(n->message), "already ran %.64s %.64s; not flashed",
                         img->name, img->version);
                n->bytes = n->total = img->size;
                journal_node_installed(d->engine, n, img);
                n->flash = gw_flash_free(n->flash);
                return 1;
        }
        r = node_reader_open(d, n, img->sha256, img->name, img->version);
        if (r < 0)
                return r;
        /* The link the identify phase opened is reused: a USB board is opened once. */
        if (!n->flash) {
                r = node_open(d, n, img->options);
                if (r < 0) {
                        gw_file_reader_close(&n->reader);
                        return r;
                }
        }
        n->bytes = 0;
        n->total = img->size;
        n->t0 = gw_now_ms();
        n->last_pct = -1;
        node_set_active(n, true);
        node_set_state(n, GW_NODE_FLASHING);
        {
                struct node_image im = {0};

                if (node_image_from_manifest(&im, img) >= 0)
                        journal_node_writing(d->engine, n, &im);
                node_image_done(&im);
        }
        r = gw_flash_install(n->flash, &n->reader, &cbs, n);
        if (r < 0) {
                node_set_active(n, false);
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
                        node_set_state(n, GW_NODE_SUCCESS);
                        canary_ended(d, n);
                        continue;
                }
                if (r < 0) {
                        /* -ENOEXEC: the protocol refuses the image for this board. */
                        n->error =
                            r == -ENOEXEC ? GW_ERR_NODE_INCOMPATIBLE : GW_ERR_NODE_UNREACHABLE;
                        gw_log_error("%s: %s", n->cfg->name, n->message);
                        node_set_state(n, GW_NODE_FAILED);
                        canary_ended(d, n);
                        if (d->m->policy.atomic && !d->error) {
                                d->error = n->error;
                                snprintf(d->message, sizeof(d->message), "%.64s: %.319s",
                                         n->cfg->name, n->message);
                                deployment_halt(d);
                        }
                }
        }
        if (d->phase == PHASE_FLASH && d->n_active == 0 &&
            (d->halted || d->canary_failed || d->next_flash == d->n_nodes))
                deployment_finish(d);
}

/* Each node's image as its protocol reads it (a DFU file's CRC, the board its suffix names, a
 * DfuSe container's addresses), against what the node's identify reported: one the protocol
 * refuses fails the deployment with nothing written to any node. false then. A node whose
 * protocol tells from the same facts that it already runs the image is marked unchanged. */
static bool check_images(struct deployment *d)
{
        for (size_t i = 0; i < d->n_nodes; i++) {
                struct node_rt *n = d->nodes[i];
                const struct gw_manifest_image *img = &d->m->images[n->image];
                const struct gw_protocol_ops *p = node_protocol(n);
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
                r = node_protocol_opts(n, img->options, &popts);
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
                        node_set_state(n, GW_NODE_FAILED);
                        deployment_fail(d, n->error, "node %.64s: %.400s", n->cfg->name,
                                        n->message);
                        return false;
                }
        }
        return true;
}

static void flash_phase(struct deployment *d)
{
        /* Gateways flash many nodes at once; the manifest may ask for fewer. A node is flashed
         * by one job at a time, so nodes on independent links run in parallel. */
        if (!check_images(d))
                return;
        d->phase = PHASE_FLASH;
        journal_deployment(d, "flashing", NULL);
        d->canary_n = d->m->policy.canary < d->n_nodes ? d->m->policy.canary : 0;
        d->canary_left = d->canary_n;
        d->canary_failed = false;
        for (size_t i = 0; i < d->n_nodes; i++)
                d->nodes[i]->canary = i < d->canary_n;
        if (d->canary_n)
                gw_log_info("Deployment %s: all images verified, flashing %zu canary node(s) "
                            "first, then %zu more",
                            d->id, d->canary_n, d->n_nodes - d->canary_n);
        else
                gw_log_info("Deployment %s: all images verified, flashing %zu node(s)", d->id,
                            d->n_nodes);
        flash_start_more(d);
}

/* ---- Identify phase ---------------------------------------------------------------------- */

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
        node_set_active(n, false);
        d->n_identifying--;
        if (result < 0) {
                n->error = GW_ERR_NODE_UNREACHABLE;
                snprintf(n->message, sizeof(n->message), "identify failed: %s",
                         reason ? reason : strerror(-result));
                node_set_state(n, GW_NODE_FAILED);
                deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name, n->message);
                return;
        }
        for (size_t i = 0; i < gw_options_count(n->identified); i++)
                gw_log_debug("%s: identify: %s = %s", n->cfg->name,
                             gw_options_key(n->identified, i), gw_options_value(n->identified, i));
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
                node_set_state(n, GW_NODE_FAILED);
                deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name, n->message);
                return;
        }
        if (d->n_identifying == 0)
                flash_phase(d);
}

/* Before any node is flashed, every node whose protocol can identify is opened (the link stays
 * open for the install) and asked what it is, all at once. One that does not answer or does
 * not match its image fails the deployment with nothing flashed. */
static void identify_phase(struct deployment *d)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_identify_finished};

        d->phase = PHASE_IDENTIFY;
        for (size_t i = 0; i < d->n_nodes && d->phase == PHASE_IDENTIFY; i++) {
                struct node_rt *n = d->nodes[i];
                const struct gw_manifest_image *img = &d->m->images[n->image];
                int r;

                if (!can_identify(n))
                        continue;
                r = node_open(d, n, img->options);
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
                        node_set_state(n, GW_NODE_FAILED);
                        deployment_fail(d, n->error, "node %.64s: %.319s", n->cfg->name,
                                        n->message);
                        return;
                }
                node_set_active(n, true);
                d->n_identifying++;
                node_set_state(n, GW_NODE_VERIFYING);
        }
        if (d->phase == PHASE_IDENTIFY && d->n_identifying == 0)
                flash_phase(d);
}

/* ---- Download phase ------------------------------------------------------------------------ */

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
                        node_set_state(n, state);
                else
                        publish_node(d->engine, n);
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
                                identify_phase(d);
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
        deployment_fail(d, code, "image %s: %s", img->name, message);
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
                deployment_fail(d, GW_ERR_DOWNLOAD_TOO_SLOW,
                                "image %s: the deadline of %u s for the deployment's downloads "
                                "passed",
                                img->name, cfg->fetch_deadline);
                return -ETIMEDOUT;
        }
        r = gw_url_resolve(d->manifest_url, ref, &url);
        if (r < 0) {
                deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot resolve URL '%s'%s",
                                img->name, ref,
                                d->manifest_url ? ""
                                                : " (the manifest came inline: use an "
                                                  "absolute URL)");
                return r;
        }
        r = gw_store_begin(d->engine->env.store, img->sha256, &dl->fd, &dl->tmp);
        if (r < 0) {
                free(url);
                deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot store: %s", img->name,
                                strerror(-r));
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
                deployment_fail(d, GW_ERR_DOWNLOAD_FAILED, "image %s: cannot fetch: %s", img->name,
                                strerror(-r));
        }
        return r;
}

static void download_phase(struct deployment *d)
{
        d->phase = PHASE_DOWNLOAD;
        d->downloads = calloc(d->m->n_images, sizeof(*d->downloads));
        if (!d->downloads) {
                deployment_fail(d, GW_ERR_INTERNAL, "out of memory");
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
                identify_phase(d);
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

/* ---- Manifest phase ------------------------------------------------------------------------ */

/* May img go to node n? Its hardware map against what the node is known to be, then
 * anti-downgrade against the version the journal says the node runs (unless the signed
 * policy allows downgrades). A node whose protocol cannot identify is known by its configured
 * hardware map alone; one that can is checked after the downloads, against what it reports
 * merged over its configured map (identify_phase()), and here only against downgrades. Sets
 * d->error and d->message on refusal. */
static int node_check(struct deployment *d, const struct node_rt *n,
                      const struct gw_manifest_image *img)
{
        struct gw_manifest_error err = {0};
        int r = 0;

        if (!can_identify(n))
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
        const struct gw_protocol_ops *p = node_protocol(n);
        struct gw_options *popts;
        char why[512];
        int r;

        if (!t || !p)
                return 0; /* node_open() reports it */
        r = node_protocol_opts(n, img->options, &popts);
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

        gw_log_debug("Deployment %s: check %s: %s%s%s", d->id, check,
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
        if (journal_done(e, d->id, d->sha_hex, &final)) {
                gw_log_info("Deployment %s with manifest %.12s was already done, ignoring", d->id,
                            d->sha_hex);
                /* Its report again, retained: the broker may never have had it (a cut between
                 * the journal and the publication), and it costs nothing when it has. */
                if (final) {
                        char topic[300];

                        snprintf(topic, sizeof(topic), "deployments/%s", d->id);
                        final_keep(e, topic, final);
                        final_publish(e);
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
         * that ended (journal_done) never gets here. */
        rollback = rollback_recorded(e, d->id, d->sha_hex);
        d->resumed = rollback != NULL;
        if (rollback)
                gw_log_info("Deployment %s runs again: it rolls back to what the nodes ran when it "
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
                        node_image_from_json(&d->nodes[i]->rb_cur, rec, "");
                        node_image_from_json(&d->nodes[i]->rb_prev, rec, "previous_");
                } else if (node_image_copy(&d->nodes[i]->rb_cur, &d->nodes[i]->cur) < 0 ||
                           node_image_copy(&d->nodes[i]->rb_prev, &d->nodes[i]->prev) < 0) {
                        node_image_done(&d->nodes[i]->rb_cur);
                }
        }
        json_decref(rollback);
        journal_deployment(d, "accepted", NULL);
        names = calloc(d->n_nodes, sizeof(*names));
        if (names) {
                for (size_t i = 0; i < d->n_nodes; i++)
                        names[i] = d->nodes[i]->cfg->name;
                if (gw_status_deployment_accepted_json(d->id, d->sha_hex, names, d->n_nodes,
                                                       time(NULL), &json) == 0) {
                        char topic[256];

                        snprintf(topic, sizeof(topic), "deployments/%s", d->id);
                        publish(e, topic, json, false);
                }
                free(names);
        }
        gw_log_info("Deployment %s accepted: manifest %s sequence %llu, %zu image(s), %zu node(s)",
                    d->id, d->m->id, (unsigned long long) d->m->sequence, d->m->n_images,
                    d->n_nodes);
        /* One deadline for all downloads: a server that trickles each image just above the
         * minimum rate, or fails each mirror slowly, cannot stretch the deployment. */
        if (cfg->fetch_deadline)
                d->deadline_ms = gw_now_ms() + (uint64_t) cfg->fetch_deadline * 1000u;
        for (size_t i = 0; i < d->n_nodes; i++)
                node_set_state(d->nodes[i], GW_NODE_QUEUED);
        download_phase(d);
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
                gw_log_error("Deployment %s: out of memory", req->id);
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
        gw_log_info("Deployment %s: received%s%s", d->id, d->manifest_url ? ", fetching " : "",
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

        if (e->current || !e->has_pending)
                return;
        req = e->pending;
        e->pending = (struct gw_deploy_request){0};
        e->has_pending = false;
        deployment_start(e, &req);
}

/* ---- Messages ------------------------------------------------------------------------------ */

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
                publish_rejected(e, NULL, GW_ERR_PAYLOAD_TOO_LARGE, msg);
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
                publish_rejected(e, err.id, err.code ? err.code : GW_ERR_PAYLOAD_INVALID,
                                 err.message ? err.message : "invalid payload");
                gw_request_error_done(&err);
                return;
        }
        if (e->current && same_request(e->current, &req)) {
                /* The retained desired state comes again after a reconnect. */
                gw_log_debug("Deployment %s is already running, ignoring", req.id);
                gw_deploy_request_done(&req);
                return;
        }
        if (e->current) {
                gw_log_info("Deployment %s queued behind %s", req.id, e->current->id);
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
                gw_log_info("Deployment %s cancelled before it started", req.id);
                publish_rejected(e, req.id, GW_ERR_CANCELLED, "cancelled before it started");
                gw_deploy_request_done(&e->pending);
                e->has_pending = false;
        } else if (e->current && strcmp(e->current->id, req.id) == 0) {
                gw_log_info("Deployment %s: cancel requested", req.id);
                e->current->cancelled = true;
                if (e->current->phase == PHASE_MANIFEST)
                        deployment_reject(e->current, GW_ERR_CANCELLED, "cancelled");
                else
                        deployment_fail(e->current, GW_ERR_CANCELLED, "cancelled");
        } else {
                gw_log_info("Cancel for deployment %s, which is not running, ignoring", req.id);
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
        publish_inventory(e);
        for (size_t i = 0; i < e->n_nodes; i++)
                publish_node(e, &e->nodes[i]);
        final_publish(e);
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
        deployment_fail(d, GW_ERR_CANCELLED, "gateway shutting down");
}

bool gw_engine_busy(const struct gw_engine *e)
{
        return e->current != NULL || e->has_pending;
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
                journal_node_load(e, &e->nodes[i]);
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
                node_image_done(&e->nodes[i].cur);
                node_image_done(&e->nodes[i].prev);
                node_image_done(&e->nodes[i].incomplete);
        }
        free(e->nodes);
        free(e->final_topic);
        free(e->final_json);
        free(e);
        return NULL;
}
