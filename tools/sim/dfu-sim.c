/* dfu-sim: a USB DFU device (DFU 1.1 or ST DfuSe, optionally starting in runtime mode) emulated
 * beneath the real libusb with umockdev, so that unmodified hosts (dfu-util, gwflash, gatewayd)
 * run against it: flash kept in memory, busy times modelled, faults on request, counters. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* linux/ioctl.h first: usbdevice_fs.h uses its macros without including it. */
#include <linux/ioctl.h>
#include <linux/usbdevice_fs.h>

#include <jansson.h>
#include <umockdev.h>

#include "cli.h"
#include "control.h"

extern char **environ;

#define NSEC_PER_MSEC   1000000ULL
#define MAX_DEVICES     8
#define MAX_ALTS        8
#define MAX_REGIONS     16
#define MAX_MEMORY      (64U << 20) /* per device, all alt settings together */
#define MAX_XFER        65535U      /* what the descriptor can declare; hosts cap it at 4096 */
#define MAX_WAIT_MS     0xffffffU   /* bwPollTimeout is 24 bits */
#define STR_MAX         126         /* a string descriptor holds 126 UTF-16 units */
#define PRELOAD_LIB     "libumockdev-preload.so.0"
#define USB_SPEED_HIGH_ 3

enum dfu_req {
        REQ_DETACH,
        REQ_DNLOAD,
        REQ_UPLOAD,
        REQ_GETSTATUS,
        REQ_CLRSTATUS,
        REQ_GETSTATE,
        REQ_ABORT,
        N_DFU_REQ
};

static const char *const req_names[N_DFU_REQ] = {"DETACH",    "DNLOAD",   "UPLOAD", "GETSTATUS",
                                                 "CLRSTATUS", "GETSTATE", "ABORT"};

enum dfu_state {
        ST_APP_IDLE,
        ST_APP_DETACH,
        ST_IDLE,
        ST_DNLOAD_SYNC,
        ST_DNBUSY,
        ST_DNLOAD_IDLE,
        ST_MANIFEST_SYNC,
        ST_MANIFEST,
        ST_MANIFEST_WAIT_RESET,
        ST_UPLOAD_IDLE,
        ST_ERROR,
};

static const char *const state_names[] = {
    "appIDLE",        "appDETACH",        "dfuIDLE",     "dfuDNLOAD-SYNC",         "dfuDNBUSY",
    "dfuDNLOAD-IDLE", "dfuMANIFEST-SYNC", "dfuMANIFEST", "dfuMANIFEST-WAIT-RESET", "dfuUPLOAD-IDLE",
    "dfuERROR",
};

enum {
        DFU_OK,
        ERR_TARGET,
        ERR_FILE,
        ERR_WRITE,
        ERR_ERASE,
        ERR_CHECK_ERASED,
        ERR_PROG,
        ERR_VERIFY,
        ERR_ADDRESS,
        ERR_NOTDONE,
        ERR_FIRMWARE,
        ERR_VENDOR,
        ERR_USBR,
        ERR_POR,
        ERR_UNKNOWN,
        ERR_STALLEDPKT,
        N_STATUS,
};

static const char *const status_names[N_STATUS] = {
    "OK",      "errTARGET", "errFILE",    "errWRITE",      "errERASE",    "errCHECK_ERASED",
    "errPROG", "errVERIFY", "errADDRESS", "errNOTDONE",    "errFIRMWARE", "errVENDOR",
    "errUSBR", "errPOR",    "errUNKNOWN", "errSTALLEDPKT",
};

/* bmAttributes of the DFU functional descriptor. */
#define ATTR_CAN_DNLOAD   0x01
#define ATTR_CAN_UPLOAD   0x02
#define ATTR_MANIFEST_TOL 0x04
#define ATTR_WILL_DETACH  0x08

/* DfuSe memory segment attributes: the letter 'a'..'g' minus 'a' plus 1. */
#define SEG_READ  0x01
#define SEG_ERASE 0x02
#define SEG_WRITE 0x04

/* DfuSe commands in DNLOAD block 0. */
#define DFUSE_GET_COMMANDS   0x00
#define DFUSE_SET_ADDRESS    0x21
#define DFUSE_ERASE          0x41
#define DFUSE_READ_UNPROTECT 0x92

enum mode { MODE_DFU, MODE_RUNTIME, MODE_GONE };

/* What the main thread does to a device next (umockdev's testbed is driven from there only). */
enum plug_op {
        PLUG_NONE,
        PLUG_REENUMERATE, /* remove, then add again in plug_mode */
        PLUG_REMOVE,      /* remove; add again in plug_mode after reconnect_ms (0: never) */
        PLUG_ADD,         /* add in plug_mode */
};

struct region {
        uint32_t start, page_size, npages;
        uint8_t attr;
        uint8_t *mem;
        uint8_t *touched; /* DFU 1.1: page erased in this download session */
};

struct alt {
        char name[STR_MAX + 1];
        struct region reg[MAX_REGIONS];
        unsigned nreg;
};

struct counters {
        uint64_t dfu_req[N_DFU_REQ];
        uint64_t get_descriptor, other_standard, control_transfers, stalls;
        uint64_t bytes_out, bytes_in, data_blocks, zero_length_dnloads, block_gaps;
        uint64_t set_address, erase_page, mass_erase, read_unprotect, pages_erased;
        uint64_t busy_reports, early_polls, declared_wait_ms, errors_reported;
        uint64_t actual_busy_ns, observed_wait_ns;
        /* GETSTATUS answers that do not ask the host to wait, what they declared, the time
         * from each to the host's next request, and how often (and for how many declared ms)
         * that time covered a non-zero declaration: the host slept although the device was
         * ready. */
        uint64_t idle_reports, idle_declared_ms, idle_observed_wait_ns;
        uint64_t idle_waits_honoured, idle_honoured_ms;
        uint64_t enumerations, detaches, resets, disconnects;
};

/* Armed faults count data-carrying DNLOADs (or DFU requests, for stall) from when they were armed:
 * N = 1 is the next one. Each fires once. */
struct faults {
        uint64_t error_in;
        uint8_t error_status;
        bool error_at_manifest;
        uint8_t manifest_status;
        uint64_t stall_in;
        uint64_t stuck_in;
        uint64_t disconnect_in;
        uint64_t corrupt_in;
};

/* What one device is, beyond its serial: the protocol it speaks, its ids and strings, its memory,
 * what its descriptor promises and its time model. The command-line options are every device's
 * defaults; --device SPEC changes them for one device. The first group is as given (-1 or NULL:
 * not given, the protocol's default applies), the second is resolved from it. */
struct personality {
        bool dfuse;
        bool start_runtime;
        int64_t vid_opt, pid_opt, runtime_pid_opt, xfer_opt, detach_opt;
        int tolerant_opt, will_detach, can_upload;
        const char *manufacturer, *product;
        const char *layouts[MAX_ALTS];
        unsigned nlayouts;
        uint32_t poll_timeout_ms;
        uint32_t idle_poll_timeout_ms; /* bwPollTimeout in answers that are not busy */
        uint32_t program_ms, erase_ms, manifest_ms;
        uint32_t size, page_size;
        int fill;
        const char *load_path;
        enum mode after_manifest;
        bool after_manifest_set;
        uint32_t reenum_ms, reconnect_ms;

        uint16_t vid, pid, runtime_pid, bcd_device;
        uint8_t attributes;
        uint16_t detach_timeout_ms;
        uint32_t transfer_size;
};

struct sim;

struct device {
        struct sim *sim;
        unsigned idx;
        char serial[STR_MAX + 1];
        struct personality p; /* resolved; fixed once the device exists */
        char *spec;           /* --device's SPEC, split: p's strings point into it */
        char sysname[16];
        char syspath[96];
        char devnode[64];
        unsigned devnum;

        /* Guarded by sim->lock. */
        bool present; /* answering on devnode */
        enum mode mode;
        bool plugged; /* main thread only: the testbed holds the device */
        enum plug_op plug;
        enum mode plug_mode;
        uint64_t plug_at;

        struct alt alts[MAX_ALTS];
        unsigned nalts, alt;
        enum dfu_state state;
        uint8_t status;

        /* the block being downloaded */
        uint8_t *blk;
        size_t blk_len;
        uint16_t blk_num;
        uint8_t blk_inject;
        bool fresh;    /* no GETSTATUS since the DNLOAD */
        bool executed; /* the block's operation was started */
        bool stuck;
        uint8_t op_status;
        uint64_t busy_until;

        bool manifest_started;
        uint64_t manifest_until;
        uint64_t detach_deadline;

        uint32_t addr; /* DfuSe address pointer */
        bool left;     /* DfuSe: a leave request came, to leave_addr (the pointer) */
        uint32_t leave_addr;
        uint64_t dl_pos;   /* DFU 1.1: next byte of the image */
        uint64_t fw_len;   /* DFU 1.1: image length, what UPLOAD returns */
        uint64_t ul_pos;   /* DFU 1.1: next byte of an upload */
        uint16_t next_blk; /* DFU 1.1: expected wValue */

        uint64_t busy_reported_at; /* when we last told the host to wait */
        uint64_t declared_until;
        uint64_t idle_reported_at; /* when we last answered ready, declaring idle_declared */
        uint32_t idle_declared;

        struct faults f;
        struct counters c;
};

struct sim {
        /* configuration */
        struct personality defaults; /* the command-line options, as given */
        struct personality base;     /* the same, resolved: what the report states on top */
        const char *report_path, *dump_path, *control_path, *env_path;
        bool verbose;
        char **child_argv;

        /* run time */
        pid_t child; /* the command under test, once started; else 0 */
        pthread_mutex_t lock;
        UMockdevTestbed *tb;
        UMockdevIoctlBase *handler;
        char *root_dir;
        int wake_fd, sigfd;
        struct gw_sim_control ctl;
        unsigned next_devnum;
        uint64_t t0;
        struct faults initial_faults;
        struct device dev[MAX_DEVICES];
        unsigned ndev;
};

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

#define vlog(s, ...) gw_sim_log((s)->verbose, "dfu-sim", __VA_ARGS__)

static void wake_main(struct sim *s)
{
        uint64_t one = 1;

        if (write(s->wake_fd, &one, sizeof(one)) < 0) {
                /* the counter is saturated: the main thread has a wake-up pending anyway */
        }
}

/* Numbers in decimal or 0x-hex, at most max. */
static int parse_u64(const char *str, uint64_t max, uint64_t *ret)
{
        return gw_sim_parse_u64(str, 0, max, ret);
}

