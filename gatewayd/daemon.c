/* Wires the daemon's parts to one loop and runs it until a signal asks it to stop; owns the
 * trust root: the provisioned one, or the rotated one persisted in the state dir, and key
 * rotations arriving over MQTT or from gatewayd --rotate-keys. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "deploy.h"
#include "fetch.h"
#include "gw-config.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/manifest.h"
#include "gw/registry.h"
#include "inventory.h"
#include "journal.h"
#include "mqtt.h"
#include "service.h"
#include "status.h"
#include "store.h"

/* The rotated trust root, exactly as it arrived (write-fsync-rename). */
#define TRUST_KEYS "trust/keys.yaml"
/* The last root version whose rotation finished: manifest sequence state reset. Written after
 * that reset, so a crash between the two steps is finished at the next start. */
#define TRUST_APPLIED "trust/applied"

struct daemon {
        const struct gw_config *cfg;
        struct gw_loop *loop;
        struct gw_trust *trust;
        struct gw_store *store;
        struct gw_fetcher *fetcher;
        struct gw_mqtt *mqtt;
        struct gw_engine *engine;
        struct gw_inventory *inventory;
        struct gw_gateway_key *decrypt_key; /* decryption-key, or NULL */
        struct gw_service *service;         /* systemd: readiness, watchdog, status */
        /* TRUST_KEYS as last looked at, to notice a gatewayd --rotate-keys run beside us. */
        struct stat keys_st;
        bool has_keys_st;
        /* The last <prefix>/keys/status report, republished on every (re)connect. */
        char *keys_status;
        /* SHA-256 of the last keys document decided on: the retained message comes again
         * after every reconnect and is not decided (nor reported) twice. */
        uint8_t keys_last[32];
        bool has_keys_last;
        bool stopping;
};

/* The trust root provisioned in the configuration (a keys document or a list of keys). */
static int load_provisioned_trust(const struct gw_config *cfg, struct gw_trust **ret)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *t = NULL;
        int r;

        if (cfg->trust.keys) {
                r = gw_trust_load_file(cfg->trust.keys, 0, &t, &err);
                if (r < 0)
                        return gw_log_error_errno(r, "Cannot load trust root %s: %s: %s",
                                                  cfg->trust.keys, gw_error_to_string(err.code),
                                                  err.message);
        } else if (cfg->trust.n_public_keys > 0) {
                r = gw_trust_new(cfg->trust.threshold ? cfg->trust.threshold : 1, 1, &t);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < cfg->trust.n_public_keys; i++) {
                        r = gw_trust_add_key_file(t, cfg->trust.public_keys[i]);
                        if (r < 0) {
                                gw_trust_free(t);
                                return gw_log_error_errno(r, "Cannot load public key %s: %m",
                                                          cfg->trust.public_keys[i]);
                        }
                }
                if (gw_trust_key_count(t) < gw_trust_threshold(t)) {
                        gw_trust_free(t);
                        return gw_log_error_errno(-EINVAL,
                                                  "trust.threshold %u is more than the %zu "
                                                  "distinct keys given",
                                                  cfg->trust.threshold, cfg->trust.n_public_keys);
                }
        } else {
                return gw_log_error_errno(-EINVAL,
                                          "%s: no trust keys configured: gatewayd "
                                          "refuses to run without a way to verify "
                                          "manifests",
                                          cfg->path);
        }
        *ret = t;
        return 0;
}

static int trust_keys_path(const struct gw_config *cfg, char *buf, size_t n)
{
        int len = snprintf(buf, n, "%s/%s", cfg->state_dir, TRUST_KEYS);

        return len < 0 || (size_t) len >= n ? -ENAMETOOLONG : 0;
}

/* The rotated root persisted in the state dir. -ENOENT when there is none. */
static int load_persisted_trust(const struct gw_config *cfg, struct gw_trust **ret,
                                struct gw_manifest_error *err)
{
        char path[4096];
        int r;

        r = trust_keys_path(cfg, path, sizeof(path));
        if (r < 0)
                return r;
        if (access(path, F_OK) < 0)
                return -errno;
        return gw_trust_load_file(path, cfg->manifest_size_max, ret, err);
}

/* Fast-forward recovery, the second half of a rotation: manifests signed under the old keys
 * may carry any sequence (a compromised key may have signed a huge one), so the sequence
 * state starts afresh under the new root; keys carried over keep their floors. The latest
 * trusted time stays: it only ever moves forward. Idempotent: TRUST_APPLIED records the
 * version it was done for. */
