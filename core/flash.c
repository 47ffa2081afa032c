/* A flash job: drives one protocol instance over one transport link from the loop. It owns
 * the plugins' private state, the link's output queue (stream links), the fds a control
 * transport hands the loop, and the protocol's single timer. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gw/flash.h"
#include "gw/log.h"
#include "gw/registry.h"

/* A protocol queues a block or two at a time; more than this is a protocol bug. */
#define OUT_QUEUE_MAX (256u * 1024u)
#define READ_CHUNK    4096u
/* usbfs refuses bigger control transfers. */
#define CONTROL_MAX 4096u
/* How often a board that re-enumerates is looked for. */
#define REOPEN_POLL_MS 50u

/* An fd a transport asked the loop to watch. */
struct watch {
        struct gw_flash *f;
        struct watch *next;
        struct gw_source *source;
        void (*cb)(void *userdata, int fd, short revents);
        void *userdata;
};

struct gw_flash {
        struct gw_loop *loop;
        char *name;

        const struct gw_transport_ops *t;
        void *tpriv;
        bool link_open;
        const struct gw_protocol_ops *p;
        void *ppriv;
        bool proto_init;

        struct gw_plugin_services svc;
        struct gw_proto_host host;
        struct gw_source *io;
        struct gw_source *timer;
        struct gw_options *topts; /* kept to open the link again (reopen) */
        struct gw_options *popts; /* kept to initialise the protocol again per operation */
        /* An operation ran on the protocol instance: the next one starts on a fresh one. */
        bool used;
        /* finished() of an operation whose first step already ended it, from the loop. */
        struct gw_source *finish_timer;
        int deferred_result;
        bool deferred;
        /* An identify waiting for the link to be found again (control links). */
        struct gw_options *identify_ret;

        /* Control links: fds of the transport's library, a completed transfer waiting to be
         * delivered from a clean stack (not from inside the library's event handler), and a
         * board being looked for after it re-enumerates. */
        struct watch *watches;
        struct gw_source *deliver;
        bool control_pending;
        int control_status;
        uint8_t control_data[CONTROL_MAX];
        size_t control_len;
        struct gw_source *reopen_timer;
        uint64_t reopen_deadline;
        /* topts plus GW_OPTION_REOPEN_PATH while a board is looked for again. */
        struct gw_options *reopen_opts;

        uint8_t *out;
        size_t out_off, out_len, out_allocated;

        const struct gw_flash_callbacks *cb;
        void *userdata;
        bool running;
        char reason[256];
};

__attribute__((format(printf, 3, 0))) static void flash_logv(void *ctx, int level, const char *fmt,
                                                             va_list ap)
{
        struct gw_flash *f = ctx;
        char msg[1024];

        if (level > gw_log_get_max_level())
                return;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        gw_log_full_errno(level, 0, "%s: %s", f->name, msg);
}

static uint64_t flash_now(void *ctx)
{
        return gw_now_ms();
}

static void flash_set_deadline(void *ctx, uint64_t at_ms)
{
        struct gw_flash *f = ctx;

        gw_source_set_time(f->timer, at_ms);
}

static uint64_t flash_now_us(void *ctx)
{
        return gw_now_us();
}

static void flash_set_deadline_us(void *ctx, uint64_t at_us)
{
        struct gw_flash *f = ctx;

        gw_source_set_time_us(f->timer, at_us);
}

static void update_events(struct gw_flash *f)
{
        short ev = 0;

        if (f->running)
                ev |= POLLIN;
        if (f->out_len > f->out_off)
                ev |= POLLOUT;
        gw_source_set_io_events(f->io, ev);
}

/* Writes what the link takes now; 0 or -errno when the link failed. */
static int flush_out(struct gw_flash *f)
{
        while (f->out_off < f->out_len) {
                ssize_t n = f->t->write(f->tpriv, f->out + f->out_off, f->out_len - f->out_off);

                if (n == -EAGAIN || n == 0)
                        break;
                if (n < 0)
                        return (int) n;
                f->out_off += (size_t) n;
        }
        if (f->out_off == f->out_len)
                f->out_off = f->out_len = 0;
        update_events(f);
        return 0;
}

