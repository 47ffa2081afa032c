/* The stm32 protocol plugin: the STM32 ROM bootloader's USART protocol (ST AN3155) as a state
 * machine fed by received bytes and timer expiries. It enters the bootloader through the modem
 * lines when told how, synchronises with 0x7F, learns the chip (GET, GET_ID), erases the pages
 * the image covers, writes it in 256-byte blocks, reads it back and jumps to it. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/options.h"
#include "gw/plugin.h"

#include "debug.h"
#include "read.h"

#include "stm32-chips.h"

#define ACK  0x79
#define NACK 0x1f
#define SYNC 0x7f /* the autobaud byte */

#define BLOCK_MAX       256 /* bytes per WRITE_MEMORY and READ_MEMORY */
#define GET_COUNT_MAX   63  /* GET's N: a v3.x bootloader says 11; anything far above is noise */
#define ERASE_BATCH_MAX 512 /* pages per extended erase command (our own bound) */
#define LEGACY_PAGES    255 /* pages per legacy erase command: N <= 254, 0xFF is mass erase */
#define TX_MAX          (2 + 2 + 2 * ERASE_BATCH_MAX + 1 + 8)
#define RX_MAX          (2 + BLOCK_MAX + 2)
#define SEQ_MAX         16    /* steps of an entry or exit sequence */
#define SEQ_WAIT_MAX    60000 /* ms, one wait of a sequence */
#define FLASH_SIZE_MAX  (64u * 1024u * 1024u)

/* Quiet time that ends a burst of stray bytes before the next command. */
#define QUIET_MS 50
/* A device that keeps talking this long without a pause is given up on. */
#define QUIET_MAX_MS 3000
/* Filler bytes sent in all to bring a stalled device back to its command loop. */
#define RESYNC_BYTES_MAX 4096
#define RESYNC_BURST_MAX 64
/* A command NACKed this many times in a row right at its command byte, after GET answered,
 * is refused by read protection. */
#define RDP_NACKS 2
/* A verify block that differs is read this many times more before it counts. */
#define VERIFY_REREADS 2

#define DEFAULT_RETRIES          5
#define DEFAULT_TIMEOUT_MS       1000
#define DEFAULT_WRITE_TIMEOUT_MS 1000
#define DEFAULT_INIT_TIMEOUT_MS  2000
#define DEFAULT_INIT_INTERVAL_MS 200
#define DEFAULT_RESYNC_MS        100
#define DEFAULT_ERASE_BATCH      64

enum stm32_state {
        STM32_IDLE,
        STM32_ENTRY, /* driving the modem lines into the bootloader */
        STM32_SYNC,  /* 0x7F sent, waiting for ACK or NACK */
        STM32_GET,   /* the commands below run one bootloader command each */
        STM32_GET_VERSION,
        STM32_GET_ID,
        STM32_FLASH_SIZE, /* READ_MEMORY of the flash size register (or a probe read) */
        STM32_ERASE,
        STM32_WRITE,
        STM32_VERIFY,
        STM32_GO,
        STM32_QUIET,  /* waiting for the device to stop talking */
        STM32_RESYNC, /* filler bytes sent to end a stalled command */
        STM32_EXIT,   /* driving the modem lines back to the application */
        STM32_DONE,
        STM32_FAILED,
        _STM32_STATE_MAX,
};

/* The bootloader commands, indexing cmd_table. */
enum stm32_cmd {
        CMD_GET,
        CMD_GET_VERSION,
        CMD_GET_ID,
        CMD_READ,
        CMD_GO,
        CMD_WRITE,
        CMD_ERASE,
        CMD_EXT_ERASE,
        _CMD_MAX,
};

/* What follows the bytes of a phase. */
enum reply_kind {
        REPLY_ACK,             /* ACK */
        REPLY_ACK_DATA,        /* ACK, then data_len bytes */
        REPLY_ACK_DATA_ACK,    /* ACK, data_len bytes, ACK */
        REPLY_ACK_COUNTED_ACK, /* ACK, N, N + 1 bytes, ACK; N in [count_min, count_max] */
};

struct phase {
        size_t off, len; /* the bytes sent, in xfer.tx */
        enum reply_kind reply;
        size_t data_len;
        uint8_t count_min, count_max;
        uint64_t timeout_ms;
};

/* One bootloader command: its phases, each acknowledged before the next is sent. */
struct xfer {
        enum stm32_cmd cmd;
        uint32_t addr; /* for messages */
        bool has_addr;
        struct phase phases[3];
        unsigned n_phases, cur;
        uint8_t tx[TX_MAX];
        size_t tx_len;
};

/* What QUIET leads to once the line is quiet. */
enum after_quiet {
        QUIET_THEN_GET,    /* several 0x7F were answered: GET */
        QUIET_THEN_RESYNC, /* garbage: fillers, then the command again */
        QUIET_THEN_ALIGN,  /* a burst of fillers was answered: single fillers once more, so that
                            * no half of a command pair stays behind in the device */
};

enum op {
        OP_NONE,
        OP_INSTALL,
        OP_IDENTIFY,
};

struct seq_step {
        bool wait;
        unsigned mask, values; /* GW_LINE_* */
        uint32_t ms;
};

struct seq {
        struct seq_step steps[SEQ_MAX];
        size_t n;
};

struct stm32 {
        const struct gw_proto_host *host;

        /* options */
        uint64_t address;
        bool address_given;
        bool verify, go, mass_erase;
        uint64_t retries_max;
        uint64_t timeout_ms, write_timeout_ms, erase_timeout_ms, mass_erase_timeout_ms;
        uint64_t init_timeout_ms, init_interval_ms, resync_ms;
        uint64_t flash_size_opt; /* 0 = auto: the register, else the table */
        uint64_t page_size_opt;  /* for chips the table does not know */
        uint64_t erase_batch;
        struct seq entry, exit;

        /* the operation */
        enum op op;
        const struct gw_reader *reader;
        struct gw_options *facts;
        enum stm32_state state;
        int error;
        uint64_t deadline;

        /* a modem line sequence in progress */
        const struct seq *seq;
        size_t seq_pos;

        /* synchronisation */
        unsigned syncs_sent;
        uint64_t sync_until;

        /* what the device told */
        uint8_t bl_version;
        uint8_t option_bytes[2];
        bool have_option_bytes;
        uint8_t commands[32]; /* bitmap of the command codes GET listed */
        uint16_t pid;
        bool have_pid;
        const struct gw_stm32_chip *chip;
        struct gw_stm32_chip custom; /* an unknown chip described by options */
        struct gw_stm32_run custom_runs[2];
        struct gw_stm32_timing custom_timing;
        uint32_t flash_size;
        bool read_protected;

        /* the plan */
        uint32_t start;
        uint64_t size, padded;
        size_t page_first, page_count, page_next;
        uint64_t offset; /* image bytes written (or verified) */

        /* the command in flight and its recovery */
        struct xfer x;
        enum stm32_state resume; /* the command state QUIET and RESYNC return to */
        uint64_t attempts;       /* of the command in flight, beyond the first */
        unsigned cmd_nacks;      /* consecutive NACKs of a protected command's command byte */
        char problem[96];        /* what went wrong last with it, for the final message */
        unsigned resync_sent, resync_burst;
        uint64_t quiet_until_max;
        enum after_quiet after_quiet;
        bool protected_ok; /* a protected command went through: read protection is off */
        bool get_asked_again, id_asked_again;
        unsigned rereads; /* of the verify block in flight, after a difference */

        uint8_t rx[RX_MAX];
        size_t rx_len, rx_need;
        uint8_t block[BLOCK_MAX];
};

typedef int (*cmd_done_fn)(struct stm32 *s);

/* The dispatch table of bootloader commands. */
struct cmd_desc {
        uint8_t code;
        const char *name;
        /* Refused by read protection: a NACK of the command byte itself means RDP. */
        bool protected;
        /* The last phase was acknowledged; its reply is in rx. */
        cmd_done_fn done;
};

