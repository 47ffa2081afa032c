/* The uart transport: a byte stream over a serial port. Real ports go through libserialport;
 * pseudo-terminals (socat and ser2net bridges, the simulators), which libserialport refuses,
 * go through plain termios. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <libserialport.h>

#include "gw/plugin.h"

#include "debug.h"
#include "serial.h"

#define BAUD_MIN 50
#define BAUD_MAX 16000000

/* UNIX98 pty slaves (/dev/pts/N) use majors 136 to 143 (Documentation/admin-guide/devices.txt). */
#define PTY_SLAVE_MAJOR_FIRST 136
#define PTY_SLAVE_MAJOR_LAST  143

enum uart_parity {
        PARITY_NONE,
        PARITY_EVEN,
        PARITY_ODD,
};

enum uart_flow {
        FLOW_NONE,
        FLOW_RTSCTS,
        FLOW_XONXOFF,
};

struct uart_settings {
        const char *port;
        uint32_t baud;
        unsigned data_bits;
        enum uart_parity parity;
        unsigned stop_bits;
        enum uart_flow flow;
};

struct uart {
        const struct gw_plugin_services *svc;
        struct sp_port *port; /* NULL on the termios path */
        int fd;
};

/* The one place sp_return codes become negative errno values. */
static int sp_to_errno(enum sp_return r)
{
        int e;

        if (r >= SP_OK)
                return (int) r;
        switch (r) {
        case SP_ERR_ARG:
                return -EINVAL;
        case SP_ERR_MEM:
                return -ENOMEM;
        case SP_ERR_SUPP:
                return -EOPNOTSUPP;
        case SP_ERR_FAIL:
        default:
                /* On Unix the last error code is errno. */
                e = sp_last_error_code();
                return e > 0 ? -e : -EIO;
        }
}

static void debug_sp_error(const struct gw_plugin_services *svc, const char *what, int r)
{
        char *msg = sp_last_error_message();

        gw_transport_debug(svc, "%s failed: %s (%s)", what, strerror(-r), msg ? msg : "no details");
        sp_free_error_message(msg);
}

/* Reads the settings from opts; on a bad one -EINVAL with the reason in why. Pure. */
static int parse_settings(const struct gw_options *opts, struct uart_settings *ret, char *why,
                          size_t why_size)
{
        struct uart_settings set = {0};
        const char *v;
        uint64_t u;

        set.port = gw_options_get(opts, "port");
        if (!set.port || !*set.port) {
                snprintf(why, why_size, "option port is required (the device, e.g. /dev/ttyUSB0)");
                return -EINVAL;
        }
        if (gw_options_get_u64(opts, "baud", 115200, BAUD_MIN, BAUD_MAX, &u) < 0) {
                snprintf(why, why_size, "option baud: expected a number from %d to %d", BAUD_MIN,
                         BAUD_MAX);
                return -EINVAL;
        }
        set.baud = (uint32_t) u;
        if (gw_options_get_u64(opts, "data-bits", 8, 5, 8, &u) < 0) {
                snprintf(why, why_size, "option data-bits: expected 5 to 8");
                return -EINVAL;
        }
        set.data_bits = (unsigned) u;
        if (gw_options_get_u64(opts, "stop-bits", 1, 1, 2, &u) < 0) {
                snprintf(why, why_size, "option stop-bits: expected 1 or 2");
                return -EINVAL;
        }
        set.stop_bits = (unsigned) u;

        v = gw_options_get(opts, "parity");
        if (!v || strcmp(v, "none") == 0)
                set.parity = PARITY_NONE;
        else if (strcmp(v, "even") == 0)
                set.parity = PARITY_EVEN;
        else if (strcmp(v, "odd") == 0)
                set.parity = PARITY_ODD;
        else {
                snprintf(why, why_size, "option parity: expected none, even or odd");
                return -EINVAL;
        }

        v = gw_options_get(opts, "flow");
        if (!v || strcmp(v, "none") == 0)
                set.flow = FLOW_NONE;
        else if (strcmp(v, "rtscts") == 0)
                set.flow = FLOW_RTSCTS;
        else if (strcmp(v, "xonxoff") == 0)
                set.flow = FLOW_XONXOFF;
        else {
                snprintf(why, why_size, "option flow: expected none, rtscts or xonxoff");
                return -EINVAL;
        }
        *ret = set;
        return 0;
}

