/* ISO-TP (ISO 15765-2) as a state machine (see isotp.h): segmentation paced by the receiver's
 * flow control, reassembly under ours, classic and CAN FD frame lengths, the N_Bs/N_Cr timeouts.
 * A received frame that does not parse is ignored, as the standard asks. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isotp.h"

#define PCI_SF 0x0
#define PCI_FF 0x1
#define PCI_CF 0x2
#define PCI_FC 0x3

#define FS_CTS      0
#define FS_WAIT     1
#define FS_OVERFLOW 2

#define FD_PADDING    0xcc
#define CLASSIC_DL    8
#define STMIN_LONGEST 127000u /* what a reserved STmin means */
/* How long to wait before offering a frame again to a frame layer whose queue is full. */
#define QUEUE_RETRY_US 1000u

static const char *const tx_names[_GW_ISOTP_TX_MAX] = {
    [GW_ISOTP_TX_IDLE] = "idle",
    [GW_ISOTP_TX_SENDING] = "sending",
    [GW_ISOTP_TX_WAIT_FC] = "wait-fc",
};

static const char *const rx_names[_GW_ISOTP_RX_MAX] = {
    [GW_ISOTP_RX_IDLE] = "idle",
    [GW_ISOTP_RX_CF] = "receiving",
};

const char *gw_isotp_tx_state_to_string(enum gw_isotp_tx_state s)
{
        if ((unsigned) s >= _GW_ISOTP_TX_MAX)
                return NULL;
        return tx_names[s];
}

const char *gw_isotp_rx_state_to_string(enum gw_isotp_rx_state s)
{
        if ((unsigned) s >= _GW_ISOTP_RX_MAX)
                return NULL;
        return rx_names[s];
}