static int trust_finish_rotation(const struct gw_config *cfg, uint64_t version)
{
        struct gw_manifest_state st = {0};
        char *buf = NULL, text[32];
        uint64_t applied = 0;
        int r;

        if (gw_journal_read(cfg->state_dir, TRUST_APPLIED, 64, &buf, NULL) >= 0) {
                buf[strcspn(buf, "\n")] = '\0';
                if (gw_parse_u64(buf, &applied) < 0)
                        applied = 0;
                free(buf);
        }
        if (applied >= version)
                return 0;
        r = gw_manifest_state_load(cfg->state_dir, &st);
        if (r < 0)
                return gw_log_error_errno(r, "Cannot read the manifest state in %s: %m",
                                          cfg->state_dir);
        /* Normally done already by trust_record_floors(), before the new root was written. */
        gw_manifest_state_rotated(&st, NULL);
        r = gw_manifest_state_save(cfg->state_dir, &st);
        if (r < 0)
                return gw_log_error_errno(r, "Cannot reset the manifest state in %s: %m",
                                          cfg->state_dir);
        snprintf(text, sizeof(text), "%llu\n", (unsigned long long) version);
        r = gw_journal_write(cfg->state_dir, TRUST_APPLIED, text, strlen(text));
        if (r < 0)
                return gw_log_error_errno(r, "Cannot record the key rotation in %s: %m",
                                          cfg->state_dir);
        return 0;
}

/* The trust root in force: the rotated one in the state dir when its version is at least the
 * provisioned one's, else the provisioned one. A rotated root that cannot be read is fatal:
 * falling back to older, perhaps compromised, keys is not an option. */
static int load_trust(const struct gw_config *cfg, struct gw_trust **ret)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *prov = NULL, *rot = NULL;
        int r;

        r = load_provisioned_trust(cfg, &prov);
        if (r < 0)
                return r;
        r = load_persisted_trust(cfg, &rot, &err);
        if (r == -ENOENT) {
                *ret = prov;
                return 0;
        }
        if (r < 0) {
                gw_trust_free(prov);
                return gw_log_error_errno(r,
                                          "Cannot load the rotated trust root %s/%s: %s: %s; "
                                          "remove it to fall back to the provisioned root",
                                          cfg->state_dir, TRUST_KEYS,
                                          err.code ? gw_error_to_string(err.code) : "error",
                                          err.message[0] ? err.message : strerror(-r));
        }
        if (gw_trust_version(rot) < gw_trust_version(prov)) {
                gw_log_warning("Rotated trust root version %llu in %s is older than the "
                               "provisioned version %llu, ignoring",
                               (unsigned long long) gw_trust_version(rot), cfg->state_dir,
                               (unsigned long long) gw_trust_version(prov));
                gw_trust_free(rot);
                *ret = prov;
                return 0;
        }
        gw_trust_free(prov);
        /* Finishes a rotation a crash interrupted; a no-op otherwise. */
        r = trust_finish_rotation(cfg, gw_trust_version(rot));
        if (r < 0) {
                gw_trust_free(rot);
                return r;
        }
        *ret = rot;
        return 0;
}

/* The first half of a rotation away from current, before the new root is persisted: each key
 * of current keeps the last accepted sequence as its floor, and the sequence starts afresh
 * (gw_manifest_state_rotated). Done first, a crash before the new root is on disk leaves the
 * old root in force with every one of its keys held to its floor: no replay either way. */
static int trust_record_floors(const struct gw_config *cfg, const struct gw_trust *current,
                               uint64_t version)
{
        struct gw_manifest_state st = {0};
        int r;

        r = gw_manifest_state_load(cfg->state_dir, &st);
        if (r < 0)
                return gw_log_error_errno(r, "Cannot read the manifest state in %s: %m",
                                          cfg->state_dir);
        if (st.has_sequence)
                gw_log_info("Trust root version %llu: a new manifest sequence starts; manifests "
                            "signed only by keys kept from version %llu must be above %llu",
                            (unsigned long long) version, (unsigned long long) (version - 1),
                            (unsigned long long) st.sequence);
        gw_manifest_state_rotated(&st, current);
        r = gw_manifest_state_save(cfg->state_dir, &st);
        if (r < 0)
                return gw_log_error_errno(r, "Cannot save the manifest state in %s: %m",
                                          cfg->state_dir);
        return 0;
}

