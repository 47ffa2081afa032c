/* The smp protocol plugin: MCUboot images through a device's SMP (mcumgr) server on its serial
 * console, as a state machine fed by received bytes and timer expiries. Layers: SMP (this file:
 * requests, sequence numbers, the flow) -> serial framing (smp-serial.c) -> the link (the core's
 * host->write); CBOR bodies through libcbor (smp-cbor.c). The install flow is MCUboot's test
 * swap: upload into slot 1 (windowed, resumable), mark it for test, reset, wait for the node to
 * come back running it, confirm it, read the state back. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/plugin.h"

#include "debug.h"
#include "read.h"

#include "mcuboot-image.h"
#include "smp-cbor.h"
#include "smp-serial.h"

/* The SMP header (8 bytes, big-endian): Res:3 Ver:2 OP:3 | flags | length:16 | group:16 | seq |
 * command id. */
#define SMP_HDR_LEN  8
#define OP_READ      0
#define OP_READ_RSP  1
#define OP_WRITE     2
#define OP_WRITE_RSP 3

#define GROUP_OS    0
#define GROUP_IMAGE 1
#define OS_RESET    5
#define OS_PARAMS   6
#define IMG_STATE   0
#define IMG_UPLOAD  1

/* SMP v1 "rc" values (enum mcumgr_err_t) the flow treats specially. */
#define MGMT_ERR_ENOMEM   2
#define MGMT_ERR_EINVAL   3
#define MGMT_ERR_ETIMEOUT 4
#define MGMT_ERR_ENOENT   5
#define MGMT_ERR_ENOTSUP  8
#define MGMT_ERR_EBUSY    10

#define DEFAULT_REQUEST_TIMEOUT_MS 5000
#define DEFAULT_ERASE_TIMEOUT_MS   30000
#define DEFAULT_RETRIES            5
#define DEFAULT_RESET_TIMEOUT_MS   60000
#define DEFAULT_POLL_INTERVAL_MS   500
/* The device's reassembly buffer when it does not tell (no os params): small enough for any
 * mcumgr build seen in the wild. */
#define DEFAULT_BUF_SIZE 256
#define WINDOW_MAX       16
/* Requests remembered: a window of uploads, or resends and polls of one request. */
#define PENDING_MAX 32
/* The smallest first upload request carries the whole 32-byte image header (img_mgmt refuses
 * less). */
#define FIRST_CHUNK_MIN GW_MCUBOOT_HEADER_SIZE

enum smp_state {
        SMP_IDLE,     /* init() done, nothing started */
        SMP_PARAMS,   /* os mcumgr-params sent: the device's buffer size and count */
        SMP_STATE,    /* image state read before anything is written */
        SMP_UPLOAD,   /* image upload requests in flight */
        SMP_VERIFY,   /* image state read after the upload: slot 1 must hold the image */
        SMP_TEST,     /* image state write, confirm false: slot 1 runs once after a reset */
        SMP_RESET,    /* os reset sent */
        SMP_REBOOT,   /* polling image state until the node answers again */
        SMP_CONFIRM,  /* image state write, confirm true: the running image stays */
        SMP_CHECK,    /* image state read after confirming */
        SMP_ID_STATE, /* identify: image state read */
        SMP_ID_PARAMS,
        SMP_DONE,
        SMP_FAILED,
        _SMP_STATE_MAX,
};

static const char *const state_names[_SMP_STATE_MAX] = {
    [SMP_IDLE] = "idle",     [SMP_PARAMS] = "params",     [SMP_STATE] = "state",
    [SMP_UPLOAD] = "upload", [SMP_VERIFY] = "verify",     [SMP_TEST] = "test",
    [SMP_RESET] = "reset",   [SMP_REBOOT] = "reboot",     [SMP_CONFIRM] = "confirm",
    [SMP_CHECK] = "check",   [SMP_ID_STATE] = "id-state", [SMP_ID_PARAMS] = "id-params",
    [SMP_DONE] = "done",     [SMP_FAILED] = "failed",
};

static const char *smp_state_to_string(enum smp_state s)
{
        if ((unsigned) s >= _SMP_STATE_MAX)
                return NULL;
        return state_names[s];
}

/* The requests the plugin sends, indexed by command; each names its answer's handler. */
enum smp_cmd {
        CMD_PARAMS,
        CMD_STATE_READ,
        CMD_UPLOAD,
        CMD_TEST,
        CMD_CONFIRM,
        CMD_RESET,
        _CMD_MAX,
};

struct smp;
struct pending;

struct smp_command {
        const char *name;
        uint8_t op;
        uint16_t group;
        uint8_t id;
        int (*answer)(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
};

/* A request sent and not answered yet. */
struct pending {
        bool used;
        uint8_t seq;
        enum smp_cmd cmd;
        uint64_t deadline; /* 0: its silence is not counted (polls, a reset) */
        /* Uploads: the chunk, and the window generation it was sent in. */
        uint64_t off;
        size_t len;
        uint64_t epoch;
};

/* What the node runs and holds, from an image state answer, for the image the options name. */
struct node_state {
        bool have_active, have_slot1;
        struct gw_smp_slot active, slot1;
};

struct smp {
        const struct gw_proto_host *host;

        /* Options. */
        uint64_t request_timeout_ms, erase_timeout_ms, reset_timeout_ms, poll_interval_ms;
        uint64_t retries_max;
        uint64_t mtu_opt, window_opt, image_opt, smp_version;
        bool confirm, upgrade, identify_params;

        /* The stack. */
        struct gw_smp_layer link, framing;
        struct gw_smp_deframer rx;

        enum smp_state state;
        int error;
        uint64_t deadline;
        uint8_t seq;
        struct pending pending[PENDING_MAX];
        uint64_t retries;         /* consecutive unanswered tries of the current step */
        bool heard;               /* the device answered anything in this operation */
        struct gw_options *facts; /* identify's answer */

        /* The image. */
        const struct gw_reader *reader;
        struct gw_mcuboot_image img;
        uint8_t file_sha[GW_MCUBOOT_HASH_LEN];
        char version[GW_MCUBOOT_VERSION_MAX];
        struct node_state before; /* what the node ran when the install started */

        /* The device's buffers and what follows for the upload. */
        uint64_t buf_size, buf_count;
        size_t packet_max, payload_max, window;
        uint8_t *pkt;   /* packet_max bytes: the request being built */
        uint8_t *chunk; /* payload_max bytes: image data read for it */

        /* The upload. */
        uint64_t next;  /* the next offset to send */
        uint64_t acked; /* what the node confirmed it holds */
        uint64_t epoch; /* bumped whenever the window starts over from acked */
        bool first_answered;
        uint64_t rewinds;  /* consecutive restarts of the window without progress */
        uint64_t progress; /* reported so far (never goes back) */
        uint64_t chunks_sent, bytes_sent;

