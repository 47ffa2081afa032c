/* smp-sim: a simulated MCUboot device with an SMP (mcumgr) server on its serial console, on a
 * pseudo-terminal: paced to a baud rate both ways, two image slots with MCUboot's test swap,
 * confirm and revert, img_mgmt's upload (erase, write, resume), a buffer pool of a configurable
 * size and count, boot logs and console noise, and faults from the command line or, at run time,
 * through a control FIFO or file. Written from the protocol descriptions, independently of the
 * smp plugin it tests: its own framing and CRC, libcbor's item builder for the answers. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cbor.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "cli.h"
#include "control.h"
#include "loop.h"
#include "pace.h"
#include "pty.h"

#define NSEC_PER_MSEC  1000000ULL
#define NSEC_PER_USEC  1000ULL
#define HUP_RECHECK_NS (20 * NSEC_PER_MSEC)
#define RX_QUEUE       (64 * 1024)
#define LINE_MAX_RX    127 /* what the device's line buffers take, marker and newline included */
#define QUEUE_MAX      32
#define HASH_LEN       32
#define IMAGE_MAGIC    0x96f3b83du
#define TLV_INFO       0x6907
#define TLV_PROT       0x6908
#define TLV_SHA256     0x10

/* SMP */
#define OP_READ        0
#define OP_WRITE       2
#define GROUP_OS       0
#define GROUP_IMAGE    1
#define OS_ECHO        0
#define OS_RESET       5
#define OS_PARAMS      6
#define IMG_STATE      0
#define IMG_UPLOAD     1
#define MGMT_EOK       0
#define MGMT_EUNKNOWN  1
#define MGMT_ENOMEM    2
#define MGMT_EINVAL    3
#define MGMT_ENOENT    5
#define MGMT_EBADSTATE 6
#define MGMT_ENOTSUP   8

/* img_mgmt group errors used here (SMP v2 "err"), with their v1 translation. */
enum img_err {
        IMG_OK = 0,
        IMG_UNKNOWN = 1,
        IMG_NO_IMAGE = 3,
        IMG_HASH_NOT_FOUND = 8,
        IMG_NO_FREE_SLOT = 9,
        IMG_INVALID_OFFSET = 20,
        IMG_INVALID_LENGTH = 21,
        IMG_INVALID_IMAGE_HEADER = 22,
        IMG_INVALID_IMAGE_HEADER_MAGIC = 23,
        IMG_INVALID_HASH = 24,
        IMG_CURRENT_VERSION_IS_NEWER = 27,
        IMG_IMAGE_ALREADY_PENDING = 28,
        IMG_INVALID_IMAGE_TOO_LARGE = 30,
        IMG_INVALID_IMAGE_DATA_OVERRUN = 31,
        IMG_SETTING_TEST_TO_ACTIVE_DENIED = 33,
};

static int img_err_to_v1(int e)
{
        switch (e) {
        case IMG_NO_IMAGE:
                return MGMT_ENOENT;
        case IMG_NO_FREE_SLOT:
        case IMG_CURRENT_VERSION_IS_NEWER:
        case IMG_IMAGE_ALREADY_PENDING:
                return MGMT_EBADSTATE;
        case IMG_INVALID_OFFSET:
        case IMG_INVALID_LENGTH:
        case IMG_INVALID_IMAGE_HEADER:
        case IMG_INVALID_HASH:
                return MGMT_EINVAL;
        default:
                return MGMT_EUNKNOWN;
        }
}

enum swap {
        SWAP_NONE,   /* slot 0 runs, confirmed */
        SWAP_TEST,   /* slot 1 runs once at the next reset */
        SWAP_PERM,   /* slot 1 runs from the next reset on */
        SWAP_REVERT, /* slot 0 runs a test image: the next reset swaps back */
};

static const char *const swap_names[] = {"none", "test", "perm", "revert"};

struct slot {
        uint8_t *data; /* slot_size bytes */
        uint64_t len;  /* bytes of image in it; 0 = erased */
};

/* What img_mgmt / MCUboot read of a slot. */
struct info {
        bool ok;    /* a header with the magic and a TLV area with one SHA-256 */
        bool valid; /* the SHA-256 TLV matches header, body and protected TLVs */
        char version[32];
        uint8_t major, minor;
        uint16_t revision;
        uint32_t build;
        uint8_t hash[HASH_LEN];
        uint32_t flags;
};

/* An upload in progress (img_mgmt's state: RAM, lost on a reset unless --persist-upload). */
struct upload {
        bool active;
        uint64_t off, size;
        uint8_t sha[HASH_LEN];
        size_t sha_len;
        uint64_t session_bytes; /* data written since this upload started or resumed */
        uint64_t resumed_from;
        uint64_t t0_ns;
};

struct request {
        uint8_t *pkt;
        size_t len;
        uint64_t rx_ns; /* when its first line began to arrive */
};

/* Faults waiting to fire; counts are from when they were armed. */
struct faults {
        uint64_t drop_line;    /* drop the Nth frame line received */
        uint64_t corrupt_line; /* flip a character of the Nth frame line */
        uint64_t rc_chunk;     /* answer the Nth upload request with rc_value */
        int64_t rc_value;
        uint64_t dup_response; /* send the Nth answer twice */
        uint64_t delay_ms;     /* delay the next answer */
        uint64_t reset_at;     /* reboot when an upload reaches this offset (0 = never) */
        bool crash_after_swap; /* the next test image crashes before it can be confirmed */
        bool hang_after_swap;  /* the next test image never answers */
        bool silent;           /* answer nothing (until "resume") */
        uint64_t lines, uploads, responses; /* counters since arming */
};

struct sim {
        /* configuration */
        const char *link;
        const char *report_path;
        const char *control_path;
        const char *slot0_path, *slot1_path, *dump0_path, *dump1_path;
        uint32_t baud;
        uint64_t slot_size;
        uint64_t buf_size, buf_count;
        uint64_t boot_ms, reset_delay_ms, noise_ms;
        uint64_t erase_us_per_kb, write_us_per_kb, swap_us_per_kb, turnaround_us;
        bool persist_upload;
        bool verbose;

        /* the line */
        int master;
        char slave[128];
        bool connected;
        uint64_t hup_check_ns;
        struct gw_pace *pace;
        int sigfd;
        FILE *report;
        struct gw_sim_control ctl;

        /* receiving: a line, then the frame it belongs to */
        int marker;
        bool in_line, initial;
        size_t line_len;
        uint8_t line[LINE_MAX_RX + 1];
        bool frame_open;
        size_t frame_want, frame_have;
        uint64_t line_ns, frame_ns; /* when the line, and the frame, began to arrive */
        uint64_t serving_rx_ns;     /* the request being served: when it began to arrive */
        uint8_t *frame;             /* buf_size bytes: the device's reassembly buffer */

        /* requests waiting and the one being served */
        struct request queue[QUEUE_MAX];
        size_t qhead, qlen;
        bool serving;
        uint64_t served_at_ns; /* when the head request's answer leaves */
        uint8_t *answer;       /* the head request's answer packet */
        size_t answer_len;
        bool answer_reset; /* the node resets once the answer is out */
        bool answer_none;  /* no answer: the node reboots instead */

        /* sending */
        uint8_t *tx;
        size_t tx_len, tx_cap, tx_off;
        uint64_t tx_at_ns;

        /* the device */
        struct slot slot0, slot1;
        enum swap swap;
        struct upload up;
        bool app_up;           /* the application runs and answers */
        bool hung;             /* the running image never answers */
        uint64_t off_until_ns; /* rebooting: deaf and dumb until then */
        uint64_t reset_at_ns;  /* a reset requested for then (0 = none) */
        uint64_t next_noise_ns;
        uint64_t boot_count;
        uint64_t t_start_ns;

        struct faults faults;

        /* counters for the report */
        uint64_t lines_rx, bad_lines, bad_frames, too_big, dropped_no_buffer, requests;
        uint64_t max_queued, upload_requests, upload_bytes, uploads_done, resumes;
        uint64_t resets, swaps, reverts, invalid_images, answers;
        uint64_t last_upload_bytes, last_upload_size, last_upload_resumed_from;
        uint64_t last_upload_ms;
};

#define vlog(s, ...) gw_sim_log((s)->verbose, "smp-sim", __VA_ARGS__)

