/* The slcan backend of the can transport: a Lawicel-style adapter on a serial port (a CANable, a
 * CANUSB, can-sim's pty) driven through termios. It configures the adapter without waiting (C,
 * S, Y, O), matches each reply to the command it answers, and brings the adapter back when it
 * drops its open state or stops answering. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "can-internal.h"
#include "serial.h"
#include "slcan.h"

/* Frames written and not answered yet: bounds what the adapter buffers for us. */
#define SLCAN_WINDOW 32
/* The window, and the configuration commands of one recovery. */
#define PEND_MAX (SLCAN_WINDOW + 8)
/* Bytes waiting to be written: the window's longest lines and the commands. */
#define OUT_MAX 8192
/* Reads per readable event: a chattering adapter cannot hold the loop. */
#define READ_ROUNDS 16
#define WATCH_IN    1
#define WATCH_OUT   2
#define NSEC_PER_MS 1000000ULL

struct can_slcan_timing can_slcan_timing = {
    .flush_ms = 30,
    .reply_ms = 500,
    .recovery_ms = 2000,
};

enum slcan_state {
        SLCAN_FLUSHING,    /* "\r\r\r" sent to end whatever line the adapter holds; quiet */
        SLCAN_CONFIGURING, /* C, S, (Y,) O sent; waiting for their answers */
        SLCAN_OPEN,        /* frames flow */
        SLCAN_FAILED,      /* given up: the bus is down */
};

enum slcan_cmd {
        CMD_VERSION, /* answered with a line (V1013), a CR or a BEL: proves the adapter alive */
        CMD_CLOSE,
        CMD_BITRATE,
        CMD_DATA_BITRATE,
        CMD_OPEN,
        CMD_FRAME,
};

struct pending {
        enum slcan_cmd cmd;
        uint64_t sent_ns;
        struct gw_can_frame f;
};

struct slcan {
        int fd;
        enum slcan_state state;
        struct gw_slcan_reader reader;
        int s_code, y_code; /* y_code -1: no data bitrate command */

        char out[OUT_MAX];
        size_t out_len;
        bool pollout;

        /* Commands written and not answered yet, oldest first: every reply answers the oldest. */
        struct pending pend[PEND_MAX];
        size_t pend_head, pend_len;

        /* Frames the adapter refused (BEL) while it had lost its open state: sent again once it
         * is open, unless a later frame was taken meanwhile (they would go out of order). */
        struct gw_can_frame resend[SLCAN_WINDOW];
        size_t n_resend;
        bool resend_unsafe;

        uint64_t flush_until_ns;
        uint64_t recover_by_ns; /* 0: not recovering */

        /* Adapters that never answer commands (the stock CANable firmware answers only V): once
         * V was answered and C, S, O were not, commands are sent without waiting for answers. */
        bool quiet;
        bool alive;     /* V was answered since configuring started */
        bool got_reply; /* a CR or BEL answered a command since configuring started */
        bool heard;     /* anything at all came from the port since it was opened */
        bool was_open;  /* the adapter was open once */
        bool starved;   /* xmit() refused a frame: the bus is kicked at the next answer */

        uint64_t malformed, overlong, other, refused, recoveries, lost;
};

static const char *state_to_string(enum slcan_state s)
{
        switch (s) {
        case SLCAN_FLUSHING:
                return "flushing";
        case SLCAN_CONFIGURING:
                return "configuring";
        case SLCAN_OPEN:
                return "open";
        case SLCAN_FAILED:
                return "failed";
        }
        return "?";
}

static void set_state(struct can_bus *bus, enum slcan_state to)
{
        struct slcan *s = bus->be;

        if (s->state == to)
                return;
        can_bus_debug(bus, "slcan %s -> %s", state_to_string(s->state), state_to_string(to));
        s->state = to;
}

