/* The scripted fake USB control link shared by protocol tests (see fake-usb.h): a
 * gw_proto_host on a virtual clock that holds one control transfer in flight until a script
 * step completes it, plus a runner for step tables. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake-usb.h"

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        struct fake_usb *f = ctx;

        if (!f->verbose)
                return;
        fprintf(stderr, "[%llu ms] ", (unsigned long long) f->now);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

static uint64_t host_now_ms(void *ctx)
{
        struct fake_usb *f = ctx;

        return f->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct fake_usb *f = ctx;

        f->deadline = at_ms;
        f->deadlines_set++;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct fake_usb *f = ctx;

        f->progress_done = done;
        f->progress_total = total;
        f->progress_calls++;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        struct fake_usb *f = ctx;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(f->error, sizeof(f->error), fmt, ap);
        va_end(ap);
}

static const struct gw_usb_device_info *host_usb_info(void *ctx)
{
        struct fake_usb *f = ctx;

        return f->reopening ? NULL : f->info;
}

static int host_select_alt(void *ctx, uint8_t interface, uint8_t alt)
{
        struct fake_usb *f = ctx;

        if (f->reopening)
                return -ENODEV;
        if (f->select_error < 0)
                return f->select_error;
        f->selects++;
        f->sel_interface = interface;
        f->sel_alt = alt;
        return 0;
}

static int host_control(void *ctx, const struct gw_control_setup *setup, const void *data,
                        unsigned timeout_ms)
{
        struct fake_usb *f = ctx;

        /* The same limits as the core (core/flash.c): one in flight, 4096 bytes. */
        assert_false(f->in_flight);
        if (f->reopening)
                return -ENODEV;
        if (f->control_error < 0) {
                int r = f->control_error;

                f->control_error = 0;
                return r;
        }
        if (setup->length > FAKE_USB_DATA_MAX)
                return -EINVAL;
        f->setup = *setup;
        memset(f->out, 0, sizeof(f->out));
        if (!(setup->request_type & 0x80) && setup->length > 0) {
                assert_non_null(data);
                memcpy(f->out, data, setup->length);
        }
        f->timeout_ms = timeout_ms;
        f->in_flight = true;
        f->transfers++;
        return 0;
}

static int host_reset(void *ctx)
{
        struct fake_usb *f = ctx;

        f->resets++;
        return f->reset_error;
}

static int host_reopen(void *ctx, uint64_t timeout_ms)
{
        struct fake_usb *f = ctx;

        assert_false(f->in_flight);
        if (f->reopen_error < 0)
                return f->reopen_error;
        f->reopening = true;
        f->reopens++;
        f->reopen_timeout = timeout_ms;
        return 0;
}

void fake_usb_init(struct fake_usb *f, const struct gw_protocol_ops *ops,
                   const struct gw_usb_device_info *info)
{
        memset(f, 0, sizeof(*f));
        f->ops = ops;
        f->info = info;
        f->now = 1000;
        f->verbose = getenv("GW_TEST_VERBOSE") != NULL;
        f->host = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = f,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .progress = host_progress,
            .set_error = host_set_error,
            .usb_info = host_usb_info,
            .select_alt = host_select_alt,
            .control = host_control,
            .reset = host_reset,
            .reopen = host_reopen,
        };
        f->last_checked = true;
}

int fake_usb_open(struct fake_usb *f, const struct gw_options *opts)
{
        int r;

        f->priv = calloc(1, f->ops->priv_size);
        assert_non_null(f->priv);
        r = f->ops->init(f->priv, opts, &f->host);
        if (r < 0) {
                free(f->priv);
                f->priv = NULL;
        }
        return r;
}

void fake_usb_done(struct fake_usb *f)
{
        if (f->priv) {
                f->ops->done(f->priv);
                free(f->priv);
                f->priv = NULL;
        }
}

static int record(struct fake_usb *f, int r)
{
        f->in_op = false;
        f->last = r;
        f->last_checked = r == GW_PROTO_CONTINUE;
        return r;
}

int fake_usb_install(struct fake_usb *f, const struct gw_reader *reader)
{
        f->in_op = true;
        return record(f, f->ops->install(f->priv, reader));
}

int fake_usb_upload(struct fake_usb *f, const struct gw_writer *writer)
{
        f->in_op = true;
        return record(f, f->ops->upload(f->priv, writer));
}

int fake_usb_identify(struct fake_usb *f, struct gw_options *ret)
{
        f->in_op = true;
        return record(f, f->ops->identify(f->priv, ret));
}

int fake_usb_complete(struct fake_usb *f, int status, const void *data, size_t len)
{
        assert_true(f->in_flight);
        assert_false(f->in_op);
        f->in_flight = false;
        f->in_op = true;
        return record(f, f->ops->control_done(f->priv, status, data, len));
}

int fake_usb_status(struct fake_usb *f, uint8_t status, uint32_t poll_ms, uint8_t state)
{
        uint8_t b[6] = {
            status, (uint8_t) poll_ms, (uint8_t) (poll_ms >> 8), (uint8_t) (poll_ms >> 16), state,
            0};

        assert_true(f->in_flight);
        assert_int_equal(f->setup.request_type, 0xa1);
        assert_int_equal(f->setup.request, 3);
        return fake_usb_complete(f, 6, b, sizeof(b));
}

int fake_usb_expire(struct fake_usb *f)
{
        assert_true(f->deadline != 0);
        if (f->deadline > f->now)
                f->now = f->deadline;
        /* The core's timer is one-shot. */
        f->deadline = 0;
        f->in_op = true;
        return record(f, f->ops->timeout(f->priv));
}

