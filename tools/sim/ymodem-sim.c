/* ymodem-sim: a simulated YMODEM-1K receiver node on a pseudo-terminal. It behaves like a device
 * behind a UART: paced to a baud rate both ways, with a flash-programming time model and faults
 * injected from the command line or, at run time, through a control FIFO or file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "cli.h"
#include "control.h"
#include "loop.h"
#include "pace.h"
#include "pty.h"

#define SOH 0x01
#define STX 0x02
#define EOT 0x04
#define ACK 0x06
#define NAK 0x15
#define CAN 0x18

#define NSEC_PER_MSEC    1000000ULL
#define PKT_MAX          (3 + 1024 + 2)
#define MAX_RETRIES      10
#define HUP_RECHECK_NS   (20 * NSEC_PER_MSEC)
#define LINGER_NS        (2000 * NSEC_PER_MSEC)
#define NAME_MAX_LEN     255
#define RX_QUEUE         (64 * 1024)
#define DEFAULT_MAX_SIZE (256ULL * 1024 * 1024)
#define SIZE_UNKNOWN     UINT64_MAX

enum rx_state {
        ST_HEADER, /* sending 'C', waiting for block 0 (a file or the end of the batch) */
        ST_DATA,   /* receiving data blocks */
};

/* Faults waiting to fire; each fires once (silent lasts until "resume" or the session ends). */
struct faults {
        uint64_t drop_byte;     /* drop the Nth byte received in the session; 0 = none */
        uint64_t corrupt_block; /* flip a byte of data block N once; 0 = none */
        uint64_t delay_ms;      /* delay the next reply; 0 = none */
        uint64_t cancel_after;  /* send CAN CAN after acknowledging data block N; 0 = none */
        bool silent;            /* ignore input, send nothing */
        bool nak_eot;           /* NAK one more EOT than usual */
};

struct sim {
        /* configuration */
        const char *link;
        const char *out_dir;
        const char *report_path;
        const char *control_path;
        uint32_t baud;
        uint64_t c_interval_ms;
        uint64_t write_us_per_kb;
        uint64_t byte_timeout_ms;
        uint64_t idle_timeout_ms;
        uint64_t max_size;
        bool once;
        bool verbose;

        /* the line */
        int master;
        char slave[128];
        bool connected;
        uint64_t hup_check_ns;
        struct gw_pace *pace;
        int out_dirfd;
        int sigfd;
        FILE *report;

        /* run-time control */
        struct gw_sim_control ctl;

        struct faults faults;

        /* the session */
        enum rx_state state;
        bool in_batch; /* a file header was taken; the session ends with end-of-batch */
        uint64_t session_bytes;
        uint64_t last_rx_ns;
        uint64_t next_c_ns;
        uint64_t idle_naks;
        uint8_t pkt[PKT_MAX];
        size_t pkt_len, pkt_need;
        unsigned cans, eots, retries;
        uint64_t expected; /* index of the next data block, 1-based */

        /* the file being received */
        int fd;
        char name[NAME_MAX_LEN + 1];
        uint64_t declared, received, blocks, naks;
        uint64_t t_start_ns;
        bool file_done;

        /* the reply waiting for its time */
        uint8_t tx[64];
        size_t tx_len;
        uint64_t tx_at_ns;

        unsigned sessions;
        bool failed;
        /* --once: the session is over; exit once the host has closed the port (or after a
         * grace period), so that the last ACK is not lost to a hangup. */
        uint64_t linger_until_ns;
};

#define vlog(s, ...) gw_sim_log((s)->verbose, "ymodem-sim", __VA_ARGS__)

/* CRC-16/XMODEM (poly 0x1021, init 0), bit by bit: this side is meant to be an independent
 * implementation of what the senders compute. */
static uint16_t crc16(const uint8_t *p, size_t n)
{
        uint16_t crc = 0;

        for (size_t i = 0; i < n; i++) {
                crc ^= (uint16_t) (p[i] << 8);
                for (int b = 0; b < 8; b++)
                        crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                             : (uint16_t) (crc << 1);
        }
        return crc;
}

