/* A scripted fake frames link (CAN) on a virtual microsecond clock for protocol plugin tests:
 * it implements struct gw_proto_host (captures frames with the time they were sent, records the
 * deadline, serves the clock), drives one protocol instance, and runs scripts of steps at two
 * levels: frames (expected out, canned in) and whole ISO-TP messages, which it segments and
 * reassembles itself, independently of protocols/uds/isotp.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/options.h"
#include "gw/plugin.h"

#define FAKE_CAN_MSG_MAX 8192

struct fake_can_sent {
        struct gw_can_frame f;
        uint64_t at; /* the virtual time it was sent, us */
};

struct fake_can {
        struct gw_proto_host host;
        const struct gw_protocol_ops *ops;
        void *priv;
        struct gw_can_link_info info;

        uint64_t now;      /* the virtual clock, us; starts at 1 s */
        uint64_t deadline; /* as last armed, us; 0 = none */
        unsigned deadlines_set;
        bool ms_only; /* before open: the host offers no microsecond clock (version 2) */

        struct fake_can_sent *sent; /* frames sent and not yet taken: sent[pos..n) */
        size_t n_sent, sent_pos, sent_cap;
        uint64_t last_taken_at; /* when the last frame taken had been sent */
        int send_error;         /* when < 0, send_frame() returns it ... */
        unsigned send_errors;   /* ... this many times (0: every time) */

        uint64_t progress_done, progress_total;
        unsigned progress_calls;
        char error[256]; /* the last set_error() */

        /* The peer's side of ISO-TP for message steps: its flow control, its frames' padding
         * (-1: none) and length (8, or a CAN FD length). */
        uint8_t peer_bs, peer_stmin;
        int peer_padding;
        uint8_t peer_dl;
        /* What a message step took last. */
        uint8_t msg[FAKE_CAN_MSG_MAX];
        size_t msg_len;

        int last;
        bool last_checked;
        bool verbose;
};

/* Prepares f for ops on a classic link 0x7e0/0x7e8 at 500 kbit/s; nothing allocated yet. */
void fake_can_init(struct fake_can *f, const struct gw_protocol_ops *ops);
/* Allocates the instance and calls ops->init(opts); returns what init returned. */
int fake_can_open(struct fake_can *f, const struct gw_options *opts);
void fake_can_done(struct fake_can *f);

int fake_can_install(struct fake_can *f, const struct gw_reader *reader);
int fake_can_identify(struct fake_can *f, struct gw_options *ret);
/* A frame from the node: rx id, len bytes of data. */
int fake_can_deliver(struct fake_can *f, const void *data, size_t len);
int fake_can_deliver_frame(struct fake_can *f, const struct gw_can_frame *fr);
/* Moves the clock to the armed deadline and calls timeout(); fails the test when none. */
int fake_can_expire(struct fake_can *f);
/* Moves the clock by us; calls timeout() when that reaches the deadline. */
int fake_can_advance(struct fake_can *f, uint64_t us);
int fake_can_cancel(struct fake_can *f);

size_t fake_can_pending(const struct fake_can *f);
/* The next frame sent, taken; NULL when none. */
const struct fake_can_sent *fake_can_take(struct fake_can *f);

/* Message level. Reassembles the next message the instance sent (a single frame, or a first
 * frame, the peer's flow control, consecutive frames) into f->msg; false with a message printed
 * when it cannot. */
bool fake_can_take_message(struct fake_can *f);
/* Sends a message from the node: a single frame, or a first frame, then consecutive frames as
 * the instance's flow control allows (BS honoured, its STmin kept on the clock). false when the
 * instance's flow control is missing or wrong. */
bool fake_can_send_message(struct fake_can *f, const uint8_t *msg, size_t len);

