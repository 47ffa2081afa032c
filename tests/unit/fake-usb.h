/* A scripted fake USB control link on a virtual clock for protocol plugin tests: it implements
 * the control side of struct gw_proto_host (usb_info, select_alt, control, reset, reopen),
 * holds the one transfer in flight until a step completes it, records the deadline, and runs
 * scripts of expect / complete / expire / reopened steps. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/options.h"
#include "gw/plugin.h"

#define FAKE_USB_DATA_MAX 4096

struct fake_usb {
        struct gw_proto_host host;
        const struct gw_protocol_ops *ops;
        void *priv;

        uint64_t now;      /* the virtual clock, ms; starts at 1000 */
        uint64_t deadline; /* as last armed; 0 = none (expiring clears it: the timer is one-shot) */
        unsigned deadlines_set;

        const struct gw_usb_device_info *info;        /* what usb_info() returns */
        const struct gw_usb_device_info *reopen_info; /* what comes back after reopen() */

        /* The transfer in flight: setup, OUT data, timeout. */
        bool in_flight;
        struct gw_control_setup setup;
        uint8_t out[FAKE_USB_DATA_MAX];
        unsigned timeout_ms;
        unsigned transfers; /* ever submitted */
        int control_error;  /* when < 0, the next control() returns it and submits nothing */
        bool in_op;         /* an op is running: completions must not come from inside it */

        int select_error;
        unsigned selects;
        uint8_t sel_interface, sel_alt;
        int reset_error;
        unsigned resets;
        int reopen_error;
        bool reopening;
        unsigned reopens;
        uint64_t reopen_timeout;

        uint64_t progress_done, progress_total;
        unsigned progress_calls;
        char error[256];

        int last;
        bool last_checked;
        bool verbose; /* GW_TEST_VERBOSE is set: print the instance's log */
};

void fake_usb_init(struct fake_usb *f, const struct gw_protocol_ops *ops,
                   const struct gw_usb_device_info *info);
/* Allocates the instance and calls ops->init(opts); returns what init returned. */
int fake_usb_open(struct fake_usb *f, const struct gw_options *opts);
void fake_usb_done(struct fake_usb *f);

/* Drive the instance; each returns, and records in f->last, what the op returned. */
int fake_usb_install(struct fake_usb *f, const struct gw_reader *reader);
int fake_usb_upload(struct fake_usb *f, const struct gw_writer *writer);
int fake_usb_identify(struct fake_usb *f, struct gw_options *ret);
/* Completes the transfer in flight (fails the test when none is). */
int fake_usb_complete(struct fake_usb *f, int status, const void *data, size_t len);
/* Replies to a GETSTATUS in flight: bStatus, bwPollTimeout, bState, iString 0. */
int fake_usb_status(struct fake_usb *f, uint8_t status, uint32_t poll_ms, uint8_t state);
/* Moves the clock to the armed deadline and calls timeout(); fails when none is armed. */
int fake_usb_expire(struct fake_usb *f);
int fake_usb_advance(struct fake_usb *f, uint64_t ms);
/* The board is back (status 0: usb_info() now returns reopen_info) or not (-ETIMEDOUT). */
int fake_usb_reopened(struct fake_usb *f, int status);
int fake_usb_cancel(struct fake_usb *f);

enum fake_usb_step_type {
        FU_STEP_EXPECT,      /* the transfer in flight has this setup (and OUT data if given) */
        FU_STEP_NOTHING,     /* no transfer in flight */
        FU_STEP_COMPLETE,    /* completes it: status, IN data */
        FU_STEP_STATUS,      /* a GETSTATUS reply */
        FU_STEP_DEADLINE,    /* the deadline is armed ms ahead (ms == 0: none is armed) */
        FU_STEP_EXPIRE,      /* timeout() at the deadline */
        FU_STEP_ADVANCE,     /* the clock moves by ms; timeout() if that reaches the deadline */
        FU_STEP_RESETS,      /* reset() was called arg[0] times so far */
        FU_STEP_REOPEN,      /* reopen() is pending with timeout ms */
        FU_STEP_REOPENED,    /* reopened(result) */
        FU_STEP_RESULT,      /* the last op returned result */
        FU_STEP_CANCEL,      /* cancel() */
        FU_STEP_ERROR,       /* set_error() text contains data */
        FU_STEP_PROGRESS,    /* progress reported arg[0] of arg[1] bytes */
        FU_STEP_CHECK,       /* fn(f, step) is true */
        FU_STEP_SUBMIT_FAIL, /* the next control() fails with result */
};