static int get_done(struct stm32 *s);
static int get_version_done(struct stm32 *s);
static int get_id_done(struct stm32 *s);
static int read_done(struct stm32 *s);
static int go_done(struct stm32 *s);
static int write_done(struct stm32 *s);
static int erase_done(struct stm32 *s);

static const struct cmd_desc cmd_table[_CMD_MAX] = {
    [CMD_GET] = {0x00, "GET", false, get_done},
    [CMD_GET_VERSION] = {0x01, "GET_VERSION", false, get_version_done},
    [CMD_GET_ID] = {0x02, "GET_ID", false, get_id_done},
    [CMD_READ] = {0x11, "READ_MEMORY", true, read_done},
    [CMD_GO] = {0x21, "GO", true, go_done},
    [CMD_WRITE] = {0x31, "WRITE_MEMORY", true, write_done},
    [CMD_ERASE] = {0x43, "ERASE", true, erase_done},
    [CMD_EXT_ERASE] = {0x44, "EXTENDED_ERASE", true, erase_done},
};

static const char *const state_names[_STM32_STATE_MAX] = {
    [STM32_IDLE] = "idle",
    [STM32_ENTRY] = "entry",
    [STM32_SYNC] = "sync",
    [STM32_GET] = "get",
    [STM32_GET_VERSION] = "get-version",
    [STM32_GET_ID] = "get-id",
    [STM32_FLASH_SIZE] = "flash-size",
    [STM32_ERASE] = "erase",
    [STM32_WRITE] = "write",
    [STM32_VERIFY] = "verify",
    [STM32_GO] = "go",
    [STM32_QUIET] = "quiet",
    [STM32_RESYNC] = "resync",
    [STM32_EXIT] = "exit",
    [STM32_DONE] = "done",
    [STM32_FAILED] = "failed",
};

static const char *stm32_state_to_string(enum stm32_state st)
{
        if ((unsigned) st >= _STM32_STATE_MAX)
                return NULL;
        return state_names[st];
}

static void set_state(struct stm32 *s, enum stm32_state st)
{
        if (s->state == st)
                return;
        gw_proto_debug(s->host, "stm32: %s -> %s", stm32_state_to_string(s->state),
                       stm32_state_to_string(st));
        s->state = st;
}

static uint64_t now(struct stm32 *s)
{
        return s->host->now_ms(s->host->ctx);
}

static void arm(struct stm32 *s, uint64_t ms)
{
        s->deadline = now(s) + ms;
        s->host->set_deadline(s->host->ctx, s->deadline);
}

static void disarm(struct stm32 *s)
{
        s->deadline = 0;
        s->host->set_deadline(s->host->ctx, 0);
}

/* Enters FAILED with err, whose reason the core reports; returns err. */
static int fail(struct stm32 *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct stm32 *s, int err, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(s->host, "stm32: %s", msg);
        if (s->host->set_error)
                s->host->set_error(s->host->ctx, "%s", msg);
        s->error = err;
        set_state(s, STM32_FAILED);
        disarm(s);
        return err;
}

static int succeed(struct stm32 *s)
{
        set_state(s, STM32_DONE);
        disarm(s);
        return GW_PROTO_DONE;
}

static int result(const struct stm32 *s)
{
        if (s->state == STM32_DONE)
                return GW_PROTO_DONE;
        if (s->state == STM32_FAILED)
                return s->error;
        return GW_PROTO_CONTINUE;
}

static bool ended(const struct stm32 *s)
{
        return s->state == STM32_IDLE || s->state == STM32_DONE || s->state == STM32_FAILED;
}

static bool has_command(const struct stm32 *s, enum stm32_cmd c)
{
        uint8_t code = cmd_table[c].code;

        return s->commands[code / 8] & (1u << (code % 8));
}

static int send(struct stm32 *s, const uint8_t *buf, size_t n)
{
        int r = s->host->write(s->host->ctx, buf, n);

        if (r < 0)
                return fail(s, r, "writing to the link failed: %s", strerror(-r));
        return 0;
}

static void flush_input(struct stm32 *s)
{
        if (s->host->flush_input)
                s->host->flush_input(s->host->ctx);
}

static void report_progress(struct stm32 *s)
{
        if (s->host->progress && s->reader)
                s->host->progress(s->host->ctx, s->offset, s->size);
}

/* Modem line sequences. */

static int after_entry(struct stm32 *s);
static int after_exit(struct stm32 *s);

/* Runs the sequence from seq_pos: line changes at once, a wait arms the timer. */
static int seq_run(struct stm32 *s)
{
        while (s->seq_pos < s->seq->n) {
                const struct seq_step *st = &s->seq->steps[s->seq_pos++];
                int r;

                if (st->wait) {
                        arm(s, st->ms);
                        return GW_PROTO_CONTINUE;
                }
                r = s->host->set_lines ? s->host->set_lines(s->host->ctx, st->mask, st->values)
                                       : -ENOTTY;
                if (r == -ENOTTY)
                        return fail(s, r,
                                    "the port has no modem lines (a pseudo-terminal?); drop the "
                                    "%s option or use a real adapter",
                                    s->state == STM32_ENTRY ? "entry" : "exit");
                if (r < 0)
                        return fail(s, r, "setting the modem lines failed: %s", strerror(-r));
                gw_proto_debug(s->host, "stm32: lines dtr=%d rts=%d", !!(st->values & GW_LINE_DTR),
                               !!(st->values & GW_LINE_RTS));
        }
        return s->state == STM32_ENTRY ? after_entry(s) : after_exit(s);
}

static int seq_start(struct stm32 *s, enum stm32_state st, const struct seq *seq)
{
        set_state(s, st);
        s->seq = seq;
        s->seq_pos = 0;
        return seq_run(s);
}

/* Synchronisation. */

static int send_sync(struct stm32 *s)
{
        static const uint8_t b = SYNC;
        int r;

        s->syncs_sent++;
        r = send(s, &b, 1);
        if (r < 0)
                return r;
        arm(s, s->init_interval_ms);
        return GW_PROTO_CONTINUE;
}

static int start_sync(struct stm32 *s)
{
        set_state(s, STM32_SYNC);
        s->syncs_sent = 0;
        s->sync_until = now(s) + s->init_timeout_ms;
        flush_input(s);
        return send_sync(s);
}

static int after_entry(struct stm32 *s)
{
        return start_sync(s);
}

/* Commands. */

static uint8_t xor_of(const uint8_t *p, size_t n, uint8_t x)
{
        for (size_t i = 0; i < n; i++)
                x ^= p[i];
        return x;
}

static void xfer_begin(struct stm32 *s, enum stm32_cmd c)
{
        s->x.cmd = c;
        s->x.has_addr = false;
        s->x.n_phases = 0;
        s->x.cur = 0;
        s->x.tx[0] = cmd_table[c].code;
        s->x.tx[1] = (uint8_t) ~cmd_table[c].code;
        s->x.tx_len = 2;
        s->x.phases[0] =
            (struct phase){.off = 0, .len = 2, .reply = REPLY_ACK, .timeout_ms = s->timeout_ms};
        s->x.n_phases = 1;
}

/* Appends a phase of n bytes from p (NULL: already in place at the end of tx). */
static struct phase *xfer_phase(struct stm32 *s, const uint8_t *p, size_t n)
{
        struct phase *ph = &s->x.phases[s->x.n_phases++];

        if (p)
                memcpy(s->x.tx + s->x.tx_len, p, n);
        *ph = (struct phase){
            .off = s->x.tx_len, .len = n, .reply = REPLY_ACK, .timeout_ms = s->timeout_ms};
        s->x.tx_len += n;
        return ph;
}

static void xfer_addr(struct stm32 *s, uint32_t addr)
{
        uint8_t a[5] = {(uint8_t) (addr >> 24), (uint8_t) (addr >> 16), (uint8_t) (addr >> 8),
                        (uint8_t) addr, 0};

        a[4] = xor_of(a, 4, 0);
        s->x.addr = addr;
        s->x.has_addr = true;
        xfer_phase(s, a, sizeof(a));
}