/* Checks buf as a rotation of current and, when valid, persists it and resets the sequence
 * state. On failure err says why (threshold-not-met, keys-rotation-invalid, ...). */
static int trust_rotate(const struct gw_config *cfg, const struct gw_trust *current,
                        const void *buf, size_t len, struct gw_trust **ret,
                        struct gw_manifest_error *err)
{
        struct gw_trust *next = NULL;
        int r;

        if (len > cfg->manifest_size_max) {
                err->code = GW_ERR_MANIFEST_TOO_LARGE;
                snprintf(err->message, sizeof(err->message),
                         "keys document of %zu bytes is over limits.manifest-size %llu", len,
                         (unsigned long long) cfg->manifest_size_max);
                return -EFBIG;
        }
        r = gw_trust_rotate(current, buf, len, cfg->manifest_size_max, &next, err);
        if (r < 0) {
                if (!err->code)
                        err->code = GW_ERR_KEYS_ROTATION_INVALID;
                return r;
        }
        r = trust_record_floors(cfg, current, gw_trust_version(next));
        if (r >= 0)
                r = gw_journal_mkdir(cfg->state_dir, "trust");
        if (r >= 0)
                r = gw_journal_write(cfg->state_dir, TRUST_KEYS, buf, len);
        if (r >= 0)
                r = trust_finish_rotation(cfg, gw_trust_version(next));
        if (r < 0) {
                gw_trust_free(next);
                err->code = GW_ERR_INTERNAL;
                snprintf(err->message, sizeof(err->message),
                         "cannot persist the new trust root in %s: %s", cfg->state_dir,
                         strerror(-r));
                return r;
        }
        *ret = next;
        return 0;
}

int gw_daemon_rotate_keys(const struct gw_config *cfg, const char *path, uint64_t *ret_version,
                          struct gw_manifest_error *err)
{
        struct gw_trust *current = NULL, *next = NULL;
        char *buf = NULL;
        size_t len = 0;
        int r;

        r = gw_journal_mkdir(cfg->state_dir, NULL);
        if (r < 0) {
                err->code = GW_ERR_INTERNAL;
                snprintf(err->message, sizeof(err->message), "cannot create %s: %s", cfg->state_dir,
                         strerror(-r));
                return r;
        }
        r = load_trust(cfg, &current);
        if (r < 0) {
                err->code = GW_ERR_INTERNAL;
                snprintf(err->message, sizeof(err->message), "cannot load the current trust root");
                return r;
        }
        r = gw_read_whole_file(path, cfg->manifest_size_max, &buf, &len);
        if (r < 0) {
                err->code = r == -EFBIG ? GW_ERR_MANIFEST_TOO_LARGE : GW_ERR_INTERNAL;
                snprintf(err->message, sizeof(err->message), "%s: %s", path,
                         r == -EFBIG ? "over limits.manifest-size" : strerror(-r));
                gw_trust_free(current);
                return r;
        }
        r = trust_rotate(cfg, current, buf, len, &next, err);
        if (r >= 0) {
                gw_log_info("Trust root rotated from version %llu to %llu (%zu keys, threshold %u)",
                            (unsigned long long) gw_trust_version(current),
                            (unsigned long long) gw_trust_version(next), gw_trust_key_count(next),
                            gw_trust_threshold(next));
                *ret_version = gw_trust_version(next);
        }
        free(buf);
        gw_trust_free(next);
        gw_trust_free(current);
        return r;
}

/* The gateway's key for encrypted images (decryption-key). */
static int load_decryption_key(const struct gw_config *cfg, struct gw_gateway_key **ret)
{
        int r = gw_gateway_key_load(cfg->decryption_key, ret);

        if (r == -EBADMSG)
                return gw_log_error_errno(r, "%s: decryption-key: %s is not a PEM private key",
                                          cfg->path, cfg->decryption_key);
        if (r == -EPROTONOSUPPORT)
                return gw_log_error_errno(r,
                                          "%s: decryption-key: %s is neither an X25519 nor a "
                                          "P-256 key",
                                          cfg->path, cfg->decryption_key);
        if (r < 0)
                return gw_log_error_errno(r, "%s: decryption-key: cannot read %s: %m", cfg->path,
                                          cfg->decryption_key);
        return 0;
}