/* Strings that go into sysfs records and descriptors: printable ASCII, no backslash. */
static bool valid_string(const char *str)
{
        size_t n = strlen(str);

        if (n == 0 || n > STR_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (str[i] < 0x20 || str[i] > 0x7e || str[i] == '\\')
                        return false;
        return true;
}

static int parse_status(const char *str, uint8_t *ret)
{
        uint64_t v;

        for (unsigned i = 1; i < N_STATUS; i++)
                if (strcasecmp(str, status_names[i]) == 0 ||
                    strcasecmp(str, status_names[i] + 3) == 0) {
                        *ret = (uint8_t) i;
                        return 0;
                }
        if (parse_u64(str, N_STATUS - 1, &v) < 0 || v == 0)
                return -EINVAL;
        *ret = (uint8_t) v;
        return 0;
}

/* ---- memory ---------------------------------------------------------------------------- */

/* Parses a DfuSe layout "@Name /0xADDR/N*SIZE[ KM]a-g,.../0xADDR/..." into alt's regions. */
static int parse_layout(const char *layout, struct alt *alt, uint64_t *budget)
{
        const char *p = layout;

        alt->nreg = 0;
        if (*p != '@' || !strchr(p, '/'))
                return -EINVAL;
        while ((p = strchr(p, '/'))) {
                unsigned long long start;
                char *end;

                p++;
                errno = 0;
                start = strtoull(p, &end, 16);
                if (errno != 0 || end == p || *end != '/' || start > UINT32_MAX)
                        return -EINVAL;
                p = end + 1;
                for (;;) {
                        unsigned long n, sz;
                        uint64_t mult = 1, bytes;
                        struct region *r;
                        char unit, type;

                        errno = 0;
                        n = strtoul(p, &end, 10);
                        if (errno != 0 || end == p || *end != '*' || n == 0 || n > 4096)
                                return -EINVAL;
                        p = end + 1;
                        sz = strtoul(p, &end, 10);
                        if (errno != 0 || end == p || sz == 0 || sz > 1048576)
                                return -EINVAL;
                        p = end;
                        unit = *p ? *p++ : '\0';
                        if (unit == 'K')
                                mult = 1024;
                        else if (unit == 'M')
                                mult = 1024 * 1024;
                        else if (unit != ' ' && unit != 'B')
                                return -EINVAL;
                        type = *p ? *p++ : '\0';
                        if (type < 'a' || type > 'g')
                                return -EINVAL;
                        bytes = (uint64_t) n * sz * mult;
                        if (sz * mult > UINT32_MAX || bytes > *budget ||
                            start + bytes > (uint64_t) UINT32_MAX + 1 || alt->nreg >= MAX_REGIONS)
                                return -EINVAL;
                        r = &alt->reg[alt->nreg++];
                        r->start = (uint32_t) start;
                        r->page_size = (uint32_t) (sz * mult);
                        r->npages = (uint32_t) n;
                        r->attr = (uint8_t) (type - 'a' + 1);
                        *budget -= bytes;
                        start += bytes;
                        if (*p != ',')
                                break;
                        p++;
                }
                if (*p != '\0' && *p != '/')
                        return -EINVAL;
        }
        if (alt->nreg == 0)
                return -EINVAL;
        return 0;
}

static uint64_t region_size(const struct region *r)
{
        return (uint64_t) r->page_size * r->npages;
}

static struct region *find_region(struct alt *alt, uint64_t addr)
{
        for (unsigned i = 0; i < alt->nreg; i++) {
                struct region *r = &alt->reg[i];

                if (addr >= r->start && addr < r->start + region_size(r))
                        return r;
        }
        return NULL;
}

/* Checks, then writes len bytes at addr across regions: every byte must lie in a writable region
 * (errADDRESS, errWRITE) and be erased (errWRITE: flash cannot be programmed twice). */
static uint8_t mem_write(struct alt *alt, uint64_t addr, const uint8_t *data, size_t len)
{
        size_t done = 0;

        while (done < len) {
                struct region *r = find_region(alt, addr + done);
                uint64_t off, n;

                if (!r)
                        return ERR_ADDRESS;
                if (!(r->attr & SEG_WRITE))
                        return ERR_WRITE;
                off = addr + done - r->start;
                n = region_size(r) - off;
                if (n > len - done)
                        n = len - done;
                for (uint64_t i = 0; i < n; i++)
                        if (r->mem[off + i] != 0xff)
                                return ERR_WRITE;
                done += n;
        }
        for (done = 0; done < len;) {
                struct region *r = find_region(alt, addr + done);
                uint64_t off = addr + done - r->start, n = region_size(r) - off;

                if (n > len - done)
                        n = len - done;
                memcpy(r->mem + off, data + done, n);
                done += n;
        }
        return DFU_OK;
}

/* Reads up to len readable bytes from addr; stops at a gap. Returns the count, or -1 when the
 * memory there is not readable. */
static ssize_t mem_read(struct alt *alt, uint64_t addr, uint8_t *buf, size_t len)
{
        size_t done = 0;

        while (done < len) {
                struct region *r = find_region(alt, addr + done);
                uint64_t off, n;

                if (!r)
                        break;
                if (!(r->attr & SEG_READ))
                        return -1;
                off = addr + done - r->start;
                n = region_size(r) - off;
                if (n > len - done)
                        n = len - done;
                memcpy(buf + done, r->mem + off, n);
                done += n;
        }
        return (ssize_t) done;
}

static void erase_page(struct device *d, struct region *r, uint32_t page)
{
        memset(r->mem + (uint64_t) page * r->page_size, 0xff, r->page_size);
        d->c.pages_erased++;
}

/* ---- descriptors ----------------------------------------------------------------------- */

static uint16_t cur_pid(const struct device *d)
{
        return d->mode == MODE_RUNTIME ? d->p.runtime_pid : d->p.pid;
}

static size_t device_descriptor(const struct device *d, uint8_t *b)
{
        uint16_t pid = cur_pid(d);
        uint8_t desc[18] = {18,
                            1,
                            0x00,
                            0x02,
                            0,
                            0,
                            0,
                            64,
                            (uint8_t) d->p.vid,
                            (uint8_t) (d->p.vid >> 8),
                            (uint8_t) pid,
                            (uint8_t) (pid >> 8),
                            (uint8_t) d->p.bcd_device,
                            (uint8_t) (d->p.bcd_device >> 8),
                            1,
                            2,
                            3,
                            1};

        memcpy(b, desc, sizeof(desc));
        return sizeof(desc);
}

static size_t functional_descriptor(const struct device *d, uint8_t *b)
{
        uint16_t bcd = d->p.dfuse ? 0x011a : 0x0110;

        b[0] = 9;
        b[1] = 0x21;
        b[2] = d->p.attributes;
        b[3] = (uint8_t) d->p.detach_timeout_ms;
        b[4] = (uint8_t) (d->p.detach_timeout_ms >> 8);
        b[5] = (uint8_t) d->p.transfer_size;
        b[6] = (uint8_t) (d->p.transfer_size >> 8);
        b[7] = (uint8_t) bcd;
        b[8] = (uint8_t) (bcd >> 8);
        return 9;
}

/* Configuration 1, interface 0: one alt setting per memory (DFU mode) or the runtime interface;
 * the DFU functional descriptor follows the last alt setting, as on ST's ROM bootloader. */
static size_t config_descriptor(const struct device *d, uint8_t *b)
{
        unsigned nalts = d->mode == MODE_RUNTIME ? 1 : d->nalts;
        size_t n = 9;

        for (unsigned i = 0; i < nalts; i++) {
                uint8_t *p = b + n;

                p[0] = 9;
                p[1] = 4;
                p[2] = 0;
                p[3] = (uint8_t) i;
                p[4] = 0;
                p[5] = 0xfe;
                p[6] = 1;
                p[7] = d->mode == MODE_RUNTIME ? 1 : 2;
                p[8] = (uint8_t) (4 + i);
                n += 9;
        }
        n += functional_descriptor(d, b + n);
        b[0] = 9;
        b[1] = 2;
        b[2] = (uint8_t) n;
        b[3] = (uint8_t) (n >> 8);
        b[4] = 1;
        b[5] = 1;
        b[6] = 0;
        b[7] = 0x80;
        b[8] = 50;
        return n;
}

static const char *string_for(const struct device *d, unsigned idx)
{
        if (idx == 1)
                return d->p.manufacturer;
        if (idx == 2)
                return d->p.product;
        if (idx == 3)
                return d->serial;
        if (d->mode == MODE_RUNTIME)
                return idx == 4 ? "DFU runtime" : NULL;
        if (idx >= 4 && idx - 4 < d->nalts)
                return d->alts[idx - 4].name;
        return NULL;
}

static size_t string_descriptor(const struct device *d, unsigned idx, uint8_t *b)
{
        const char *str;
        size_t n;

        if (idx == 0) {
                b[0] = 4;
                b[1] = 3;
                b[2] = 0x09;
                b[3] = 0x04;
                return 4;
        }
        str = string_for(d, idx);
        if (!str)
                return 0;
        n = strlen(str);
        b[0] = (uint8_t) (2 + 2 * n);
        b[1] = 3;
        for (size_t i = 0; i < n; i++) {
                b[2 + 2 * i] = (uint8_t) str[i];
                b[3 + 2 * i] = 0;
        }
        return 2 + 2 * n;
}

/* ---- the DFU state machine ------------------------------------------------------------- */

static void set_state(struct device *d, enum dfu_state st)
{
        if (d->state != st)
                vlog(d->sim, "%s: %s -> %s", d->serial, state_names[d->state], state_names[st]);
        d->state = st;
}

static void fail(struct device *d, uint8_t status)
{
        d->status = status;
        d->c.errors_reported++;
        set_state(d, ST_ERROR);
}

/* Asks the main thread to change the device's presence. A device that re-enumerates is gone
 * from the bus at once: what the host sends after this request fails with ENODEV. */
static void schedule_plug(struct device *d, enum plug_op op, enum mode mode, uint64_t at)
{
        if (op == PLUG_REENUMERATE || op == PLUG_REMOVE)
                d->present = false;
        d->plug = op;
        d->plug_mode = mode;
        d->plug_at = at;
        wake_main(d->sim);
}

static enum mode mode_after_manifest(const struct device *d)
{
        if (d->p.after_manifest_set)
                return d->p.after_manifest;
        return d->p.start_runtime ? MODE_RUNTIME : MODE_DFU;
}

/* Starts the operation of the downloaded block: decides its outcome and how long the device is
 * busy with it. */
static void execute_block(struct device *d, uint64_t now)
{
        struct alt *alt = &d->alts[d->alt];
        uint64_t busy_ms = 0;
        uint8_t st = DFU_OK;

        d->executed = true;
        if (d->blk_inject) {
                st = d->blk_inject;
                busy_ms = d->p.program_ms;
        } else if (!d->p.dfuse) {
                struct region *r = &alt->reg[0];

                if (d->dl_pos + d->blk_len > region_size(r)) {
                        st = ERR_ADDRESS;
                } else {
                        /* A DFU 1.1 device erases the pages it is about to program. */
                        uint32_t first = (uint32_t) (d->dl_pos / r->page_size);
                        uint32_t last = (uint32_t) ((d->dl_pos + d->blk_len - 1) / r->page_size);

                        for (uint32_t p = first; p <= last; p++)
                                if (!r->touched[p]) {
                                        r->touched[p] = 1;
                                        erase_page(d, r, p);
                                        busy_ms += d->p.erase_ms;
                                }
                        st = mem_write(alt, r->start + d->dl_pos, d->blk, d->blk_len);
                        if (st == DFU_OK) {
                                d->dl_pos += d->blk_len;
                                d->fw_len = d->dl_pos;
                        }
                        busy_ms += d->p.program_ms;
                }
        } else if (d->blk_num == 0) {
                uint8_t cmd = d->blk[0];
                uint32_t a = 0;
                struct region *r;

                if (d->blk_len == 5)
                        a = (uint32_t) d->blk[1] | (uint32_t) d->blk[2] << 8 |
                            (uint32_t) d->blk[3] << 16 | (uint32_t) d->blk[4] << 24;
                if (cmd == DFUSE_SET_ADDRESS) {
                        d->c.set_address++;
                        if (find_region(alt, a))
                                d->addr = a;
                        else
                                st = ERR_TARGET;
                } else if (cmd == DFUSE_ERASE && d->blk_len == 5) {
                        d->c.erase_page++;
                        r = find_region(alt, a);
                        if (!r || !(r->attr & SEG_ERASE)) {
                                st = ERR_TARGET;
                        } else {
                                /* As ST's device library does: the erased page's address
                                 * becomes the pointer, so a host must SET_ADDRESS after
                                 * erasing. */
                                d->addr = a;
                                erase_page(d, r, (uint32_t) ((a - r->start) / r->page_size));
                                busy_ms = d->p.erase_ms;
                        }
                } else {
                        /* Mass erase, or read unprotect (which mass-erases as well). */
                        if (cmd == DFUSE_ERASE)
                                d->c.mass_erase++;
                        else
                                d->c.read_unprotect++;
                        for (unsigned i = 0; i < alt->nreg; i++) {
                                r = &alt->reg[i];
                                if (!(r->attr & SEG_ERASE))
                                        continue;
                                for (uint32_t p = 0; p < r->npages; p++) {
                                        erase_page(d, r, p);
                                        busy_ms += d->p.erase_ms;
                                }
                        }
                }
        } else {
                uint64_t a = d->addr + (uint64_t) (d->blk_num - 2) * d->p.transfer_size;

                st = mem_write(alt, a, d->blk, d->blk_len);
                busy_ms = d->p.program_ms;
        }
        d->op_status = st;
        d->busy_until = now + busy_ms * NSEC_PER_MSEC;
        d->c.actual_busy_ns += busy_ms * NSEC_PER_MSEC;
        if (d->stuck)
                d->busy_until = UINT64_MAX;
}

/* A GETSTATUS that tells the host to wait: counted with what it declares. */
static void report_busy(struct device *d, uint64_t now, uint8_t *b, enum dfu_state st)
{
        uint32_t poll = d->p.poll_timeout_ms;

        set_state(d, st);
        b[0] = DFU_OK;
        b[1] = (uint8_t) poll;
        b[2] = (uint8_t) (poll >> 8);
        b[3] = (uint8_t) (poll >> 16);
        d->c.busy_reports++;
        d->c.declared_wait_ms += poll;
        d->busy_reported_at = now;
        d->declared_until = now + poll * NSEC_PER_MSEC;
}

/* A GETSTATUS answer that does not ask the host to wait: it declares --idle-poll-timeout-ms
 * (0 unless the device models one that declares it in every answer). A host need not honour
 * it, so it never counts towards early polls. */
static void report_idle(struct device *d, uint64_t now, uint8_t *b)
{
        uint32_t poll = d->p.idle_poll_timeout_ms;

        b[1] = (uint8_t) poll;
        b[2] = (uint8_t) (poll >> 8);
        b[3] = (uint8_t) (poll >> 16);
        d->c.idle_reports++;
        d->c.idle_declared_ms += poll;
        d->idle_reported_at = now;
        d->idle_declared = poll;
}

static void finish_block(struct device *d)
{
        if (d->op_status != DFU_OK) {
                vlog(d->sim, "%s: block %u failed: %s", d->serial, d->blk_num,
                     status_names[d->op_status]);
                fail(d, d->op_status);
        } else {
                set_state(d, ST_DNLOAD_IDLE);
        }
}

static int get_status(struct device *d, uint64_t now, uint8_t *b, size_t wlength, size_t *ret)
{
        if (wlength < 6)
                return -EPIPE;
        memset(b, 0, 6);
        switch (d->state) {
        case ST_DNLOAD_SYNC:
                if (d->p.dfuse && !d->executed) {
                        /* DfuSe executes on this request, and says so: dfuDNBUSY at first. */
                        execute_block(d, now);
                        d->fresh = false;
                        report_busy(d, now, b, ST_DNBUSY);
                        break;
                }
                d->fresh = false;
                if (d->stuck || now < d->busy_until) {
                        report_busy(d, now, b, ST_DNBUSY);
                } else {
                        finish_block(d);
                }
                break;
        case ST_DNBUSY:
                if (d->stuck || now < d->busy_until) {
                        report_busy(d, now, b, ST_DNBUSY);
                } else {
                        finish_block(d);
                }
                break;
        case ST_MANIFEST_SYNC:
                if (!d->manifest_started) {
                        d->manifest_started = true;
                        d->manifest_until = now + d->p.manifest_ms * NSEC_PER_MSEC;
                        d->c.actual_busy_ns += d->p.manifest_ms * NSEC_PER_MSEC;
                        report_busy(d, now, b, ST_MANIFEST);
                        if (d->p.dfuse) {
                                /* The leave request: the device jumps to the pointer (its
                                 * reset, here) once this answer is out. */
                                d->left = true;
                                d->leave_addr = d->addr;
                                schedule_plug(d, PLUG_REENUMERATE, mode_after_manifest(d), now);
                        }
                } else {
                        set_state(d, ST_IDLE);
                }
                break;
        case ST_MANIFEST:
                if (now < d->manifest_until) {
                        report_busy(d, now, b, ST_MANIFEST);
                } else if (d->f.error_at_manifest) {
                        d->f.error_at_manifest = false;
                        fail(d, d->f.manifest_status);
                } else if (d->p.attributes & ATTR_MANIFEST_TOL) {
                        set_state(d, ST_IDLE);
                } else {
                        set_state(d, ST_MANIFEST_WAIT_RESET);
                }
                break;
        default:
                break;
        }
        /* dfu_request() cleared busy_reported_at: it is set again only by a busy answer. */
        if (!d->busy_reported_at)
                report_idle(d, now, b);
        b[0] = d->state == ST_ERROR ? d->status : DFU_OK;
        b[4] = (uint8_t) d->state;
        *ret = 6;
        return 0;
}

static bool fires(uint64_t *countdown)
{
        return *countdown > 0 && --*countdown == 0;
}

static int dnload(struct device *d, uint16_t wvalue, const uint8_t *data, size_t len)
{
        struct sim *s = d->sim;
        bool is_data, is_erase, erase_fault;

        if (!(d->p.attributes & ATTR_CAN_DNLOAD) || len > d->p.transfer_size)
                return -EPIPE;
        if (d->state != ST_IDLE && d->state != ST_DNLOAD_IDLE)
                return -EPIPE;
        if (len == 0) {
                /* DFU 1.1 stalls an empty DNLOAD in dfuIDLE; ST's DfuSe devices take it as
                 * the leave request there too (their DFU class accepts it in dfuIDLE and
                 * dfuDNLOAD-IDLE alike), which is how dfu-util leaves after a .dfu file. */
                if (d->state == ST_IDLE && !d->p.dfuse)
                        return -EPIPE;
                d->c.zero_length_dnloads++;
                d->manifest_started = false;
                set_state(d, ST_MANIFEST_SYNC);
                return 0;
        }
        if (d->p.dfuse) {
                if (wvalue == 1)
                        return -EPIPE;
                if (wvalue == 0) {
                        uint8_t cmd = data[0];
                        bool ok = (cmd == DFUSE_SET_ADDRESS && len == 5) ||
                                  (cmd == DFUSE_ERASE && (len == 5 || len == 1)) ||
                                  (cmd == DFUSE_READ_UNPROTECT && len == 1);

                        if (!ok)
                                return -EPIPE;
                }
        }
        if (d->state == ST_IDLE) {
                /* A new download session. */
                d->dl_pos = 0;
                d->next_blk = wvalue;
                for (unsigned a = 0; a < d->nalts; a++)
                        for (unsigned i = 0; i < d->alts[a].nreg; i++)
                                memset(d->alts[a].reg[i].touched, 0, d->alts[a].reg[i].npages);
        }
        if (!d->p.dfuse) {
                if (wvalue != d->next_blk)
                        d->c.block_gaps++;
                d->next_blk = (uint16_t) (wvalue + 1);
        }
        /* Faults count data blocks; erase failures count DfuSe erase commands. */
        is_data = !d->p.dfuse || wvalue >= 2;
        is_erase = d->p.dfuse && wvalue == 0 && data[0] == DFUSE_ERASE;
        erase_fault = d->f.error_status == ERR_ERASE || d->f.error_status == ERR_CHECK_ERASED;
        d->c.bytes_out += len;
        if (is_data)
                d->c.data_blocks++;
        memcpy(d->blk, data, len);
        d->blk_len = len;
        d->blk_num = wvalue;
        d->blk_inject = DFU_OK;
        if (is_data && fires(&d->f.disconnect_in)) {
                vlog(s, "%s: fault: disconnect at this block", d->serial);
                d->c.disconnects++;
                d->present = false;
                schedule_plug(d, PLUG_REMOVE, MODE_DFU, now_ns());
                return -ENODEV;
        }
        if (is_data && fires(&d->f.corrupt_in)) {
                /* Programmed wrong, reported right: what only a read-back finds. */
                vlog(s, "%s: fault: this block is programmed with a flipped bit", d->serial);
                d->blk[len / 2] ^= 0x10;
        }
        if (is_data && fires(&d->f.stuck_in)) {
                vlog(s, "%s: fault: stuck busy from this block", d->serial);
                d->stuck = true;
        }
        if ((erase_fault ? is_erase : is_data) && fires(&d->f.error_in)) {
                vlog(s, "%s: fault: %s at this block", d->serial, status_names[d->f.error_status]);
                if (d->f.error_status == ERR_STALLEDPKT)
                        return -EPIPE;
                d->blk_inject = d->f.error_status;
        }
        d->fresh = true;
        d->executed = false;
        set_state(d, ST_DNLOAD_SYNC);
        if (!d->p.dfuse)
                execute_block(d, now_ns());
        return 0;
}

static int upload(struct device *d, uint16_t wvalue, uint8_t *b, size_t wlength, size_t *ret)
{
        struct alt *alt = &d->alts[d->alt];
        size_t n = 0;

        if (!(d->p.attributes & ATTR_CAN_UPLOAD) || wlength > d->p.transfer_size)
                return -EPIPE;
        if (d->state != ST_IDLE && d->state != ST_UPLOAD_IDLE)
                return -EPIPE;
        if (d->state == ST_IDLE)
                d->ul_pos = 0;
        if (d->p.dfuse) {
                if (wvalue == 1)
                        return -EPIPE;
                if (wvalue == 0) {
                        static const uint8_t cmds[] = {DFUSE_GET_COMMANDS, DFUSE_SET_ADDRESS,
                                                       DFUSE_ERASE, DFUSE_READ_UNPROTECT};

                        n = wlength < sizeof(cmds) ? wlength : sizeof(cmds);
                        memcpy(b, cmds, n);
                } else {
                        uint64_t a = d->addr + (uint64_t) (wvalue - 2) * d->p.transfer_size;
                        ssize_t r = mem_read(alt, a, b, wlength);

                        if (r < 0) {
                                fail(d, ERR_TARGET);
                                return -EPIPE;
                        }
                        n = (size_t) r;
                }
        } else {
                uint64_t left = d->fw_len - d->ul_pos;

                n = left < wlength ? (size_t) left : wlength;
                memcpy(b, alt->reg[0].mem + d->ul_pos, n);
                d->ul_pos += n;
        }
        d->c.bytes_in += n;
        set_state(d, n < wlength ? ST_IDLE : ST_UPLOAD_IDLE);
        *ret = n;
        return 0;
}

/* One DFU class request to interface 0. Returns 0 or -EPIPE (stall) or -ENODEV. */
static int dfu_request(struct device *d, uint8_t type, uint8_t req, uint16_t wvalue,
                       uint16_t windex, uint8_t *b, size_t wlength, size_t *ret)
{
        static const bool is_in[N_DFU_REQ] = {false, false, true, true, false, true, false};
        struct sim *s = d->sim;
        uint64_t now = now_ns();
        int r = 0;

        if (req >= N_DFU_REQ || windex != 0 || is_in[req] != ((type & 0x80) != 0))
                return -EPIPE;
        d->c.dfu_req[req]++;
        if (d->busy_reported_at) {
                d->c.observed_wait_ns += now - d->busy_reported_at;
                d->busy_reported_at = 0;
        }
        /* Only a busy answer's declaration binds the host (declared_until): an idle answer's
         * is advice, and a request at once after it is what a host should do. */
        if (req == REQ_GETSTATUS && now < d->declared_until)
                d->c.early_polls++;
        d->declared_until = 0;
        if (d->idle_reported_at) {
                uint64_t gap = now - d->idle_reported_at;

                d->c.idle_observed_wait_ns += gap;
                if (d->idle_declared && gap >= d->idle_declared * NSEC_PER_MSEC) {
                        d->c.idle_waits_honoured++;
                        d->c.idle_honoured_ms += d->idle_declared;
                }
                d->idle_reported_at = 0;
        }
        if (fires(&d->f.stall_in)) {
                vlog(s, "%s: fault: stalling %s", d->serial, req_names[req]);
                if (d->mode == MODE_DFU)
                        fail(d, ERR_STALLEDPKT);
                return -EPIPE;
        }

        if (d->mode == MODE_RUNTIME) {
                switch (req) {
                case REQ_DETACH:
                        d->c.detaches++;
                        set_state(d, ST_APP_DETACH);
                        d->detach_deadline = now + (uint64_t) (wvalue < d->p.detach_timeout_ms
                                                                   ? wvalue
                                                                   : d->p.detach_timeout_ms) *
                                                       NSEC_PER_MSEC;
                        if (d->p.attributes & ATTR_WILL_DETACH)
                                schedule_plug(d, PLUG_REENUMERATE, MODE_DFU, now);
                        return 0;
                case REQ_GETSTATUS:
                        if (d->state == ST_APP_DETACH && now > d->detach_deadline &&
                            !(d->p.attributes & ATTR_WILL_DETACH))
                                set_state(d, ST_APP_IDLE); /* no reset came in time */
                        if (wlength < 6)
                                return -EPIPE;
                        memset(b, 0, 6);
                        b[4] = (uint8_t) d->state;
                        *ret = 6;
                        return 0;
                case REQ_GETSTATE:
                        if (wlength < 1)
                                return -EPIPE;
                        b[0] = (uint8_t) d->state;
                        *ret = 1;
                        return 0;
                default:
                        return -EPIPE;
                }
        }

        /* DFU mode: only GETSTATUS and GETSTATE are heard while the device is busy or failed. */
        switch (req) {
        case REQ_GETSTATUS:
                return get_status(d, now, b, wlength, ret);
        case REQ_GETSTATE:
                if (wlength < 1)
                        return -EPIPE;
                b[0] = (uint8_t) d->state;
                *ret = 1;
                return 0;
        case REQ_CLRSTATUS:
                if (d->state != ST_ERROR)
                        break;
                d->status = DFU_OK;
                set_state(d, ST_IDLE);
                return 0;
        case REQ_ABORT:
                if (d->state != ST_IDLE && d->state != ST_DNLOAD_SYNC &&
                    d->state != ST_DNLOAD_IDLE && d->state != ST_MANIFEST_SYNC &&
                    d->state != ST_UPLOAD_IDLE)
                        break;
                set_state(d, ST_IDLE);
                return 0;
        case REQ_DNLOAD:
                if (d->state == ST_ERROR)
                        break;
                r = dnload(d, wvalue, b, wlength);
                if (r == -EPIPE && d->state != ST_ERROR)
                        fail(d, ERR_STALLEDPKT);
                return r;
        case REQ_UPLOAD:
                if (d->state == ST_ERROR)
                        break;
                r = upload(d, wvalue, b, wlength, ret);
                if (r == -EPIPE && d->state != ST_ERROR)
                        fail(d, ERR_STALLEDPKT);
                return r;
        default:
                break;
        }
        /* A request the state does not allow: stall, and (DFU 1.1, 6.1.2) dfuERROR. */
        if (d->state != ST_ERROR)
                fail(d, ERR_STALLEDPKT);
        return -EPIPE;
}

/* One control transfer: setup in s8, data in/out in b (wLength bytes). Returns 0 with *ret the
 * bytes transferred, -EPIPE for a stall, -ENODEV when the device went away. */
static int control(struct device *d, const uint8_t *s8, uint8_t *b, size_t *ret)
{
        uint8_t type = s8[0], req = s8[1];
        uint16_t wvalue = (uint16_t) (s8[2] | s8[3] << 8);
        uint16_t windex = (uint16_t) (s8[4] | s8[5] << 8);
        size_t wlength = (size_t) (s8[6] | s8[7] << 8);
        uint8_t tmp[512];
        size_t n = 0;
        int r;

        *ret = 0;
        d->c.control_transfers++;
        if ((type & 0x60) == 0x20 && (type & 0x1f) == 1) {
                r = dfu_request(d, type, req, wvalue, windex, b, wlength, ret);
                if (r == 0 && !(type & 0x80))
                        *ret = wlength;
                if (r == -EPIPE)
                        d->c.stalls++;
                return r;
        }
        if ((type & 0x60) != 0) {
                d->c.stalls++;
                return -EPIPE;
        }
        if (type == 0x80 && req == 6) {
                d->c.get_descriptor++;
                switch (wvalue >> 8) {
                case 1:
                        n = device_descriptor(d, tmp);
                        break;
                case 2:
                        n = (wvalue & 0xff) == 0 ? config_descriptor(d, tmp) : 0;
                        break;
                case 3:
                        n = string_descriptor(d, wvalue & 0xff, tmp);
                        break;
                case 0x21:
                        n = functional_descriptor(d, tmp);
                        break;
                default:
                        break;
                }
        } else if (type == 0x81 && req == 6 && (wvalue >> 8) == 0x21) {
                d->c.get_descriptor++;
                n = functional_descriptor(d, tmp);
        } else {
                d->c.other_standard++;
                if ((type == 0x80 || type == 0x81 || type == 0x82) && req == 0) {
                        memset(tmp, 0, 2);
                        n = 2;
                } else if (type == 0x80 && req == 8) {
                        tmp[0] = 1;
                        n = 1;
                } else if (type == 0x81 && req == 10) {
                        tmp[0] = (uint8_t) d->alt;
                        n = 1;
                } else if (type == 0x00 && req == 9 && wvalue <= 1) {
                        return 0;
                } else if (type == 0x01 && req == 11 && windex == 0 &&
                           wvalue < (d->mode == MODE_RUNTIME ? 1U : d->nalts)) {
                        d->alt = wvalue;
                        return 0;
                }
        }
        if (n == 0) {
                d->c.stalls++;
                return -EPIPE;
        }
        if (n > wlength)
                n = wlength;
        memcpy(b, tmp, n);
        *ret = n;
        return 0;
}

/* ---- usbfs, as umockdev forwards it ---------------------------------------------------- */

static struct device *find_device(struct sim *s, const char *devnode)
{
        for (unsigned i = 0; i < s->ndev; i++)
                if (s->dev[i].present && strcmp(s->dev[i].devnode, devnode) == 0)
                        return &s->dev[i];
        return NULL;
}

static void free_urb_queue(gpointer p)
{
        GQueue *q = p;

        g_queue_free_full(q, (GDestroyNotify) umockdev_ioctl_data_unref);
}

/* URBs complete when submitted (a regular file polls ready at once: a late completion would
 * only make libusb spin) and wait per client for their reap. */
static GQueue *urb_queue(UMockdevIoctlClient *client)
{
        GQueue *q = g_object_get_data(G_OBJECT(client), "dfu-sim-urbs");

        if (!q) {
                q = g_queue_new();
                g_object_set_data_full(G_OBJECT(client), "dfu-sim-urbs", q, free_urb_queue);
        }
        return q;
}

static void submit_urb(struct sim *s, struct device *d, UMockdevIoctlClient *client,
                       UMockdevIoctlData *arg)
{
        UMockdevIoctlData *urbd, *bufd;
        struct usbdevfs_urb *urb;
        size_t len = 0;
        int r;

        urbd = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_urb), NULL);
        if (!urbd) {
                umockdev_ioctl_client_complete(client, -1, EFAULT);
                return;
        }
        urb = (struct usbdevfs_urb *) urbd->data;
        if (!d) {
                umockdev_ioctl_data_unref(urbd);
                umockdev_ioctl_client_complete(client, -1, ENODEV);
                return;
        }
        if (urb->type != USBDEVFS_URB_TYPE_CONTROL || urb->endpoint != 0 ||
            urb->buffer_length < 8 || urb->buffer_length > 8 + (int) MAX_XFER) {
                umockdev_ioctl_data_unref(urbd);
                umockdev_ioctl_client_complete(client, -1, EINVAL);
                return;
        }
        bufd = umockdev_ioctl_data_resolve(urbd, offsetof(struct usbdevfs_urb, buffer),
                                           (gsize) urb->buffer_length, NULL);
        if (!bufd) {
                umockdev_ioctl_data_unref(urbd);
                umockdev_ioctl_client_complete(client, -1, EFAULT);
                return;
        }
        if ((size_t) urb->buffer_length < 8 + (size_t) (bufd->data[6] | bufd->data[7] << 8)) {
                umockdev_ioctl_data_unref(bufd);
                umockdev_ioctl_data_unref(urbd);
                umockdev_ioctl_client_complete(client, -1, EINVAL);
                return;
        }
        r = control(d, bufd->data, bufd->data + 8, &len);
        urb->status = r;
        urb->actual_length = r == 0 ? (int) len : 0;
        umockdev_ioctl_data_unref(bufd);
        g_queue_push_tail(urb_queue(client), urbd);
        umockdev_ioctl_client_complete(client, 0, 0);
}