/* Sends the phase in flight and waits for its reply. */
static int send_phase(struct stm32 *s)
{
        const struct phase *ph = &s->x.phases[s->x.cur];
        int r;

        s->rx_len = 0;
        s->rx_need = 1;
        r = send(s, s->x.tx + ph->off, ph->len);
        if (r < 0)
                return r;
        arm(s, ph->timeout_ms);
        return GW_PROTO_CONTINUE;
}

/* Starts the command built in x, as state st. */
static int xfer_start(struct stm32 *s, enum stm32_state st)
{
        set_state(s, st);
        s->x.cur = 0;
        return send_phase(s);
}

/* "WRITE_MEMORY at 0x08000400" */
static const char *xfer_name(struct stm32 *s, char *buf, size_t n)
{
        if (s->x.has_addr)
                snprintf(buf, n, "%s at 0x%08" PRIx32, cmd_table[s->x.cmd].name, s->x.addr);
        else
                snprintf(buf, n, "%s", cmd_table[s->x.cmd].name);
        return buf;
}

static int rdp_refused(struct stm32 *s);
static int start_install(struct stm32 *s);
static int start_resync(struct stm32 *s);
static int start_quiet(struct stm32 *s, enum after_quiet then);
static int flash_size_known(struct stm32 *s, bool read);

/* Starts the command in flight again, or fails when its retries are spent. err and the last
 * problem say why it is retried. */
static int retry(struct stm32 *s, int err)
{
        char name[64];

        if (s->attempts >= s->retries_max)
                return fail(s, err, "%s: %s (after %" PRIu64 " retries)",
                            xfer_name(s, name, sizeof(name)), s->problem, s->attempts);
        s->attempts++;
        gw_proto_debug(s->host, "stm32: %s: %s, retry %" PRIu64 "/%" PRIu64,
                       xfer_name(s, name, sizeof(name)), s->problem, s->attempts, s->retries_max);
        /* Only after trouble can bytes be waiting that answer nothing we sent: a device in
         * step sends nothing unasked, so the normal path saves the flush. */
        flush_input(s);
        return xfer_start(s, s->resume);
}

/* The phase in flight was NACKed. */
static int on_nack(struct stm32 *s)
{
        const struct cmd_desc *d = &cmd_table[s->x.cmd];
        unsigned phase = s->x.cur;

        disarm(s);
        s->resume = s->state;
        /* Read protection NACKs a protected command at its command byte, every time; once one
         * went through, such a NACK is line trouble. */
        if (phase == 0 && d->protected && !s->protected_ok) {
                s->cmd_nacks++;
                if (s->cmd_nacks >= RDP_NACKS || s->retries_max == 0)
                        return rdp_refused(s);
        } else {
                s->cmd_nacks = 0;
        }
        /* A read of the flash size register at an address this bootloader will not read: the
         * table's size stands. */
        if (s->state == STM32_FLASH_SIZE && phase == 1)
                return flash_size_known(s, false);
        if (s->state == STM32_GO && phase == 1)
                return fail(s, -EIO, "GO: the device refused the address 0x%08" PRIx32, s->x.addr);
        snprintf(s->problem, sizeof(s->problem), "the device answered NACK%s",
                 phase == 0   ? ""
                 : phase == 1 ? " to the address"
                              : " to the data");
        return retry(s, -EIO);
}

/* A byte that fits no reply: the device is out of step. */
static int on_garbage(struct stm32 *s, uint8_t c, const char *what)
{
        disarm(s);
        if (s->state == STM32_GO && s->x.cur == 1) {
                /* Most likely its ACK, damaged: the device has jumped, nobody answers now. */
                gw_proto_debug(
                    s->host, "stm32: 0x%02x instead of GO's ACK: assuming the application started",
                    c);
                return go_done(s);
        }
        s->cmd_nacks = 0;
        snprintf(s->problem, sizeof(s->problem), "unexpected byte 0x%02x (%s)", c, what);
        s->resume = s->state;
        return start_quiet(s, QUIET_THEN_RESYNC);
}

/* One byte of the reply to the phase in flight. Returns < 0 on failure, 1 when the byte ended
 * the phase (the rest of the input predates what is sent next), 0 otherwise. */
static int reply_byte(struct stm32 *s, uint8_t c)
{
        const struct phase *ph = &s->x.phases[s->x.cur];
        size_t i = s->rx_len;
        int r;

        if (i >= sizeof(s->rx))
                return on_garbage(s, c, "reply too long") < 0 ? s->error : 1;
        s->rx[s->rx_len++] = c;
        if (i == 0) {
                if (c == NACK) {
                        r = on_nack(s);
                        return r < 0 ? r : 1;
                }
                if (c != ACK) {
                        r = on_garbage(s, c, "expected ACK or NACK");
                        return r < 0 ? r : 1;
                }
                switch (ph->reply) {
                case REPLY_ACK:
                        s->rx_need = 1;
                        break;
                case REPLY_ACK_DATA:
                        s->rx_need = 1 + ph->data_len;
                        break;
                case REPLY_ACK_DATA_ACK:
                        s->rx_need = 2 + ph->data_len;
                        break;
                case REPLY_ACK_COUNTED_ACK:
                        s->rx_need = 2;
                        break;
                }
        } else if (i == 1 && ph->reply == REPLY_ACK_COUNTED_ACK) {
                if (c < ph->count_min || c > ph->count_max) {
                        r = on_garbage(s, c, "implausible length");
                        return r < 0 ? r : 1;
                }
                s->rx_need = 2 + (size_t) c + 1 + 1;
        } else if (i + 1 == s->rx_need &&
                   (ph->reply == REPLY_ACK_DATA_ACK || ph->reply == REPLY_ACK_COUNTED_ACK)) {
                if (c == NACK) {
                        r = on_nack(s);
                        return r < 0 ? r : 1;
                }
                if (c != ACK) {
                        r = on_garbage(s, c, "expected the closing ACK");
                        return r < 0 ? r : 1;
                }
        }
        if (s->rx_len < s->rx_need)
                return 0;
        disarm(s);
        if (++s->x.cur < s->x.n_phases) {
                r = send_phase(s);
                return r < 0 ? r : 1;
        }
        s->cmd_nacks = 0;
        if (cmd_table[s->x.cmd].protected)
                s->protected_ok = true;
        r = cmd_table[s->x.cmd].done(s);
        return r < 0 ? r : 1;
}

/* The reply to the phase in flight did not come in time. */
static int phase_timed_out(struct stm32 *s)
{
        char name[64];
        const struct phase *ph = &s->x.phases[s->x.cur];

        s->cmd_nacks = 0;
        s->resume = s->state;
        if (s->state == STM32_GO && s->x.cur == 1) {
                /* The device may have jumped before its ACK left: it has the image. */
                gw_proto_debug(s->host,
                               "stm32: no ACK for GO's address, assuming the application started");
                return go_done(s);
        }
        snprintf(s->problem, sizeof(s->problem), "no answer within %" PRIu64 " ms%s",
                 ph->timeout_ms, s->rx_len ? " (the reply stopped short)" : "");
        gw_proto_debug(s->host, "stm32: %s: %s", xfer_name(s, name, sizeof(name)), s->problem);
        if (s->attempts >= s->retries_max)
                return fail(s, -ETIMEDOUT, "%s: %s (after %" PRIu64 " retries)",
                            xfer_name(s, name, sizeof(name)), s->problem, s->attempts);
        return start_resync(s);
}

/* Recovery: QUIET waits for stray bytes to stop, RESYNC sends filler bytes until a device
 * stuck in the middle of a command answers (ACK or NACK ends any command). */

static int start_quiet(struct stm32 *s, enum after_quiet then)
{
        set_state(s, STM32_QUIET);
        s->after_quiet = then;
        s->quiet_until_max = now(s) + QUIET_MAX_MS;
        arm(s, QUIET_MS);
        return GW_PROTO_CONTINUE;
}