static int flash_write(void *ctx, const void *buf, size_t n)
{
        struct gw_flash *f = ctx;
        size_t pending = f->out_len - f->out_off;

        if (!f->link_open)
                return -EPIPE;
        if (pending + n > OUT_QUEUE_MAX)
                return -ENOBUFS;
        if (f->out_off > 0) {
                memmove(f->out, f->out + f->out_off, pending);
                f->out_off = 0;
                f->out_len = pending;
        }
        if (f->out_len + n > f->out_allocated) {
                size_t na = f->out_len + n < 4096 ? 4096 : (f->out_len + n) * 2;
                uint8_t *p = realloc(f->out, na);

                if (!p)
                        return -ENOMEM;
                f->out = p;
                f->out_allocated = na;
        }
        memcpy(f->out + f->out_len, buf, n);
        f->out_len += n;
        return 0;
}

static void flash_flush_input(void *ctx)
{
        struct gw_flash *f = ctx;
        uint8_t buf[READ_CHUNK];

        /* Drain what the link already holds; bounded so a chattering peer cannot hold us. */
        for (int i = 0; i < 64; i++)
                if (f->t->read(f->tpriv, buf, sizeof(buf)) <= 0)
                        break;
}

static void flash_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct gw_flash *f = ctx;

        if (f->cb && f->cb->progress)
                f->cb->progress(f->userdata, done, total);
}

static void flash_resumed(void *ctx, uint64_t offset)
{
        struct gw_flash *f = ctx;

        if (f->running && f->cb && f->cb->resumed)
                f->cb->resumed(f->userdata, offset);
}

__attribute__((format(printf, 2, 3))) static void flash_set_error(void *ctx, const char *fmt, ...)
{
        struct gw_flash *f = ctx;
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(f->reason, sizeof(f->reason), fmt, ap);
        va_end(ap);
}

/* Why the link failed, when the transport can tell (ops version 6), else NULL. */
static const char *link_error(const struct gw_flash *f)
{
        if (!f->link_open || f->t->version < 6 || !f->t->link_error)
                return NULL;
        return f->t->link_error(f->tpriv);
}

static void finish(struct gw_flash *f, int r)
{
        const struct gw_flash_callbacks *cb = f->cb;

        if (!f->running)
                return;
        f->running = false;
        gw_source_set_time(f->timer, 0);
        gw_source_set_time(f->finish_timer, 0);
        f->deferred = false;
        if (f->identify_ret) {
                f->identify_ret = NULL;
                gw_source_set_time(f->reopen_timer, 0);
        }
        /* Best effort: a cancel sequence queued last should reach the node. */
        (void) flush_out(f);
        if (r < 0 && link_error(f))
                /* The link failed beneath the protocol: its cause is the reason, whatever the
                 * protocol made of the failure (a request it could not send, a timeout). */
                snprintf(f->reason, sizeof(f->reason), "link lost: %s", link_error(f));
        if (r < 0 && !f->reason[0])
                snprintf(f->reason, sizeof(f->reason), "%s", strerror(-r));
        update_events(f);
        if (cb && cb->finished)
                cb->finished(f->userdata, r, r < 0 ? f->reason : NULL);
}

/* Handles what a protocol op returned. Returns true when the job ended. */
static bool handle_result(struct gw_flash *f, int r)
{
        if (r < 0) {
                finish(f, r);
                return true;
        }
        if (r == GW_PROTO_DONE) {
                finish(f, 0);
                return true;
        }
        r = flush_out(f);
        if (r < 0) {
                flash_set_error(f, "write to link failed: %s", strerror(-r));
                finish(f, r);
                return true;
        }
        return false;
}

/* The link failed under a running operation (r: -EPIPE, the peer or device is gone;
 * -ENETDOWN, a bus or adapter down; another -errno). A node that already has everything says so
 * through the protocol's hangup(); otherwise the operation fails, "link lost". */
static void link_failed(struct gw_flash *f, int r)
{
        if (r == -EPIPE && f->p->hangup) {
                handle_result(f, f->p->hangup(f->ppriv));
                if (!f->running)
                        return;
                flash_set_error(f, "link lost");
        } else {
                flash_set_error(f, "link lost: %s",
                                r == -ENETDOWN ? "the CAN bus or adapter is down" : strerror(-r));
        }
        finish(f, r);
}