static void reap_urb(struct device *d, UMockdevIoctlClient *client, UMockdevIoctlData *arg)
{
        GQueue *q = urb_queue(client);
        UMockdevIoctlData *urbd, *ptr;

        if (g_queue_is_empty(q)) {
                umockdev_ioctl_client_complete(client, -1, d ? EAGAIN : ENODEV);
                return;
        }
        ptr = umockdev_ioctl_data_resolve(arg, 0, sizeof(gpointer), NULL);
        if (!ptr) {
                umockdev_ioctl_client_complete(client, -1, EFAULT);
                return;
        }
        urbd = g_queue_pop_head(q);
        umockdev_ioctl_data_set_ptr(ptr, 0, urbd);
        umockdev_ioctl_data_unref(urbd);
        umockdev_ioctl_data_unref(ptr);
        umockdev_ioctl_client_complete(client, 0, 0);
}

static void discard_urb(UMockdevIoctlClient *client, UMockdevIoctlData *arg)
{
        GQueue *q = urb_queue(client);
        gulong addr = *(gulong *) arg->data;

        for (GList *l = q->head; l; l = l->next)
                if (((UMockdevIoctlData *) l->data)->client_addr == addr) {
                        /* Already complete: it stays for its reap, as in the kernel. */
                        umockdev_ioctl_client_complete(client, 0, 0);
                        return;
                }
        umockdev_ioctl_client_complete(client, -1, EINVAL);
}

