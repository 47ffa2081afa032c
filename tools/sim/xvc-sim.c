/* xvc-sim: a Xilinx Virtual Cable (XVC 1.0) server on 127.0.0.1 in front of a simulated JTAG
 * chain of one Xilinx 7-series FPGA (an XC7A35T by its IDCODE), for openFPGALoader's xvc-client
 * in the exec protocol's tests. The TAP follows IEEE 1149.1; the configuration logic follows
 * what UG470 says of JTAG configuration: JPROGRAM clears the configuration memory (INIT
 * completes some TCKs later), CFG_IN takes the bitstream's 32-bit words (sync word, type 1 and
 * type 2 packets, the IDCODE check, the CRC, commands, frame data), JSTART lets the startup
 * sequence run on TCK in Run-Test/Idle, and the instruction capture shows INIT and DONE. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

#define PROG "xvc-sim"

/* The vector length getinfo announces: openFPGALoader takes half of it for TMS and half for
 * TDI; a shift of up to this many bytes per vector is accepted. */
#define DEFAULT_VECTOR_LEN 2048
#define VECTOR_LEN_MAX     65536
#define CMD_MAX            16

#define DEFAULT_IDCODE 0x0362d093u /* XC7A35T */
#define IR_LEN         6
/* 7-series instructions (UG470, the JTAG chapter; 6-bit IR). */
#define IR_CFG_OUT   0x04
#define IR_CFG_IN    0x05
#define IR_USERCODE  0x08
#define IR_IDCODE    0x09
#define IR_JPROGRAM  0x0b
#define IR_JSTART    0x0c
#define IR_JSHUTDOWN 0x0d
#define IR_BYPASS    0x3f

/* Configuration registers and commands (UG470, configuration packets). */
#define REG_CRC    0x00
#define REG_FAR    0x01
#define REG_FDRI   0x02
#define REG_CMD    0x04
#define REG_STAT   0x07
#define REG_IDCODE 0x0c
#define REG_MAX    0x20

#define CMD_WCFG    0x01
#define CMD_START   0x05
#define CMD_RCRC    0x07
#define CMD_DESYNC  0x0d
#define SYNC_WORD   0xaa995566u
#define CRC32C_POLY 0x82f63b78u /* reflected Castagnoli */
#define CONFIG_MAX  (64u * 1024u * 1024u)
#define READ_QUEUE  64

/* How long things take, in TCK cycles: clearing the configuration memory after JPROGRAM, and
 * the startup sequence (phases 0 to 7) under JSTART. */
#define CLEAR_TCKS   1000
#define STARTUP_TCKS 8

enum tap_state {
        TLR,
        RTI,
        SELECT_DR,
        CAPTURE_DR,
        SHIFT_DR,
        EXIT1_DR,
        PAUSE_DR,
        EXIT2_DR,
        UPDATE_DR,
        SELECT_IR,
        CAPTURE_IR,
        SHIFT_IR,
        EXIT1_IR,
        PAUSE_IR,
        EXIT2_IR,
        UPDATE_IR,
        _TAP_STATE_MAX,
};

/* The next state for TMS 0 and TMS 1 (IEEE 1149.1, the TAP controller). */
static const uint8_t next_state[_TAP_STATE_MAX][2] = {
    [TLR] = {RTI, TLR},
    [RTI] = {RTI, SELECT_DR},
    [SELECT_DR] = {CAPTURE_DR, SELECT_IR},
    [CAPTURE_DR] = {SHIFT_DR, EXIT1_DR},
    [SHIFT_DR] = {SHIFT_DR, EXIT1_DR},
    [EXIT1_DR] = {PAUSE_DR, UPDATE_DR},
    [PAUSE_DR] = {PAUSE_DR, EXIT2_DR},
    [EXIT2_DR] = {SHIFT_DR, UPDATE_DR},
    [UPDATE_DR] = {RTI, SELECT_DR},
    [SELECT_IR] = {CAPTURE_IR, TLR},
    [CAPTURE_IR] = {SHIFT_IR, EXIT1_IR},
    [SHIFT_IR] = {SHIFT_IR, EXIT1_IR},
    [EXIT1_IR] = {PAUSE_IR, UPDATE_IR},
    [PAUSE_IR] = {PAUSE_IR, EXIT2_IR},
    [EXIT2_IR] = {SHIFT_IR, UPDATE_IR},
    [UPDATE_IR] = {RTI, SELECT_DR},
};