int can_slcan_bitrate_code(uint32_t bitrate)
{
        static const uint32_t rates[] = {10000,  20000,  50000,  100000, 125000,
                                         250000, 500000, 800000, 1000000};

        for (size_t i = 0; i < sizeof(rates) / sizeof(rates[0]); i++)
                if (rates[i] == bitrate)
                        return (int) i;
        return -EINVAL;
}

int can_slcan_data_bitrate_code(uint32_t bitrate)
{
        switch (bitrate) {
        case 500000:
                return 0;
        case 1000000:
                return 1;
        case 2000000:
                return 2;
        case 4000000:
                return 4;
        case 5000000:
                return 5;
        default:
                return -EINVAL;
        }
}

static void slcan_fail(struct can_bus *bus, int err, const char *why)
{
        set_state(bus, SLCAN_FAILED);
        can_bus_fail(bus, err, why);
}

static void update_deadline(struct can_bus *bus)
{
        struct slcan *s = bus->be;
        uint64_t at = 0;

        if (s->state == SLCAN_FAILED) {
                can_bus_set_deadline(bus, 0);
                return;
        }
        if (s->state == SLCAN_FLUSHING)
                at = s->flush_until_ns;
        if (s->state != SLCAN_OPEN && s->recover_by_ns && (!at || s->recover_by_ns < at))
                at = s->recover_by_ns;
        if (s->pend_len > 0) {
                uint64_t stuck = s->pend[s->pend_head].sent_ns +
                                 (uint64_t) can_slcan_timing.reply_ms * NSEC_PER_MS;

                if (!at || stuck < at)
                        at = stuck;
        }
        can_bus_set_deadline(bus, at);
}

static void on_writable(struct can_bus *bus, int fd, short revents);

/* Writes what it can of the output buffer. 0, or -EPIPE when the adapter is gone (the bus has
 * failed then: the caller returns at once). */
static int out_flush(struct can_bus *bus)
{
        struct slcan *s = bus->be;

        while (s->out_len > 0) {
                ssize_t n = write(s->fd, s->out, s->out_len);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        slcan_fail(bus, -EPIPE, "writing to the adapter failed");
                        return -EPIPE;
                }
                memmove(s->out, s->out + n, s->out_len - (size_t) n);
                s->out_len -= (size_t) n;
        }
        if (s->out_len > 0 && !s->pollout) {
                if (can_bus_watch(bus, WATCH_OUT, s->fd, POLLOUT, on_writable) < 0) {
                        slcan_fail(bus, -ENETDOWN, "cannot watch the adapter's port");
                        return -EPIPE;
                }
                s->pollout = true;
        } else if (s->out_len == 0 && s->pollout) {
                can_bus_unwatch(bus, WATCH_OUT);
                s->pollout = false;
        }
        return 0;
}

static int out_append(struct slcan *s, const char *buf, size_t n)
{
        if (n > sizeof(s->out) - s->out_len)
                return -ENOBUFS;
        memcpy(s->out + s->out_len, buf, n);
        s->out_len += n;
        return 0;
}

static void pend_push(struct slcan *s, enum slcan_cmd cmd, const struct gw_can_frame *f)
{
        struct pending *p = &s->pend[(s->pend_head + s->pend_len) % PEND_MAX];

        *p = (struct pending){.cmd = cmd, .sent_ns = can_now_ns()};
        if (f)
                p->f = *f;
        s->pend_len++;
}

/* A configuration command and its place among the answers awaited. */
static void send_cmd(struct slcan *s, enum slcan_cmd cmd, const char *text)
{
        /* The buffer always has room for these: frames leave room for them (see xmit). */
        if (s->pend_len < PEND_MAX && out_append(s, text, strlen(text)) >= 0)
                pend_push(s, cmd, NULL);
}

static void opened(struct can_bus *bus);