static void sync_control(struct device *d, UMockdevIoctlClient *client, UMockdevIoctlData *arg)
{
        UMockdevIoctlData *ctd, *datad = NULL;
        struct usbdevfs_ctrltransfer *ct;
        uint8_t setup[8], *buf;
        size_t len = 0;
        int r;

        ctd = umockdev_ioctl_data_resolve(arg, 0, sizeof(*ct), NULL);
        if (!ctd) {
                umockdev_ioctl_client_complete(client, -1, EFAULT);
                return;
        }
        ct = (struct usbdevfs_ctrltransfer *) ctd->data;
        if (ct->wLength > 0) {
                datad = umockdev_ioctl_data_resolve(
                    ctd, offsetof(struct usbdevfs_ctrltransfer, data), ct->wLength, NULL);
                if (!datad) {
                        umockdev_ioctl_data_unref(ctd);
                        umockdev_ioctl_client_complete(client, -1, EFAULT);
                        return;
                }
        }
        setup[0] = ct->bRequestType;
        setup[1] = ct->bRequest;
        setup[2] = (uint8_t) ct->wValue;
        setup[3] = (uint8_t) (ct->wValue >> 8);
        setup[4] = (uint8_t) ct->wIndex;
        setup[5] = (uint8_t) (ct->wIndex >> 8);
        setup[6] = (uint8_t) ct->wLength;
        setup[7] = (uint8_t) (ct->wLength >> 8);
        buf = datad ? datad->data : setup; /* wLength 0: nothing is read or written */
        r = control(d, setup, buf, &len);
        if (datad)
                umockdev_ioctl_data_unref(datad);
        umockdev_ioctl_data_unref(ctd);
        if (r < 0)
                umockdev_ioctl_client_complete(client, -1, -r);
        else
                umockdev_ioctl_client_complete(client, (glong) len, 0);
}

/* USBDEVFS_RESET: what a bus reset means depends on the state the device is in. Returns true
 * when the device re-enumerates: like the kernel when the descriptors change, the reset then
 * fails with ENODEV. */
static bool bus_reset(struct device *d)
{
        uint64_t at = now_ns();

        d->c.resets++;
        if (d->mode == MODE_RUNTIME) {
                if (d->state != ST_APP_DETACH)
                        return false;
                schedule_plug(d, PLUG_REENUMERATE, MODE_DFU, at);
                return true;
        }
        if (d->state == ST_MANIFEST_WAIT_RESET || d->state == ST_MANIFEST) {
                schedule_plug(d, PLUG_REENUMERATE, mode_after_manifest(d), at);
                return true;
        }
        if (d->stuck) {
                /* The reset reboots a hung device into its bootloader. */
                schedule_plug(d, PLUG_REENUMERATE, MODE_DFU, at);
                return true;
        }
        if (d->state == ST_IDLE && mode_after_manifest(d) != MODE_DFU) {
                /* DFU 1.1: a reset in dfuIDLE returns a device with a valid firmware to its
                 * application (what dfu-util -R and hosts that detached it rely on). */
                schedule_plug(d, PLUG_REENUMERATE, mode_after_manifest(d), at);
                return true;
        }
        return false;
}

static gboolean on_ioctl(UMockdevIoctlBase *handler, UMockdevIoctlClient *client, gpointer data)
{
        struct sim *s = data;
        gulong request = umockdev_ioctl_client_get_request(client);
        UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg(client);
        struct device *d;

        (void) handler;
        pthread_mutex_lock(&s->lock);
        d = find_device(s, umockdev_ioctl_client_get_devnode(client));
        switch (request) {
        case USBDEVFS_SUBMITURB:
                submit_urb(s, d, client, arg);
                break;
        case USBDEVFS_REAPURB:
        case USBDEVFS_REAPURBNDELAY:
                reap_urb(d, client, arg);
                break;
        case USBDEVFS_DISCARDURB:
                discard_urb(client, arg);
                break;
        default:
                if (!d) {
                        umockdev_ioctl_client_complete(client, -1, ENODEV);
                        break;
                }
                switch (request) {
                case USBDEVFS_GET_CAPABILITIES: {
                        UMockdevIoctlData *c = umockdev_ioctl_data_resolve(arg, 0, 4, NULL);

                        if (!c) {
                                umockdev_ioctl_client_complete(client, -1, EFAULT);
                                break;
                        }
                        *(uint32_t *) c->data = USBDEVFS_CAP_NO_PACKET_SIZE_LIM |
                                                USBDEVFS_CAP_REAP_AFTER_DISCONNECT |
                                                USBDEVFS_CAP_ZERO_PACKET;
                        umockdev_ioctl_data_unref(c);
                        umockdev_ioctl_client_complete(client, 0, 0);
                        break;
                }
                case USBDEVFS_SETINTERFACE: {
                        UMockdevIoctlData *si = umockdev_ioctl_data_resolve(
                            arg, 0, sizeof(struct usbdevfs_setinterface), NULL);
                        struct usbdevfs_setinterface *v;
                        unsigned nalts = d->mode == MODE_RUNTIME ? 1 : d->nalts;

                        if (!si) {
                                umockdev_ioctl_client_complete(client, -1, EFAULT);
                                break;
                        }
                        v = (struct usbdevfs_setinterface *) si->data;
                        if (v->interface != 0 || v->altsetting >= nalts) {
                                umockdev_ioctl_client_complete(client, -1, EINVAL);
                        } else {
                                d->alt = v->altsetting;
                                umockdev_ioctl_client_complete(client, 0, 0);
                        }
                        umockdev_ioctl_data_unref(si);
                        break;
                }
                case USBDEVFS_CONTROL:
                        sync_control(d, client, arg);
                        break;
                case USBDEVFS_RESET:
                        if (bus_reset(d))
                                umockdev_ioctl_client_complete(client, -1, ENODEV);
                        else
                                umockdev_ioctl_client_complete(client, 0, 0);
                        break;
                case USBDEVFS_GET_SPEED:
                        umockdev_ioctl_client_complete(client, USB_SPEED_HIGH_, 0);
                        break;
                case USBDEVFS_CLAIMINTERFACE:
                case USBDEVFS_RELEASEINTERFACE:
                case USBDEVFS_DISCONNECT_CLAIM:
                case USBDEVFS_SETCONFIGURATION:
                case USBDEVFS_CLEAR_HALT:
                case USBDEVFS_RESETEP:
                case USBDEVFS_DROP_PRIVILEGES:
                        umockdev_ioctl_client_complete(client, 0, 0);
                        break;
                case USBDEVFS_GETDRIVER:
                case USBDEVFS_IOCTL:
                        /* No kernel driver is bound to the interface. */
                        umockdev_ioctl_client_complete(client, -1, ENODATA);
                        break;
                default:
                        umockdev_ioctl_client_complete(client, -1, ENOTTY);
                        break;
                }
                break;
        }
        pthread_mutex_unlock(&s->lock);
        return TRUE;
}