int gw_daemon_check(const struct gw_config *cfg)
{
        struct gw_trust *t = NULL;
        int r, ret = 0;

        /* Without a plugin-dir, the one this build installs plugins into (a folder that does
         * not exist simply holds none). */
        r = gw_plugin_load_dir(cfg->plugin_dir ? cfg->plugin_dir : GW_PLUGIN_DIR);
        if (r < 0)
                ret = r;
        for (size_t i = 0; i < cfg->n_nodes; i++) {
                const struct gw_node_config *n = &cfg->nodes[i];
                const struct gw_transport_ops *t_ops = gw_transport_find(n->transport);
                const struct gw_protocol_ops *p_ops = gw_protocol_find(n->protocol);

                if (!t_ops)
                        ret = gw_log_error_errno(-ENOPROTOOPT,
                                                 "%s: node %s: transport '%s' is not built in "
                                                 "and no plugin provides it",
                                                 cfg->path, n->name, n->transport);
                if (!p_ops)
                        ret = gw_log_error_errno(-ENOPROTOOPT,
                                                 "%s: node %s: protocol '%s' is not built in "
                                                 "and no plugin provides it",
                                                 cfg->path, n->name, n->protocol);
                if (t_ops && p_ops && t_ops->shape != p_ops->shape)
                        ret = gw_log_error_errno(
                            -EPROTO,
                            "%s: node %s: protocol %s needs a %s link but "
                            "transport %s gives a %s link",
                            cfg->path, n->name, n->protocol, gw_link_shape_to_string(p_ops->shape),
                            n->transport, gw_link_shape_to_string(t_ops->shape));
                else if (t_ops && p_ops) {
                        char why[1024];

                        r = gw_plugin_check_options(t_ops, n->transport_opts, p_ops,
                                                    n->protocol_opts, why, sizeof(why));
                        if (r < 0) {
                                bool proto = strncmp(why, "protocol ", 9) == 0;
                                const struct gw_config_pos *pos =
                                    proto ? &n->protocol_pos : &n->transport_pos;

                                ret = gw_log_error_errno(r, "%s:%u:%u: node %s: %s", cfg->path,
                                                         pos->line, pos->column, n->name, why);
                        }
                }
        }
        /* TLS files: libmosquitto would only say "invalid function arguments" at start-up. */
        if (cfg->mqtt.tls) {
                const char *const files[][2] = {{"ca", cfg->mqtt.tls_ca},
                                                {"cert", cfg->mqtt.tls_cert},
                                                {"key", cfg->mqtt.tls_key}};

                for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
                        if (files[i][1] && access(files[i][1], R_OK) < 0)
                                ret = gw_log_error_errno(-errno,
                                                         "%s: mqtt.tls.%s: cannot read %s: %m",
                                                         cfg->path, files[i][0], files[i][1]);
        }
        r = load_provisioned_trust(cfg, &t);
        if (r < 0)
                ret = r;
        gw_trust_free(t);
        if (cfg->decryption_key) {
                struct gw_gateway_key *k = NULL;

                r = load_decryption_key(cfg, &k);
                if (r < 0)
                        ret = r;
                gw_gateway_key_free(k);
        }
        return ret;
}

/* <prefix>/keys/status: {"version","state":"applied"|"rejected","error"?,"ts"}, retained.
 * version is the root in force after the event. */
static void publish_keys_status(struct daemon *d, const char *state, enum gw_error code,
                                const char *message)
{
        char ts[GW_TIMESTAMP_MAX];
        json_t *o;
        char *s;

        o = json_pack("{s:I, s:s}", "version", (json_int_t) gw_trust_version(d->trust), "state",
                      state);
        if (!o)
                return;
        if (code)
                json_object_set_new(o, "error",
                                    json_pack("{s:s, s:s}", "code", gw_error_to_string(code),
                                              "message", message ? message : ""));
        if (gw_status_timestamp(time(NULL), ts, sizeof(ts)) == 0)
                json_object_set_new(o, "ts", json_string(ts));
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!s)
                return;
        free(d->keys_status);
        d->keys_status = s;
        if (d->mqtt)
                gw_mqtt_publish(d->mqtt, "keys/status", s, 1, true);
}

/* True when TRUST_KEYS is there and is not the file last looked at (every write replaces it
 * by a rename, so a new inode); remembers it either way. */