/* A filler value for a device stalled in a phase. Even and non-zero: a frame made of nothing
 * but v then fails AN3155's XOR checks wherever the device stalled (an address of v bytes
 * checks only for v = 0; an erase or write count of v with v + 1 bytes of v only for odd v).
 * And none of the stalled phase's own bytes, where possible: with one byte of a phase lost,
 * the byte that completes it then cannot complete its checksum by chance. */
static uint8_t filler(const struct stm32 *s)
{
        const struct phase *ph = &s->x.phases[s->x.cur];
        uint8_t seen[32] = {0};

        for (size_t i = 0; i < ph->len; i++) {
                uint8_t b = s->x.tx[ph->off + i];

                seen[b / 8] |= (uint8_t) (1u << (b % 8));
        }
        for (unsigned v = 2; v < 256; v += 2)
                if (!(seen[v / 8] & (1u << (v % 8))))
                        return (uint8_t) v;
        return 0x02;
}

static int send_fillers(struct stm32 *s)
{
        uint8_t buf[RESYNC_BURST_MAX];
        unsigned n = s->resync_burst;
        int r;

        if (s->resync_sent + n > RESYNC_BYTES_MAX) {
                char name[64];

                return fail(s, -ETIMEDOUT,
                            "%s: %s, and the device did not answer %u filler bytes either",
                            xfer_name(s, name, sizeof(name)), s->problem, s->resync_sent);
        }
        memset(buf, filler(s), n);
        s->resync_sent += n;
        r = send(s, buf, n);
        if (r < 0)
                return r;
        arm(s, s->resync_ms);
        return GW_PROTO_CONTINUE;
}

static int start_resync(struct stm32 *s)
{
        set_state(s, STM32_RESYNC);
        s->resync_sent = 0;
        s->resync_burst = 1;
        flush_input(s);
        return send_fillers(s);
}

static int resync_timed_out(struct stm32 *s)
{
        /* A few single bytes first (one byte lost, or an ACK lost while the device waits for
         * a command), then growing bursts for a device that waits for many. */
        if (s->resync_sent >= 4 && s->resync_burst < RESYNC_BURST_MAX)
                s->resync_burst *= 2;
        return send_fillers(s);
}

static int resync_byte(struct stm32 *s, uint8_t c)
{
        if (c != ACK && c != NACK)
                return 0; /* late bytes of the reply that was cut short */
        disarm(s);
        gw_proto_debug(s->host, "stm32: the device answered after %u filler bytes", s->resync_sent);
        /* More fillers may follow the one it answered: let their NACKs pass, then make sure
         * with single fillers that the device waits for a whole command. */
        if (s->resync_burst > 1)
                return start_quiet(s, QUIET_THEN_ALIGN) < 0 ? s->error : 1;
        flush_input(s);
        return retry(s, -EIO) < 0 ? s->error : 1;
}

static int quiet_timed_out(struct stm32 *s)
{
        flush_input(s);
        if (s->after_quiet == QUIET_THEN_GET)
                return xfer_start(s, STM32_GET);
        if (s->after_quiet == QUIET_THEN_ALIGN)
                return start_resync(s);
        if (s->attempts >= s->retries_max) {
                char name[64];

                return fail(s, -EIO, "%s: %s (after %" PRIu64 " retries)",
                            xfer_name(s, name, sizeof(name)), s->problem, s->attempts);
        }
        return start_resync(s);
}

/* The steps of an operation. */

static void build_get(struct stm32 *s)
{
        struct phase *ph;

        xfer_begin(s, CMD_GET);
        ph = &s->x.phases[0];
        ph->reply = REPLY_ACK_COUNTED_ACK;
        ph->count_min = 1;
        ph->count_max = GET_COUNT_MAX;
}

static void build_get_id(struct stm32 *s)
{
        struct phase *ph;

        xfer_begin(s, CMD_GET_ID);
        ph = &s->x.phases[0];
        ph->reply = REPLY_ACK_COUNTED_ACK;
        ph->count_min = 1;
        ph->count_max = 1;
}

static int start_command(struct stm32 *s, enum stm32_state st)
{
        s->attempts = 0;
        s->problem[0] = '\0';
        return xfer_start(s, st);
}

static int synced(struct stm32 *s, uint8_t c)
{
        disarm(s);
        gw_proto_debug(s->host, "stm32: %s to 0x7F%s", c == ACK ? "ACK" : "NACK",
                       c == ACK ? "" : ": already synchronised");
        build_get(s);
        s->attempts = 0;
        s->problem[0] = '\0';
        if (s->syncs_sent > 1) {
                /* Answers to the other 0x7F may still come: let them pass first. */
                s->resume = STM32_GET;
                return start_quiet(s, QUIET_THEN_GET);
        }
        return xfer_start(s, STM32_GET);
}

static int get_done(struct stm32 *s)
{
        size_t n = s->rx[1];

        memset(s->commands, 0, sizeof(s->commands));
        s->bl_version = s->rx[2];
        for (size_t i = 0; i < n; i++) {
                uint8_t c = s->rx[3 + i];

                s->commands[c / 8] |= (uint8_t) (1u << (c % 8));
        }
        gw_proto_debug(s->host, "stm32: bootloader %u.%u, %zu commands, erase %s",
                       s->bl_version >> 4, s->bl_version & 0xf, n,
                       has_command(s, CMD_EXT_ERASE) ? "extended"
                       : has_command(s, CMD_ERASE)   ? "legacy"
                                                     : "none");
        if (s->get_asked_again && s->op == OP_INSTALL && s->chip)
                return start_install(s);
        if (s->op == OP_IDENTIFY) {
                xfer_begin(s, CMD_GET_VERSION);
                s->x.phases[0].reply = REPLY_ACK_DATA_ACK;
                s->x.phases[0].data_len = 3;
                return start_command(s, STM32_GET_VERSION);
        }
        build_get_id(s);
        return start_command(s, STM32_GET_ID);
}

static int get_version_done(struct stm32 *s)
{
        s->option_bytes[0] = s->rx[2];
        s->option_bytes[1] = s->rx[3];
        s->have_option_bytes = true;
        build_get_id(s);
        return start_command(s, STM32_GET_ID);
}

/* The chip: the table's entry for the id, or one the options describe. */
static void resolve_chip(struct stm32 *s)
{
        s->chip = gw_stm32_chip_find(s->pid);
        if (!s->chip && s->page_size_opt > 0 && s->flash_size_opt > 0) {
                s->custom_runs[0] = (struct gw_stm32_run){
                    .count = (uint16_t) (s->flash_size_opt / s->page_size_opt),
                    .size = (uint32_t) s->page_size_opt,
                    .first = 0,
                };
                s->custom_runs[1] = (struct gw_stm32_run){0};
                /* Unknown erase times: the F1's page erase, a minute for a mass erase. */
                s->custom_timing = (struct gw_stm32_timing){40, 0, 60000};
                s->custom = (struct gw_stm32_chip){
                    .pid = s->pid,
                    .name = "unknown (described by options)",
                    .flash_base = s->address_given ? (uint32_t) s->address : 0x08000000u,
                    .flash_size = (uint32_t) s->flash_size_opt,
                    .write_align = 4,
                    .runs = s->custom_runs,
                    .timing = &s->custom_timing,
                };
                s->chip = &s->custom;
        }
        if (s->chip)
                s->flash_size =
                    s->flash_size_opt ? (uint32_t) s->flash_size_opt : s->chip->flash_size;
}

static int start_flash_size(struct stm32 *s);
static int finish_identify(struct stm32 *s);

