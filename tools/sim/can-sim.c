/* can-sim: an slcan (Lawicel) adapter on a pseudo-terminal in front of a simulated CAN bus of UDS
 * ECUs. The bus is paced by bit time (stuff bits counted from the bits sent, arbitration by id);
 * each ECU has its own ISO-TP (ISO 15765-2) server side and a UDS (ISO 14229) server with a
 * flash model, written here independently of the host's implementation. Faults come from the
 * command line or, at run time, through the control channel; a JSON report says what happened. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zlib.h>

#include "can-bits.h"
#include "cli.h"
#include "control.h"
#include "loop.h"
#include "pty.h"
#include "gw/plugin.h"

#define NSEC_PER_USEC 1000ULL
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC  1000000000ULL
#define NEVER         UINT64_MAX

#define ECU_MAX          16
#define NAME_LEN         32
#define STR_LEN          64
#define LINE_MAX_LEN     (1 + 8 + 1 + 128 + 4) /* the longest frame line, with a timestamp */
#define ADAPTER_TXQ      64                    /* frames the adapter holds for the bus */
#define ECU_TXQ          16                    /* an ECU's frames waiting for the bus */
#define ISOTP_MAX        8192                  /* the largest message an ECU takes or sends */
#define ISOTP_TXQ        4                     /* responses waiting for the ISO-TP sender */
#define ISOTP_N_MS       1000                  /* N_Bs and N_Cr */
#define ISOTP_WFT_MAX    16                    /* flow-control WAITs an ECU accepts in a row */
#define RDBI_MAX         8                     /* DIDs in one ReadDataByIdentifier */
#define FLASH_MAX        (64u * 1024 * 1024)
#define S3_MS            5000
#define SECURITY_DELAY_S 10
#define HUP_RECHECK_NS   (20 * NSEC_PER_MSEC)
#define PAD_BYTE         0xcc

#define vlog(s, ...) gw_sim_log((s)->verbose, "can-sim", __VA_ARGS__)

/* UDS service ids and negative response codes (ISO 14229-1). */
enum {
        SID_SESSION = 0x10,
        SID_RESET = 0x11,
        SID_RDBI = 0x22,
        SID_SECURITY = 0x27,
        SID_ROUTINE = 0x31,
        SID_DOWNLOAD = 0x34,
        SID_TRANSFER = 0x36,
        SID_EXIT = 0x37,
        SID_TESTER = 0x3e,
        SID_NEGATIVE = 0x7f,
};

enum {
        NRC_SERVICE_NOT_SUPPORTED = 0x11,
        NRC_SUBFUNCTION_NOT_SUPPORTED = 0x12,
        NRC_BAD_LENGTH = 0x13,
        NRC_BUSY = 0x21,
        NRC_CONDITIONS = 0x22,
        NRC_SEQUENCE = 0x24,
        NRC_OUT_OF_RANGE = 0x31,
        NRC_SECURITY_DENIED = 0x33,
        NRC_INVALID_KEY = 0x35,
        NRC_ATTEMPTS = 0x36,
        NRC_DELAY = 0x37,
        NRC_DOWNLOAD_NOT_ACCEPTED = 0x70,
        NRC_TRANSFER_SUSPENDED = 0x71,
        NRC_PROGRAMMING_FAILURE = 0x72,
        NRC_WRONG_COUNTER = 0x73,
        NRC_PENDING = 0x78,
        NRC_SUBFUNCTION_IN_SESSION = 0x7e,
        NRC_SERVICE_IN_SESSION = 0x7f,
};

/* ---- Frames waiting for the bus ---------------------------------------------------------- */

struct txframe {
        struct gw_can_frame f;
        uint64_t ready_ns; /* it may start on the bus from then */
};

struct txq {
        struct txframe *q;
        size_t cap, head, len;
};

static int txq_push(struct txq *t, const struct gw_can_frame *f, uint64_t ready_ns)
{
        if (t->len == t->cap)
                return -ENOBUFS;
        t->q[(t->head + t->len) % t->cap] = (struct txframe){.f = *f, .ready_ns = ready_ns};
        t->len++;
        return 0;
}

static const struct txframe *txq_peek(const struct txq *t)
{
        return t->len ? &t->q[t->head] : NULL;
}

static void txq_pop(struct txq *t)
{
        t->head = (t->head + 1) % t->cap;
        t->len--;
}

/* ---- ECUs ---------------------------------------------------------------------------------- */

enum isotp_rx_state {
        RX_IDLE,
        RX_WAIT_CF, /* a first frame came: consecutive frames follow */
};

enum isotp_tx_state {
        TX_IDLE,
        TX_WAIT_FC, /* first frame sent, or a block done: the host's flow control next */
        TX_SEND_CF, /* consecutive frames go out, STmin apart */
};

struct message {
        uint8_t *data;
        size_t len;
        uint64_t ready_ns;
};

struct isotp {
        enum isotp_rx_state rx_state;
        uint8_t rx_buf[ISOTP_MAX];
        size_t rx_len, rx_got;
        uint8_t rx_sn;
        unsigned rx_block; /* CFs since our last flow control */
        bool rx_fd;        /* the request came in FD frames: answer in FD frames */
        uint64_t rx_deadline_ns;

        enum isotp_tx_state tx_state;
        uint8_t tx_buf[ISOTP_MAX];
        size_t tx_len, tx_off;
        uint8_t tx_sn;
        bool tx_fd;
        unsigned tx_bs, tx_block, tx_waits;
        uint64_t tx_stmin_ns;
        uint64_t tx_deadline_ns; /* N_Bs while waiting for flow control */
        uint64_t next_cf_ns;     /* when the next consecutive frame may be queued */
        bool cf_on_bus;          /* a consecutive frame is queued or on the bus */

        struct message pending[ISOTP_TXQ];
        size_t n_pending;
};

/* A UDS operation that takes time (erase, programming): answered when done, with response
 * pending (0x78) meanwhile when it takes longer than P2. */
struct operation {
        bool active;
        uint8_t sid;
        uint8_t response[16];
        size_t response_len;
        uint64_t done_ns, next_pending_ns;
};

/* The download in progress and what it kept: the resume point (F1A0). */
struct download {
        bool active; /* between RequestDownload and RequestTransferExit */
        uint8_t expected, last;
        bool any; /* a block was taken: last is valid */
        uint32_t addr, size, received;
        /* the record kept across interruptions (flash keeps what was programmed) */
        bool kept;
        uint32_t kept_addr, kept_size, kept_done;
};

struct nrc_fault {
        uint8_t sid, nrc;
        unsigned count; /* 0: every time */
        bool armed;
};

struct ecu {
        /* configuration */
        char name[NAME_LEN];
        uint32_t req_id, resp_id; /* the host's tx-id and rx-id */
        bool ext, fd;
        uint8_t tx_dl;
        char serial[STR_LEN], version[STR_LEN], next_version[STR_LEN], hardware[STR_LEN];
        uint32_t flash_addr, flash_size, page_size, block_len;
        uint32_t secret;
        int64_t version_at; /* F195 after the reset: the string at this offset of the image */
        unsigned erase_ms, program_ms, reset_ms, p2_ms, p2star_ms, pending_ms, response_us;
        uint8_t bs, stmin;
        bool pad;

        /* state */
        uint8_t *mem;
        uint8_t *written; /* a bit per byte: programmed since its page was erased */
        uint8_t session;
        bool unlocked, seed_sent;
        uint32_t seed;
        unsigned bad_keys;
        uint64_t locked_until_ns;
        uint64_t last_request_ns;
        uint64_t reset_until_ns;
        char pending_version[STR_LEN]; /* becomes the version at the next reset */
        bool check_passed;
        uint32_t last_crc;
        struct download dl;
        struct operation op;
        struct isotp tp;
        struct txq txq;

        /* faults */
        bool silent;
        bool wrong_sequence;

        /* report */
        uint64_t frames_rx, frames_tx, requests, bytes_programmed, pages_erased, blocks;
        uint64_t services[256], nrcs[256];
        uint64_t isotp_errors, dropped;
        uint64_t first_transfer_ns, last_transfer_ns;
};

/* ---- The adapter ------------------------------------------------------------------------- */

struct adapter {
        bool open, listen_only, timestamps;
        int s_code, y_code; /* -1: not set */
        bool classic;       /* refuses Y, d, D, b, B */
        char line[LINE_MAX_LEN + 1];
        size_t len;
        bool overlong;
        struct txq txq;
        uint64_t mute_until_ns;
        uint64_t reset_after; /* drop the open state after this many host frames; 0: no */
        uint64_t lines, frames_in, frames_out, malformed, bels, overflows, resets;
};

struct sim {
        /* configuration */
        const char *link;
        const char *report_path;
        const char *trace_path;
        FILE *trace;
        const char *dump_dir;
        const char *control_path;
        uint32_t bitrate, data_bitrate;
        uint32_t functional_id;
        bool verbose;
        uint64_t seed;

        /* the pty */
        int master;
        char slave[128];
        bool connected;
        uint64_t hup_check_ns;
        int sigfd;

        struct gw_sim_control ctl;

        /* the bus */
        bool busy;
        struct gw_can_frame cur;
        int cur_src; /* -1 the adapter, else the ECU's index */
        uint64_t cur_start_ns, cur_end_ns, free_ns;
        uint64_t frames, bits, stuff_bits, busy_ns, first_ns, last_ns;
        uint64_t lose_at, lost, mismatched;

        struct adapter ad;
        struct ecu ecus[ECU_MAX];
        size_t n_ecus;
        struct nrc_fault nrc[ECU_MAX + 1][8]; /* [ECU_MAX]: any ECU */
        size_t n_nrc[ECU_MAX + 1];
};

static uint32_t get_be32(const uint8_t *p)
{
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t) (v >> 24);
        p[1] = (uint8_t) (v >> 16);
        p[2] = (uint8_t) (v >> 8);
        p[3] = (uint8_t) v;
}

static uint64_t rng_state;

static uint32_t rng32(void)
{
        /* xorshift64*: seeds, nothing that needs to be secret. */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return (uint32_t) ((rng_state * 0x2545f4914f6cdd1dULL) >> 32);
}

static const uint32_t s_rates[] = {10000,  20000,  50000,  100000, 125000,
                                   250000, 500000, 800000, 1000000};
static const uint32_t y_rates[] = {500000, 1000000, 2000000, 0, 4000000, 5000000};

/* ---- The bus ------------------------------------------------------------------------------- */

static void ecu_frame(struct sim *s, struct ecu *e, const struct gw_can_frame *f, uint64_t t,
                      bool functional);
static void ecu_frame_sent(struct sim *s, struct ecu *e, uint64_t t);

/* Lower wins: the 11 base id bits first; a base frame beats an extended one with the same base
 * (its RTR bit is dominant where the extended frame's SRR is recessive). */
static uint64_t arbitration_key(const struct gw_can_frame *f)
{
        if (f->flags & GW_CAN_EFF)
                return ((uint64_t) (f->id >> 18) << 20) | (1u << 19) | ((f->id & 0x3ffff) << 1) |
                       ((f->flags & GW_CAN_RTR) ? 1 : 0);
        return ((uint64_t) f->id << 20) | ((f->flags & GW_CAN_RTR) ? (1u << 18) : 0);
}

static bool adapter_on_bus(const struct sim *s)
{
        return s->ad.open && s->ad.s_code >= 0;
}

static bool adapter_rate_ok(const struct sim *s)
{
        return s->ad.s_code >= 0 && s_rates[s->ad.s_code] == s->bitrate;
}

