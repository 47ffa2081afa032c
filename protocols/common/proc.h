/* Ending a helper process a protocol started (an external flasher, a seed-to-key program):
 * shared by the protocols (protocols/common). */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

/* How long a killed process is waited for before it is left behind. */
#define GW_PROC_REAP_MS 200u

/* Sends SIGKILL to pid (to its process group when group) and reaps it, waiting at most wait_ms
 * for the kernel to tear it down: a process stuck in the kernel (a hung USB driver) may not die
 * at once, and the caller runs on the one loop. 0 when it is reaped or was gone, -ETIMEDOUT when
 * it was left (a zombie until it dies), another -errno from waitpid(). */
int gw_proc_kill_reap(pid_t pid, bool group, unsigned wait_ms);