/* Replies go out once their time has come (flash programming, an injected delay). */
static void reply_after(struct sim *s, const void *buf, size_t n, uint64_t delay_ns)
{
        uint64_t at = gw_sim_now_ns() + delay_ns;

        if (s->faults.silent)
                return;
        if (s->faults.delay_ms > 0) {
                vlog(s, "fault: delaying reply by %" PRIu64 " ms", s->faults.delay_ms);
                at += s->faults.delay_ms * NSEC_PER_MSEC;
                s->faults.delay_ms = 0;
        }
        if (n > sizeof(s->tx) - s->tx_len)
                return; /* cannot happen: replies are a few bytes and flushed each iteration */
        memcpy(s->tx + s->tx_len, buf, n);
        s->tx_len += n;
        if (at > s->tx_at_ns)
                s->tx_at_ns = at;
}

static void reply(struct sim *s, uint8_t c)
{
        reply_after(s, &c, 1, 0);
}

static void nak(struct sim *s, const char *why)
{
        if (s->faults.silent)
                return;
        vlog(s, "NAK (%s)", why);
        s->naks++;
        reply(s, NAK);
}

static void flush_tx(struct sim *s)
{
        ssize_t r;

        if (s->tx_len == 0 || gw_sim_now_ns() < s->tx_at_ns)
                return;
        if (s->connected) {
                r = gw_pace_write(s->pace, s->master, s->tx, s->tx_len);
                if (r == -EIO)
                        s->connected = false;
        }
        s->tx_len = 0;
        s->tx_at_ns = 0;
}

static int sha256_file(int dirfd, const char *name, char ret[65])
{
        uint8_t buf[65536], md[32];
        unsigned mdlen = 0;
        EVP_MD_CTX *ctx;
        int fd, r = 0;
        ssize_t n;

        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        ctx = EVP_MD_CTX_new();
        if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
                r = -ENOMEM;
                goto out;
        }
        for (;;) {
                n = read(fd, buf, sizeof(buf));
                if (n < 0) {
                        r = -errno;
                        goto out;
                }
                if (n == 0)
                        break;
                EVP_DigestUpdate(ctx, buf, (size_t) n);
        }
        if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != sizeof(md)) {
                r = -EIO;
                goto out;
        }
        for (unsigned i = 0; i < sizeof(md); i++)
                snprintf(ret + 2 * i, 3, "%02x", md[i]);
out:
        EVP_MD_CTX_free(ctx);
        close(fd);
        return r;
}

/* Writes one report line and drops j. */
static void report_line(struct sim *s, json_t *j)
{
        char *line = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

        if (line) {
                fprintf(s->report, "%s\n", line);
                fflush(s->report);
        }
        free(line);
        json_decref(j);
}

/* Closes the file being received and writes its report line. */
static void finish_file(struct sim *s, const char *result, const char *reason)
{
        char sha[65] = "";
        uint64_t size = s->received, ms;
        json_t *j;

        if (s->fd < 0)
                return;
        if (strcmp(result, "ok") == 0 && s->declared != SIZE_UNKNOWN) {
                if (s->received < s->declared) {
                        result = "short";
                        reason = "fewer bytes than block 0 announced";
                } else if (ftruncate(s->fd, (off_t) s->declared) < 0) {
                        result = "error";
                        reason = "truncate failed";
                } else {
                        size = s->declared;
                }
        }
        close(s->fd);
        s->fd = -1;
        if (sha256_file(s->out_dirfd, s->name, sha) < 0)
                sha[0] = '\0';
        ms = (gw_sim_now_ns() - s->t_start_ns) / NSEC_PER_MSEC;
        if (strcmp(result, "ok") != 0)
                s->failed = true;

        j = json_pack("{s:s, s:I, s:s?, s:I, s:I, s:s, s:s?, s:I, s:I, s:I}", "file", s->name,
                      "size", (json_int_t) size, "sha256", sha[0] ? sha : NULL, "blocks",
                      (json_int_t) s->blocks, "naks", (json_int_t) s->naks, "result", result,
                      "reason", reason, "baud", (json_int_t) s->baud, "duration_ms",
                      (json_int_t) ms, "bytes_per_s", (json_int_t) (ms > 0 ? size * 1000 / ms : 0));
        report_line(s, j);
        vlog(s, "file %s: %s", s->name, result);
}