/* The earliest a waiting frame may start, NEVER when none waits. */
static uint64_t bus_next_start(const struct sim *s)
{
        uint64_t t = NEVER;
        const struct txframe *x;

        if (s->busy)
                return NEVER;
        x = txq_peek(&s->ad.txq);
        if (x && x->ready_ns < t)
                t = x->ready_ns;
        for (size_t i = 0; i < s->n_ecus; i++) {
                x = txq_peek(&s->ecus[i].txq);
                if (x && x->ready_ns < t)
                        t = x->ready_ns;
        }
        if (t != NEVER && t < s->free_ns)
                t = s->free_ns;
        return t;
}

/* One line per frame as it starts (--trace): when it could have started and when it did and
 * ended (ns from the first frame's start), who sent it, its id, its bits and its data, so that
 * a benchmark can tell the bus's idle time apart by whom the bus was waiting for. */
static void trace_frame(struct sim *s, const struct gw_can_bits *bits, uint64_t ready_ns)
{
        const struct gw_can_frame *f = &s->cur;
        uint64_t t0 = s->first_ns;

        fprintf(s->trace, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %s %x %u %u ",
                ready_ns > t0 ? ready_ns - t0 : 0, s->cur_start_ns - t0, s->cur_end_ns - t0,
                s->cur_src < 0 ? "host" : s->ecus[s->cur_src].name, f->id,
                bits->nominal + bits->data, bits->stuff);
        for (unsigned i = 0; i < f->len; i++)
                fprintf(s->trace, "%02x", f->data[i]);
        fputc('\n', s->trace);
}

/* Starts the frame that wins arbitration among those ready at t. */
static void bus_start(struct sim *s, uint64_t t)
{
        const struct txframe *x, *best = NULL;
        struct gw_can_bits bits;
        uint64_t ready_ns;
        int src = -2;

        x = txq_peek(&s->ad.txq);
        if (x && x->ready_ns <= t) {
                best = x;
                src = -1;
        }
        for (size_t i = 0; i < s->n_ecus; i++) {
                x = txq_peek(&s->ecus[i].txq);
                if (x && x->ready_ns <= t &&
                    (!best || arbitration_key(&x->f) < arbitration_key(&best->f))) {
                        best = x;
                        src = (int) i;
                }
        }
        if (!best)
                return;
        s->cur = best->f;
        s->cur_src = src;
        ready_ns = best->ready_ns;
        if (src == -1)
                txq_pop(&s->ad.txq);
        else
                txq_pop(&s->ecus[src].txq);
        if (gw_can_frame_bits(&s->cur, &bits) < 0)
                bits = (struct gw_can_bits){.nominal = 160};
        s->busy = true;
        s->cur_start_ns = t;
        s->cur_end_ns = t + gw_can_bits_ns(&bits, s->bitrate, s->data_bitrate);
        s->bits += bits.nominal + bits.data;
        s->stuff_bits += bits.stuff;
        s->busy_ns += s->cur_end_ns - t;
        if (s->frames == 0)
                s->first_ns = t;
        if (s->trace)
                trace_frame(s, &bits, ready_ns);
}

static void adapter_emit(struct sim *s, const struct gw_can_frame *f, uint64_t t);

/* The frame on the bus has ended at cur_end_ns: every node that listens for it gets it. */
static void bus_end(struct sim *s)
{
        const struct gw_can_frame *f = &s->cur;
        uint64_t t = s->cur_end_ns;
        bool from_host = s->cur_src == -1;

        s->busy = false;
        s->free_ns = t;
        s->last_ns = t;
        s->frames++;
        if (s->cur_src >= 0) {
                s->ecus[s->cur_src].frames_tx++;
                ecu_frame_sent(s, &s->ecus[s->cur_src], t);
        }
        if (s->lose_at && s->frames == s->lose_at) {
                vlog(s, "fault: frame %" PRIu64 " (id 0x%x) lost on the bus", s->frames, f->id);
                s->lose_at = 0;
                s->lost++;
                return;
        }
        /* An adapter at another bitrate sees only errors, and its frames reach nobody. */
        if (!adapter_rate_ok(s)) {
                if (from_host || adapter_on_bus(s))
                        s->mismatched++;
                if (from_host)
                        return;
        } else if (!from_host && adapter_on_bus(s)) {
                adapter_emit(s, f, t);
        }
        for (size_t i = 0; i < s->n_ecus; i++) {
                struct ecu *e = &s->ecus[i];
                bool ext = f->flags & GW_CAN_EFF;

                if ((int) i == s->cur_src || ext != e->ext || (f->flags & GW_CAN_RTR))
                        continue;
                if (f->id == e->req_id)
                        ecu_frame(s, e, f, t, false);
                else if (f->id == s->functional_id && s->cur_src == -1)
                        ecu_frame(s, e, f, t, true);
        }
}

/* ---- The adapter's side of the pty --------------------------------------------------------- */

static void pty_write(struct sim *s, const char *buf, size_t n)
{
        ssize_t w;

        if (!s->connected)
                return;
        w = write(s->master, buf, n);
        if (w < 0 && errno == EIO)
                s->connected = false;
        else if (w < (ssize_t) n)
                s->ad.overflows++; /* the host does not read: the adapter's buffer overflows */
}

static const char hexd[] = "0123456789ABCDEF";

/* A frame from the bus to the host, in the adapter's syntax. */
static void adapter_emit(struct sim *s, const struct gw_can_frame *f, uint64_t t)
{
        char line[LINE_MAX_LEN + 2];
        bool ext = f->flags & GW_CAN_EFF, fd = f->flags & GW_CAN_FD, rtr = f->flags & GW_CAN_RTR;
        size_t at = 0;
        unsigned idlen = ext ? 8 : 3;
        int dlc = fd ? gw_can_len_to_dlc(f->len) : f->len;

        if (dlc < 0 || (fd && s->ad.classic))
                return;
        if (fd)
                line[at++] = (f->flags & GW_CAN_BRS) ? (ext ? 'B' : 'b') : (ext ? 'D' : 'd');
        else
                line[at++] = rtr ? (ext ? 'R' : 'r') : (ext ? 'T' : 't');
        for (unsigned i = idlen; i-- > 0;)
                line[at++] = hexd[(f->id >> (4 * i)) & 0xf];
        line[at++] = hexd[dlc];
        for (unsigned i = 0; !rtr && i < f->len; i++) {
                line[at++] = hexd[f->data[i] >> 4];
                line[at++] = hexd[f->data[i] & 0xf];
        }
        if (s->ad.timestamps) {
                unsigned ms = (unsigned) ((t / NSEC_PER_MSEC) % 60000);

                for (int i = 3; i >= 0; i--)
                        line[at++] = hexd[(ms >> (4 * i)) & 0xf];
        }
        line[at++] = '\r';
        pty_write(s, line, at);
        s->ad.frames_out++;
}

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static int hex_field(const char *p, size_t n, uint32_t *ret)
{
        uint32_t v = 0;

        for (size_t i = 0; i < n; i++) {
                int d = hexval(p[i]);

                if (d < 0)
                        return -EINVAL;
                v = v << 4 | (uint32_t) d;
        }
        *ret = v;
        return 0;
}

/* A transmit command (t T r R d D b B) from the host: the frame, or -EINVAL. */
static int adapter_parse_frame(const char *l, size_t len, struct gw_can_frame *ret)
{
        static const uint8_t fd_len[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64};
        struct gw_can_frame f = {0};
        char c = l[0];
        bool ext = c == 'T' || c == 'R' || c == 'D' || c == 'B';
        bool rtr = c == 'r' || c == 'R', fd = strchr("dDbB", c) != NULL;
        size_t idlen = ext ? 8 : 3, need;
        uint32_t v;
        int dlc;

        if (len < 1 + idlen + 1 || hex_field(l + 1, idlen, &f.id) < 0)
                return -EINVAL;
        if (f.id > (ext ? 0x1fffffffu : 0x7ffu))
                return -EINVAL;
        dlc = hexval(l[1 + idlen]);
        if (dlc < 0 || (!fd && dlc > 8))
                return -EINVAL;
        f.len = fd ? fd_len[dlc] : (uint8_t) dlc;
        f.flags = (uint8_t) ((ext ? GW_CAN_EFF : 0) | (rtr ? GW_CAN_RTR : 0) |
                             (fd ? GW_CAN_FD : 0) | ((c == 'b' || c == 'B') ? GW_CAN_BRS : 0));
        need = 2 + idlen + (rtr ? 0 : 2u * f.len);
        if (len != need)
                return -EINVAL;
        for (unsigned i = 0; !rtr && i < f.len; i++) {
                if (hex_field(l + 2 + idlen + 2 * i, 2, &v) < 0)
                        return -EINVAL;
                f.data[i] = (uint8_t) v;
        }
        *ret = f;
        return 0;
}

static void adapter_reply(struct sim *s, bool ok)
{
        if (!ok)
                s->ad.bels++;
        pty_write(s, ok ? "\r" : "\a", 1);
}

static void adapter_drop_open(struct sim *s, const char *why)
{
        vlog(s, "fault: the adapter drops its open state (%s)", why);
        s->ad.open = false;
        s->ad.s_code = -1;
        s->ad.y_code = -1;
        s->ad.txq.len = 0;
        s->ad.resets++;
}

/* One command line from the host (without its '\r'). */
static void adapter_command(struct sim *s, uint64_t t)
{
        struct adapter *ad = &s->ad;
        const char *l = ad->line;
        struct gw_can_frame f;
        char reply[16];

        ad->lines++;
        if (ad->len == 0)
                return; /* an empty line ends a partial command; nothing to answer */
        switch (l[0]) {
        case 't':
        case 'T':
        case 'r':
        case 'R':
        case 'd':
        case 'D':
        case 'b':
        case 'B':
                if (adapter_parse_frame(l, ad->len, &f) < 0) {
                        ad->malformed++;
                        adapter_reply(s, false);
                        return;
                }
                if (!ad->open || ad->listen_only || ((f.flags & GW_CAN_FD) && ad->classic) ||
                    txq_push(&ad->txq, &f, t) < 0) {
                        adapter_reply(s, false);
                        return;
                }
                ad->frames_in++;
                pty_write(s, (f.flags & GW_CAN_EFF) ? "Z\r" : "z\r", 2);
                if (ad->reset_after && ad->frames_in == ad->reset_after) {
                        ad->reset_after = 0;
                        adapter_drop_open(s, "reset-adapter-after");
                }
                return;
        case 'C':
                adapter_reply(s, ad->len == 1 && ad->open);
                if (ad->len == 1) {
                        ad->open = false;
                        ad->listen_only = false;
                        ad->txq.len = 0;
                }
                return;
        case 'S':
                if (ad->len != 2 || ad->open || l[1] < '0' || l[1] > '8') {
                        adapter_reply(s, false);
                        return;
                }
                ad->s_code = l[1] - '0';
                adapter_reply(s, true);
                return;
        case 'Y':
                if (ad->len != 2 || ad->open || ad->classic || l[1] < '0' || l[1] > '5' ||
                    y_rates[l[1] - '0'] == 0) {
                        adapter_reply(s, false);
                        return;
                }
                ad->y_code = l[1] - '0';
                adapter_reply(s, true);
                return;
        case 'O':
        case 'L':
                if (ad->len != 1 || ad->open) {
                        adapter_reply(s, false);
                        return;
                }
                /* No S yet: the bitrate the adapter powered up with, the bus's. */
                if (ad->s_code < 0)
                        for (int i = 0; i < 9; i++)
                                if (s_rates[i] == s->bitrate)
                                        ad->s_code = i;
                if (ad->s_code < 0) {
                        adapter_reply(s, false);
                        return;
                }
                ad->open = true;
                ad->listen_only = l[0] == 'L';
                if (!adapter_rate_ok(s))
                        vlog(s,
                             "adapter opened at %u bit/s on a %u bit/s bus: frames will not "
                             "get through",
                             s_rates[ad->s_code], s->bitrate);
                adapter_reply(s, true);
                return;
        case 'V':
        case 'v':
                snprintf(reply, sizeof(reply), "%c1013\r", l[0]);
                pty_write(s, reply, strlen(reply));
                return;
        case 'N':
                pty_write(s, "NSIM1\r", 6);
                return;
        case 'F':
                pty_write(s, "F00\r", 4);
                return;
        case 'Z':
                if (ad->len != 2 || (l[1] != '0' && l[1] != '1')) {
                        adapter_reply(s, false);
                        return;
                }
                ad->timestamps = l[1] == '1';
                adapter_reply(s, true);
                return;
        default:
                ad->malformed++;
                adapter_reply(s, false);
        }
}

