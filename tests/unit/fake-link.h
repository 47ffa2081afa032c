/* A scripted fake stream link on a virtual clock for protocol plugin tests: it implements
 * struct gw_proto_host (captures writes, records the deadline, serves the virtual clock),
 * drives one protocol instance, and runs scripts of expect / deliver / expire steps. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/options.h"
#include "gw/plugin.h"

struct fake_link {
        struct gw_proto_host host;
        const struct gw_protocol_ops *ops;
        void *priv; /* the instance under test: ops->priv_size bytes, zeroed */

        uint64_t now;      /* the virtual clock, ms; starts at 1000 */
        uint64_t deadline; /* as last armed; 0 = none */
        unsigned deadlines_set;

        uint8_t *out; /* written by the instance and not yet taken: out[out_pos..out_len) */
        size_t out_pos, out_len, out_cap;
        size_t out_total; /* bytes ever written */
        int write_error;  /* when < 0, write() returns it and captures nothing */
        unsigned flushes; /* flush_input() calls */

        uint64_t progress_done, progress_total;
        unsigned progress_calls;
        char error[256]; /* the last set_error() */

        /* Modem-control lines (host->set_lines): the levels now (GW_LINE_* bits), and every
         * change with the virtual time it happened at. lines_error < 0 makes set_lines() fail
         * with it (a pty has no lines: -ENOTTY). */
        unsigned lines;
        struct {
                uint64_t at;
                unsigned lines;
        } line_log[64];
        size_t n_line_log;
        int lines_error;

        int last;          /* what the last install/input/timeout/cancel returned */
        bool last_checked; /* a FAKE_RESULT step looked at it */
        bool verbose;      /* GW_TEST_VERBOSE is set: print the instance's log */
};

/* Prepares f for ops; nothing allocated yet. */
void fake_link_init(struct fake_link *f, const struct gw_protocol_ops *ops);
/* Allocates the instance and calls ops->init(opts); returns what init returned. */
int fake_link_open(struct fake_link *f, const struct gw_options *opts);
/* Calls ops->done (after a successful open) and frees everything f holds. */
void fake_link_done(struct fake_link *f);

/* Drive the instance; each returns, and records in f->last, what the op returned. */
int fake_link_install(struct fake_link *f, const struct gw_reader *reader);
int fake_link_deliver(struct fake_link *f, const void *buf, size_t n);
/* Moves the clock to the armed deadline and calls timeout(). Fails the test when none is armed. */
int fake_link_expire(struct fake_link *f);
/* Moves the clock by ms; calls timeout() when that reaches the deadline. Returns the op's
 * result, or f->last when no op was called. */
int fake_link_advance(struct fake_link *f, uint64_t ms);
int fake_link_cancel(struct fake_link *f);
int fake_link_hangup(struct fake_link *f);

/* Written bytes not yet taken. */
size_t fake_link_pending(const struct fake_link *f);
const uint8_t *fake_link_peek(const struct fake_link *f);
/* Takes n written bytes into buf (may be NULL to skip them); false when fewer are pending. */
bool fake_link_take(struct fake_link *f, void *buf, size_t n);

/* Script steps. */
enum fake_step_type {
        FAKE_STEP_WRITTEN, /* the instance has written exactly data[0..len) next */
        FAKE_STEP_SILENT,  /* nothing is pending */
        FAKE_STEP_CHECK,   /* fn checks (and takes) what was written; false fails the test */
        FAKE_STEP_DELIVER, /* input(data, len) */
        FAKE_STEP_EXPIRE,  /* timeout() at the deadline; with ms != 0, the deadline must be
                            * exactly ms after the current time */
        FAKE_STEP_ADVANCE, /* the clock moves by ms */
        FAKE_STEP_RESULT,  /* the last op returned result */
        FAKE_STEP_CANCEL,  /* cancel() */
        FAKE_STEP_HANGUP,  /* hangup(): the link went away */
};

struct fake_step {
        enum fake_step_type type;
        const void *data;
        size_t len;
        uint64_t ms;
        int result;
        bool (*fn)(struct fake_link *f, const struct fake_step *s);
        long arg[3];
};

/* Initialisers for step tables; s must be a string literal ("\x06" "C"). */
#define FAKE_WRITTEN(s)                                                                            \
        {                                                                                          \
                .type = FAKE_STEP_WRITTEN, .data = (s), .len = sizeof(s) - 1                       \
        }
#define FAKE_SILENT()                                                                              \
        {                                                                                          \
                .type = FAKE_STEP_SILENT                                                           \
        }
#define FAKE_IN(s)                                                                                 \
        {                                                                                          \
                .type = FAKE_STEP_DELIVER, .data = (s), .len = sizeof(s) - 1                       \
        }
#define FAKE_EXPIRE(t)                                                                             \
        {                                                                                          \
                .type = FAKE_STEP_EXPIRE, .ms = (t)                                                \
        }
#define FAKE_ADVANCE(t)                                                                            \
        {                                                                                          \
                .type = FAKE_STEP_ADVANCE, .ms = (t)                                               \
        }
#define FAKE_RESULT(r)                                                                             \
        {                                                                                          \
                .type = FAKE_STEP_RESULT, .result = (r)                                            \
        }
#define FAKE_CANCEL()                                                                              \
        {                                                                                          \
                .type = FAKE_STEP_CANCEL                                                           \
        }
#define FAKE_HANGUP()                                                                              \
        {                                                                                          \
                .type = FAKE_STEP_HANGUP                                                           \
        }
#define FAKE_CHECK(f, a0, a1, a2)                                                                  \
        {                                                                                          \
                .type = FAKE_STEP_CHECK, .fn = (f), .arg = {(a0), (a1), (a2) }                     \
        }

/* Runs steps in order; fails the test (naming the step) at the first mismatch. A driving
 * step after an op returned something other than GW_PROTO_CONTINUE, or the end of the
 * script, fails unless a FAKE_STEP_RESULT step checked that value. */
void fake_link_run(struct fake_link *f, const struct fake_step *steps, size_t n);