/* Reports a session that failed before any file was opened (nothing else would say so). */
static void report_no_file(struct sim *s, const char *result, const char *reason)
{
        report_line(s, json_pack("{s:n, s:I, s:s, s:s?}", "file", "naks", (json_int_t) s->naks,
                                 "result", result, "reason", reason));
        s->failed = true;
}

static void reset_session(struct sim *s)
{
        s->state = ST_HEADER;
        s->in_batch = false;
        s->session_bytes = 0;
        s->pkt_len = 0;
        s->pkt_need = 0;
        s->cans = 0;
        s->eots = 0;
        s->retries = 0;
        s->expected = 1;
        s->naks = 0;
        s->blocks = 0;
        s->file_done = false;
        s->faults.silent = false;
        s->next_c_ns = gw_sim_now_ns() + s->c_interval_ms * NSEC_PER_MSEC;
}

/* Ends the session: the file in progress (if any) gets the result, then the next session may
 * start (or the program ends with --once). */
static void end_session(struct sim *s, const char *result, const char *reason)
{
        vlog(s, "session ends: %s%s%s", result, reason ? ": " : "", reason ? reason : "");
        if (s->fd >= 0)
                finish_file(s, result, reason);
        else if (strcmp(result, "ok") != 0 && !s->file_done)
                report_no_file(s, result, reason);
        s->sessions++;
        reset_session(s);
        if (s->once && s->linger_until_ns == 0)
                s->linger_until_ns = gw_sim_now_ns() + LINGER_NS;
}

static void abort_session(struct sim *s, const char *reason)
{
        static const uint8_t cancel[] = {CAN, CAN, CAN, CAN, CAN};

        reply_after(s, cancel, sizeof(cancel), 0);
        end_session(s, "aborted", reason);
}

/* A file name from block 0: the last path component, printable, not "." or "..". */
static int take_name(struct sim *s, const char *p, size_t n)
{
        const char *base = p;
        size_t len;

        for (size_t i = 0; i < n; i++)
                if (p[i] == '/')
                        base = p + i + 1;
        len = n - (size_t) (base - p);
        if (len == 0 || len > NAME_MAX_LEN || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
                return -EINVAL;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) base[i] < 0x20 || (unsigned char) base[i] > 0x7e)
                        return -EINVAL;
        memcpy(s->name, base, len);
        s->name[len] = '\0';
        return 0;
}

static void header_block(struct sim *s, const uint8_t *data, size_t len)
{
        const char *d = (const char *) data;
        size_t nlen, i;
        uint64_t size = SIZE_UNKNOWN;

        if (data[0] == '\0') {
                vlog(s, "end of batch");
                reply(s, ACK);
                end_session(s, "ok", NULL);
                return;
        }
        nlen = strnlen(d, len);
        if (nlen == len || take_name(s, d, nlen) < 0) {
                abort_session(s, "bad file name in block 0");
                return;
        }
        /* The size is decimal, ended by a space or NUL; anything after it is ignored. */
        i = nlen + 1;
        if (i < len && data[i] >= '0' && data[i] <= '9') {
                size = 0;
                for (; i < len && data[i] >= '0' && data[i] <= '9'; i++) {
                        size = size * 10 + (data[i] - '0');
                        if (size > s->max_size) {
                                abort_session(s, "image larger than --max-size");
                                return;
                        }
                }
        }
        s->fd = openat(s->out_dirfd, s->name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                       0644);
        if (s->fd < 0) {
                abort_session(s, "cannot create the output file");
                return;
        }
        s->declared = size;
        s->received = 0;
        s->blocks = 0;
        s->naks = 0;
        s->expected = 1;
        s->eots = 0;
        s->file_done = false;
        s->in_batch = true;
        s->t_start_ns = s->last_rx_ns;
        s->state = ST_DATA;
        vlog(s, "block 0: %s, %" PRIu64 " bytes", s->name, size == SIZE_UNKNOWN ? 0 : size);
        reply(s, ACK);
        reply(s, 'C');
}