/* ---- plugging devices in and out (main thread) ----------------------------------------- */

static char *hex(const uint8_t *b, size_t n)
{
        char *out = g_malloc(2 * n + 1);

        for (size_t i = 0; i < n; i++)
                snprintf(out + 2 * i, 3, "%02x", b[i]);
        return out;
}

/* umockdev sends each uevent to every event* socket in the testbed's directory, one per client
 * that listened for uevents (libusb's hotplug), and aborts this process when one refuses it: a
 * client that has exited or closed its listener leaves its socket file behind. Those are found
 * (a connect() is refused) and removed before each uevent. */
static void prune_listeners(struct sim *s)
{
        DIR *dir = opendir(s->root_dir);
        struct dirent *e;

        if (!dir)
                return;
        while ((e = readdir(dir))) {
                struct sockaddr_un a = {.sun_family = AF_UNIX};
                int fd, r;

                if (strncmp(e->d_name, "event", 5) != 0 ||
                    snprintf(a.sun_path, sizeof(a.sun_path), "%s/%s", s->root_dir, e->d_name) >=
                        (int) sizeof(a.sun_path))
                        continue;
                fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        continue;
                r = connect(fd, (const struct sockaddr *) &a, sizeof(a));
                if (r < 0 && errno == EPROTOTYPE) {
                        close(fd);
                        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
                        r = fd < 0 ? -1 : connect(fd, (const struct sockaddr *) &a, sizeof(a));
                }
                if (r < 0 && errno == ECONNREFUSED && unlink(a.sun_path) == 0)
                        vlog(s, "removed %s: its listener is gone", e->d_name);
                if (fd >= 0)
                        close(fd);
        }
        closedir(dir);
}

/* The command under test may also exit between a pruning and the uevent: once it has, devices
 * change without telling anyone (its exit is seen without reaping it). */
static void send_uevent(struct sim *s, const char *syspath, const char *action)
{
        siginfo_t info = {0};

        if (s->child > 0 &&
            (waitid(P_PID, (id_t) s->child, &info, WEXITED | WNOHANG | WNOWAIT) < 0 ||
             info.si_pid == s->child)) {
                vlog(s, "%s: %s, not announced: the command has exited", syspath, action);
                return;
        }
        prune_listeners(s);
        umockdev_testbed_uevent(s->tb, syspath, action);
}

static int plug_in(struct sim *s, struct device *d, enum mode mode)
{
        uint8_t desc[18 + 9 + 9 * MAX_ALTS + 9];
        g_autofree char *dhex = NULL, *record = NULL;
        g_autoptr(GError) err = NULL;
        size_t n;

        pthread_mutex_lock(&s->lock);
        d->devnum = s->next_devnum;
        s->next_devnum = s->next_devnum >= 127 ? 2 : s->next_devnum + 1;
        snprintf(d->devnode, sizeof(d->devnode), "/dev/bus/usb/001/%03u", d->devnum);
        d->mode = mode;
        d->state = mode == MODE_RUNTIME ? ST_APP_IDLE : ST_IDLE;
        d->status = DFU_OK;
        d->alt = 0;
        d->stuck = false;
        d->busy_reported_at = 0;
        d->declared_until = 0;
        d->idle_reported_at = 0;
        d->plug = PLUG_NONE;
        d->present = true;
        d->c.enumerations++;
        n = device_descriptor(d, desc);
        n += config_descriptor(d, desc + n);
        pthread_mutex_unlock(&s->lock);

        if (!umockdev_testbed_attach_ioctl(s->tb, d->devnode, s->handler, &err)) {
                fprintf(stderr, "dfu-sim: cannot attach to %s: %s\n", d->devnode, err->message);
                return -EIO;
        }
        dhex = hex(desc, n);
        record = g_strdup_printf(
            "P: %s\nN: bus/usb/001/%03u\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\n"
            "E: DRIVER=usb\nE: BUSNUM=001\nE: DEVNUM=%03u\nE: DEVNAME=/dev/bus/usb/001/%03u\n"
            "E: PRODUCT=%x/%x/%x\nE: TYPE=0/0/0\nE: ID_VENDOR_ID=%04x\nE: ID_MODEL_ID=%04x\n"
            "E: ID_SERIAL_SHORT=%s\nA: busnum=1\\n\nA: devnum=%u\\n\nA: devpath=%u\\n\n"
            "A: speed=480\\n\nA: bConfigurationValue=1\\n\nA: bNumConfigurations=1\\n\n"
            "A: bNumInterfaces= 1\\n\nA: bDeviceClass=00\\n\nA: bMaxPacketSize0=64\\n\n"
            "A: idVendor=%04x\\n\nA: idProduct=%04x\\n\nA: bcdDevice=%04x\\n\n"
            "A: version= 2.00\\n\nA: maxchild=0\\n\nA: manufacturer=%s\\n\nA: product=%s\\n\n"
            "A: serial=%s\\n\nH: descriptors=%s\n",
            d->syspath + 4, d->devnum, d->devnum, d->devnum, d->p.vid, cur_pid(d), d->p.bcd_device,
            d->p.vid, cur_pid(d), d->serial, d->devnum, d->idx + 1, d->p.vid, cur_pid(d),
            d->p.bcd_device, d->p.manufacturer, d->p.product, d->serial, dhex);
        if (!umockdev_testbed_add_from_string(s->tb, record, &err)) {
                fprintf(stderr, "dfu-sim: cannot add %s: %s\n", d->syspath, err->message);
                return -EIO;
        }
        send_uevent(s, d->syspath, "add");
        d->plugged = true;
        vlog(s, "%s: plugged in at %s (%s mode, %04x:%04x)", d->serial, d->devnode,
             mode == MODE_RUNTIME ? "runtime" : "DFU", d->p.vid, cur_pid(d));
        return 0;
}

static void plug_out(struct sim *s, struct device *d)
{
        pthread_mutex_lock(&s->lock);
        d->present = false;
        pthread_mutex_unlock(&s->lock);
        if (!d->plugged)
                return;
        /* The uevent is built from sysfs: it goes out while the device is still there. */
        send_uevent(s, d->syspath, "remove");
        umockdev_testbed_remove_device(s->tb, d->syspath);
        umockdev_testbed_detach_ioctl(s->tb, d->devnode, NULL);
        d->plugged = false;
        vlog(s, "%s: removed from %s", d->serial, d->devnode);
}

/* Runs what the handler scheduled; returns when the next scheduled change is due. */
static uint64_t run_plugs(struct sim *s)
{
        uint64_t next = UINT64_MAX;

        for (unsigned i = 0; i < s->ndev; i++) {
                struct device *d = &s->dev[i];
                enum plug_op op;
                enum mode mode;
                uint64_t at;

                pthread_mutex_lock(&s->lock);
                op = d->plug;
                mode = d->plug_mode;
                at = d->plug_at;
                if (op != PLUG_NONE && at <= now_ns())
                        d->plug = PLUG_NONE;
                pthread_mutex_unlock(&s->lock);
                if (op == PLUG_NONE)
                        continue;
                if (at > now_ns()) {
                        if (at < next)
                                next = at;
                        continue;
                }
                switch (op) {
                case PLUG_REENUMERATE:
                        plug_out(s, d);
                        if (mode != MODE_GONE) {
                                pthread_mutex_lock(&s->lock);
                                if (d->plug == PLUG_NONE)
                                        schedule_plug(d, PLUG_ADD, mode,
                                                      now_ns() + d->p.reenum_ms * NSEC_PER_MSEC);
                                pthread_mutex_unlock(&s->lock);
                        }
                        break;
                case PLUG_REMOVE:
                        plug_out(s, d);
                        if (d->p.reconnect_ms > 0) {
                                pthread_mutex_lock(&s->lock);
                                if (d->plug == PLUG_NONE)
                                        schedule_plug(d, PLUG_ADD, mode,
                                                      now_ns() + d->p.reconnect_ms * NSEC_PER_MSEC);
                                pthread_mutex_unlock(&s->lock);
                        }
                        break;
                case PLUG_ADD:
                        if (d->plugged)
                                plug_out(s, d);
                        plug_in(s, d, mode);
                        break;
                case PLUG_NONE:
                        break;
                }
                /* A follow-up may have been scheduled: look again soon. */
                next = now_ns();
        }
        return next;
}

/* ---- report and dump ------------------------------------------------------------------- */

static void add_counters(json_t *o, const struct counters *c)
{
        json_t *req = json_object();

        for (unsigned i = 0; i < N_DFU_REQ; i++)
                json_object_set_new(req, req_names[i], json_integer((json_int_t) c->dfu_req[i]));
        json_object_set_new(req, "GET_DESCRIPTOR", json_integer((json_int_t) c->get_descriptor));
        json_object_set_new(req, "other_standard", json_integer((json_int_t) c->other_standard));
        json_object_set_new(o, "requests", req);
#define NUM(name) json_object_set_new(o, #name, json_integer((json_int_t) c->name))
        NUM(control_transfers);
        NUM(stalls);
        NUM(bytes_out);
        NUM(bytes_in);
        NUM(data_blocks);
        NUM(zero_length_dnloads);
        NUM(block_gaps);
        NUM(set_address);
        NUM(erase_page);
        NUM(mass_erase);
        NUM(read_unprotect);
        NUM(pages_erased);
        NUM(busy_reports);
        NUM(early_polls);
        NUM(declared_wait_ms);
        NUM(idle_reports);
        NUM(idle_declared_ms);
        NUM(idle_waits_honoured);
        NUM(idle_honoured_ms);
        NUM(errors_reported);
        NUM(enumerations);
        NUM(detaches);
        NUM(resets);
        NUM(disconnects);
#undef NUM
        json_object_set_new(o, "actual_busy_ms", json_real((double) c->actual_busy_ns / 1e6));
        json_object_set_new(o, "observed_wait_ms", json_real((double) c->observed_wait_ns / 1e6));
        json_object_set_new(o, "idle_observed_wait_ms",
                            json_real((double) c->idle_observed_wait_ns / 1e6));
}

static void sum_counters(struct counters *t, const struct counters *c)
{
        const uint64_t *src = (const uint64_t *) c;
        uint64_t *dst = (uint64_t *) t;

        for (size_t i = 0; i < sizeof(*c) / sizeof(uint64_t); i++)
                dst[i] += src[i];
}

static void add_personality(json_t *o, const struct personality *p)
{
        char id[10];

        snprintf(id, sizeof(id), "%04x:%04x", p->vid, p->pid);
        json_object_set_new(o, "personality", json_string(p->dfuse ? "dfuse" : "dfu11"));
        json_object_set_new(o, "usb_id", json_string(id));
        json_object_set_new(o, "transfer_size", json_integer(p->transfer_size));
        json_object_set_new(o, "poll_timeout_ms", json_integer(p->poll_timeout_ms));
        json_object_set_new(o, "idle_poll_timeout_ms", json_integer(p->idle_poll_timeout_ms));
        json_object_set_new(o, "program_ms", json_integer(p->program_ms));
        json_object_set_new(o, "erase_ms", json_integer(p->erase_ms));
}