static int get_id_done(struct stm32 *s)
{
        s->pid = (uint16_t) (s->rx[2] << 8 | s->rx[3]);
        s->have_pid = true;
        resolve_chip(s);
        gw_proto_debug(s->host, "stm32: chip id 0x%03x: %s", s->pid,
                       s->chip ? s->chip->name : "unknown");
        if (!s->chip && !s->id_asked_again) {
                /* Its reply carries no checksum either: one more time before it counts. */
                s->id_asked_again = true;
                build_get_id(s);
                return start_command(s, STM32_GET_ID);
        }
        if (!s->chip) {
                if (s->op == OP_IDENTIFY)
                        return finish_identify(s);
                return fail(s, -ENODEV,
                            "unknown chip id 0x%03x: describe it with the options flash-size, "
                            "page-size and address",
                            s->pid);
        }
        if (!has_command(s, CMD_READ)) {
                /* Nothing to probe with: read protection shows at the erase or write. */
                return s->op == OP_IDENTIFY ? finish_identify(s) : start_install(s);
        }
        return start_flash_size(s);
}

/* READ_MEMORY of the flash size register (16 bits, KiB) when the table knows one; else of the
 * first word of flash. Either tells read protection before anything is erased. */
static int start_flash_size(struct stm32 *s)
{
        uint32_t addr = s->chip->size_reg ? s->chip->size_reg : s->chip->flash_base;
        size_t len = s->chip->size_reg ? 2 : 4;
        uint8_t nb[2] = {(uint8_t) (len - 1), (uint8_t) ~(len - 1)};
        struct phase *ph;

        xfer_begin(s, CMD_READ);
        xfer_addr(s, addr);
        ph = xfer_phase(s, nb, sizeof(nb));
        ph->reply = REPLY_ACK_DATA;
        ph->data_len = len;
        return start_command(s, STM32_FLASH_SIZE);
}

/* The probe read ended: read = its data is in rx (else the address was refused). */
static int flash_size_known(struct stm32 *s, bool read)
{
        uint32_t kib;

        if (s->flash_size_opt || !s->chip->size_reg || !read || s->rx_len < 3)
                goto out;
        kib = (uint32_t) s->rx[1] | (uint32_t) s->rx[2] << 8;
        if (kib == 0 || kib == 0xffff) {
                gw_proto_debug(s->host,
                               "stm32: flash size register reads 0x%04x, the table's size stands",
                               kib);
        } else if (kib * 1024u > s->chip->flash_size) {
                gw_proto_debug(
                    s->host,
                    "stm32: flash size register says %u KiB, more than the %u KiB of %s: "
                    "the table's size stands",
                    kib, s->chip->flash_size / 1024u, s->chip->name);
        } else if (!gw_stm32_size_fits_layout(s->chip, kib * 1024u)) {
                gw_proto_debug(s->host,
                               "stm32: flash size register says %u KiB, not a page boundary", kib);
        } else {
                s->flash_size = kib * 1024u;
                gw_proto_debug(s->host, "stm32: flash size register: %u KiB", kib);
        }
out:
        return s->op == OP_IDENTIFY ? finish_identify(s) : start_install(s);
}

/* READ_MEMORY ended: the flash size, or a verify block. */
static int read_done(struct stm32 *s)
{
        if (s->state == STM32_FLASH_SIZE)
                return flash_size_known(s, true);
        return write_done(s); /* verify shares the block walk */
}

static const char rdp_message[] = "read-protected (RDP level 1): unprotecting would erase the "
                                  "chip; do it deliberately with the vendor tool";

static int rdp_refused(struct stm32 *s)
{
        char name[64];

        gw_proto_debug(s->host, "stm32: %s refused at its command byte: read protection",
                       xfer_name(s, name, sizeof(name)));
        s->read_protected = true;
        if (s->op == OP_IDENTIFY)
                return finish_identify(s);
        return fail(s, -EACCES, "%s", rdp_message);
}

/* Plans and checks (check_image() and install() alike). */

/* Checks the image of size bytes against the chip at the start address; sets start, padded and
 * the page span. 0 or -errno with the reason given. */
static int plan(struct stm32 *s, uint64_t size)
{
        const struct gw_stm32_chip *c = s->chip;
        uint32_t align = c->write_align < 4 ? 4 : c->write_align;
        uint64_t start = s->address_given ? s->address : c->flash_base;
        uint64_t flash_end = (uint64_t) c->flash_base + s->flash_size;
        int r;

        if (s->read_protected)
                return fail(s, -EACCES, "%s", rdp_message);
        if (size == 0)
                return fail(s, -EINVAL, "the image is empty");
        if (start % align != 0)
                return fail(s, -EINVAL,
                            "address 0x%08" PRIx64 ": %s writes start on multiples of %u bytes",
                            start, c->name, align);
        if (start < c->flash_base || start >= flash_end)
                return fail(s, -ERANGE,
                            "address 0x%08" PRIx64 " is outside the flash of chip 0x%03x (%s): "
                            "0x%08" PRIx32 "-0x%08" PRIx64,
                            start, c->pid, c->name, c->flash_base, flash_end - 1);
        if (size > flash_end - start)
                return fail(s, -EFBIG,
                            "the image (%" PRIu64 " bytes at 0x%08" PRIx64 ") does not fit the "
                            "%" PRIu32 " KiB flash of chip 0x%03x (%s), which ends at 0x%08" PRIx64,
                            size, start, s->flash_size / 1024u, c->pid, c->name, flash_end - 1);
        s->start = (uint32_t) start;
        s->size = size;
        s->padded = (size + align - 1) / align * align;
        r = gw_stm32_pages_span(c, s->flash_size, s->start, s->padded, &s->page_first,
                                &s->page_count);
        if (r < 0)
                return fail(s, -ERANGE, "flash size %" PRIu32 " does not end on a page boundary",
                            s->flash_size);
        return 0;
}

/* A command the operation needs and GET did not list, or NULL. */
static const char *missing_command(const struct stm32 *s)
{
        if (!has_command(s, CMD_WRITE))
                return "the bootloader offers no WRITE_MEMORY";
        if (!has_command(s, CMD_EXT_ERASE) && !has_command(s, CMD_ERASE))
                return "the bootloader offers no erase command";
        if (s->verify && !has_command(s, CMD_READ))
                return "the bootloader offers no READ_MEMORY to verify with: set verify=false";
        if (s->go && !has_command(s, CMD_GO))
                return "the bootloader offers no GO: set go=false";
        return NULL;
}

/* The legacy erase names pages with one byte. */
static int check_legacy_pages(struct stm32 *s)
{
        struct gw_stm32_page p;

        if (has_command(s, CMD_EXT_ERASE) || s->mass_erase)
                return 0;
        if (gw_stm32_page(s->chip, s->flash_size, s->page_first + s->page_count - 1, &p) == 0 &&
            p.number > 0xff)
                return fail(s, -ERANGE,
                            "page %u is beyond what the legacy ERASE (0x43) can name; "
                            "mass-erase=true erases the whole chip instead",
                            p.number);
        return 0;
}

/* Erase. */

static int erase_next(struct stm32 *s);
static int write_next(struct stm32 *s);
static int verify_next(struct stm32 *s);
static int start_go(struct stm32 *s);

static int start_install(struct stm32 *s)
{
        const char *missing;
        int r = plan(s, s->reader->size);

        if (r < 0)
                return r;
        missing = missing_command(s);
        if (missing && !s->get_asked_again) {
                /* GET's list carries no checksum: ask again before believing a line error. */
                gw_proto_debug(s->host, "stm32: %s, asking GET again", missing);
                s->get_asked_again = true;
                build_get(s);
                return start_command(s, STM32_GET);
        }
        if (missing)
                return fail(s, -EOPNOTSUPP, "%s", missing);
        r = check_legacy_pages(s);
        if (r < 0)
                return r;
        gw_proto_debug(s->host,
                       "stm32: %" PRIu64 " bytes at 0x%08" PRIx32 ": %s pages %zu-%zu of %s",
                       s->size, s->start, s->mass_erase ? "mass erase, then" : "erasing",
                       s->page_first, s->page_first + s->page_count - 1, s->chip->name);
        s->page_next = 0;
        s->offset = 0;
        return erase_next(s);
}