enum cfg_state {
        CFG_SYNC_WAIT, /* looking for the sync word */
        CFG_HEADER,    /* a packet header comes next */
        CFG_WRITE,     /* data words of a write */
};

struct fpga {
        uint32_t idcode;
        bool init_stuck; /* fault: INIT never completes after JPROGRAM */

        /* TAP */
        enum tap_state state;
        uint8_t ir, ir_shift;
        uint64_t dr_shift; /* the selected data register while it shifts */
        unsigned dr_len;   /* its length; 0: CFG_IN or CFG_OUT */

        /* Configuration */
        bool init_complete; /* INIT_B high: the memory is clear, a bitstream may come */
        uint64_t clear_left;
        bool done;
        bool start_pending; /* START was commanded: the startup sequence may run */
        unsigned startup_tcks;
        bool crc_error, id_error, id_ok, wcfg;
        enum cfg_state cfg;
        uint32_t word;
        unsigned word_bits;
        unsigned reg;
        uint64_t words_left;
        uint32_t crc;
        uint32_t regs[REG_MAX];
        uint8_t *config; /* frame data written through FDRI, as bytes (big-endian words) */
        size_t config_len;
        uint32_t read_queue[READ_QUEUE];
        unsigned read_n, read_pos;
        uint32_t out_word;
        unsigned out_bits;

        /* Counters for the report */
        uint64_t tcks, shifts, connections, jprograms, jstarts, syncs, crc_checks, packets,
            bad_packets, fdri_words;
};

struct opts {
        const char *port_file;
        const char *report;
        const char *config_dump;
        uint64_t port;
        uint64_t vector_len;
        uint64_t disconnect_at; /* close the connection at this shift command (0: never) */
        bool pace;              /* take as long as the TCKs would at the period set */
        bool once;
        bool verbose;
};

/* ---- The configuration logic ------------------------------------------------------------- */

/* One 37-bit step of the configuration CRC: the register address (5 bits) above the data
 * word, least significant bit first, into a reflected CRC-32C. */
static uint32_t cfg_crc(uint32_t crc, unsigned reg, uint32_t data)
{
        uint64_t v = ((uint64_t) (reg & 0x1f) << 32) | data;

        for (int i = 0; i < 37; i++) {
                bool fb = ((crc ^ (uint32_t) (v >> i)) & 1) != 0;

                crc >>= 1;
                if (fb)
                        crc ^= CRC32C_POLY;
        }
        return crc;
}

static uint32_t stat_word(const struct fpga *f)
{
        return (f->crc_error ? 1u << 0 : 0) | (f->init_complete ? 1u << 11 : 0) |
               (f->init_complete && !f->crc_error ? 1u << 12 : 0) | (f->done ? 1u << 13 : 0) |
               (f->done ? 1u << 14 : 0) | (f->id_error ? 1u << 15 : 0) |
               ((f->done ? 4u : 0u) << 18);
}

static void config_reset(struct fpga *f)
{
        f->done = f->start_pending = f->crc_error = f->id_error = f->id_ok = f->wcfg = false;
        f->startup_tcks = 0;
        f->cfg = CFG_SYNC_WAIT;
        f->word = 0;
        f->word_bits = 0;
        f->crc = 0;
        f->read_n = f->read_pos = 0;
        memset(f->regs, 0, sizeof(f->regs));
        f->config_len = 0;
}