static bool keys_file_changed(struct daemon *d)
{
        char path[4096];
        struct stat st;
        bool same;

        if (trust_keys_path(d->cfg, path, sizeof(path)) < 0 || stat(path, &st) < 0)
                return false;
        same = d->has_keys_st && st.st_ino == d->keys_st.st_ino &&
               st.st_size == d->keys_st.st_size && st.st_mtim.tv_sec == d->keys_st.st_mtim.tv_sec &&
               st.st_mtim.tv_nsec == d->keys_st.st_mtim.tv_nsec;
        d->keys_st = st;
        d->has_keys_st = true;
        return !same;
}

/* Takes in a root that gatewayd --rotate-keys persisted while we run. The state dir is as
 * trusted as the configuration; the tool checked the rotation before writing it. */
static void trust_refresh(struct daemon *d)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *t = NULL;
        char path[4096];
        int r;

        if (!keys_file_changed(d) || trust_keys_path(d->cfg, path, sizeof(path)) < 0)
                return;
        r = load_persisted_trust(d->cfg, &t, &err);
        if (r < 0) {
                gw_log_warning("Cannot load the trust root %s: %s, ignoring", path,
                               err.message[0] ? err.message : strerror(-r));
                return;
        }
        if (gw_trust_version(t) <= gw_trust_version(d->trust)) {
                gw_trust_free(t);
                return;
        }
        if (trust_finish_rotation(d->cfg, gw_trust_version(t)) < 0) {
                gw_trust_free(t);
                return;
        }
        gw_log_info("Trust root version %llu taken from %s",
                    (unsigned long long) gw_trust_version(t), path);
        gw_trust_free(d->trust);
        d->trust = t;
        publish_keys_status(d, "applied", GW_ERR_NONE, NULL);
}

static const struct gw_trust *engine_trust(void *userdata)
{
        struct daemon *d = userdata;

        trust_refresh(d);
        return d->trust;
}

/* A gatewayd/keys document on <prefix>/keys. It is retained, so it comes again after every
 * reconnect: the one already in force is recognised by its bytes and not reported again. The
 * engine verifies a manifest synchronously, so swapping the root here never changes it under
 * a verification; a deployment already accepted runs on, and the next one uses the new root. */
static void on_keys(struct daemon *d, const void *payload, size_t len, bool oversize)
{
        struct gw_manifest_error err = {0};
        struct gw_trust *next = NULL;
        uint8_t sha[32];
        unsigned sha_len = 0;
        uint64_t from;
        char *cur = NULL;
        size_t cur_len = 0;
        int r;

        if (oversize) {
                gw_log_error("Key rotation rejected: %zu bytes is over mqtt.max-payload", len);
                publish_keys_status(d, "rejected", GW_ERR_PAYLOAD_TOO_LARGE,
                                    "over mqtt.max-payload");
                return;
        }
        if (len == 0) {
                gw_log_debug("Key rotation topic cleared, nothing to do");
                return;
        }
        if (EVP_Digest(payload, len, sha, &sha_len, EVP_sha256(), NULL) != 1 || sha_len != 32)
                sha_len = 0;
        if (sha_len && d->has_keys_last && memcmp(sha, d->keys_last, 32) == 0) {
                gw_log_debug("Keys document already decided on, ignoring");
                return;
        }
        trust_refresh(d);
        if (gw_journal_read(d->cfg->state_dir, TRUST_KEYS, d->cfg->manifest_size_max, &cur,
                            &cur_len) >= 0) {
                bool same = cur_len == len && memcmp(cur, payload, len) == 0;

                free(cur);
                if (same) {
                        gw_log_debug("Keys document version %llu is already in force, ignoring",
                                     (unsigned long long) gw_trust_version(d->trust));
                        return;
                }
        }
        from = gw_trust_version(d->trust);
        r = trust_rotate(d->cfg, d->trust, payload, len, &next, &err);
        /* A failure of our own (the state dir) is not a decision: the next delivery retries. */
        if (sha_len && (r >= 0 || err.code != GW_ERR_INTERNAL)) {
                memcpy(d->keys_last, sha, 32);
                d->has_keys_last = true;
        }
        if (r < 0) {
                gw_log_error("Key rotation rejected: %s: %s", gw_error_to_string(err.code),
                             err.message);
                publish_keys_status(d, "rejected", err.code, err.message);
                return;
        }
        gw_trust_free(d->trust);
        d->trust = next;
        /* Our own write: not a rotation to pick up again. */
        keys_file_changed(d);
        gw_log_info("Trust root rotated from version %llu to %llu (%zu keys, threshold %u)%s",
                    (unsigned long long) from, (unsigned long long) gw_trust_version(next),
                    gw_trust_key_count(next), gw_trust_threshold(next),
                    gw_engine_busy(d->engine) ? "; it applies from the next deployment" : "");
        publish_keys_status(d, "applied", GW_ERR_NONE, NULL);
}

