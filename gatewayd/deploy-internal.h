/* Internal to the deployment engine, shared by its files (deploy.c and deploy-*.c, one per
 * phase): the engine's, a deployment's and a node's run-time state, and what one phase calls in
 * another. Nothing outside the engine includes this; its public face is deploy.h. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decode.h"
#include "deploy.h"
#include "gw/error.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "request.h"
#include "status.h"

/* Node status is republished at most this often while bytes move. */
#define PROGRESS_INTERVAL_MS 250
#define RETRY_DELAY_MS       1000 /* before an install is tried again (node retries) */
/* How often the bytes a node confirmed of the image being written are journalled. */
#define CONFIRMED_INTERVAL_MS 1000
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
        /* The write under way (incomplete): the bytes the protocol has confirmed, journalled
         * about once a second; what the journal said at start-up (a cut mid-write); and where
         * this install started when the node kept part of an earlier one (the protocol's first
         * progress report), 0 when it started at the beginning. */
        uint64_t confirmed, confirmed_journalled_ms, confirmed_at_start;
        uint64_t resumed_from;
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
        /* Room for a permission problem: the device node, its owner and mode, and the fix. */
        char message[512];
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
        /* This attempt fetches the image's delta (the store holds its base); a delta that
         * fails falls back to the full image. */
        bool delta;
        /* What the URL gives when it is not the image itself (compressed, encrypted, a
         * delta), decoded into out_fd/out_tmp; NULL: the image. */
        const struct gw_manifest_blob *blob;
        struct gw_decode *decode;
        int out_fd;
        char *out_tmp;
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

/* Messages about a deployment, and about a node (while it is in a deployment, about that too):
 * the journal gets GW_DEPLOYMENT= and GW_NODE= (journalctl GW_DEPLOYMENT=ID). */
#define gw_deploy_log(level, d, ...) gw_log_about((level), 0, (d)->id, NULL, __VA_ARGS__)
#define gw_deploy_log_node(level, n, ...)                                                          \
        gw_log_about((level), 0, (n)->dep ? (n)->dep->id : NULL, (n)->cfg->name, __VA_ARGS__)