int fake_usb_advance(struct fake_usb *f, uint64_t ms)
{
        f->now += ms;
        if (f->deadline != 0 && f->now >= f->deadline) {
                f->deadline = 0;
                f->in_op = true;
                return record(f, f->ops->timeout(f->priv));
        }
        return f->last;
}

int fake_usb_reopened(struct fake_usb *f, int status)
{
        assert_true(f->reopening);
        f->reopening = false;
        if (status == 0 && f->reopen_info)
                f->info = f->reopen_info;
        f->in_op = true;
        return record(f, f->ops->reopened(f->priv, status));
}

int fake_usb_cancel(struct fake_usb *f)
{
        f->in_op = true;
        return record(f, f->ops->cancel(f->priv));
}

static void driving_allowed(struct fake_usb *f, size_t i)
{
        if (!f->last_checked)
                fail_msg("step %zu: the last op returned %d (%s) and no step checked it", i,
                         f->last, f->error);
}

static void dump_setup(const char *what, const struct gw_control_setup *s)
{
        fprintf(stderr, "%s: type %02x request %u value %u index %u length %u\n", what,
                s->request_type, s->request, s->value, s->index, s->length);
}

void fake_usb_run(struct fake_usb *f, const struct fake_usb_step *steps, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                const struct fake_usb_step *s = &steps[i];

                switch (s->type) {
                case FU_STEP_EXPECT:
                        if (!f->in_flight)
                                fail_msg("step %zu: no transfer in flight (error: %s)", i,
                                         f->error);
                        if (memcmp(&f->setup, &s->setup, sizeof(s->setup)) != 0) {
                                dump_setup("expected", &s->setup);
                                dump_setup("submitted", &f->setup);
                                fail_msg("step %zu: unexpected setup packet", i);
                        }
                        if (s->data && memcmp(f->out, s->data, s->len) != 0)
                                fail_msg("step %zu: unexpected OUT data", i);
                        break;
                case FU_STEP_NOTHING:
                        if (f->in_flight) {
                                dump_setup("submitted", &f->setup);
                                fail_msg("step %zu: expected no transfer in flight", i);
                        }
                        break;
                case FU_STEP_COMPLETE:
                        driving_allowed(f, i);
                        fake_usb_complete(f, s->result, s->data, s->len);
                        break;
                case FU_STEP_STATUS:
                        driving_allowed(f, i);
                        if (!f->in_flight || f->setup.request != 3)
                                fail_msg("step %zu: no GETSTATUS in flight", i);
                        fake_usb_status(f, (uint8_t) s->arg[0], (uint32_t) s->arg[1],
                                        (uint8_t) s->arg[2]);
                        break;
                case FU_STEP_DEADLINE:
                        if (s->ms == 0 && f->deadline != 0)
                                fail_msg("step %zu: a deadline is armed %lld ms ahead", i,
                                         (long long) (f->deadline - f->now));
                        if (s->ms != 0 && f->deadline != f->now + s->ms)
                                fail_msg("step %zu: deadline %lld ms ahead, expected %llu", i,
                                         f->deadline ? (long long) (f->deadline - f->now) : -1,
                                         (unsigned long long) s->ms);
                        break;
                case FU_STEP_EXPIRE:
                        driving_allowed(f, i);
                        if (f->deadline == 0)
                                fail_msg("step %zu: no deadline armed", i);
                        fake_usb_expire(f);
                        break;
                case FU_STEP_ADVANCE:
                        driving_allowed(f, i);
                        fake_usb_advance(f, s->ms);
                        break;
                case FU_STEP_RESETS:
                        if (f->resets != (unsigned) s->arg[0])
                                fail_msg("step %zu: %u resets, expected %ld", i, f->resets,
                                         s->arg[0]);
                        break;
                case FU_STEP_REOPEN:
                        if (!f->reopening || f->reopen_timeout != s->ms)
                                fail_msg("step %zu: no reopen(%llu) pending (%d, %llu)", i,
                                         (unsigned long long) s->ms, f->reopening,
                                         (unsigned long long) f->reopen_timeout);
                        break;
                case FU_STEP_REOPENED:
                        driving_allowed(f, i);
                        fake_usb_reopened(f, s->result);
                        break;
                case FU_STEP_RESULT:
                        if (f->last != s->result)
                                fail_msg("step %zu: result %d, expected %d (error: %s)", i, f->last,
                                         s->result, f->error);
                        f->last_checked = true;
                        break;
                case FU_STEP_CANCEL:
                        driving_allowed(f, i);
                        fake_usb_cancel(f);
                        break;
                case FU_STEP_ERROR:
                        if (!strstr(f->error, (const char *) s->data))
                                fail_msg("step %zu: error \"%s\", expected \"%s\"", i, f->error,
                                         (const char *) s->data);
                        break;
                case FU_STEP_PROGRESS:
                        if (f->progress_done != (uint64_t) s->arg[0] ||
                            f->progress_total != (uint64_t) s->arg[1])
                                fail_msg("step %zu: progress %llu/%llu, expected %ld/%ld", i,
                                         (unsigned long long) f->progress_done,
                                         (unsigned long long) f->progress_total, s->arg[0],
                                         s->arg[1]);
                        break;
                case FU_STEP_CHECK:
                        if (!s->fn(f, s))
                                fail_msg("step %zu: check failed", i);
                        break;
                case FU_STEP_SUBMIT_FAIL:
                        f->control_error = s->result;
                        break;
                }
        }
        if (!f->last_checked)
                fail_msg("script ended: the last op returned %d (%s) and no step checked it",
                         f->last, f->error);
}