static int uart_check(const struct gw_options *opts, char *why, size_t why_size)
{
        struct uart_settings set;

        return parse_settings(opts, &set, why, why_size);
}

/* The libserialport path: real UARTs and USB-serial adapters. -ENODEV means "not a port
 * libserialport knows": the caller then tries the termios path. */
static int open_sp(struct uart *u, const struct uart_settings *set)
{
        static const enum sp_parity parity[] = {
            [PARITY_NONE] = SP_PARITY_NONE,
            [PARITY_EVEN] = SP_PARITY_EVEN,
            [PARITY_ODD] = SP_PARITY_ODD,
        };
        static const enum sp_flowcontrol flow[] = {
            [FLOW_NONE] = SP_FLOWCONTROL_NONE,
            [FLOW_RTSCTS] = SP_FLOWCONTROL_RTSCTS,
            [FLOW_XONXOFF] = SP_FLOWCONTROL_XONXOFF,
        };
        struct sp_port *port = NULL;
        struct sp_port_config *cfg = NULL;
        int r, fd, fl;

        r = sp_to_errno(sp_get_port_by_name(set->port, &port));
        if (r < 0) {
                debug_sp_error(u->svc, "sp_get_port_by_name", r);
                return -ENODEV;
        }
        r = sp_to_errno(sp_open(port, SP_MODE_READ_WRITE));
        if (r < 0) {
                debug_sp_error(u->svc, "sp_open", r);
                sp_free_port(port);
                /* No modem-control lines (TIOCMGET fails): a tty libserialport cannot drive. */
                return r == -ENOTTY || r == -EINVAL ? -ENODEV : r;
        }
        r = sp_to_errno(sp_new_config(&cfg));
        if (r >= 0)
                r = sp_to_errno(sp_set_config_baudrate(cfg, (int) set->baud));
        if (r >= 0)
                r = sp_to_errno(sp_set_config_bits(cfg, (int) set->data_bits));
        if (r >= 0)
                r = sp_to_errno(sp_set_config_parity(cfg, parity[set->parity]));
        if (r >= 0)
                r = sp_to_errno(sp_set_config_stopbits(cfg, (int) set->stop_bits));
        if (r >= 0)
                r = sp_to_errno(sp_set_config_flowcontrol(cfg, flow[set->flow]));
        if (r >= 0)
                r = sp_to_errno(sp_set_config(port, cfg));
        if (r >= 0)
                r = sp_to_errno(sp_flush(port, SP_BUF_BOTH));
        if (r >= 0)
                r = sp_to_errno(sp_get_port_handle(port, &fd));
        sp_free_config(cfg);
        if (r < 0) {
                debug_sp_error(u->svc, "configuring the port", r);
                sp_close(port);
                sp_free_port(port);
                return r == -ENOTTY ? -ENODEV : r;
        }
        /* The core polls the fd and reads only when it is ready; reads must never block. */
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
                r = -errno;
                sp_close(port);
                sp_free_port(port);
                return r;
        }
        u->port = port;
        u->fd = fd;
        return 0;
}

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) ||     \
                           defined(__arm__) || defined(__riscv))
/* The kernel's struct termios2 on architectures using asm-generic/termbits.h; glibc does not
 * declare it and its header clashes with <termios.h>. */
struct uart_termios2 {
        tcflag_t c_iflag, c_oflag, c_cflag, c_lflag;
        cc_t c_line;
        cc_t c_cc[19];
        speed_t c_ispeed, c_ospeed;
};
#define UART_TCGETS2 _IOR('T', 0x2A, struct uart_termios2)
#define UART_TCSETS2 _IOW('T', 0x2B, struct uart_termios2)
#define UART_BOTHER  0x00001000

/* A rate without a Bxxx constant: termios2 with BOTHER. */
static int set_custom_speed(int fd, uint32_t baud)
{
        struct uart_termios2 t2;

        if (ioctl(fd, UART_TCGETS2, &t2) < 0)
                return -errno;
        t2.c_cflag &= ~(tcflag_t) CBAUD;
        t2.c_cflag |= UART_BOTHER;
        t2.c_ispeed = baud;
        t2.c_ospeed = baud;
        if (ioctl(fd, UART_TCSETS2, &t2) < 0)
                return -errno;
        return 0;
}
#else
static int set_custom_speed(int fd, uint32_t baud)
{
        return -EINVAL;
}
#endif

/* The termios path: pseudo-terminals and ttys libserialport refuses. A pty has no line: it takes
 * any speed and silently drops parity, so nothing is read back to verify. */
