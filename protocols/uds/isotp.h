/* ISO-TP (ISO 15765-2) with normal addressing over CAN and CAN FD: one connection to a node (our
 * requests on its tx id, its answers on its rx id) as a non-blocking state machine fed by frames
 * and timer expiries. It sends through the layer beneath one frame at a time (queued, never
 * waited for), tells the layer above about whole messages, and says when it next needs the time. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/plugin.h"

/* The largest message either way: FF_DL's 32-bit escape allows 4 GiB; a node on this gateway
 * never needs more than this, and both buffers are allocated at this size when asked for. */
#define GW_ISOTP_MESSAGE_MAX (1u << 20)
/* Without the escape (classic CAN as ISO 15765-2:2004 has it). */
#define GW_ISOTP_CLASSIC_MAX 4095u

struct gw_isotp_config {
        uint32_t tx_id;   /* what our frames are sent with */
        bool extended;    /* 29-bit ids */
        bool fd;          /* send CAN FD frames (tx_dl may then exceed 8) */
        bool brs;         /* CAN FD: bit rate switch */
        uint8_t tx_dl;    /* the largest frame data length we send: 8, or 12..64 with fd */
        int padding;      /* 0..255: frames padded to 8 bytes with it; -1: frames only as long as
                           * their data (CAN FD frames longer than 8 are padded all the same, to
                           * the next valid length, with 0xCC) */
        uint8_t rx_bs;    /* our flow control's block size (0: all at once) */
        uint8_t rx_stmin; /* our flow control's STmin byte (0x00-0x7f ms, 0xf1-0xf9 100-900 us) */
        uint32_t max_rx;  /* the longest message we accept (longer: FC OVERFLOW), 1.. */
        uint32_t max_tx;  /* the longest message we send, 1.. */
        uint64_t n_as_us; /* how long the frame layer may refuse frames (queue full) */
        uint64_t n_bs_us; /* wait for a flow control after a first frame or a block */
        uint64_t n_cr_us; /* wait for the next consecutive frame */
        unsigned wft_max; /* WAIT flow controls in a row before giving up (N_WFTmax) */
};

/* The layer above. Each is called from inside gw_isotp_send(), _frame() or _timeout(); the
 * connection is in a state that takes a new gw_isotp_send() when they run. */
struct gw_isotp_ops {
        /* A whole message arrived (N_USData.indication); msg is valid for the call. */
        void (*received)(void *ctx, const uint8_t *msg, size_t len);
        /* The message given to gw_isotp_send() left (result 0: its last frame is queued), or
         * failed (-errno, why says how) (N_USData.confirm). */
        void (*sent)(void *ctx, int result, const char *why);
        /* A message being received was dropped (-errno, why); nothing to do but note it. May be
         * NULL. */
        void (*rx_failed)(void *ctx, int error, const char *why);
        /* Debug log. May be NULL. */
        void (*logv)(void *ctx, const char *fmt, va_list ap);
};

/* The layer beneath: CAN. send_frame() queues a frame (copied) and never waits: 0, -ENOBUFS
 * (queue full: tried again later, for up to n_as_us), or another -errno (the send fails). */
struct gw_isotp_next {
        int (*send_frame)(void *ctx, const struct gw_can_frame *f);
        void *ctx;
};

enum gw_isotp_tx_state {
        GW_ISOTP_TX_IDLE,
        GW_ISOTP_TX_SENDING, /* frames to queue: now, or once STmin or a full queue allow */
        GW_ISOTP_TX_WAIT_FC, /* a first frame or a block sent, waiting for flow control */
        _GW_ISOTP_TX_MAX,
};

enum gw_isotp_rx_state {
        GW_ISOTP_RX_IDLE,
        GW_ISOTP_RX_CF, /* a first frame came, consecutive frames follow */
        _GW_ISOTP_RX_MAX,
};

struct gw_isotp {
        const struct gw_isotp_ops *ops;
        void *ctx;
        struct gw_isotp_next next;
        struct gw_isotp_config cfg;

        enum gw_isotp_tx_state tx_state;
        uint8_t *tx_buf;
        size_t tx_len, tx_off;
        bool tx_first;          /* the next frame is the first (SF or FF) */
        uint8_t tx_sn;          /* the next consecutive frame's sequence number */
        uint8_t tx_bs;          /* the receiver's block size */
        unsigned tx_block;      /* consecutive frames sent in this block */
        uint64_t tx_stmin_us;   /* the receiver's STmin */
        unsigned tx_wft;        /* WAITs in a row */
        uint64_t tx_next_us;    /* TX_SENDING: when the next frame may go */
        uint64_t tx_full_since; /* the frame layer's queue has been full since (0: it is not) */
        uint64_t tx_deadline;   /* 0 = none */

        enum gw_isotp_rx_state rx_state;
        uint8_t *rx_buf;
        size_t rx_len, rx_got;
        uint8_t rx_dl; /* the sender's frame length, from its first frame */
        uint8_t rx_sn;
        unsigned rx_block;
        uint64_t rx_deadline;

        char why[160];
};

/* Prepares t: allocates the two buffers. 0, -EINVAL (a bad config), -ENOMEM. */
int gw_isotp_init(struct gw_isotp *t, const struct gw_isotp_config *cfg,
                  const struct gw_isotp_ops *ops, void *ctx, const struct gw_isotp_next *next);
/* Frees what init allocated; t may be zeroed or never initialised. */
void gw_isotp_done(struct gw_isotp *t);

/* Starts sending msg (copied): a single frame at once, or a first frame whose consecutive
 * frames follow the receiver's flow control. The outcome arrives as ops->sent(), possibly from
 * inside this call. 0, -EBUSY (a message is being sent), -EINVAL (empty), -EMSGSIZE (longer
 * than max_tx or than tx_dl allows), or a frame layer error on the first frame. */
int gw_isotp_send(struct gw_isotp *t, const uint8_t *msg, size_t len, uint64_t now_us);
/* Stops sending the message in flight (no ops->sent()); nothing is sent to say so. */
void gw_isotp_abort_send(struct gw_isotp *t);
/* A frame from the node (rx id). */
void gw_isotp_frame(struct gw_isotp *t, const struct gw_can_frame *f, uint64_t now_us);
/* Handles whatever is due at now_us; a call before the deadline changes nothing. */
void gw_isotp_timeout(struct gw_isotp *t, uint64_t now_us);
/* When gw_isotp_timeout() is next needed, microseconds; 0 = not. */
uint64_t gw_isotp_deadline(const struct gw_isotp *t);
bool gw_isotp_sending(const struct gw_isotp *t);

const char *gw_isotp_tx_state_to_string(enum gw_isotp_tx_state s);
const char *gw_isotp_rx_state_to_string(enum gw_isotp_rx_state s);

/* STmin as a flow control carries it, in microseconds; reserved values mean 127 ms. */
uint64_t gw_isotp_stmin_us(uint8_t stmin);
/* Is n a CAN FD data length (0..8, 12, 16, 20, 24, 32, 48, 64)? */
bool gw_isotp_valid_dl(unsigned n);
