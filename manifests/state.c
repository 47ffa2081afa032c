/* What a gateway remembers between manifests: the last accepted sequence and hash, the latest
 * trusted time, and the sequence floors of keys carried over key rotations, in
 * DIR/manifest-state ("key value" lines), replaced atomically. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "manifest-internal.h"

#define STATE_FILE     "manifest-state"
#define STATE_MAX_SIZE 16384

void gw_manifest_state_advance(struct gw_manifest_state *s, const struct gw_manifest *m, time_t now)
{
        s->has_sequence = true;
        s->sequence = m->sequence;
        memcpy(s->sha256, m->sha256, sizeof(s->sha256));
        if (now > s->latest_trusted_time)
                s->latest_trusted_time = now;
}

static const struct gw_manifest_key_floor *find_floor(const struct gw_manifest_state *s,
                                                      const char *keyid)
{
        for (size_t i = 0; i < s->n_floors; i++)
                if (strcmp(s->floors[i].keyid, keyid) == 0)
                        return &s->floors[i];
        return NULL;
}

void gw_manifest_state_rotated(struct gw_manifest_state *s, const struct gw_trust *old_root)
{
        if (old_root) {
                struct gw_manifest_key_floor next[GW_MANIFEST_MAX_KEYS];
                size_t n = 0;
                const char *id;

                for (size_t i = 0; (id = gw_trust_keyid(old_root, i)) && n < GW_MANIFEST_MAX_KEYS;
                     i++) {
                        const struct gw_manifest_key_floor *f = find_floor(s, id);
                        bool known = f || s->has_sequence;

                        if (!known)
                                continue; /* nothing was accepted under it: no floor */
                        snprintf(next[n].keyid, sizeof(next[n].keyid), "%s", id);
                        next[n].floor = f ? f->floor : 0;
                        if (s->has_sequence && s->sequence > next[n].floor)
                                next[n].floor = s->sequence;
                        n++;
                }
                memcpy(s->floors, next, n * sizeof(next[0]));
                s->n_floors = n;
        }
        s->has_sequence = false;
        s->sequence = 0;
        memset(s->sha256, 0, sizeof(s->sha256));
}

uint64_t gw_manifest_state_floor(const struct gw_manifest_state *s, const struct gw_manifest *m,
                                 bool *ret_bound)
{
        uint64_t floor = UINT64_MAX;

        *ret_bound = false;
        if (!s || s->n_floors == 0 || m->n_signers == 0)
                return 0;
        for (size_t i = 0; i < m->n_signers; i++) {
                const struct gw_manifest_key_floor *f = find_floor(s, m->signers[i]);

                if (!f)
                        return 0; /* a key the rotation brought: signed after it */
                if (f->floor < floor)
                        floor = f->floor;
        }
        *ret_bound = true;
        return floor;
}

static int parse_u64(const char *s, uint64_t *ret)
{
        char *end;
        unsigned long long v;

        if (*s < '0' || *s > '9')
                return -EBADMSG;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0')
                return -EBADMSG;
        *ret = v;
        return 0;
}

static int parse_hex32(const char *s, uint8_t ret[static 32])
{
        if (strlen(s) != 64)
                return -EBADMSG;
        for (size_t i = 0; i < 32; i++) {
                unsigned v;

                if (sscanf(s + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdef", s[2 * i]) ||
                    !strchr("0123456789abcdef", s[2 * i + 1]))
                        return -EBADMSG;
                ret[i] = (uint8_t) v;
        }
        return 0;
}

int gw_manifest_state_load(const char *dir, struct gw_manifest_state *ret)
{
        struct gw_manifest_state s = {0};
        char path[4096], *buf = NULL, *line, *save = NULL;
        size_t len = 0;
        bool have_hash = false;
        int r;

        if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE) >= sizeof(path))
                return -ENAMETOOLONG;
        r = gw_read_file(path, STATE_MAX_SIZE, &buf, &len);
        if (r == -ENOENT) {
                *ret = s;
                return 0;
        }
        if (r < 0)
                return r == -EFBIG ? -EBADMSG : r;
        if (strlen(buf) != len) {
                r = -EBADMSG;
                goto out;
        }
        for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char *value = strchr(line, ' ');
                uint64_t v;

                if (!value) {
                        r = -EBADMSG;
                        goto out;
                }
                *value++ = '\0';
                if (strcmp(line, "sequence") == 0) {
                        r = parse_u64(value, &s.sequence);
                        s.has_sequence = true;
                } else if (strcmp(line, "sha256") == 0) {
                        r = parse_hex32(value, s.sha256);
                        have_hash = true;
                } else if (strcmp(line, "key-floor") == 0) {
                        char *num = strchr(value, ' ');
                        struct gw_manifest_key_floor *f;

                        if (!num || s.n_floors == GW_MANIFEST_MAX_KEYS ||
                            (size_t) (num - value) != 64 ||
                            strspn(value, "0123456789abcdef") != 64) {
                                r = -EBADMSG;
                                goto out;
                        }
                        *num++ = '\0';
                        f = &s.floors[s.n_floors++];
                        memcpy(f->keyid, value, 65);
                        r = parse_u64(num, &f->floor);
                } else if (strcmp(line, "latest-trusted-time") == 0) {
                        r = parse_u64(value, &v);
                        if (r >= 0 && v > INT64_MAX)
                                r = -EBADMSG;
                        s.latest_trusted_time = (time_t) v;
                } else
                        r = 0; /* written by a newer version: ignored */
                if (r < 0)
                        goto out;
        }
        if (s.has_sequence != have_hash) {
                r = -EBADMSG;
                goto out;
        }
        *ret = s;
        r = 0;
out:
        free(buf);
        return r;
}

int gw_manifest_state_save(const char *dir, const struct gw_manifest_state *s)
{
        char path[4096], tmp[4096], hex[65], text[STATE_MAX_SIZE];
        int fd, dfd, n, r = 0;

        if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE) >= sizeof(path) ||
            (size_t) snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, STATE_FILE) >= sizeof(tmp))
                return -ENAMETOOLONG;
        if (s->n_floors > GW_MANIFEST_MAX_KEYS)
                return -EINVAL;
        gw_hex(s->sha256, sizeof(s->sha256), hex);
        if (s->has_sequence)
                n = snprintf(text, sizeof(text),
                             "sequence %" PRIu64 "\nsha256 %s\nlatest-trusted-time %lld\n",
                             s->sequence, hex, (long long) s->latest_trusted_time);
        else
                n = snprintf(text, sizeof(text), "latest-trusted-time %lld\n",
                             (long long) s->latest_trusted_time);
        for (size_t i = 0; i < s->n_floors && n >= 0 && (size_t) n < sizeof(text); i++) {
                int k = snprintf(text + n, sizeof(text) - (size_t) n, "key-floor %s %" PRIu64 "\n",
                                 s->floors[i].keyid, s->floors[i].floor);

                n = k < 0 ? k : n + k;
        }
        if (n < 0 || (size_t) n >= sizeof(text))
                return -EOVERFLOW;

        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        errno = 0;
        if (write(fd, text, (size_t) n) != n)
                r = errno ? -errno : -EIO;
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r >= 0)
                r = -errno;
        if (r >= 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        /* The rename is durable only once the directory is. */
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (fsync(dfd) < 0)
                r = -errno;
        close(dfd);
        return r;
}