static int on_io(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_flash *f = userdata;
        uint8_t buf[READ_CHUNK];

        if (!f->running)
                return 0;
        if (revents & POLLOUT) {
                int r = flush_out(f);

                if (r < 0) {
                        flash_set_error(f, "write to link failed: %s", strerror(-r));
                        finish(f, r);
                        return 0;
                }
        }
        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
                return 0;
        for (int i = 0; i < 16; i++) {
                ssize_t n = f->t->read(f->tpriv, buf, sizeof(buf));

                if (n == -EAGAIN || n == 0)
                        break;
                if (n < 0) {
                        link_failed(f, (int) n);
                        return 0;
                }
                if (handle_result(f, f->p->input(f->ppriv, buf, (size_t) n)))
                        return 0;
        }
        return 0;
}

/* Frames links: every frame the transport holds for this link, to the protocol. */
static int on_frames(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_flash *f = userdata;
        struct gw_can_frame frame;

        if (!f->running)
                return 0;
        /* Bounded, so that a chattering bus cannot hold the loop; the fd stays readable. */
        for (int i = 0; i < 256; i++) {
                int r = f->t->recv_frame(f->tpriv, &frame);

                if (r == -EAGAIN || r == 0)
                        break;
                if (r < 0) {
                        link_failed(f, r);
                        return 0;
                }
                if (handle_result(f, f->p->frame(f->ppriv, &frame)))
                        return 0;
        }
        return 0;
}

static int on_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_flash *f = userdata;

        if (f->running)
                handle_result(f, f->p->timeout(f->ppriv));
        return 0;
}

static int on_watch(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct watch *w = userdata;

        w->cb(w->userdata, fd, revents);
        return 0;
}

static int flash_watch_fd(void *ctx, int fd, short events,
                          void (*cb)(void *userdata, int fd, short revents), void *userdata,
                          void **ret_handle)
{
        struct gw_flash *f = ctx;
        struct watch *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        w->f = f;
        w->cb = cb;
        w->userdata = userdata;
        r = gw_loop_add_io(f->loop, fd, events, on_watch, w, &w->source);
        if (r < 0) {
                free(w);
                return r;
        }
        w->next = f->watches;
        f->watches = w;
        *ret_handle = w;
        return 0;
}

static void flash_unwatch_fd(void *ctx, void *handle)
{
        struct gw_flash *f = ctx;

        for (struct watch **p = &f->watches; *p; p = &(*p)->next)
                if (*p == handle) {
                        struct watch *w = *p;

                        *p = w->next;
                        gw_source_free(w->source);
                        free(w);
                        return;
                }
}

static const struct gw_usb_device_info *flash_usb_info(void *ctx)
{
        struct gw_flash *f = ctx;

        return f->link_open && f->t->usb_info ? f->t->usb_info(f->tpriv) : NULL;
}

static int flash_select_alt(void *ctx, uint8_t interface, uint8_t alt)
{
        struct gw_flash *f = ctx;

        if (!f->link_open)
                return -ENODEV;
        return f->t->select_alt ? f->t->select_alt(f->tpriv, interface, alt) : -EOPNOTSUPP;
}

/* Runs inside the transport library's event handling: only record, deliver from the loop. */
static void on_control_done(void *userdata, int status, const uint8_t *data, size_t len)
{
        struct gw_flash *f = userdata;

        if (len > sizeof(f->control_data))
                len = sizeof(f->control_data);
        if (data && len)
                memcpy(f->control_data, data, len);
        f->control_len = data ? len : 0;
        f->control_status = status;
        f->control_pending = true;
        gw_source_set_time(f->deliver, gw_now_ms());
}

static int on_deliver(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_flash *f = userdata;

        if (!f->control_pending)
                return 0;
        f->control_pending = false;
        if (f->running && f->p->control_done)
                handle_result(f, f->p->control_done(f->ppriv, f->control_status, f->control_data,
                                                    f->control_len));
        return 0;
}