static uint16_t crc16(const uint8_t *p, size_t n)
{
        uint16_t crc = 0;

        for (size_t i = 0; i < n; i++) {
                crc ^= (uint16_t) (p[i] << 8);
                for (int b = 0; b < 8; b++)
                        crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                             : (uint16_t) (crc << 1);
        }
        return crc;
}

static void sha256(const uint8_t *p, size_t n, uint8_t out[HASH_LEN])
{
        unsigned len = HASH_LEN;

        EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

static void hexstr(const uint8_t *p, size_t n, char *out)
{
        for (size_t i = 0; i < n; i++)
                sprintf(out + 2 * i, "%02x", p[i]);
        out[2 * n] = '\0';
}

static uint16_t le16(const uint8_t *p)
{
        return (uint16_t) (p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

/* ---- slots ---------------------------------------------------------------------------------- */

/* Reads a slot as img_mgmt_read_info() and MCUboot's validation would. */
static void slot_info(const struct slot *sl, struct info *in)
{
        const uint8_t *d = sl->data;
        uint64_t n = sl->len, off, end;
        uint16_t hdr_size, prot;
        uint32_t img_size;
        bool found = false;
        uint8_t calc[HASH_LEN];

        memset(in, 0, sizeof(*in));
        if (n < 32 || le32(d) != IMAGE_MAGIC)
                return;
        hdr_size = le16(d + 8);
        prot = le16(d + 10);
        img_size = le32(d + 12);
        in->flags = le32(d + 16);
        in->major = d[20];
        in->minor = d[21];
        in->revision = le16(d + 22);
        in->build = le32(d + 24);
        off = (uint64_t) hdr_size + img_size;
        if (hdr_size < 32 || off + prot + 4 > n)
                return;
        if (prot && (le16(d + off) != TLV_PROT || le16(d + off + 2) != prot))
                return;
        off += prot;
        if (le16(d + off) != TLV_INFO)
                return;
        end = off + le16(d + off + 2);
        if (end > n)
                return;
        for (uint64_t p = off + 4; p + 4 <= end;) {
                uint16_t type = le16(d + p), len = le16(d + p + 2);

                if (p + 4 + len > end)
                        return;
                if (type == TLV_SHA256 && len == HASH_LEN) {
                        if (found)
                                return;
                        memcpy(in->hash, d + p + 4, HASH_LEN);
                        found = true;
                }
                p += 4 + (uint64_t) len;
        }
        if (!found)
                return;
        in->ok = true;
        if (in->build)
                snprintf(in->version, sizeof(in->version), "%u.%u.%u.%u", in->major, in->minor,
                         in->revision, in->build);
        else
                snprintf(in->version, sizeof(in->version), "%u.%u.%u", in->major, in->minor,
                         in->revision);
        sha256(d, (size_t) off, calc);
        in->valid = memcmp(calc, in->hash, HASH_LEN) == 0;
}

static void slot_erase(struct sim *s, struct slot *sl)
{
        memset(sl->data, 0xff, s->slot_size);
        sl->len = 0;
}

static int slot_load(struct sim *s, struct slot *sl, const char *path)
{
        FILE *f = fopen(path, "rbe");
        size_t n;

        if (!f)
                return -errno;
        n = fread(sl->data, 1, s->slot_size, f);
        if (ferror(f) || (n == s->slot_size && fgetc(f) != EOF)) {
                fclose(f);
                return -EFBIG;
        }
        fclose(f);
        sl->len = n;
        return 0;
}

static int slot_dump(const struct slot *sl, const char *path)
{
        FILE *f = fopen(path, "wbe");
        int r = 0;

        if (!f)
                return -errno;
        if (sl->len && fwrite(sl->data, 1, (size_t) sl->len, f) != sl->len)
                r = -EIO;
        if (fclose(f) != 0 && r == 0)
                r = -errno;
        return r;
}

static void slot_swap(struct sim *s)
{
        struct slot t = s->slot0;

        s->slot0 = s->slot1;
        s->slot1 = t;
}

/* ---- report --------------------------------------------------------------------------------- */

static void report_line(struct sim *s, json_t *j)
{
        char *line = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

        if (line) {
                fprintf(s->report, "%s\n", line);
                fflush(s->report);
        }
        free(line);
        json_decref(j);
}

static void add_slot(json_t *j, const char *prefix, const struct slot *sl, bool pending,
                     bool confirmed, bool active)
{
        struct info in;
        char key[32], h[2 * HASH_LEN + 1];

        slot_info(sl, &in);
        hexstr(in.hash, HASH_LEN, h);
        snprintf(key, sizeof(key), "%s_version", prefix);
        json_object_set_new(j, key, in.ok ? json_string(in.version) : json_null());
        snprintf(key, sizeof(key), "%s_hash", prefix);
        json_object_set_new(j, key, in.ok ? json_string(h) : json_null());
        snprintf(key, sizeof(key), "%s_valid", prefix);
        json_object_set_new(j, key, json_boolean(in.ok && in.valid));
        snprintf(key, sizeof(key), "%s_pending", prefix);
        json_object_set_new(j, key, json_boolean(pending));
        snprintf(key, sizeof(key), "%s_confirmed", prefix);
        json_object_set_new(j, key, json_boolean(confirmed));
        snprintf(key, sizeof(key), "%s_active", prefix);
        json_object_set_new(j, key, json_boolean(active));
        snprintf(key, sizeof(key), "%s_bytes", prefix);
        json_object_set_new(j, key, json_integer((json_int_t) sl->len));
}

/* One flat line (tools/lib/common.sh's gw_report_field reads flat lines): the slots, their
 * flags as img_mgmt reports them, and the counters. */
static void report_state(struct sim *s, const char *event)
{
        json_t *j = json_object();

        if (!j)
                return;
        json_object_set_new(j, "event", json_string(event));
        json_object_set_new(j, "swap", json_string(swap_names[s->swap]));
        add_slot(j, "slot0", &s->slot0, false, s->swap != SWAP_REVERT, true);
        add_slot(j, "slot1", &s->slot1, s->swap == SWAP_TEST || s->swap == SWAP_PERM,
                 s->swap == SWAP_REVERT, false);
#define COUNTER(name) json_object_set_new(j, #name, json_integer((json_int_t) s->name))
        COUNTER(boot_count);
        COUNTER(resets);
        COUNTER(swaps);
        COUNTER(reverts);
        COUNTER(invalid_images);
        COUNTER(requests);
        COUNTER(answers);
        COUNTER(upload_requests);
        COUNTER(upload_bytes);
        COUNTER(uploads_done);
        COUNTER(resumes);
        COUNTER(last_upload_size);
        COUNTER(last_upload_bytes);
        COUNTER(last_upload_resumed_from);
        COUNTER(last_upload_ms);
        COUNTER(max_queued);
        COUNTER(dropped_no_buffer);
        COUNTER(lines_rx);
        COUNTER(bad_lines);
        COUNTER(bad_frames);
        COUNTER(too_big);
        COUNTER(buf_size);
        COUNTER(buf_count);
        COUNTER(baud);
#undef COUNTER
        json_object_set_new(j, "upload_in_progress", json_boolean(s->up.active));
        json_object_set_new(j, "upload_off", json_integer((json_int_t) s->up.off));
        report_line(s, j);
}

/* ---- sending -------------------------------------------------------------------------------- */

static void tx_append(struct sim *s, const void *p, size_t n)
{
        if (s->tx_off == s->tx_len)
                s->tx_off = s->tx_len = 0;
        if (s->tx_len + n > s->tx_cap) {
                size_t cap = s->tx_cap ? s->tx_cap : 4096;
                uint8_t *t;

                while (cap < s->tx_len + n)
                        cap *= 2;
                t = realloc(s->tx, cap);
                if (!t)
                        return; /* the bytes are lost, like a full UART FIFO */
                s->tx = t;
                s->tx_cap = cap;
        }
        memcpy(s->tx + s->tx_len, p, n);
        s->tx_len += n;
}

/* A console line (a log message): only between frames, as the device's console does it. */
static void console_line(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void console_line(struct sim *s, const char *fmt, ...)
{
        char buf[200];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t) n > sizeof(buf) - 3)
                n = (int) sizeof(buf) - 3;
        buf[n++] = '\r';
        buf[n++] = '\n';
        tx_append(s, buf, (size_t) n);
}

/* A packet as SMP-over-console lines: length, packet and CRC in base64 groups of at most 93 raw
 * bytes a line (127 bytes with marker and newline), the CRC kept whole in the last line. */
static void tx_packet(struct sim *s, const uint8_t *pkt, size_t len)
{
        size_t total = len + 4, off = 0;
        uint8_t *raw = malloc(total);
        uint16_t crc = crc16(pkt, len);

        if (!raw)
                return;
        raw[0] = (uint8_t) ((len + 2) >> 8);
        raw[1] = (uint8_t) (len + 2);
        memcpy(raw + 2, pkt, len);
        raw[2 + len] = (uint8_t) (crc >> 8);
        raw[3 + len] = (uint8_t) crc;
        for (bool first = true; off < total; first = false) {
                size_t n = total - off > 93 ? 93 : total - off;
                unsigned char b64[125];
                int w;

                /* Never leave the CRC's second byte alone on a last line. */
                if (total - off - n == 1)
                        n -= 3;
                w = EVP_EncodeBlock(b64, raw + off, (int) n);
                tx_append(s, first ? "\x06\x09" : "\x04\x14", 2);
                tx_append(s, b64, (size_t) w);
                tx_append(s, "\n", 1);
                off += n;
        }
        free(raw);
}

static void flush_tx(struct sim *s)
{
        size_t n;
        ssize_t r;

        if (s->tx_off == s->tx_len || gw_sim_now_ns() < s->tx_at_ns)
                return;
        n = s->tx_len - s->tx_off;
        if (n > 16)
                n = 16;
        if (s->connected) {
                r = gw_pace_write(s->pace, s->master, s->tx + s->tx_off, n);
                if (r == -EIO)
                        s->connected = false;
        }
        s->tx_off += n;
}

/* ---- answers ------------------------------------------------------------------------------- */

static cbor_item_t *uint_item(uint64_t v)
{
        if (v <= UINT8_MAX)
                return cbor_build_uint8((uint8_t) v);
        if (v <= UINT16_MAX)
                return cbor_build_uint16((uint16_t) v);
        if (v <= UINT32_MAX)
                return cbor_build_uint32((uint32_t) v);
        return cbor_build_uint64(v);
}

static void put(cbor_item_t *map, const char *key, cbor_item_t *value)
{
        cbor_map_add(map, (struct cbor_pair){.key = cbor_move(cbor_build_string(key)),
                                             .value = cbor_move(value)});
}

/* Sets the head request's answer: header from the request, body from map (consumed). */
static void set_answer(struct sim *s, const uint8_t *req, cbor_item_t *map)
{
        unsigned char *body = NULL;
        size_t size = 0, n;

        n = map ? cbor_serialize_alloc(map, &body, &size) : 0;
        if (map)
                cbor_decref(&map);
        free(s->answer);
        s->answer = malloc(8 + n);
        if (!s->answer) {
                free(body);
                s->answer_len = 0;
                return;
        }
        memcpy(s->answer, req, 8);
        s->answer[0] = (uint8_t) ((req[0] & 0x18) | ((req[0] & 7) + 1));
        s->answer[2] = (uint8_t) (n >> 8);
        s->answer[3] = (uint8_t) n;
        if (n)
                memcpy(s->answer + 8, body, n);
        s->answer_len = 8 + n;
        free(body);
}

/* An error answer: {"rc": N} for SMP v1 requests, {"err": {"group", "rc"}} for v2. */
static void set_error(struct sim *s, const uint8_t *req, uint16_t group, int img_rc, int v1_rc)
{
        cbor_item_t *m = cbor_new_definite_map(1);

        if ((req[0] >> 3 & 3) >= 1) {
                cbor_item_t *e = cbor_new_definite_map(2);

                put(e, "group", uint_item(group));
                put(e, "rc", uint_item((uint64_t) img_rc));
                put(m, "err", e);
        } else {
                put(m, "rc", uint_item((uint64_t) v1_rc));
        }
        set_answer(s, req, m);
}

static void set_img_error(struct sim *s, const uint8_t *req, int img_rc)
{
        set_error(s, req, GROUP_IMAGE, img_rc, img_err_to_v1(img_rc));
}

static const cbor_item_t *map_get(const cbor_item_t *map, const char *key)
{
        struct cbor_pair *p;
        size_t n = strlen(key);

        if (!map || !cbor_isa_map(map))
                return NULL;
        p = cbor_map_handle(map);
        for (size_t i = 0; i < cbor_map_size(map); i++)
                if (cbor_isa_string(p[i].key) && cbor_string_is_definite(p[i].key) &&
                    cbor_string_length(p[i].key) == n &&
                    memcmp(cbor_string_handle(p[i].key), key, n) == 0)
                        return p[i].value;
        return NULL;
}

static bool get_u64(const cbor_item_t *v, uint64_t *ret)
{
        if (!v || !cbor_isa_uint(v))
                return false;
        *ret = cbor_get_int(v);
        return true;
}

static bool get_bstr(const cbor_item_t *v, const uint8_t **ret, size_t *len)
{
        if (!v || !cbor_isa_bytestring(v) || !cbor_bytestring_is_definite(v))
                return false;
        *ret = cbor_bytestring_handle(v);
        *len = cbor_bytestring_length(v);
        return true;
}

/* The images list of img_mgmt's state read: slot 0 active, flags from the swap state. */
static cbor_item_t *state_map(struct sim *s)
{
        cbor_item_t *m = cbor_new_definite_map(2), *list = cbor_new_definite_array(2);
        const struct slot *slots[2] = {&s->slot0, &s->slot1};

        for (int i = 0; i < 2; i++) {
                struct info in;
                cbor_item_t *e;
                bool pending = false, confirmed = false, active = i == 0, permanent = false;

                slot_info(slots[i], &in);
                if (!in.ok)
                        continue;
                if (i == 0)
                        confirmed = s->swap != SWAP_REVERT;
                else if (s->swap == SWAP_TEST)
                        pending = true;
                else if (s->swap == SWAP_PERM)
                        pending = permanent = true;
                else if (s->swap == SWAP_REVERT)
                        confirmed = true;
                e = cbor_new_definite_map(8);
                put(e, "slot", uint_item((uint64_t) i));
                put(e, "version", cbor_build_string(in.version));
                put(e, "hash", cbor_build_bytestring(in.hash, HASH_LEN));
                put(e, "bootable", cbor_build_bool(!(in.flags & 0x10)));
                put(e, "pending", cbor_build_bool(pending));
                put(e, "confirmed", cbor_build_bool(confirmed));
                put(e, "active", cbor_build_bool(active));
                put(e, "permanent", cbor_build_bool(permanent));
                cbor_array_push(list, cbor_move(e));
        }
        put(m, "images", list);
        put(m, "splitStatus", uint_item(0));
        return m;
}

/* img_mgmt's state write: which slot boots next, and how. */
static void state_write(struct sim *s, const uint8_t *req, const cbor_item_t *body)
{
        const cbor_item_t *h = map_get(body, "hash"), *c = map_get(body, "confirm");
        const uint8_t *hash = NULL;
        size_t hash_len = 0;
        bool confirm = c && cbor_is_bool(c) && cbor_get_bool(c);
        int slot = -1;

        if (h && !get_bstr(h, &hash, &hash_len)) {
                set_img_error(s, req, IMG_INVALID_HASH);
                return;
        }
        if (!hash) {
                if (!confirm) {
                        set_img_error(s, req, IMG_INVALID_HASH);
                        return;
                }
                slot = 0;
        } else if (hash_len != HASH_LEN) {
                set_img_error(s, req, IMG_INVALID_HASH);
                return;
        } else {
                struct info in0, in1;

                slot_info(&s->slot0, &in0);
                slot_info(&s->slot1, &in1);
                if (in0.ok && memcmp(in0.hash, hash, HASH_LEN) == 0)
                        slot = 0;
                else if (in1.ok && memcmp(in1.hash, hash, HASH_LEN) == 0)
                        slot = 1;
                else {
                        set_img_error(s, req, IMG_HASH_NOT_FOUND);
                        return;
                }
        }
        if (slot == 0) {
                if (!confirm) {
                        set_img_error(s, req, IMG_SETTING_TEST_TO_ACTIVE_DENIED);
                        return;
                }
                if (s->swap == SWAP_TEST || s->swap == SWAP_PERM) {
                        set_img_error(s, req, IMG_IMAGE_ALREADY_PENDING);
                        return;
                }
                if (s->swap == SWAP_REVERT)
                        vlog(s, "image in slot 0 confirmed");
                s->swap = SWAP_NONE;
        } else {
                switch (s->swap) {
                case SWAP_NONE:
                        s->swap = confirm ? SWAP_PERM : SWAP_TEST;
                        vlog(s, "slot 1 marked %s", confirm ? "permanent" : "for test");
                        break;
                case SWAP_TEST:
                        if (confirm) {
                                set_img_error(s, req, IMG_IMAGE_ALREADY_PENDING);
                                return;
                        }
                        break;
                case SWAP_PERM:
                case SWAP_REVERT:
                        if (!confirm) {
                                set_img_error(s, req, IMG_IMAGE_ALREADY_PENDING);
                                return;
                        }
                        break;
                }
        }
        set_answer(s, req, state_map(s));
}

static void reboot(struct sim *s, const char *why);

/* img_mgmt's upload. Returns the time it takes (erase, write), in ns. */
static uint64_t upload(struct sim *s, const uint8_t *req, const cbor_item_t *body)
{
        const cbor_item_t *v;
        uint64_t off, len = UINT64_MAX, t = 0;
        const uint8_t *data = NULL, *sha = NULL;
        size_t data_len = 0, sha_len = 0;
        cbor_item_t *m;

        s->upload_requests++;
        s->faults.uploads++;
        if (s->faults.rc_chunk && s->faults.uploads == s->faults.rc_chunk) {
                vlog(s, "fault: answering upload request %" PRIu64 " with rc %" PRId64,
                     s->faults.uploads, s->faults.rc_value);
                s->faults.rc_chunk = 0;
                m = cbor_new_definite_map(1);
                put(m, "rc", uint_item((uint64_t) s->faults.rc_value));
                set_answer(s, req, m);
                return 0;
        }
        if (!get_u64(map_get(body, "off"), &off)) {
                set_img_error(s, req, IMG_INVALID_OFFSET);
                return 0;
        }
        v = map_get(body, "data");
        if (v && !get_bstr(v, &data, &data_len)) {
                set_error(s, req, GROUP_IMAGE, IMG_UNKNOWN, MGMT_EINVAL);
                return 0;
        }
        get_u64(map_get(body, "len"), &len);
        v = map_get(body, "sha");
        if (v && !get_bstr(v, &sha, &sha_len)) {
                set_img_error(s, req, IMG_INVALID_HASH);
                return 0;
        }
        if (off == 0) {
                const cbor_item_t *u = map_get(body, "upgrade");

                if (data_len < 32) {
                        set_img_error(s, req, IMG_INVALID_IMAGE_HEADER);
                        return 0;
                }
                if (len == UINT64_MAX) {
                        set_img_error(s, req, IMG_INVALID_LENGTH);
                        return 0;
                }
                if (le32(data) != IMAGE_MAGIC) {
                        set_img_error(s, req, IMG_INVALID_IMAGE_HEADER_MAGIC);
                        return 0;
                }
                if (sha_len > HASH_LEN) {
                        set_img_error(s, req, IMG_INVALID_HASH);
                        return 0;
                }
                if (sha_len > 0 && s->up.active && s->up.sha_len == sha_len &&
                    memcmp(s->up.sha, sha, sha_len) == 0) {
                        vlog(s, "upload resumes at %" PRIu64, s->up.off);
                        s->resumes++;
                        s->up.session_bytes = 0;
                        s->up.resumed_from = s->up.off;
                        s->up.t0_ns = s->serving_rx_ns;
                        goto answer;
                }
                if (s->swap != SWAP_NONE) {
                        set_img_error(s, req, IMG_NO_FREE_SLOT);
                        return 0;
                }
                if (len > s->slot_size) {
                        set_img_error(s, req, IMG_INVALID_IMAGE_TOO_LARGE);
                        return 0;
                }
                if (u && cbor_is_bool(u) && cbor_get_bool(u)) {
                        struct info in;

                        slot_info(&s->slot0, &in);
                        if (in.ok &&
                            (in.major > data[20] ||
                             (in.major == data[20] &&
                              (in.minor > data[21] ||
                               (in.minor == data[21] && in.revision >= le16(data + 22)))))) {
                                set_img_error(s, req, IMG_CURRENT_VERSION_IS_NEWER);
                                return 0;
                        }
                }
                /* A new upload: the slot is erased for the whole image at once. */
                slot_erase(s, &s->slot1);
                t += s->erase_us_per_kb * ((len + 1023) / 1024) * NSEC_PER_USEC;
                s->up = (struct upload){
                    .active = true,
                    .size = len,
                    .sha_len = sha_len,
                    .t0_ns = s->serving_rx_ns,
                };
                memcpy(s->up.sha, sha, sha_len);
                vlog(s, "upload of %" PRIu64 " bytes starts", len);
        } else {
                if (off != s->up.off) {
                        vlog(s, "upload at %" PRIu64 ", expected %" PRIu64 ": data dropped", off,
                             s->up.off);
                        goto answer;
                }
                if (off + data_len > s->up.size) {
                        set_img_error(s, req, IMG_INVALID_IMAGE_DATA_OVERRUN);
                        return 0;
                }
        }
        if (data_len) {
                if (s->faults.reset_at && s->up.off + data_len >= s->faults.reset_at) {
                        vlog(s, "fault: reset at upload offset %" PRIu64, s->up.off + data_len);
                        s->faults.reset_at = 0;
                        s->answer_none = true;
                        reboot(s, "reset-at fault");
                        return 0;
                }
                memcpy(s->slot1.data + s->up.off, data, data_len);
                s->up.off += data_len;
                s->slot1.len = s->up.off;
                s->up.session_bytes += data_len;
                s->upload_bytes += data_len;
                t += s->write_us_per_kb * data_len * NSEC_PER_USEC / 1024;
        }
answer:
        m = cbor_new_definite_map(3);
        if ((req[0] >> 3 & 3) == 0)
                put(m, "rc", uint_item(0));
        put(m, "off", uint_item(s->up.off));
        if (s->up.active && s->up.off == s->up.size && s->up.size > 0 && data_len > 0) {
                uint8_t h[HASH_LEN];
                bool match = true;

                sha256(s->slot1.data, (size_t) s->up.size, h);
                if (s->up.sha_len > 0)
                        match = memcmp(h, s->up.sha, s->up.sha_len) == 0;
                put(m, "match", cbor_build_bool(match));
                s->uploads_done++;
                s->last_upload_size = s->up.size;
                s->last_upload_bytes = s->up.session_bytes;
                s->last_upload_resumed_from = s->up.resumed_from;
                /* From the first line of the first request to this answer's leaving. */
                s->last_upload_ms =
                    (gw_sim_now_ns() + t + s->turnaround_us * NSEC_PER_USEC - s->up.t0_ns) /
                    NSEC_PER_MSEC;
                vlog(s, "upload complete: %" PRIu64 " bytes (%" PRIu64 " this session)", s->up.size,
                     s->up.session_bytes);
                memset(&s->up, 0, sizeof(s->up));
                report_state(s, "upload");
        }
        set_answer(s, req, m);
        return t;
}

/* Serves one request: sets s->answer and returns the time the device takes. */
static uint64_t serve(struct sim *s, const uint8_t *pkt, size_t len)
{
        uint8_t op = pkt[0] & 7;
        uint16_t group = (uint16_t) (pkt[4] << 8 | pkt[5]);
        uint8_t id = pkt[7];
        size_t body_len = (size_t) pkt[2] << 8 | pkt[3];
        struct cbor_load_result lr;
        cbor_item_t *body = NULL;
        uint64_t t = s->turnaround_us * NSEC_PER_USEC;

        s->requests++;
        if (body_len) {
                body = cbor_load(pkt + 8, body_len, &lr);
                if (!body || !cbor_isa_map(body)) {
                        if (body)
                                cbor_decref(&body);
                        set_error(s, pkt, group, 1, MGMT_EINVAL);
                        return t;
                }
        }
        if (group == GROUP_OS && id == OS_PARAMS && op == OP_READ) {
                cbor_item_t *m = cbor_new_definite_map(2);

                put(m, "buf_size", uint_item(s->buf_size));
                put(m, "buf_count", uint_item(s->buf_count));
                set_answer(s, pkt, m);
        } else if (group == GROUP_OS && id == OS_ECHO && op == OP_WRITE) {
                cbor_item_t *m = cbor_new_definite_map(1);
                const cbor_item_t *d = map_get(body, "d");

                if (d && cbor_isa_string(d) && cbor_string_is_definite(d))
                        put(m, "r",
                            cbor_build_stringn((const char *) cbor_string_handle(d),
                                               cbor_string_length(d)));
                else
                        put(m, "r", cbor_build_string(""));
                set_answer(s, pkt, m);
        } else if (group == GROUP_OS && id == OS_RESET && op == OP_WRITE) {
                set_answer(s, pkt, cbor_new_definite_map(0));
                s->answer_reset = true;
        } else if (group == GROUP_IMAGE && id == IMG_STATE && op == OP_READ) {
                set_answer(s, pkt, state_map(s));
        } else if (group == GROUP_IMAGE && id == IMG_STATE && op == OP_WRITE) {
                state_write(s, pkt, body);
        } else if (group == GROUP_IMAGE && id == IMG_UPLOAD && op == OP_WRITE) {
                t += upload(s, pkt, body);
        } else {
                set_error(s, pkt, group, 1, MGMT_ENOTSUP);
        }
        if (body)
                cbor_decref(&body);
        return t;
}

/* ---- boot ------------------------------------------------------------------------------------ */

static void drop_queue(struct sim *s)
{
        for (size_t i = 0; i < s->qlen; i++)
                free(s->queue[(s->qhead + i) % QUEUE_MAX].pkt);
        s->qhead = s->qlen = 0;
        s->serving = false;
        s->answer_len = 0;
        s->answer_reset = false;
}

/* The device goes down now: MCUboot decides what runs, the application comes up after the
 * boot time (and the swap time). */
static void reboot(struct sim *s, const char *why)
{
        uint64_t t = s->boot_ms * NSEC_PER_MSEC, kb = 0;
        struct info in1;

        vlog(s, "reset (%s)", why);
        s->resets++;
        s->app_up = false;
        s->hung = false;
        drop_queue(s);
        s->frame_open = false;
        s->in_line = false;
        s->marker = -1;
        if (!s->persist_upload)
                memset(&s->up, 0, sizeof(s->up));
        console_line(s, "*** Booting MCUboot v2.0.0 ***");
        console_line(s, "I: Starting bootloader");
        console_line(s,
                     "I: Primary image: magic=good, swap_type=0x%x, copy_done=0x3, image_ok=0x%x",
                     s->swap == SWAP_TEST   ? 2
                     : s->swap == SWAP_PERM ? 3
                                            : 1,
                     s->swap == SWAP_REVERT ? 3 : 1);
        switch (s->swap) {
        case SWAP_TEST:
        case SWAP_PERM:
                slot_info(&s->slot1, &in1);
                if (!in1.ok || !in1.valid) {
                        console_line(s, "E: Image in the secondary slot is not valid!");
                        slot_erase(s, &s->slot1);
                        s->invalid_images++;
                        s->swap = SWAP_NONE;
                        break;
                }
                console_line(s, "I: Swap type: %s", s->swap == SWAP_TEST ? "test" : "perm");
                kb = (s->slot0.len + s->slot1.len + 1023) / 1024;
                slot_swap(s);
                s->swaps++;
                t += s->swap_us_per_kb * kb * NSEC_PER_USEC;
                s->swap = s->swap == SWAP_TEST ? SWAP_REVERT : SWAP_NONE;
                if (s->swap == SWAP_REVERT && s->faults.crash_after_swap) {
                        /* The new application faults before anything confirms it; the watchdog
                         * resets the board and MCUboot swaps back. */
                        s->faults.crash_after_swap = false;
                        console_line(s, "I: Jumping to the first image slot");
                        console_line(s, "*** Booting Zephyr OS build v3.5.0 ***");
                        console_line(s, "E: ***** HARD FAULT *****");
                        console_line(s, "E: Halting system");
                        console_line(s, "*** Booting MCUboot v2.0.0 ***");
                        console_line(s, "I: Swap type: revert");
                        slot_swap(s);
                        s->swaps++;
                        s->reverts++;
                        s->swap = SWAP_NONE;
                        t += s->boot_ms * NSEC_PER_MSEC + s->swap_us_per_kb * kb * NSEC_PER_USEC;
                } else if (s->swap == SWAP_REVERT && s->faults.hang_after_swap) {
                        s->faults.hang_after_swap = false;
                        s->hung = true;
                }
                break;
        case SWAP_REVERT:
                console_line(s, "I: Swap type: revert");
                kb = (s->slot0.len + s->slot1.len + 1023) / 1024;
                slot_swap(s);
                s->swaps++;
                s->reverts++;
                t += s->swap_us_per_kb * kb * NSEC_PER_USEC;
                s->swap = SWAP_NONE;
                break;
        case SWAP_NONE:
                console_line(s, "I: Swap type: none");
                break;
        }
        console_line(s, "I: Bootloader chainload address offset: 0xc000");
        console_line(s, "I: Jumping to the first image slot");
        s->off_until_ns = gw_sim_now_ns() + t;
        /* What it printed leaves once it is up again. */
        s->tx_at_ns = s->off_until_ns;
}

/* The application runs: its banner, then it serves SMP. */
static void app_start(struct sim *s)
{
        struct info in0;

        s->off_until_ns = 0;
        s->app_up = true;
        s->boot_count++;
        slot_info(&s->slot0, &in0);
        console_line(s, "*** Booting Zephyr OS build v3.5.0 ***");
        console_line(s, "[00:00:00.003,000] <inf> app: running %s%s", in0.ok ? in0.version : "?",
                     s->hung ? " (stuck)" : "");
        vlog(s, "application %s up%s", in0.ok ? in0.version : "?", s->hung ? ", hung" : "");
        report_state(s, "boot");
        if (s->noise_ms)
                s->next_noise_ns = gw_sim_now_ns() + s->noise_ms * NSEC_PER_MSEC;
}

/* ---- receiving ------------------------------------------------------------------------------ */

static void enqueue(struct sim *s, const uint8_t *pkt, size_t len)
{
        /* One buffer always stays for the answer being built (at least one for requests). */
        size_t cap = s->buf_count > 1 ? (size_t) s->buf_count - 1 : 1;
        struct request *r;

        if (len < 8 || ((size_t) pkt[2] << 8 | pkt[3]) != len - 8) {
                s->bad_frames++;
                return;
        }
        if (s->qlen >= cap || s->qlen >= QUEUE_MAX) {
                s->dropped_no_buffer++;
                vlog(s, "no free buffer: request dropped");
                return;
        }
        r = &s->queue[(s->qhead + s->qlen) % QUEUE_MAX];
        r->pkt = malloc(len);
        if (!r->pkt)
                return;
        memcpy(r->pkt, pkt, len);
        r->len = len;
        r->rx_ns = s->frame_ns;
        s->qlen++;
        if (s->qlen > s->max_queued)
                s->max_queued = s->qlen;
}

static bool b64_char(uint8_t c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '/' || c == '=';
}

/* One frame line (without marker and newline) into the reassembly buffer. */
static void take_line(struct sim *s)
{
        uint8_t raw[LINE_MAX_RX];
        int n;
        size_t pad = 0;

        s->lines_rx++;
        s->faults.lines++;
        if (s->faults.drop_line && s->faults.lines == s->faults.drop_line) {
                vlog(s, "fault: line %" PRIu64 " dropped", s->faults.lines);
                s->faults.drop_line = 0;
                return;
        }
        if (s->faults.corrupt_line && s->faults.lines == s->faults.corrupt_line && s->line_len) {
                vlog(s, "fault: line %" PRIu64 " corrupted", s->faults.lines);
                s->faults.corrupt_line = 0;
                s->line[s->line_len / 2] = s->line[s->line_len / 2] == 'A' ? 'B' : 'A';
        }
        if (s->line_len == 0 || s->line_len % 4) {
                s->bad_lines++;
                s->frame_open = false;
                return;
        }
        if (s->line[s->line_len - 1] == '=')
                pad = s->line[s->line_len - 2] == '=' ? 2 : 1;
        n = EVP_DecodeBlock(raw, s->line, (int) s->line_len);
        if (n < 0) {
                s->bad_lines++;
                s->frame_open = false;
                return;
        }
        n -= (int) pad;
        if (s->initial) {
                if (n < 2) {
                        s->bad_lines++;
                        return;
                }
                s->frame_want = (size_t) raw[0] << 8 | raw[1];
                s->frame_have = 0;
                s->frame_open = true;
                s->frame_ns = s->line_ns;
                /* The decoded frame must fit the device's buffer, length field included. */
                if (s->frame_want + 2 > s->buf_size) {
                        s->too_big++;
                        s->frame_open = false;
                        vlog(s, "frame of %zu bytes does not fit the %" PRIu64 "-byte buffer",
                             s->frame_want + 2, s->buf_size);
                        return;
                }
                memmove(raw, raw + 2, (size_t) n - 2);
                n -= 2;
        } else if (!s->frame_open) {
                s->bad_lines++;
                return;
        }
        if (s->frame_have + (size_t) n > s->frame_want) {
                s->bad_frames++;
                s->frame_open = false;
                return;
        }
        memcpy(s->frame + s->frame_have, raw, (size_t) n);
        s->frame_have += (size_t) n;
        if (s->frame_have < s->frame_want)
                return;
        s->frame_open = false;
        if (s->frame_want < 2 || crc16(s->frame, s->frame_want) != 0) {
                s->bad_frames++;
                vlog(s, "frame with a bad CRC dropped");
                return;
        }
        enqueue(s, s->frame, s->frame_want - 2);
}

static void rx_byte(struct sim *s, uint8_t c, uint64_t now)
{
        if (s->in_line) {
                if (c == '\n') {
                        s->in_line = false;
                        take_line(s);
                        return;
                }
                if (b64_char(c) && s->line_len < LINE_MAX_RX - 3) {
                        s->line[s->line_len++] = c;
                        return;
                }
                /* Too long, or not base64: the line is lost and the packet with it. */
                s->in_line = false;
                s->bad_lines++;
                s->frame_open = false;
        }
        if (s->marker == 0x06 && c == 0x09) {
                s->line_ns = now;
                s->in_line = true;
                s->initial = true;
                s->line_len = 0;
                s->marker = -1;
                return;
        }
        if (s->marker == 0x04 && c == 0x14) {
                s->in_line = true;
                s->initial = false;
                s->line_len = 0;
                s->marker = -1;
                return;
        }
        s->marker = c == 0x06 || c == 0x04 ? c : -1;
}

/* ---- the device's work ---------------------------------------------------------------------- */

static void work(struct sim *s, uint64_t now)
{
        if (s->reset_at_ns && now >= s->reset_at_ns) {
                s->reset_at_ns = 0;
                reboot(s, "os reset");
                return;
        }
        if (s->off_until_ns) {
                if (now < s->off_until_ns)
                        return;
                app_start(s);
        }
        if (!s->app_up)
                return;
        if (s->noise_ms && now >= s->next_noise_ns && s->tx_off == s->tx_len) {
                console_line(s, "[%08.3f] <inf> app: heartbeat",
                             (double) (now - s->t_start_ns) / 1e9);
                s->next_noise_ns = now + s->noise_ms * NSEC_PER_MSEC;
        }
        if (s->serving && now >= s->served_at_ns) {
                struct request *r = &s->queue[s->qhead];
                bool reset = s->answer_reset;

                if (!s->faults.silent && !s->hung && s->answer_len) {
                        uint64_t delay = 0;

                        if (s->faults.delay_ms) {
                                delay = s->faults.delay_ms * NSEC_PER_MSEC;
                                vlog(s, "fault: answer delayed by %" PRIu64 " ms",
                                     s->faults.delay_ms);
                                s->faults.delay_ms = 0;
                        }
                        if (now + delay > s->tx_at_ns)
                                s->tx_at_ns = now + delay;
                        tx_packet(s, s->answer, s->answer_len);
                        s->answers++;
                        s->faults.responses++;
                        if (s->faults.dup_response &&
                            s->faults.responses == s->faults.dup_response) {
                                vlog(s, "fault: answer sent twice");
                                s->faults.dup_response = 0;
                                tx_packet(s, s->answer, s->answer_len);
                        }
                }
                free(r->pkt);
                s->qhead = (s->qhead + 1) % QUEUE_MAX;
                s->qlen--;
                s->serving = false;
                s->answer_reset = false;
                if (reset)
                        s->reset_at_ns = now + s->reset_delay_ms * NSEC_PER_MSEC;
        }
        if (!s->serving && s->qlen > 0 && !s->reset_at_ns) {
                struct request *r = &s->queue[s->qhead];
                uint64_t t;

                s->answer_len = 0;
                s->answer_none = false;
                s->serving_rx_ns = r->rx_ns;
                t = serve(s, r->pkt, r->len);
                if (s->answer_none) {
                        s->answer_none = false;
                        return; /* rebooted */
                }
                s->serving = true;
                s->served_at_ns = now + t;
        }
}

static uint64_t next_event(const struct sim *s)
{
        uint64_t t = UINT64_MAX;

        if (s->reset_at_ns && s->reset_at_ns < t)
                t = s->reset_at_ns;
        if (s->off_until_ns && s->off_until_ns < t)
                t = s->off_until_ns;
        if (s->serving && s->served_at_ns < t)
                t = s->served_at_ns;
        if (!s->serving && s->qlen > 0 && s->app_up)
                t = 0;
        if (s->tx_off < s->tx_len) {
                uint64_t at = s->tx_at_ns;

                if (at < t)
                        t = at;
        }
        if (s->app_up && s->noise_ms && s->next_noise_ns < t)
                t = s->next_noise_ns;
        return t;
}

/* ---- control ------------------------------------------------------------------------------- */

static int apply_command(struct sim *s, const char *cmd, const char *arg, const char *arg2)
{
        uint64_t v = 0;
        bool flag = strcmp(cmd, "crash-after-swap") == 0 || strcmp(cmd, "hang-after-swap") == 0 ||
                    strcmp(cmd, "silent") == 0 || strcmp(cmd, "resume") == 0 ||
                    strcmp(cmd, "reset") == 0 || strcmp(cmd, "report") == 0;

        if (!flag && gw_sim_parse_u64(arg, 10, UINT32_MAX, &v) < 0)
                return -EINVAL;
        if (flag && arg && *arg)
                return -EINVAL;
        if (strcmp(cmd, "drop-line") == 0 && v > 0) {
                s->faults.drop_line = v;
                s->faults.lines = 0;
        } else if (strcmp(cmd, "corrupt-line") == 0 && v > 0) {
                s->faults.corrupt_line = v;
                s->faults.lines = 0;
        } else if (strcmp(cmd, "rc-chunk") == 0 && v > 0) {
                uint64_t rc;

                if (gw_sim_parse_u64(arg2, 10, 1000, &rc) < 0)
                        return -EINVAL;
                s->faults.rc_chunk = v;
                s->faults.rc_value = (int64_t) rc;
                s->faults.uploads = 0;
        } else if (strcmp(cmd, "dup-response") == 0 && v > 0) {
                s->faults.dup_response = v;
                s->faults.responses = 0;
        } else if (strcmp(cmd, "delay") == 0) {
                s->faults.delay_ms = v;
        } else if (strcmp(cmd, "reset-at") == 0 && v > 0) {
                s->faults.reset_at = v;
        } else if (strcmp(cmd, "crash-after-swap") == 0) {
                s->faults.crash_after_swap = true;
        } else if (strcmp(cmd, "hang-after-swap") == 0) {
                s->faults.hang_after_swap = true;
        } else if (strcmp(cmd, "silent") == 0) {
                s->faults.silent = true;
        } else if (strcmp(cmd, "resume") == 0) {
                s->faults.silent = false;
                s->hung = false;
        } else if (strcmp(cmd, "reset") == 0) {
                s->reset_at_ns = gw_sim_now_ns();
        } else if (strcmp(cmd, "report") == 0) {
                report_state(s, "state");
        } else {
                return -EINVAL;
        }
        vlog(s, "command: %s%s%s", cmd, arg ? " " : "", arg ? arg : "");
        return 0;
}

static void control_line(char *line, void *userdata)
{
        struct sim *s = userdata;
        char *w[3];
        int n = gw_sim_control_words(line, w, 3);

        if (n == 0)
                return;
        if (n < 0 || apply_command(s, w[0], n > 1 ? w[1] : NULL, n > 2 ? w[2] : NULL) < 0)
                fprintf(stderr, "smp-sim: unknown control command \"%s\", ignoring\n", w[0]);
}

/* ---- the pty ------------------------------------------------------------------------------- */

static void line_input(struct sim *s, short revents)
{
        ssize_t r;

        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
                return;
        for (;;) {
                r = gw_pace_fill(s->pace, s->master);
                if (r > 0)
                        continue;
                if (r == -EIO) {
                        if (s->connected)
                                vlog(s, "host closed the port");
                        s->connected = false;
                        s->hup_check_ns = gw_sim_now_ns() + HUP_RECHECK_NS;
                }
                return;
        }
}

static void check_connected(struct sim *s, uint64_t now)
{
        struct pollfd p = {.fd = s->master, .events = POLLIN};

        if (s->connected || now < s->hup_check_ns)
                return;
        s->hup_check_ns = now + HUP_RECHECK_NS;
        if (poll(&p, 1, 0) < 0 || (p.revents & POLLHUP))
                return;
        vlog(s, "host opened the port");
        s->connected = true;
}

static int run(struct sim *s)
{
        const struct gw_sim_wait w = {
            .sigfd = s->sigfd, .ctl = &s->ctl, .on_line = control_line, .userdata = s};

        for (;;) {
                uint64_t now, at;
                uint8_t buf[1024];
                uint32_t signo;
                size_t n;
                int r;

                now = gw_sim_now_ns();
                check_connected(s, now);
                while ((n = gw_pace_take(s->pace, now, buf, sizeof(buf))) > 0) {
                        /* A device in reset or starting hears nothing; a hung one nothing. */
                        if (!s->app_up || s->off_until_ns || s->reset_at_ns || s->hung)
                                continue;
                        for (size_t i = 0; i < n; i++)
                                rx_byte(s, buf[i], now);
                }
                work(s, now);
                flush_tx(s);

                at = next_event(s);
                if (gw_pace_next_due(s->pace) < at)
                        at = gw_pace_next_due(s->pace);
                if (!s->connected && s->hup_check_ns < at)
                        at = s->hup_check_ns;
                r = gw_sim_wait(&w, s->connected ? s->master : -1,
                                gw_pace_room(s->pace) > 0 ? POLLIN : 0, at, &signo);
                if (r < 0)
                        return r;
                if (signo == SIGUSR1) {
                        report_state(s, "state");
                        continue;
                }
                if (signo) {
                        vlog(s, "signal %u, exiting", signo);
                        return 0;
                }
                line_input(s, (short) r);
        }
}

/* ---- command line --------------------------------------------------------------------------- */

static void usage(FILE *f)
{
        fputs("Usage: smp-sim --slot0 FILE [OPTIONS]\n"
              "A simulated MCUboot device with an SMP server on its serial console, on a\n"
              "pseudo-terminal. Prints \"smp-sim: ready PATH\" on stderr once it listens.\n\n"
              "  --link PATH            symlink to the pty (replaced if stale, removed on exit)\n"
              "  --baud N               line rate, 10 bits a byte (default 115200; 0 = no pacing)\n"
              "  --slot0 FILE           the image the device runs (confirmed) at start\n"
              "  --slot1 FILE           what slot 1 holds at start (default: erased)\n"
              "  --slot-size BYTES      size of each slot (default 1048576)\n"
              "  --buf-size N           SMP buffer (decoded frame) size the device reports\n"
              "                         and reassembles (default 384)\n"
              "  --buf-count N          SMP buffers; one is kept for the answer (default 4)\n"
              "  --boot-ms MS           from reset to the application answering (default 300)\n"
              "  --reset-delay-ms MS    from the reset answer to the reset (default 250)\n"
              "  --erase-us-per-kb N    erasing slot 1 at the first upload request (default 1000)\n"
              "  --write-us-per-kb N    writing upload data (default 500)\n"
              "  --swap-us-per-kb N     swapping both slots' images at boot (default 1000)\n"
              "  --turnaround-us N      serving any request (default 300)\n"
              "  --noise-ms MS          a log line on the console this often (default 0: none)\n"
              "  --persist-upload       an interrupted upload survives a reset (img_mgmt keeps\n"
              "                         it in RAM only: it survives a closed port, not a reset)\n"
              "  --report FILE          append JSON report lines (default stdout)\n"
              "  --dump-slot0 FILE      write slot 0's image at exit (also --dump-slot1)\n"
              "  --control PATH         FIFO (created when missing) or file with commands\n"
              "  -v, --verbose          log what happens to stderr\n"
              "  -h, --help             this text\n\n"
              "Faults (once each; also as control commands, without the dashes; counts start\n"
              "when armed):\n"
              "  --drop-line N          drop the Nth frame line received (a lost fragment)\n"
              "  --corrupt-line N       corrupt the Nth frame line received\n"
              "  --rc-chunk N,RC        answer the Nth upload request with rc RC\n"
              "  --dup-response N       send the Nth answer twice\n"
              "  --delay MS             delay the next answer\n"
              "  --reset-at OFFSET      reboot when an upload reaches OFFSET\n"
              "  --crash-after-swap     the next test image crashes before it is confirmed:\n"
              "                         MCUboot reverts it\n"
              "  --hang-after-swap      the next test image never answers\n"
              "  --silent               answer nothing (control \"resume\" ends it)\n"
              "Control only: reset (reboot now), report (write a state line; also SIGUSR1)\n",
              f);
}

enum {
        OPT_LINK = 256,
        OPT_BAUD,
        OPT_SLOT0,
        OPT_SLOT1,
        OPT_SLOT_SIZE,
        OPT_BUF_SIZE,
        OPT_BUF_COUNT,
        OPT_BOOT_MS,
        OPT_RESET_DELAY,
        OPT_ERASE_US,
        OPT_WRITE_US,
        OPT_SWAP_US,
        OPT_TURNAROUND,
        OPT_NOISE,
        OPT_PERSIST,
        OPT_REPORT,
        OPT_DUMP0,
        OPT_DUMP1,
        OPT_CONTROL,
        OPT_FAULT,
};

static int parse_args(struct sim *s, int argc, char **argv)
{
        static const struct option opts[] = {
            {"link", required_argument, NULL, OPT_LINK},
            {"baud", required_argument, NULL, OPT_BAUD},
            {"slot0", required_argument, NULL, OPT_SLOT0},
            {"slot1", required_argument, NULL, OPT_SLOT1},
            {"slot-size", required_argument, NULL, OPT_SLOT_SIZE},
            {"buf-size", required_argument, NULL, OPT_BUF_SIZE},
            {"buf-count", required_argument, NULL, OPT_BUF_COUNT},
            {"boot-ms", required_argument, NULL, OPT_BOOT_MS},
            {"reset-delay-ms", required_argument, NULL, OPT_RESET_DELAY},
            {"erase-us-per-kb", required_argument, NULL, OPT_ERASE_US},
            {"write-us-per-kb", required_argument, NULL, OPT_WRITE_US},
            {"swap-us-per-kb", required_argument, NULL, OPT_SWAP_US},
            {"turnaround-us", required_argument, NULL, OPT_TURNAROUND},
            {"noise-ms", required_argument, NULL, OPT_NOISE},
            {"persist-upload", no_argument, NULL, OPT_PERSIST},
            {"report", required_argument, NULL, OPT_REPORT},
            {"dump-slot0", required_argument, NULL, OPT_DUMP0},
            {"dump-slot1", required_argument, NULL, OPT_DUMP1},
            {"control", required_argument, NULL, OPT_CONTROL},
            {"drop-line", required_argument, NULL, OPT_FAULT},
            {"corrupt-line", required_argument, NULL, OPT_FAULT},
            {"rc-chunk", required_argument, NULL, OPT_FAULT},
            {"dup-response", required_argument, NULL, OPT_FAULT},
            {"delay", required_argument, NULL, OPT_FAULT},
            {"reset-at", required_argument, NULL, OPT_FAULT},
            {"crash-after-swap", no_argument, NULL, OPT_FAULT},
            {"hang-after-swap", no_argument, NULL, OPT_FAULT},
            {"silent", no_argument, NULL, OPT_FAULT},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        uint64_t v;
        int c, idx;

        for (;;) {
                idx = -1;
                c = getopt_long(argc, argv, "vh", opts, &idx);
                if (c < 0)
                        break;
                switch (c) {
                case OPT_LINK:
                        s->link = optarg;
                        break;
                case OPT_BAUD:
                        if (gw_sim_parse_u64(optarg, 10, 20000000, &v) < 0)
                                goto bad;
                        s->baud = (uint32_t) v;
                        break;
                case OPT_SLOT0:
                        s->slot0_path = optarg;
                        break;
                case OPT_SLOT1:
                        s->slot1_path = optarg;
                        break;
                case OPT_SLOT_SIZE:
                        if (gw_sim_parse_u64(optarg, 0, 256ULL << 20, &s->slot_size) < 0 ||
                            s->slot_size < 1024)
                                goto bad;
                        break;
                case OPT_BUF_SIZE:
                        if (gw_sim_parse_u64(optarg, 10, 65539, &s->buf_size) < 0 ||
                            s->buf_size < 64)
                                goto bad;
                        break;
                case OPT_BUF_COUNT:
                        if (gw_sim_parse_u64(optarg, 10, QUEUE_MAX, &s->buf_count) < 0 ||
                            s->buf_count == 0)
                                goto bad;
                        break;
                case OPT_BOOT_MS:
                        if (gw_sim_parse_u64(optarg, 10, 600000, &s->boot_ms) < 0)
                                goto bad;
                        break;
                case OPT_RESET_DELAY:
                        if (gw_sim_parse_u64(optarg, 10, 60000, &s->reset_delay_ms) < 0)
                                goto bad;
                        break;
                case OPT_ERASE_US:
                        if (gw_sim_parse_u64(optarg, 10, 1000000, &s->erase_us_per_kb) < 0)
                                goto bad;
                        break;
                case OPT_WRITE_US:
                        if (gw_sim_parse_u64(optarg, 10, 1000000, &s->write_us_per_kb) < 0)
                                goto bad;
                        break;
                case OPT_SWAP_US:
                        if (gw_sim_parse_u64(optarg, 10, 1000000, &s->swap_us_per_kb) < 0)
                                goto bad;
                        break;
                case OPT_TURNAROUND:
                        if (gw_sim_parse_u64(optarg, 10, 10000000, &s->turnaround_us) < 0)
                                goto bad;
                        break;
                case OPT_NOISE:
                        if (gw_sim_parse_u64(optarg, 10, 600000, &s->noise_ms) < 0)
                                goto bad;
                        break;
                case OPT_PERSIST:
                        s->persist_upload = true;
                        break;
                case OPT_REPORT:
                        s->report_path = optarg;
                        break;
                case OPT_DUMP0:
                        s->dump0_path = optarg;
                        break;
                case OPT_DUMP1:
                        s->dump1_path = optarg;
                        break;
                case OPT_CONTROL:
                        s->control_path = optarg;
                        break;
                case OPT_FAULT: {
                        char arg[64], *comma = NULL;

                        if (idx < 0)
                                goto bad;
                        if (optarg) {
                                if (strlen(optarg) >= sizeof(arg))
                                        goto bad;
                                strcpy(arg, optarg);
                                comma = strchr(arg, ',');
                                if (comma)
                                        *comma++ = '\0';
                        }
                        if (apply_command(s, opts[idx].name, optarg ? arg : NULL, comma) < 0)
                                goto bad;
                        break;
                }
                case 'v':
                        s->verbose = true;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "smp-sim: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        if (!s->slot0_path) {
                fprintf(stderr, "smp-sim: --slot0 FILE is required (the image the device runs)\n");
                return -EINVAL;
        }
        return 0;
bad:
        fprintf(stderr, "smp-sim: invalid value for --%s: \"%s\"\n",
                idx >= 0 ? opts[idx].name : "?", optarg ? optarg : "");
        return -EINVAL;
}

int main(int argc, char **argv)
{
        struct sim s = {
            .baud = 115200,
            .slot_size = 1 << 20,
            .buf_size = 384,
            .buf_count = 4,
            .boot_ms = 300,
            .reset_delay_ms = 250,
            .erase_us_per_kb = 1000,
            .write_us_per_kb = 500,
            .swap_us_per_kb = 1000,
            .turnaround_us = 300,
            .master = -1,
            .sigfd = -1,
            .marker = -1,
            .report = stdout,
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
        struct info in0;
        int r, status = EXIT_FAILURE;

        if (parse_args(&s, argc, argv) < 0)
                return 2;
        s.slot0.data = malloc(s.slot_size);
        s.slot1.data = malloc(s.slot_size);
        s.frame = malloc(s.buf_size);
        if (!s.slot0.data || !s.slot1.data || !s.frame) {
                fprintf(stderr, "smp-sim: out of memory\n");
                goto out;
        }
        slot_erase(&s, &s.slot0);
        slot_erase(&s, &s.slot1);
        r = slot_load(&s, &s.slot0, s.slot0_path);
        if (r == 0 && s.slot1_path)
                r = slot_load(&s, &s.slot1, s.slot1_path);
        if (r < 0) {
                fprintf(stderr, "smp-sim: cannot load a slot image: %s\n", strerror(-r));
                goto out;
        }
        slot_info(&s.slot0, &in0);
        if (!in0.ok || !in0.valid) {
                fprintf(stderr, "smp-sim: %s is not a valid MCUboot image\n", s.slot0_path);
                goto out;
        }
        s.sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        if (s.sigfd < 0) {
                fprintf(stderr, "smp-sim: signalfd: %s\n", strerror(-s.sigfd));
                goto out;
        }
        if (s.report_path) {
                s.report = fopen(s.report_path, "ae");
                if (!s.report) {
                        fprintf(stderr, "smp-sim: cannot open %s: %m\n", s.report_path);
                        goto out;
                }
        }
        if (s.control_path) {
                r = gw_sim_control_open(&s.ctl, s.control_path);
                if (r < 0) {
                        fprintf(stderr, "smp-sim: cannot open control %s: %s\n", s.control_path,
                                strerror(-r));
                        goto out;
                }
        }
        r = gw_pace_new(s.baud, 10, RX_QUEUE, &s.pace);
        if (r >= 0)
                r = gw_sim_pty_open("smp-sim", s.link, s.slave, sizeof(s.slave), &s.master);
        if (r < 0)
                goto out;
        s.t_start_ns = gw_sim_now_ns();
        /* The device has been running for a while when a host comes: the application answers
         * from the ready line on. */
        app_start(&s);
        fprintf(stderr, "smp-sim: ready %s\n", s.link ? s.link : s.slave);
        vlog(&s, "serving %s at %u baud, buffers %" PRIu64 " x %" PRIu64 ", slot 0: %s", s.slave,
             s.baud, s.buf_size, s.buf_count, in0.version);
        r = run(&s);
        if (r < 0)
                fprintf(stderr, "smp-sim: %s\n", strerror(-r));
        else
                status = EXIT_SUCCESS;
        report_state(&s, "exit");
        if (s.dump0_path && slot_dump(&s.slot0, s.dump0_path) < 0)
                status = EXIT_FAILURE;
        if (s.dump1_path && slot_dump(&s.slot1, s.dump1_path) < 0)
                status = EXIT_FAILURE;
out:
        gw_sim_pty_unlink(s.link, s.slave);
        drop_queue(&s);
        if (s.master >= 0)
                close(s.master);
        gw_sim_control_done(&s.ctl);
        if (s.report && s.report != stdout)
                fclose(s.report);
        gw_pace_free(s.pace);
        if (s.sigfd >= 0)
                close(s.sigfd);
        free(s.slot0.data);
        free(s.slot1.data);
        free(s.frame);
        free(s.tx);
        free(s.answer);
        return status;
}