/* deploy.c */
/* Fails the whole deployment: nodes not yet finished are marked failed with the same code. */
void gw_deploy_deployment_fail(struct deployment *d, enum gw_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void gw_deploy_deployment_finish(struct deployment *d);

/* deploy-report.c */
/* Tells the daemon that the deployment, its phase or a node changed (env.changed). */
void gw_deploy_changed(struct gw_engine *e);
void gw_deploy_publish(struct gw_engine *e, const char *suffix, char *payload, bool retain);
void gw_deploy_publish_node(struct gw_engine *e, struct node_rt *n);
void gw_deploy_node_set_state(struct node_rt *n, enum gw_node_state state);
void gw_deploy_publish_rejected(struct gw_engine *e, const char *id, enum gw_error code,
                                const char *message);
/* The last final report (json, taken over) and its topic, republished on every reconnect;
 * NULL, NULL forgets it. */
void gw_deploy_final_keep(struct gw_engine *e, const char *topic, char *json);
void gw_deploy_publish_deployment(struct deployment *d, bool final);
/* The final report kept by gw_deploy_publish_deployment(d, true), retained. */
void gw_deploy_final_publish(struct gw_engine *e);
void gw_deploy_publish_inventory(struct gw_engine *e);

/* deploy-journal.c */
const char *gw_deploy_state_dir(const struct gw_engine *e);
/* deployments/<id>.json: {"id","manifest_sha256","state","nodes":{name:state},
 * "rollback":{name:{<image>, "previous_"<image>}},"final"?}: rollback holds what each node ran
 * when the deployment was first accepted, for a run after a crash (see
 * gw_deploy_rollback_recorded()); final (when given: the verdict's) the final report as published.
 */
int gw_deploy_journal_deployment(struct deployment *d, const char *state, const char *final);
/* True when the journal says this id with this manifest already ran to the end; *ret_final
 * then gets its final report when the journal has it (malloc'd; NULL otherwise). */
bool gw_deploy_journal_done(struct gw_engine *e, const char *id, const char *sha_hex,
                            char **ret_final);
/* The rollback record of a deployment that was accepted before but never ended (a crash, a
 * power cut, a shutdown): it runs again, and what its nodes ran before it is what it found
 * then, not what their records say now (a node that took its image before the cut already
 * names it). NULL when there is none. The caller releases it. */
json_t *gw_deploy_rollback_recorded(struct gw_engine *e, const char *id, const char *sha_hex);
void gw_deploy_node_image_done(struct node_image *im);
int gw_deploy_node_image_copy(struct node_image *dst, const struct node_image *src);
int gw_deploy_node_image_from_manifest(struct node_image *dst, const struct gw_manifest_image *img);
/* The image under prefix in a node record; unknown when any part is missing or malformed
 * (records written before sizes and options were kept have only a version). */
void gw_deploy_node_image_from_json(struct node_image *dst, const json_t *o, const char *prefix);
/* nodes/<name>.json: what the node runs now, and what it ran before (for rollback):
 * {"image","version","sha256","size","options",
 *  "previous_image","previous_version","previous_sha256","previous_size","previous_options"} */
void gw_deploy_journal_node_write(struct gw_engine *e, struct node_rt *n);
/* The node took img: it becomes the current image, the current one the previous. */
void gw_deploy_journal_node_installed(struct gw_engine *e, struct node_rt *n,
                                      const struct gw_manifest_image *img);
/* The node is about to be written with im: until it took it, its record says so, so that a
 * power cut or a failure mid-write leaves a record that does not claim the old image is whole. */
void gw_deploy_journal_node_writing(struct gw_engine *e, struct node_rt *n,
                                    const struct node_image *im);
void gw_deploy_journal_node_load(struct gw_engine *e, struct node_rt *n);
/* The protocol confirmed done bytes of the image being written: journalled at most once every
 * CONFIRMED_INTERVAL_MS ("incomplete_confirmed"), so that after a cut the record says how far
 * the node had got. */
void gw_deploy_journal_node_confirmed(struct gw_engine *e, struct node_rt *n, uint64_t done);

/* deploy-flash.c */
const struct gw_protocol_ops *gw_deploy_node_protocol(const struct node_rt *n);
bool gw_deploy_can_identify(const struct node_rt *n);
/* Every job of a node (identify, install, check, revert) runs on the node's one flash job, and
 * sets node->active while it runs; d->n_active counts them. */
void gw_deploy_node_set_active(struct node_rt *n, bool active);
/* The node's protocol settings with opts (an image's options, may be NULL) on top, in *ret. */
int gw_deploy_node_protocol_opts(const struct node_rt *n, const struct gw_options *opts,
                                 struct gw_options **ret);
/* Opens the node's link with the node's protocol settings and opts (an image's options) on
 * top. Sets n->message on failure. */
int gw_deploy_node_open(struct deployment *d, struct node_rt *n, const struct gw_options *opts);
/* Opens a reader on an image of the store, named as the node sees it (app-1.2.0.bin). */
int gw_deploy_node_reader_open(struct deployment *d, struct node_rt *n, const uint8_t sha256[32],
                               const char *name, const char *version);
void gw_deploy_on_flash_progress(void *userdata, uint64_t done, uint64_t total);
/* The install continues a write the node kept: logged, and said in the node's status. */
void gw_deploy_on_flash_resumed(void *userdata, uint64_t offset);
void gw_deploy_on_install_finished(void *userdata, int result, const char *reason);
void gw_deploy_flash_phase(struct deployment *d);

/* deploy-rollback.c */
/* Starts the rollbacks an atomic failure queued, as many as policy.parallel leaves room for:
 * a rollback is a flash like any other (the same power, bus and CPU budget). */
void gw_deploy_revert_more(struct deployment *d);
/* Reflashes the image the node ran before this deployment. False when there is none to
 * reflash (no record of one, or it is gone from the store), or the rollback could not start:
 * the node then just fails, and the caller ends it. Never ends the node itself: a rollback
 * that fails at once inside gw_deploy_revert_more() must not finish (and free) the deployment under
 * its caller. */
bool gw_deploy_node_revert(struct node_rt *n);
/* An atomic deployment failed: every node that took its image goes back to its previous one,
 * no more than policy.parallel at a time, and no node starts any more. Nodes still running are
 * rolled back when they end. */
void gw_deploy_deployment_halt(struct deployment *d);

/* deploy-check.c */
/* Each node's image as its protocol reads it (a DFU file's CRC, the board its suffix names, a
 * DfuSe container's addresses), against what the node's identify reported: one the protocol
 * refuses fails the deployment with nothing written to any node. false then. A node whose
 * protocol tells from the same facts that it already runs the image is marked unchanged. */
bool gw_deploy_check_images(struct deployment *d);
/* Before any node is flashed, every node whose protocol can identify is opened (the link stays
 * open for the install) and asked what it is, all at once. One that does not answer or does
 * not match its image fails the deployment with nothing flashed. */
void gw_deploy_identify_phase(struct deployment *d);

/* deploy-fetch.c */
void gw_deploy_download_phase(struct deployment *d);
/* Stops what a download still runs (fetch, decode) and drops its temporary files. */
void gw_deploy_download_stop(struct download *dl);