static int flash_control(void *ctx, const struct gw_control_setup *setup, const void *data,
                         unsigned timeout_ms)
{
        struct gw_flash *f = ctx;

        if (!f->link_open)
                return -ENODEV;
        if (!f->t->control)
                return -EOPNOTSUPP;
        if (setup->length > CONTROL_MAX)
                return -EINVAL;
        return f->t->control(f->tpriv, setup, data, timeout_ms, on_control_done, f);
}

static int flash_reset(void *ctx)
{
        struct gw_flash *f = ctx;

        if (!f->link_open)
                return -ENODEV;
        return f->t->reset ? f->t->reset(f->tpriv) : -EOPNOTSUPP;
}

static int flash_set_lines(void *ctx, unsigned mask, unsigned values)
{
        struct gw_flash *f = ctx;

        if (!f->link_open)
                return -ENODEV;
        return f->t->set_lines(f->tpriv, mask, values);
}

static const struct gw_can_link_info *flash_can_info(void *ctx)
{
        struct gw_flash *f = ctx;

        return f->link_open ? f->t->can_info(f->tpriv) : NULL;
}

static int flash_send_frame(void *ctx, const struct gw_can_frame *frame)
{
        struct gw_flash *f = ctx;

        if (!f->link_open)
                return -EPIPE;
        return f->t->send_frame(f->tpriv, frame);
}

static void link_close(struct gw_flash *f)
{
        if (!f->link_open)
                return;
        f->t->close(f->tpriv);
        f->link_open = false;
        f->control_pending = false;
        /* Whatever the transport left watched goes with the link. */
        while (f->watches)
                flash_unwatch_fd(f, f->watches);
        memset(f->tpriv, 0, f->t->priv_size ? f->t->priv_size : 1);
}

static void identify_reopened(struct gw_flash *f, int status);
static int on_finish_timer(struct gw_source *s, uint64_t now, void *userdata);

static int on_reopen_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_flash *f = userdata;
        int r;

        r = f->t->open(f->tpriv, f->reopen_opts ? f->reopen_opts : f->topts, &f->svc);
        if (r >= 0) {
                f->reopen_opts = gw_options_free(f->reopen_opts);
                f->link_open = true;
                gw_log_debug("%s: link open again", f->name);
                if (f->identify_ret)
                        identify_reopened(f, 0);
                else if (f->running && f->p->reopened)
                        handle_result(f, f->p->reopened(f->ppriv, 0));
                return 0;
        }
        memset(f->tpriv, 0, f->t->priv_size ? f->t->priv_size : 1);
        if (now >= f->reopen_deadline) {
                f->reopen_opts = gw_options_free(f->reopen_opts);
                if (f->identify_ret)
                        identify_reopened(f, -ETIMEDOUT);
                else if (f->running && f->p->reopened)
                        handle_result(f, f->p->reopened(f->ppriv, -ETIMEDOUT));
                return 0;
        }
        gw_source_set_time(f->reopen_timer, now + REOPEN_POLL_MS);
        return 0;
}

static int flash_reopen(void *ctx, uint64_t timeout_ms)
{
        struct gw_flash *f = ctx;
        const struct gw_usb_device_info *info =
            f->link_open && f->t->usb_info ? f->t->usb_info(f->tpriv) : NULL;
        uint64_t now = gw_now_ms();

        /* The board comes back at the same port, possibly with other ids (its DFU-mode ones)
         * and another serial number: the transport is told where it was. */
        f->reopen_opts = gw_options_free(f->reopen_opts);
        if (info && info->path) {
                f->reopen_opts = gw_options_new();
                if (!f->reopen_opts || gw_options_merge(f->reopen_opts, f->topts) < 0 ||
                    gw_options_set(f->reopen_opts, GW_OPTION_REOPEN_PATH, info->path) < 0) {
                        f->reopen_opts = gw_options_free(f->reopen_opts);
                        return -ENOMEM;
                }
        }
        link_close(f);
        f->reopen_deadline = now + timeout_ms;
        return gw_source_set_time(f->reopen_timer, now + REOPEN_POLL_MS);
}