static void data_block(struct sim *s, uint8_t blk, const uint8_t *data, size_t len)
{
        uint8_t want = (uint8_t) (s->expected & 0xff);
        uint64_t delay_us;
        ssize_t w;

        if (blk == (uint8_t) (want - 1)) {
                /* The sender missed our ACK: acknowledge again, keep nothing. */
                vlog(s, "duplicate block %u", blk);
                reply(s, ACK);
                if (s->expected == 1)
                        reply(s, 'C');
                return;
        }
        if (blk != want) {
                abort_session(s, "block out of order");
                return;
        }
        if (s->received + len > s->max_size + 1024) {
                abort_session(s, "image larger than --max-size");
                return;
        }
        w = pwrite(s->fd, data, len, (off_t) s->received);
        if (w < 0 || (size_t) w != len) {
                abort_session(s, "write failed");
                return;
        }
        s->received += len;
        s->blocks++;
        s->expected++;
        s->retries = 0;
        /* Flash programming time, proportional to the block size. */
        delay_us = s->write_us_per_kb * len / 1024;
        reply_after(s, (const uint8_t[]){ACK}, 1, delay_us * 1000);
        if (s->faults.cancel_after > 0 && s->blocks == s->faults.cancel_after) {
                vlog(s, "fault: cancelling after block %" PRIu64, s->blocks);
                s->faults.cancel_after = 0;
                abort_session(s, "cancel-after fault");
        }
}

/* A whole packet is in s->pkt. */
static void packet(struct sim *s)
{
        size_t len = s->pkt[0] == STX ? 1024 : 128;
        uint8_t blk = s->pkt[1];
        uint8_t *data = s->pkt + 3;
        uint16_t crc = (uint16_t) (s->pkt[3 + len] << 8 | s->pkt[4 + len]);

        if ((uint8_t) (blk ^ s->pkt[2]) != 0xff) {
                nak(s, "block number complement");
                goto retry;
        }
        if (s->state == ST_DATA && s->faults.corrupt_block > 0 &&
            s->expected == s->faults.corrupt_block && blk == (uint8_t) (s->expected & 0xff)) {
                vlog(s, "fault: corrupting block %" PRIu64, s->expected);
                data[len / 2] ^= 0x5a;
                s->faults.corrupt_block = 0;
        }
        if (crc16(data, len) != crc) {
                nak(s, "CRC");
                goto retry;
        }
        if (s->state == ST_HEADER) {
                if (blk != 0) {
                        nak(s, "expected block 0");
                        goto retry;
                }
                header_block(s, data, len);
                return;
        }
        data_block(s, blk, data, len);
        return;
retry:
        if (++s->retries > MAX_RETRIES)
                abort_session(s, "too many errors");
}

static void eot(struct sim *s)
{
        if (s->state != ST_DATA) {
                /* A sender repeating EOT after we acknowledged it: acknowledge again. */
                reply(s, ACK);
                return;
        }
        s->eots++;
        /* Like rb, NAK the first EOT: a corrupted byte must not end the file early. */
        if (s->eots == 1) {
                reply(s, NAK);
                return;
        }
        if (s->faults.nak_eot) {
                vlog(s, "fault: NAK EOT");
                s->faults.nak_eot = false;
                nak(s, "nak-eot fault");
                return;
        }
        reply(s, ACK);
        s->file_done = true;
        finish_file(s, "ok", NULL);
        s->state = ST_HEADER;
        s->eots = 0;
        reply(s, 'C');
        s->next_c_ns = gw_sim_now_ns() + s->c_interval_ms * NSEC_PER_MSEC;
}