static void enter_configuring(struct can_bus *bus)
{
        struct slcan *s = bus->be;
        char cmd[16];

        set_state(bus, SLCAN_CONFIGURING);
        s->alive = s->got_reply = false;
        if (!s->quiet)
                send_cmd(s, CMD_VERSION, "V\r");
        send_cmd(s, CMD_CLOSE, "C\r");
        snprintf(cmd, sizeof(cmd), "S%d\r", s->s_code);
        send_cmd(s, CMD_BITRATE, cmd);
        if (s->y_code >= 0) {
                snprintf(cmd, sizeof(cmd), "Y%d\r", s->y_code);
                send_cmd(s, CMD_DATA_BITRATE, cmd);
        }
        send_cmd(s, CMD_OPEN, "O\r");
        if (s->quiet) {
                /* Nothing will answer: the commands are on their way, frames follow them. */
                s->pend_len = 0;
                opened(bus);
                return;
        }
        if (out_flush(bus) < 0)
                return;
        update_deadline(bus);
}

/* Ends whatever line the adapter holds and lets its answers pass before configuring it. Frames
 * written and not answered are lost: nobody can tell whether they went out. */
static void enter_flushing(struct can_bus *bus)
{
        struct slcan *s = bus->be;

        for (size_t i = 0; i < s->pend_len; i++)
                if (s->pend[(s->pend_head + i) % PEND_MAX].cmd == CMD_FRAME)
                        s->lost++;
        s->pend_len = 0;
        s->out_len = 0;
        out_append(s, "\r\r\r", 3);
        s->flush_until_ns = can_now_ns() + (uint64_t) can_slcan_timing.flush_ms * NSEC_PER_MS;
        set_state(bus, SLCAN_FLUSHING);
        if (out_flush(bus) < 0)
                return;
        update_deadline(bus);
}

static void begin_recovery(struct can_bus *bus, const char *why, bool flush)
{
        struct slcan *s = bus->be;

        s->recoveries++;
        can_bus_debug(bus, "slcan: %s; configuring the adapter again", why);
        if (!s->recover_by_ns)
                s->recover_by_ns =
                    can_now_ns() + (uint64_t) can_slcan_timing.recovery_ms * NSEC_PER_MS;
        if (flush)
                enter_flushing(bus);
        else
                enter_configuring(bus);
}

/* The adapter is open (again): the frames it refused meanwhile go first. */
static void opened(struct can_bus *bus)
{
        struct slcan *s = bus->be;
        char line[GW_SLCAN_LINE_MAX + 2];

        set_state(bus, SLCAN_OPEN);
        s->was_open = true;
        if (s->recover_by_ns)
                can_bus_debug(bus, "slcan: adapter open again");
        s->recover_by_ns = 0;
        if (s->n_resend > 0 && s->resend_unsafe) {
                can_bus_debug(bus,
                              "slcan: %zu refused frames dropped (later ones were taken: they "
                              "would go out of order)",
                              s->n_resend);
                s->lost += s->n_resend;
        } else {
                for (size_t i = 0; i < s->n_resend; i++) {
                        int n = gw_slcan_format(&s->resend[i], line, sizeof(line));

                        if (n < 0 || s->pend_len >= PEND_MAX ||
                            out_append(s, line, (size_t) n) < 0) {
                                s->lost++;
                                continue;
                        }
                        pend_push(s, CMD_FRAME, &s->resend[i]);
                }
                if (s->n_resend > 0)
                        can_bus_debug(bus, "slcan: %zu refused frames sent again", s->n_resend);
        }
        s->n_resend = 0;
        s->resend_unsafe = false;
        if (out_flush(bus) < 0)
                return;
        /* Frames were refused until now: the first open lets them in; after a recovery, those
         * waiting in the bus's queue go. */
        can_bus_up(bus);
        if (s->starved && !bus->error) {
                s->starved = false;
                can_bus_kick(bus);
        }
}

