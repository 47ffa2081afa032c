/* The wait at the bottom of every pty simulator's main loop: its line, its termination signals
 * and its control channel polled together until the simulator's next deadline. Shared by the
 * ymodem, stm32, smp and can simulators. */
#pragma once

#include <stdint.h>

#include "control.h"

/* What a simulator waits on besides its line; fixed for its whole run. */
struct gw_sim_wait {
        int sigfd;                  /* from gw_sim_signalfd() */
        struct gw_sim_control *ctl; /* may be closed */
        void (*on_line)(char *line, void *userdata);
        void *userdata;
};

/* CLOCK_MONOTONIC in nanoseconds: the clock of every simulator deadline (and of pace.h). */
uint64_t gw_sim_now_ns(void);

/* Waits until at_ns (UINT64_MAX: no deadline) or until something arrives: on master for events
 * (master -1: not polled, while nobody has the port open), on the signal descriptor or on the
 * control channel. Control lines are handed to on_line here, and a regular control file is
 * re-read when due (gw_sim_control_reread()), which bounds the wait. A signal taken is stored in
 * *signo (0: none; one that polls ready but cannot be read counts as SIGTERM), and then nothing
 * else is handled. Returns master's revents (0 when it was not polled, or the wait was
 * interrupted), or -errno. */
int gw_sim_wait(const struct gw_sim_wait *w, int master, short events, uint64_t at_ns,
                uint32_t *signo);
