/* stm32-sim: a simulated STM32 ROM bootloader (the USART protocol of ST AN3155) on a
 * pseudo-terminal: paced to a line rate both ways (8E1 by default), with a chip's flash layout,
 * a programming and erase time model, faults from the command line or a control FIFO, a memory
 * dump and a JSON report at exit. An independent model of the device, not of our host. */
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

#include "cli.h"
#include "control.h"
#include "loop.h"
#include "pace.h"
#include "pty.h"

#define ACK  0x79
#define NACK 0x1f
#define SYNC 0x7f

#define NSEC_PER_MSEC  1000000ULL
#define HUP_RECHECK_NS (20 * NSEC_PER_MSEC)
#define LINGER_NS      (2000 * NSEC_PER_MSEC)
#define RX_QUEUE       (64 * 1024)
#define COLLECT_MAX    (2 + 2 * 65536 + 1) /* the largest extended erase list */
#define TX_MAX         (2 + 256 + 2)

/* The chips this simulator models: its own small table (AN2606 ids, reference manual layouts). */
struct run {
        uint16_t count;
        uint32_t size;
        uint16_t first;
};

struct chip {
        uint16_t pid;
        const char *name;
        uint32_t flash_size;
        uint32_t size_reg;
        uint8_t bl_version; /* what GET reports; < 0x30 offers the legacy erase */
        const struct run *runs;
};

static const struct run r_1k[] = {{128, 1024, 0}, {0, 0, 0}};
static const struct run r_2k[] = {{256, 2048, 0}, {0, 0, 0}};
static const struct run r_128[] = {{512, 128, 0}, {0, 0, 0}};
static const struct run r_f4[] = {{4, 16384, 0}, {1, 65536, 4}, {7, 131072, 5}, {0, 0, 0}};
static const struct run r_h7[] = {{16, 131072, 0}, {0, 0, 0}};

static const struct chip chips[] = {
    {0x410, "STM32F10x medium-density", 128 * 1024, 0x1ffff7e0, 0x22, r_1k},
    {0x414, "STM32F10x high-density", 512 * 1024, 0x1ffff7e0, 0x22, r_2k},
    {0x440, "STM32F05x", 64 * 1024, 0x1ffff7cc, 0x21, r_1k},
    {0x413, "STM32F405/407", 1024 * 1024, 0x1fff7a22, 0x31, r_f4},
    {0x460, "STM32G07x/G08x", 128 * 1024, 0x1fff75e0, 0x31, r_2k},
    {0x417, "STM32L05x/L06x", 64 * 1024, 0x1ff8007c, 0x31, r_128},
    {0x450, "STM32H74x/H75x", 2048 * 1024, 0x1ff1e880, 0x31, r_h7},
};

#define FLASH_BASE 0x08000000u
#define RAM_BASE   0x20000000u
#define RAM_SIZE   (64u * 1024u)

enum dev_state {
        DEV_WAIT_SYNC, /* after reset: the first 0x7F sets the baud rate */
        DEV_READY,     /* waiting for a command byte and its complement */
        DEV_COLLECT,   /* collecting the bytes of a command's phase */
        DEV_APP,       /* GO jumped: the application runs and the bootloader is gone */
};

/* What a collected phase is. */
enum stage {
        STAGE_CMD,
        STAGE_READ_ADDR,
        STAGE_READ_LEN,
        STAGE_GO_ADDR,
        STAGE_WRITE_ADDR,
        STAGE_WRITE_LEN,
        STAGE_WRITE_DATA,
        STAGE_ERASE_N,
        STAGE_ERASE_MASS_CS,
        STAGE_ERASE_PAGES,
        STAGE_EXT_N,
        STAGE_EXT_SPECIAL_CS,
        STAGE_EXT_PAGES,
};

struct faults {
        uint64_t drop_byte;     /* drop the Nth byte received from now; 0 = none */
        uint64_t drop_tx;       /* drop the Nth byte sent from now */
        uint64_t nack_block;    /* NACK the data of the Nth WRITE_MEMORY from now */
        uint64_t sync_delay_ms; /* ignore the line this long after the host opens it */
        bool rdp;               /* read protection: READ, WRITE, GO and erase NACKed */
        bool silent;            /* ignore input, send nothing */
};

struct counters {
        uint64_t syncs, sync_nacks, nacks, bytes_rx, bytes_tx, dropped_rx, dropped_tx;
        uint64_t cmd_get, cmd_get_version, cmd_get_id, cmd_read, cmd_go, cmd_write, cmd_erase,
            cmd_ext_erase, cmd_other, cmd_readout_unprotect;
        uint64_t blocks_written, bytes_written, reads, bytes_read, pages_erased, mass_erases;
        uint64_t busy_ns;
        uint64_t first_rx_ns, go_ns, last_tx_ns;
        bool go;
        uint32_t go_address;
};

struct sim {
        /* configuration */
        const char *link;
        const char *report_path;
        const char *dump_path;
        const char *control_path;
        uint32_t baud;
        unsigned bits;
        const struct chip *chip;
        uint32_t flash_size;
        uint8_t bl_version;
        bool legacy_erase;
        uint8_t fill;
        uint64_t write_ms, erase_ms, erase_ms_per_kib, mass_erase_ms;
        bool after_go_stay;
        bool once;
        bool verbose;