static void write_reg(struct fpga *f, unsigned reg, uint32_t w)
{
        if (reg != REG_CRC)
                f->crc = cfg_crc(f->crc, reg, w);
        if (reg < REG_MAX)
                f->regs[reg] = w;
        switch (reg) {
        case REG_CRC:
                if (w != f->crc)
                        f->crc_error = true;
                else
                        f->crc_checks++;
                break;
        case REG_IDCODE:
                /* The version nibble does not count. */
                if ((w & 0x0fffffffu) == (f->idcode & 0x0fffffffu))
                        f->id_ok = true;
                else
                        f->id_error = true;
                break;
        case REG_FDRI:
                f->fdri_words++;
                /* Frame data before a matching IDCODE is an ID error: nothing is written. */
                if (!f->id_ok)
                        f->id_error = true;
                if (f->id_error || f->crc_error || !f->wcfg || f->config_len + 4 > CONFIG_MAX)
                        break;
                if ((f->config_len & 0xffff) == 0) {
                        uint8_t *p = realloc(f->config, f->config_len + 0x10000);

                        if (!p)
                                break;
                        f->config = p;
                }
                for (int i = 0; i < 4; i++)
                        f->config[f->config_len++] = (uint8_t) (w >> (24 - 8 * i));
                break;
        case REG_CMD:
                switch (w & 0x1f) {
                case CMD_RCRC:
                        f->crc = 0;
                        break;
                case CMD_WCFG:
                        f->wcfg = true;
                        break;
                case CMD_START:
                        f->start_pending = true;
                        break;
                case CMD_DESYNC:
                        f->cfg = CFG_SYNC_WAIT;
                        break;
                default:
                        break;
                }
                break;
        default:
                break;
        }
}

/* A read packet: the register's value, word count times, for CFG_OUT. */
static void read_reg(struct fpga *f, unsigned reg, uint64_t count)
{
        for (uint64_t i = 0; i < count && f->read_n < READ_QUEUE; i++)
                f->read_queue[f->read_n++] = reg == REG_STAT     ? stat_word(f)
                                             : reg == REG_IDCODE ? f->idcode
                                                                 : f->regs[reg];
}

/* One 32-bit word from CFG_IN. */
static void config_word(struct fpga *f, uint32_t w)
{
        unsigned type, op;
        uint64_t count;

        switch (f->cfg) {
        case CFG_SYNC_WAIT:
                if (w == SYNC_WORD) {
                        f->cfg = CFG_HEADER;
                        f->syncs++;
                }
                return;
        case CFG_WRITE:
                write_reg(f, f->reg, w);
                if (--f->words_left == 0 && f->cfg == CFG_WRITE)
                        f->cfg = CFG_HEADER;
                return;
        case CFG_HEADER:
                break;
        }
        f->packets++;
        type = w >> 29;
        op = (w >> 27) & 3;
        if (type == 1) {
                f->reg = (w >> 13) & 0x1f;
                count = w & 0x7ff;
        } else if (type == 2) {
                count = w & 0x7ffffff;
        } else {
                f->bad_packets++;
                return;
        }
        if (op == 2 && count > 0) {
                f->words_left = count;
                f->cfg = CFG_WRITE;
        } else if (op == 1) {
                read_reg(f, f->reg, count);
        }
}

/* ---- The TAP -------------------------------------------------------------------------------- */

/* The instruction capture: DONE, INIT complete, ISC_ENABLED, ISC_DONE, then 0 1. */
static uint8_t ir_capture(const struct fpga *f)
{
        return (uint8_t) ((f->done ? 0x20 : 0) | (f->init_complete && !f->crc_error ? 0x10 : 0) |
                          (f->done ? 0x04 : 0) | 0x01);
}

static void capture_dr(struct fpga *f)
{
        switch (f->ir) {
        case IR_IDCODE:
                f->dr_shift = f->idcode;
                f->dr_len = 32;
                break;
        case IR_USERCODE:
                f->dr_shift = 0xffffffffu;
                f->dr_len = 32;
                break;
        case IR_CFG_IN:
        case IR_CFG_OUT:
                f->dr_len = 0;
                break;
        default: /* BYPASS and everything modelled as it */
                f->dr_shift = 0;
                f->dr_len = 1;
                break;
        }
}

static int shift_dr(struct fpga *f, int tdi)
{
        int tdo;

        if (f->ir == IR_CFG_IN) {
                /* Until INIT completes the configuration logic takes nothing. */
                if (!f->init_complete)
                        return 0;
                /* The bitstream's words arrive most significant bit first. */
                f->word = (f->word << 1) | (uint32_t) tdi;
                if (++f->word_bits == 32) {
                        config_word(f, f->word);
                        f->word_bits = 0;
                        f->word = 0;
                }
                return 0;
        }
        if (f->ir == IR_CFG_OUT) {
                if (f->out_bits == 0) {
                        f->out_word = f->read_pos < f->read_n ? f->read_queue[f->read_pos++] : 0;
                        f->out_bits = 32;
                }
                tdo = (int) (f->out_word >> 31);
                f->out_word <<= 1;
                f->out_bits--;
                return tdo;
        }
        tdo = (int) (f->dr_shift & 1);
        f->dr_shift = (f->dr_shift >> 1) | ((uint64_t) tdi << (f->dr_len - 1));
        return tdo;
}

