/* Manifest verification: the signatures document, the signature threshold over the DSSE PAE
 * of the body, and then (only then) the body and the checks that need its contents. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "manifest-internal.h"

void gw_sigs_done(struct gw_sigs *s)
{
        if (!s)
                return;
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i].sig);
        free(s->v);
        s->v = NULL;
        s->n = 0;
}

static bool is_keyid(const char *s, size_t len)
{
        if (len != 64)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

static int sigs_from_tree(const struct ynode *root, struct gw_sigs *ret,
                          struct gw_manifest_error *err)
{
        static const struct gw_field top[] = {{"signatures", true}, {NULL, false}};
        static const struct gw_field entry[] = {{"keyid", true}, {"sig", true}, {NULL, false}};
        const struct ynode *list;
        struct gw_sigs s = {0};
        char path[GW_PATH_MAX], sub[GW_PATH_MAX];
        int r;

        r = gw_schema_map(root, "", top, err);
        if (r < 0)
                return r;
        list = gw_ynode_get(root, "signatures");
        r = gw_schema_seq(list, "signatures", 0, GW_MANIFEST_MAX_SIGS, err);
        if (r < 0)
                return r;
        s.v = calloc(list->n + 1, sizeof(*s.v));
        if (!s.v)
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        for (size_t i = 0; i < list->n; i++) {
                const struct ynode *e = list->items[i], *keyid, *sig;

                gw_path_index(path, "signatures", i);
                r = gw_schema_map(e, path, entry, err);
                if (r < 0)
                        goto fail;
                keyid = gw_ynode_get(e, "keyid");
                sig = gw_ynode_get(e, "sig");
                if (keyid->type != YNODE_SCALAR || !is_keyid(keyid->value, keyid->len)) {
                        gw_path_key(sub, path, "keyid");
                        r = gw_manifest_fail(err, GW_ERR_ENVELOPE_MALFORMED,
                                             "%s: expected 64 lowercase hex digits (line %u)", sub,
                                             keyid->line);
                        goto fail;
                }
                if (sig->type != YNODE_SCALAR ||
                    gw_base64_decode(sig->value, sig->len, &s.v[s.n].sig, &s.v[s.n].sig_len) < 0) {
                        gw_path_key(sub, path, "sig");
                        r = gw_manifest_fail(err, GW_ERR_ENVELOPE_MALFORMED,
                                             "%s: expected standard base64 (line %u)", sub,
                                             sig->line);
                        goto fail;
                }
                memcpy(s.v[s.n].keyid, keyid->value, 65);
                s.n++;
        }
        *ret = s;
        return 0;
fail:
        gw_sigs_done(&s);
        return r;
}

int gw_sigs_parse(const void *buf, size_t len, struct gw_sigs *ret, struct gw_manifest_error *err)
{
        struct ynode *root = NULL;
        int r;

        r = gw_ytree_load(buf, len, GW_ERR_ENVELOPE_MALFORMED, &root, err);
        if (r < 0)
                return r;
        r = sigs_from_tree(root, ret, err);
        gw_ytree_free(root);
        /* The signatures document is part of the envelope, whatever failed in it. */
        if (r < 0 && err && err->code == GW_ERR_SCHEMA_INVALID) {
                err->code = GW_ERR_ENVELOPE_MALFORMED;
                r = gw_manifest_errno(GW_ERR_ENVELOPE_MALFORMED);
        }
        return r;
}

int gw_envelope_keyids(const void *buf, size_t len, char (**ret)[65], size_t *ret_n,
                       struct gw_manifest_error *err)
{
        struct gw_sigs s = {0};
        char(*v)[65];
        int r;

        r = gw_sigs_parse(buf, len, &s, err);
        if (r < 0)
                return r;
        v = calloc(s.n + 1, sizeof(*v));
        if (!v) {
                gw_sigs_done(&s);
                return gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
        }
        for (size_t i = 0; i < s.n; i++)
                memcpy(v[i], s.v[i].keyid, sizeof(v[i]));
        *ret = v;
        *ret_n = s.n;
        gw_sigs_done(&s);
        return 0;
}