static void adapter_input(struct sim *s, const char *buf, size_t n, uint64_t t)
{
        struct adapter *ad = &s->ad;

        if (t < ad->mute_until_ns)
                return; /* rebooting: everything lost */
        for (size_t i = 0; i < n; i++) {
                char c = buf[i];

                if (c == '\r') {
                        if (ad->overlong) {
                                ad->malformed++;
                                adapter_reply(s, false);
                        } else {
                                ad->line[ad->len] = '\0';
                                adapter_command(s, t);
                        }
                        ad->len = 0;
                        ad->overlong = false;
                } else if (c == '\n') {
                        continue;
                } else if (ad->len < LINE_MAX_LEN) {
                        ad->line[ad->len++] = c;
                } else {
                        ad->overlong = true;
                }
        }
}

/* ---- ISO-TP: the ECU's side ---------------------------------------------------------------- */

static const char *rx_state_to_string(enum isotp_rx_state st)
{
        return st == RX_IDLE ? "idle" : "wait-cf";
}

static const char *tx_state_to_string(enum isotp_tx_state st)
{
        switch (st) {
        case TX_IDLE:
                return "idle";
        case TX_WAIT_FC:
                return "wait-fc";
        case TX_SEND_CF:
                return "send-cf";
        }
        return "?";
}

static void set_rx_state(struct sim *s, struct ecu *e, enum isotp_rx_state to)
{
        if (e->tp.rx_state != to && s->verbose)
                vlog(s, "%s: isotp rx %s -> %s", e->name, rx_state_to_string(e->tp.rx_state),
                     rx_state_to_string(to));
        e->tp.rx_state = to;
}

static void set_tx_state(struct sim *s, struct ecu *e, enum isotp_tx_state to)
{
        if (e->tp.tx_state != to && s->verbose)
                vlog(s, "%s: isotp tx %s -> %s", e->name, tx_state_to_string(e->tp.tx_state),
                     tx_state_to_string(to));
        e->tp.tx_state = to;
}

/* The smallest frame length carrying n bytes: classic 8 when padding, FD the next DLC. */
static uint8_t frame_len(const struct ecu *e, bool fd, size_t n)
{
        static const uint8_t fd_len[] = {8, 12, 16, 20, 24, 32, 48, 64};

        if (!fd)
                return e->pad ? 8 : (uint8_t) n;
        if (n <= 8)
                return e->pad ? 8 : (uint8_t) n;
        for (size_t i = 0; i < sizeof(fd_len); i++)
                if (fd_len[i] >= n)
                        return fd_len[i];
        return 64;
}

static void ecu_send_frame(struct sim *s, struct ecu *e, const uint8_t *payload, size_t n, bool fd,
                           uint64_t t)
{
        struct gw_can_frame f = {.id = e->resp_id};

        if (e->silent)
                return;
        f.flags = (uint8_t) ((e->ext ? GW_CAN_EFF : 0) | (fd ? GW_CAN_FD : 0) |
                             (fd && s->data_bitrate ? GW_CAN_BRS : 0));
        f.len = frame_len(e, fd, n);
        memset(f.data, PAD_BYTE, f.len);
        memcpy(f.data, payload, n);
        if (txq_push(&e->txq, &f, t) < 0)
                e->dropped++;
}

static void isotp_flow_control(struct sim *s, struct ecu *e, uint8_t fs, uint64_t t)
{
        uint8_t fc[3] = {(uint8_t) (0x30 | fs), e->bs, e->stmin};

        ecu_send_frame(s, e, fc, 3, e->tp.rx_fd, t);
}

/* STmin as sent (ISO 15765-2): 0x00-0x7f ms, 0xf1-0xf9 100-900 us, anything else 127 ms. */
static uint64_t stmin_ns(uint8_t v)
{
        if (v <= 0x7f)
                return v * NSEC_PER_MSEC;
        if (v >= 0xf1 && v <= 0xf9)
                return (uint64_t) (v - 0xf0) * 100 * NSEC_PER_USEC;
        return 127 * NSEC_PER_MSEC;
}

/* The data a frame of the ECU carries at most (TX_DL - PCI). */
static size_t tx_dl(const struct ecu *e, bool fd)
{
        return fd ? e->tx_dl : 8;
}

/* Starts sending msg: a single frame, or a first frame and flow control from the host. */
static void isotp_start(struct sim *s, struct ecu *e, const uint8_t *msg, size_t len, uint64_t t)
{
        struct isotp *tp = &e->tp;
        bool fd = tp->rx_fd && e->fd;
        size_t dl = tx_dl(e, fd);
        uint8_t fr[64];

        tp->tx_fd = fd;
        if (len <= dl - 1 && len <= 7) {
                fr[0] = (uint8_t) len;
                memcpy(fr + 1, msg, len);
                ecu_send_frame(s, e, fr, len + 1, fd, t);
                return;
        }
        if (fd && len <= dl - 2) {
                fr[0] = 0;
                fr[1] = (uint8_t) len;
                memcpy(fr + 2, msg, len);
                ecu_send_frame(s, e, fr, len + 2, fd, t);
                return;
        }
        memcpy(tp->tx_buf, msg, len);
        tp->tx_len = len;
        if (len <= 0xfff) {
                fr[0] = (uint8_t) (0x10 | (len >> 8));
                fr[1] = (uint8_t) len;
                tp->tx_off = dl - 2;
                memcpy(fr + 2, msg, tp->tx_off);
        } else { /* the 32-bit length escape */
                fr[0] = 0x10;
                fr[1] = 0;
                put_be32(fr + 2, (uint32_t) len);
                tp->tx_off = dl - 6;
                memcpy(fr + 6, msg, tp->tx_off);
        }
        ecu_send_frame(s, e, fr, dl, fd, t);
        tp->tx_sn = 1;
        tp->tx_waits = 0;
        tp->tx_deadline_ns = t + ISOTP_N_MS * NSEC_PER_MSEC;
        set_tx_state(s, e, TX_WAIT_FC);
}

static void isotp_next_message(struct sim *s, struct ecu *e, uint64_t t)
{
        struct isotp *tp = &e->tp;
        struct message m;

        set_tx_state(s, e, TX_IDLE);
        tp->cf_on_bus = false;
        while (tp->tx_state == TX_IDLE && tp->n_pending > 0) {
                m = tp->pending[0];
                memmove(tp->pending, tp->pending + 1, (tp->n_pending - 1) * sizeof(m));
                tp->n_pending--;
                isotp_start(s, e, m.data, m.len, t > m.ready_ns ? t : m.ready_ns);
                free(m.data);
        }
}

/* A UDS response from the ECU, from time ready_ns on. */
static void isotp_send(struct sim *s, struct ecu *e, const uint8_t *msg, size_t len,
                       uint64_t ready_ns)
{
        struct isotp *tp = &e->tp;
        struct message *m;

        if (e->silent || len == 0 || len > ISOTP_MAX)
                return;
        if (tp->tx_state == TX_IDLE && tp->n_pending == 0) {
                isotp_start(s, e, msg, len, ready_ns);
                return;
        }
        if (tp->n_pending == ISOTP_TXQ) {
                e->dropped++;
                return;
        }
        m = &tp->pending[tp->n_pending];
        m->data = malloc(len);
        if (!m->data)
                return;
        memcpy(m->data, msg, len);
        m->len = len;
        m->ready_ns = ready_ns;
        tp->n_pending++;
}

/* The next consecutive frame, if its time has come (called from the ECU's timer). */
static void isotp_send_cf(struct sim *s, struct ecu *e, uint64_t t)
{
        struct isotp *tp = &e->tp;
        size_t dl = tx_dl(e, tp->tx_fd), n = tp->tx_len - tp->tx_off;
        uint8_t fr[64];

        if (n > dl - 1)
                n = dl - 1;
        fr[0] = (uint8_t) (0x20 | (tp->tx_sn & 0x0f));
        memcpy(fr + 1, tp->tx_buf + tp->tx_off, n);
        tp->tx_off += n;
        tp->tx_sn = (uint8_t) ((tp->tx_sn + 1) & 0x0f);
        tp->cf_on_bus = true;
        tp->next_cf_ns = NEVER;
        /* The last frame may be shorter when not padded. */
        ecu_send_frame(s, e, fr, n + 1, tp->tx_fd, t);
}

/* A frame of the ECU has left the bus at t. */
static void ecu_frame_sent(struct sim *s, struct ecu *e, uint64_t t)
{
        struct isotp *tp = &e->tp;

        if (tp->tx_state != TX_SEND_CF || !tp->cf_on_bus || e->txq.len > 0)
                return;
        tp->cf_on_bus = false;
        if (tp->tx_off >= tp->tx_len) {
                isotp_next_message(s, e, t);
                return;
        }
        if (tp->tx_bs && ++tp->tx_block >= tp->tx_bs) {
                tp->tx_block = 0;
                tp->tx_deadline_ns = t + ISOTP_N_MS * NSEC_PER_MSEC;
                set_tx_state(s, e, TX_WAIT_FC);
                return;
        }
        tp->next_cf_ns = t + tp->tx_stmin_ns;
}

static void isotp_flow_control_in(struct sim *s, struct ecu *e, const uint8_t *d, size_t n,
                                  uint64_t t)
{
        struct isotp *tp = &e->tp;

        if (tp->tx_state != TX_WAIT_FC || n < 3)
                return; /* unexpected: ignored (ISO 15765-2) */
        switch (d[0] & 0x0f) {
        case 0: /* continue to send */
                tp->tx_bs = d[1];
                tp->tx_block = 0;
                tp->tx_stmin_ns = stmin_ns(d[2]);
                tp->tx_waits = 0;
                set_tx_state(s, e, TX_SEND_CF);
                tp->next_cf_ns = t;
                break;
        case 1: /* wait */
                if (++tp->tx_waits > ISOTP_WFT_MAX) {
                        e->isotp_errors++;
                        isotp_next_message(s, e, t);
                        return;
                }
                tp->tx_deadline_ns = t + ISOTP_N_MS * NSEC_PER_MSEC;
                break;
        case 2: /* overflow: the host cannot take it */
        default:
                e->isotp_errors++;
                vlog(s, "%s: the host refused the response (flow status %u)", e->name, d[0] & 0x0f);
                isotp_next_message(s, e, t);
                break;
        }
}

static void uds_request(struct sim *s, struct ecu *e, const uint8_t *req, size_t len, uint64_t t,
                        bool functional);