static void update_ir(struct fpga *f)
{
        f->ir = f->ir_shift;
        f->out_bits = 0;
        switch (f->ir) {
        case IR_JPROGRAM:
                f->jprograms++;
                config_reset(f);
                f->init_complete = false;
                f->clear_left = CLEAR_TCKS;
                break;
        case IR_JSTART:
                f->jstarts++;
                break;
        case IR_JSHUTDOWN:
                f->done = false;
                break;
        case IR_CFG_OUT:
                f->read_pos = 0;
                break;
        case IR_CFG_IN:
                f->word = 0;
                f->word_bits = 0;
                f->read_n = f->read_pos = 0;
                break;
        default:
                break;
        }
}

/* One TCK with tms and tdi; returns TDO. */
static int clock_tck(struct fpga *f, int tms, int tdi)
{
        int tdo = 1;

        f->tcks++;
        if (f->clear_left > 0 && !f->init_stuck && --f->clear_left == 0)
                f->init_complete = true;
        switch (f->state) {
        case CAPTURE_IR:
                f->ir_shift = ir_capture(f);
                break;
        case SHIFT_IR:
                tdo = f->ir_shift & 1;
                f->ir_shift = (uint8_t) ((f->ir_shift >> 1) | (tdi << (IR_LEN - 1)));
                break;
        case CAPTURE_DR:
                capture_dr(f);
                break;
        case SHIFT_DR:
                tdo = shift_dr(f, tdi);
                break;
        case RTI:
                if (f->ir == IR_JSTART && f->start_pending && !f->done && !f->crc_error &&
                    !f->id_error && ++f->startup_tcks >= STARTUP_TCKS)
                        f->done = true;
                break;
        default:
                break;
        }
        f->state = next_state[f->state][tms & 1];
        if (f->state == UPDATE_IR)
                update_ir(f);
        else if (f->state == TLR)
                f->ir = IR_IDCODE;
        return tdo;
}

/* ---- The cable --------------------------------------------------------------------------------
 */

static volatile sig_atomic_t stop_requested;
static const struct opts *the_opts;
static struct fpga *the_fpga;

static void report(const struct opts *o, const struct fpga *f);

/* A signal arrived: SIGUSR1 asks for the report, the others to stop. */
static void take_signal(int sigfd)
{
        struct signalfd_siginfo si;

        if (read(sigfd, &si, sizeof(si)) != (ssize_t) sizeof(si))
                return;
        if (si.ssi_signo == SIGUSR1)
                report(the_opts, the_fpga);
        else
                stop_requested = 1;
}

/* Reads exactly n bytes, or fails (0: the peer closed, -1: an error or a signal to stop). */
static int read_full(int fd, int sigfd, void *buf, size_t n)
{
        size_t got = 0;

        while (got < n) {
                struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
                                      {.fd = sigfd, .events = POLLIN}};
                ssize_t k;

                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -1;
                }
                if (p[1].revents) {
                        take_signal(sigfd);
                        if (stop_requested)
                                return -1;
                        continue;
                }
                /* Clients send a command and its vectors in separate writes: an ACK delayed
                 * between them would cost each shift 40 ms (Nagle on their side). */
                setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &(int){1}, sizeof(int));
                k = read(fd, (uint8_t *) buf + got, n - got);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k == 0 && got == 0 ? 0 : -1;
                got += (size_t) k;
        }
        return 1;
}

static int write_full(int fd, const void *buf, size_t n)
{
        size_t done = 0;

        while (done < n) {
                ssize_t k = send(fd, (const uint8_t *) buf + done, n - done, MSG_NOSIGNAL);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -1;
                done += (size_t) k;
        }
        return 0;
}