static void reportf(gw_manifest_report_fn report, void *userdata, const char *check,
                    enum gw_error code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void reportf(gw_manifest_report_fn report, void *userdata, const char *check,
                    enum gw_error code, const char *fmt, ...)
{
        char detail[256];
        va_list ap;

        if (!report)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        report(userdata, check, code, detail);
}

int gw_sigs_count(const struct gw_trust *t, const char *type, const void *body, size_t len,
                  const struct gw_sigs *s, gw_manifest_report_fn report, void *userdata,
                  size_t *ret_count, char (**ret_signers)[65])
{
        char(*signers)[65] = NULL;
        uint8_t *pae = NULL;
        size_t pae_len = 0, count = 0;
        bool *counted;
        int r;

        counted = calloc(t->n_keys + 1, sizeof(*counted));
        signers = calloc(t->n_keys + 1, sizeof(*signers));
        if (!counted || !signers) {
                r = -ENOMEM;
                goto out;
        }
        r = gw_envelope_pae(type, body, len, &pae, &pae_len);
        if (r < 0)
                goto out;

        for (size_t i = 0; i < s->n; i++) {
                const struct gw_sig_entry *e = &s->v[i];
                size_t k;

                for (k = 0; k < t->n_keys; k++)
                        if (strcmp(t->keys[k].keyid, e->keyid) == 0)
                                break;
                if (k == t->n_keys) {
                        reportf(report, userdata, "signature", GW_ERR_THRESHOLD_NOT_MET,
                                "%.16s...: key not trusted, ignored", e->keyid);
                        continue;
                }
                if (counted[k]) {
                        reportf(report, userdata, "signature", GW_ERR_THRESHOLD_NOT_MET,
                                "%.16s...: key already counted, ignored", e->keyid);
                        continue;
                }
                if (!gw_key_verify(&t->keys[k], pae, pae_len, e->sig, e->sig_len)) {
                        reportf(report, userdata, "signature", GW_ERR_THRESHOLD_NOT_MET,
                                "%.16s...: %s signature does not verify", e->keyid,
                                t->keys[k].type == GW_KEY_ED25519 ? "Ed25519" : "P-256");
                        continue;
                }
                reportf(report, userdata, "signature", GW_ERR_NONE, "%.16s...: valid %s signature",
                        e->keyid, t->keys[k].type == GW_KEY_ED25519 ? "Ed25519" : "P-256");
                counted[k] = true;
                memcpy(signers[count], e->keyid, 65);
                count++;
        }
        *ret_count = count;
        if (ret_signers) {
                *ret_signers = signers;
                signers = NULL;
        }
        r = 0;
out:
        free(pae);
        free(signers);
        free(counted);
        return r;
}

static const char *format_time(time_t t, char ret[static 32])
{
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(ret, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(ret, 32, "%lld", (long long) t);
        return ret;
}

int gw_manifest_verify(const struct gw_trust *trust, const struct gw_manifest_verify_params *p,
                       const void *buf, size_t len, struct gw_manifest **ret,
                       struct gw_manifest_error *err)
{
        static const struct gw_manifest_verify_params defaults = {0};
        struct gw_manifest_error local;
        struct gw_manifest *m = NULL;
        struct ynode *root = NULL;
        struct gw_sigs sigs = {0};
        char(*signers)[65] = NULL;
        size_t max_size, body_len, sigs_off, count = 0;
        time_t now;
        int r;

        if (!p)
                p = &defaults;
        if (!err)
                err = &local;
        max_size = p->max_size ? p->max_size : GW_MANIFEST_MAX_SIZE_DEFAULT;

        if (len > max_size) {
                r = gw_manifest_fail(err, GW_ERR_MANIFEST_TOO_LARGE,
                                     "%zu bytes, more than the %zu allowed", len, max_size);
                goto fail;
        }
        reportf(p->report, p->userdata, "size", GW_ERR_NONE, "%zu bytes (limit %zu)", len,
                max_size);

        if (gw_envelope_split(buf, len, &body_len, &sigs_off) < 0) {
                r = gw_manifest_fail(err, GW_ERR_ENVELOPE_MALFORMED,
                                     "no line \"---\" before a signatures document");
                goto fail;
        }
        r = gw_sigs_parse((const char *) buf + sigs_off, len - sigs_off, &sigs, err);
        if (r < 0)
                goto fail;
        reportf(p->report, p->userdata, "envelope", GW_ERR_NONE, "body %zu bytes, %zu signature(s)",
                body_len, sigs.n);

        r = gw_sigs_count(trust, GW_MANIFEST_PAYLOAD_TYPE, buf, body_len, &sigs, p->report,
                          p->userdata, &count, &signers);
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "out of memory");
                goto fail;
        }
        if (count < trust->threshold) {
                r = gw_manifest_fail(err, GW_ERR_THRESHOLD_NOT_MET,
                                     "%zu valid signature(s) by trusted keys, %u needed", count,
                                     trust->threshold);
                goto fail;
        }
        reportf(p->report, p->userdata, "threshold", GW_ERR_NONE, "%zu of %u needed", count,
                trust->threshold);

        r = gw_ytree_load(buf, body_len, GW_ERR_BODY_MALFORMED, &root, err);
        if (r < 0)
                goto fail;
        r = gw_manifest_from_tree(root, &m, err);
        if (r < 0)
                goto fail;
        /* Who signed it: the sequence check below needs it too. */
        m->signers = signers;
        m->n_signers = count;
        signers = NULL;
        reportf(p->report, p->userdata, "body", GW_ERR_NONE, "%s, sequence %llu, %zu image(s)",
                m->id, (unsigned long long) m->sequence, m->n_images);

        now = p->now;
        if (p->state && p->state->latest_trusted_time > now)
                now = p->state->latest_trusted_time;
        if (now >= m->expires) {
                char a[32], b[32];

                r = gw_manifest_fail(err, GW_ERR_EXPIRED, "expired %s, trusted time is %s",
                                     format_time(m->expires, a), format_time(now, b));
                goto fail;
        }
        if (p->report) {
                char a[32], b[32];

                reportf(p->report, p->userdata, "expiry", GW_ERR_NONE,
                        "expires %s, trusted time %s", format_time(m->expires, a),
                        format_time(now, b));
        }

        r = gw_sha256(buf, len, m->sha256);
        if (r < 0) {
                r = gw_manifest_fail(err, GW_ERR_INTERNAL, "SHA-256 failed");
                goto fail;
        }

        if (p->state && p->state->has_sequence) {
                if (m->sequence < p->state->sequence) {
                        r = gw_manifest_fail(err, GW_ERR_SEQUENCE_ROLLBACK,
                                             "sequence %llu is below the last accepted %llu",
                                             (unsigned long long) m->sequence,
                                             (unsigned long long) p->state->sequence);
                        goto fail;
                }
                if (m->sequence == p->state->sequence &&
                    memcmp(m->sha256, p->state->sha256, sizeof(m->sha256)) != 0) {
                        r = gw_manifest_fail(err, GW_ERR_SEQUENCE_ROLLBACK,
                                             "sequence %llu was already used by another manifest",
                                             (unsigned long long) m->sequence);
                        goto fail;
                }
                reportf(p->report, p->userdata, "sequence", GW_ERR_NONE, "%llu, last accepted %llu",
                        (unsigned long long) m->sequence, (unsigned long long) p->state->sequence);
        } else
                reportf(p->report, p->userdata, "sequence", GW_ERR_NONE,
                        "%llu, no earlier manifest", (unsigned long long) m->sequence);

        if (p->state) {
                bool bound;
                uint64_t floor = gw_manifest_state_floor(p->state, m, &bound);

                if (bound && m->sequence <= floor) {
                        r = gw_manifest_fail(
                            err, GW_ERR_SEQUENCE_ROLLBACK,
                            "signed only by keys trusted before the last key rotation, and its "
                            "sequence %llu is not above %llu, the last they signed that was "
                            "accepted: it may be a replay (sign it with a key of the new root)",
                            (unsigned long long) m->sequence, (unsigned long long) floor);
                        goto fail;
                }
                if (bound)
                        reportf(p->report, p->userdata, "sequence", GW_ERR_NONE,
                                "%llu, above %llu, the floor of its keys from before the last "
                                "rotation",
                                (unsigned long long) m->sequence, (unsigned long long) floor);
        }

        if (p->gateway_hardware && m->n_gateway_hardware > 0) {
                bool found = false;

                for (size_t i = 0; i < m->n_gateway_hardware && !found; i++)
                        found = strcmp(m->gateway_hardware[i], p->gateway_hardware) == 0;
                if (!found) {
                        r = gw_manifest_fail(err, GW_ERR_GATEWAY_INCOMPATIBLE,
                                             "gateway hardware %s is not listed in "
                                             "gateway.hardware",
                                             p->gateway_hardware);
                        goto fail;
                }
                reportf(p->report, p->userdata, "gateway-hardware", GW_ERR_NONE, "%s is listed",
                        p->gateway_hardware);
        } else
                reportf(p->report, p->userdata, "gateway-hardware", GW_ERR_NONE, "%s",
                        m->n_gateway_hardware == 0 ? "any gateway" : "not checked");

        gw_ytree_free(root);
        gw_sigs_done(&sigs);
        *ret = m;
        return 0;
fail:
        if (p->report)
                p->report(p->userdata,
                          err->code == GW_ERR_MANIFEST_TOO_LARGE     ? "size"
                          : err->code == GW_ERR_ENVELOPE_MALFORMED   ? "envelope"
                          : err->code == GW_ERR_THRESHOLD_NOT_MET    ? "threshold"
                          : err->code == GW_ERR_EXPIRED              ? "expiry"
                          : err->code == GW_ERR_SEQUENCE_ROLLBACK    ? "sequence"
                          : err->code == GW_ERR_GATEWAY_INCOMPATIBLE ? "gateway-hardware"
                          : err->code == GW_ERR_INTERNAL             ? "internal"
                                                                     : "body",
                          err->code, err->message);
        free(signers);
        gw_manifest_free(m);
        gw_ytree_free(root);
        gw_sigs_done(&sigs);
        return r;
}