/* A frame for the ECU (its request id, or the functional id) at t. */
static void ecu_frame(struct sim *s, struct ecu *e, const struct gw_can_frame *f, uint64_t t,
                      bool functional)
{
        struct isotp *tp = &e->tp;
        const uint8_t *d = f->data;
        size_t n = f->len, len, off;
        bool fd = f->flags & GW_CAN_FD;

        if (e->silent || t < e->reset_until_ns)
                return;
        e->frames_rx++;
        if (n < 1 || (fd && !e->fd))
                return;
        switch (d[0] >> 4) {
        case 0: /* single frame */
                len = d[0] & 0x0f;
                off = 1;
                if (len == 0 && n > 8) { /* CAN FD escape */
                        len = d[1];
                        off = 2;
                }
                if (len == 0 || len > n - off)
                        return;
                if (tp->rx_state != RX_IDLE) {
                        e->isotp_errors++; /* a new message ends the one in progress */
                        set_rx_state(s, e, RX_IDLE);
                }
                tp->rx_fd = fd;
                uds_request(s, e, d + off, len, t, functional);
                return;
        case 1: /* first frame */
                if (functional || n < 8)
                        return;
                len = ((size_t) (d[0] & 0x0f) << 8) | d[1];
                off = 2;
                if (len == 0) {
                        len = (size_t) d[2] << 24 | (size_t) d[3] << 16 | (size_t) d[4] << 8 | d[5];
                        off = 6;
                }
                if (len <= n - off)
                        return; /* would have fit a single frame */
                tp->rx_fd = fd;
                if (len > ISOTP_MAX) {
                        e->isotp_errors++;
                        isotp_flow_control(s, e, 2, t + e->response_us * NSEC_PER_USEC);
                        set_rx_state(s, e, RX_IDLE);
                        return;
                }
                if (tp->rx_state != RX_IDLE)
                        e->isotp_errors++;
                memcpy(tp->rx_buf, d + off, n - off);
                tp->rx_len = len;
                tp->rx_got = n - off;
                tp->rx_sn = 1;
                tp->rx_block = 0;
                tp->rx_deadline_ns = t + ISOTP_N_MS * NSEC_PER_MSEC;
                set_rx_state(s, e, RX_WAIT_CF);
                isotp_flow_control(s, e, 0, t + e->response_us * NSEC_PER_USEC);
                return;
        case 2: /* consecutive frame */
                if (tp->rx_state != RX_WAIT_CF || functional)
                        return;
                if ((d[0] & 0x0f) != tp->rx_sn) {
                        vlog(s, "%s: consecutive frame %u, expected %u: reception aborted", e->name,
                             d[0] & 0x0f, tp->rx_sn);
                        e->isotp_errors++;
                        set_rx_state(s, e, RX_IDLE);
                        return;
                }
                len = tp->rx_len - tp->rx_got;
                if (len > n - 1)
                        len = n - 1;
                memcpy(tp->rx_buf + tp->rx_got, d + 1, len);
                tp->rx_got += len;
                tp->rx_sn = (uint8_t) ((tp->rx_sn + 1) & 0x0f);
                tp->rx_deadline_ns = t + ISOTP_N_MS * NSEC_PER_MSEC;
                if (tp->rx_got >= tp->rx_len) {
                        set_rx_state(s, e, RX_IDLE);
                        uds_request(s, e, tp->rx_buf, tp->rx_len, t, false);
                        return;
                }
                if (e->bs && ++tp->rx_block >= e->bs) {
                        tp->rx_block = 0;
                        isotp_flow_control(s, e, 0, t + e->response_us * NSEC_PER_USEC);
                }
                return;
        case 3: /* flow control for our response */
                if (!functional)
                        isotp_flow_control_in(s, e, d, n, t);
                return;
        default:
                return;
        }
}

/* ---- UDS server ---------------------------------------------------------------------------- */

struct response {
        uint8_t data[ISOTP_MAX];
        size_t len;
        uint8_t nrc;      /* != 0: a negative response */
        bool suppress;    /* the positive response is suppressed (bit 7 of the sub-function) */
        uint64_t busy_ns; /* an operation: answered after this long */
};

static const char *session_name(uint8_t session)
{
        switch (session) {
        case 1:
                return "default";
        case 2:
                return "programming";
        case 3:
                return "extended";
        }
        return "?";
}

static void set_session(struct sim *s, struct ecu *e, uint8_t to)
{
        if (e->session != to)
                vlog(s, "%s: session %s -> %s", e->name, session_name(e->session),
                     session_name(to));
        e->session = to;
        e->unlocked = false;
        e->seed_sent = false;
        if (e->dl.active)
                vlog(s, "%s: download interrupted at %" PRIu32 " of %" PRIu32 " bytes", e->name,
                     e->dl.received, e->dl.size);
        e->dl.active = false;
}

static bool written_at(const struct ecu *e, uint32_t off)
{
        return e->written[off / 8] & (1u << (off % 8));
}

/* [addr, addr + len) inside the ECU's flash: the offset, or -ERANGE. */
static int64_t flash_offset(const struct ecu *e, uint32_t addr, uint32_t len)
{
        uint64_t end = (uint64_t) addr + len;

        if (len == 0 || addr < e->flash_addr || end > (uint64_t) e->flash_addr + e->flash_size)
                return -ERANGE;
        return addr - e->flash_addr;
}

static uint32_t resume_point(const struct ecu *e)
{
        const struct download *d = &e->dl;

        return d->kept && d->kept_done > 0 && d->kept_done < d->kept_size ? d->kept_done : 0;
}

static bool programming_allowed(const struct ecu *e, struct response *r)
{
        if (e->session != 2) {
                r->nrc = NRC_SERVICE_IN_SESSION;
                return false;
        }
        if (!e->unlocked) {
                r->nrc = NRC_SECURITY_DENIED;
                return false;
        }
        return true;
}

static void svc_session(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                        struct response *r, uint64_t t)
{
        uint8_t sub = q[1] & 0x7f;

        if (n != 2) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        if (sub < 1 || sub > 3) {
                r->nrc = NRC_SUBFUNCTION_NOT_SUPPORTED;
                return;
        }
        set_session(s, e, sub);
        r->data[0] = 0x50;
        r->data[1] = sub;
        r->data[2] = (uint8_t) (e->p2_ms >> 8);
        r->data[3] = (uint8_t) e->p2_ms;
        r->data[4] = (uint8_t) ((e->p2star_ms / 10) >> 8);
        r->data[5] = (uint8_t) (e->p2star_ms / 10);
        r->len = 6;
}

static void svc_reset(struct sim *s, struct ecu *e, const uint8_t *q, size_t n, struct response *r,
                      uint64_t t)
{
        uint8_t sub = q[1] & 0x7f;

        if (n != 2) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        if (sub < 1 || sub > 3) {
                r->nrc = NRC_SUBFUNCTION_NOT_SUPPORTED;
                return;
        }
        r->data[0] = 0x51;
        r->data[1] = sub;
        r->len = 2;
        /* The answer goes out first; the reset starts once it is sent (see uds_request). */
        r->busy_ns = 0;
}

static void ecu_do_reset(struct sim *s, struct ecu *e, uint64_t t)
{
        vlog(s, "%s: reset for %u ms%s%s", e->name, e->reset_ms,
             e->check_passed ? ", now runs " : "", e->check_passed ? e->pending_version : "");
        set_session(s, e, 1);
        if (e->check_passed) {
                snprintf(e->version, sizeof(e->version), "%s", e->pending_version);
                e->check_passed = false;
        }
        e->op.active = false;
        e->tp.rx_state = RX_IDLE;
        e->reset_until_ns = t + (uint64_t) e->reset_ms * NSEC_PER_MSEC;
        e->bad_keys = 0;
}

static void svc_rdbi(struct sim *s, struct ecu *e, const uint8_t *q, size_t n, struct response *r,
                     uint64_t t)
{
        size_t at = 1, found = 0;

        if (n < 3 || (n - 1) % 2 != 0 || (n - 1) / 2 > RDBI_MAX) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        r->data[0] = 0x62;
        for (size_t i = 1; i + 1 < n; i += 2) {
                uint16_t did = (uint16_t) (q[i] << 8 | q[i + 1]);
                const char *str = NULL;
                size_t len;

                switch (did) {
                case 0xf18c:
                        str = e->serial;
                        break;
                case 0xf195:
                        str = e->version;
                        break;
                case 0xf191:
                        str = e->hardware;
                        break;
                case 0xf1a0:
                        r->data[at++] = q[i];
                        r->data[at++] = q[i + 1];
                        put_be32(r->data + at, resume_point(e));
                        at += 4;
                        found++;
                        continue;
                default:
                        continue;
                }
                len = strlen(str);
                r->data[at++] = q[i];
                r->data[at++] = q[i + 1];
                memcpy(r->data + at, str, len);
                at += len;
                found++;
        }
        if (!found) {
                r->nrc = NRC_OUT_OF_RANGE;
                return;
        }
        r->len = at;
}

static void svc_security(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                         struct response *r, uint64_t t)
{
        uint8_t sub = q[1] & 0x7f;
        uint32_t expected, x;

        if (e->session == 1) {
                r->nrc = NRC_SERVICE_IN_SESSION;
                return;
        }
        if (sub != 1 && sub != 2) {
                r->nrc = NRC_SUBFUNCTION_NOT_SUPPORTED;
                return;
        }
        if (t < e->locked_until_ns) {
                r->nrc = NRC_DELAY;
                return;
        }
        r->data[0] = 0x67;
        r->data[1] = sub;
        if (sub == 1) {
                if (n != 2) {
                        r->nrc = NRC_BAD_LENGTH;
                        return;
                }
                if (e->unlocked) {
                        e->seed = 0; /* already unlocked: a zero seed */
                } else {
                        do
                                e->seed = rng32();
                        while (e->seed == 0);
                        e->seed_sent = true;
                }
                put_be32(r->data + 2, e->seed);
                r->len = 6;
                return;
        }
        if (n != 6) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        if (!e->seed_sent) {
                r->nrc = NRC_SEQUENCE;
                return;
        }
        e->seed_sent = false;
        x = e->seed ^ e->secret;
        expected = (x << 7) | (x >> 25);
        if (get_be32(q + 2) != expected) {
                if (++e->bad_keys >= 3) {
                        e->bad_keys = 0;
                        e->locked_until_ns = t + SECURITY_DELAY_S * NSEC_PER_SEC;
                        r->nrc = NRC_ATTEMPTS;
                } else {
                        r->nrc = NRC_INVALID_KEY;
                }
                return;
        }
        e->bad_keys = 0;
        e->unlocked = true;
        vlog(s, "%s: security unlocked", e->name);
        r->len = 2;
}