static const char *state_name(enum tap_state s)
{
        static const char *const names[_TAP_STATE_MAX] = {
            "test-logic-reset", "run-test-idle", "select-dr",  "capture-dr",
            "shift-dr",         "exit1-dr",      "pause-dr",   "exit2-dr",
            "update-dr",        "select-ir",     "capture-ir", "shift-ir",
            "exit1-ir",         "pause-ir",      "exit2-ir",   "update-ir"};

        return (unsigned) s < _TAP_STATE_MAX ? names[s] : "?";
}

/* The report, written atomically. */
static void report(const struct opts *o, const struct fpga *f)
{
        char tmp[4096];
        json_t *j;
        FILE *out;

        if (o->config_dump) {
                snprintf(tmp, sizeof(tmp), "%s.tmp", o->config_dump);
                out = fopen(tmp, "we");
                if (out) {
                        if (f->config_len)
                                fwrite(f->config, 1, f->config_len, out);
                        if (fclose(out) == 0)
                                rename(tmp, o->config_dump);
                }
        }
        if (!o->report)
                return;
        j = json_pack("{s:s, s:s, s:s, s:b, s:b, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
                      " s:I, s:s}",
                      "device", "xc7a35t", "idcode", "", "tap_state", state_name(f->state), "done",
                      f->done, "init_complete", f->init_complete, "crc_error", f->crc_error,
                      "id_error", f->id_error, "config_bytes", (json_int_t) f->config_len,
                      "fdri_words", (json_int_t) f->fdri_words, "crc_checks",
                      (json_int_t) f->crc_checks, "syncs", (json_int_t) f->syncs, "jprogram",
                      (json_int_t) f->jprograms, "jstart", (json_int_t) f->jstarts, "tck",
                      (json_int_t) f->tcks, "shifts", (json_int_t) f->shifts, "connections",
                      (json_int_t) f->connections, "ir", "");
        if (!j)
                return;
        snprintf(tmp, sizeof(tmp), "0x%08" PRIx32, f->idcode);
        json_object_set_new(j, "idcode", json_string(tmp));
        snprintf(tmp, sizeof(tmp), "0x%02x", f->ir);
        json_object_set_new(j, "ir", json_string(tmp));
        json_object_set_new(j, "stat", json_integer(stat_word(f)));
        snprintf(tmp, sizeof(tmp), "%s.tmp", o->report);
        if (json_dump_file(j, tmp, JSON_COMPACT | JSON_PRESERVE_ORDER) == 0)
                rename(tmp, o->report);
        json_decref(j);
}