static void rx_byte(struct sim *s, uint8_t c, uint64_t now)
{
        s->session_bytes++;
        if (s->faults.drop_byte > 0 && s->session_bytes == s->faults.drop_byte) {
                vlog(s, "fault: dropping byte %" PRIu64, s->session_bytes);
                s->faults.drop_byte = 0;
                return;
        }
        if (s->faults.silent)
                return;
        s->last_rx_ns = now;
        s->idle_naks = 0;

        if (s->pkt_len > 0) {
                s->pkt[s->pkt_len++] = c;
                if (s->pkt_len == s->pkt_need) {
                        s->pkt_len = 0;
                        packet(s);
                }
                return;
        }
        if (c == CAN) {
                if (++s->cans >= 2) {
                        s->cans = 0;
                        end_session(s, "cancelled", "the sender cancelled");
                }
                return;
        }
        s->cans = 0;
        switch (c) {
        case SOH:
        case STX:
                s->pkt[0] = c;
                s->pkt_len = 1;
                s->pkt_need = 3 + (c == STX ? 1024 : 128) + 2;
                break;
        case EOT:
                eot(s);
                break;
        default:
                break; /* line noise between packets */
        }
}

static void timers(struct sim *s, uint64_t now)
{
        uint64_t idle = now - s->last_rx_ns;

        if (s->pkt_len > 0 && idle >= s->byte_timeout_ms * NSEC_PER_MSEC) {
                s->pkt_len = 0;
                nak(s, "packet timed out");
                if (++s->retries > MAX_RETRIES)
                        abort_session(s, "too many errors");
                return;
        }
        if (s->in_batch && idle >= s->idle_timeout_ms * NSEC_PER_MSEC) {
                end_session(s, "timeout", "the sender went quiet");
                return;
        }
        if (s->state == ST_HEADER && s->pkt_len == 0 && s->connected && !s->faults.silent &&
            s->linger_until_ns == 0 && now >= s->next_c_ns) {
                reply(s, 'C');
                s->next_c_ns = now + s->c_interval_ms * NSEC_PER_MSEC;
        }
        /* A sender waiting for a reply we never saw the request for: prompt it every
         * byte timeout x 3 while a file is open. */
        if (s->state == ST_DATA && s->pkt_len == 0 && !s->faults.silent &&
            idle >= 3 * s->byte_timeout_ms * NSEC_PER_MSEC * (s->idle_naks + 1)) {
                s->idle_naks++;
                nak(s, "idle");
        }
}

static uint64_t next_timer(const struct sim *s)
{
        uint64_t t = UINT64_MAX, byte_ns = s->byte_timeout_ms * NSEC_PER_MSEC;

        if (s->pkt_len > 0)
                t = s->last_rx_ns + byte_ns;
        if (s->in_batch && s->last_rx_ns + s->idle_timeout_ms * NSEC_PER_MSEC < t)
                t = s->last_rx_ns + s->idle_timeout_ms * NSEC_PER_MSEC;
        if (s->state == ST_HEADER && s->connected && s->linger_until_ns == 0 && s->next_c_ns < t)
                t = s->next_c_ns;
        if (s->linger_until_ns > 0 && s->linger_until_ns < t)
                t = s->linger_until_ns;
        if (s->state == ST_DATA && s->pkt_len == 0) {
                uint64_t at = s->last_rx_ns + 3 * byte_ns * (s->idle_naks + 1);

                if (at < t)
                        t = at;
        }
        if (s->tx_len > 0 && s->tx_at_ns < t)
                t = s->tx_at_ns;
        return t;
}

/* Applies one fault command ("corrupt-block 3"); the same words as the command-line flags. */
static int apply_command(struct sim *s, const char *cmd, const char *arg)
{
        uint64_t v = 0;
        bool needs_arg =
            strcmp(cmd, "silent") != 0 && strcmp(cmd, "resume") != 0 && strcmp(cmd, "nak-eot") != 0;

        if (needs_arg && gw_sim_parse_u64(arg, 10, UINT32_MAX, &v) < 0)
                return -EINVAL;
        if (!needs_arg && arg && *arg)
                return -EINVAL;
        if (strcmp(cmd, "drop-byte") == 0 && v > 0)
                s->faults.drop_byte = v;
        else if (strcmp(cmd, "corrupt-block") == 0 && v > 0)
                s->faults.corrupt_block = v;
        else if (strcmp(cmd, "delay") == 0)
                s->faults.delay_ms = v;
        else if (strcmp(cmd, "cancel-after") == 0 && v > 0)
                s->faults.cancel_after = v;
        else if (strcmp(cmd, "silent") == 0)
                s->faults.silent = true;
        else if (strcmp(cmd, "resume") == 0)
                s->faults.silent = false;
        else if (strcmp(cmd, "nak-eot") == 0)
                s->faults.nak_eot = true;
        else
                return -EINVAL;
        vlog(s, "fault armed: %s%s%s", cmd, arg ? " " : "", arg ? arg : "");
        return 0;
}