static int write_report(struct sim *s)
{
        g_autofree char *tmp = NULL;
        struct counters total = {0};
        json_t *root, *devs, *tot;
        int r = 0;

        if (!s->report_path)
                return 0;
        root = json_object();
        devs = json_array();
        pthread_mutex_lock(&s->lock);
        add_personality(root, &s->base);
        json_object_set_new(root, "elapsed_ms", json_real((double) (now_ns() - s->t0) / 1e6));
        for (unsigned i = 0; i < s->ndev; i++) {
                struct device *d = &s->dev[i];
                json_t *o = json_object();

                json_object_set_new(o, "serial", json_string(d->serial));
                add_personality(o, &d->p);
                json_object_set_new(o, "port", json_string(d->sysname));
                json_object_set_new(o, "devnum", json_integer(d->devnum));
                json_object_set_new(o, "mode",
                                    json_string(!d->present               ? "absent"
                                                : d->mode == MODE_RUNTIME ? "runtime"
                                                                          : "dfu"));
                json_object_set_new(o, "state", json_string(state_names[d->state]));
                json_object_set_new(o, "status", json_string(status_names[d->status]));
                json_object_set_new(o, "image_bytes", json_integer((json_int_t) d->fw_len));
                json_object_set_new(o, "leave_address",
                                    d->left ? json_integer(d->leave_addr) : json_null());
                add_counters(o, &d->c);
                json_array_append_new(devs, o);
                sum_counters(&total, &d->c);
        }
        pthread_mutex_unlock(&s->lock);
        json_object_set_new(root, "devices", devs);
        tot = json_object();
        add_counters(tot, &total);
        json_object_set_new(root, "totals", tot);
        tmp = g_strdup_printf("%s.tmp.%d", s->report_path, (int) getpid());
        if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0 ||
            rename(tmp, s->report_path) < 0) {
                fprintf(stderr, "dfu-sim: cannot write %s\n", s->report_path);
                unlink(tmp);
                r = -EIO;
        }
        json_decref(root);
        return r;
}

/* Alt setting 0's memory, regions in layout order (contiguous for the usual layouts); further
 * devices go to FILE.2, FILE.3, ... */
static int write_dump(struct sim *s)
{
        int r = 0;

        if (!s->dump_path)
                return 0;
        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < s->ndev; i++) {
                struct alt *alt = &s->dev[i].alts[0];
                g_autofree char *path =
                    i == 0 ? g_strdup(s->dump_path) : g_strdup_printf("%s.%u", s->dump_path, i + 1);
                FILE *f = fopen(path, "we");
                bool ok = f != NULL;

                for (unsigned k = 0; ok && k < alt->nreg; k++)
                        ok = fwrite(alt->reg[k].mem, 1, region_size(&alt->reg[k]), f) ==
                             region_size(&alt->reg[k]);
                if (f && fclose(f) != 0)
                        ok = false;
                if (!ok) {
                        fprintf(stderr, "dfu-sim: cannot write %s\n", path);
                        r = -EIO;
                }
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* ---- faults and the control FIFO ------------------------------------------------------- */

/* "error errWRITE:3", "stall 2", "stuck-busy 1", "disconnect 4", "corrupt 2", "reenumerate",
 * "clear". The
 * same words as the command-line flags. Applies to every device (caller holds the lock). */
static int apply_fault(struct sim *s, struct faults *f, const char *cmd, const char *arg)
{
        uint64_t n = 1;

        if (strcmp(cmd, "error") == 0) {
                char name[32];
                const char *colon = arg ? strchr(arg, ':') : NULL;
                size_t len = colon ? (size_t) (colon - arg) : (arg ? strlen(arg) : 0);
                uint8_t st;

                if (!arg || len == 0 || len >= sizeof(name))
                        return -EINVAL;
                memcpy(name, arg, len);
                name[len] = '\0';
                if (parse_status(name, &st) < 0 ||
                    (colon && parse_u64(colon + 1, UINT32_MAX, &n) < 0))
                        return -EINVAL;
                if (n == 0) {
                        f->error_at_manifest = true;
                        f->manifest_status = st;
                } else {
                        f->error_in = n;
                        f->error_status = st;
                }
                return 0;
        }
        if (strcmp(cmd, "clear") == 0) {
                if (arg)
                        return -EINVAL;
                memset(f, 0, sizeof(*f));
                return 0;
        }
        if (arg && parse_u64(arg, UINT32_MAX, &n) < 0)
                return -EINVAL;
        if (n == 0)
                return -EINVAL;
        if (strcmp(cmd, "stall") == 0)
                f->stall_in = n;
        else if (strcmp(cmd, "stuck-busy") == 0)
                f->stuck_in = n;
        else if (strcmp(cmd, "disconnect") == 0)
                f->disconnect_in = n;
        else if (strcmp(cmd, "corrupt") == 0)
                f->corrupt_in = n;
        else
                return -EINVAL;
        return 0;
}

/* One control line: "[@SERIAL] COMMAND [ARG]"; without @SERIAL it applies to every device. */
static void control_line(char *line, void *userdata)
{
        struct sim *s = userdata;
        char *w[3], *cmd, *arg;
        const char *only = NULL;
        unsigned matched = 0;
        int n, r = 0;

        n = gw_sim_control_words(line, w, 3);
        if (n == 0)
                return;
        if (w[0][0] == '@') {
                if (n == 1)
                        return;
                only = w[0] + 1;
        } else if (n == 3) {
                n = -E2BIG; /* a third word only after @SERIAL */
        }
        cmd = w[only ? 1 : 0];
        arg = n > (only ? 2 : 1) ? w[only ? 2 : 1] : NULL;
        if (n < 0) {
                r = -EINVAL;
        } else if (strcmp(cmd, "report") == 0 && !arg) {
                write_report(s);
                matched = 1;
        } else {
                bool reenum = strcmp(cmd, "reenumerate") == 0;

                if (reenum && arg)
                        r = -EINVAL;
                pthread_mutex_lock(&s->lock);
                for (unsigned i = 0; i < s->ndev && r == 0; i++) {
                        struct device *d = &s->dev[i];

                        if (only && strcmp(only, d->serial) != 0)
                                continue;
                        matched++;
                        if (!reenum)
                                r = apply_fault(s, &d->f, cmd, arg);
                        else if (d->plugged)
                                schedule_plug(d, PLUG_REENUMERATE, d->mode, now_ns());
                }
                pthread_mutex_unlock(&s->lock);
        }
        if (r < 0 || matched == 0)
                fprintf(stderr, "dfu-sim: invalid control command \"%s\"%s, ignoring\n", cmd,
                        matched == 0 && r == 0 ? " (no such device)" : "");
        else
                vlog(s, "control: %s%s%s", cmd, arg ? " " : "", arg ? arg : "");
}

/* ---- setup ----------------------------------------------------------------------------- */

static int load_image(struct device *d)
{
        struct alt *alt = &d->alts[0];
        FILE *f = fopen(d->p.load_path, "re");
        uint64_t total = 0;

        if (!f)
                return -errno;
        for (unsigned k = 0; k < alt->nreg; k++) {
                size_t want = region_size(&alt->reg[k]), got = fread(alt->reg[k].mem, 1, want, f);

                total += got;
                if (got < want)
                        break;
        }
        fclose(f);
        d->fw_len = total;
        return 0;
}

static int device_init(struct sim *s, struct device *d, unsigned idx)
{
        uint64_t budget = MAX_MEMORY;

        d->sim = s;
        d->idx = idx;
        snprintf(d->sysname, sizeof(d->sysname), "1-%u", idx + 1);
        /* From idx, not from d->sysname: gcc's -Wrestrict (with the sanitizers) cannot tell the
         * two members of *d apart and refuses the copy between them. */
        snprintf(d->syspath, sizeof(d->syspath), "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-%u",
                 idx + 1);
        if (d->p.dfuse) {
                for (unsigned a = 0; a < d->p.nlayouts; a++) {
                        snprintf(d->alts[a].name, sizeof(d->alts[a].name), "%s", d->p.layouts[a]);
                        if (parse_layout(d->p.layouts[a], &d->alts[a], &budget) < 0) {
                                fprintf(stderr, "dfu-sim: invalid layout \"%s\"\n",
                                        d->p.layouts[a]);
                                return -EINVAL;
                        }
                }
                d->nalts = d->p.nlayouts;
        } else {
                struct region *r = &d->alts[0].reg[0];

                snprintf(d->alts[0].name, sizeof(d->alts[0].name), "%s",
                         d->p.nlayouts ? d->p.layouts[0] : "Internal Flash");
                r->start = 0;
                r->page_size = d->p.page_size;
                r->npages = d->p.size / d->p.page_size;
                r->attr = SEG_READ | SEG_ERASE | SEG_WRITE;
                d->alts[0].nreg = 1;
                d->nalts = 1;
        }
        for (unsigned a = 0; a < d->nalts; a++)
                for (unsigned k = 0; k < d->alts[a].nreg; k++) {
                        struct region *r = &d->alts[a].reg[k];

                        r->mem = malloc(region_size(r));
                        r->touched = calloc(r->npages, 1);
                        if (!r->mem || !r->touched)
                                return -ENOMEM;
                        memset(r->mem, d->p.fill, region_size(r));
                }
        d->blk = malloc(d->p.transfer_size);
        if (!d->blk)
                return -ENOMEM;
        d->f = s->initial_faults;
        if (d->p.load_path) {
                int r = load_image(d);

                if (r < 0) {
                        fprintf(stderr, "dfu-sim: cannot read %s: %s\n", d->p.load_path,
                                strerror(-r));
                        return r;
                }
        }
        return 0;
}

static void device_done(struct device *d)
{
        for (unsigned a = 0; a < d->nalts; a++)
                for (unsigned k = 0; k < d->alts[a].nreg; k++) {
                        free(d->alts[a].reg[k].mem);
                        free(d->alts[a].reg[k].touched);
                }
        free(d->blk);
        g_free(d->spec);
}

static int write_env_file(struct sim *s)
{
        g_autofree char *tmp = g_strdup_printf("%s.tmp.%d", s->env_path, (int) getpid());
        FILE *f = fopen(tmp, "we");
        bool ok;

        if (!f)
                return -errno;
        fprintf(f, "UMOCKDEV_DIR=%s\nLD_PRELOAD=%s\nDFU_SIM_PID=%d\n", s->root_dir, PRELOAD_LIB,
                (int) getpid());
        ok = fclose(f) == 0;
        if (!ok || rename(tmp, s->env_path) < 0) {
                unlink(tmp);
                return -EIO;
        }
        return 0;
}

/* umockdev sends uevents after looking the device up with libudev in this process, so this
 * process must see the testbed's /sys as well: it runs under the preload library, like the
 * program under test. Re-executes itself once with the library preloaded. */
static void ensure_preloaded(char **argv)
{
        const char *old = getenv("LD_PRELOAD");
        g_autofree char *preload = NULL;

        if (old && strstr(old, PRELOAD_LIB))
                return;
        preload = old && *old ? g_strdup_printf("%s:%s", PRELOAD_LIB, old) : g_strdup(PRELOAD_LIB);
        if (setenv("LD_PRELOAD", preload, 1) < 0)
                return;
        execv("/proc/self/exe", argv);
        fprintf(stderr, "dfu-sim: cannot re-execute under %s: %m\n", PRELOAD_LIB);
        exit(EXIT_FAILURE);
}

/* The child inherits UMOCKDEV_DIR (set by the testbed) and LD_PRELOAD (see above). */
static int spawn_child(struct sim *s, pid_t *ret)
{
        sigset_t none;
        posix_spawnattr_t attr;
        pid_t pid;
        int r;

        sigemptyset(&none);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
        r = posix_spawnp(&pid, s->child_argv[0], NULL, &attr, s->child_argv, environ);
        posix_spawnattr_destroy(&attr);
        if (r != 0)
                return -r;
        *ret = pid;
        return 0;
}

/* Serves until a signal ends it or the child exits; returns the exit status. */
static int run(struct sim *s, pid_t child)
{
        s->child = child;
        for (;;) {
                struct pollfd p[3];
                uint64_t next = run_plugs(s), now = now_ns();
                int timeout = -1, np = 0, ictl = -1;

                if (next != UINT64_MAX)
                        timeout = next <= now ? 0 : (int) ((next - now) / NSEC_PER_MSEC + 1);
                p[np++] = (struct pollfd){.fd = s->sigfd, .events = POLLIN};
                p[np++] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
                if (gw_sim_control_poll_fd(&s->ctl) >= 0) {
                        ictl = np;
                        p[np++] = (struct pollfd){.fd = gw_sim_control_poll_fd(&s->ctl),
                                                  .events = POLLIN};
                } else if (gw_sim_control_rereads(&s->ctl) &&
                           (timeout < 0 || timeout > GW_SIM_CONTROL_RECHECK_MS)) {
                        /* A regular file always polls ready: look at it from time to time. */
                        timeout = GW_SIM_CONTROL_RECHECK_MS;
                }
                if (poll(p, (nfds_t) np, timeout) < 0) {
                        if (errno == EINTR)
                                continue;
                        return EXIT_FAILURE;
                }
                if (p[1].revents & POLLIN) {
                        uint64_t v;

                        if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                                /* nothing to drain */
                        }
                }
                if ((ictl >= 0 && p[ictl].revents) || gw_sim_control_rereads(&s->ctl))
                        gw_sim_control_read(&s->ctl, control_line, s);
                if (p[0].revents & POLLIN) {
                        struct signalfd_siginfo si;

                        if (read(s->sigfd, &si, sizeof(si)) != (ssize_t) sizeof(si))
                                continue;
                        if (si.ssi_signo == SIGUSR1) {
                                write_report(s);
                                continue;
                        }
                        if (si.ssi_signo == SIGCHLD) {
                                int status;
                                pid_t w = child > 0 ? waitpid(child, &status, WNOHANG) : 0;

                                if (w != child || child <= 0)
                                        continue;
                                if (WIFEXITED(status))
                                        return WEXITSTATUS(status);
                                return 128 + WTERMSIG(status);
                        }
                        vlog(s, "signal %u, exiting", si.ssi_signo);
                        if (child > 0) {
                                kill(child, (int) si.ssi_signo);
                                waitpid(child, NULL, 0);
                        }
                        return child > 0 ? 128 + (int) si.ssi_signo : EXIT_SUCCESS;
                }
        }
}