int gw_flash_new(struct gw_loop *loop, const char *name, const struct gw_transport_ops *t,
                 const struct gw_options *topts, const struct gw_protocol_ops *p,
                 const struct gw_options *popts, struct gw_flash **ret)
{
        struct gw_flash *f;
        int r;

        if (!loop || !t || !p || !ret)
                return -EINVAL;
        if (p->shape != t->shape)
                return gw_log_debug_errno(
                    -EPROTO, "%s: protocol %s needs a %s link, transport %s is %s", name, p->name,
                    gw_link_shape_to_string(p->shape), t->name, gw_link_shape_to_string(t->shape));
        if (t->shape == GW_LINK_FRAMES &&
            (t->version < 5 || !t->can_info || !t->send_frame || !t->recv_frame || !t->get_fd ||
             p->version < 6 || !p->frame))
                return gw_log_debug_errno(-EPROTO, "%s: %s/%s lack the frame link ops", name,
                                          t->name, p->name);
        if (t->shape == GW_LINK_CONTROL &&
            (t->version < 2 || !t->control || !t->usb_info || p->version < 2 || !p->control_done))
                return gw_log_debug_errno(-EPROTO, "%s: %s/%s lack the control link ops", name,
                                          t->name, p->name);

        f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->loop = loop;
        f->name = strdup(name ? name : "node");
        f->t = t;
        f->p = p;
        f->tpriv = calloc(1, t->priv_size ? t->priv_size : 1);
        f->ppriv = calloc(1, p->priv_size ? p->priv_size : 1);
        if (!f->name || !f->tpriv || !f->ppriv) {
                r = -ENOMEM;
                goto fail;
        }
        f->svc = (struct gw_plugin_services){
            .version = GW_SERVICES_VERSION,
            .ctx = f,
            .logv = flash_logv,
            .now_ms = flash_now,
            .watch_fd = flash_watch_fd,
            .unwatch_fd = flash_unwatch_fd,
        };
        f->host = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = f,
            .logv = flash_logv,
            .now_ms = flash_now,
            .set_deadline = flash_set_deadline,
            .write = flash_write,
            .flush_input = flash_flush_input,
            .progress = flash_progress,
            .set_error = flash_set_error,
            .now_us = flash_now_us,
            .set_deadline_us = flash_set_deadline_us,
            .resumed = flash_resumed,
        };
        if (t->shape == GW_LINK_STREAM && t->version >= 4 && t->set_lines)
                f->host.set_lines = flash_set_lines;
        if (t->shape == GW_LINK_FRAMES) {
                f->host.write = NULL;
                f->host.flush_input = NULL;
                f->host.can_info = flash_can_info;
                f->host.send_frame = flash_send_frame;
        }
        if (t->shape == GW_LINK_CONTROL) {
                f->host.write = NULL;
                f->host.flush_input = NULL;
                f->host.usb_info = flash_usb_info;
                f->host.select_alt = flash_select_alt;
                f->host.control = flash_control;
                f->host.reset = flash_reset;
                f->host.reopen = flash_reopen;
        }
        /* The protocol's link defaults (stm32: even parity) under the node's own settings. */
        r = gw_plugin_link_options(p, topts, &f->topts);
        if (r < 0)
                goto fail;
        f->popts = gw_options_new();
        if (!f->popts || gw_options_merge(f->popts, popts) < 0) {
                r = -ENOMEM;
                goto fail;
        }

        r = t->open(f->tpriv, f->topts, &f->svc);
        if (r < 0)
                goto fail;
        f->link_open = true;

        r = p->init(f->ppriv, popts, &f->host);
        if (r < 0)
                goto fail;
        f->proto_init = true;

        r = gw_loop_add_timer(loop, 0, on_timer, f, &f->timer);
        if (r >= 0)
                r = gw_loop_add_timer(loop, 0, on_finish_timer, f, &f->finish_timer);
        if (r < 0)
                goto fail;
        if (t->shape == GW_LINK_STREAM)
                r = gw_loop_add_io(loop, t->get_fd(f->tpriv), 0, on_io, f, &f->io);
        else if (t->shape == GW_LINK_FRAMES)
                r = gw_loop_add_io(loop, t->get_fd(f->tpriv), POLLIN, on_frames, f, &f->io);
        else {
                r = gw_loop_add_timer(loop, 0, on_deliver, f, &f->deliver);
                if (r >= 0)
                        r = gw_loop_add_timer(loop, 0, on_reopen_timer, f, &f->reopen_timer);
        }
        if (r < 0)
                goto fail;
        *ret = f;
        return 0;