        /* the line */
        int master;
        char slave[128];
        bool connected, ever_connected;
        uint64_t connected_ns;
        uint64_t hup_check_ns;
        struct gw_pace *pace;
        int sigfd;

        struct gw_sim_control ctl;
        struct faults faults;
        uint64_t rx_count, tx_count, write_count; /* since each fault was armed */
        uint64_t drop_byte_at, drop_tx_at, nack_block_at;

        /* the device */
        uint8_t *flash;
        enum dev_state state;
        enum stage stage;
        uint8_t *buf; /* the phase being collected */
        size_t len, need;
        uint32_t addr; /* of the command in progress */
        uint8_t cmd;

        /* the reply waiting for its time */
        uint8_t tx[TX_MAX];
        size_t tx_len;
        uint64_t tx_at_ns;

        struct counters n;
        uint64_t linger_until_ns;
};

#define vlog(s, ...) gw_sim_log((s)->verbose, "stm32-sim", __VA_ARGS__)

static uint8_t xor_of(const uint8_t *p, size_t n, uint8_t x)
{
        for (size_t i = 0; i < n; i++)
                x ^= p[i];
        return x;
}

/* Queues a reply to leave once delay_ns has passed (programming and erase time). */
static void reply_after(struct sim *s, const uint8_t *buf, size_t n, uint64_t delay_ns)
{
        uint64_t at = gw_sim_now_ns() + delay_ns;

        if (s->faults.silent || n > sizeof(s->tx) - s->tx_len)
                return;
        /* The request is complete: what the host sends next is a new burst. */
        gw_pace_rx_idle(s->pace);
        memcpy(s->tx + s->tx_len, buf, n);
        s->tx_len += n;
        if (at > s->tx_at_ns)
                s->tx_at_ns = at;
        s->n.busy_ns += delay_ns;
}

static void reply(struct sim *s, uint8_t c)
{
        reply_after(s, &c, 1, 0);
}

static void ack(struct sim *s)
{
        reply(s, ACK);
}

static void nack(struct sim *s, const char *why)
{
        vlog(s, "NACK (%s)", why);
        s->n.nacks++;
        reply(s, NACK);
        s->state = DEV_READY;
}

static void flush_tx(struct sim *s)
{
        uint8_t out[TX_MAX];
        size_t n = 0;

        if (s->tx_len == 0 || gw_sim_now_ns() < s->tx_at_ns)
                return;
        for (size_t i = 0; i < s->tx_len; i++) {
                s->tx_count++;
                if (s->drop_tx_at && s->tx_count == s->drop_tx_at) {
                        vlog(s, "fault: dropping sent byte 0x%02x", s->tx[i]);
                        s->drop_tx_at = 0;
                        s->n.dropped_tx++;
                        continue;
                }
                out[n++] = s->tx[i];
        }
        if (s->connected && n > 0) {
                ssize_t r;

                /* A reply starts when it is decided, not back to back with the last one. */
                gw_pace_tx_idle(s->pace);
                r = gw_pace_write(s->pace, s->master, out, n);

                if (r == -EIO)
                        s->connected = false;
        }
        s->n.bytes_tx += n;
        s->n.last_tx_ns = gw_sim_now_ns();
        s->tx_len = 0;
        s->tx_at_ns = 0;
}

static void collect(struct sim *s, enum stage st, size_t need)
{
        s->state = DEV_COLLECT;
        s->stage = st;
        s->len = 0;
        s->need = need;
}

/* Pages of the flash as the chip numbers them: the address and size of page number num. */
static bool page_by_number(const struct sim *s, unsigned num, uint32_t *ret_off, uint32_t *ret_size)
{
        uint32_t off = 0;

        for (const struct run *r = s->chip->runs; r->count > 0; r++) {
                if (num >= r->first && num < (unsigned) r->first + r->count) {
                        uint32_t o = off + (num - r->first) * r->size;

                        if (o + r->size > s->flash_size)
                                return false;
                        *ret_off = o;
                        *ret_size = r->size;
                        return true;
                }
                off += (uint32_t) r->count * r->size;
        }
        return false;
}

static bool in_flash(const struct sim *s, uint32_t addr, uint64_t len)
{
        return addr >= FLASH_BASE && (uint64_t) addr + len <= (uint64_t) FLASH_BASE + s->flash_size;
}

static bool readable(const struct sim *s, uint32_t addr, uint64_t len)
{
        uint32_t reg = s->chip->size_reg;

        if (in_flash(s, addr, len))
                return true;
        return addr >= reg && (uint64_t) addr + len <= (uint64_t) reg + 2;
}