static void usage(FILE *f)
{
        fputs(
            "Usage: dfu-sim [OPTIONS] [-- COMMAND [ARGS...]]\n"
            "A USB DFU device emulated beneath libusb with umockdev. With a COMMAND, runs it\n"
            "under the emulator (LD_PRELOAD=" PRELOAD_LIB ", UMOCKDEV_DIR) and exits with\n"
            "its status; without, prints UMOCKDEV_DIR=... and serves until SIGTERM.\n\n"
            "Personality (every device's defaults; --device changes them for one device):\n"
            "  --dfuse                 ST DfuSe (0483:df11, bcdDFU 0x011a; default DFU 1.1,\n"
            "                          1d50:6089, bcdDFU 0x0110, also --dfu11)\n"
            "  --runtime               start in runtime mode; DFU_DETACH re-enumerates in DFU "
            "mode\n"
            "  --vid N, --pid N        DFU-mode ids;  --runtime-pid N (default pid - 1)\n"
            "  --serial S              one device per --serial (up to 8; default DFUSIM0001)\n"
            "  --device SPEC           one more device, its own personality: the options above\n"
            "                          and serial= without dashes, comma-separated, e.g.\n"
            "                          dfuse,serial=B,layout=@Flash /0x08000000/4*16Kg,1*64Kg\n"
            "                          (a layout keeps the items after it that start with a\n"
            "                          digit; a SPEC's layouts replace the command line's)\n"
            "  --manufacturer S, --product S\n"
            "  --layout S              DfuSe: one alt setting per --layout (the interface name);\n"
            "                          DFU 1.1: the interface name\n"
            "  --size N, --page-size N DFU 1.1 memory (default 256 KiB, 1 KiB pages)\n"
            "  --transfer-size N       wTransferSize (default 1024, DfuSe 2048; up to 65535)\n"
            "  --poll-timeout-ms N     bwPollTimeout declared while busy (default 5)\n"
            "  --idle-poll-timeout-ms N  bwPollTimeout declared in answers that are not busy\n"
            "                          (idle, dnload-idle, error...; default 0; ST's ROM\n"
            "                          bootloaders are reported to repeat the busy one)\n"
            "  --program-ms N          actual time to program a block (default 1)\n"
            "  --erase-ms N            actual time to erase a page (default 2)\n"
            "  --manifest-ms N         actual manifestation time (default 0)\n"
            "  --manifest-tolerant / --no-manifest-tolerant (default: DFU 1.1 yes, DfuSe no)\n"
            "  --will-detach / --no-will-detach (default yes), --no-upload\n"
            "  --detach-timeout-ms N   wDetachTimeOut (default 1000, DfuSe 255)\n"
            "  --after-manifest M      dfu, runtime or gone: what enumerates after a reset out of\n"
            "                          manifestation or a DfuSe leave (default runtime with\n"
            "                          --runtime, else dfu)\n"
            "  --reenum-ms N           how long a re-enumerating device is off the bus (default "
            "50)\n"
            "  --reconnect-ms N        a disconnected device returns after N ms (default 500;\n"
            "                          0 = never)\n"
            "  --fill BYTE             initial memory contents (default 0xff, erased)\n"
            "  --load FILE             initial memory contents (alt 0) from FILE\n"
            "Output:\n"
            "  --report FILE           JSON counters at exit and on SIGUSR1\n"
            "  --dump FILE             alt 0's memory at exit (more devices: FILE.2, ...)\n"
            "  --env-file FILE         write UMOCKDEV_DIR=, LD_PRELOAD= and DFU_SIM_PID= lines\n"
            "                          once the devices are present\n"
            "  --control PATH          FIFO (created when missing) or file with fault commands\n"
            "  -v, --verbose           log to stderr\n"
            "Faults (on every device; also control commands without the dashes; N counts from\n"
            "when armed, 1 = the next one):\n"
            "  --error STATUS[:N]      STATUS (errWRITE, write, or 1..15) for data DNLOAD N\n"
            "                          (default 1; errERASE and errCHECK_ERASED count DfuSe\n"
            "                          erase commands); N = 0: at manifestation\n"
            "  --stall N               stall the Nth DFU request\n"
            "  --stuck-busy N          dfuDNBUSY for ever from data DNLOAD N (a USB reset\n"
            "                          reboots the device)\n"
            "  --disconnect N          the device vanishes at data DNLOAD N\n"
            "  --corrupt N             data DNLOAD N is programmed with one bit flipped, its\n"
            "                          status OK (only reading back finds it)\n"
            "  control only: reenumerate (now), clear (disarm), report (write it now);\n"
            "  a control line may start with @SERIAL to address one device\n",
            f);
}

/* Options up to OPT_LOAD describe a device (a personality option; also in --device SPECs). */
enum {
        OPT_DFUSE = 256,
        OPT_DFU11,
        OPT_RUNTIME,
        OPT_VID,
        OPT_PID,
        OPT_RUNTIME_PID,
        OPT_MANUFACTURER,
        OPT_PRODUCT,
        OPT_LAYOUT,
        OPT_SIZE,
        OPT_PAGE_SIZE,
        OPT_TRANSFER_SIZE,
        OPT_POLL,
        OPT_IDLE_POLL,
        OPT_PROGRAM,
        OPT_ERASE,
        OPT_MANIFEST,
        OPT_TOLERANT,
        OPT_NOT_TOLERANT,
        OPT_WILL_DETACH,
        OPT_NO_WILL_DETACH,
        OPT_NO_UPLOAD,
        OPT_DETACH_TIMEOUT,
        OPT_AFTER_MANIFEST,
        OPT_REENUM,
        OPT_RECONNECT,
        OPT_FILL,
        OPT_LOAD,
        OPT_SERIAL,
        OPT_DEVICE,
        OPT_REPORT,
        OPT_DUMP,
        OPT_ENV_FILE,
        OPT_CONTROL,
        OPT_FAULT,
};

static const struct option opts[] = {
    {"dfuse", no_argument, NULL, OPT_DFUSE},
    {"dfu11", no_argument, NULL, OPT_DFU11},
    {"runtime", no_argument, NULL, OPT_RUNTIME},
    {"vid", required_argument, NULL, OPT_VID},
    {"pid", required_argument, NULL, OPT_PID},
    {"runtime-pid", required_argument, NULL, OPT_RUNTIME_PID},
    {"serial", required_argument, NULL, OPT_SERIAL},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"manufacturer", required_argument, NULL, OPT_MANUFACTURER},
    {"product", required_argument, NULL, OPT_PRODUCT},
    {"layout", required_argument, NULL, OPT_LAYOUT},
    {"size", required_argument, NULL, OPT_SIZE},
    {"page-size", required_argument, NULL, OPT_PAGE_SIZE},
    {"transfer-size", required_argument, NULL, OPT_TRANSFER_SIZE},
    {"poll-timeout-ms", required_argument, NULL, OPT_POLL},
    {"idle-poll-timeout-ms", required_argument, NULL, OPT_IDLE_POLL},
    {"program-ms", required_argument, NULL, OPT_PROGRAM},
    {"erase-ms", required_argument, NULL, OPT_ERASE},
    {"manifest-ms", required_argument, NULL, OPT_MANIFEST},
    {"manifest-tolerant", no_argument, NULL, OPT_TOLERANT},
    {"no-manifest-tolerant", no_argument, NULL, OPT_NOT_TOLERANT},
    {"will-detach", no_argument, NULL, OPT_WILL_DETACH},
    {"no-will-detach", no_argument, NULL, OPT_NO_WILL_DETACH},
    {"no-upload", no_argument, NULL, OPT_NO_UPLOAD},
    {"detach-timeout-ms", required_argument, NULL, OPT_DETACH_TIMEOUT},
    {"after-manifest", required_argument, NULL, OPT_AFTER_MANIFEST},
    {"reenum-ms", required_argument, NULL, OPT_REENUM},
    {"reconnect-ms", required_argument, NULL, OPT_RECONNECT},
    {"fill", required_argument, NULL, OPT_FILL},
    {"load", required_argument, NULL, OPT_LOAD},
    {"report", required_argument, NULL, OPT_REPORT},
    {"dump", required_argument, NULL, OPT_DUMP},
    {"env-file", required_argument, NULL, OPT_ENV_FILE},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"error", required_argument, NULL, OPT_FAULT},
    {"stall", required_argument, NULL, OPT_FAULT},
    {"stuck-busy", required_argument, NULL, OPT_FAULT},
    {"disconnect", required_argument, NULL, OPT_FAULT},
    {"corrupt", required_argument, NULL, OPT_FAULT},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {},
};

/* Applies one personality option (opt <= OPT_LOAD) to p. 0 or -EINVAL. */
static int personality_option(struct personality *p, int opt, const char *arg)
{
        uint64_t v;

        switch (opt) {
        case OPT_DFUSE:
        case OPT_DFU11:
                p->dfuse = opt == OPT_DFUSE;
                return 0;
        case OPT_RUNTIME:
                p->start_runtime = true;
                return 0;
        case OPT_VID:
        case OPT_PID:
        case OPT_RUNTIME_PID:
                if (parse_u64(arg, 0xffff, &v) < 0)
                        return -EINVAL;
                if (opt == OPT_VID)
                        p->vid_opt = (int64_t) v;
                else if (opt == OPT_PID)
                        p->pid_opt = (int64_t) v;
                else
                        p->runtime_pid_opt = (int64_t) v;
                return 0;
        case OPT_MANUFACTURER:
        case OPT_PRODUCT:
                if (!valid_string(arg))
                        return -EINVAL;
                if (opt == OPT_MANUFACTURER)
                        p->manufacturer = arg;
                else
                        p->product = arg;
                return 0;
        case OPT_LAYOUT:
                if (!valid_string(arg) || p->nlayouts >= MAX_ALTS)
                        return -EINVAL;
                p->layouts[p->nlayouts++] = arg;
                return 0;
        case OPT_SIZE:
                if (parse_u64(arg, MAX_MEMORY, &v) < 0 || v == 0)
                        return -EINVAL;
                p->size = (uint32_t) v;
                return 0;
        case OPT_PAGE_SIZE:
                if (parse_u64(arg, 1 << 20, &v) < 0 || v == 0)
                        return -EINVAL;
                p->page_size = (uint32_t) v;
                return 0;
        case OPT_TRANSFER_SIZE:
                if (parse_u64(arg, MAX_XFER, &v) < 0 || v == 0)
                        return -EINVAL;
                p->xfer_opt = (int64_t) v;
                return 0;
        case OPT_POLL:
        case OPT_IDLE_POLL:
                if (parse_u64(arg, MAX_WAIT_MS, &v) < 0)
                        return -EINVAL;
                if (opt == OPT_POLL)
                        p->poll_timeout_ms = (uint32_t) v;
                else
                        p->idle_poll_timeout_ms = (uint32_t) v;
                return 0;
        case OPT_PROGRAM:
        case OPT_ERASE:
        case OPT_MANIFEST:
                if (parse_u64(arg, 600000, &v) < 0)
                        return -EINVAL;
                if (opt == OPT_PROGRAM)
                        p->program_ms = (uint32_t) v;
                else if (opt == OPT_ERASE)
                        p->erase_ms = (uint32_t) v;
                else
                        p->manifest_ms = (uint32_t) v;
                return 0;
        case OPT_TOLERANT:
        case OPT_NOT_TOLERANT:
                p->tolerant_opt = opt == OPT_TOLERANT;
                return 0;
        case OPT_WILL_DETACH:
        case OPT_NO_WILL_DETACH:
                p->will_detach = opt == OPT_WILL_DETACH;
                return 0;
        case OPT_NO_UPLOAD:
                p->can_upload = 0;
                return 0;
        case OPT_DETACH_TIMEOUT:
                if (parse_u64(arg, 0xffff, &v) < 0)
                        return -EINVAL;
                p->detach_opt = (int64_t) v;
                return 0;
        case OPT_AFTER_MANIFEST:
                if (strcmp(arg, "dfu") == 0)
                        p->after_manifest = MODE_DFU;
                else if (strcmp(arg, "runtime") == 0)
                        p->after_manifest = MODE_RUNTIME;
                else if (strcmp(arg, "gone") == 0)
                        p->after_manifest = MODE_GONE;
                else
                        return -EINVAL;
                p->after_manifest_set = true;
                return 0;
        case OPT_REENUM:
        case OPT_RECONNECT:
                if (parse_u64(arg, 600000, &v) < 0)
                        return -EINVAL;
                if (opt == OPT_REENUM)
                        p->reenum_ms = (uint32_t) v;
                else
                        p->reconnect_ms = (uint32_t) v;
                return 0;
        case OPT_FILL:
                if (parse_u64(arg, 0xff, &v) < 0)
                        return -EINVAL;
                p->fill = (int) v;
                return 0;
        case OPT_LOAD:
                p->load_path = arg;
                return 0;
        default:
                return -EINVAL;
        }
}