        /* Waiting for the reset. */
        uint64_t reboot_deadline, next_poll;
};

static int answer_params(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
static int answer_state(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
static int answer_upload(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
static int answer_test(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
static int answer_confirm(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);
static int answer_reset(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp);

static const struct smp_command commands[_CMD_MAX] = {
    [CMD_PARAMS] = {"os mcumgr-params", OP_READ, GROUP_OS, OS_PARAMS, answer_params},
    [CMD_STATE_READ] = {"image state read", OP_READ, GROUP_IMAGE, IMG_STATE, answer_state},
    [CMD_UPLOAD] = {"image upload", OP_WRITE, GROUP_IMAGE, IMG_UPLOAD, answer_upload},
    [CMD_TEST] = {"image state write (test)", OP_WRITE, GROUP_IMAGE, IMG_STATE, answer_test},
    [CMD_CONFIRM] = {"image state write (confirm)", OP_WRITE, GROUP_IMAGE, IMG_STATE,
                     answer_confirm},
    [CMD_RESET] = {"os reset", OP_WRITE, GROUP_OS, OS_RESET, answer_reset},
};

/* ---- error names ---------------------------------------------------------------------------- */

static const char *const mgmt_err_names[] = {
    "MGMT_ERR_EOK",
    "MGMT_ERR_EUNKNOWN",
    "MGMT_ERR_ENOMEM",
    "MGMT_ERR_EINVAL",
    "MGMT_ERR_ETIMEOUT",
    "MGMT_ERR_ENOENT",
    "MGMT_ERR_EBADSTATE",
    "MGMT_ERR_EMSGSIZE",
    "MGMT_ERR_ENOTSUP",
    "MGMT_ERR_ECORRUPT",
    "MGMT_ERR_EBUSY",
    "MGMT_ERR_EACCESSDENIED",
    "MGMT_ERR_UNSUPPORTED_TOO_OLD",
    "MGMT_ERR_UNSUPPORTED_TOO_NEW",
};

static const char *const img_err_names[] = {
    "IMG_MGMT_ERR_OK",
    "IMG_MGMT_ERR_UNKNOWN",
    "IMG_MGMT_ERR_FLASH_CONFIG_QUERY_FAIL",
    "IMG_MGMT_ERR_NO_IMAGE",
    "IMG_MGMT_ERR_NO_TLVS",
    "IMG_MGMT_ERR_INVALID_TLV",
    "IMG_MGMT_ERR_TLV_MULTIPLE_HASHES_FOUND",
    "IMG_MGMT_ERR_TLV_INVALID_SIZE",
    "IMG_MGMT_ERR_HASH_NOT_FOUND",
    "IMG_MGMT_ERR_NO_FREE_SLOT",
    "IMG_MGMT_ERR_FLASH_OPEN_FAILED",
    "IMG_MGMT_ERR_FLASH_READ_FAILED",
    "IMG_MGMT_ERR_FLASH_WRITE_FAILED",
    "IMG_MGMT_ERR_FLASH_ERASE_FAILED",
    "IMG_MGMT_ERR_INVALID_SLOT",
    "IMG_MGMT_ERR_NO_FREE_MEMORY",
    "IMG_MGMT_ERR_FLASH_CONTEXT_ALREADY_SET",
    "IMG_MGMT_ERR_FLASH_CONTEXT_NOT_SET",
    "IMG_MGMT_ERR_FLASH_AREA_DEVICE_NULL",
    "IMG_MGMT_ERR_INVALID_PAGE_OFFSET",
    "IMG_MGMT_ERR_INVALID_OFFSET",
    "IMG_MGMT_ERR_INVALID_LENGTH",
    "IMG_MGMT_ERR_INVALID_IMAGE_HEADER",
    "IMG_MGMT_ERR_INVALID_IMAGE_HEADER_MAGIC",
    "IMG_MGMT_ERR_INVALID_HASH",
    "IMG_MGMT_ERR_INVALID_FLASH_ADDRESS",
    "IMG_MGMT_ERR_VERSION_GET_FAILED",
    "IMG_MGMT_ERR_CURRENT_VERSION_IS_NEWER",
    "IMG_MGMT_ERR_IMAGE_ALREADY_PENDING",
    "IMG_MGMT_ERR_INVALID_IMAGE_VECTOR_TABLE",
    "IMG_MGMT_ERR_INVALID_IMAGE_TOO_LARGE",
    "IMG_MGMT_ERR_INVALID_IMAGE_DATA_OVERRUN",
    "IMG_MGMT_ERR_IMAGE_CONFIRMATION_DENIED",
    "IMG_MGMT_ERR_IMAGE_SETTING_TEST_TO_ACTIVE_DENIED",
    "IMG_MGMT_ERR_ACTIVE_SLOT_NOT_KNOWN",
};

static const char *const os_err_names[] = {
    "OS_MGMT_ERR_OK",
    "OS_MGMT_ERR_UNKNOWN",
    "OS_MGMT_ERR_INVALID_FORMAT",
    "OS_MGMT_ERR_QUERY_YIELDS_NO_ANSWER",
    "OS_MGMT_ERR_RTC_NOT_SET",
    "OS_MGMT_ERR_RTC_COMMAND_FAILED",
    "OS_MGMT_ERR_QUERY_RESPONSE_VALUE_NOT_VALID",
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* The name of an SMP v1 "rc", or NULL. */
static const char *mgmt_err_name(int64_t rc)
{
        if (rc >= 0 && (uint64_t) rc < N_ELEMS(mgmt_err_names))
                return mgmt_err_names[rc];
        if (rc == 256)
                return "MGMT_ERR_EPERUSER";
        return NULL;
}

/* The name of an SMP v2 group error, or NULL. */
static const char *group_err_name(uint64_t group, int64_t rc)
{
        if (rc < 0)
                return NULL;
        if (group == GROUP_IMAGE && (uint64_t) rc < N_ELEMS(img_err_names))
                return img_err_names[rc];
        if (group == GROUP_OS && (uint64_t) rc < N_ELEMS(os_err_names))
                return os_err_names[rc];
        return NULL;
}

/* "MGMT_ERR_EBUSY (rc 10)", "IMG_MGMT_ERR_NO_FREE_SLOT (group 1, rc 9): no slot". */
static void describe_error(const struct gw_smp_rsp *rsp, char *buf, size_t n)
{
        const char *name;
        int w;

        if (rsp->have_err && rsp->err_rc != 0) {
                name = group_err_name(rsp->err_group, rsp->err_rc);
                w = snprintf(buf, n, "%s (group %" PRIu64 ", rc %" PRId64 ")",
                             name ? name : "group error", rsp->err_group, rsp->err_rc);
        } else {
                name = mgmt_err_name(rsp->rc);
                w = snprintf(buf, n, "%s (rc %" PRId64 ")", name ? name : "MGMT_ERR_UNKNOWN_CODE",
                             rsp->rc);
        }
        if (rsp->rsn[0] && w > 0 && (size_t) w < n)
                snprintf(buf + w, n - (size_t) w, ": %s", rsp->rsn);
}

static bool rsp_failed(const struct gw_smp_rsp *rsp)
{
        return (rsp->have_rc && rsp->rc != 0) || (rsp->have_err && rsp->err_rc != 0);
}

/* ---- plumbing ------------------------------------------------------------------------------- */

static uint64_t now(struct smp *s)
{
        return s->host->now_ms(s->host->ctx);
}

static void set_state(struct smp *s, enum smp_state st)
{
        if (s->state == st)
                return;
        gw_proto_debug(s->host, "smp: %s -> %s", smp_state_to_string(s->state),
                       smp_state_to_string(st));
        s->state = st;
}

static void forget_all(struct smp *s)
{
        memset(s->pending, 0, sizeof(s->pending));
}

/* Arms the timer for the earliest of what waits: an answer's deadline, the next poll, the
 * end of the wait for the reset. */
static void rearm(struct smp *s)
{
        uint64_t at = 0;

        for (size_t i = 0; i < PENDING_MAX; i++)
                if (s->pending[i].used && s->pending[i].deadline &&
                    (at == 0 || s->pending[i].deadline < at))
                        at = s->pending[i].deadline;
        if (s->state == SMP_REBOOT) {
                if (at == 0 || s->next_poll < at)
                        at = s->next_poll;
                if (s->reboot_deadline < at)
                        at = s->reboot_deadline;
        }
        if (s->state == SMP_DONE || s->state == SMP_FAILED)
                at = 0;
        s->deadline = at;
        s->host->set_deadline(s->host->ctx, at);
}

static int fail(struct smp *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct smp *s, int err, const char *fmt, ...)
{
        bool idle = s->state == SMP_IDLE;
        char msg[384];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(s->host, "smp: %s", msg);
        if (s->host->set_error)
                s->host->set_error(s->host->ctx, "%s", msg);
        s->error = err;
        set_state(s, SMP_FAILED);
        forget_all(s);
        /* Refusing an image before anything started arms nothing (check_image() must not
         * touch the timer). */
        if (!idle)
                rearm(s);
        return err;
}

static int succeed(struct smp *s)
{
        set_state(s, SMP_DONE);
        forget_all(s);
        rearm(s);
        return GW_PROTO_DONE;
}

static int result(const struct smp *s)
{
        if (s->state == SMP_DONE)
                return GW_PROTO_DONE;
        if (s->state == SMP_FAILED)
                return s->error;
        return GW_PROTO_CONTINUE;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[p[i] >> 4];
                out[2 * i + 1] = digits[p[i] & 15];
        }
        out[2 * n] = '\0';
}

/* The bottom layer: bytes to the core, which writes them to the link in order. */
static int link_send(struct gw_smp_layer *l, const uint8_t *buf, size_t n)
{
        struct smp *s = l->ctx;

        return s->host->write(s->host->ctx, buf, n);
}

static const struct gw_smp_layer_ops link_layer_ops = {
    .name = "link",
    .send = link_send,
};

static struct pending *pending_slot(struct smp *s)
{
        struct pending *oldest = NULL;

        for (size_t i = 0; i < PENDING_MAX; i++)
                if (!s->pending[i].used)
                        return &s->pending[i];
        /* Full (many resends or polls of one request): the oldest sequence number goes. */
        for (size_t i = 0; i < PENDING_MAX; i++)
                if (!oldest ||
                    (uint8_t) (s->pending[i].seq - s->seq) < (uint8_t) (oldest->seq - s->seq))
                        oldest = &s->pending[i];
        return oldest;
}

/* Sends one request: the SMP header on body (already at s->pkt + SMP_HDR_LEN), down the stack.
 * timeout_ms 0: its silence is not counted. */
static int send_request(struct smp *s, enum smp_cmd cmd, size_t body_len, uint64_t timeout_ms,
                        struct pending **ret)
{
        const struct smp_command *c = &commands[cmd];
        struct pending *p;
        uint8_t seq = s->seq++;
        int r;

        s->pkt[0] = (uint8_t) ((s->smp_version == 2 ? 1u : 0u) << 3 | c->op);
        s->pkt[1] = 0;
        s->pkt[2] = (uint8_t) (body_len >> 8);
        s->pkt[3] = (uint8_t) body_len;
        s->pkt[4] = (uint8_t) (c->group >> 8);
        s->pkt[5] = (uint8_t) c->group;
        s->pkt[6] = seq;
        s->pkt[7] = c->id;
        r = s->framing.ops->send(&s->framing, s->pkt, SMP_HDR_LEN + body_len);
        if (r < 0)
                return fail(s, r, "%s: writing to the link failed: %s", c->name, strerror(-r));
        p = pending_slot(s);
        *p = (struct pending){
            .used = true,
            .seq = seq,
            .cmd = cmd,
            .deadline = timeout_ms ? now(s) + timeout_ms : 0,
        };
        if (ret)
                *ret = p;
        gw_proto_debug(s->host, "smp: -> %s seq %u, %zu bytes", c->name, seq,
                       SMP_HDR_LEN + body_len);
        return 0;
}

/* A request whose body is an empty map or an image state write. */
static int send_simple(struct smp *s, enum smp_cmd cmd, uint64_t timeout_ms)
{
        int n;

        switch (cmd) {
        case CMD_TEST:
                n = gw_smp_cbor_state_write(s->pkt + SMP_HDR_LEN, s->packet_max - SMP_HDR_LEN,
                                            s->img.hash, false);
                break;
        case CMD_CONFIRM:
                /* Without a hash: the running image, which the check before made sure is this
                 * one. With one, a slot-1 image would be made permanent instead. */
                n = gw_smp_cbor_state_write(s->pkt + SMP_HDR_LEN, s->packet_max - SMP_HDR_LEN, NULL,
                                            true);
                break;
        default:
                n = gw_smp_cbor_empty(s->pkt + SMP_HDR_LEN, s->packet_max - SMP_HDR_LEN);
                break;
        }
        if (n < 0)
                return fail(s, -EMSGSIZE, "%s: the request does not fit %zu bytes",
                            commands[cmd].name, s->packet_max);
        return send_request(s, cmd, (size_t) n, timeout_ms, NULL);
}

/* Enters st and sends its request (one at a time, resent on silence). */
static int step(struct smp *s, enum smp_state st, enum smp_cmd cmd)
{
        int r;

        forget_all(s);
        s->retries = 0;
        set_state(s, st);
        r = send_simple(s, cmd, s->request_timeout_ms);
        if (r < 0)
                return r;
        rearm(s);
        return GW_PROTO_CONTINUE;
}

/* ---- the node's image state ----------------------------------------------------------------- */

static void read_node_state(const struct smp *s, const struct gw_smp_rsp *rsp,
                            struct node_state *ns)
{
        memset(ns, 0, sizeof(*ns));
        for (size_t i = 0; i < rsp->n_slots; i++) {
                const struct gw_smp_slot *e = &rsp->slots[i];

                if (e->image != s->image_opt)
                        continue;
                if (e->active && !ns->have_active) {
                        ns->active = *e;
                        ns->have_active = true;
                } else if (e->slot == 1 && !e->active && !ns->have_slot1) {
                        ns->slot1 = *e;
                        ns->have_slot1 = true;
                }
        }
        /* A device that flags nothing active: slot 0 is what MCUboot runs in swap modes. */
        if (!ns->have_active)
                for (size_t i = 0; i < rsp->n_slots; i++)
                        if (rsp->slots[i].image == s->image_opt && rsp->slots[i].slot == 0) {
                                ns->active = rsp->slots[i];
                                ns->have_active = true;
                                break;
                        }
}

static bool slot_has(const struct gw_smp_slot *e, const uint8_t *hash)
{
        return e->have_hash && memcmp(e->hash, hash, GW_SMP_HASH_LEN) == 0;
}

/* "1.2.3 (3f2a9c01...)" */
static void describe_slot(const struct gw_smp_slot *e, char *buf, size_t n)
{
        char h[2 * GW_SMP_HASH_LEN + 1] = "no hash";

        if (e->have_hash) {
                hex(e->hash, GW_SMP_HASH_LEN, h);
                h[16] = '\0';
        }
        snprintf(buf, n, "%s (%s%s)", e->version[0] ? e->version : "?", h,
                 e->have_hash ? "..." : "");
}

/* ---- sizing --------------------------------------------------------------------------------- */

/* From the device's buffer size: the largest packet it reassembles. The buffer holds the
 * decoded frame (length field, packet, CRC); a decoder may need whole groups of three for the
 * base64 it is given, so the frame is kept to a multiple of three. */
static size_t packet_max_for(uint64_t buf_size)
{
        uint64_t frame = buf_size / 3 * 3;

        if (frame < GW_SMP_FRAME_OVERHEAD + SMP_HDR_LEN + 1)
                return 0;
        frame -= GW_SMP_FRAME_OVERHEAD;
        return frame > GW_SMP_PACKET_MAX ? GW_SMP_PACKET_MAX : (size_t) frame;
}

static struct gw_smp_upload_req upload_req(const struct smp *s, uint64_t off)
{
        return (struct gw_smp_upload_req){
            .off = off,
            .first = off == 0,
            .total = s->reader->size,
            .sha = s->file_sha,
            .image = (uint32_t) s->image_opt,
            .upgrade = s->upgrade,
        };
}

/* Sets the packet size, the window and the buffers from the device's (or the options') buffer
 * size and count. */
static int plan_upload(struct smp *s)
{
        struct gw_smp_upload_req first, later;
        size_t room_first, room_later, wire;
        uint8_t *p;

        s->packet_max = packet_max_for(s->buf_size);
        if (s->packet_max <= SMP_HDR_LEN)
                return fail(s, -EMSGSIZE, "the node's buffer of %" PRIu64 " bytes holds no request",
                            s->buf_size);
        s->payload_max = s->packet_max - SMP_HDR_LEN;
        first = upload_req(s, 0);
        later = upload_req(s, 1);
        if (s->reader->size > UINT32_MAX)
                later.off = UINT32_MAX;
        room_first = gw_smp_cbor_upload_room(&first, s->payload_max);
        room_later = gw_smp_cbor_upload_room(&later, s->payload_max);
        if (room_first < FIRST_CHUNK_MIN)
                return fail(s, -EMSGSIZE,
                            "the node's buffer of %" PRIu64
                            " bytes is too small for the first upload request (it carries the "
                            "%d-byte image header, the length and the SHA-256)",
                            s->buf_size, FIRST_CHUNK_MIN);
        s->window = s->window_opt ? (size_t) s->window_opt
                                  : (size_t) (s->buf_count > 1 ? s->buf_count - 1 : 1);
        if (s->window > WINDOW_MAX)
                s->window = WINDOW_MAX;
        p = realloc(s->pkt, s->packet_max);
        if (!p)
                return fail(s, -ENOMEM, "out of memory");
        s->pkt = p;
        p = realloc(s->chunk, s->payload_max);
        if (!p)
                return fail(s, -ENOMEM, "out of memory");
        s->chunk = p;
        wire = gw_smp_serial_encoded_size(s->packet_max);
        gw_proto_debug(
            s->host,
            "smp: buffer %" PRIu64 " x %" PRIu64 ": packets up to %zu bytes (%zu on the wire), "
            "%zu data bytes a request (%zu in the first), window %zu",
            s->buf_size, s->buf_count, s->packet_max, wire, room_later, room_first, s->window);
        return 0;
}

/* ---- upload --------------------------------------------------------------------------------- */

/* Upload requests the node may still hold, stale ones included: they take its buffers until it
 * answered them (or they were lost and timed out), so they count against the window. */
static size_t uploads_in_flight(const struct smp *s)
{
        size_t n = 0;

        for (size_t i = 0; i < PENDING_MAX; i++)
                if (s->pending[i].used && s->pending[i].cmd == CMD_UPLOAD)
                        n++;
        return n;
}

static int read_image(struct smp *s, uint8_t *buf, size_t n, uint64_t off)
{
        char why[128];
        int r = gw_reader_read_exact(s->reader, buf, n, off, why, sizeof(why));

        return r < 0 ? fail(s, r, "%s", why) : 0;
}

static int send_chunk(struct smp *s)
{
        struct gw_smp_upload_req req = upload_req(s, s->next);
        uint64_t left = s->reader->size - s->next;
        size_t room = gw_smp_cbor_upload_room(&req, s->payload_max);
        struct pending *p;
        int n, r;

        if (room > left)
                room = (size_t) left;
        if (room == 0)
                return fail(s, -EMSGSIZE, "no room for data in an upload request at %" PRIu64,
                            s->next);
        r = read_image(s, s->chunk, room, s->next);
        if (r < 0)
                return r;
        req.data = s->chunk;
        req.data_len = room;
        n = gw_smp_cbor_upload(s->pkt + SMP_HDR_LEN, s->payload_max, &req);
        if (n < 0)
                return fail(s, -EMSGSIZE, "an upload request of %zu bytes does not fit", room);
        /* Until the node answered once, the first request is alone: it may erase the slot
         * first, and it tells whether an interrupted upload resumes. */
        r = send_request(s, CMD_UPLOAD, (size_t) n,
                         s->first_answered                             ? s->request_timeout_ms
                         : s->erase_timeout_ms > s->request_timeout_ms ? s->erase_timeout_ms
                                                                       : s->request_timeout_ms,
                         &p);
        if (r < 0)
                return r;
        p->off = s->next;
        p->len = room;
        p->epoch = s->epoch;
        s->next += room;
        s->chunks_sent++;
        s->bytes_sent += room;
        return 0;
}

/* Keeps the window full. */
static int fill_window(struct smp *s)
{
        size_t window = s->first_answered ? s->window : 1;

        while (s->next < s->reader->size && uploads_in_flight(s) < window) {
                int r = send_chunk(s);

                if (r < 0)
                        return r;
        }
        rearm(s);
        return GW_PROTO_CONTINUE;
}

/* The window starts over from what the node holds: what is in flight becomes stale, and its
 * answers are only taken off the window. */
static void restart_window(struct smp *s, uint64_t from)
{
        s->epoch++;
        s->next = from;
        /* From the start again (the node lost the upload: it reset): the first request erases
         * the slot once more, so it goes alone and with the erase's time. */
        if (from == 0)
                s->first_answered = false;
}

static void report_progress(struct smp *s)
{
        if (s->acked > s->progress)
                s->progress = s->acked;
        if (s->host->progress)
                s->host->progress(s->host->ctx, s->progress, s->reader->size);
}

static int start_upload(struct smp *s)
{
        forget_all(s);
        s->retries = 0;
        s->rewinds = 0;
        s->next = 0;
        s->acked = 0;
        s->first_answered = false;
        set_state(s, SMP_UPLOAD);
        gw_proto_debug(s->host, "smp: uploading %" PRIu64 " bytes of %s into slot 1",
                       s->reader->size, s->version);
        report_progress(s);
        return fill_window(s);
}

/* An answer rc the node may give while busy: the same request may work a little later. */
static bool transient(const struct gw_smp_rsp *rsp)
{
        return !rsp->have_err && rsp->have_rc &&
               (rsp->rc == MGMT_ERR_EBUSY || rsp->rc == MGMT_ERR_ETIMEOUT ||
                rsp->rc == MGMT_ERR_ENOMEM);
}

static int upload_done(struct smp *s, const struct gw_smp_rsp *rsp);

static int answer_upload(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        uint64_t expected = p->off + p->len;
        char why[160];

        if (s->state != SMP_UPLOAD)
                return GW_PROTO_CONTINUE;
        if (rsp_failed(rsp)) {
                describe_error(rsp, why, sizeof(why));
                if (transient(rsp) && s->retries < s->retries_max) {
                        s->retries++;
                        gw_proto_debug(s->host,
                                       "smp: upload at %" PRIu64 ": %s, resending from %" PRIu64
                                       " (%" PRIu64 "/%" PRIu64 ")",
                                       p->off, why, s->acked, s->retries, s->retries_max);
                        restart_window(s, s->acked);
                        return fill_window(s);
                }
                return fail(s, -EIO, "the node refused the upload at offset %" PRIu64 ": %s",
                            p->off, why);
        }
        if (!rsp->have_off)
                return fail(s, -EBADMSG, "an upload answer without \"off\"");
        if (rsp->off > s->reader->size)
                return fail(s, -EPROTO,
                            "the node reports offset %" PRIu64 ", past the image's %" PRIu64
                            " bytes",
                            rsp->off, s->reader->size);
        if (p->epoch != s->epoch) {
                /* It moves nothing, but its place in the window is free again. */
                gw_proto_debug(s->host, "smp: stale upload answer (off %" PRIu64 ") ignored",
                               rsp->off);
                return fill_window(s);
        }
        if (!s->first_answered && p->off == 0 && rsp->off > 0 && rsp->off != expected) {
                gw_proto_debug(s->host,
                               "smp: the node already holds %" PRIu64
                               " bytes of this image: resuming",
                               rsp->off);
                if (s->host->version >= 6 && s->host->resumed && rsp->off < s->reader->size)
                        s->host->resumed(s->host->ctx, rsp->off);
        }
        s->first_answered = true;
        if (rsp->off != expected) {
                /* A lost request, or a node that holds more (a resumed upload) or less (it
                 * restarted): go on from where it is. */
                if (rsp->off <= s->acked && ++s->rewinds > s->retries_max + 1)
                        return fail(
                            s, -EIO,
                            "the upload makes no progress: the node keeps asking for offset "
                            "%" PRIu64,
                            rsp->off);
                gw_proto_debug(s->host,
                               "smp: the node expects offset %" PRIu64 ", not %" PRIu64
                               ": resending from there",
                               rsp->off, expected);
                if (rsp->off > s->acked)
                        s->rewinds = 0;
                s->acked = rsp->off;
                restart_window(s, rsp->off);
        } else {
                if (rsp->off > s->acked) {
                        s->acked = rsp->off;
                        s->rewinds = 0;
                }
                s->retries = 0;
        }
        report_progress(s);
        if (s->acked == s->reader->size)
                return upload_done(s, rsp);
        return fill_window(s);
}

static int upload_done(struct smp *s, const struct gw_smp_rsp *rsp)
{
        if (rsp->have_match && !rsp->match)
                return fail(s, -EIO,
                            "hash mismatch after upload: the node says what it received does not "
                            "match the file's SHA-256");
        gw_proto_debug(s->host,
                       "smp: upload complete: %" PRIu64 " requests, %" PRIu64 " data bytes sent",
                       s->chunks_sent, s->bytes_sent);
        return step(s, SMP_VERIFY, CMD_STATE_READ);
}

static int upload_timeout(struct smp *s)
{
        if (s->retries >= s->retries_max)
                return fail(s, -ETIMEDOUT,
                            "no answer to the upload at offset %" PRIu64 " after %" PRIu64
                            " tries (%" PRIu64 " of %" PRIu64 " bytes acknowledged)",
                            s->acked, s->retries + 1, s->acked, s->reader->size);
        s->retries++;
        gw_proto_debug(s->host,
                       "smp: upload request unanswered, resending from %" PRIu64 " (%" PRIu64
                       "/%" PRIu64 ")",
                       s->acked, s->retries, s->retries_max);
        restart_window(s, s->acked);
        return fill_window(s);
}

/* ---- the steps ------------------------------------------------------------------------------ */

static int fail_rsp(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        char why[160];

        describe_error(rsp, why, sizeof(why));
        return fail(s, -EIO, "%s refused: %s", commands[p->cmd].name, why);
}

static int after_params(struct smp *s)
{
        int r = plan_upload(s);

        if (r < 0)
                return r;
        return step(s, SMP_STATE, CMD_STATE_READ);
}

static int answer_params(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        if (s->state == SMP_ID_PARAMS) {
                char v[24];
                int r = 0;

                if (rsp_failed(rsp) || !rsp->have_buf_size)
                        return succeed(s); /* nothing to tell */
                snprintf(v, sizeof(v), "%" PRIu64, rsp->buf_size);
                r = gw_options_set(s->facts, "buf-size", v);
                if (r >= 0 && rsp->have_buf_count) {
                        snprintf(v, sizeof(v), "%" PRIu64, rsp->buf_count);
                        r = gw_options_set(s->facts, "buf-count", v);
                }
                if (r < 0)
                        return fail(s, -ENOMEM, "out of memory");
                return succeed(s);
        }
        if (s->state != SMP_PARAMS)
                return GW_PROTO_CONTINUE;
        if (rsp_failed(rsp) || !rsp->have_buf_size) {
                /* An mcumgr without the params command: the defaults. */
                gw_proto_debug(s->host,
                               "smp: no buffer parameters from the node, assuming %" PRIu64
                               " x %" PRIu64,
                               s->buf_size, s->buf_count);
        } else {
                /* Larger than a frame can announce is no use: packets stop at 65533 bytes. */
                if (rsp->buf_size < 64)
                        return fail(s, -EPROTO,
                                    "the node reports a buffer size of %" PRIu64 " bytes",
                                    rsp->buf_size);
                if (!s->mtu_opt)
                        s->buf_size = rsp->buf_size;
                if (rsp->have_buf_count && rsp->buf_count > 0)
                        s->buf_count = rsp->buf_count;
        }
        return after_params(s);
}

/* Where an install starts, going by what the node runs and holds now. */
static int answer_state_before(struct smp *s, const struct node_state *ns)
{
        char a[96], b[96];

        s->before = *ns;
        if (ns->have_active && slot_has(&ns->active, s->img.hash)) {
                if (ns->active.confirmed || !s->confirm) {
                        gw_proto_debug(s->host, "smp: the node already runs %s%s", s->version,
                                       ns->active.confirmed ? ", confirmed" : "");
                        s->acked = s->reader->size;
                        report_progress(s);
                        return succeed(s);
                }
                gw_proto_debug(s->host, "smp: the node runs %s unconfirmed: confirming it",
                               s->version);
                s->acked = s->reader->size;
                report_progress(s);
                return step(s, SMP_CONFIRM, CMD_CONFIRM);
        }
        if (ns->have_slot1 && slot_has(&ns->slot1, s->img.hash) && ns->slot1.pending) {
                gw_proto_debug(s->host, "smp: slot 1 already holds %s marked for test: resetting",
                               s->version);
                s->acked = s->reader->size;
                report_progress(s);
                return step(s, SMP_RESET, CMD_RESET);
        }
        if (ns->have_active && !ns->active.confirmed && ns->have_slot1 && ns->slot1.confirmed) {
                describe_slot(&ns->active, a, sizeof(a));
                describe_slot(&ns->slot1, b, sizeof(b));
                return fail(s, -EBUSY,
                            "the node runs %s unconfirmed, which MCUboot reverts to %s (slot 1) on "
                            "its next reset; slot 1 cannot take an upload until that is settled: "
                            "confirm or reset the node first",
                            a, b);
        }
        if (ns->have_slot1 && ns->slot1.pending) {
                describe_slot(&ns->slot1, b, sizeof(b));
                return fail(s, -EBUSY,
                            "slot 1 holds %s, marked %s for the next reset: it cannot take an "
                            "upload until the node is reset",
                            b, ns->slot1.permanent ? "permanent" : "for test");
        }
        return start_upload(s);
}

/* Slot 1 holds the image whole: mark it for test. */
static int answer_state_verify(struct smp *s, const struct node_state *ns)
{
        char want[2 * GW_SMP_HASH_LEN + 1], got[2 * GW_SMP_HASH_LEN + 1];

        hex(s->img.hash, GW_SMP_HASH_LEN, want);
        if (!ns->have_slot1)
                return fail(s, -EIO,
                            "hash mismatch after upload: the node lists no image in slot 1 (its "
                            "image %s should be there)",
                            want);
        if (!slot_has(&ns->slot1, s->img.hash)) {
                if (ns->slot1.have_hash)
                        hex(ns->slot1.hash, GW_SMP_HASH_LEN, got);
                else
                        snprintf(got, sizeof(got), "none");
                return fail(s, -EIO,
                            "hash mismatch after upload: slot 1 reports %s, the image's SHA-256 "
                            "TLV is %s",
                            got, want);
        }
        return step(s, SMP_TEST, CMD_TEST);
}

/* The node answered again after the reset. */
static int answer_state_reboot(struct smp *s, const struct node_state *ns)
{
        char a[96], b[96];

        if (ns->have_slot1 && ns->slot1.pending && slot_has(&ns->slot1, s->img.hash)) {
                gw_proto_debug(s->host,
                               "smp: slot 1 is still marked for test: the node has not reset yet");
                return GW_PROTO_CONTINUE;
        }
        if (!ns->have_active)
                return fail(s, -EPROTO, "after the reset the node reports no running image");
        describe_slot(&ns->active, a, sizeof(a));
        if (slot_has(&ns->active, s->img.hash)) {
                gw_proto_debug(s->host, "smp: the node runs %s after the reset (%s)", s->version,
                               ns->active.confirmed ? "confirmed" : "not confirmed yet");
                if (ns->active.confirmed || !s->confirm)
                        return step(s, SMP_CHECK, CMD_STATE_READ);
                return step(s, SMP_CONFIRM, CMD_CONFIRM);
        }
        if (s->before.have_active && ns->active.have_hash &&
            slot_has(&ns->active, s->before.active.hash)) {
                if (ns->have_slot1 && slot_has(&ns->slot1, s->img.hash))
                        describe_slot(&ns->slot1, b, sizeof(b));
                else
                        snprintf(b, sizeof(b), "%s", ns->have_slot1 ? "another image" : "nothing");
                return fail(s, -ENOEXEC,
                            "reverted: the node came back running its previous image %s, not %s; "
                            "MCUboot did not keep the new image (it failed to start or to "
                            "confirm itself, or MCUboot found it invalid); slot 1 holds %s",
                            a, s->version, b);
        }
        return fail(s, -ENOEXEC,
                    "after the reset the node runs %s, neither %s nor its previous image", a,
                    s->version);
}

static int answer_state_check(struct smp *s, const struct node_state *ns)
{
        char a[96];

        if (!ns->have_active || !slot_has(&ns->active, s->img.hash)) {
                if (ns->have_active)
                        describe_slot(&ns->active, a, sizeof(a));
                else
                        snprintf(a, sizeof(a), "nothing");
                return fail(s, -ENOEXEC, "the node runs %s, not %s", a, s->version);
        }
        if (s->confirm && !ns->active.confirmed)
                return fail(s, -EIO, "the node runs %s but did not confirm it", s->version);
        gw_proto_debug(s->host, "smp: the node runs %s%s", s->version,
                       ns->active.confirmed ? ", confirmed"
                                            : ", unconfirmed (the application confirms it)");
        return succeed(s);
}

static int add_fact(struct smp *s, const char *key, const char *value)
{
        return gw_options_set(s->facts, key, value) < 0 ? -ENOMEM : 0;
}

/* img_mgmt prints a build number as a fourth field ("1.4.2.5"); imgtool, manifests and the
 * engine's version check (which ignores build metadata, as semver does) spell it "1.4.2+5". A
 * version of another shape is passed on as the device sent it. */
static void semver_spelling(const char *v, char *buf, size_t n)
{
        unsigned a, b, c;
        unsigned long d;
        int end = 0;

        if (sscanf(v, "%u.%u.%u.%lu%n", &a, &b, &c, &d, &end) == 4 && v[end] == '\0' &&
            strspn(v, "0123456789.") == strlen(v))
                snprintf(buf, n, "%u.%u.%u+%lu", a, b, c, d);
        else
                snprintf(buf, n, "%s", v);
}

static int answer_state_identify(struct smp *s, const struct node_state *ns)
{
        char h[2 * GW_SMP_HASH_LEN + 1], v[GW_SMP_VERSION_MAX + 8];
        int r = 0;

        if (ns->have_active) {
                semver_spelling(ns->active.version, v, sizeof(v));
                if (v[0])
                        r = add_fact(s, "version", v);
                if (r == 0 && ns->active.have_hash) {
                        hex(ns->active.hash, GW_SMP_HASH_LEN, h);
                        r = add_fact(s, "hash", h);
                }
                if (r == 0)
                        r = add_fact(s, "confirmed", ns->active.confirmed ? "true" : "false");
        }
        if (r == 0 && ns->have_slot1) {
                semver_spelling(ns->slot1.version, v, sizeof(v));
                if (v[0])
                        r = add_fact(s, "slot1-version", v);
                if (r == 0 && ns->slot1.have_hash) {
                        hex(ns->slot1.hash, GW_SMP_HASH_LEN, h);
                        r = add_fact(s, "slot1-hash", h);
                }
                if (r == 0)
                        r = add_fact(s, "slot1-pending", ns->slot1.pending ? "true" : "false");
        }
        if (r < 0)
                return fail(s, -ENOMEM, "out of memory");
        if (s->identify_params)
                return step(s, SMP_ID_PARAMS, CMD_PARAMS);
        return succeed(s);
}

static int answer_state(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        struct node_state ns;

        if (rsp_failed(rsp)) {
                if (s->state == SMP_REBOOT)
                        return GW_PROTO_CONTINUE; /* still starting: ask again */
                return fail_rsp(s, p, rsp);
        }
        if (!rsp->have_images)
                return fail(s, -EBADMSG, "an image state answer without \"images\"");
        read_node_state(s, rsp, &ns);
        switch (s->state) {
        case SMP_STATE:
                return answer_state_before(s, &ns);
        case SMP_VERIFY:
                return answer_state_verify(s, &ns);
        case SMP_REBOOT:
                return answer_state_reboot(s, &ns);
        case SMP_CHECK:
                return answer_state_check(s, &ns);
        case SMP_ID_STATE:
                return answer_state_identify(s, &ns);
        default:
                return GW_PROTO_CONTINUE;
        }
}

static int answer_test(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        struct node_state ns;

        if (s->state != SMP_TEST)
                return GW_PROTO_CONTINUE;
        if (rsp_failed(rsp))
                return fail_rsp(s, p, rsp);
        /* img_mgmt answers with the new state; older servers with an rc alone. */
        if (rsp->have_images) {
                read_node_state(s, rsp, &ns);
                if (!ns.have_slot1 || !slot_has(&ns.slot1, s->img.hash) || !ns.slot1.pending)
                        return fail(s, -EIO, "the node did not mark slot 1 for test");
        }
        return step(s, SMP_RESET, CMD_RESET);
}

static int start_reboot_wait(struct smp *s)
{
        forget_all(s);
        set_state(s, SMP_REBOOT);
        s->reboot_deadline = now(s) + s->reset_timeout_ms;
        /* The first poll once the node had the time to go down: an answer before it did would
         * show slot 1 still pending, which only costs another poll. */
        s->next_poll = now(s) + s->poll_interval_ms;
        rearm(s);
        return GW_PROTO_CONTINUE;
}

static int answer_reset(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        if (s->state != SMP_RESET)
                return GW_PROTO_CONTINUE;
        if (rsp_failed(rsp))
                return fail_rsp(s, p, rsp);
        gw_proto_debug(s->host, "smp: the node is resetting");
        return start_reboot_wait(s);
}

static int answer_confirm(struct smp *s, const struct pending *p, const struct gw_smp_rsp *rsp)
{
        if (s->state != SMP_CONFIRM)
                return GW_PROTO_CONTINUE;
        if (rsp_failed(rsp))
                return fail_rsp(s, p, rsp);
        return step(s, SMP_CHECK, CMD_STATE_READ);
}

/* ---- input ---------------------------------------------------------------------------------- */

static int on_packet(void *userdata, const uint8_t *pkt, size_t len)
{
        struct smp *s = userdata;
        struct gw_smp_rsp *rsp;
        struct pending *p = NULL;
        const struct smp_command *c;
        size_t body;
        uint8_t op, seq;
        uint16_t group;
        char why[128];
        int r;

        if (len < SMP_HDR_LEN) {
                gw_proto_debug(s->host,
                               "smp: a %zu-byte packet, shorter than the SMP header: dropped", len);
                return 0;
        }
        op = pkt[0] & 7;
        body = (size_t) pkt[2] << 8 | pkt[3];
        group = (uint16_t) (pkt[4] << 8 | pkt[5]);
        seq = pkt[6];
        if (body != len - SMP_HDR_LEN) {
                gw_proto_debug(s->host,
                               "smp: header says %zu body bytes, the packet has %zu: dropped", body,
                               len - SMP_HDR_LEN);
                return 0;
        }
        if (op != OP_READ_RSP && op != OP_WRITE_RSP) {
                gw_proto_debug(s->host, "smp: op %u is no response: dropped", op);
                return 0;
        }
        for (size_t i = 0; i < PENDING_MAX; i++)
                if (s->pending[i].used && s->pending[i].seq == seq) {
                        p = &s->pending[i];
                        break;
                }
        if (!p) {
                gw_proto_debug(s->host, "smp: answer seq %u matches no request in flight: ignored",
                               seq);
                return 0;
        }
        c = &commands[p->cmd];
        if (group != c->group || pkt[7] != c->id || op != c->op + 1) {
                gw_proto_debug(s->host,
                               "smp: answer seq %u is for group %u id %u op %u, not %s: ignored",
                               seq, group, pkt[7], op, c->name);
                return 0;
        }
        rsp = malloc(sizeof(*rsp));
        if (!rsp)
                return fail(s, -ENOMEM, "out of memory");
        if (gw_smp_cbor_parse(pkt + SMP_HDR_LEN, body, rsp, why, sizeof(why)) < 0) {
                gw_proto_debug(s->host, "smp: malformed answer to %s: %s: dropped", c->name, why);
                free(rsp);
                return 0;
        }
        s->heard = true;
        {
                struct pending copy = *p;

                /* Answered: a resend of the same step keeps its own entry, for a late answer. */
                p->used = false;
                gw_proto_debug(s->host, "smp: <- %s seq %u", c->name, seq);
                r = c->answer(s, &copy, rsp);
        }
        free(rsp);
        if (r < 0)
                return r;
        if (s->state != SMP_DONE && s->state != SMP_FAILED)
                rearm(s);
        return 0;
}

/* ---- ops ------------------------------------------------------------------------------------ */

static int bad_option(struct smp *s, const char *key, const char *expected)
{
        gw_proto_debug(s->host, "smp: option %s: expected %s", key, expected);
        if (s->host->set_error)
                s->host->set_error(s->host->ctx, "option %s: expected %s", key, expected);
        return -EINVAL;
}

static int smp_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct smp *s = priv;

        s->host = host;
        s->state = SMP_IDLE;
        gw_smp_deframer_reset(&s->rx);
        s->link = (struct gw_smp_layer){.ops = &link_layer_ops, .next = NULL, .ctx = s};
        s->framing = (struct gw_smp_layer){.ops = &gw_smp_serial_layer_ops, .next = &s->link};
        if (gw_options_get_u64(opts, "request-timeout-ms", DEFAULT_REQUEST_TIMEOUT_MS, 10, 600000,
                               &s->request_timeout_ms) < 0)
                return bad_option(s, "request-timeout-ms", "10 to 600000");
        if (gw_options_get_u64(opts, "erase-timeout-ms", DEFAULT_ERASE_TIMEOUT_MS, 10, 3600000,
                               &s->erase_timeout_ms) < 0)
                return bad_option(s, "erase-timeout-ms", "10 to 3600000");
        if (gw_options_get_u64(opts, "retries", DEFAULT_RETRIES, 0, 100, &s->retries_max) < 0)
                return bad_option(s, "retries", "0 to 100");
        if (gw_options_get_u64(opts, "reset-timeout-ms", DEFAULT_RESET_TIMEOUT_MS, 100, 3600000,
                               &s->reset_timeout_ms) < 0)
                return bad_option(s, "reset-timeout-ms", "100 to 3600000");
        if (gw_options_get_u64(opts, "poll-interval-ms", DEFAULT_POLL_INTERVAL_MS, 10, 60000,
                               &s->poll_interval_ms) < 0)
                return bad_option(s, "poll-interval-ms", "10 to 60000");
        if (gw_options_get_u64(opts, "mtu", 0, 0, 0xffff + 4, &s->mtu_opt) < 0 ||
            (s->mtu_opt != 0 && s->mtu_opt < 96))
                return bad_option(s, "mtu", "0 (the node's buffer size) or 96 to 65539");
        if (gw_options_get_u64(opts, "window", 0, 0, WINDOW_MAX, &s->window_opt) < 0)
                return bad_option(s, "window", "0 (the node's buffer count less one) to 16");
        if (gw_options_get_u64(opts, "image", 0, 0, 7, &s->image_opt) < 0)
                return bad_option(s, "image", "an image number, 0 to 7");
        if (gw_options_get_u64(opts, "smp-version", 1, 1, 2, &s->smp_version) < 0)
                return bad_option(s, "smp-version", "1 or 2");
        if (gw_options_get_bool(opts, "confirm", true, &s->confirm) < 0)
                return bad_option(s, "confirm", "true or false");
        if (gw_options_get_bool(opts, "upgrade", false, &s->upgrade) < 0)
                return bad_option(s, "upgrade", "true or false");
        if (gw_options_get_bool(opts, "identify-params", false, &s->identify_params) < 0)
                return bad_option(s, "identify-params", "true or false");
        s->buf_size = s->mtu_opt ? s->mtu_opt : DEFAULT_BUF_SIZE;
        s->buf_count = s->window_opt ? s->window_opt + 1 : 1;
        return 0;
}

static void smp_done(void *priv)
{
        struct smp *s = priv;

        free(s->pkt);
        free(s->chunk);
        s->pkt = s->chunk = NULL;
}

/* A packet buffer for requests before plan_upload() sized it: empty maps, state writes. */
static int small_buffer(struct smp *s)
{
        size_t n = 128;

        if (s->pkt && s->packet_max >= n)
                return 0;
        free(s->pkt);
        s->pkt = malloc(n);
        if (!s->pkt)
                return -ENOMEM;
        s->packet_max = n;
        return 0;
}

/* The image as install() and check_image() read it: an MCUboot image whose SHA-256 TLV matches
 * its contents. */
static int open_image(struct smp *s, const struct gw_reader *reader)
{
        uint8_t hash[GW_MCUBOOT_HASH_LEN];
        char why[200], want[2 * GW_MCUBOOT_HASH_LEN + 1], got[2 * GW_MCUBOOT_HASH_LEN + 1];
        int r;

        if (!reader || !reader->pread)
                return -EINVAL;
        s->reader = reader;
        why[0] = '\0';
        r = gw_mcuboot_parse(reader, &s->img, why, sizeof(why));
        if (r == -EBADMSG)
                return fail(s, -EBADMSG, "not an MCUboot image: %s", why);
        if (r < 0)
                return fail(s, r, "reading the image failed: %s", strerror(-r));
        if (reader->size > UINT32_MAX)
                return fail(s, -EFBIG, "the image is %" PRIu64 " bytes, more than img_mgmt's 4 GiB",
                            reader->size);
        r = gw_mcuboot_digest(reader, &s->img, hash, s->file_sha);
        if (r < 0)
                return fail(s, r, "reading the image failed: %s", strerror(-r));
        if (memcmp(hash, s->img.hash, sizeof(hash)) != 0) {
                hex(s->img.hash, sizeof(hash), want);
                hex(hash, sizeof(hash), got);
                return fail(s, -EBADMSG,
                            "the image's SHA-256 TLV (%s) does not match its contents (%s): a "
                            "corrupted image, which MCUboot would refuse to boot",
                            want, got);
        }
        gw_mcuboot_version_string(&s->img, s->version, sizeof(s->version));
        return 0;
}

static int smp_install(void *priv, const struct gw_reader *reader)
{
        struct smp *s = priv;
        int r;

        if (s->state != SMP_IDLE)
                return -EBUSY;
        r = open_image(s, reader);
        if (r < 0)
                return r;
        if (small_buffer(s) < 0)
                return fail(s, -ENOMEM, "out of memory");
        gw_proto_debug(s->host, "smp: installing %s (%" PRIu64 " bytes) through img_mgmt",
                       s->version, reader->size);
        /* With both given, the node's buffers need not be asked. */
        if (s->mtu_opt && s->window_opt)
                return after_params(s);
        return step(s, SMP_PARAMS, CMD_PARAMS);
}

static int smp_identify(void *priv, struct gw_options *ret)
{
        struct smp *s = priv;

        if (s->state != SMP_IDLE)
                return -EBUSY;
        if (!ret)
                return -EINVAL;
        if (small_buffer(s) < 0)
                return fail(s, -ENOMEM, "out of memory");
        s->facts = ret;
        return step(s, SMP_ID_STATE, CMD_STATE_READ);
}

static int smp_input(void *priv, const uint8_t *buf, size_t n)
{
        struct smp *s = priv;
        int r;

        if (s->state == SMP_IDLE || s->state == SMP_DONE || s->state == SMP_FAILED)
                return result(s);
        r = gw_smp_deframer_feed(&s->rx, buf, n, on_packet, s);
        if (r < 0)
                return r;
        return result(s);
}

/* Nobody answered anything: the likeliest reason is the device, not the line. */
static int fail_silent(struct smp *s, const struct smp_command *c)
{
        if (!s->heard)
                return fail(s, -ETIMEDOUT,
                            "no SMP answer on the console to %s after %" PRIu64
                            " tries: is the application built with the mcumgr serial transport "
                            "(or is MCUboot's serial recovery enabled), and is the baud rate "
                            "right?",
                            c->name, s->retries + 1);
        return fail(s, -ETIMEDOUT, "no answer to %s after %" PRIu64 " tries", c->name,
                    s->retries + 1);
}

static int smp_timeout(void *priv)
{
        struct smp *s = priv;
        uint64_t t = now(s);
        struct pending *expired = NULL;

        if (s->deadline == 0 || t < s->deadline)
                return result(s); /* stale or early */
        if (s->state == SMP_REBOOT) {
                if (t >= s->reboot_deadline)
                        return fail(s, -ETIMEDOUT,
                                    "the node did not come back within %" PRIu64
                                    " ms after the reset (no SMP answer on the console)",
                                    s->reset_timeout_ms);
                if (t >= s->next_poll) {
                        int r = send_simple(s, CMD_STATE_READ, 0);

                        if (r < 0)
                                return r;
                        s->next_poll = t + s->poll_interval_ms;
                }
                rearm(s);
                return result(s);
        }
        for (size_t i = 0; i < PENDING_MAX; i++)
                if (s->pending[i].used && s->pending[i].deadline && s->pending[i].deadline <= t &&
                    (!expired || s->pending[i].deadline < expired->deadline))
                        expired = &s->pending[i];
        if (!expired) {
                rearm(s);
                return result(s);
        }
        switch (s->state) {
        case SMP_UPLOAD: {
                bool current = false;

                /* Every request whose time is up is lost: it no longer takes a buffer. Only one
                 * of the current window counts as a try; stale ones were given up already. */
                for (size_t i = 0; i < PENDING_MAX; i++)
                        if (s->pending[i].used && s->pending[i].deadline &&
                            s->pending[i].deadline <= t) {
                                current = current || s->pending[i].epoch == s->epoch;
                                s->pending[i].used = false;
                        }
                return current ? upload_timeout(s) : fill_window(s);
        }
        case SMP_RESET:
                /* The node may reset before its answer leaves. */
                gw_proto_debug(s->host, "smp: no answer to the reset: assuming the node went down");
                return start_reboot_wait(s);
        case SMP_PARAMS:
        case SMP_STATE:
        case SMP_VERIFY:
        case SMP_TEST:
        case SMP_CONFIRM:
        case SMP_CHECK:
        case SMP_ID_STATE:
        case SMP_ID_PARAMS: {
                enum smp_cmd cmd = expired->cmd;
                int r;

                /* A late answer to an earlier try still counts. */
                for (size_t i = 0; i < PENDING_MAX; i++)
                        if (s->pending[i].deadline <= t)
                                s->pending[i].deadline = 0;
                if (s->retries >= s->retries_max) {
                        if (s->state == SMP_ID_PARAMS)
                                return succeed(s); /* identify says what it knows */
                        return fail_silent(s, &commands[cmd]);
                }
                s->retries++;
                gw_proto_debug(s->host, "smp: %s unanswered, resending (%" PRIu64 "/%" PRIu64 ")",
                               commands[cmd].name, s->retries, s->retries_max);
                r = send_simple(s, cmd, s->request_timeout_ms);
                if (r < 0)
                        return r;
                rearm(s);
                return result(s);
        }
        default:
                rearm(s);
                return result(s);
        }
}

static int smp_cancel(void *priv)
{
        struct smp *s = priv;

        if (s->state == SMP_IDLE || s->state == SMP_DONE || s->state == SMP_FAILED) {
                s->host->set_deadline(s->host->ctx, 0);
                return -ECANCELED;
        }
        /* SMP has no abort: the node keeps what it received, and a later upload of the same
         * image resumes there. */
        return fail(s, -ECANCELED,
                    "cancelled in state %s (%" PRIu64 " of %" PRIu64 " bytes acknowledged)",
                    smp_state_to_string(s->state), s->acked, s->reader ? s->reader->size : 0);
}

static int smp_hangup(void *priv)
{
        struct smp *s = priv;

        if (s->state == SMP_DONE)
                return GW_PROTO_DONE;
        if (s->state == SMP_FAILED)
                return s->error;
        if (s->state == SMP_RESET || s->state == SMP_REBOOT)
                return fail(s, -EPIPE,
                            "the console went away when the node reset (a USB CDC-ACM console "
                            "leaves with its device); the image is marked for test but not "
                            "confirmed: MCUboot reverts it on the reset after next unless "
                            "confirmed");
        return fail(s, -EPIPE, "link lost in state %s", smp_state_to_string(s->state));
}

static int smp_check_image(void *priv, const struct gw_reader *reader,
                           const struct gw_options *facts)
{
        struct smp *s = priv;
        const char *running;
        unsigned a[4] = {0}, b[4];
        int n, r;

        if (s->state != SMP_IDLE)
                return -EBUSY;
        r = open_image(s, reader);
        if (r < 0)
                return r;
        running = gw_options_get(facts, "version");
        if (!s->upgrade || !running)
                return 0;
        n = sscanf(running, "%u.%u.%u.%u", &a[0], &a[1], &a[2], &a[3]);
        if (n < 3)
                return 0;
        b[0] = s->img.major;
        b[1] = s->img.minor;
        b[2] = s->img.revision;
        b[3] = s->img.build;
        /* img_mgmt's "upgrade" compares major, minor, revision; the build number does not make
         * an image newer. */
        for (int i = 0; i < 3; i++) {
                if (b[i] > a[i])
                        return 0;
                if (b[i] < a[i])
                        break;
        }
        return fail(s, -EINVAL,
                    "option upgrade: the node runs %s, and %s is not newer; the node would refuse "
                    "it (IMG_MGMT_ERR_CURRENT_VERSION_IS_NEWER)",
                    running, s->version);
}

static int smp_installed(void *priv, const struct gw_reader *reader, const struct gw_options *facts)
{
        struct smp *s = priv;
        struct gw_mcuboot_image img;
        const char *hash, *confirmed;
        char want[2 * GW_MCUBOOT_HASH_LEN + 1];
        int r;

        if (!reader || !reader->pread)
                return -EINVAL;
        r = gw_mcuboot_parse(reader, &img, NULL, 0);
        if (r == -EBADMSG)
                return 0; /* not an image this protocol would install: check_image says why */
        if (r < 0)
                return r;
        hash = gw_options_get(facts, "hash");
        confirmed = gw_options_get(facts, "confirmed");
        if (!hash || !confirmed || strcmp(confirmed, "true") != 0)
                return 0;
        hex(img.hash, GW_MCUBOOT_HASH_LEN, want);
        gw_proto_debug(s->host, "smp: the node runs %s, the image is %s", hash, want);
        return strcmp(hash, want) == 0 ? 1 : 0;
}

static const char *const smp_options[] = {
    "request-timeout-ms",
    "erase-timeout-ms",
    "retries",
    "reset-timeout-ms",
    "poll-interval-ms",
    "mtu",
    "window",
    "image",
    "smp-version",
    "confirm",
    "upgrade",
    "identify-params",
    NULL,
};

const struct gw_protocol_ops gw_protocol_smp_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "smp",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct smp),
    .init = smp_init,
    .done = smp_done,
    .install = smp_install,
    .input = smp_input,
    .timeout = smp_timeout,
    .cancel = smp_cancel,
    .identify = smp_identify,
    .hangup = smp_hangup,
    .options = smp_options,
    .check_image = smp_check_image,
    .link_defaults = NULL,
    .installed = smp_installed,
};