/* One control line: "COMMAND [ARG]". */
static void control_line(char *line, void *userdata)
{
        struct sim *s = userdata;
        char *w[2];
        int n = gw_sim_control_words(line, w, 2);

        if (n == 0)
                return;
        if (n < 0 || apply_command(s, w[0], n > 1 ? w[1] : NULL) < 0)
                fprintf(stderr, "ymodem-sim: unknown control command \"%s\", ignoring\n", w[0]);
}

/* Reads what the host wrote; notices when it closed its side. */
static void line_input(struct sim *s, short revents)
{
        ssize_t r;

        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
                return;
        for (;;) {
                r = gw_pace_fill(s->pace, s->master);
                if (r > 0)
                        continue;
                if (r == -EIO) {
                        /* With no slave open the master reports EIO: nobody is listening. */
                        if (s->connected)
                                vlog(s, "host closed the port");
                        s->connected = false;
                        s->hup_check_ns = gw_sim_now_ns() + HUP_RECHECK_NS;
                }
                return;
        }
}

static void check_connected(struct sim *s, uint64_t now)
{
        struct pollfd p = {.fd = s->master, .events = POLLIN};

        if (s->connected || now < s->hup_check_ns)
                return;
        s->hup_check_ns = now + HUP_RECHECK_NS;
        if (poll(&p, 1, 0) < 0 || (p.revents & POLLHUP))
                return;
        vlog(s, "host opened the port");
        s->connected = true;
        /* A device prompts at once when someone connects, then every interval. */
        if (s->state == ST_HEADER)
                s->next_c_ns = now;
}

static int run(struct sim *s)
{
        const struct gw_sim_wait w = {
            .sigfd = s->sigfd, .ctl = &s->ctl, .on_line = control_line, .userdata = s};

        for (;;) {
                uint64_t now, at;
                uint8_t buf[1024];
                uint32_t signo;
                size_t n;
                int r;

                now = gw_sim_now_ns();
                check_connected(s, now);
                /* Once a --once session is over, input is no longer heard. */
                while ((n = gw_pace_take(s->pace, now, buf, sizeof(buf))) > 0)
                        for (size_t i = 0; i < n && s->linger_until_ns == 0; i++)
                                rx_byte(s, buf[i], now);
                timers(s, now);
                flush_tx(s);
                /* A host that hung up mid-session ends it once what it sent has been heard. */
                if (!s->connected && gw_pace_queued(s->pace) == 0 && s->in_batch) {
                        if (s->state == ST_HEADER)
                                end_session(s, "ok", NULL); /* end of batch lost */
                        else
                                end_session(s, "hangup", "the host closed the port");
                }
                if (s->linger_until_ns > 0 && s->tx_len == 0 &&
                    (!s->connected || now >= s->linger_until_ns))
                        return 0;

                at = next_timer(s);
                if (gw_pace_next_due(s->pace) < at)
                        at = gw_pace_next_due(s->pace);
                if (!s->connected && s->hup_check_ns < at)
                        at = s->hup_check_ns;
                r = gw_sim_wait(&w, s->connected ? s->master : -1,
                                gw_pace_room(s->pace) > 0 ? POLLIN : 0, at, &signo);
                if (r < 0)
                        return r;
                if (signo) {
                        vlog(s, "signal %u, exiting", signo);
                        if (s->fd >= 0)
                                finish_file(s, "interrupted", "the simulator was stopped");
                        return 0;
                }
                line_input(s, (short) r);
        }
}

