/* Line-rate pacing for the simulators (see pace.h): absolute deadlines on CLOCK_MONOTONIC for
 * what a simulator writes, and a queue of timestamped bytes for what it reads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"
#include "pace.h"

#define NSEC_PER_SEC 1000000000ULL
#define WRITE_CHUNK  16
/* A line counts as idle only once it has been quiet this long: waking up from a sleep and the
 * write itself take a little time, and restarting the anchor for that would add it to every
 * chunk (the drift that relative sleeps have). */
#define IDLE_SLACK_NS 2000000ULL

/* One direction of the line: an anchor time and the bits sent since then. The anchor restarts
 * when the line has been idle, so a pause is not paid back with a burst. */
struct line {
        uint64_t t0_ns;
        uint64_t bits;
};

struct gw_pace {
        uint32_t baud;
        unsigned bits_per_byte;
        struct line tx, rx;

        /* Received bytes waiting for their line time: a ring of bytes and their due times. */
        uint8_t *buf;
        uint64_t *due;
        size_t cap, head, len;
};

static uint64_t line_end(const struct gw_pace *p, const struct line *l)
{
        /* bits * 1e9 overflows only after ~18e9 bits: centuries of line time per anchor. */
        return l->t0_ns + l->bits * NSEC_PER_SEC / p->baud;
}

/* Accounts nbytes more on the line starting no earlier than now_ns; returns when the last bit
 * of them has gone. */
static uint64_t line_advance(const struct gw_pace *p, struct line *l, uint64_t now_ns,
                             size_t nbytes)
{
        if (line_end(p, l) + IDLE_SLACK_NS < now_ns) {
                l->t0_ns = now_ns;
                l->bits = 0;
        }
        l->bits += (uint64_t) nbytes * p->bits_per_byte;
        return line_end(p, l);
}

int gw_pace_new(uint32_t baud, unsigned bits_per_byte, size_t rx_capacity, struct gw_pace **ret)
{
        struct gw_pace *p;

        if (bits_per_byte < 7 || bits_per_byte > 13 || rx_capacity == 0 ||
            rx_capacity > 64 * 1024 * 1024)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->buf = malloc(rx_capacity);
        p->due = malloc(rx_capacity * sizeof(*p->due));
        if (!p->buf || !p->due) {
                gw_pace_free(p);
                return -ENOMEM;
        }
        p->baud = baud;
        p->bits_per_byte = bits_per_byte;
        p->cap = rx_capacity;
        *ret = p;
        return 0;
}

struct gw_pace *gw_pace_free(struct gw_pace *p)
{
        if (!p)
                return NULL;
        free(p->buf);
        free(p->due);
        free(p);
        return NULL;
}

static void sleep_until(uint64_t at_ns)
{
        struct timespec ts = {
            .tv_sec = (time_t) (at_ns / NSEC_PER_SEC),
            .tv_nsec = (long) (at_ns % NSEC_PER_SEC),
        };

        /* EINTR: a signal arrived; sleep the rest, the caller sees the signal afterwards. */
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
}

ssize_t gw_pace_write(struct gw_pace *p, int fd, const void *buf, size_t n)
{
        const uint8_t *b = buf;
        size_t off = 0, taken = 0;

        /* One call is one burst, back to back like a UART's FIFO: the anchor may restart only
         * here, never between its chunks, so a late wake-up is made up by the next chunk. */
        if (p->baud > 0)
                line_advance(p, &p->tx, gw_sim_now_ns(), 0);
        while (off < n) {
                size_t k = n - off < WRITE_CHUNK ? n - off : WRITE_CHUNK;
                ssize_t w;

                if (p->baud > 0) {
                        p->tx.bits += (uint64_t) k * p->bits_per_byte;
                        sleep_until(line_end(p, &p->tx));
                }
                w = write(fd, b + off, k);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                return -errno;
                        w = 0; /* the other side does not read: the bits are lost */
                }
                taken += (size_t) w;
                off += k;
        }
        return (ssize_t) taken;
}

size_t gw_pace_push(struct gw_pace *p, uint64_t now_ns, const void *buf, size_t n)
{
        const uint8_t *b = buf;
        size_t i;

        for (i = 0; i < n && p->len < p->cap; i++) {
                size_t at = (p->head + p->len) % p->cap;

                p->buf[at] = b[i];
                p->due[at] = p->baud > 0 ? line_advance(p, &p->rx, now_ns, 1) : now_ns;
                p->len++;
        }
        return i;
}

ssize_t gw_pace_fill(struct gw_pace *p, int fd)
{
        uint8_t tmp[4096];
        size_t room = gw_pace_room(p);
        ssize_t r;

        if (room == 0)
                return 0;
        if (room > sizeof(tmp))
                room = sizeof(tmp);
        r = read(fd, tmp, room);
        if (r < 0)
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        if (r == 0)
                return -EIO; /* end of file: the other side is gone */
        return (ssize_t) gw_pace_push(p, gw_sim_now_ns(), tmp, (size_t) r);
}

size_t gw_pace_take(struct gw_pace *p, uint64_t now_ns, void *buf, size_t n)
{
        uint8_t *b = buf;
        size_t i = 0;

        while (i < n && p->len > 0 && p->due[p->head] <= now_ns) {
                b[i++] = p->buf[p->head];
                p->head = (p->head + 1) % p->cap;
                p->len--;
        }
        return i;
}

uint64_t gw_pace_next_due(const struct gw_pace *p)
{
        return p->len > 0 ? p->due[p->head] : UINT64_MAX;
}

size_t gw_pace_queued(const struct gw_pace *p)
{
        return p->len;
}

size_t gw_pace_room(const struct gw_pace *p)
{
        return p->cap - p->len;
}

void gw_pace_tx_idle(struct gw_pace *p)
{
        p->tx = (struct line){0};
}

void gw_pace_rx_idle(struct gw_pace *p)
{
        p->rx = (struct line){0};
}

void gw_pace_discard(struct gw_pace *p)
{
        p->head = 0;
        p->len = 0;
}