static void on_reply(struct can_bus *bus, bool ok)
{
        struct slcan *s = bus->be;
        struct pending p;

        if (s->state == SLCAN_FLUSHING || s->state == SLCAN_FAILED)
                return;
        if (s->quiet) {
                /* An adapter that does not answer commands sends BEL on errors at most. */
                if (!ok && s->state == SLCAN_OPEN) {
                        s->refused++;
                        begin_recovery(bus, "BEL from an adapter that answers nothing else", false);
                }
                return;
        }
        if (s->pend_len == 0) {
                s->other++;
                return;
        }
        p = s->pend[s->pend_head];
        s->pend_head = (s->pend_head + 1) % PEND_MAX;
        s->pend_len--;
        s->got_reply = true;
        switch (p.cmd) {
        case CMD_VERSION:
                s->alive = true;
                break;
        case CMD_CLOSE:
                break; /* refused when it was closed already */
        case CMD_BITRATE:
                if (!ok) {
                        slcan_fail(bus, -ENETDOWN, "the adapter refused the bitrate (S)");
                        return;
                }
                break;
        case CMD_DATA_BITRATE:
                if (!ok) {
                        slcan_fail(bus, -ENETDOWN,
                                   "the adapter refused the data bitrate (Y): not a CAN FD "
                                   "adapter?");
                        return;
                }
                break;
        case CMD_OPEN:
                if (!ok) {
                        slcan_fail(bus, -ENETDOWN, "the adapter refused to open the channel (O)");
                        return;
                }
                opened(bus);
                if (bus->error)
                        return;
                break;
        case CMD_FRAME:
                if (ok) {
                        if (s->n_resend > 0)
                                s->resend_unsafe = true;
                        if (s->state == SLCAN_OPEN && !s->starved)
                                /* The usual case, once a frame: the reply watchdog may fire
                                 * early (it looks again then), and the bus-load schedule, not
                                 * the answers, says when the next frames go. */
                                return;
                        break;
                }
                s->refused++;
                if (s->n_resend < SLCAN_WINDOW)
                        s->resend[s->n_resend++] = p.f;
                else
                        s->lost++;
                if (s->state == SLCAN_OPEN)
                        begin_recovery(bus,
                                       "a frame was refused (BEL): the adapter lost its open "
                                       "state?",
                                       false);
                break;
        }
        if (bus->error)
                return;
        update_deadline(bus);
        if (s->starved) {
                s->starved = false;
                can_bus_kick(bus);
        }
}

static void on_event(void *userdata, enum gw_slcan_event e, const struct gw_can_frame *f,
                     const char *line, size_t len)
{
        struct can_bus *bus = userdata;
        struct slcan *s = bus->be;

        if (bus->error)
                return;
        switch (e) {
        case GW_SLCAN_OK:
                on_reply(bus, true);
                break;
        case GW_SLCAN_ERROR:
                on_reply(bus, false);
                break;
        case GW_SLCAN_FRAME:
                can_bus_deliver(bus, f);
                break;
        case GW_SLCAN_MALFORMED:
                if (s->malformed++ < 8)
                        can_bus_debug(bus, "slcan: malformed line of %zu bytes dropped", len);
                break;
        case GW_SLCAN_OVERLONG:
                if (s->overlong++ < 8)
                        can_bus_debug(bus, "slcan: overlong line dropped");
                break;
        case GW_SLCAN_OTHER:
                /* The answer to V, a line of its own. */
                if (s->pend_len > 0 && s->pend[s->pend_head].cmd == CMD_VERSION &&
                    s->state == SLCAN_CONFIGURING) {
                        s->pend_head = (s->pend_head + 1) % PEND_MAX;
                        s->pend_len--;
                        s->alive = true;
                        update_deadline(bus);
                        break;
                }
                s->other++;
                break;
        }
}

static void on_readable(struct can_bus *bus, int fd, short revents)
{
        struct slcan *s = bus->be;
        uint8_t buf[512];

        for (int i = 0; i < READ_ROUNDS && !bus->error; i++) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n > 0) {
                        s->heard = true;
                        gw_slcan_feed(&s->reader, buf, (size_t) n, on_event, bus);
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                /* End of file or EIO: a pty whose other side closed, an unplugged adapter. */
                slcan_fail(bus, -EPIPE, n == 0 ? "the adapter hung up" : "the adapter is gone");
                return;
        }
}