static void routine_erase(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                          struct response *r)
{
        uint32_t addr, len, first, last;
        int64_t off;

        if (n != 13) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        addr = get_be32(q + 5);
        len = get_be32(q + 9);
        off = flash_offset(e, addr, len);
        if (q[4] != 0x44 || off < 0) {
                r->nrc = NRC_OUT_OF_RANGE;
                return;
        }
        first = (uint32_t) off / e->page_size;
        last = (uint32_t) (off + len - 1) / e->page_size;
        for (uint32_t p = first; p <= last; p++) {
                uint32_t start = p * e->page_size, size = e->page_size;

                if (start + size > e->flash_size)
                        size = e->flash_size - start;
                memset(e->mem + start, 0xff, size);
                for (uint32_t b = start; b < start + size; b++)
                        e->written[b / 8] &= (uint8_t) ~(1u << (b % 8));
        }
        /* What was kept of a download in that memory is gone. */
        if (e->dl.kept) {
                uint64_t ka = e->dl.kept_addr, ke = ka + e->dl.kept_size;
                uint64_t ea = e->flash_addr + (uint64_t) first * e->page_size,
                         ee = e->flash_addr + (uint64_t) (last + 1) * e->page_size;

                if (ka < ee && ea < ke)
                        e->dl.kept = false;
        }
        e->check_passed = false;
        e->pages_erased += last - first + 1;
        vlog(s, "%s: erasing %u pages at 0x%08x", e->name, last - first + 1,
             e->flash_addr + first * e->page_size);
        r->busy_ns = (uint64_t) (last - first + 1) * e->erase_ms * NSEC_PER_MSEC;
        memcpy(r->data, (const uint8_t[]){0x71, 0x01, 0xff, 0x00, 0x00}, 5);
        r->len = 5;
}

/* version-at: as an application's header says what it is, the image's bytes at that offset,
 * 1 to 32 printable characters up to a NUL, become the version; else it stays crc32-XXXXXXXX. */
static void version_from_image(struct ecu *e, uint32_t off, uint32_t size)
{
        char v[33];
        size_t n = 0;

        if ((uint64_t) e->version_at >= size)
                return;
        for (uint64_t i = off + (uint64_t) e->version_at; i < (uint64_t) off + size && n < 33;
             i++) {
                uint8_t c = e->mem[i];

                if (c == 0)
                        break;
                if (c < 0x20 || c > 0x7e)
                        return;
                v[n++] = (char) c;
        }
        if (n == 0 || n > 32)
                return;
        v[n] = '\0';
        snprintf(e->pending_version, sizeof(e->pending_version), "%s", v);
}

static void routine_check(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                          struct response *r)
{
        const struct download *d = &e->dl;
        uint32_t want, crc = 0;
        bool ok = false;

        if (n != 8) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        want = get_be32(q + 4);
        if (d->kept && d->kept_done == d->kept_size) {
                int64_t off = flash_offset(e, d->kept_addr, d->kept_size);

                if (off >= 0) {
                        crc = (uint32_t) crc32(0L, e->mem + off, d->kept_size);
                        ok = crc == want;
                }
        }
        e->last_crc = crc;
        e->check_passed = ok;
        if (ok) {
                if (e->next_version[0])
                        snprintf(e->pending_version, sizeof(e->pending_version), "%s",
                                 e->next_version);
                else
                        snprintf(e->pending_version, sizeof(e->pending_version), "crc32-%08x", crc);
        }
        if (ok && !e->next_version[0] && e->version_at >= 0)
                version_from_image(e, (uint32_t) flash_offset(e, d->kept_addr, d->kept_size),
                                   d->kept_size);
        vlog(s, "%s: check routine: image crc32 %08x, host says %08x: %s", e->name, crc, want,
             ok ? "matches" : "does not match");
        memcpy(r->data, (const uint8_t[]){0x71, 0x01, 0x02, 0x02, ok ? 0x00 : 0x01}, 5);
        r->len = 5;
}

static void svc_routine(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                        struct response *r, uint64_t t)
{
        uint16_t rid;

        if (n < 4) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        if ((q[1] & 0x7f) != 1) {
                r->nrc = NRC_SUBFUNCTION_NOT_SUPPORTED;
                return;
        }
        rid = (uint16_t) (q[2] << 8 | q[3]);
        if (rid != 0xff00 && rid != 0x0202) {
                r->nrc = NRC_OUT_OF_RANGE;
                return;
        }
        if (!programming_allowed(e, r))
                return;
        if (rid == 0xff00)
                routine_erase(s, e, q, n, r);
        else
                routine_check(s, e, q, n, r);
}

static void svc_download(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                         struct response *r, uint64_t t)
{
        struct download *d = &e->dl;
        uint32_t addr, size;
        int64_t off;

        if (!programming_allowed(e, r))
                return;
        if (n != 11) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        addr = get_be32(q + 3);
        size = get_be32(q + 7);
        off = flash_offset(e, addr, size);
        if (q[1] != 0x00 || q[2] != 0x44 || off < 0) {
                r->nrc = NRC_OUT_OF_RANGE;
                return;
        }
        if (d->active) {
                r->nrc = NRC_CONDITIONS;
                return;
        }
        /* Flash takes data only where it is erased. */
        for (uint32_t i = 0; i < size; i++)
                if (written_at(e, (uint32_t) off + i)) {
                        vlog(s, "%s: RequestDownload at 0x%08x: not erased at 0x%08x", e->name,
                             addr, addr + i);
                        r->nrc = NRC_DOWNLOAD_NOT_ACCEPTED;
                        return;
                }
        if (d->kept && resume_point(e) > 0 && addr == d->kept_addr + d->kept_done &&
            size == d->kept_size - d->kept_done) {
                vlog(s, "%s: download resumed at %u of %u bytes", e->name, d->kept_done,
                     d->kept_size);
        } else {
                d->kept = true;
                d->kept_addr = addr;
                d->kept_size = size;
                d->kept_done = 0;
        }
        d->active = true;
        d->addr = addr;
        d->size = size;
        d->received = 0;
        d->expected = 1;
        d->any = false;
        r->data[0] = 0x74;
        r->data[1] = 0x20;
        r->data[2] = (uint8_t) ((e->block_len + 2) >> 8);
        r->data[3] = (uint8_t) (e->block_len + 2);
        r->len = 4;
}

static void svc_transfer(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                         struct response *r, uint64_t t)
{
        struct download *d = &e->dl;
        uint8_t counter;
        size_t len;
        int64_t off;

        if (!programming_allowed(e, r))
                return;
        if (!d->active) {
                r->nrc = NRC_SEQUENCE;
                return;
        }
        if (n < 2 || n - 2 > e->block_len) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        counter = q[1];
        len = n - 2;
        r->data[0] = 0x76;
        r->data[1] = counter;
        r->len = 2;
        if (e->wrong_sequence) {
                e->wrong_sequence = false;
                vlog(s, "%s: fault: wrong block sequence counter answered once", e->name);
                r->nrc = NRC_WRONG_COUNTER;
                return;
        }
        if (d->any && counter == d->last && counter != d->expected) {
                /* Our answer was lost: the host sends the block again. Not written twice. */
                vlog(s, "%s: block %u again, acknowledged without writing", e->name, counter);
                return;
        }
        if (counter != d->expected) {
                r->nrc = NRC_WRONG_COUNTER;
                return;
        }
        if (len == 0 || len > d->size - d->received) {
                r->nrc = NRC_TRANSFER_SUSPENDED;
                return;
        }
        off = flash_offset(e, d->addr + d->received, (uint32_t) len);
        if (off < 0) {
                r->nrc = NRC_OUT_OF_RANGE;
                return;
        }
        for (size_t i = 0; i < len; i++)
                if (written_at(e, (uint32_t) off + (uint32_t) i)) {
                        r->nrc = NRC_PROGRAMMING_FAILURE;
                        return;
                }
        memcpy(e->mem + off, q + 2, len);
        for (size_t i = 0; i < len; i++) {
                uint32_t b = (uint32_t) off + (uint32_t) i;

                e->written[b / 8] |= (uint8_t) (1u << (b % 8));
        }
        d->received += (uint32_t) len;
        if (d->kept && d->addr + d->received - len == d->kept_addr + d->kept_done)
                d->kept_done += (uint32_t) len;
        d->last = counter;
        d->any = true;
        d->expected = (uint8_t) (counter + 1);
        e->bytes_programmed += len;
        e->blocks++;
        if (!e->first_transfer_ns)
                e->first_transfer_ns = t;
        e->last_transfer_ns = t;
        r->busy_ns = (uint64_t) e->program_ms * NSEC_PER_MSEC;
}

static void svc_exit(struct sim *s, struct ecu *e, const uint8_t *q, size_t n, struct response *r,
                     uint64_t t)
{
        if (!programming_allowed(e, r))
                return;
        if (!e->dl.active || e->dl.received < e->dl.size) {
                r->nrc = NRC_SEQUENCE;
                return;
        }
        e->dl.active = false;
        r->data[0] = 0x77;
        r->len = 1;
}

static void svc_tester(struct sim *s, struct ecu *e, const uint8_t *q, size_t n, struct response *r,
                       uint64_t t)
{
        if (n != 2) {
                r->nrc = NRC_BAD_LENGTH;
                return;
        }
        if ((q[1] & 0x7f) != 0) {
                r->nrc = NRC_SUBFUNCTION_NOT_SUPPORTED;
                return;
        }
        r->data[0] = 0x7e;
        r->data[1] = 0x00;
        r->len = 2;
}

typedef void (*service_fn)(struct sim *s, struct ecu *e, const uint8_t *q, size_t n,
                           struct response *r, uint64_t t);

/* The services, indexed by SID; sub-function services honour the suppress bit. */
static const struct {
        service_fn fn;
        bool subfunction;
} services[256] = {
    [SID_SESSION] = {svc_session, true},    [SID_RESET] = {svc_reset, true},
    [SID_RDBI] = {svc_rdbi, false},         [SID_SECURITY] = {svc_security, true},
    [SID_ROUTINE] = {svc_routine, true},    [SID_DOWNLOAD] = {svc_download, false},
    [SID_TRANSFER] = {svc_transfer, false}, [SID_EXIT] = {svc_exit, false},
    [SID_TESTER] = {svc_tester, true},
};

static void negative(struct sim *s, struct ecu *e, uint8_t sid, uint8_t nrc, uint64_t at)
{
        uint8_t msg[3] = {SID_NEGATIVE, sid, nrc};

        e->nrcs[nrc]++;
        isotp_send(s, e, msg, 3, at);
}

/* A fault armed with --nrc for this request's service: the NRC to answer, or 0. */
static uint8_t fault_nrc(struct sim *s, size_t ecu_index, uint8_t sid)
{
        for (size_t k = 0; k < 2; k++) {
                size_t i = k == 0 ? ecu_index : ECU_MAX;

                for (size_t j = 0; j < s->n_nrc[i]; j++) {
                        struct nrc_fault *nf = &s->nrc[i][j];

                        if (!nf->armed || nf->sid != sid)
                                continue;
                        if (nf->count > 0 && --nf->count == 0)
                                nf->armed = false;
                        return nf->nrc;
                }
        }
        return 0;
}