static void usage(FILE *f)
{
        fputs(
            "Usage: ymodem-sim [OPTIONS]\n"
            "A simulated YMODEM-1K receiver node on a pseudo-terminal.\n\n"
            "  --link PATH            symlink to the pty (replaced if stale, removed on exit)\n"
            "  --baud N               line rate to simulate, 10 bits per byte (default 115200;\n"
            "                         0 = no pacing)\n"
            "  --out DIR              where received files go (default .)\n"
            "  --report FILE          append the JSON report lines to FILE (default stdout)\n"
            "  --once                 exit after the first session (status 0 when it was ok)\n"
            "  --c-interval MS        'C' prompt interval while waiting (default 1000)\n"
            "  --write-us-per-kb N    flash programming time per KiB before each ACK (default 0)\n"
            "  --byte-timeout MS      inter-byte timeout inside a packet (default 1000)\n"
            "  --idle-timeout MS      a session with no input this long ends (default 10000)\n"
            "  --max-size BYTES       largest image accepted (default 256 MiB)\n"
            "  --control PATH         FIFO (created when missing) or file with fault commands\n"
            "  -v, --verbose          log what happens to stderr\n"
            "  -h, --help             this text\n\n"
            "Faults (once each; also as control commands, one per line, without the dashes):\n"
            "  --drop-byte N          drop the Nth byte received in the session\n"
            "  --corrupt-block N      corrupt data block N once (CRC fails, it is resent)\n"
            "  --delay MS             delay the next reply\n"
            "  --silent               stop answering (until \"resume\" or the session ends)\n"
            "  --cancel-after N       send CAN CAN after acknowledging data block N\n"
            "  --nak-eot              NAK one more EOT than usual\n",
            f);
}

enum {
        OPT_LINK = 256,
        OPT_BAUD,
        OPT_OUT,
        OPT_REPORT,
        OPT_ONCE,
        OPT_C_INTERVAL,
        OPT_WRITE_US,
        OPT_BYTE_TIMEOUT,
        OPT_IDLE_TIMEOUT,
        OPT_MAX_SIZE,
        OPT_CONTROL,
        OPT_FAULT,
};