static void command(struct sim *s, uint8_t c)
{
        static const uint8_t cmds_tail[] = {0x63, 0x73, 0x82, 0x92};
        uint8_t out[32];
        size_t n = 0;

        s->cmd = c;
        switch (c) {
        case 0x00: /* GET */
                s->n.cmd_get++;
                out[n++] = ACK;
                out[n++] = 11;
                out[n++] = s->bl_version;
                out[n++] = 0x00;
                out[n++] = 0x01;
                out[n++] = 0x02;
                out[n++] = 0x11;
                out[n++] = 0x21;
                out[n++] = 0x31;
                out[n++] = s->legacy_erase ? 0x43 : 0x44;
                memcpy(out + n, cmds_tail, sizeof(cmds_tail));
                n += sizeof(cmds_tail);
                out[n++] = ACK;
                reply_after(s, out, n, 0);
                return;
        case 0x01: /* GET_VERSION */
                s->n.cmd_get_version++;
                out[n++] = ACK;
                out[n++] = s->bl_version;
                out[n++] = 0x00;
                out[n++] = 0x00;
                out[n++] = ACK;
                reply_after(s, out, n, 0);
                return;
        case 0x02: /* GET_ID */
                s->n.cmd_get_id++;
                out[n++] = ACK;
                out[n++] = 1;
                out[n++] = (uint8_t) (s->chip->pid >> 8);
                out[n++] = (uint8_t) s->chip->pid;
                out[n++] = ACK;
                reply_after(s, out, n, 0);
                return;
        case 0x11:
        case 0x21:
        case 0x31:
        case 0x43:
        case 0x44:
                if (c == 0x11)
                        s->n.cmd_read++;
                else if (c == 0x21)
                        s->n.cmd_go++;
                else if (c == 0x31)
                        s->n.cmd_write++;
                else if (c == 0x43)
                        s->n.cmd_erase++;
                else
                        s->n.cmd_ext_erase++;
                if ((c == 0x43 && !s->legacy_erase) || (c == 0x44 && s->legacy_erase)) {
                        nack(s, "erase command not offered");
                        return;
                }
                if (s->faults.rdp) {
                        nack(s, "read protection");
                        return;
                }
                ack(s);
                collect(s,
                        c == 0x11   ? STAGE_READ_ADDR
                        : c == 0x21 ? STAGE_GO_ADDR
                        : c == 0x31 ? STAGE_WRITE_ADDR
                        : c == 0x43 ? STAGE_ERASE_N
                                    : STAGE_EXT_N,
                        c == 0x43   ? 1
                        : c == 0x44 ? 2
                                    : 5);
                return;
        case 0x92:
                s->n.cmd_readout_unprotect++;
                nack(s, "readout unprotect is not modelled");
                return;
        default:
                s->n.cmd_other++;
                nack(s, "unknown or unmodelled command");
                return;
        }
}

static uint32_t addr_of(const uint8_t *b)
{
        return (uint32_t) b[0] << 24 | (uint32_t) b[1] << 16 | (uint32_t) b[2] << 8 | b[3];
}

static void erase_range(struct sim *s, uint32_t off, uint32_t size)
{
        memset(s->flash + off, 0xff, size);
        s->n.pages_erased++;
}

static uint64_t page_erase_ns(const struct sim *s, uint32_t size)
{
        return (s->erase_ms + s->erase_ms_per_kib * (size / 1024u)) * NSEC_PER_MSEC;
}

static void mass_erase(struct sim *s)
{
        memset(s->flash, 0xff, s->flash_size);
        s->n.mass_erases++;
        vlog(s, "mass erase");
        reply_after(s, (const uint8_t[]){ACK}, 1, s->mass_erase_ms * NSEC_PER_MSEC);
        s->state = DEV_READY;
}

/* Erases the listed pages (one or two bytes each, MSB first) once all are valid. */
static void erase_pages(struct sim *s, const uint8_t *p, size_t count, bool wide)
{
        uint64_t ns = 0;

        for (size_t i = 0; i < count; i++) {
                unsigned num = wide ? (unsigned) (p[2 * i] << 8 | p[2 * i + 1]) : p[i];
                uint32_t off, size;

                if (!page_by_number(s, num, &off, &size)) {
                        nack(s, "no such page");
                        return;
                }
        }
        for (size_t i = 0; i < count; i++) {
                unsigned num = wide ? (unsigned) (p[2 * i] << 8 | p[2 * i + 1]) : p[i];
                uint32_t off = 0, size = 0;

                page_by_number(s, num, &off, &size);
                erase_range(s, off, size);
                ns += page_erase_ns(s, size);
        }
        vlog(s, "erased %zu pages", count);
        reply_after(s, (const uint8_t[]){ACK}, 1, ns);
        s->state = DEV_READY;
}