struct fake_usb_step {
        enum fake_usb_step_type type;
        struct gw_control_setup setup;
        const void *data;
        size_t len;
        int result;
        uint64_t ms;
        long arg[3];
        bool (*fn)(struct fake_usb *f, const struct fake_usb_step *s);
};

#define FU_EXPECT(rt, rq, v, i, l)                                                                 \
        {                                                                                          \
                .type = FU_STEP_EXPECT, .setup = {(rt), (rq), (v), (i), (l) }                      \
        }
/* As FU_EXPECT, also comparing the OUT data with the literal s. */
#define FU_EXPECT_OUT(rt, rq, v, i, s)                                                             \
        {                                                                                          \
                .type = FU_STEP_EXPECT, .setup = {(rt), (rq), (v), (i), sizeof(s) - 1},            \
                .data = (s), .len = sizeof(s) - 1                                                  \
        }
#define FU_NOTHING()                                                                               \
        {                                                                                          \
                .type = FU_STEP_NOTHING                                                            \
        }
#define FU_COMPLETE(st)                                                                            \
        {                                                                                          \
                .type = FU_STEP_COMPLETE, .result = (st)                                           \
        }
/* Completes an IN transfer with n bytes at p (an UPLOAD's data). */
#define FU_REPLY_N(p, n)                                                                           \
        {                                                                                          \
                .type = FU_STEP_COMPLETE, .result = (n), .data = (p), .len = (n)                   \
        }
/* Completes an IN transfer with the literal s. */
#define FU_REPLY(s)                                                                                \
        {                                                                                          \
                .type = FU_STEP_COMPLETE, .result = sizeof(s) - 1, .data = (s),                    \
                .len = sizeof(s) - 1                                                               \
        }
#define FU_STATUS(status, poll, state)                                                             \
        {                                                                                          \
                .type = FU_STEP_STATUS, .arg = {(status), (poll), (state) }                        \
        }
#define FU_DEADLINE(t)                                                                             \
        {                                                                                          \
                .type = FU_STEP_DEADLINE, .ms = (t)                                                \
        }
#define FU_EXPIRE()                                                                                \
        {                                                                                          \
                .type = FU_STEP_EXPIRE                                                             \
        }
#define FU_ADVANCE(t)                                                                              \
        {                                                                                          \
                .type = FU_STEP_ADVANCE, .ms = (t)                                                 \
        }
#define FU_RESETS(n)                                                                               \
        {                                                                                          \
                .type = FU_STEP_RESETS, .arg = {(n) }                                              \
        }
#define FU_REOPEN(t)                                                                               \
        {                                                                                          \
                .type = FU_STEP_REOPEN, .ms = (t)                                                  \
        }
#define FU_REOPENED(r)                                                                             \
        {                                                                                          \
                .type = FU_STEP_REOPENED, .result = (r)                                            \
        }
#define FU_RESULT(r)                                                                               \
        {                                                                                          \
                .type = FU_STEP_RESULT, .result = (r)                                              \
        }
#define FU_CANCEL()                                                                                \
        {                                                                                          \
                .type = FU_STEP_CANCEL                                                             \
        }
#define FU_ERROR(s)                                                                                \
        {                                                                                          \
                .type = FU_STEP_ERROR, .data = (s)                                                 \
        }
#define FU_PROGRESS(d, t)                                                                          \
        {                                                                                          \
                .type = FU_STEP_PROGRESS, .arg = {(d), (t) }                                       \
        }
#define FU_CHECK(f, a0, a1, a2)                                                                    \
        {                                                                                          \
                .type = FU_STEP_CHECK, .fn = (f), .arg = {(a0), (a1), (a2) }                       \
        }
#define FU_SUBMIT_FAIL(r)                                                                          \
        {                                                                                          \
                .type = FU_STEP_SUBMIT_FAIL, .result = (r)                                         \
        }

/* Runs steps in order; fails the test (naming the step) at the first mismatch. A driving
 * step after an op returned something other than GW_PROTO_CONTINUE, or the end of the
 * script, fails unless a FU_STEP_RESULT step checked that value. */
void fake_usb_run(struct fake_usb *f, const struct fake_usb_step *steps, size_t n);