static void debug(struct gw_isotp *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void debug(struct gw_isotp *t, const char *fmt, ...)
{
        va_list ap;

        if (!t->ops->logv)
                return;
        va_start(ap, fmt);
        t->ops->logv(t->ctx, fmt, ap);
        va_end(ap);
}

static void set_tx(struct gw_isotp *t, enum gw_isotp_tx_state s)
{
        if (t->tx_state == s)
                return;
        debug(t, "isotp: tx %s -> %s", gw_isotp_tx_state_to_string(t->tx_state),
              gw_isotp_tx_state_to_string(s));
        t->tx_state = s;
}

static void set_rx(struct gw_isotp *t, enum gw_isotp_rx_state s)
{
        if (t->rx_state == s)
                return;
        debug(t, "isotp: rx %s -> %s", gw_isotp_rx_state_to_string(t->rx_state),
              gw_isotp_rx_state_to_string(s));
        t->rx_state = s;
}

uint64_t gw_isotp_stmin_us(uint8_t stmin)
{
        if (stmin <= 0x7f)
                return (uint64_t) stmin * 1000u;
        if (stmin >= 0xf1 && stmin <= 0xf9)
                return (uint64_t) (stmin - 0xf0) * 100u;
        return STMIN_LONGEST;
}

bool gw_isotp_valid_dl(unsigned n)
{
        return n <= 8 || n == 12 || n == 16 || n == 20 || n == 24 || n == 32 || n == 48 || n == 64;
}

/* The frame length that carries used bytes: the next CAN FD length above 8, else 8 when
 * padding, else used itself. */
static uint8_t frame_len(const struct gw_isotp *t, size_t used)
{
        static const uint8_t fd_lengths[] = {12, 16, 20, 24, 32, 48, 64};

        if (used > CLASSIC_DL) {
                for (size_t i = 0; i < sizeof(fd_lengths); i++)
                        if (used <= fd_lengths[i])
                                return fd_lengths[i];
                return 64; /* not reached: used <= tx_dl <= 64 */
        }
        return t->cfg.padding >= 0 ? CLASSIC_DL : (uint8_t) used;
}

/* Fills f's header for our tx id and pads data[used..len). */
static void seal(const struct gw_isotp *t, struct gw_can_frame *f, size_t used)
{
        uint8_t pad = t->cfg.padding >= 0 ? (uint8_t) t->cfg.padding : FD_PADDING;

        f->id = t->cfg.tx_id;
        f->flags = 0;
        if (t->cfg.extended)
                f->flags |= GW_CAN_EFF;
        if (t->cfg.fd) {
                f->flags |= GW_CAN_FD;
                if (t->cfg.brs)
                        f->flags |= GW_CAN_BRS;
        }
        f->len = frame_len(t, used);
        if (f->len > used)
                memset(f->data + used, pad, f->len - used);
}

int gw_isotp_init(struct gw_isotp *t, const struct gw_isotp_config *cfg,
                  const struct gw_isotp_ops *ops, void *ctx, const struct gw_isotp_next *next)
{
        if (!t || !cfg || !ops || !ops->received || !ops->sent || !next || !next->send_frame)
                return -EINVAL;
        if (cfg->tx_dl < CLASSIC_DL || !gw_isotp_valid_dl(cfg->tx_dl) ||
            (!cfg->fd && cfg->tx_dl != CLASSIC_DL))
                return -EINVAL;
        if (cfg->padding < -1 || cfg->padding > 0xff)
                return -EINVAL;
        if (cfg->max_rx < 1 || cfg->max_rx > GW_ISOTP_MESSAGE_MAX || cfg->max_tx < 1 ||
            cfg->max_tx > GW_ISOTP_MESSAGE_MAX)
                return -EINVAL;
        memset(t, 0, sizeof(*t));
        t->cfg = *cfg;
        t->ops = ops;
        t->ctx = ctx;
        t->next = *next;
        t->tx_buf = malloc(cfg->max_tx);
        t->rx_buf = malloc(cfg->max_rx);
        if (!t->tx_buf || !t->rx_buf) {
                gw_isotp_done(t);
                return -ENOMEM;
        }
        return 0;
}

void gw_isotp_done(struct gw_isotp *t)
{
        if (!t)
                return;
        free(t->tx_buf);
        free(t->rx_buf);
        t->tx_buf = t->rx_buf = NULL;
        t->tx_state = GW_ISOTP_TX_IDLE;
        t->rx_state = GW_ISOTP_RX_IDLE;
}

uint64_t gw_isotp_deadline(const struct gw_isotp *t)
{
        uint64_t d = t->tx_deadline;

        if (t->rx_deadline && (!d || t->rx_deadline < d))
                d = t->rx_deadline;
        return d;
}

bool gw_isotp_sending(const struct gw_isotp *t)
{
        return t->tx_state != GW_ISOTP_TX_IDLE;
}

/* Ends the message being sent with result; the layer above hears of it. */
static void tx_end(struct gw_isotp *t, int result, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tx_end(struct gw_isotp *t, int result, const char *fmt, ...)
{
        va_list ap;

        t->why[0] = '\0';
        if (fmt) {
                va_start(ap, fmt);
                vsnprintf(t->why, sizeof(t->why), fmt, ap);
                va_end(ap);
                debug(t, "isotp: %s", t->why);
        }
        set_tx(t, GW_ISOTP_TX_IDLE);
        t->tx_deadline = 0;
        t->ops->sent(t->ctx, result, t->why);
}

static void rx_end_failed(struct gw_isotp *t, int error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rx_end_failed(struct gw_isotp *t, int error, const char *fmt, ...)
{
        char why[160];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        debug(t, "isotp: %s", why);
        set_rx(t, GW_ISOTP_RX_IDLE);
        t->rx_deadline = 0;
        if (t->ops->rx_failed)
                t->ops->rx_failed(t->ctx, error, why);
}

/* Builds the next frame of the message being sent into f; returns the message bytes it
 * carries. */
static size_t build_tx_frame(const struct gw_isotp *t, struct gw_can_frame *f)
{
        size_t dl = t->cfg.tx_dl, left = t->tx_len - t->tx_off, n, used;

        if (t->tx_first) {
                size_t sf_max = dl == CLASSIC_DL ? 7 : dl - 2;

                if (t->tx_len <= 7) {
                        f->data[0] = (uint8_t) (PCI_SF << 4 | t->tx_len);
                        memcpy(f->data + 1, t->tx_buf, t->tx_len);
                        used = 1 + t->tx_len;
                        n = t->tx_len;
                } else if (t->tx_len <= sf_max) {
                        /* CAN FD: SF_DL escaped in the second byte. */
                        f->data[0] = PCI_SF << 4;
                        f->data[1] = (uint8_t) t->tx_len;
                        memcpy(f->data + 2, t->tx_buf, t->tx_len);
                        used = 2 + t->tx_len;
                        n = t->tx_len;
                } else if (t->tx_len <= GW_ISOTP_CLASSIC_MAX) {
                        f->data[0] = (uint8_t) (PCI_FF << 4 | t->tx_len >> 8);
                        f->data[1] = (uint8_t) t->tx_len;
                        n = dl - 2;
                        memcpy(f->data + 2, t->tx_buf, n);
                        used = dl;
                } else {
                        /* FF_DL escaped: 0 in the 12 bits, then 32 bits. */
                        f->data[0] = PCI_FF << 4;
                        f->data[1] = 0;
                        f->data[2] = (uint8_t) (t->tx_len >> 24);
                        f->data[3] = (uint8_t) (t->tx_len >> 16);
                        f->data[4] = (uint8_t) (t->tx_len >> 8);
                        f->data[5] = (uint8_t) t->tx_len;
                        n = dl - 6;
                        memcpy(f->data + 6, t->tx_buf, n);
                        used = dl;
                }
        } else {
                n = left < dl - 1 ? left : dl - 1;
                f->data[0] = (uint8_t) (PCI_CF << 4 | t->tx_sn);
                memcpy(f->data + 1, t->tx_buf + t->tx_off, n);
                used = 1 + n;
        }
        seal(t, f, used);
        return n;
}

/* Queues frames while the state allows: until a flow control is due, STmin makes us wait, the
 * frame layer's queue is full, or the message is out. */
static void tx_pump(struct gw_isotp *t, uint64_t now)
{
        while (t->tx_state == GW_ISOTP_TX_SENDING) {
                struct gw_can_frame f;
                bool first = t->tx_first;
                size_t n;
                int r;

                if (now < t->tx_next_us) {
                        t->tx_deadline = t->tx_next_us;
                        return;
                }
                n = build_tx_frame(t, &f);
                r = t->next.send_frame(t->next.ctx, &f);
                if (r == -ENOBUFS) {
                        if (!t->tx_full_since)
                                t->tx_full_since = now;
                        if (now - t->tx_full_since >= t->cfg.n_as_us) {
                                tx_end(t, -ETIMEDOUT,
                                       "N_As: the CAN queue stayed full for %" PRIu64 " ms",
                                       t->cfg.n_as_us / 1000);
                                return;
                        }
                        t->tx_next_us = now + QUEUE_RETRY_US;
                        t->tx_deadline = t->tx_next_us;
                        return;
                }
                if (r < 0) {
                        tx_end(t, r, "sending a frame failed: %s", strerror(-r));
                        return;
                }
                t->tx_full_since = 0;
                t->tx_off += n;
                t->tx_first = false;
                if (t->tx_off >= t->tx_len) {
                        tx_end(t, 0, NULL);
                        return;
                }
                if (first) {
                        /* A first frame: the receiver's flow control decides the rest. */
                        t->tx_sn = 1;
                        t->tx_wft = 0;
                        set_tx(t, GW_ISOTP_TX_WAIT_FC);
                        t->tx_deadline = now + t->cfg.n_bs_us;
                        return;
                }
                t->tx_sn = (t->tx_sn + 1) & 0x0f;
                if (t->tx_bs && ++t->tx_block >= t->tx_bs) {
                        set_tx(t, GW_ISOTP_TX_WAIT_FC);
                        t->tx_deadline = now + t->cfg.n_bs_us;
                        return;
                }
                t->tx_next_us = now + t->tx_stmin_us;
        }
}

int gw_isotp_send(struct gw_isotp *t, const uint8_t *msg, size_t len, uint64_t now_us)
{
        size_t dl = t->cfg.tx_dl;

        if (t->tx_state != GW_ISOTP_TX_IDLE)
                return -EBUSY;
        if (len == 0 || !msg)
                return -EINVAL;
        if (len > t->cfg.max_tx)
                return -EMSGSIZE;
        memcpy(t->tx_buf, msg, len);
        t->tx_len = len;
        t->tx_off = 0;
        t->tx_first = true;
        t->tx_block = 0;
        t->tx_next_us = 0;
        t->tx_full_since = 0;
        t->tx_deadline = 0;
        debug(t, "isotp: sending %zu bytes in %s", len,
              len <= (dl == CLASSIC_DL ? 7 : dl - 2) ? "a single frame" : "segments");
        set_tx(t, GW_ISOTP_TX_SENDING);
        tx_pump(t, now_us);
        return 0;
}

void gw_isotp_abort_send(struct gw_isotp *t)
{
        if (t->tx_state == GW_ISOTP_TX_IDLE)
                return;
        debug(t, "isotp: sending aborted after %zu of %zu bytes", t->tx_off, t->tx_len);
        set_tx(t, GW_ISOTP_TX_IDLE);
        t->tx_deadline = 0;
}

static void on_flow_control(struct gw_isotp *t, const struct gw_can_frame *f, uint64_t now)
{
        uint8_t fs;

        if (t->tx_state != GW_ISOTP_TX_WAIT_FC) {
                debug(t, "isotp: flow control while %s, ignored",
                      gw_isotp_tx_state_to_string(t->tx_state));
                return;
        }
        if (f->len < 3) {
                debug(t, "isotp: flow control of %u bytes, ignored", f->len);
                return;
        }
        fs = f->data[0] & 0x0f;
        switch (fs) {
        case FS_CTS:
                t->tx_bs = f->data[1];
                t->tx_stmin_us = gw_isotp_stmin_us(f->data[2]);
                t->tx_block = 0;
                t->tx_wft = 0;
                t->tx_next_us = now;
                debug(t, "isotp: flow control: BS %u, STmin %" PRIu64 " us", t->tx_bs,
                      t->tx_stmin_us);
                set_tx(t, GW_ISOTP_TX_SENDING);
                tx_pump(t, now);
                return;
        case FS_WAIT:
                if (++t->tx_wft > t->cfg.wft_max) {
                        tx_end(t, -EBUSY,
                               "the receiver asked to wait more than %u times in a row (N_WFTmax)",
                               t->cfg.wft_max);
                        return;
                }
                t->tx_deadline = now + t->cfg.n_bs_us;
                return;
        case FS_OVERFLOW:
                tx_end(t, -EMSGSIZE,
                       "the receiver cannot take a %zu-byte message (flow control OVERFLOW)",
                       t->tx_len);
                return;
        default:
                tx_end(t, -EPROTO, "flow control with invalid flow status %u", fs);
                return;
        }
}

static void send_fc(struct gw_isotp *t, uint8_t fs, uint8_t bs, uint8_t stmin)
{
        struct gw_can_frame f;
        int r;

        f.data[0] = (uint8_t) (PCI_FC << 4 | fs);
        f.data[1] = bs;
        f.data[2] = stmin;
        seal(t, &f, 3);
        r = t->next.send_frame(t->next.ctx, &f);
        if (r < 0 && fs == FS_CTS)
                rx_end_failed(t, r, "sending flow control failed: %s", strerror(-r));
}

static void on_single_frame(struct gw_isotp *t, const struct gw_can_frame *f)
{
        size_t sf_dl, off;

        if (f->len <= CLASSIC_DL) {
                sf_dl = f->data[0] & 0x0f;
                off = 1;
                if (sf_dl == 0 || sf_dl > 7 || sf_dl > (size_t) f->len - 1) {
                        debug(t, "isotp: single frame with SF_DL %zu in %u bytes, ignored", sf_dl,
                              f->len);
                        return;
                }
        } else {
                /* Longer than 8: CAN FD, SF_DL escaped. */
                sf_dl = f->data[1];
                off = 2;
                if ((f->data[0] & 0x0f) != 0 || sf_dl == 0 || sf_dl > (size_t) f->len - 2) {
                        debug(t, "isotp: CAN FD single frame with SF_DL %zu in %u bytes, ignored",
                              sf_dl, f->len);
                        return;
                }
        }
        if (sf_dl > t->cfg.max_rx) {
                debug(t,
                      "isotp: single frame of %zu bytes over the %" PRIu32 "-byte limit, ignored",
                      sf_dl, t->cfg.max_rx);
                return;
        }
        if (t->rx_state != GW_ISOTP_RX_IDLE)
                rx_end_failed(t, -EPROTO,
                              "a single frame interrupted a message being received (%zu of %zu "
                              "bytes)",
                              t->rx_got, t->rx_len);
        /* Copied: the layer above may be handed the frame layer's buffer otherwise. */
        memcpy(t->rx_buf, f->data + off, sf_dl);
        t->ops->received(t->ctx, t->rx_buf, sf_dl);
}

static void on_first_frame(struct gw_isotp *t, const struct gw_can_frame *f, uint64_t now)
{
        size_t ff_dl, off, n;

        /* A first frame fills the sender's frame: 8 bytes, or a CAN FD length above 8. */
        if (f->len < CLASSIC_DL || !gw_isotp_valid_dl(f->len)) {
                debug(t, "isotp: first frame of %u bytes, ignored", f->len);
                return;
        }
        ff_dl = (size_t) (f->data[0] & 0x0f) << 8 | f->data[1];
        off = 2;
        if (ff_dl == 0) {
                ff_dl = (size_t) f->data[2] << 24 | (size_t) f->data[3] << 16 |
                        (size_t) f->data[4] << 8 | f->data[5];
                off = 6;
                if (ff_dl <= GW_ISOTP_CLASSIC_MAX) {
                        debug(t, "isotp: escaped first frame with FF_DL %zu, ignored", ff_dl);
                        return;
                }
        }
        /* Shorter messages go in a single frame: such a first frame is ignored. */
        if (ff_dl < (f->len == CLASSIC_DL ? 8u : (size_t) f->len - 1u)) {
                debug(t, "isotp: first frame with FF_DL %zu in %u bytes, ignored", ff_dl, f->len);
                return;
        }
        if (t->rx_state != GW_ISOTP_RX_IDLE)
                rx_end_failed(t, -EPROTO,
                              "a first frame interrupted a message being received (%zu of %zu "
                              "bytes)",
                              t->rx_got, t->rx_len);
        if (ff_dl > t->cfg.max_rx) {
                debug(t, "isotp: a %zu-byte message is over the %" PRIu32 "-byte limit: OVERFLOW",
                      ff_dl, t->cfg.max_rx);
                send_fc(t, FS_OVERFLOW, 0, 0);
                if (t->ops->rx_failed)
                        t->ops->rx_failed(t->ctx, -EMSGSIZE, "a message over the size limit");
                return;
        }
        n = f->len - off;
        memcpy(t->rx_buf, f->data + off, n);
        t->rx_len = ff_dl;
        t->rx_got = n;
        t->rx_dl = f->len;
        t->rx_sn = 1;
        t->rx_block = 0;
        set_rx(t, GW_ISOTP_RX_CF);
        t->rx_deadline = now + t->cfg.n_cr_us;
        send_fc(t, FS_CTS, t->cfg.rx_bs, t->cfg.rx_stmin);
}

static void on_consecutive_frame(struct gw_isotp *t, const struct gw_can_frame *f, uint64_t now)
{
        size_t left, n;
        uint8_t sn;

        if (t->rx_state != GW_ISOTP_RX_CF) {
                debug(t, "isotp: consecutive frame while idle, ignored");
                return;
        }
        sn = f->data[0] & 0x0f;
        if (sn != t->rx_sn) {
                rx_end_failed(t, -EILSEQ,
                              "consecutive frame with sequence number %u, expected %u (%zu of "
                              "%zu bytes received)",
                              sn, t->rx_sn, t->rx_got, t->rx_len);
                return;
        }
        left = t->rx_len - t->rx_got;
        n = left < (size_t) t->rx_dl - 1 ? left : (size_t) t->rx_dl - 1;
        /* All but the last fill the sender's frame length; the last carries at least the rest. */
        if ((left > (size_t) t->rx_dl - 1 && f->len != t->rx_dl) || (size_t) f->len < n + 1 ||
            f->len > t->rx_dl) {
                rx_end_failed(t, -EPROTO,
                              "consecutive frame of %u bytes, the first frame's length is %u (%zu "
                              "bytes left)",
                              f->len, t->rx_dl, left);
                return;
        }
        memcpy(t->rx_buf + t->rx_got, f->data + 1, n);
        t->rx_got += n;
        if (t->rx_got == t->rx_len) {
                set_rx(t, GW_ISOTP_RX_IDLE);
                t->rx_deadline = 0;
                t->ops->received(t->ctx, t->rx_buf, t->rx_len);
                return;
        }
        t->rx_sn = (t->rx_sn + 1) & 0x0f;
        t->rx_deadline = now + t->cfg.n_cr_us;
        if (t->cfg.rx_bs && ++t->rx_block >= t->cfg.rx_bs) {
                t->rx_block = 0;
                send_fc(t, FS_CTS, t->cfg.rx_bs, t->cfg.rx_stmin);
        }
}

void gw_isotp_frame(struct gw_isotp *t, const struct gw_can_frame *f, uint64_t now_us)
{
        if (!f || (f->flags & GW_CAN_RTR) || f->len == 0 || f->len > GW_CAN_FRAME_MAX) {
                debug(t, "isotp: empty or remote frame, ignored");
                return;
        }
        switch (f->data[0] >> 4) {
        case PCI_SF:
                on_single_frame(t, f);
                return;
        case PCI_FF:
                on_first_frame(t, f, now_us);
                return;
        case PCI_CF:
                on_consecutive_frame(t, f, now_us);
                return;
        case PCI_FC:
                on_flow_control(t, f, now_us);
                return;
        default:
                debug(t, "isotp: frame with unknown PCI type 0x%x, ignored", f->data[0] >> 4);
                return;
        }
}

void gw_isotp_timeout(struct gw_isotp *t, uint64_t now_us)
{
        if (t->rx_deadline && now_us >= t->rx_deadline)
                rx_end_failed(t, -ETIMEDOUT,
                              "N_Cr: no consecutive frame in %" PRIu64 " ms (%zu of %zu bytes "
                              "received)",
                              t->cfg.n_cr_us / 1000, t->rx_got, t->rx_len);
        if (!t->tx_deadline || now_us < t->tx_deadline)
                return;
        t->tx_deadline = 0;
        switch (t->tx_state) {
        case GW_ISOTP_TX_SENDING:
                tx_pump(t, now_us);
                return;
        case GW_ISOTP_TX_WAIT_FC:
                tx_end(t, -ETIMEDOUT,
                       "N_Bs: no flow control in %" PRIu64 " ms (%zu of %zu bytes sent)",
                       t->cfg.n_bs_us / 1000, t->tx_off, t->tx_len);
                return;
        default:
                return;
        }
}