/* A collected phase is complete in s->buf. */
static void stage_done(struct sim *s)
{
        const uint8_t *b = s->buf;

        switch (s->stage) {
        case STAGE_CMD:
                s->state = DEV_READY;
                if ((uint8_t) (b[0] ^ b[1]) != 0xff) {
                        nack(s, "command complement");
                        return;
                }
                command(s, b[0]);
                return;
        case STAGE_READ_ADDR:
        case STAGE_GO_ADDR:
        case STAGE_WRITE_ADDR:
                if (xor_of(b, 4, 0) != b[4]) {
                        nack(s, "address checksum");
                        return;
                }
                s->addr = addr_of(b);
                if (s->stage == STAGE_READ_ADDR) {
                        if (!readable(s, s->addr, 1)) {
                                nack(s, "address not readable");
                                return;
                        }
                        ack(s);
                        collect(s, STAGE_READ_LEN, 2);
                } else if (s->stage == STAGE_GO_ADDR) {
                        if (!in_flash(s, s->addr, 4) &&
                            !(s->addr >= RAM_BASE && s->addr < RAM_BASE + RAM_SIZE)) {
                                nack(s, "GO address");
                                return;
                        }
                        ack(s);
                        s->n.go = true;
                        s->n.go_address = s->addr;
                        s->n.go_ns = gw_sim_now_ns();
                        vlog(s, "GO 0x%08" PRIx32, s->addr);
                        s->state = s->after_go_stay ? DEV_READY : DEV_APP;
                        if (s->once)
                                s->linger_until_ns = gw_sim_now_ns() + LINGER_NS;
                } else {
                        if (!in_flash(s, s->addr, 4) || s->addr % 4 != 0) {
                                nack(s, "write address");
                                return;
                        }
                        ack(s);
                        collect(s, STAGE_WRITE_LEN, 1);
                }
                return;
        case STAGE_READ_LEN: {
                size_t len = (size_t) b[0] + 1;
                uint8_t out[1 + 256];

                if ((uint8_t) (b[0] ^ b[1]) != 0xff) {
                        nack(s, "read length checksum");
                        return;
                }
                if (!readable(s, s->addr, len)) {
                        nack(s, "read beyond the region");
                        return;
                }
                out[0] = ACK;
                for (size_t i = 0; i < len; i++) {
                        uint32_t a = s->addr + (uint32_t) i;

                        if (in_flash(s, a, 1))
                                out[1 + i] = s->flash[a - FLASH_BASE];
                        else /* the flash size register, KiB little-endian */
                                out[1 + i] = (uint8_t) ((s->flash_size / 1024u) >>
                                                        (8 * (a - s->chip->size_reg)));
                }
                s->n.reads++;
                s->n.bytes_read += len;
                reply_after(s, out, 1 + len, 0);
                s->state = DEV_READY;
                return;
        }
        case STAGE_WRITE_LEN:
                /* N stays in buf[0]: the checksum covers it. */
                collect(s, STAGE_WRITE_DATA, (size_t) b[0] + 3);
                s->len = 1;
                return;
        case STAGE_WRITE_DATA: {
                size_t len = (size_t) b[0] + 1;

                s->write_count++;
                if (xor_of(b, len + 1, 0) != b[len + 1]) {
                        nack(s, "data checksum");
                        return;
                }
                if (len % 4 != 0 || !in_flash(s, s->addr, len)) {
                        nack(s, "write length or range");
                        return;
                }
                if (s->nack_block_at && s->write_count == s->nack_block_at) {
                        s->nack_block_at = 0;
                        nack(s, "fault: nack-block");
                        return;
                }
                /* NOR flash: programming only clears bits. */
                for (size_t i = 0; i < len; i++)
                        s->flash[s->addr - FLASH_BASE + i] &= b[1 + i];
                s->n.blocks_written++;
                s->n.bytes_written += len;
                reply_after(s, (const uint8_t[]){ACK}, 1, s->write_ms * NSEC_PER_MSEC);
                s->state = DEV_READY;
                return;
        }
        case STAGE_ERASE_N:
                if (b[0] == 0xff) {
                        collect(s, STAGE_ERASE_MASS_CS, 1);
                        return;
                }
                collect(s, STAGE_ERASE_PAGES, (size_t) b[0] + 3);
                s->len = 1;
                return;
        case STAGE_ERASE_MASS_CS:
                if (b[0] != 0x00) {
                        nack(s, "mass erase checksum");
                        return;
                }
                mass_erase(s);
                return;
        case STAGE_ERASE_PAGES: {
                size_t count = (size_t) b[0] + 1;

                if (xor_of(b, count + 1, 0) != b[count + 1]) {
                        nack(s, "erase checksum");
                        return;
                }
                erase_pages(s, b + 1, count, false);
                return;
        }
        case STAGE_EXT_N: {
                unsigned n = (unsigned) (b[0] << 8 | b[1]);

                if (n >= 0xfff0) {
                        collect(s, STAGE_EXT_SPECIAL_CS, 3);
                        s->len = 2;
                        return;
                }
                collect(s, STAGE_EXT_PAGES, 2 + 2 * ((size_t) n + 1) + 1);
                s->len = 2;
                return;
        }
        case STAGE_EXT_SPECIAL_CS:
                if ((uint8_t) (b[0] ^ b[1]) != b[2] || b[0] != 0xff || b[1] < 0xfd) {
                        nack(s, "special erase");
                        return;
                }
                /* 0xFFFF mass erase; 0xFFFE / 0xFFFD a bank: the whole flash here. */
                mass_erase(s);
                return;
        case STAGE_EXT_PAGES: {
                size_t count = (size_t) (b[0] << 8 | b[1]) + 1;

                if (xor_of(b, 2 + 2 * count, 0) != b[2 + 2 * count]) {
                        nack(s, "extended erase checksum");
                        return;
                }
                erase_pages(s, b + 2, count, true);
                return;
        }
        }
}