static int erase_next(struct stm32 *s)
{
        bool ext = has_command(s, CMD_EXT_ERASE);
        uint8_t *p;
        size_t max, n = 0;
        uint64_t timeout = s->timeout_ms;
        struct phase *ph;

        if (s->page_next >= s->page_count || (s->mass_erase && s->page_next > 0)) {
                report_progress(s);
                return write_next(s);
        }
        xfer_begin(s, ext ? CMD_EXT_ERASE : CMD_ERASE);
        p = s->x.tx + s->x.tx_len;
        if (s->mass_erase) {
                if (ext) {
                        p[0] = 0xff;
                        p[1] = 0xff;
                        p[2] = 0x00;
                        n = 3;
                } else {
                        p[0] = 0xff;
                        p[1] = 0x00;
                        n = 2;
                }
                timeout +=
                    s->mass_erase_timeout_ms ? s->mass_erase_timeout_ms : s->chip->timing->mass_ms;
                s->page_next = s->page_count;
        } else {
                size_t count;

                max = ext ? s->erase_batch
                          : (s->erase_batch < LEGACY_PAGES ? s->erase_batch : LEGACY_PAGES);
                count = s->page_count - s->page_next;
                if (count > max)
                        count = max;
                n = ext ? 2 : 1;
                for (size_t i = 0; i < count; i++) {
                        struct gw_stm32_page pg;

                        if (gw_stm32_page(s->chip, s->flash_size, s->page_first + s->page_next + i,
                                          &pg) < 0)
                                return fail(s, -ERANGE, "page %zu is outside the flash",
                                            s->page_first + s->page_next + i);
                        if (ext) {
                                p[n++] = (uint8_t) (pg.number >> 8);
                                p[n++] = (uint8_t) pg.number;
                        } else {
                                p[n++] = (uint8_t) pg.number;
                        }
                        timeout += s->erase_timeout_ms ? s->erase_timeout_ms
                                                       : gw_stm32_erase_ms(s->chip, pg.size);
                }
                if (ext) {
                        p[0] = (uint8_t) ((count - 1) >> 8);
                        p[1] = (uint8_t) (count - 1);
                } else {
                        p[0] = (uint8_t) (count - 1);
                }
                p[n] = xor_of(p, n, 0);
                n++;
                s->page_next += count;
        }
        ph = xfer_phase(s, NULL, n);
        ph->timeout_ms = timeout;
        return start_command(s, STM32_ERASE);
}

static int erase_done(struct stm32 *s)
{
        return erase_next(s);
}

/* Write and verify walk the image in blocks from the start address. */

/* Reads the image block at offset into s->block, padded with 0xFF to len_padded. */
static int read_block(struct stm32 *s, size_t len, size_t len_padded)
{
        char why[128];
        int r;

        r = gw_reader_read_exact(s->reader, s->block, len, s->offset, why, sizeof(why));
        if (r < 0)
                return fail(s, r, "%s", why);
        memset(s->block + len, 0xff, len_padded - len);
        return 0;
}

/* The next block: image bytes and the bytes sent for them (the last padded). */
static void block_lengths(const struct stm32 *s, size_t *ret_len, size_t *ret_padded)
{
        uint64_t left = s->size - s->offset, left_padded = s->padded - s->offset;

        *ret_len = left < BLOCK_MAX ? (size_t) left : BLOCK_MAX;
        *ret_padded = left_padded < BLOCK_MAX ? (size_t) left_padded : BLOCK_MAX;
}

static int write_next(struct stm32 *s)
{
        size_t len, padded;
        uint8_t *p;
        struct phase *ph;
        int r;

        if (s->offset >= s->size) {
                if (!s->verify)
                        return start_go(s);
                s->offset = 0;
                report_progress(s);
                return verify_next(s);
        }
        block_lengths(s, &len, &padded);
        r = read_block(s, len, padded);
        if (r < 0)
                return r;
        xfer_begin(s, CMD_WRITE);
        xfer_addr(s, s->start + (uint32_t) s->offset);
        p = s->x.tx + s->x.tx_len;
        p[0] = (uint8_t) (padded - 1);
        memcpy(p + 1, s->block, padded);
        p[1 + padded] = xor_of(s->block, padded, p[0]);
        ph = xfer_phase(s, NULL, padded + 2);
        ph->timeout_ms = s->write_timeout_ms;
        return start_command(s, STM32_WRITE);
}

static int verify_next(struct stm32 *s)
{
        size_t len, padded;
        uint8_t nb[2];
        struct phase *ph;
        int r;

        if (s->offset >= s->size)
                return start_go(s);
        s->rereads = 0;
        block_lengths(s, &len, &padded);
        r = read_block(s, len, len);
        if (r < 0)
                return r;
        nb[0] = (uint8_t) (len - 1);
        nb[1] = (uint8_t) ~nb[0];
        xfer_begin(s, CMD_READ);
        xfer_addr(s, s->start + (uint32_t) s->offset);
        ph = xfer_phase(s, nb, sizeof(nb));
        ph->reply = REPLY_ACK_DATA;
        ph->data_len = len;
        return start_command(s, STM32_VERIFY);
}

/* A WRITE_MEMORY or a verify READ_MEMORY of the block at offset was acknowledged. */
static int write_done(struct stm32 *s)
{
        size_t len, padded;

        block_lengths(s, &len, &padded);
        if (s->state == STM32_VERIFY) {
                for (size_t i = 0; i < len; i++) {
                        if (s->rx[1 + i] == s->block[i])
                                continue;
                        /* READ_MEMORY's data carry no checksum: read again before blaming
                         * the flash for what the line may have done. */
                        if (s->rereads < VERIFY_REREADS) {
                                s->rereads++;
                                gw_proto_debug(s->host,
                                               "stm32: read back 0x%02x at 0x%08" PRIx64
                                               ", wrote 0x%02x: reading again",
                                               s->rx[1 + i], s->start + s->offset + i, s->block[i]);
                                return xfer_start(s, STM32_VERIFY);
                        }
                        return fail(s, -EIO,
                                    "verify failed at 0x%08" PRIx64
                                    ": wrote 0x%02x, read back 0x%02x",
                                    s->start + s->offset + i, s->block[i], s->rx[1 + i]);
                }
                s->offset += len;
                report_progress(s);
                return verify_next(s);
        }
        s->offset += len;
        report_progress(s);
        return write_next(s);
}

/* GO, then the exit sequence. */

static int start_go(struct stm32 *s)
{
        if (!s->go) {
                if (s->exit.n > 0)
                        return seq_start(s, STM32_EXIT, &s->exit);
                return succeed(s);
        }
        xfer_begin(s, CMD_GO);
        xfer_addr(s, s->start);
        return start_command(s, STM32_GO);
}

static int go_done(struct stm32 *s)
{
        gw_proto_debug(s->host, "stm32: GO 0x%08" PRIx32 ": the application runs", s->start);
        if (s->exit.n > 0)
                return seq_start(s, STM32_EXIT, &s->exit);
        return succeed(s);
}

static int after_exit(struct stm32 *s)
{
        return succeed(s);
}

/* identify() */

