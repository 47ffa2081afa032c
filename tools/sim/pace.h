/* Pacing a simulated serial line on a pseudo-terminal. A pty has no baud rate: bytes cross it
 * at memory speed. A simulator models the line with this: what it writes leaves at the line
 * rate (absolute deadlines on gw_sim_now_ns()'s clock, so there is no drift), and what it reads
 * becomes available only once the byte's line time has passed. Shared by every simulator in
 * tools/sim. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct gw_pace;

/* A line at baud bits/s with bits_per_byte on the wire per byte (10 for 8N1, 11 for 8E1).
 * baud == 0 means no pacing at all. rx_capacity bounds the bytes held while they wait for
 * their line time (input from the outside is never held without a bound). 0 or -EINVAL,
 * -ENOMEM. */
int gw_pace_new(uint32_t baud, unsigned bits_per_byte, size_t rx_capacity, struct gw_pace **ret);
struct gw_pace *gw_pace_free(struct gw_pace *p);

/* Writes n bytes to fd as the line would deliver them: back to back, each chunk of at most 16
 * bytes written once its last bit has left, measured from an anchor that restarts only when the
 * line was idle before the call (so a late wake-up inside the burst does not accumulate).
 * Blocks (clock_nanosleep) for the line time of n bytes; callers keep n small when they must
 * stay responsive. fd may be non-blocking: bytes the fd does not take (nobody reads the other
 * side) are dropped like bits on a line nobody listens to, and still take their line time.
 * Returns the bytes the fd took, or -errno for a hard error (-EIO when the other side is gone). */
ssize_t gw_pace_write(struct gw_pace *p, int fd, const void *buf, size_t n);

/* Queues n bytes that arrived at now_ns. Each becomes available when its last bit would have
 * arrived on the line: a byte starts when it arrived or when the previous one ended, whichever
 * is later. Returns the bytes queued (fewer than n when the queue is full). */
size_t gw_pace_push(struct gw_pace *p, uint64_t now_ns, const void *buf, size_t n);
/* Reads what the non-blocking fd holds now into the queue (at most the room left). Returns the
 * bytes queued, 0 when the queue is full, -EAGAIN when fd has nothing, -EIO when the other side
 * hung up, or another -errno. */
ssize_t gw_pace_fill(struct gw_pace *p, int fd);
/* Moves up to n bytes whose line time has passed at now_ns into buf; returns how many. */
size_t gw_pace_take(struct gw_pace *p, uint64_t now_ns, void *buf, size_t n);
/* When the next queued byte becomes available; UINT64_MAX when nothing is queued. */
uint64_t gw_pace_next_due(const struct gw_pace *p);
/* Bytes queued, and room left. */
size_t gw_pace_queued(const struct gw_pace *p);
size_t gw_pace_room(const struct gw_pace *p);
/* Ends the burst in one direction: the next byte written (tx) or received (rx) starts its line
 * time when it is written or arrives, never back to back with what went before. For a device
 * that only answers requests, whose line is idle between a request and its answer however
 * short the pause (a burst otherwise runs on for IDLE_SLACK_NS, which gives such short
 * exchanges line time for free). */
void gw_pace_tx_idle(struct gw_pace *p);
void gw_pace_rx_idle(struct gw_pace *p);
/* Drops everything queued (a receiver flushing its input). */
void gw_pace_discard(struct gw_pace *p);