static void rx_byte(struct sim *s, uint8_t c, uint64_t now)
{
        s->rx_count++;
        if (s->drop_byte_at && s->rx_count == s->drop_byte_at) {
                vlog(s, "fault: dropping received byte 0x%02x", c);
                s->drop_byte_at = 0;
                s->n.dropped_rx++;
                return;
        }
        if (s->faults.silent)
                return;
        if (s->faults.sync_delay_ms &&
            now < s->connected_ns + s->faults.sync_delay_ms * NSEC_PER_MSEC)
                return; /* the bootloader is not running yet */
        s->n.bytes_rx++;
        if (s->n.first_rx_ns == 0)
                s->n.first_rx_ns = now;
        switch (s->state) {
        case DEV_WAIT_SYNC:
                if (c == SYNC) {
                        s->n.syncs++;
                        vlog(s, "0x7F: synchronised");
                        ack(s);
                        s->state = DEV_READY;
                }
                return;
        case DEV_READY:
                if (c == SYNC) {
                        /* Already synchronised: a real ROM NACKs it at once. */
                        s->n.sync_nacks++;
                        nack(s, "0x7F again");
                        return;
                }
                collect(s, STAGE_CMD, 2);
                s->buf[s->len++] = c;
                return;
        case DEV_COLLECT:
                s->buf[s->len++] = c;
                if (s->len == s->need)
                        stage_done(s);
                return;
        case DEV_APP:
                return;
        }
}

/* Applies one fault command ("nack-block 3"); the same words as the command-line flags. */
static int apply_command(struct sim *s, const char *cmd, const char *arg)
{
        bool needs_arg = strcmp(cmd, "silent") != 0 && strcmp(cmd, "resume") != 0 &&
                         strcmp(cmd, "rdp") != 0 && strcmp(cmd, "no-rdp") != 0;
        uint64_t v = 0;

        if (needs_arg && gw_sim_parse_u64(arg, 10, UINT32_MAX, &v) < 0)
                return -EINVAL;
        if (!needs_arg && arg && *arg)
                return -EINVAL;
        if (strcmp(cmd, "drop-byte") == 0 && v > 0)
                s->drop_byte_at = s->rx_count + v;
        else if (strcmp(cmd, "drop-tx") == 0 && v > 0)
                s->drop_tx_at = s->tx_count + v;
        else if (strcmp(cmd, "nack-block") == 0 && v > 0)
                s->nack_block_at = s->write_count + v;
        else if (strcmp(cmd, "sync-delay") == 0)
                s->faults.sync_delay_ms = v;
        else if (strcmp(cmd, "rdp") == 0)
                s->faults.rdp = true;
        else if (strcmp(cmd, "no-rdp") == 0)
                s->faults.rdp = false;
        else if (strcmp(cmd, "silent") == 0)
                s->faults.silent = true;
        else if (strcmp(cmd, "resume") == 0)
                s->faults.silent = false;
        else
                return -EINVAL;
        vlog(s, "fault armed: %s%s%s", cmd, arg ? " " : "", arg ? arg : "");
        return 0;
}

static void control_line(char *line, void *userdata)
{
        struct sim *s = userdata;
        char *w[2];
        int n = gw_sim_control_words(line, w, 2);

        if (n == 0)
                return;
        if (n < 0 || apply_command(s, w[0], n > 1 ? w[1] : NULL) < 0)
                fprintf(stderr, "stm32-sim: unknown control command \"%s\", ignoring\n", w[0]);
}