/* Adds key with a printf-formatted value. 0 or -ENOMEM. */
static int add_fact(struct gw_options *o, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int add_fact(struct gw_options *o, const char *key, const char *fmt, ...)
{
        char value[96];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(value, sizeof(value), fmt, ap);
        va_end(ap);
        return gw_options_set(o, key, value) < 0 ? -ENOMEM : 0;
}

static int finish_identify(struct stm32 *s)
{
        struct gw_options *o = s->facts;
        bool ext = has_command(s, CMD_EXT_ERASE), legacy = has_command(s, CMD_ERASE);
        int r;

        r = add_fact(o, "bootloader-version", "%u.%u", s->bl_version >> 4, s->bl_version & 0xf);
        if (r >= 0 && s->have_pid)
                r = add_fact(o, "chip-id", "0x%03x", s->pid);
        if (r >= 0)
                r = add_fact(o, "chip", "%s", s->chip ? s->chip->name : "unknown");
        if (r >= 0 && s->chip)
                r = add_fact(o, "flash-base", "0x%08" PRIx32, s->chip->flash_base);
        if (r >= 0 && s->chip)
                r = add_fact(o, "flash-size", "%" PRIu32, s->flash_size);
        if (r >= 0)
                r = add_fact(o, "erase", "%s", ext ? "extended" : legacy ? "legacy" : "none");
        if (r >= 0 && s->have_option_bytes)
                r = add_fact(o, "option-bytes", "0x%02x%02x", s->option_bytes[0],
                             s->option_bytes[1]);
        if (r >= 0)
                r = add_fact(o, "read-protected", "%s", s->read_protected ? "yes" : "no");
        if (r < 0)
                return fail(s, r, "out of memory");
        if (s->exit.n > 0)
                return seq_start(s, STM32_EXIT, &s->exit);
        return succeed(s);
}

/* Options. */

static int bad_option(struct stm32 *s, const char *key, const char *expected)
{
        gw_proto_debug(s->host, "stm32: option %s: expected %s", key, expected);
        if (s->host->set_error)
                s->host->set_error(s->host->ctx, "option %s: expected %s", key, expected);
        return -EINVAL;
}

/* "rts=1,dtr=1,wait=10,dtr=0": line levels (1 asserted, 0 not) and waits in ms. */
static int parse_seq(const char *text, struct seq *ret)
{
        char buf[512], *save = NULL;
        struct seq seq = {0};

        if (strlen(text) >= sizeof(buf))
                return -EINVAL;
        strcpy(buf, text);
        for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
                char *eq, *key = item, *value;
                struct seq_step *st;
                uint64_t v;

                while (*key == ' ')
                        key++;
                eq = strchr(key, '=');
                if (!eq || seq.n >= SEQ_MAX)
                        return -EINVAL;
                *eq = '\0';
                value = eq + 1;
                for (char *e = eq - 1; e >= key && *e == ' '; e--)
                        *e = '\0';
                while (*value == ' ')
                        value++;
                for (char *e = value + strlen(value); e > value && e[-1] == ' '; e--)
                        e[-1] = '\0';
                if (gw_parse_u64(value, &v) < 0)
                        return -EINVAL;
                st = &seq.steps[seq.n++];
                if (strcmp(key, "wait") == 0) {
                        if (v > SEQ_WAIT_MAX)
                                return -EINVAL;
                        *st = (struct seq_step){.wait = true, .ms = (uint32_t) v};
                } else if (strcmp(key, "dtr") == 0 || strcmp(key, "rts") == 0) {
                        unsigned line = key[0] == 'd' ? GW_LINE_DTR : GW_LINE_RTS;

                        if (v > 1)
                                return -EINVAL;
                        *st = (struct seq_step){.mask = line, .values = v ? line : 0};
                } else {
                        return -EINVAL;
                }
        }
        if (seq.n == 0)
                return -EINVAL;
        *ret = seq;
        return 0;
}

/* "auto", bytes, or KiB / MiB with a K or M suffix. */
static int parse_size(const char *text, uint64_t *ret)
{
        char buf[32];
        size_t n = strlen(text);
        uint64_t v, mul = 1;

        if (strcmp(text, "auto") == 0) {
                *ret = 0;
                return 0;
        }
        if (n == 0 || n >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, text, n + 1);
        if (buf[n - 1] == 'K' || buf[n - 1] == 'k')
                mul = 1024;
        else if (buf[n - 1] == 'M' || buf[n - 1] == 'm')
                mul = 1024 * 1024;
        if (mul > 1)
                buf[n - 1] = '\0';
        if (gw_parse_u64(buf, &v) < 0 || v == 0 || v > FLASH_SIZE_MAX / mul)
                return -EINVAL;
        *ret = v * mul;
        return 0;
}

static int stm32_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct stm32 *s = priv;
        const char *v;

        s->host = host;
        s->state = STM32_IDLE;
        v = gw_options_get(opts, "address");
        if (v) {
                if (gw_options_get_u64(opts, "address", 0, 0, UINT32_MAX, &s->address) < 0)
                        return bad_option(s, "address", "0 to 0xffffffff");
                s->address_given = true;
        }
        if (gw_options_get_bool(opts, "verify", true, &s->verify) < 0)
                return bad_option(s, "verify", "true or false");
        if (gw_options_get_bool(opts, "go", true, &s->go) < 0)
                return bad_option(s, "go", "true or false");
        if (gw_options_get_bool(opts, "mass-erase", false, &s->mass_erase) < 0)
                return bad_option(s, "mass-erase", "true or false");
        if (gw_options_get_u64(opts, "retries", DEFAULT_RETRIES, 0, 100, &s->retries_max) < 0)
                return bad_option(s, "retries", "0 to 100");
        if (gw_options_get_u64(opts, "timeout-ms", DEFAULT_TIMEOUT_MS, 10, 600000, &s->timeout_ms) <
            0)
                return bad_option(s, "timeout-ms", "10 to 600000");
        if (gw_options_get_u64(opts, "write-timeout-ms", DEFAULT_WRITE_TIMEOUT_MS, 10, 600000,
                               &s->write_timeout_ms) < 0)
                return bad_option(s, "write-timeout-ms", "10 to 600000");
        if (gw_options_get_u64(opts, "erase-timeout-ms", 0, 0, 600000, &s->erase_timeout_ms) < 0)
                return bad_option(s, "erase-timeout-ms", "0 (the chip's) to 600000");
        if (gw_options_get_u64(opts, "mass-erase-timeout-ms", 0, 0, 3600000,
                               &s->mass_erase_timeout_ms) < 0)
                return bad_option(s, "mass-erase-timeout-ms", "0 (the chip's) to 3600000");
        if (gw_options_get_u64(opts, "init-timeout-ms", DEFAULT_INIT_TIMEOUT_MS, 10, 600000,
                               &s->init_timeout_ms) < 0)
                return bad_option(s, "init-timeout-ms", "10 to 600000");
        if (gw_options_get_u64(opts, "init-interval-ms", DEFAULT_INIT_INTERVAL_MS, 5, 60000,
                               &s->init_interval_ms) < 0)
                return bad_option(s, "init-interval-ms", "5 to 60000");
        if (gw_options_get_u64(opts, "resync-timeout-ms", DEFAULT_RESYNC_MS, 5, 60000,
                               &s->resync_ms) < 0)
                return bad_option(s, "resync-timeout-ms", "5 to 60000");
        if (gw_options_get_u64(opts, "erase-batch", DEFAULT_ERASE_BATCH, 1, ERASE_BATCH_MAX,
                               &s->erase_batch) < 0)
                return bad_option(s, "erase-batch", "1 to 512");
        v = gw_options_get(opts, "flash-size");
        if (v && parse_size(v, &s->flash_size_opt) < 0)
                return bad_option(s, "flash-size", "auto, or bytes (K or M suffix) up to 64M");
        if (gw_options_get_u64(opts, "page-size", 0, 0, 256 * 1024, &s->page_size_opt) < 0 ||
            (s->page_size_opt && (s->page_size_opt % 4 != 0 || s->page_size_opt < 64)))
                return bad_option(s, "page-size", "a multiple of 4 from 64 to 262144");
        if (s->page_size_opt && (!s->flash_size_opt || s->flash_size_opt % s->page_size_opt != 0 ||
                                 s->flash_size_opt / s->page_size_opt > UINT16_MAX))
                return bad_option(s, "page-size",
                                  "a divisor of flash-size (which must be given with it)");
        v = gw_options_get(opts, "entry");
        if (v && parse_seq(v, &s->entry) < 0)
                return bad_option(s, "entry",
                                  "dtr=0|1, rts=0|1 and wait=MS (up to 60000) separated by "
                                  "commas, at most 16");
        v = gw_options_get(opts, "exit");
        if (v && parse_seq(v, &s->exit) < 0)
                return bad_option(s, "exit",
                                  "dtr=0|1, rts=0|1 and wait=MS (up to 60000) separated by "
                                  "commas, at most 16");
        return 0;
}