static void on_writable(struct can_bus *bus, int fd, short revents)
{
        struct slcan *s = bus->be;

        if (out_flush(bus) < 0)
                return;
        if (s->out_len == 0)
                can_bus_kick(bus);
}

static void slcan_timeout(struct can_bus *bus, uint64_t now)
{
        struct slcan *s = bus->be;

        if (s->state == SLCAN_FAILED)
                return;
        if (s->state != SLCAN_OPEN && s->recover_by_ns && now >= s->recover_by_ns) {
                char why[128];

                snprintf(why, sizeof(why), "the adapter did not open within %u ms",
                         can_slcan_timing.recovery_ms);
                slcan_fail(bus, -ENETDOWN, why);
                return;
        }
        if (s->state == SLCAN_FLUSHING) {
                if (now >= s->flush_until_ns)
                        enter_configuring(bus);
                else
                        update_deadline(bus);
                return;
        }
        if (s->pend_len > 0 && now >= s->pend[s->pend_head].sent_ns +
                                          (uint64_t) can_slcan_timing.reply_ms * NSEC_PER_MS) {
                if (s->state == SLCAN_CONFIGURING && s->alive && !s->got_reply) {
                        can_bus_debug(bus, "slcan: the adapter answers V but no other command "
                                           "(stock CANable firmware?): sending without waiting "
                                           "for answers");
                        s->quiet = true;
                        s->pend_len = 0;
                        opened(bus);
                        can_bus_kick(bus);
                        return;
                }
                if (!s->was_open && !s->heard) {
                        /* Never a byte back: not an slcan adapter (or not powered, or a port
                         * nothing serves). Trying for longer would only delay saying so. */
                        char why[160];

                        snprintf(why, sizeof(why),
                                 "does not answer (nothing came back for V, C, S%d, O within "
                                 "%u ms): not an slcan adapter, or not powered?",
                                 s->s_code, can_slcan_timing.reply_ms);
                        slcan_fail(bus, -ENETDOWN, why);
                        return;
                }
                begin_recovery(bus, "the adapter stopped answering", true);
                return;
        }
        update_deadline(bus);
}

static int slcan_xmit(struct can_bus *bus, const struct gw_can_frame *f)
{
        struct slcan *s = bus->be;
        char line[GW_SLCAN_LINE_MAX + 2];
        int n;

        if (s->state != SLCAN_OPEN || (!s->quiet && s->pend_len >= SLCAN_WINDOW)) {
                s->starved = true;
                return -EAGAIN;
        }
        n = gw_slcan_format(f, line, sizeof(line));
        if (n < 0)
                return n;
        /* Room kept for a recovery's commands. When the buffer is that full, what it holds goes
         * now; if the port does not take it all, its POLLOUT watch kicks the bus later. */
        if ((size_t) n + 32 > sizeof(s->out) - s->out_len && out_flush(bus) < 0)
                return 0;
        if ((size_t) n + 32 > sizeof(s->out) - s->out_len) {
                s->starved = true;
                return -EAGAIN;
        }
        out_append(s, line, (size_t) n);
        if (!s->quiet)
                pend_push(s, CMD_FRAME, f);
        /* Written by slcan_flush() at the end of the burst; only a full buffer goes now. */
        if (s->out_len > sizeof(s->out) / 2 && out_flush(bus) < 0)
                return 0;
        update_deadline(bus);
        return 0;
}

static void slcan_flush(struct can_bus *bus)
{
        out_flush(bus);
}

/* The serial port, raw 8N1 without flow control, non-blocking. CDC-ACM adapters ignore the
 * rate; USB-serial bridges in front of a Lawicel-style controller need it. */