enum fake_can_step_type {
        FAKE_CAN_STEP_SENT,     /* the next frame sent is exactly data[0..len) (id tx, padded
                                 * to 8 with 0xcc when shorter and arg[0] == 0) */
        FAKE_CAN_STEP_SENT_GAP, /* as SENT, and it was sent ms us after the previous frame */
        FAKE_CAN_STEP_SILENT,   /* no frame pending */
        FAKE_CAN_STEP_IN,       /* a frame from the node */
        FAKE_CAN_STEP_EXPIRE,   /* timeout() at the deadline; ms != 0: it is ms us ahead */
        FAKE_CAN_STEP_ADVANCE,  /* the clock moves by ms us */
        FAKE_CAN_STEP_RESULT,   /* the last op returned result */
        FAKE_CAN_STEP_CANCEL,   /* cancel() */
        FAKE_CAN_STEP_CHECK,    /* fn(f, step) */
        FAKE_CAN_STEP_REQUEST,  /* the next message sent is data[0..len) */
        FAKE_CAN_STEP_RESPONSE, /* the node sends the message data[0..len) */
};

struct fake_can_step {
        enum fake_can_step_type type;
        const void *data;
        size_t len;
        uint64_t ms; /* microseconds, despite the name: the step's time */
        int result;
        bool (*fn)(struct fake_can *f, const struct fake_can_step *s);
        long arg[3];
};

/* Step initialisers; s must be a string literal. Times are microseconds. */
#define CAN_SENT(s)                                                                                \
        {                                                                                          \
                .type = FAKE_CAN_STEP_SENT, .data = (s), .len = sizeof(s) - 1                      \
        }
/* Exactly as given, no padding added. */
#define CAN_SENT_RAW(s)                                                                            \
        {                                                                                          \
                .type = FAKE_CAN_STEP_SENT, .data = (s), .len = sizeof(s) - 1, .arg = { 1 }        \
        }
#define CAN_SENT_GAP(s, us)                                                                        \
        {                                                                                          \
                .type = FAKE_CAN_STEP_SENT_GAP, .data = (s), .len = sizeof(s) - 1, .ms = (us)      \
        }
#define CAN_SILENT()                                                                               \
        {                                                                                          \
                .type = FAKE_CAN_STEP_SILENT                                                       \
        }
#define CAN_IN(s)                                                                                  \
        {                                                                                          \
                .type = FAKE_CAN_STEP_IN, .data = (s), .len = sizeof(s) - 1                        \
        }
#define CAN_EXPIRE(us)                                                                             \
        {                                                                                          \
                .type = FAKE_CAN_STEP_EXPIRE, .ms = (us)                                           \
        }
#define CAN_ADVANCE(us)                                                                            \
        {                                                                                          \
                .type = FAKE_CAN_STEP_ADVANCE, .ms = (us)                                          \
        }
#define CAN_RESULT(r)                                                                              \
        {                                                                                          \
                .type = FAKE_CAN_STEP_RESULT, .result = (r)                                        \
        }
#define CAN_CANCEL()                                                                               \
        {                                                                                          \
                .type = FAKE_CAN_STEP_CANCEL                                                       \
        }
#define CAN_CHECK(f, a0, a1, a2)                                                                   \
        {                                                                                          \
                .type = FAKE_CAN_STEP_CHECK, .fn = (f), .arg = {(a0), (a1), (a2) }                 \
        }
#define CAN_REQ(s)                                                                                 \
        {                                                                                          \
                .type = FAKE_CAN_STEP_REQUEST, .data = (s), .len = sizeof(s) - 1                   \
        }
#define CAN_RSP(s)                                                                                 \
        {                                                                                          \
                .type = FAKE_CAN_STEP_RESPONSE, .data = (s), .len = sizeof(s) - 1                  \
        }

/* Runs steps in order; fails the test (naming the step) at the first mismatch. A driving
 * step after an op returned something other than GW_PROTO_CONTINUE, or the end of the
 * script, fails unless a RESULT step checked that value. */
void fake_can_run(struct fake_can *f, const struct fake_can_step *steps, size_t n);
