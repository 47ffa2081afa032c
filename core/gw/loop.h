/* The one event loop: fds, one-shot timers on the monotonic clock, and signals (signalfd).
 * Everything that waits in gatewayd and gwflash waits here. Sources may be freed from inside
 * any callback, including their own. A callback returning < 0 stops the loop with that
 * value. */
#pragma once

#include <stdint.h>

struct gw_loop;
struct gw_source;

typedef int (*gw_io_cb)(struct gw_source *s, int fd, short revents, void *userdata);
typedef int (*gw_timer_cb)(struct gw_source *s, uint64_t now_ms, void *userdata);
typedef int (*gw_signal_cb)(struct gw_source *s, int signo, void *userdata);

/* Monotonic milliseconds and microseconds (the same clock). */
uint64_t gw_now_ms(void);
uint64_t gw_now_us(void);

int gw_loop_new(struct gw_loop **ret);
struct gw_loop *gw_loop_free(struct gw_loop *l);

/* Watches fd for events (POLLIN | POLLOUT ...). The fd stays the caller's. */
int gw_loop_add_io(struct gw_loop *l, int fd, short events, gw_io_cb cb, void *userdata,
                   struct gw_source **ret);
int gw_source_set_io_events(struct gw_source *s, short events);
/* A one-shot timer firing once gw_now_ms() >= at_ms; at_ms == 0 creates it disarmed. */
int gw_loop_add_timer(struct gw_loop *l, uint64_t at_ms, gw_timer_cb cb, void *userdata,
                      struct gw_source **ret);
/* Re-arms (or with 0 disarms) a timer source. */
int gw_source_set_time(struct gw_source *s, uint64_t at_ms);
/* The same to the microsecond: fires once gw_now_us() >= at_us. */
int gw_source_set_time_us(struct gw_source *s, uint64_t at_us);
/* Blocks signo and delivers it through the loop. */
int gw_loop_add_signal(struct gw_loop *l, int signo, gw_signal_cb cb, void *userdata,
                       struct gw_source **ret);
/* Removes the source from its loop. Accepts NULL; returns NULL. */
struct gw_source *gw_source_free(struct gw_source *s);

/* Waits at most timeout_ms (-1: forever) and dispatches what is ready. Returns 0, or the
 * negative value a callback returned. */
int gw_loop_iterate(struct gw_loop *l, int timeout_ms);
/* Iterates until gw_loop_exit() or a callback fails; returns the exit code or the error. */
int gw_loop_run(struct gw_loop *l);
void gw_loop_exit(struct gw_loop *l, int code);