static void uds_request(struct sim *s, struct ecu *e, const uint8_t *req, size_t len, uint64_t t,
                        bool functional)
{
        struct response *r;
        uint64_t at = t + e->response_us * NSEC_PER_USEC;
        uint8_t sid = req[0], nrc;

        e->requests++;
        e->services[sid]++;
        e->last_request_ns = t;
        if (e->op.active) {
                negative(s, e, sid, NRC_BUSY, at);
                return;
        }
        r = calloc(1, sizeof(*r));
        if (!r)
                return;
        nrc = fault_nrc(s, (size_t) (e - s->ecus), sid);
        if (nrc) {
                vlog(s, "%s: fault: service 0x%02x answered with NRC 0x%02x", e->name, sid, nrc);
                r->nrc = nrc;
        } else if (!services[sid].fn) {
                r->nrc = NRC_SERVICE_NOT_SUPPORTED;
        } else if (services[sid].subfunction && len < 2) {
                r->nrc = NRC_BAD_LENGTH;
        } else {
                if (services[sid].subfunction)
                        r->suppress = req[1] & 0x80;
                services[sid].fn(s, e, req, len, r, t);
        }
        if (r->nrc) {
                /* Functional requests get no "not supported" answers (ISO 14229-1 7.5). */
                if (!(functional &&
                      (r->nrc == NRC_SERVICE_NOT_SUPPORTED ||
                       r->nrc == NRC_SUBFUNCTION_NOT_SUPPORTED || r->nrc == NRC_OUT_OF_RANGE ||
                       r->nrc == NRC_SUBFUNCTION_IN_SESSION || r->nrc == NRC_SERVICE_IN_SESSION)))
                        negative(s, e, sid, r->nrc, at);
                free(r);
                return;
        }
        if (r->busy_ns > (uint64_t) e->p2_ms * NSEC_PER_MSEC) {
                /* Response pending now and again before P2* runs out, the answer when done. */
                negative(s, e, sid, NRC_PENDING, at);
                e->op = (struct operation){.active = true,
                                           .sid = sid,
                                           .done_ns = t + r->busy_ns,
                                           .next_pending_ns =
                                               at + (uint64_t) e->pending_ms * NSEC_PER_MSEC};
                memcpy(e->op.response, r->data, r->len < 16 ? r->len : 16);
                e->op.response_len = r->len < 16 ? r->len : 16;
        } else if (r->busy_ns > 0) {
                e->op = (struct operation){.active = true,
                                           .sid = sid,
                                           .done_ns = t + r->busy_ns,
                                           .next_pending_ns = NEVER};
                memcpy(e->op.response, r->data, r->len < 16 ? r->len : 16);
                e->op.response_len = r->len < 16 ? r->len : 16;
        } else if (!r->suppress) {
                isotp_send(s, e, r->data, r->len, at);
        }
        if (sid == SID_RESET)
                ecu_do_reset(s, e, at + 2 * NSEC_PER_MSEC);
        free(r);
}

/* ---- ECU timers ---------------------------------------------------------------------------- */

static uint64_t ecu_next(const struct ecu *e)
{
        const struct isotp *tp = &e->tp;
        uint64_t t = NEVER;

#define EARLIER(x)                                                                                 \
        do {                                                                                       \
                if ((x) < t)                                                                       \
                        t = (x);                                                                   \
        } while (0)
        if (tp->rx_state == RX_WAIT_CF)
                EARLIER(tp->rx_deadline_ns);
        if (tp->tx_state == TX_WAIT_FC)
                EARLIER(tp->tx_deadline_ns);
        if (tp->tx_state == TX_SEND_CF && !tp->cf_on_bus)
                EARLIER(tp->next_cf_ns);
        if (e->op.active) {
                EARLIER(e->op.done_ns);
                EARLIER(e->op.next_pending_ns);
        }
        if (e->session != 1)
                EARLIER(e->last_request_ns + S3_MS * NSEC_PER_MSEC);
#undef EARLIER
        return t;
}

static void ecu_tick(struct sim *s, struct ecu *e, uint64_t t)
{
        struct isotp *tp = &e->tp;

        if (tp->rx_state == RX_WAIT_CF && t >= tp->rx_deadline_ns) {
                vlog(s, "%s: N_Cr: no consecutive frame for %u ms", e->name, ISOTP_N_MS);
                e->isotp_errors++;
                set_rx_state(s, e, RX_IDLE);
        }
        if (tp->tx_state == TX_WAIT_FC && t >= tp->tx_deadline_ns) {
                vlog(s, "%s: N_Bs: no flow control for %u ms", e->name, ISOTP_N_MS);
                e->isotp_errors++;
                isotp_next_message(s, e, t);
        }
        if (tp->tx_state == TX_SEND_CF && !tp->cf_on_bus && t >= tp->next_cf_ns)
                isotp_send_cf(s, e, t);
        if (e->op.active && t >= e->op.done_ns) {
                e->op.active = false;
                isotp_send(s, e, e->op.response, e->op.response_len, t);
        } else if (e->op.active && t >= e->op.next_pending_ns) {
                negative(s, e, e->op.sid, NRC_PENDING, t);
                e->op.next_pending_ns = t + (uint64_t) e->pending_ms * NSEC_PER_MSEC;
        }
        if (e->session != 1 && t >= e->last_request_ns + S3_MS * NSEC_PER_MSEC) {
                vlog(s, "%s: S3: no request for %u ms", e->name, S3_MS);
                set_session(s, e, 1);
        }
}

/* ---- The simulation's clock ----------------------------------------------------------------- */

/* The next thing the bus or an ECU does, NEVER when nothing is due. */
static uint64_t next_event(const struct sim *s)
{
        uint64_t t = s->busy ? s->cur_end_ns : bus_next_start(s);

        for (size_t i = 0; i < s->n_ecus; i++) {
                uint64_t e = ecu_next(&s->ecus[i]);

                if (e < t)
                        t = e;
        }
        return t;
}

/* Runs everything due up to now, in time order. */
static void advance(struct sim *s, uint64_t now)
{
        for (unsigned guard = 0; guard < 100000; guard++) {
                uint64_t t = next_event(s), tb;

                if (t > now)
                        return;
                tb = s->busy ? s->cur_end_ns : bus_next_start(s);
                if (tb == t) {
                        if (s->busy)
                                bus_end(s);
                        else
                                bus_start(s, t);
                        continue;
                }
                for (size_t i = 0; i < s->n_ecus; i++)
                        if (ecu_next(&s->ecus[i]) <= t)
                                ecu_tick(s, &s->ecus[i], t);
        }
}

/* ---- Report, dumps ----------------------------------------------------------------------------
 */

static json_t *counts(const uint64_t *v)
{
        json_t *o = json_object();

        for (unsigned i = 0; i < 256; i++)
                if (v[i]) {
                        char key[8];

                        snprintf(key, sizeof(key), "0x%02x", i);
                        json_object_set_new(o, key, json_integer((json_int_t) v[i]));
                }
        return o;
}

static json_t *ecu_report(const struct ecu *e)
{
        char tx[16], rx[16];

        snprintf(tx, sizeof(tx), "0x%x", e->req_id);
        snprintf(rx, sizeof(rx), "0x%x", e->resp_id);
        return json_pack(
            "{s:s, s:s, s:s, s:I, s:I, s:I, s:o, s:o, s:I, s:I, s:I, s:I, s:s, s:s, s:b, s:I, "
            "s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:i, s:b}}",
            "name", e->name, "tx", tx, "rx", rx, "frames_rx", (json_int_t) e->frames_rx,
            "frames_tx", (json_int_t) e->frames_tx, "requests", (json_int_t) e->requests,
            "services", counts(e->services), "nrcs", counts(e->nrcs), "bytes_programmed",
            (json_int_t) e->bytes_programmed, "blocks", (json_int_t) e->blocks, "pages_erased",
            (json_int_t) e->pages_erased, "resume", (json_int_t) resume_point(e), "session",
            session_name(e->session), "version", e->version, "unlocked", e->unlocked,
            "isotp_errors", (json_int_t) e->isotp_errors, "dropped", (json_int_t) e->dropped,
            "transfer_ns",
            (json_int_t) (e->last_transfer_ns > e->first_transfer_ns
                              ? e->last_transfer_ns - e->first_transfer_ns
                              : 0),
            "last_crc32", (json_int_t) e->last_crc, "timing", "p2_ms", (json_int_t) e->p2_ms,
            "p2star_ms", (json_int_t) e->p2star_ms, "pending_ms", (json_int_t) e->pending_ms,
            "erase_ms_per_page", (json_int_t) e->erase_ms, "program_ms_per_block",
            (json_int_t) e->program_ms, "reset_ms", (json_int_t) e->reset_ms, "response_us",
            (json_int_t) e->response_us, "page_size", (json_int_t) e->page_size, "block_length",
            (json_int_t) e->block_len, "tx_dl", (json_int_t) e->tx_dl, "bs", e->bs, "stmin",
            e->stmin, "padding", e->pad);
}

