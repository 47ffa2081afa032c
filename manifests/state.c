/* What a gateway remembers between manifests: the last accepted sequence and hash, and the
 * latest trusted time, in DIR/manifest-state ("key value" lines), replaced atomically. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "manifest-internal.h"

#define STATE_FILE     "manifest-state"
#define STATE_MAX_SIZE 4096

void gw_manifest_state_advance(struct gw_manifest_state *s, const struct gw_manifest *m, time_t now)
{
        s->has_sequence = true;
        s->sequence = m->sequence;
        memcpy(s->sha256, m->sha256, sizeof(s->sha256));
        if (now > s->latest_trusted_time)
                s->latest_trusted_time = now;
}

void gw_manifest_state_rotated(struct gw_manifest_state *s)
{
        s->has_sequence = false;
        s->sequence = 0;
        memset(s->sha256, 0, sizeof(s->sha256));
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
        char path[4096], tmp[4096], hex[65], text[256];
        int fd, dfd, n, r = 0;

        if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE) >= sizeof(path) ||
            (size_t) snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, STATE_FILE) >= sizeof(tmp))
                return -ENAMETOOLONG;
        gw_hex(s->sha256, sizeof(s->sha256), hex);
        if (s->has_sequence)
                n = snprintf(text, sizeof(text),
                             "sequence %" PRIu64 "\nsha256 %s\nlatest-trusted-time %lld\n",
                             s->sequence, hex, (long long) s->latest_trusted_time);
        else
                n = snprintf(text, sizeof(text), "latest-trusted-time %lld\n",
                             (long long) s->latest_trusted_time);
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