static int open_termios(struct uart *u, const struct uart_settings *set, bool pty)
{
        static const tcflag_t csize[] = {[5] = CS5, [6] = CS6, [7] = CS7, [8] = CS8};
        struct termios tio;
        speed_t speed = gw_serial_speed(set->baud);
        int fd, r;

        fd = open(set->port, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (tcgetattr(fd, &tio) < 0) {
                r = errno == ENOTTY ? -EINVAL : -errno;
                gw_transport_debug(u->svc, "%s is not a terminal", set->port);
                goto fail;
        }
        cfmakeraw(&tio);
        tio.c_cflag |= CLOCAL | CREAD;
        tio.c_cflag &= ~(tcflag_t) (CSIZE | PARENB | PARODD | CSTOPB | CRTSCTS);
        tio.c_cflag |= csize[set->data_bits];
        /* A pty has no line to carry parity: its driver clears PARENB, and glibc's tcsetattr()
         * then reads the settings back and fails with EINVAL (depending on what the previous
         * settings were), so parity is not asked of one. */
        if (set->parity != PARITY_NONE && !pty)
                tio.c_cflag |= PARENB | (set->parity == PARITY_ODD ? PARODD : 0);
        if (set->stop_bits == 2)
                tio.c_cflag |= CSTOPB;
        tio.c_iflag &= ~(tcflag_t) (IXON | IXOFF | IXANY);
        if (set->flow == FLOW_RTSCTS)
                tio.c_cflag |= CRTSCTS;
        else if (set->flow == FLOW_XONXOFF)
                tio.c_iflag |= IXON | IXOFF;
        /* VMIN 1: an empty non-blocking read fails with EAGAIN, so a read of 0 means hangup. */
        tio.c_cc[VMIN] = 1;
        tio.c_cc[VTIME] = 0;
        cfsetspeed(&tio, speed != B0 ? speed : B38400);
        if (tcsetattr(fd, TCSANOW, &tio) < 0) {
                r = -errno;
                goto fail;
        }
        if (speed == B0) {
                r = set_custom_speed(fd, set->baud);
                if (r < 0) {
                        gw_transport_debug(u->svc, "%s: cannot set %u baud: %s", set->port,
                                           set->baud, strerror(-r));
                        r = -EINVAL;
                        goto fail;
                }
        }
        tcflush(fd, TCIOFLUSH);
        u->port = NULL;
        u->fd = fd;
        return 0;
fail:
        close(fd);
        return r;
}

static bool is_pty_slave(const struct stat *st)
{
        unsigned maj = major(st->st_rdev);

        return S_ISCHR(st->st_mode) && maj >= PTY_SLAVE_MAJOR_FIRST && maj <= PTY_SLAVE_MAJOR_LAST;
}

static int uart_open(void *priv, const struct gw_options *opts,
                     const struct gw_plugin_services *svc)
{
        struct uart *u = priv;
        struct uart_settings set;
        struct stat st;
        char why[128];
        int r;

        u->svc = svc;
        u->fd = -1;
        r = parse_settings(opts, &set, why, sizeof(why));
        if (r < 0) {
                gw_transport_debug(svc, "%s", why);
                return r;
        }
        if (stat(set.port, &st) < 0) {
                r = -errno;
                gw_transport_debug(svc, "%s: %s", set.port, strerror(errno));
                return r == -ENOTDIR ? -ENOENT : r;
        }
        if (!S_ISCHR(st.st_mode)) {
                gw_transport_debug(svc, "%s is not a character device", set.port);
                return -EINVAL;
        }
        if (!is_pty_slave(&st)) {
                r = open_sp(u, &set);
                if (r != -ENODEV) {
                        if (r >= 0)
                                gw_transport_debug(svc, "%s: opened through libserialport, %u baud",
                                                   set.port, set.baud);
                        return r;
                }
                gw_transport_debug(svc, "%s: libserialport cannot drive it, using termios",
                                   set.port);
        }
        r = open_termios(u, &set, is_pty_slave(&st));
        if (r >= 0)
                gw_transport_debug(svc, "%s: %s opened through termios, %u baud", set.port,
                                   is_pty_slave(&st) ? "pseudo-terminal" : "tty", set.baud);
        return r;
}

static void uart_close(void *priv)
{
        struct uart *u = priv;

        if (u->port) {
                sp_close(u->port);
                sp_free_port(u->port);
                u->port = NULL;
        } else if (u->fd >= 0) {
                close(u->fd);
        }
        u->fd = -1;
}

static int uart_get_fd(void *priv)
{
        const struct uart *u = priv;

        return u->fd;
}

/* Nothing was read: empty, or did the other side go away? */
static ssize_t empty_or_hangup(const struct uart *u)
{
        struct pollfd p = {.fd = u->fd, .events = POLLIN};

        if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)))
                return -EPIPE;
        return -EAGAIN;
}