static void line_input(struct sim *s, short revents)
{
        if (!(revents & (POLLIN | POLLHUP | POLLERR)))
                return;
        for (;;) {
                ssize_t r = gw_pace_fill(s->pace, s->master);

                if (r > 0)
                        continue;
                if (r == -EIO) {
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
        s->ever_connected = true;
        s->connected_ns = now;
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
                while ((n = gw_pace_take(s->pace, now, buf, sizeof(buf))) > 0)
                        for (size_t i = 0; i < n; i++)
                                rx_byte(s, buf[i], now);
                flush_tx(s);
                if (s->once && s->ever_connected && s->tx_len == 0 &&
                    gw_pace_queued(s->pace) == 0 &&
                    (!s->connected || (s->linger_until_ns && now >= s->linger_until_ns)))
                        return 0;

                at = UINT64_MAX;
                if (s->tx_len > 0)
                        at = s->tx_at_ns;
                if (gw_pace_next_due(s->pace) < at)
                        at = gw_pace_next_due(s->pace);
                if (!s->connected && s->hup_check_ns < at)
                        at = s->hup_check_ns;
                if (s->linger_until_ns && s->linger_until_ns < at)
                        at = s->linger_until_ns;
                r = gw_sim_wait(&w, s->connected ? s->master : -1,
                                gw_pace_room(s->pace) > 0 ? POLLIN : 0, at, &signo);
                if (r < 0)
                        return r;
                if (signo) {
                        vlog(s, "signal %u, exiting", signo);
                        return 0;
                }
                line_input(s, (short) r);
        }
}

static int write_dump(const struct sim *s)
{
        char tmp[PATH_MAX];
        FILE *f;
        bool ok;

        if (snprintf(tmp, sizeof(tmp), "%s.tmp", s->dump_path) >= (int) sizeof(tmp))
                return -ENAMETOOLONG;
        f = fopen(tmp, "we");
        if (!f)
                return -errno;
        ok = fwrite(s->flash, 1, s->flash_size, f) == s->flash_size;
        ok = fclose(f) == 0 && ok;
        if (!ok || rename(tmp, s->dump_path) < 0) {
                unlink(tmp);
                return -EIO;
        }
        return 0;
}

/* One flat JSON object (tools/lib/common.sh's gw_report_field reads it). */
static int write_report(const struct sim *s)
{
        const struct counters *c = &s->n;
        uint64_t session = c->go ? c->go_ns : c->last_tx_ns;
        char id[8], go[16];
        json_t *j;
        char *text;
        FILE *f;
        int r = 0;

        snprintf(id, sizeof(id), "0x%03x", s->chip->pid);
        snprintf(go, sizeof(go), "0x%08" PRIx32, c->go_address);
        j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                      "chip_id", id, "chip", s->chip->name, "flash_size",
                      (json_int_t) s->flash_size, "baud", (json_int_t) s->baud, "bits_per_byte",
                      (json_int_t) s->bits, "erase", s->legacy_erase ? "legacy" : "extended", "go",
                      c->go ? "yes" : "no", "syncs", (json_int_t) c->syncs, "sync_nacks",
                      (json_int_t) c->sync_nacks, "nacks", (json_int_t) c->nacks, "bytes_rx",
                      (json_int_t) c->bytes_rx, "bytes_tx", (json_int_t) c->bytes_tx, "dropped_rx",
                      (json_int_t) c->dropped_rx, "dropped_tx", (json_int_t) c->dropped_tx);
        if (!j)
                return -ENOMEM;
        json_object_set_new(j, "go_address", json_string(go));
        json_object_set_new(j, "cmd_get", json_integer((json_int_t) c->cmd_get));
        json_object_set_new(j, "cmd_get_version", json_integer((json_int_t) c->cmd_get_version));
        json_object_set_new(j, "cmd_get_id", json_integer((json_int_t) c->cmd_get_id));
        json_object_set_new(j, "cmd_read", json_integer((json_int_t) c->cmd_read));
        json_object_set_new(j, "cmd_go", json_integer((json_int_t) c->cmd_go));
        json_object_set_new(j, "cmd_write", json_integer((json_int_t) c->cmd_write));
        json_object_set_new(j, "cmd_erase", json_integer((json_int_t) c->cmd_erase));
        json_object_set_new(j, "cmd_ext_erase", json_integer((json_int_t) c->cmd_ext_erase));
        json_object_set_new(j, "cmd_readout_unprotect",
                            json_integer((json_int_t) c->cmd_readout_unprotect));
        json_object_set_new(j, "cmd_other", json_integer((json_int_t) c->cmd_other));
        json_object_set_new(j, "blocks_written", json_integer((json_int_t) c->blocks_written));
        json_object_set_new(j, "bytes_written", json_integer((json_int_t) c->bytes_written));
        json_object_set_new(j, "reads", json_integer((json_int_t) c->reads));
        json_object_set_new(j, "bytes_read", json_integer((json_int_t) c->bytes_read));
        json_object_set_new(j, "pages_erased", json_integer((json_int_t) c->pages_erased));
        json_object_set_new(j, "mass_erases", json_integer((json_int_t) c->mass_erases));
        json_object_set_new(j, "busy_ms", json_integer((json_int_t) (c->busy_ns / NSEC_PER_MSEC)));
        json_object_set_new(
            j, "session_ms",
            json_integer((json_int_t) (c->first_rx_ns && session > c->first_rx_ns
                                           ? (session - c->first_rx_ns) / NSEC_PER_MSEC
                                           : 0)));
        json_object_set_new(j, "session_us",
                            json_integer((json_int_t) (c->first_rx_ns && session > c->first_rx_ns
                                                           ? (session - c->first_rx_ns) / 1000
                                                           : 0)));
        json_object_set_new(j, "write_ms", json_integer((json_int_t) s->write_ms));
        json_object_set_new(j, "erase_ms", json_integer((json_int_t) s->erase_ms));
        json_object_set_new(j, "erase_ms_per_kib", json_integer((json_int_t) s->erase_ms_per_kib));
        json_object_set_new(j, "mass_erase_ms", json_integer((json_int_t) s->mass_erase_ms));
        text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(j);
        if (!text)
                return -ENOMEM;
        f = fopen(s->report_path, "we");
        if (!f) {
                r = -errno;
        } else {
                fprintf(f, "%s\n", text);
                if (fclose(f) != 0)
                        r = -EIO;
        }
        free(text);
        return r;
}