static void write_report(struct sim *s)
{
        json_t *root, *ecus = json_array();
        uint64_t span = s->last_ns > s->first_ns ? s->last_ns - s->first_ns : 0;
        FILE *f;

        if (s->trace)
                fflush(s->trace);
        if (!s->report_path)
                return;
        for (size_t i = 0; i < s->n_ecus; i++)
                json_array_append_new(ecus, ecu_report(&s->ecus[i]));
        root = json_pack(
            "{s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:{s:s, s:i, s:i, s:i, s:s}}, "
            "s:{s:b, s:i, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}, s:o}",
            "bus", "bitrate", (json_int_t) s->bitrate, "data_bitrate", (json_int_t) s->data_bitrate,
            "frames", (json_int_t) s->frames, "bits", (json_int_t) s->bits, "stuff_bits",
            (json_int_t) s->stuff_bits, "busy_ns", (json_int_t) s->busy_ns, "span_ns",
            (json_int_t) span, "load", span ? (double) s->busy_ns / (double) span : 0.0, "lost",
            (json_int_t) s->lost, "bitrate_mismatch", (json_int_t) s->mismatched, "model",
            "stuffing",
            "dynamic after 5 equal bits from SOF to CRC (classic) or to the data "
            "field (FD, then fixed stuff bits in the CRC field); counted from the bits sent",
            "ifs_bits", GW_CAN_IFS_BITS, "tail_bits", 10, "isotp_n_ms", ISOTP_N_MS, "brs",
            "ESI to the CRC at the data bitrate", "adapter", "open", s->ad.open, "bitrate",
            s->ad.s_code >= 0 ? (int) s_rates[s->ad.s_code] : 0, "classic", s->ad.classic, "lines",
            (json_int_t) s->ad.lines, "frames_from_host", (json_int_t) s->ad.frames_in,
            "frames_to_host", (json_int_t) s->ad.frames_out, "malformed",
            (json_int_t) s->ad.malformed, "bels", (json_int_t) s->ad.bels, "overflows",
            (json_int_t) s->ad.overflows, "resets", (json_int_t) s->ad.resets, "ecus", ecus);
        f = fopen(s->report_path, "we");
        if (!f) {
                fprintf(stderr, "can-sim: cannot write %s: %m\n", s->report_path);
                json_decref(root);
                return;
        }
        json_dumpf(root, f, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        fputc('\n', f);
        fclose(f);
        json_decref(root);
}

static void write_dumps(struct sim *s)
{
        char path[PATH_MAX];

        if (!s->dump_dir)
                return;
        for (size_t i = 0; i < s->n_ecus; i++) {
                struct ecu *e = &s->ecus[i];
                FILE *f;

                snprintf(path, sizeof(path), "%s/%s.bin", s->dump_dir, e->name);
                f = fopen(path, "we");
                if (!f || fwrite(e->mem, 1, e->flash_size, f) != e->flash_size)
                        fprintf(stderr, "can-sim: cannot write %s: %m\n", path);
                if (f)
                        fclose(f);
        }
}

/* ---- Faults ---------------------------------------------------------------------------------- */

static struct ecu *find_ecu(struct sim *s, const char *name)
{
        for (size_t i = 0; i < s->n_ecus; i++)
                if (strcmp(s->ecus[i].name, name) == 0)
                        return &s->ecus[i];
        return NULL;
}

/* [ECU/]SID:NRC[:COUNT] */
static int arm_nrc(struct sim *s, const char *spec)
{
        char buf[64], *slash, *p, *q;
        size_t idx = ECU_MAX;
        uint64_t sid, nrc, count = 1;
        struct ecu *e;

        if (strlen(spec) >= sizeof(buf))
                return -EINVAL;
        snprintf(buf, sizeof(buf), "%s", spec);
        p = buf;
        slash = strchr(buf, '/');
        if (slash) {
                *slash = '\0';
                e = find_ecu(s, buf);
                if (!e)
                        return -EINVAL;
                idx = (size_t) (e - s->ecus);
                p = slash + 1;
        }
        q = strchr(p, ':');
        if (!q)
                return -EINVAL;
        *q++ = '\0';
        if (gw_sim_parse_u64(p, 0, 0xff, &sid) < 0)
                return -EINVAL;
        p = strchr(q, ':');
        if (p) {
                *p++ = '\0';
                if (gw_sim_parse_u64(p, 0, 1000000, &count) < 0)
                        return -EINVAL;
        }
        if (gw_sim_parse_u64(q, 0, 0xff, &nrc) < 0 || nrc == 0)
                return -EINVAL;
        if (s->n_nrc[idx] == 8)
                return -ENOSPC;
        s->nrc[idx][s->n_nrc[idx]++] = (struct nrc_fault){
            .sid = (uint8_t) sid, .nrc = (uint8_t) nrc, .count = (unsigned) count, .armed = true};
        return 0;
}

/* One fault command: the command-line flag's name without dashes, and its argument. */
static int apply_command(struct sim *s, const char *cmd, const char *arg)
{
        struct ecu *e = NULL;
        uint64_t v = 0;

        if (strcmp(cmd, "lose-frame") == 0) {
                if (gw_sim_parse_u64(arg, 10, UINT32_MAX, &v) < 0 || v == 0)
                        return -EINVAL;
                s->lose_at = s->frames + v;
        } else if (strcmp(cmd, "silent") == 0 || strcmp(cmd, "answer") == 0 ||
                   strcmp(cmd, "wrong-sequence") == 0) {
                e = arg ? find_ecu(s, arg) : NULL;
                if (!e)
                        return -EINVAL;
                if (strcmp(cmd, "wrong-sequence") == 0) {
                        e->wrong_sequence = true;
                } else {
                        /* Whatever it was sending or receiving is abandoned. */
                        e->silent = strcmp(cmd, "silent") == 0;
                        for (size_t i = 0; i < e->tp.n_pending; i++)
                                free(e->tp.pending[i].data);
                        e->tp.n_pending = 0;
                        e->tp.tx_state = TX_IDLE;
                        e->tp.rx_state = RX_IDLE;
                        e->tp.cf_on_bus = false;
                }
        } else if (strcmp(cmd, "nrc") == 0) {
                if (!arg || arm_nrc(s, arg) < 0)
                        return -EINVAL;
        } else if (strcmp(cmd, "reset-adapter") == 0) {
                if (arg)
                        return -EINVAL;
                adapter_drop_open(s, "reset-adapter");
        } else if (strcmp(cmd, "reset-adapter-after") == 0) {
                if (gw_sim_parse_u64(arg, 10, UINT32_MAX, &v) < 0 || v == 0)
                        return -EINVAL;
                s->ad.reset_after = s->ad.frames_in + v;
        } else if (strcmp(cmd, "reboot-adapter") == 0) {
                if (gw_sim_parse_u64(arg, 10, 60000, &v) < 0)
                        return -EINVAL;
                adapter_drop_open(s, "reboot-adapter");
                s->ad.mute_until_ns = gw_sim_now_ns() + v * NSEC_PER_MSEC;
                s->ad.len = 0;
        } else if (strcmp(cmd, "secret") == 0) {
                char name[NAME_LEN];
                const char *eq = arg ? strchr(arg, '=') : NULL;

                if (!eq || (size_t) (eq - arg) >= sizeof(name))
                        return -EINVAL;
                snprintf(name, sizeof(name), "%.*s", (int) (eq - arg), arg);
                e = find_ecu(s, name);
                if (!e || gw_sim_parse_u64(eq + 1, 0, UINT32_MAX, &v) < 0)
                        return -EINVAL;
                e->secret = (uint32_t) v;
        } else if (strcmp(cmd, "report") == 0) {
                write_report(s);
                write_dumps(s);
        } else {
                return -EINVAL;
        }
        vlog(s, "fault armed: %s%s%s", cmd, arg ? " " : "", arg ? arg : "");
        return 0;
}

static void control_line(char *line, void *userdata)
{
        struct sim *s = userdata;
        char *w[2];
        int n = gw_sim_control_words(line, w, 2);

        if (n == 0)
                return;
        if (n < 0 || apply_command(s, w[0], n > 1 ? w[1] : NULL) < 0)
                fprintf(stderr, "can-sim: unknown control command \"%s\", ignoring\n", w[0]);
}

/* ---- ECU specs ----------------------------------------------------------------------------- */

static int ecu_defaults(struct ecu *e, const char *name, size_t index)
{
        if (strlen(name) == 0 || strlen(name) >= NAME_LEN || strchr(name, '/'))
                return -EINVAL;
        *e = (struct ecu){
            .req_id = 0x7e0 + (uint32_t) index,
            .resp_id = 0x7e8 + (uint32_t) index,
            .tx_dl = 64,
            .flash_addr = 0,
            .flash_size = 256 * 1024,
            .page_size = 2048,
            .block_len = 1024,
            .secret = 0x5a5aa5a5,
            .version_at = -1,
            .erase_ms = 5,
            .program_ms = 2,
            .reset_ms = 100,
            .p2_ms = 50,
            .p2star_ms = 5000,
            .pending_ms = 2000,
            .response_us = 200,
            .pad = true,
            .session = 1,
        };
        snprintf(e->name, sizeof(e->name), "%s", name);
        snprintf(e->serial, sizeof(e->serial), "SIM-%s", name);
        snprintf(e->version, sizeof(e->version), "1.0.0");
        snprintf(e->hardware, sizeof(e->hardware), "HW-SIM-1");
        return 0;
}

static int spec_u32(const char *v, uint64_t min, uint64_t max, uint32_t *ret)
{
        uint64_t x;

        if (gw_sim_parse_u64(v, 0, max, &x) < 0 || x < min)
                return -EINVAL;
        *ret = (uint32_t) x;
        return 0;
}

static int spec_str(const char *v, char *ret)
{
        size_t n = strlen(v);

        if (n == 0 || n >= STR_LEN)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (v[i] < 0x20 || v[i] > 0x7e)
                        return -EINVAL;
        memcpy(ret, v, n + 1);
        return 0;
}

/* NAME,tx=0x7E0,rx=0x7E8[,key=value...] */
static int parse_ecu(struct sim *s, const char *spec)
{
        char buf[512], *save = NULL, *tok;
        struct ecu *e;
        uint32_t v = 0;
        int r = 0;

        if (s->n_ecus == ECU_MAX || strlen(spec) >= sizeof(buf))
                return -EINVAL;
        snprintf(buf, sizeof(buf), "%s", spec);
        tok = strtok_r(buf, ",", &save);
        e = &s->ecus[s->n_ecus];
        if (!tok || ecu_defaults(e, tok, s->n_ecus) < 0)
                return -EINVAL;
        while (r == 0 && (tok = strtok_r(NULL, ",", &save))) {
                char *val = strchr(tok, '=');

                if (!val) {
                        if (strcmp(tok, "ext") == 0)
                                e->ext = true;
                        else if (strcmp(tok, "fd") == 0)
                                e->fd = true;
                        else
                                r = -EINVAL;
                        continue;
                }
                *val++ = '\0';
                if (strcmp(tok, "tx") == 0)
                        r = spec_u32(val, 0, 0x1fffffff, &e->req_id);
                else if (strcmp(tok, "rx") == 0)
                        r = spec_u32(val, 0, 0x1fffffff, &e->resp_id);
                else if (strcmp(tok, "serial") == 0)
                        r = spec_str(val, e->serial);
                else if (strcmp(tok, "version") == 0)
                        r = spec_str(val, e->version);
                else if (strcmp(tok, "next-version") == 0)
                        r = spec_str(val, e->next_version);
                else if (strcmp(tok, "hardware") == 0)
                        r = spec_str(val, e->hardware);
                else if (strcmp(tok, "flash") == 0) {
                        char *colon = strchr(val, ':');

                        if (!colon)
                                r = -EINVAL;
                        else {
                                *colon = '\0';
                                r = spec_u32(val, 0, UINT32_MAX, &e->flash_addr);
                                if (r == 0)
                                        r = spec_u32(colon + 1, 1, FLASH_MAX, &e->flash_size);
                        }
                } else if (strcmp(tok, "page") == 0)
                        r = spec_u32(val, 1, 1024 * 1024, &e->page_size);
                else if (strcmp(tok, "block") == 0)
                        r = spec_u32(val, 1, ISOTP_MAX - 2, &e->block_len);
                else if (strcmp(tok, "secret") == 0)
                        r = spec_u32(val, 0, UINT32_MAX, &e->secret);
                else if (strcmp(tok, "version-at") == 0)
                        r = spec_u32(val, 0, FLASH_MAX - 1, &v), e->version_at = v;
                else if (strcmp(tok, "erase-ms") == 0)
                        r = spec_u32(val, 0, 100000, &v), e->erase_ms = v;
                else if (strcmp(tok, "program-ms") == 0)
                        r = spec_u32(val, 0, 100000, &v), e->program_ms = v;
                else if (strcmp(tok, "reset-ms") == 0)
                        r = spec_u32(val, 0, 60000, &v), e->reset_ms = v;
                else if (strcmp(tok, "p2") == 0)
                        r = spec_u32(val, 1, 65535, &v), e->p2_ms = v;
                else if (strcmp(tok, "p2star") == 0)
                        r = spec_u32(val, 10, 655350, &v), e->p2star_ms = v;
                else if (strcmp(tok, "pending-ms") == 0)
                        r = spec_u32(val, 1, 655350, &v), e->pending_ms = v;
                else if (strcmp(tok, "response-us") == 0)
                        r = spec_u32(val, 0, 10000000, &v), e->response_us = v;
                else if (strcmp(tok, "bs") == 0)
                        r = spec_u32(val, 0, 255, &v), e->bs = (uint8_t) v;
                else if (strcmp(tok, "stmin") == 0)
                        r = spec_u32(val, 0, 255, &v), e->stmin = (uint8_t) v;
                else if (strcmp(tok, "tx-dl") == 0) {
                        r = spec_u32(val, 8, 64, &v);
                        if (r == 0 && gw_can_len_to_dlc(v) < 0)
                                r = -EINVAL;
                        e->tx_dl = (uint8_t) v;
                } else if (strcmp(tok, "pad") == 0)
                        r = spec_u32(val, 0, 1, &v), e->pad = v;
                else
                        r = -EINVAL;
        }
        if (r < 0)
                return r;
        if (e->req_id == e->resp_id || (!e->ext && (e->req_id > 0x7ff || e->resp_id > 0x7ff)) ||
            (uint64_t) e->flash_addr + e->flash_size > 0x100000000ULL ||
            e->pending_ms >= e->p2star_ms)
                return -EINVAL;
        for (size_t i = 0; i < s->n_ecus; i++)
                if (strcmp(s->ecus[i].name, e->name) == 0 || s->ecus[i].req_id == e->req_id ||
                    s->ecus[i].resp_id == e->resp_id)
                        return -EEXIST;
        s->n_ecus++;
        return 0;
}

static int ecu_alloc(struct ecu *e)
{
        e->mem = malloc(e->flash_size);
        e->written = calloc((e->flash_size + 7) / 8, 1);
        e->txq.q = calloc(ECU_TXQ, sizeof(*e->txq.q));
        e->txq.cap = ECU_TXQ;
        if (!e->mem || !e->written || !e->txq.q)
                return -ENOMEM;
        memset(e->mem, 0xff, e->flash_size);
        return 0;
}

static void ecu_free(struct ecu *e)
{
        free(e->mem);
        free(e->written);
        free(e->txq.q);
        for (size_t i = 0; i < e->tp.n_pending; i++)
                free(e->tp.pending[i].data);
}

/* ---- The pty and the main loop ------------------------------------------------------------- */

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

static void pty_input(struct sim *s, short revents)
{
        char buf[4096];

        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
                return;
        for (int i = 0; i < 16; i++) {
                ssize_t n = read(s->master, buf, sizeof(buf));
                uint64_t t = gw_sim_now_ns();

                if (n > 0) {
                        /* Everything due before these bytes arrived happens first. */
                        advance(s, t);
                        adapter_input(s, buf, (size_t) n, t);
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (s->connected)
                        vlog(s, "host closed the port");
                s->connected = false;
                s->hup_check_ns = gw_sim_now_ns() + HUP_RECHECK_NS;
                return;
        }
}

static int run(struct sim *s)
{
        const struct gw_sim_wait w = {
            .sigfd = s->sigfd, .ctl = &s->ctl, .on_line = control_line, .userdata = s};

        for (;;) {
                uint64_t now, at;
                uint32_t signo;
                int r;

                now = gw_sim_now_ns();
                check_connected(s, now);
                advance(s, now);
                at = next_event(s);
                if (!s->connected && s->hup_check_ns < at)
                        at = s->hup_check_ns;
                r = gw_sim_wait(&w, s->connected ? s->master : -1, POLLIN, at, &signo);
                if (r < 0)
                        return r;
                if (signo == SIGUSR1) {
                        write_report(s);
                        write_dumps(s);
                        continue;
                }
                if (signo) {
                        vlog(s, "signal %u, exiting", signo);
                        return 0;
                }
                pty_input(s, (short) r);
        }
}

static void usage(FILE *f)
{
        fputs(
            "Usage: can-sim [OPTIONS]\n"
            "An slcan adapter on a pseudo-terminal in front of a simulated CAN bus of UDS ECUs.\n"
            "Prints \"can-sim: ready PTY\" on stdout once the port can be opened.\n\n"
            "  --link PATH            symlink to the pty (replaced if stale, removed on exit)\n"
            "  --bitrate N            the bus's nominal bitrate (default 500000)\n"
            "  --data-bitrate N       the CAN FD data phase with BRS (default 2000000; 0: no BRS)\n"
            "  --classic-adapter      an adapter without CAN FD: refuses Y, d, D, b, B\n"
            "  --functional-id ID     the functional request id (default 0x7df)\n"
            "  --ecu SPEC             an ECU (up to 16): NAME,tx=ID,rx=ID[,key=value...]; keys:\n"
            "                         serial version next-version version-at hardware\n"
            "                         flash=ADDR:SIZE page block secret erase-ms program-ms\n"
            "                         reset-ms p2 p2star\n"
            "                         pending-ms response-us bs stmin tx-dl pad=0|1, and the "
            "flags\n"
            "                         ext fd. Default: one ECU ecu1,tx=0x7e0,rx=0x7e8\n"
            "  --report FILE          the JSON report, written at exit and on SIGUSR1\n"
            "  --dump-dir DIR         each ECU's flash to DIR/NAME.bin at exit\n"
            "  --control PATH         FIFO (created when missing) or file with fault commands\n"
            "  --seed N               seeds for SecurityAccess from this (default: the time)\n"
            "  --trace FILE           a line per frame on the bus: ready, start and end (ns\n"
            "                         from the first frame), sender, id, bits, stuff bits, data\n"
            "  -v, --verbose          log what happens to stderr\n"
            "  -h, --help             this text\n\n"
            "Faults (also as control commands, one per line, without the dashes):\n"
            "  --lose-frame N         the Nth frame on the bus from now vanishes\n"
            "  --silent ECU           the ECU stops answering (answer ECU: again)\n"
            "  --wrong-sequence ECU   the ECU answers the next TransferData with NRC 0x73\n"
            "  --nrc [ECU/]SID:NRC[:COUNT]  answer the next COUNT (1; 0 = all) requests of SID\n"
            "                         with NRC, e.g. 0x34:0x70\n"
            "  --secret ECU=0xN       the ECU's SecurityAccess secret changes (wrong keys)\n"
            "  --reset-adapter-after N  the adapter loses its open state after N host frames\n"
            "  reset-adapter, reboot-adapter MS (control only): lose the open state now; and\n"
            "                         ignore all input for MS ms\n"
            "  report (control only), or SIGUSR1: write the report and the dumps now\n",
            f);
}

enum {
        OPT_LINK = 256,
        OPT_BITRATE,
        OPT_DATA_BITRATE,
        OPT_CLASSIC,
        OPT_FUNCTIONAL,
        OPT_ECU,
        OPT_REPORT,
        OPT_DUMP,
        OPT_CONTROL,
        OPT_SEED,
        OPT_TRACE,
        OPT_FAULT,
};

/* Faults name ECUs: applied once every ECU is known. */
struct deferred {
        const char *cmd, *arg;
};

static int parse_args(struct sim *s, int argc, char **argv, struct deferred *faults,
                      size_t *n_faults)
{
        static const struct option opts[] = {
            {"link", required_argument, NULL, OPT_LINK},
            {"bitrate", required_argument, NULL, OPT_BITRATE},
            {"data-bitrate", required_argument, NULL, OPT_DATA_BITRATE},
            {"classic-adapter", no_argument, NULL, OPT_CLASSIC},
            {"functional-id", required_argument, NULL, OPT_FUNCTIONAL},
            {"ecu", required_argument, NULL, OPT_ECU},
            {"report", required_argument, NULL, OPT_REPORT},
            {"dump-dir", required_argument, NULL, OPT_DUMP},
            {"control", required_argument, NULL, OPT_CONTROL},
            {"seed", required_argument, NULL, OPT_SEED},
            {"trace", required_argument, NULL, OPT_TRACE},
            {"lose-frame", required_argument, NULL, OPT_FAULT},
            {"silent", required_argument, NULL, OPT_FAULT},
            {"wrong-sequence", required_argument, NULL, OPT_FAULT},
            {"nrc", required_argument, NULL, OPT_FAULT},
            {"secret", required_argument, NULL, OPT_FAULT},
            {"reset-adapter-after", required_argument, NULL, OPT_FAULT},
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
                case OPT_BITRATE:
                        if (gw_sim_parse_u64(optarg, 10, 1000000, &v) < 0 || v < 1000)
                                goto bad;
                        s->bitrate = (uint32_t) v;
                        break;
                case OPT_DATA_BITRATE:
                        if (gw_sim_parse_u64(optarg, 10, 16000000, &v) < 0)
                                goto bad;
                        s->data_bitrate = (uint32_t) v;
                        break;
                case OPT_CLASSIC:
                        s->ad.classic = true;
                        break;
                case OPT_FUNCTIONAL:
                        if (gw_sim_parse_u64(optarg, 0, 0x1fffffff, &v) < 0)
                                goto bad;
                        s->functional_id = (uint32_t) v;
                        break;
                case OPT_ECU:
                        if (parse_ecu(s, optarg) < 0)
                                goto bad;
                        break;
                case OPT_REPORT:
                        s->report_path = optarg;
                        break;
                case OPT_DUMP:
                        s->dump_dir = optarg;
                        break;
                case OPT_CONTROL:
                        s->control_path = optarg;
                        break;
                case OPT_TRACE:
                        s->trace_path = optarg;
                        break;
                case OPT_SEED:
                        if (gw_sim_parse_u64(optarg, 0, UINT64_MAX, &s->seed) < 0)
                                goto bad;
                        break;
                case OPT_FAULT:
                        if (*n_faults == 32)
                                goto bad;
                        faults[(*n_faults)++] = (struct deferred){opts[idx].name, optarg};
                        break;
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
                fprintf(stderr, "can-sim: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
bad:
        fprintf(stderr, "can-sim: invalid value for --%s: \"%s\"\n",
                idx >= 0 ? opts[idx].name : "?", optarg ? optarg : "");
        return -EINVAL;
}

int main(int argc, char **argv)
{
        static struct sim s = {
            .bitrate = 500000,
            .data_bitrate = 2000000,
            .functional_id = 0x7df,
            .master = -1,
            .sigfd = -1,
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
        struct deferred faults[32];
        size_t n_faults = 0;
        int r, status = EXIT_FAILURE;

        s.ad.s_code = s.ad.y_code = -1;
        s.seed = (uint64_t) gw_sim_now_ns();
        if (parse_args(&s, argc, argv, faults, &n_faults) < 0)
                return 2;
        if (s.n_ecus == 0 && parse_ecu(&s, "ecu1,tx=0x7e0,rx=0x7e8") < 0)
                return 2;
        for (size_t i = 0; i < n_faults; i++)
                if (apply_command(&s, faults[i].cmd, faults[i].arg) < 0) {
                        fprintf(stderr, "can-sim: invalid value for --%s: \"%s\"\n", faults[i].cmd,
                                faults[i].arg ? faults[i].arg : "");
                        return 2;
                }
        rng_state = s.seed ? s.seed : 1;
        s.ad.txq.q = calloc(ADAPTER_TXQ, sizeof(*s.ad.txq.q));
        s.ad.txq.cap = ADAPTER_TXQ;
        if (!s.ad.txq.q)
                return EXIT_FAILURE;
        for (size_t i = 0; i < s.n_ecus; i++)
                if (ecu_alloc(&s.ecus[i]) < 0) {
                        fprintf(stderr, "can-sim: out of memory for %s's flash\n", s.ecus[i].name);
                        goto out;
                }
        s.sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        if (s.sigfd < 0) {
                fprintf(stderr, "can-sim: signalfd: %s\n", strerror(-s.sigfd));
                goto out;
        }
        if (s.trace_path) {
                s.trace = fopen(s.trace_path, "we");
                if (!s.trace) {
                        fprintf(stderr, "can-sim: cannot write %s: %m\n", s.trace_path);
                        goto out;
                }
        }
        if (s.control_path) {
                r = gw_sim_control_open(&s.ctl, s.control_path);
                if (r < 0) {
                        fprintf(stderr, "can-sim: cannot open control %s: %s\n", s.control_path,
                                strerror(-r));
                        goto out;
                }
        }
        r = gw_sim_pty_open("can-sim", s.link, s.slave, sizeof(s.slave), &s.master);
        if (r < 0)
                goto out;
        for (size_t i = 0; i < s.n_ecus; i++)
                vlog(&s, "ECU %s: requests 0x%x, responses 0x%x, flash 0x%08x+0x%x", s.ecus[i].name,
                     s.ecus[i].req_id, s.ecus[i].resp_id, s.ecus[i].flash_addr,
                     s.ecus[i].flash_size);
        printf("can-sim: ready %s\n", s.link ? s.link : s.slave);
        fflush(stdout);
        r = run(&s);
        if (r < 0)
                fprintf(stderr, "can-sim: %s\n", strerror(-r));
        else
                status = EXIT_SUCCESS;
        write_report(&s);
        write_dumps(&s);
out:
        gw_sim_pty_unlink(s.link, s.slave);
        if (s.trace)
                fclose(s.trace);
        if (s.master >= 0)
                close(s.master);
        gw_sim_control_done(&s.ctl);
        for (size_t i = 0; i < s.n_ecus; i++)
                ecu_free(&s.ecus[i]);
        free(s.ad.txq.q);
        if (s.sigfd >= 0)
                close(s.sigfd);
        return status;
}