/* The service's status line, from what the engine and the session say now. */
static void status_update(void *userdata)
{
        struct daemon *d = userdata;
        struct gw_engine_progress p;
        char line[256];

        if (!d->engine || d->stopping)
                return;
        gw_engine_progress(d->engine, &p);
        if (!p.deployment)
                snprintf(line, sizeof(line), "Idle: %zu node(s), broker %s:%u %s", d->cfg->n_nodes,
                         d->cfg->mqtt.host, d->cfg->mqtt.port,
                         d->mqtt && gw_mqtt_is_connected(d->mqtt) ? "connected" : "not connected");
        else if (strcmp(p.phase, "manifest") == 0)
                snprintf(line, sizeof(line), "Deployment %s: fetching and verifying the manifest",
                         p.deployment);
        else if (strcmp(p.phase, "download") == 0)
                snprintf(line, sizeof(line),
                         "Deployment %s: downloading, %zu of %zu image(s) ready", p.deployment,
                         p.n_images_ready, p.n_images);
        else if (strcmp(p.phase, "identify") == 0)
                snprintf(line, sizeof(line), "Deployment %s: asking %zu node(s) what they run",
                         p.deployment, p.n_active);
        else
                snprintf(line, sizeof(line), "Deployment %s: %s%zu of %zu nodes done, %zu busy%s",
                         p.deployment, p.reverting ? "rolling back, " : "", p.n_ended, p.n_nodes,
                         p.n_active, p.n_failed ? ", some failed" : "");
        if (p.queued && strlen(line) + 32 < sizeof(line))
                strcat(line, "; another one queued");
        gw_service_set_status(d->service, line);
}

static int on_stop_signal(struct gw_source *s, int signo, void *userdata)
{
        struct daemon *d = userdata;
        struct gw_engine_progress p;
        char line[256];

        if (d->stopping)
                return 0;
        gw_engine_progress(d->engine, &p);
        if (p.deployment)
                snprintf(line, sizeof(line),
                         "Stopping (%s): deployment %s interrupted, node states journalled; it "
                         "runs again after the restart",
                         strsignal(signo), p.deployment);
        else
                snprintf(line, sizeof(line), "Stopping (%s)", strsignal(signo));
        gw_service_stopping(d->service, line);
        d->stopping = true;
        gw_log_info("Received %s, shutting down", strsignal(signo));
        /* Nodes mid-flash get the protocol's abort and a failed status; the desired state is
         * still retained on the broker, so the deployment runs again after the restart. */
        gw_engine_shutdown(d->engine);
        gw_loop_exit(d->loop, 0);
        return 0;
}

static int publish_cb(void *userdata, const char *suffix, const char *payload, bool retain)
{
        struct daemon *d = userdata;

        return gw_mqtt_publish(d->mqtt, suffix, payload, 1, retain);
}

/* Something was plugged in or removed: the retained inventory follows. */
static void inventory_changed(void *userdata)
{
        struct daemon *d = userdata;

        if (d->engine && !d->stopping)
                gw_engine_inventory_changed(d->engine);
}

static void mqtt_connected(void *userdata)
{
        struct daemon *d = userdata;

        gw_engine_connected(d->engine);
        status_update(d);
        if (d->keys_status)
                gw_mqtt_publish(d->mqtt, "keys/status", d->keys_status, 1, true);
}

static void mqtt_message(void *userdata, const char *suffix, const void *payload, size_t len,
                         bool oversize, bool retained)
{
        struct daemon *d = userdata;

        if (d->stopping)
                return;
        if (strcmp(suffix, GW_MQTT_TOPIC_KEYS) == 0)
                on_keys(d, payload, len, oversize);
        else
                gw_engine_message(d->engine, suffix, payload, len, oversize);
}