/* Serves one client until it closes, fails, or the process must stop. */
static void serve(const struct opts *o, struct fpga *f, int fd, int sigfd)
{
        uint8_t *tms = malloc(o->vector_len), *tdi = malloc(o->vector_len),
                *tdo = malloc(o->vector_len);
        uint64_t shifts = 0, period_ns = 0, paced_tcks = 0;
        struct timespec t0;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        f->connections++;
        gw_sim_log(o->verbose, PROG, "client connected");
        while (tms && tdi && tdo && !stop_requested) {
                char cmd[CMD_MAX + 1];
                size_t n = 0;
                int r;

                /* The command, up to and including its ':'. */
                while (n < CMD_MAX) {
                        r = read_full(fd, sigfd, cmd + n, 1);
                        if (r <= 0)
                                goto out;
                        if (cmd[n++] == ':')
                                break;
                }
                cmd[n] = '\0';
                if (strcmp(cmd, "getinfo:") == 0) {
                        char info[64];
                        int len = snprintf(info, sizeof(info), "xvcServer_v1.0:%" PRIu64 "\n",
                                           o->vector_len);

                        if (write_full(fd, info, (size_t) len) < 0)
                                goto out;
                } else if (strcmp(cmd, "settck:") == 0) {
                        uint8_t period[4];

                        /* Any period is fine: the answer is the period in effect. */
                        if (read_full(fd, sigfd, period, 4) <= 0 || write_full(fd, period, 4) < 0)
                                goto out;
                        period_ns = (uint64_t) period[0] | (uint64_t) period[1] << 8 |
                                    (uint64_t) period[2] << 16 | (uint64_t) period[3] << 24;
                        clock_gettime(CLOCK_MONOTONIC, &t0);
                        paced_tcks = 0;
                } else if (strcmp(cmd, "shift:") == 0) {
                        uint8_t len[4];
                        uint32_t bits;
                        size_t bytes;

                        if (read_full(fd, sigfd, len, 4) <= 0)
                                goto out;
                        bits = (uint32_t) len[0] | (uint32_t) len[1] << 8 |
                               (uint32_t) len[2] << 16 | (uint32_t) len[3] << 24;
                        bytes = (bits + 7u) / 8u;
                        if (bytes > o->vector_len) {
                                gw_sim_log(o->verbose, PROG, "shift of %" PRIu32 " bits refused",
                                           bits);
                                goto out;
                        }
                        if (read_full(fd, sigfd, tms, bytes) <= 0 ||
                            read_full(fd, sigfd, tdi, bytes) <= 0)
                                goto out;
                        if (o->disconnect_at && ++shifts >= o->disconnect_at) {
                                gw_sim_log(o->verbose, PROG, "fault: cable gone at shift %" PRIu64,
                                           shifts);
                                goto out;
                        }
                        memset(tdo, 0, bytes);
                        for (uint32_t i = 0; i < bits; i++) {
                                int b = clock_tck(f, (tms[i / 8] >> (i % 8)) & 1,
                                                  (tdi[i / 8] >> (i % 8)) & 1);

                                tdo[i / 8] |= (uint8_t) (b << (i % 8));
                        }
                        f->shifts++;
                        paced_tcks += bits;
                        if (o->pace && period_ns) {
                                /* Answer when the cable would have clocked them all. */
                                uint64_t at = (uint64_t) t0.tv_sec * 1000000000u +
                                              (uint64_t) t0.tv_nsec + paced_tcks * period_ns;
                                struct timespec ts = {.tv_sec = (time_t) (at / 1000000000u),
                                                      .tv_nsec = (long) (at % 1000000000u)};

                                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
                                       EINTR)
                                        ;
                        }
                        if (write_full(fd, tdo, bytes) < 0)
                                goto out;
                } else {
                        gw_sim_log(o->verbose, PROG, "unknown command '%s'", cmd);
                        goto out;
                }
        }
out:
        gw_sim_log(o->verbose, PROG, "client gone (%" PRIu64 " TCKs so far, DONE %d)", f->tcks,
                   f->done);
        free(tms);
        free(tdi);
        free(tdo);
        close(fd);
        report(o, f);
}

static int listen_on(const struct opts *o)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t) o->port)};
        socklen_t alen = sizeof(a);
        int fd, one = 1;

        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(fd, 1) < 0 ||
            getsockname(fd, (struct sockaddr *) &a, &alen) < 0) {
                close(fd);
                return -1;
        }
        if (o->port_file) {
                char tmp[4096];
                FILE *pf;

                snprintf(tmp, sizeof(tmp), "%s.tmp", o->port_file);
                pf = fopen(tmp, "we");
                if (!pf || fprintf(pf, "%u\n", ntohs(a.sin_port)) < 0 || fclose(pf) != 0 ||
                    rename(tmp, o->port_file) < 0) {
                        close(fd);
                        return -1;
                }
        } else {
                printf("%u\n", ntohs(a.sin_port));
                fflush(stdout);
        }
        return fd;
}

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: " PROG " [OPTIONS]\n"
                "\n"
                "A Xilinx Virtual Cable 1.0 server on 127.0.0.1 whose JTAG chain holds one\n"
                "simulated Xilinx 7-series FPGA (IDCODE 0x0362d093, an XC7A35T), configurable\n"
                "through JTAG as UG470 describes: JPROGRAM, CFG_IN with the bitstream, JSTART.\n"
                "\n"
                "  --port N            TCP port (default 0: any free one)\n"
                "  --port-file FILE    write the port there once listening (else on stdout)\n"
                "  --report FILE       the FPGA's state as JSON, after each client and at exit\n"
                "  --config-dump FILE  the frame data written through FDRI, likewise\n"
                "  --idcode N          another IDCODE for the device\n"
                "  --vector-len N      the vector length getinfo announces (default 2048)\n"
                "  --once              exit after the first client\n"
                "  --pace              answer each shift when the TCKs it holds would have\n"
                "                      taken at the period settck set (real time)\n"
                "  -v, --verbose       log to stderr\n"
                "Faults:\n"
                "  --init-stuck        INIT never completes after JPROGRAM\n"
                "  --disconnect-at N   drop the client at its Nth shift command\n"
                "\n"
                "SIGTERM or SIGINT: write the report and exit 0. SIGUSR1: write it now.\n");
}