static void usage(FILE *f)
{
        fputs("Usage: stm32-sim [OPTIONS]\n"
              "A simulated STM32 ROM bootloader (ST AN3155, USART) on a pseudo-terminal.\n\n"
              "  --link PATH            symlink to the pty (replaced if stale, removed on exit)\n"
              "  --baud N               line rate to simulate (default 115200; 0 = no pacing)\n"
              "  --bits N               bits per byte on the line (default 11: 8E1; 10: 8N1)\n"
              "  --chip-id ID           0x410 0x414 0x440 0x413 0x460 0x417 0x450 (default 0x410)\n"
              "  --flash-size BYTES     smaller part of the family (default the chip's)\n"
              "  --bootloader-version V GET's version byte, e.g. 0x31 (default: the chip's)\n"
              "  --erase extended|legacy  the erase command offered (default: by version,\n"
              "                         legacy below 0x30)\n"
              "  --fill BYTE            initial flash content (default 0xff)\n"
              "  --write-ms N           programming time per WRITE_MEMORY block (default 0)\n"
              "  --erase-ms N           erase time per page or sector (default 0)\n"
              "  --erase-ms-per-kib N   plus this per KiB of the page or sector (default 0)\n"
              "  --mass-erase-ms N      mass erase time (default 0)\n"
              "  --after-go app|stay    after GO the application runs and nothing answers\n"
              "                         (app, default), or the bootloader answers on (stay: as\n"
              "                         if an entry sequence brought it back)\n"
              "  --dump FILE            write the flash to FILE at exit\n"
              "  --report FILE          write a JSON report to FILE at exit\n"
              "  --once                 exit once the host closes the port (or 2 s after GO)\n"
              "  --control PATH         FIFO (created when missing) or file with fault commands\n"
              "  -v, --verbose          log what happens to stderr\n"
              "  -h, --help             this text\n\n"
              "Faults (also as control commands, one per line, without the dashes; N counts\n"
              "from when the fault is armed, 1 = the next one):\n"
              "  --nack-block N         NACK the data of the Nth WRITE_MEMORY (not programmed)\n"
              "  --drop-byte N          lose the Nth byte received\n"
              "  --drop-tx N            lose the Nth byte sent (an ACK, say)\n"
              "  --rdp                  read protection: READ, WRITE, GO and erase are NACKed\n"
              "                         (control: rdp, no-rdp)\n"
              "  --silent               answer nothing (control: silent, resume)\n"
              "  --sync-delay MS        ignore the line for MS after the host opens the port\n",
              f);
}

enum {
        OPT_LINK = 256,
        OPT_BAUD,
        OPT_BITS,
        OPT_CHIP,
        OPT_FLASH_SIZE,
        OPT_VERSION,
        OPT_ERASE,
        OPT_FILL,
        OPT_WRITE_MS,
        OPT_ERASE_MS,
        OPT_ERASE_KIB,
        OPT_MASS_MS,
        OPT_AFTER_GO,
        OPT_DUMP,
        OPT_REPORT,
        OPT_ONCE,
        OPT_CONTROL,
        OPT_FAULT,
};

static int parse_args(struct sim *s, int argc, char **argv, uint64_t *ret_pid, int *ret_version,
                      int *ret_legacy)
{
        static const struct option opts[] = {
            {"link", required_argument, NULL, OPT_LINK},
            {"baud", required_argument, NULL, OPT_BAUD},
            {"bits", required_argument, NULL, OPT_BITS},
            {"chip-id", required_argument, NULL, OPT_CHIP},
            {"flash-size", required_argument, NULL, OPT_FLASH_SIZE},
            {"bootloader-version", required_argument, NULL, OPT_VERSION},
            {"erase", required_argument, NULL, OPT_ERASE},
            {"fill", required_argument, NULL, OPT_FILL},
            {"write-ms", required_argument, NULL, OPT_WRITE_MS},
            {"erase-ms", required_argument, NULL, OPT_ERASE_MS},
            {"erase-ms-per-kib", required_argument, NULL, OPT_ERASE_KIB},
            {"mass-erase-ms", required_argument, NULL, OPT_MASS_MS},
            {"after-go", required_argument, NULL, OPT_AFTER_GO},
            {"dump", required_argument, NULL, OPT_DUMP},
            {"report", required_argument, NULL, OPT_REPORT},
            {"once", no_argument, NULL, OPT_ONCE},
            {"control", required_argument, NULL, OPT_CONTROL},
            {"nack-block", required_argument, NULL, OPT_FAULT},
            {"drop-byte", required_argument, NULL, OPT_FAULT},
            {"drop-tx", required_argument, NULL, OPT_FAULT},
            {"rdp", no_argument, NULL, OPT_FAULT},
            {"silent", no_argument, NULL, OPT_FAULT},
            {"sync-delay", required_argument, NULL, OPT_FAULT},
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
                case OPT_BITS:
                        if (gw_sim_parse_u64(optarg, 10, 13, &v) < 0 || v < 9)
                                goto bad;
                        s->bits = (unsigned) v;
                        break;
                case OPT_CHIP:
                        if (gw_sim_parse_u64(optarg, 0, 0xffff, ret_pid) < 0)
                                goto bad;
                        break;
                case OPT_FLASH_SIZE:
                        if (gw_sim_parse_u64(optarg, 0, 64 * 1024 * 1024, &v) < 0 || v == 0 ||
                            v % 1024 != 0)
                                goto bad;
                        s->flash_size = (uint32_t) v;
                        break;
                case OPT_VERSION:
                        if (gw_sim_parse_u64(optarg, 0, 0xff, &v) < 0)
                                goto bad;
                        *ret_version = (int) v;
                        break;
                case OPT_ERASE:
                        if (strcmp(optarg, "extended") == 0)
                                *ret_legacy = 0;
                        else if (strcmp(optarg, "legacy") == 0)
                                *ret_legacy = 1;
                        else
                                goto bad;
                        break;
                case OPT_FILL:
                        if (gw_sim_parse_u64(optarg, 0, 0xff, &v) < 0)
                                goto bad;
                        s->fill = (uint8_t) v;
                        break;
                case OPT_WRITE_MS:
                        if (gw_sim_parse_u64(optarg, 10, 600000, &s->write_ms) < 0)
                                goto bad;
                        break;
                case OPT_ERASE_MS:
                        if (gw_sim_parse_u64(optarg, 10, 600000, &s->erase_ms) < 0)
                                goto bad;
                        break;
                case OPT_ERASE_KIB:
                        if (gw_sim_parse_u64(optarg, 10, 60000, &s->erase_ms_per_kib) < 0)
                                goto bad;
                        break;
                case OPT_MASS_MS:
                        if (gw_sim_parse_u64(optarg, 10, 3600000, &s->mass_erase_ms) < 0)
                                goto bad;
                        break;
                case OPT_AFTER_GO:
                        if (strcmp(optarg, "app") == 0)
                                s->after_go_stay = false;
                        else if (strcmp(optarg, "stay") == 0)
                                s->after_go_stay = true;
                        else
                                goto bad;
                        break;
                case OPT_DUMP:
                        s->dump_path = optarg;
                        break;
                case OPT_REPORT:
                        s->report_path = optarg;
                        break;
                case OPT_ONCE:
                        s->once = true;
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
                fprintf(stderr, "stm32-sim: unexpected argument \"%s\"\n", argv[optind]);
                return -EINVAL;
        }
        return 0;
bad:
        fprintf(stderr, "stm32-sim: invalid value for --%s: \"%s\"\n",
                idx >= 0 ? opts[idx].name : "?", optarg ? optarg : "");
        return -EINVAL;
}