int gw_daemon_run(const struct gw_config *cfg)
{
        static const struct gw_mqtt_callbacks mcb = {
            .connected = mqtt_connected,
            .message = mqtt_message,
        };
        struct daemon d = {.cfg = cfg};
        struct gw_engine_env env;
        int r;

        r = gw_daemon_check(cfg);
        if (r < 0)
                return r;
        r = gw_journal_mkdir(cfg->state_dir, NULL);
        if (r < 0)
                return gw_log_error_errno(r, "Cannot create state directory %s: %m",
                                          cfg->state_dir);
        /* Writes a crash or a power cut interrupted left temporary files behind. */
        {
                static const char *const subs[] = {NULL, "trust", "deployments", "nodes", "images"};
                int swept = 0;

                for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
                        int k = gw_journal_sweep(cfg->state_dir, subs[i]);

                        if (k > 0)
                                swept += k;
                }
                if (swept > 0)
                        gw_log_info(
                            "Removed %d temporary file(s) that interrupted writes left in %s",
                            swept, cfg->state_dir);
        }
        r = load_trust(cfg, &d.trust);
        if (r < 0)
                return r;
        gw_log_info("Trust root version %llu: %zu key(s), threshold %u",
                    (unsigned long long) gw_trust_version(d.trust), gw_trust_key_count(d.trust),
                    gw_trust_threshold(d.trust));
        /* What is on disk now is what we loaded. */
        keys_file_changed(&d);
        if (cfg->decryption_key) {
                r = load_decryption_key(cfg, &d.decrypt_key);
                if (r < 0)
                        goto out;
                gw_log_info("Encrypted images: key %.16s from %s", gw_gateway_key_id(d.decrypt_key),
                            cfg->decryption_key);
        }
        r = gw_store_open(cfg->state_dir, &d.store);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot open the image store in %s: %m", cfg->state_dir);
                goto out;
        }
        r = gw_loop_new(&d.loop);
        if (r < 0)
                goto out;
        r = gw_loop_add_signal(d.loop, SIGTERM, on_stop_signal, &d, NULL);
        if (r >= 0)
                r = gw_loop_add_signal(d.loop, SIGINT, on_stop_signal, &d, NULL);
        if (r < 0)
                goto out;
        signal(SIGPIPE, SIG_IGN);
        r = gw_fetcher_new(d.loop, &d.fetcher);
        if (r < 0)
                goto out;
        r = gw_inventory_new(d.loop, cfg, inventory_changed, &d, &d.inventory);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot look at what is attached: %m");
                goto out;
        }
        env = (struct gw_engine_env){
            .loop = d.loop,
            .cfg = cfg,
            .trust = engine_trust,
            .store = d.store,
            .fetcher = d.fetcher,
            .publish = publish_cb,
            .userdata = &d,
            .inventory = d.inventory,
            .decrypt_key = d.decrypt_key,
            .changed = status_update,
        };
        r = gw_engine_new(&env, &d.engine);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot set up the deployment engine in %s: %m",
                                   cfg->state_dir);
                goto out;
        }
        r = gw_mqtt_new(d.loop, &cfg->mqtt, GW_VERSION, &mcb, &d, &d.mqtt);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot set up the MQTT session: %m");
                goto out;
        }
        gw_log_info("gatewayd %s: gateway %s, %zu node(s), broker %s:%u, prefix %s", GW_VERSION,
                    cfg->gateway_id, cfg->n_nodes, cfg->mqtt.host, cfg->mqtt.port,
                    cfg->mqtt.prefix);
        /* READY=1 goes out from the loop's first iteration: the configuration is checked, every
         * part is wired and the loop runs. */
        r = gw_service_new(d.loop, status_update, &d, &d.service);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot set up the service notifications: %m");
                goto out;
        }
        status_update(&d);
        gw_mqtt_start(d.mqtt);
        r = gw_loop_run(d.loop);
        if (r < 0)
                gw_log_error_errno(r, "Main loop failed: %m");
        gw_mqtt_stop(d.mqtt, 2000);
out:
        /* Before the engine: its last state changes would no longer reach a status line. */
        d.service = gw_service_free(d.service);
        gw_engine_free(d.engine);
        gw_inventory_free(d.inventory);
        gw_mqtt_free(d.mqtt);
        gw_fetcher_free(d.fetcher);
        gw_store_free(d.store);
        gw_trust_free(d.trust);
        gw_gateway_key_free(d.decrypt_key);
        free(d.keys_status);
        gw_loop_free(d.loop);
        return r;
}