static int open_port(struct can_bus *bus, const char *path, uint32_t baud)
{
        struct termios tio;
        int fd, r;

        fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                can_bus_debug(bus, "slcan: cannot open the port: %s", strerror(errno));
                return r;
        }
        if (tcgetattr(fd, &tio) < 0) {
                r = errno == ENOTTY ? -EINVAL : -errno;
                can_bus_debug(bus, "slcan: not a terminal: %s", strerror(errno));
                close(fd);
                return r;
        }
        cfmakeraw(&tio);
        tio.c_cflag |= CLOCAL | CREAD;
        tio.c_cflag &= ~(tcflag_t) (CSIZE | PARENB | CSTOPB | CRTSCTS);
        tio.c_cflag |= CS8;
        tio.c_iflag &= ~(tcflag_t) (IXON | IXOFF | IXANY);
        tio.c_cc[VMIN] = 1;
        tio.c_cc[VTIME] = 0;
        cfsetspeed(&tio, gw_serial_speed(baud));
        if (tcsetattr(fd, TCSANOW, &tio) < 0) {
                r = -errno;
                can_bus_debug(bus, "slcan: cannot set the port up: %s", strerror(errno));
                close(fd);
                return r;
        }
        tcflush(fd, TCIOFLUSH);
        /* One writer per adapter: another program opening it would interleave commands. */
        if (ioctl(fd, TIOCEXCL) < 0)
                can_bus_debug(bus, "slcan: TIOCEXCL: %s, ignoring", strerror(errno));
        return fd;
}

static int slcan_open(struct can_bus *bus, const struct can_settings *set)
{
        struct slcan *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->fd = -1;
        s->y_code = -1;
        bus->be = s;
        s->s_code = can_slcan_bitrate_code(set->bitrate);
        if (set->data_bitrate)
                s->y_code = can_slcan_data_bitrate_code(set->data_bitrate);
        if (s->s_code < 0 || (set->data_bitrate && s->y_code < 0))
                return -EINVAL;
        r = open_port(bus, set->port, set->baud);
        if (r < 0)
                return r;
        s->fd = r;
        r = can_bus_watch(bus, WATCH_IN, s->fd, POLLIN, on_readable);
        if (r < 0)
                return r;
        s->recover_by_ns = can_now_ns() + (uint64_t) can_slcan_timing.recovery_ms * NSEC_PER_MS;
        can_bus_debug(bus, "slcan: configuring S%d%s at %u baud", s->s_code,
                      s->y_code >= 0 ? " with a data bitrate" : "", set->baud);
        enter_flushing(bus);
        return bus->error;
}

static void slcan_close(struct can_bus *bus)
{
        struct slcan *s = bus->be;

        if (!s || s->fd < 0)
                return;
        can_bus_unwatch(bus, WATCH_IN);
        can_bus_unwatch(bus, WATCH_OUT);
        s->pollout = false;
        /* Best effort: leave the adapter closed, as we found it. */
        if (s->state != SLCAN_FAILED && write(s->fd, "C\r", 2) < 0)
                can_bus_debug(bus, "slcan: closing the channel: %s, ignoring", strerror(errno));
        can_bus_debug(bus,
                      "slcan: closed; %llu refused, %llu recoveries, %llu frames lost, %llu "
                      "malformed and %llu overlong lines, %llu other",
                      (unsigned long long) s->refused, (unsigned long long) s->recoveries,
                      (unsigned long long) s->lost, (unsigned long long) s->malformed,
                      (unsigned long long) s->overlong, (unsigned long long) s->other);
        close(s->fd);
        s->fd = -1;
}

static int slcan_enable_fd(struct can_bus *bus)
{
        /* An FD adapter takes d and b frames whenever it is open; the data bitrate, which the
         * nodes must agree on, was set when it was configured. */
        return 0;
}

const struct can_backend_ops can_slcan_ops = {
    .name = "slcan",
    .open = slcan_open,
    .close = slcan_close,
    .xmit = slcan_xmit,
    .flush = slcan_flush,
    .enable_fd = slcan_enable_fd,
    .timeout = slcan_timeout,
};