int main(int argc, char **argv)
{
        enum {
                OPT_PORT = 256,
                OPT_PORT_FILE,
                OPT_REPORT,
                OPT_CONFIG_DUMP,
                OPT_IDCODE,
                OPT_VECTOR_LEN,
                OPT_ONCE,
                OPT_INIT_STUCK,
                OPT_DISCONNECT_AT,
                OPT_PACE,
        };
        static const struct option longopts[] = {
            {"port", required_argument, NULL, OPT_PORT},
            {"port-file", required_argument, NULL, OPT_PORT_FILE},
            {"report", required_argument, NULL, OPT_REPORT},
            {"config-dump", required_argument, NULL, OPT_CONFIG_DUMP},
            {"idcode", required_argument, NULL, OPT_IDCODE},
            {"vector-len", required_argument, NULL, OPT_VECTOR_LEN},
            {"once", no_argument, NULL, OPT_ONCE},
            {"init-stuck", no_argument, NULL, OPT_INIT_STUCK},
            {"disconnect-at", required_argument, NULL, OPT_DISCONNECT_AT},
            {"pace", no_argument, NULL, OPT_PACE},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGUSR1};
        struct opts o = {.vector_len = DEFAULT_VECTOR_LEN};
        struct fpga f = {.idcode = DEFAULT_IDCODE, .state = TLR, .ir = IR_IDCODE};
        uint64_t v;
        int c, lfd, sigfd, bad = 0;

        while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
                switch (c) {
                case OPT_PORT:
                        bad |= gw_sim_parse_u64(optarg, 10, 65535, &o.port) < 0;
                        break;
                case OPT_PORT_FILE:
                        o.port_file = optarg;
                        break;
                case OPT_REPORT:
                        o.report = optarg;
                        break;
                case OPT_CONFIG_DUMP:
                        o.config_dump = optarg;
                        break;
                case OPT_IDCODE:
                        bad |= gw_sim_parse_u64(optarg, 0, UINT32_MAX, &v) < 0;
                        f.idcode = (uint32_t) v;
                        break;
                case OPT_VECTOR_LEN:
                        bad |= gw_sim_parse_u64(optarg, 0, VECTOR_LEN_MAX, &o.vector_len) < 0 ||
                               o.vector_len < 8;
                        break;
                case OPT_ONCE:
                        o.once = true;
                        break;
                case OPT_INIT_STUCK:
                        f.init_stuck = true;
                        break;
                case OPT_DISCONNECT_AT:
                        bad |= gw_sim_parse_u64(optarg, 10, UINT32_MAX, &o.disconnect_at) < 0;
                        break;
                case OPT_PACE:
                        o.pace = true;
                        break;
                case 'v':
                        o.verbose = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (bad || optind != argc) {
                fprintf(stderr, PROG ": %s\n", bad ? "a bad number" : "no arguments expected");
                usage(stderr);
                return 2;
        }
        the_opts = &o;
        the_fpga = &f;
        /* Powered up: the memory is clear. */
        config_reset(&f);
        f.init_complete = true;
        sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        if (sigfd < 0) {
                fprintf(stderr, PROG ": cannot take signals: %s\n", strerror(-sigfd));
                return 1;
        }
        lfd = listen_on(&o);
        if (lfd < 0) {
                fprintf(stderr, PROG ": cannot listen on 127.0.0.1:%" PRIu64 ": %m\n", o.port);
                return 1;
        }
        report(&o, &f);
        while (!stop_requested) {
                struct pollfd p[2] = {{.fd = lfd, .events = POLLIN},
                                      {.fd = sigfd, .events = POLLIN}};

                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        break;
                if (p[1].revents) {
                        take_signal(sigfd);
                        continue;
                }
                if (p[0].revents) {
                        int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

                        if (cfd < 0)
                                continue;
                        serve(&o, &f, cfd, sigfd);
                        if (o.once)
                                break;
                }
        }
        report(&o, &f);
        close(lfd);
        free(f.config);
        return 0;
}