/* Checks what only the whole says. 0 or -EINVAL (said on stderr). */
static int personality_check(const struct personality *p)
{
        if (p->dfuse)
                return 0;
        if (p->nlayouts > 1) {
                fprintf(stderr, "dfu-sim: DFU 1.1 has one alt setting (one layout)\n");
                return -EINVAL;
        }
        if (p->size % p->page_size != 0) {
                fprintf(stderr, "dfu-sim: the size must be a multiple of the page size\n");
                return -EINVAL;
        }
        return 0;
}

/* Fills in the protocol's defaults for what was not given. */
static void personality_resolve(struct personality *p)
{
        int64_t xfer = p->xfer_opt, detach = p->detach_opt;
        int tolerant = p->tolerant_opt;

        if (p->dfuse) {
                p->vid = p->vid_opt >= 0 ? (uint16_t) p->vid_opt : 0x0483;
                p->pid = p->pid_opt >= 0 ? (uint16_t) p->pid_opt : 0xdf11;
                p->bcd_device = 0x2200;
                if (!p->manufacturer)
                        p->manufacturer = "STMicroelectronics";
                if (!p->product)
                        p->product = "STM32  BOOTLOADER";
                if (p->nlayouts == 0)
                        p->layouts[p->nlayouts++] =
                            "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg";
                if (tolerant < 0)
                        tolerant = 0;
                if (detach < 0)
                        detach = 255;
                if (xfer < 0)
                        xfer = 2048;
        } else {
                p->vid = p->vid_opt >= 0 ? (uint16_t) p->vid_opt : 0x1d50;
                p->pid = p->pid_opt >= 0 ? (uint16_t) p->pid_opt : 0x6089;
                p->bcd_device = 0x0100;
                if (!p->manufacturer)
                        p->manufacturer = "gatewayd";
                if (!p->product)
                        p->product = "dfu-sim DFU 1.1 device";
                if (tolerant < 0)
                        tolerant = 1;
                if (detach < 0)
                        detach = 1000;
                if (xfer < 0)
                        xfer = 1024;
        }
        p->runtime_pid =
            p->runtime_pid_opt >= 0 ? (uint16_t) p->runtime_pid_opt : (uint16_t) (p->pid - 1);
        p->transfer_size = (uint32_t) xfer;
        p->detach_timeout_ms = (uint16_t) detach;
        p->attributes = (uint8_t) (ATTR_CAN_DNLOAD | (p->can_upload ? ATTR_CAN_UPLOAD : 0) |
                                   (tolerant ? ATTR_MANIFEST_TOL : 0) |
                                   (p->will_detach ? ATTR_WILL_DETACH : 0));
}

/* The option named by a SPEC item, or NULL. */
static const struct option *find_option(const char *name, size_t len)
{
        for (const struct option *o = opts; o->name; o++)
                if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
                        return o;
        return NULL;
}

/* Adds a device: the command-line personality, changed by spec (NULL: none), named serial (NULL:
 * serial= in spec, or DFUSIMnnnn). 0 or -EINVAL (said on stderr). */
static int add_device(struct sim *s, const char *serial, const char *spec)
{
        struct device *d = &s->dev[s->ndev];
        bool spec_layouts = false;
        char *item, *save = NULL;

        if (s->ndev >= MAX_DEVICES) {
                fprintf(stderr, "dfu-sim: at most %u devices\n", MAX_DEVICES);
                return -EINVAL;
        }
        d->p = s->defaults;
        /* A copy: argv stays as it was, for the re-execution under the preload library. */
        d->spec = spec ? g_strdup(spec) : NULL;
        for (item = d->spec ? strtok_r(d->spec, ",", &save) : NULL; item;
             item = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(item, '=');
                const struct option *o =
                    find_option(item, eq ? (size_t) (eq - item) : strlen(item));
                const char *arg = eq ? eq + 1 : NULL;

                /* A layout keeps its commas: the items after it that start with a digit (its
                 * further segments, "01*064Kg") belong to it. */
                while (o && o->val == OPT_LAYOUT && save && *save >= '0' && *save <= '9') {
                        char *next = strtok_r(NULL, ",", &save);

                        next[-1] = ',';
                }
                if (o && o->val == OPT_LAYOUT && !spec_layouts) {
                        d->p.nlayouts = 0; /* a SPEC's layouts replace the command line's */
                        spec_layouts = true;
                }
                if (!o || (o->has_arg == required_argument) != (arg != NULL) ||
                    (o->val > OPT_LOAD && o->val != OPT_SERIAL) ||
                    (o->val == OPT_SERIAL && !valid_string(arg)) ||
                    (o->val != OPT_SERIAL && personality_option(&d->p, o->val, arg) < 0)) {
                        fprintf(stderr, "dfu-sim: invalid item \"%s\" in --device\n", item);
                        goto fail;
                }
                if (o->val == OPT_SERIAL)
                        serial = arg;
        }
        if (personality_check(&d->p) < 0)
                goto fail;
        personality_resolve(&d->p);
        if (serial)
                snprintf(d->serial, sizeof(d->serial), "%s", serial);
        else
                snprintf(d->serial, sizeof(d->serial), "DFUSIM%04u", s->ndev + 1);
        s->ndev++;
        return 0;
fail:
        g_free(d->spec);
        d->spec = NULL;
        return -EINVAL;
}

static int parse_args(struct sim *s, int argc, char **argv)
{
        /* Devices are made once every option is known: their defaults are all the options. */
        struct {
                const char *serial, *spec;
        } devs[MAX_DEVICES];
        unsigned ndevs = 0;
        int c, idx;

        for (;;) {
                idx = -1;
                c = getopt_long(argc, argv, "+vh", opts, &idx);
                if (c < 0)
                        break;
                if (c >= OPT_DFUSE && c <= OPT_LOAD) {
                        if (personality_option(&s->defaults, c, optarg) < 0)
                                goto bad;
                        continue;
                }
                switch (c) {
                case OPT_SERIAL:
                case OPT_DEVICE:
                        if (ndevs >= MAX_DEVICES || (c == OPT_SERIAL && !valid_string(optarg)))
                                goto bad;
                        devs[ndevs].serial = c == OPT_SERIAL ? optarg : NULL;
                        devs[ndevs++].spec = c == OPT_DEVICE ? optarg : NULL;
                        break;
                case OPT_REPORT:
                        s->report_path = optarg;
                        break;
                case OPT_DUMP:
                        s->dump_path = optarg;
                        break;
                case OPT_ENV_FILE:
                        s->env_path = optarg;
                        break;
                case OPT_CONTROL:
                        s->control_path = optarg;
                        break;
                case OPT_FAULT:
                        if (idx < 0 ||
                            apply_fault(s, &s->initial_faults, opts[idx].name, optarg) < 0)
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
        if (optind < argc) {
                if (strcmp(argv[optind - 1], "--") != 0) {
                        fprintf(stderr,
                                "dfu-sim: unexpected argument \"%s\" (a command goes "
                                "after --)\n",
                                argv[optind]);
                        return -EINVAL;
                }
                s->child_argv = argv + optind;
        }

        /* What the report states at the top: the command line's personality. */
        s->base = s->defaults;
        if (ndevs == 0) {
                devs[0].serial = "DFUSIM0001";
                devs[0].spec = NULL;
                ndevs = 1;
        }
        for (unsigned i = 0; i < ndevs; i++)
                if (add_device(s, devs[i].serial, devs[i].spec) < 0)
                        return -EINVAL;
        personality_resolve(&s->base);
        return 0;
bad:
        fprintf(stderr, "dfu-sim: invalid value for --%s: \"%s\"\n",
                idx >= 0 ? opts[idx].name : "?", optarg ? optarg : "");
        return -EINVAL;
}

int main(int argc, char **argv)
{
        static struct sim s = {
            .defaults =
                {
                    .vid_opt = -1,
                    .pid_opt = -1,
                    .runtime_pid_opt = -1,
                    .xfer_opt = -1,
                    .detach_opt = -1,
                    .tolerant_opt = -1,
                    .will_detach = 1,
                    .can_upload = 1,
                    .poll_timeout_ms = 5,
                    .program_ms = 1,
                    .erase_ms = 2,
                    .size = 256 * 1024,
                    .page_size = 1024,
                    .fill = 0xff,
                    .reenum_ms = 50,
                    .reconnect_ms = 500,
                },
            .next_devnum = 2,
            .wake_fd = -1,
            .sigfd = -1,
        };
        static const int signals[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGCHLD};
        pid_t child = -1;
        int r, status = EXIT_FAILURE;

        if (parse_args(&s, argc, argv) < 0)
                return 2;
        ensure_preloaded(argv);
        s.t0 = now_ns();
        pthread_mutex_init(&s.lock, NULL);
        for (unsigned i = 0; i < s.ndev; i++)
                if (device_init(&s, &s.dev[i], i) < 0)
                        goto out;
        /* Blocked before the testbed starts its threads, so that they inherit the mask. */
        s.sigfd = gw_sim_signalfd(signals, sizeof(signals) / sizeof(signals[0]));
        s.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s.sigfd < 0 || s.wake_fd < 0) {
                perror("dfu-sim: signalfd/eventfd");
                goto out;
        }
        if (s.control_path) {
                r = gw_sim_control_open(&s.ctl, s.control_path);
                if (r < 0) {
                        fprintf(stderr, "dfu-sim: cannot open control %s: %s\n", s.control_path,
                                strerror(-r));
                        goto out;
                }
        }

        s.tb = umockdev_testbed_new();
        s.root_dir = umockdev_testbed_get_root_dir(s.tb);
        s.handler = umockdev_ioctl_base_new();
        g_signal_connect(s.handler, "handle-ioctl", G_CALLBACK(on_ioctl), &s);
        for (unsigned i = 0; i < s.ndev; i++)
                if (plug_in(&s, &s.dev[i], s.dev[i].p.start_runtime ? MODE_RUNTIME : MODE_DFU) < 0)
                        goto out;

        if (s.env_path && write_env_file(&s) < 0) {
                fprintf(stderr, "dfu-sim: cannot write %s\n", s.env_path);
                goto out;
        }
        if (s.child_argv) {
                r = spawn_child(&s, &child);
                if (r < 0) {
                        fprintf(stderr, "dfu-sim: cannot run %s: %s\n", s.child_argv[0],
                                strerror(-r));
                        status = 127;
                        goto out;
                }
        } else {
                printf("UMOCKDEV_DIR=%s\n", s.root_dir);
                fflush(stdout);
        }
        status = run(&s, child);
out:
        if (s.tb) {
                write_report(&s);
                write_dump(&s);
                /* Unplug first: the handler must not see devices that are being freed. */
                for (unsigned i = 0; i < s.ndev; i++)
                        if (s.dev[i].plugged)
                                plug_out(&s, &s.dev[i]);
                g_clear_object(&s.tb);
                g_clear_object(&s.handler);
        }
        if (s.env_path)
                unlink(s.env_path);
        g_free(s.root_dir);
        for (unsigned i = 0; i < s.ndev; i++)
                device_done(&s.dev[i]);
        gw_sim_control_done(&s.ctl);
        if (s.sigfd >= 0)
                close(s.sigfd);
        if (s.wake_fd >= 0)
                close(s.wake_fd);
        return status;
}
