/* The scripted fake stream link shared by protocol tests (see fake-link.h): a gw_proto_host
 * on a virtual clock that captures writes, plus a runner for step tables. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake-link.h"

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        struct fake_link *f = ctx;

        if (!f->verbose)
                return;
        fprintf(stderr, "[%llu ms] ", (unsigned long long) f->now);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

static uint64_t host_now_ms(void *ctx)
{
        struct fake_link *f = ctx;

        return f->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct fake_link *f = ctx;

        f->deadline = at_ms;
        f->deadlines_set++;
}

static int host_write(void *ctx, const void *buf, size_t n)
{
        struct fake_link *f = ctx;

        if (f->write_error < 0)
                return f->write_error;
        if (f->out_pos == f->out_len)
                f->out_pos = f->out_len = 0;
        if (f->out_len + n > f->out_cap) {
                size_t cap = f->out_cap ? f->out_cap : 4096;
                uint8_t *p;

                while (cap < f->out_len + n)
                        cap *= 2;
                p = realloc(f->out, cap);
                assert_non_null(p);
                f->out = p;
                f->out_cap = cap;
        }
        memcpy(f->out + f->out_len, buf, n);
        f->out_len += n;
        f->out_total += n;
        return 0;
}

static void host_flush_input(void *ctx)
{
        struct fake_link *f = ctx;

        f->flushes++;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct fake_link *f = ctx;

        f->progress_done = done;
        f->progress_total = total;
        f->progress_calls++;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        struct fake_link *f = ctx;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(f->error, sizeof(f->error), fmt, ap);
        va_end(ap);
}

static int host_set_lines(void *ctx, unsigned mask, unsigned values)
{
        struct fake_link *f = ctx;

        if (f->lines_error < 0)
                return f->lines_error;
        f->lines = (f->lines & ~mask) | (values & mask);
        if (f->n_line_log < sizeof(f->line_log) / sizeof(f->line_log[0])) {
                f->line_log[f->n_line_log].at = f->now;
                f->line_log[f->n_line_log].lines = f->lines;
                f->n_line_log++;
        }
        return 0;
}

void fake_link_init(struct fake_link *f, const struct gw_protocol_ops *ops)
{
        memset(f, 0, sizeof(*f));
        f->ops = ops;
        f->now = 1000;
        f->verbose = getenv("GW_TEST_VERBOSE") != NULL;
        f->host = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = f,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .write = host_write,
            .flush_input = host_flush_input,
            .progress = host_progress,
            .set_error = host_set_error,
            .set_lines = host_set_lines,
        };
        f->last_checked = true;
}

int fake_link_open(struct fake_link *f, const struct gw_options *opts)
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

void fake_link_done(struct fake_link *f)
{
        if (f->priv) {
                f->ops->done(f->priv);
                free(f->priv);
                f->priv = NULL;
        }
        free(f->out);
        f->out = NULL;
        f->out_pos = f->out_len = f->out_cap = 0;
}

static int record(struct fake_link *f, int r)
{
        f->last = r;
        f->last_checked = r == GW_PROTO_CONTINUE;
        return r;
}

int fake_link_install(struct fake_link *f, const struct gw_reader *reader)
{
        return record(f, f->ops->install(f->priv, reader));
}

int fake_link_deliver(struct fake_link *f, const void *buf, size_t n)
{
        return record(f, f->ops->input(f->priv, buf, n));
}

int fake_link_expire(struct fake_link *f)
{
        assert_true(f->deadline != 0);
        if (f->deadline > f->now)
                f->now = f->deadline;
        return record(f, f->ops->timeout(f->priv));
}

int fake_link_advance(struct fake_link *f, uint64_t ms)
{
        f->now += ms;
        if (f->deadline != 0 && f->now >= f->deadline)
                return record(f, f->ops->timeout(f->priv));
        return f->last;
}

int fake_link_cancel(struct fake_link *f)
{
        return record(f, f->ops->cancel(f->priv));
}

int fake_link_hangup(struct fake_link *f)
{
        return record(f, f->ops->hangup ? f->ops->hangup(f->priv) : -EPIPE);
}

size_t fake_link_pending(const struct fake_link *f)
{
        return f->out_len - f->out_pos;
}

const uint8_t *fake_link_peek(const struct fake_link *f)
{
        return f->out + f->out_pos;
}

bool fake_link_take(struct fake_link *f, void *buf, size_t n)
{
        if (fake_link_pending(f) < n)
                return false;
        if (buf)
                memcpy(buf, f->out + f->out_pos, n);
        f->out_pos += n;
        return true;
}

static void dump(const char *what, const uint8_t *p, size_t n)
{
        fprintf(stderr, "%s (%zu bytes):", what, n);
        for (size_t i = 0; i < n && i < 48; i++)
                fprintf(stderr, " %02x", p[i]);
        fprintf(stderr, n > 48 ? " ...\n" : "\n");
}

static void driving_allowed(struct fake_link *f, size_t i)
{
        if (!f->last_checked)
                fail_msg("step %zu: the last op returned %d and no step checked it", i, f->last);
}

void fake_link_run(struct fake_link *f, const struct fake_step *steps, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                const struct fake_step *s = &steps[i];

                switch (s->type) {
                case FAKE_STEP_WRITTEN:
                        if (fake_link_pending(f) != s->len ||
                            memcmp(fake_link_peek(f), s->data, s->len) != 0) {
                                dump("expected", s->data, s->len);
                                dump("written", fake_link_peek(f), fake_link_pending(f));
                                fail_msg("step %zu: unexpected bytes written", i);
                        }
                        fake_link_take(f, NULL, s->len);
                        break;
                case FAKE_STEP_SILENT:
                        if (fake_link_pending(f) != 0) {
                                dump("written", fake_link_peek(f), fake_link_pending(f));
                                fail_msg("step %zu: expected nothing written", i);
                        }
                        break;
                case FAKE_STEP_CHECK:
                        if (!s->fn(f, s))
                                fail_msg("step %zu: check failed", i);
                        break;
                case FAKE_STEP_DELIVER:
                        driving_allowed(f, i);
                        fake_link_deliver(f, s->data, s->len);
                        break;
                case FAKE_STEP_EXPIRE:
                        driving_allowed(f, i);
                        if (f->deadline == 0)
                                fail_msg("step %zu: no deadline armed", i);
                        if (s->ms != 0 && f->deadline != f->now + s->ms)
                                fail_msg("step %zu: deadline %llu ms ahead, expected %llu", i,
                                         (unsigned long long) (f->deadline - f->now),
                                         (unsigned long long) s->ms);
                        fake_link_expire(f);
                        break;
                case FAKE_STEP_ADVANCE:
                        driving_allowed(f, i);
                        fake_link_advance(f, s->ms);
                        break;
                case FAKE_STEP_RESULT:
                        if (f->last != s->result)
                                fail_msg("step %zu: result %d, expected %d (error: %s)", i, f->last,
                                         s->result, f->error);
                        f->last_checked = true;
                        break;
                case FAKE_STEP_CANCEL:
                        driving_allowed(f, i);
                        fake_link_cancel(f);
                        break;
                case FAKE_STEP_HANGUP:
                        driving_allowed(f, i);
                        fake_link_hangup(f);
                        break;
                }
        }
        if (!f->last_checked)
                fail_msg("script ended: the last op returned %d and no step checked it", f->last);
}