static int parse_args(struct sim *s, int argc, char **argv)
{
        static const struct option opts[] = {
            {"link", required_argument, NULL, OPT_LINK},
            {"baud", required_argument, NULL, OPT_BAUD},
            {"out", required_argument, NULL, OPT_OUT},
            {"report", required_argument, NULL, OPT_REPORT},
            {"once", no_argument, NULL, OPT_ONCE},
            {"c-interval", required_argument, NULL, OPT_C_INTERVAL},
            {"write-us-per-kb", required_argument, NULL, OPT_WRITE_US},
            {"byte-timeout", required_argument, NULL, OPT_BYTE_TIMEOUT},
            {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
            {"max-size", required_argument, NULL, OPT_MAX_SIZE},
            {"control", required_argument, NULL, OPT_CONTROL},
            {"drop-byte", required_argument, NULL, OPT_FAULT},
            {"corrupt-block", required_argument, NULL, OPT_FAULT},
            {"delay", required_argument, NULL, OPT_FAULT},
            {"silent", no_argument, NULL, OPT_FAULT},
            {"cancel-after", required_argument, NULL, OPT_FAULT},
            {"nak-eot", no_argument, NULL, OPT_FAULT},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        uint64_t v;
        int c, idx;

        for (;;) {
                idx = -1;
                c = getopt_long(argc, argv, "vh", opts, &idx);
                if (c < 0)
                        break;
                switch (c) {
                case OPT_LINK:
                        s->link = optarg;
                        break;
                case OPT_BAUD:
                        if (gw_sim_parse_u64(optarg, 10, 20000000, &v) < 0)
                                goto bad;
                        s->baud = (uint32_t) v;
                        break;
                case OPT_OUT:
                        s->out_dir = optarg;
                        break;
                case OPT_REPORT:
                        s->report_path = optarg;
                        break;
                case OPT_ONCE:
                        s->once = true;
                        break;
                case OPT_C_INTERVAL:
                        if (gw_sim_parse_u64(optarg, 10, 60000, &s->c_interval_ms) < 0 ||
                            s->c_interval_ms == 0)
                                goto bad;
                        break;
                case OPT_WRITE_US:
                        if (gw_sim_parse_u64(optarg, 10, 10000000, &s->write_us_per_kb) < 0)
                                goto bad;
                        break;
                case OPT_BYTE_TIMEOUT:
                        if (gw_sim_parse_u64(optarg, 10, 60000, &s->byte_timeout_ms) < 0 ||
                            s->byte_timeout_ms == 0)
                                goto bad;
                        break;
                case OPT_IDLE_TIMEOUT:
                        if (gw_sim_parse_u64(optarg, 10, 3600000, &s->idle_timeout_ms) < 0 ||
                            s->idle_timeout_ms == 0)
                                goto bad;
                        break;
                case OPT_MAX_SIZE:
                        if (gw_sim_parse_u64(optarg, 10, 1ULL << 40, &s->max_size) < 0 ||
                            s->max_size == 0)
                                goto bad;
                        break;
                case OPT_CONTROL:
                        s->control_path = optarg;
                        break;
                case OPT_FAULT:
                        if (idx < 0 || apply_command(s, opts[idx].name, optarg) < 0)
                                goto bad;
                        break;
                case 'v':
                        s->verbose = true;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "ymodem-sim: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
bad:
        fprintf(stderr, "ymodem-sim: invalid value for --%s: \"%s\"\n",
                idx >= 0 ? opts[idx].name : "?", optarg ? optarg : "");
        return -EINVAL;
}

int main(int argc, char **argv)
{
        struct sim s = {
            .baud = 115200,
            .out_dir = ".",
            .c_interval_ms = 1000,
            .byte_timeout_ms = 1000,
            .idle_timeout_ms = 10000,
            .max_size = DEFAULT_MAX_SIZE,
            .master = -1,
            .out_dirfd = -1,
            .sigfd = -1,
            .fd = -1,
            .report = stdout,
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
        int r, status = EXIT_FAILURE;

        if (parse_args(&s, argc, argv) < 0)
                return 2;
        s.sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        if (s.sigfd < 0) {
                fprintf(stderr, "ymodem-sim: signalfd: %s\n", strerror(-s.sigfd));
                return EXIT_FAILURE;
        }
        s.out_dirfd = open(s.out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s.out_dirfd < 0) {
                fprintf(stderr, "ymodem-sim: cannot open %s: %m\n", s.out_dir);
                goto out;
        }
        if (s.report_path) {
                s.report = fopen(s.report_path, "ae");
                if (!s.report) {
                        fprintf(stderr, "ymodem-sim: cannot open %s: %m\n", s.report_path);
                        goto out;
                }
        }
        if (s.control_path) {
                r = gw_sim_control_open(&s.ctl, s.control_path);
                if (r < 0) {
                        fprintf(stderr, "ymodem-sim: cannot open control %s: %s\n", s.control_path,
                                strerror(-r));
                        goto out;
                }
        }
        r = gw_pace_new(s.baud, 10, RX_QUEUE, &s.pace);
        if (r >= 0)
                r = gw_sim_pty_open("ymodem-sim", s.link, s.slave, sizeof(s.slave), &s.master);
        if (r < 0)
                goto out;
        vlog(&s, "serving %s%s%s at %u baud", s.slave, s.link ? " as " : "", s.link ? s.link : "",
             s.baud);
        if (!s.link)
                fprintf(stderr, "ymodem-sim: %s\n", s.slave);
        {
                /* --silent holds from the start: the first session must not clear it. */
                bool silent = s.faults.silent;

                reset_session(&s);
                s.faults.silent = silent;
        }
        s.last_rx_ns = gw_sim_now_ns();
        r = run(&s);
        if (r < 0)
                fprintf(stderr, "ymodem-sim: %s\n", strerror(-r));
        else
                status = s.failed ? EXIT_FAILURE : EXIT_SUCCESS;
out:
        gw_sim_pty_unlink(s.link, s.slave);
        if (s.fd >= 0)
                close(s.fd);
        if (s.master >= 0)
                close(s.master);
        gw_sim_control_done(&s.ctl);
        if (s.report && s.report != stdout)
                fclose(s.report);
        if (s.out_dirfd >= 0)
                close(s.out_dirfd);
        gw_pace_free(s.pace);
        close(s.sigfd);
        return status;
}