fail:
        gw_flash_free(f);
        return r;
}

/* A protocol instance serves one operation: after one ran, the next starts on a fresh
 * instance (its state machine ended in done or failed). */
static int protocol_fresh(struct gw_flash *f)
{
        int r;

        if (!f->used)
                return 0;
        if (f->proto_init)
                f->p->done(f->ppriv);
        f->proto_init = false;
        memset(f->ppriv, 0, f->p->priv_size ? f->p->priv_size : 1);
        r = f->p->init(f->ppriv, f->popts, &f->host);
        if (r < 0)
                return r;
        f->proto_init = true;
        f->used = false;
        return 0;
}

/* Runs an operation's first step and handles what it returned; f->running is set. */
static int run_op(struct gw_flash *f, int (*op)(struct gw_flash *f, const void *arg),
                  const void *arg)
{
        int r;

        r = protocol_fresh(f);
        if (r < 0)
                return r;
        f->used = true;
        r = op(f, arg);
        if (r < 0)
                return r;
        if (r == GW_PROTO_DONE) {
                /* Ended at once (identify reads what the link already knows): finished() runs
                 * from the loop, never from inside the caller's call. */
                f->deferred_result = 0;
                f->deferred = true;
                return gw_source_set_time(f->finish_timer, gw_now_ms());
        }
        return flush_out(f);
}

static int on_finish_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_flash *f = userdata;

        finish(f, f->deferred_result);
        return 0;
}

/* Starts an operation (install, upload, identify). */
static int start(struct gw_flash *f, int (*op)(struct gw_flash *f, const void *arg),
                 const void *arg, const struct gw_flash_callbacks *cb, void *userdata)
{
        int r;

        if (f->running)
                return -EBUSY;
        f->cb = cb;
        f->userdata = userdata;
        f->reason[0] = '\0';
        f->running = true;
        r = run_op(f, op, arg);
        if (r < 0)
                f->running = false;
        return r;
}

static int op_install(struct gw_flash *f, const void *arg)
{
        return f->p->install(f->ppriv, arg);
}

static int op_upload(struct gw_flash *f, const void *arg)
{
        return f->p->upload(f->ppriv, arg);
}

static int op_identify(struct gw_flash *f, const void *arg)
{
        return f->p->identify(f->ppriv, (struct gw_options *) arg);
}

/* The board is back (status 0) or was not found in time: run the identify that waited. */
static void identify_reopened(struct gw_flash *f, int status)
{
        struct gw_options *ret = f->identify_ret;
        int r;

        f->identify_ret = NULL;
        if (!f->running)
                return;
        if (status < 0) {
                flash_set_error(f, "the board did not come back within %u ms",
                                GW_FLASH_REIDENTIFY_MS);
                finish(f, status);
                return;
        }
        r = run_op(f, op_identify, ret);
        if (r < 0)
                finish(f, r);
}

int gw_flash_identify(struct gw_flash *f, struct gw_options *ret,
                      const struct gw_flash_callbacks *cb, void *userdata)
{
        int r;

        if (!f || !ret)
                return -EINVAL;
        if (!f->p->identify)
                return -EOPNOTSUPP;
        if (f->t->shape != GW_LINK_CONTROL || !f->used)
                return start(f, op_identify, ret, cb, userdata);
        /* After an operation a USB board may have reset (DfuSe leave, manifestation) and come
         * back as a new device: what the old link knows is stale. Find it again first. */
        if (f->running)
                return -EBUSY;
        f->cb = cb;
        f->userdata = userdata;
        f->reason[0] = '\0';
        f->running = true;
        f->identify_ret = ret;
        r = flash_reopen(f, GW_FLASH_REIDENTIFY_MS);
        if (r < 0) {
                f->identify_ret = NULL;
                f->running = false;
        }
        return r;
}