static ssize_t uart_read(void *priv, void *buf, size_t n)
{
        const struct uart *u = priv;
        ssize_t r;

        if (n == 0)
                return -EINVAL;
        if (n > SSIZE_MAX)
                n = SSIZE_MAX;
        if (u->port) {
                int k = sp_nonblocking_read(u->port, buf, n > INT32_MAX ? INT32_MAX : n);

                r = sp_to_errno(k);
        } else {
                r = read(u->fd, buf, n);
                if (r < 0)
                        r = -errno;
        }
        if (r > 0)
                return r;
        if (r == 0 || r == -EAGAIN || r == -EINTR)
                return empty_or_hangup(u);
        /* A pty whose master closed, an unplugged adapter. */
        if (r == -EIO)
                return -EPIPE;
        return r;
}

static ssize_t uart_write(void *priv, const void *buf, size_t n)
{
        const struct uart *u = priv;
        ssize_t r;

        if (n == 0)
                return 0;
        if (u->port) {
                int k = sp_nonblocking_write(u->port, buf, n > INT32_MAX ? INT32_MAX : n);

                r = sp_to_errno(k);
                if (r == 0)
                        return -EAGAIN;
        } else {
                r = write(u->fd, buf, n);
                if (r < 0)
                        r = errno == EINTR ? -EAGAIN : -errno;
        }
        return r == -EIO ? -EPIPE : r;
}

static int uart_set_lines(void *priv, unsigned mask, unsigned values)
{
        const struct uart *u = priv;
        static const struct {
                unsigned line;
                int tiocm;
        } lines[] = {{GW_LINE_DTR, TIOCM_DTR}, {GW_LINE_RTS, TIOCM_RTS}};

        if (mask & ~(GW_LINE_DTR | GW_LINE_RTS))
                return -EINVAL;
        if (u->fd < 0)
                return -ENODEV;
        /* One path for both kinds of port: libserialport's sp_set_dtr() would rewrite the whole
         * configuration for one bit; TIOCMBIS/TIOCMBIC change just the line. */
        for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
                int bits = lines[i].tiocm;

                if (!(mask & lines[i].line))
                        continue;
                if (ioctl(u->fd, (values & lines[i].line) ? TIOCMBIS : TIOCMBIC, &bits) < 0) {
                        int r = -errno;

                        gw_transport_debug(u->svc, "setting %s: %s",
                                           lines[i].line == GW_LINE_DTR ? "DTR" : "RTS",
                                           strerror(errno));
                        /* A pty answers EINVAL or ENOTTY: either way it has no lines. */
                        return r == -EINVAL ? -ENOTTY : (r == -EIO ? -ENODEV : r);
                }
        }
        return 0;
}

static int uart_enumerate(const struct gw_plugin_services *svc, gw_link_enum_cb cb, void *userdata)
{
        struct sp_port **ports = NULL;
        int r;

        r = sp_to_errno(sp_list_ports(&ports));
        if (r < 0) {
                debug_sp_error(svc, "sp_list_ports", r);
                return r;
        }
        r = 0;
        for (size_t i = 0; ports[i] && r == 0; i++) {
                struct gw_link_info info = {
                    .transport = "uart",
                    .path = sp_get_port_name(ports[i]),
                    .description = sp_get_port_description(ports[i]),
                };

                if (!info.path)
                        continue;
                gw_serial_usb_ids(ports[i], &info);
                r = cb(&info, userdata);
        }
        sp_free_port_list(ports);
        return r;
}

static const char *const uart_options[] = {"port",   "baud", "data-bits", "stop-bits",
                                           "parity", "flow", NULL};

const struct gw_transport_ops gw_transport_uart_ops = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "uart",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct uart),
    .open = uart_open,
    .close = uart_close,
    .get_fd = uart_get_fd,
    .read = uart_read,
    .write = uart_write,
    .enumerate = uart_enumerate,
    .options = uart_options,
    .check = uart_check,
    .set_lines = uart_set_lines,
};
