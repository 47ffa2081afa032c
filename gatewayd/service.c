/* The service manager's side of the daemon: readiness, watchdog keep-alives, status, stopping,
 * all through the libsystemd adapter (core/systemd.c) and timers on the one loop. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/log.h"
#include "gw/systemd.h"
#include "service.h"

/* The status is looked at again this often (what nobody reports: a broker that went away). */
#define TICK_MS 5000
/* A status line is short; longer ones are cut. */
#define STATUS_MAX 256

struct gw_service {
        struct gw_loop *loop;
        struct gw_source *ready_timer;
        struct gw_source *watchdog_timer;
        struct gw_source *tick_timer;
        gw_service_tick_cb tick;
        void *userdata;
        uint64_t watchdog_usec;
        uint64_t next_watchdog_us;
        bool ready;
        bool failed; /* a notification failed once: said so, not again */
        char status[STATUS_MAX];
        char sent[STATUS_MAX];
};

static void notify(struct gw_service *s, const char *what)
{
        int r = gw_sd_notify(what);

        if (r == -EOPNOTSUPP || r >= 0)
                return;
        if (!s->failed)
                gw_log_warning_errno(r, "Cannot notify the service manager: %m, ignoring");
        s->failed = true;
}

/* prefix ("READY=1\n", "STOPPING=1\n" or "") and the status line, which is then the one the
 * service manager has. */
static void send_with_status(struct gw_service *s, const char *prefix)
{
        char msg[STATUS_MAX + 32];

        snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix, s->status);
        notify(s, msg);
        memcpy(s->sent, s->status, sizeof(s->sent));
}

static int on_ready(struct gw_source *src, uint64_t now_ms, void *userdata)
{
        struct gw_service *s = userdata;

        s->ready_timer = gw_source_free(s->ready_timer);
        s->ready = true;
        send_with_status(s, "READY=1\n");
        gw_log_debug("Service manager told: ready (%s)", s->status);
        return 0;
}

static int on_watchdog(struct gw_source *src, uint64_t now_ms, void *userdata)
{
        struct gw_service *s = userdata;
        uint64_t half = s->watchdog_usec / 2, now = gw_now_us();

        notify(s, "WATCHDOG=1");
        /* Keep the beat: the next one is due half a period after this one was, not after it
         * ran; a loop that fell behind starts a fresh beat. */
        s->next_watchdog_us += half;
        if (s->next_watchdog_us <= now)
                s->next_watchdog_us = now + half;
        gw_source_set_time_us(src, s->next_watchdog_us);
        return 0;
}

static int on_tick(struct gw_source *src, uint64_t now_ms, void *userdata)
{
        struct gw_service *s = userdata;

        gw_source_set_time(src, now_ms + TICK_MS);
        if (s->tick)
                s->tick(s->userdata);
        return 0;
}

int gw_service_new(struct gw_loop *loop, gw_service_tick_cb tick, void *userdata,
                   struct gw_service **ret)
{
        struct gw_service *s = calloc(1, sizeof(*s));
        uint64_t usec = 0;
        int r;

        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->tick = tick;
        s->userdata = userdata;
        snprintf(s->status, sizeof(s->status), "Starting");
        r = gw_sd_watchdog_usec(&usec);
        if (r > 0 && usec > 0) {
                s->watchdog_usec = usec;
                gw_log_debug("Watchdog: a keep-alive every %llu ms",
                             (unsigned long long) (usec / 2000));
        } else if (r < 0 && r != -EOPNOTSUPP) {
                gw_log_warning_errno(r, "Malformed WATCHDOG_USEC or WATCHDOG_PID: %m, ignoring");
        }
        /* Due now: the first iteration of the loop sends READY=1. */
        r = gw_loop_add_timer(loop, gw_now_ms(), on_ready, s, &s->ready_timer);
        if (r < 0)
                goto fail;
        r = gw_loop_add_timer(loop, gw_now_ms() + TICK_MS, on_tick, s, &s->tick_timer);
        if (r < 0)
                goto fail;
        if (s->watchdog_usec) {
                s->next_watchdog_us = gw_now_us() + s->watchdog_usec / 2;
                r = gw_loop_add_timer(loop, 0, on_watchdog, s, &s->watchdog_timer);
                if (r >= 0)
                        r = gw_source_set_time_us(s->watchdog_timer, s->next_watchdog_us);
                if (r < 0)
                        goto fail;
        }
        *ret = s;
        return 0;
fail:
        gw_service_free(s);
        return r;
}

struct gw_service *gw_service_free(struct gw_service *s)
{
        if (!s)
                return NULL;
        gw_source_free(s->ready_timer);
        gw_source_free(s->watchdog_timer);
        gw_source_free(s->tick_timer);
        free(s);
        return NULL;
}

void gw_service_set_status(struct gw_service *s, const char *status)
{
        if (!s)
                return;
        snprintf(s->status, sizeof(s->status), "%s", status);
        if (s->ready && strcmp(s->status, s->sent) != 0)
                send_with_status(s, "");
}

void gw_service_stopping(struct gw_service *s, const char *status)
{
        if (!s)
                return;
        snprintf(s->status, sizeof(s->status), "%s", status);
        send_with_status(s, "STOPPING=1\n");
}

uint64_t gw_service_watchdog_usec(const struct gw_service *s)
{
        return s ? s->watchdog_usec : 0;
}