int main(int argc, char **argv)
{
        struct sim s = {
            .baud = 115200,
            .bits = 11,
            .fill = 0xff,
            .master = -1,
            .sigfd = -1,
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
        uint64_t pid = 0x410;
        int version = -1, legacy = -1, r, status = EXIT_FAILURE;

        if (parse_args(&s, argc, argv, &pid, &version, &legacy) < 0)
                return 2;
        for (size_t i = 0; i < sizeof(chips) / sizeof(chips[0]); i++)
                if (chips[i].pid == pid)
                        s.chip = &chips[i];
        if (!s.chip) {
                fprintf(stderr, "stm32-sim: chip id 0x%03" PRIx64 " is not modelled\n", pid);
                return 2;
        }
        if (s.flash_size == 0)
                s.flash_size = s.chip->flash_size;
        if (s.flash_size > s.chip->flash_size) {
                fprintf(stderr, "stm32-sim: --flash-size is larger than the %s's %u bytes\n",
                        s.chip->name, s.chip->flash_size);
                return 2;
        }
        s.bl_version = version >= 0 ? (uint8_t) version : s.chip->bl_version;
        s.legacy_erase = legacy >= 0 ? legacy == 1 : s.bl_version < 0x30;
        s.flash = malloc(s.flash_size);
        s.buf = malloc(COLLECT_MAX);
        if (!s.flash || !s.buf) {
                fprintf(stderr, "stm32-sim: out of memory\n");
                goto out;
        }
        memset(s.flash, s.fill, s.flash_size);
        s.sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        if (s.sigfd < 0) {
                fprintf(stderr, "stm32-sim: signalfd: %s\n", strerror(-s.sigfd));
                goto out;
        }
        if (s.control_path) {
                r = gw_sim_control_open(&s.ctl, s.control_path);
                if (r < 0) {
                        fprintf(stderr, "stm32-sim: cannot open control %s: %s\n", s.control_path,
                                strerror(-r));
                        goto out;
                }
        }
        r = gw_pace_new(s.baud, s.bits, RX_QUEUE, &s.pace);
        if (r >= 0)
                r = gw_sim_pty_open("stm32-sim", s.link, s.slave, sizeof(s.slave), &s.master);
        if (r < 0)
                goto out;
        /* The pty is raw and linked: a host may open it now. */
        fprintf(stderr,
                "stm32-sim: ready on %s%s%s: chip 0x%03x (%s), %u KiB, bootloader %u.%u, "
                "%s erase, %u baud, %u bits a byte\n",
                s.slave, s.link ? " as " : "", s.link ? s.link : "", s.chip->pid, s.chip->name,
                s.flash_size / 1024u, s.bl_version >> 4, s.bl_version & 0xf,
                s.legacy_erase ? "legacy" : "extended", s.baud, s.bits);
        s.state = DEV_WAIT_SYNC;
        r = run(&s);
        if (r < 0)
                fprintf(stderr, "stm32-sim: %s\n", strerror(-r));
        else
                status = EXIT_SUCCESS;
        if (s.dump_path && write_dump(&s) < 0) {
                fprintf(stderr, "stm32-sim: cannot write %s\n", s.dump_path);
                status = EXIT_FAILURE;
        }
        if (s.report_path && write_report(&s) < 0) {
                fprintf(stderr, "stm32-sim: cannot write %s\n", s.report_path);
                status = EXIT_FAILURE;
        }
out:
        gw_sim_pty_unlink(s.link, s.slave);
        if (s.master >= 0)
                close(s.master);
        gw_sim_control_done(&s.ctl);
        gw_pace_free(s.pace);
        if (s.sigfd >= 0)
                close(s.sigfd);
        free(s.flash);
        free(s.buf);
        return status;
}