int gw_flash_install(struct gw_flash *f, const struct gw_reader *reader,
                     const struct gw_flash_callbacks *cb, void *userdata)
{
        if (!f || !reader)
                return -EINVAL;
        return start(f, op_install, reader, cb, userdata);
}

int gw_flash_upload(struct gw_flash *f, const struct gw_writer *writer,
                    const struct gw_flash_callbacks *cb, void *userdata)
{
        if (!f || !writer)
                return -EINVAL;
        if (f->p->version < 2 || !f->p->upload)
                return -EOPNOTSUPP;
        return start(f, op_upload, writer, cb, userdata);
}

const char *gw_flash_reason(const struct gw_flash *f)
{
        return f ? f->reason : "";
}

void gw_flash_cancel(struct gw_flash *f)
{
        int r = -ECANCELED;

        if (!f || !f->running)
                return;
        /* Nothing in flight at the protocol: it ended already, or waits for the board. */
        if (f->p->cancel && !f->deferred && !f->identify_ret) {
                r = f->p->cancel(f->ppriv);
                if (r >= 0) {
                        (void) flush_out(f);
                        return;
                }
        }
        flash_set_error(f, "cancelled");
        finish(f, r);
}

struct gw_flash *gw_flash_free(struct gw_flash *f)
{
        if (!f)
                return NULL;
        gw_source_free(f->io);
        gw_source_free(f->timer);
        gw_source_free(f->deliver);
        gw_source_free(f->reopen_timer);
        gw_source_free(f->finish_timer);
        if (f->proto_init)
                f->p->done(f->ppriv);
        if (f->link_open)
                link_close(f);
        while (f->watches)
                flash_unwatch_fd(f, f->watches);
        gw_options_free(f->topts);
        gw_options_free(f->reopen_opts);
        gw_options_free(f->popts);
        free(f->tpriv);
        free(f->ppriv);
        free(f->out);
        free(f->name);
        free(f);
        return NULL;
}

static ssize_t file_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        int fd = (int) (intptr_t) ctx;
        ssize_t r = pread(fd, buf, n, (off_t) off);

        return r < 0 ? -errno : r;
}

int gw_file_reader_open(const char *path, const char *name, struct gw_reader *ret)
{
        struct stat st;
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                close(fd);
                return -EISDIR;
        }
        if (!name) {
                name = strrchr(path, '/');
                name = name ? name + 1 : path;
        }
        *ret = (struct gw_reader){
            .size = (uint64_t) st.st_size,
            .name = strdup(name),
            .ctx = (void *) (intptr_t) fd,
            .pread = file_pread,
            .path = strdup(path),
        };
        if (!ret->name || !ret->path) {
                free((char *) ret->name);
                free((char *) ret->path);
                close(fd);
                return -ENOMEM;
        }
        return 0;
}

void gw_file_reader_close(struct gw_reader *r)
{
        if (!r || !r->pread)
                return;
        close((int) (intptr_t) r->ctx);
        free((char *) r->name);
        free((char *) r->path);
        *r = (struct gw_reader){0};
}

static ssize_t file_pwrite(void *ctx, const void *buf, size_t n, uint64_t off)
{
        int fd = (int) (intptr_t) ctx;
        size_t done = 0;

        while (done < n) {
                ssize_t r =
                    pwrite(fd, (const uint8_t *) buf + done, n - done, (off_t) (off + done));

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return r < 0 ? -errno : -EIO;
                done += (size_t) r;
        }
        return (ssize_t) n;
}

int gw_file_writer_open(const char *path, uint64_t max, struct gw_writer *ret)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        if (fd < 0)
                return -errno;
        *ret = (struct gw_writer){
            .max = max,
            .ctx = (void *) (intptr_t) fd,
            .pwrite = file_pwrite,
        };
        return 0;
}

int gw_file_writer_close(struct gw_writer *w)
{
        int fd, r = 0;

        if (!w || !w->pwrite)
                return 0;
        fd = (int) (intptr_t) w->ctx;
        if (fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        *w = (struct gw_writer){0};
        return r;
}