static void stm32_done(void *priv)
{
        /* Nothing allocated: buffers live in priv, the reader and facts are the core's. */
}

static int begin(struct stm32 *s)
{
        s->attempts = 0;
        s->cmd_nacks = 0;
        s->protected_ok = false;
        s->get_asked_again = false;
        s->id_asked_again = false;
        s->read_protected = false;
        memset(s->commands, 0, sizeof(s->commands));
        if (s->entry.n > 0)
                return seq_start(s, STM32_ENTRY, &s->entry);
        return start_sync(s);
}

static int stm32_install(void *priv, const struct gw_reader *reader)
{
        struct stm32 *s = priv;
        int r;

        if (s->state != STM32_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        s->op = OP_INSTALL;
        s->reader = reader;
        s->size = reader->size;
        if (reader->size == 0)
                return fail(s, -EINVAL, "the image is empty");
        r = begin(s);
        return r < 0 ? r : result(s);
}

static int stm32_identify(void *priv, struct gw_options *ret)
{
        struct stm32 *s = priv;
        int r;

        if (s->state != STM32_IDLE)
                return -EBUSY;
        if (!ret)
                return -EINVAL;
        s->op = OP_IDENTIFY;
        s->facts = ret;
        r = begin(s);
        return r < 0 ? r : result(s);
}

static int handle_byte(struct stm32 *s, uint8_t c)
{
        switch (s->state) {
        case STM32_SYNC:
                if (c != ACK && c != NACK)
                        return 0; /* noise before the bootloader listens */
                return synced(s, c) < 0 ? s->error : 1;
        case STM32_GET:
        case STM32_GET_VERSION:
        case STM32_GET_ID:
        case STM32_FLASH_SIZE:
        case STM32_ERASE:
        case STM32_WRITE:
        case STM32_VERIFY:
        case STM32_GO:
                return reply_byte(s, c);
        case STM32_QUIET:
                if (now(s) >= s->quiet_until_max)
                        return fail(s, -EIO, "the device does not stop sending (last: %s)",
                                    s->problem[0] ? s->problem : "none");
                arm(s, QUIET_MS);
                return 0;
        case STM32_RESYNC:
                return resync_byte(s, c);
        default:
                return 0;
        }
}

static int stm32_input(void *priv, const uint8_t *buf, size_t n)
{
        struct stm32 *s = priv;

        for (size_t i = 0; i < n; i++) {
                int r;

                if (ended(s))
                        break;
                r = handle_byte(s, buf[i]);
                if (r < 0)
                        return r;
                if (r > 0) {
                        if (i + 1 < n)
                                gw_proto_debug(s->host,
                                               "stm32: dropping %zu bytes received before the last "
                                               "bytes sent",
                                               n - i - 1);
                        break;
                }
        }
        return result(s);
}

static int stm32_timeout(void *priv)
{
        struct stm32 *s = priv;

        if (s->deadline == 0 || now(s) < s->deadline)
                return result(s); /* stale or early: the armed deadline stands */
        s->deadline = 0;

        switch (s->state) {
        case STM32_ENTRY:
        case STM32_EXIT:
                return seq_run(s);
        case STM32_SYNC:
                if (now(s) >= s->sync_until)
                        return fail(s, -ETIMEDOUT,
                                    "no answer to 0x7F: is BOOT0 high? try the entry sequence "
                                    "option (entry=...)");
                return send_sync(s);
        case STM32_GET:
        case STM32_GET_VERSION:
        case STM32_GET_ID:
        case STM32_FLASH_SIZE:
        case STM32_ERASE:
        case STM32_WRITE:
        case STM32_VERIFY:
        case STM32_GO:
                return phase_timed_out(s);
        case STM32_QUIET:
                return quiet_timed_out(s);
        case STM32_RESYNC:
                return resync_timed_out(s);
        default:
                return result(s);
        }
}

/* The bootloader has no abort: a command in flight ends with its reply, which nobody reads. */
static int stm32_cancel(void *priv)
{
        struct stm32 *s = priv;

        if (ended(s)) {
                disarm(s);
                return -ECANCELED;
        }
        return fail(s, -ECANCELED, "cancelled");
}

/* The link went away: once everything is written (and verified), only GO or the exit sequence
 * was left, and the node has its image. */
static int stm32_hangup(void *priv)
{
        struct stm32 *s = priv;

        if (s->state == STM32_DONE)
                return GW_PROTO_DONE;
        if (s->state == STM32_FAILED)
                return s->error;
        if (s->op == OP_INSTALL && (s->state == STM32_GO || s->state == STM32_EXIT)) {
                gw_proto_debug(s->host, "stm32: link closed after the image was %s: done",
                               s->verify ? "verified" : "written");
                return succeed(s);
        }
        return fail(s, -EPIPE, "link lost in state %s after %" PRIu64 " of %" PRIu64 " bytes",
                    stm32_state_to_string(s->state), s->offset, s->size);
}

/* The image before any node is written: not empty, aligned, and, when identify() found the
 * chip, inside its flash and not refused by read protection. */
static int stm32_check_image(void *priv, const struct gw_reader *reader,
                             const struct gw_options *facts)
{
        struct stm32 *s = priv;
        const char *v;
        uint64_t pid, size = 0;
        int r;

        if (s->state != STM32_IDLE)
                return -EBUSY;
        if (!reader)
                return -EINVAL;
        if (reader->size == 0)
                return fail(s, -EINVAL, "the image is empty");
        if (s->address_given && s->address % 4 != 0)
                return fail(s, -EINVAL, "address 0x%08" PRIx64 ": writes start on multiples of 4",
                            s->address);
        if (!facts)
                return 0;
        v = gw_options_get(facts, "read-protected");
        if (v && strcmp(v, "yes") == 0)
                return fail(s, -EACCES, "%s", rdp_message);
        v = gw_options_get(facts, "chip-id");
        if (!v || gw_parse_u64(v, &pid) < 0 || pid > UINT16_MAX)
                return 0;
        s->pid = (uint16_t) pid;
        resolve_chip(s);
        if (!s->chip)
                return 0; /* install() refuses it, naming the options that would help */
        v = gw_options_get(facts, "flash-size");
        if (!s->flash_size_opt && v && gw_parse_u64(v, &size) == 0 && size > 0 &&
            size <= s->chip->flash_size && gw_stm32_size_fits_layout(s->chip, (uint32_t) size))
                s->flash_size = (uint32_t) size;
        r = plan(s, reader->size);
        return r < 0 ? r : 0;
}

static const char *const stm32_options[] = {"address",
                                            "verify",
                                            "go",
                                            "mass-erase",
                                            "retries",
                                            "timeout-ms",
                                            "write-timeout-ms",
                                            "erase-timeout-ms",
                                            "mass-erase-timeout-ms",
                                            "init-timeout-ms",
                                            "init-interval-ms",
                                            "resync-timeout-ms",
                                            "erase-batch",
                                            "flash-size",
                                            "page-size",
                                            "entry",
                                            "exit",
                                            NULL};

/* After GO the application owns the line: only an entry sequence (BOOT0 and NRST from the
 * adapter's lines) or no GO at all brings the bootloader back to answer identify. */
static int stm32_identifies_after_install(void *priv)
{
        const struct stm32 *s = priv;

        return !s->go || s->entry.n > 0;
}

/* The ROM bootloader's USART runs 8 data bits with even parity (AN3155). */
static const char *const stm32_link_defaults[] = {"parity=even", NULL};

const struct gw_protocol_ops gw_protocol_stm32_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "stm32",
    .shape = GW_LINK_STREAM,
    .priv_size = sizeof(struct stm32),
    .init = stm32_init,
    .done = stm32_done,
    .install = stm32_install,
    .input = stm32_input,
    .timeout = stm32_timeout,
    .cancel = stm32_cancel,
    .identify = stm32_identify,
    .hangup = stm32_hangup,
    .options = stm32_options,
    .check_image = stm32_check_image,
    .link_defaults = stm32_link_defaults,
    .identifies_after_install = stm32_identifies_after_install,
};
