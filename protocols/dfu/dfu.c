/* The dfu protocol plugin: USB DFU 1.1 and ST's DfuSe extension as a state machine fed by
 * control transfer completions, re-enumeration outcomes and timer expiries. It never sleeps:
 * while the device is busy it arms the timer for bwPollTimeout (capped), and when the device
 * already reports idle it sends the next request at once. Two operations: install (DNLOAD)
 * and upload (UPLOAD, reading the device's memory back into the core's gw_writer). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/plugin.h"

#include "debug.h"

#include "dfu-desc.h"
#include "dfu-file.h"

/* Class requests (DFU 1.1 section 3) and DfuSe commands (AN3156). */
#define DFU_DETACH    0
#define DFU_DNLOAD    1
#define DFU_UPLOAD    2
#define DFU_GETSTATUS 3
#define DFU_CLRSTATUS 4
#define DFU_ABORT     6

#define REQ_OUT 0x21 /* class, interface, host to device */
#define REQ_IN  0xa1

#define DFUSE_SET_ADDRESS 0x21
#define DFUSE_ERASE       0x41
#define DFUSE_CMD_LEN     5
/* Data blocks are numbered from 2; block n lands at the address set + (n - 2) * size. */
#define DFUSE_BLOCK_FIRST 2u
#define DFUSE_RUN_BLOCKS  (0xffffu - DFUSE_BLOCK_FIRST + 1u)

#define CLASS_APP_SPECIFIC 0xfe
#define SUBCLASS_DFU       0x01
#define PROTOCOL_RUNTIME   0x01

#define DEFAULT_POLL_MAX_MS         5000
#define DEFAULT_TIMEOUT_MS          1800000
#define DEFAULT_TRANSFER_TIMEOUT_MS 5000
#define DEFAULT_REENUMERATE_TIMEOUT 10000
#define DEFAULT_DETACH_MS           1000
#define ALT_NAME_MAX                255
/* CLRSTATUS, ABORT and resets at the start before the device counts as unrecoverable. */
#define RECOVERIES_MAX 4
/* A DFU 1.1 upload without a size ends on the device's short block; one that sends more than
 * this never does. */
#define UPLOAD_LIMIT (UINT64_C(1) << 32)

enum dfu_state {
        DFU_STATE_IDLE,        /* init() done, nothing started */
        DFU_STATE_DETACHING,   /* DFU_DETACH sent to a run-time mode device */
        DFU_STATE_REENUMERATE, /* waiting for the board to come back (reopened()) */
        DFU_STATE_START,       /* GETSTATUS sent to learn the device's state */
        DFU_STATE_START_WAIT,  /* the device is busy: waiting to ask again */
        DFU_STATE_CLEARING,    /* CLRSTATUS sent (found in dfuERROR) */
        DFU_STATE_ABORTING,    /* ABORT sent (found mid-transfer) */
        DFU_STATE_COMMAND,     /* a DNLOAD (data, DfuSe command or the final empty one) sent */
        DFU_STATE_POLL,        /* GETSTATUS sent after a DNLOAD */
        DFU_STATE_POLL_WAIT,   /* the device is busy with it: waiting bwPollTimeout */
        DFU_STATE_STALLED,     /* GETSTATUS sent after a stalled DNLOAD, to learn why */
        DFU_STATE_MANIFEST,    /* GETSTATUS sent after the empty DNLOAD */
        DFU_STATE_MANIFEST_WAIT,
        DFU_STATE_UPLOAD,       /* an UPLOAD sent */
        DFU_STATE_UPLOAD_ABORT, /* DfuSe: ABORT sent between SET_ADDRESS and the UPLOADs */
        DFU_STATE_UPLOAD_END,   /* ABORT sent after the last block: back to dfuIDLE */
        DFU_STATE_CANCELLING,   /* ABORT sent after cancel() */
        DFU_STATE_DONE,
        DFU_STATE_FAILED,
        _DFU_STATE_MAX,
};

/* What the DNLOAD in flight carries. */
enum dfu_command {
        CMD_DATA,
        CMD_ERASE,
        CMD_MASS_ERASE,
        CMD_SET_ADDRESS,
        CMD_LEAVE_ADDRESS, /* DfuSe: the start address again, before leaving */
        CMD_END,           /* the empty DNLOAD: end of the image, manifestation follows */
        CMD_UPLOAD,        /* an UPLOAD (the one request here that is not a DNLOAD) */
};

struct dfu {
        const struct gw_proto_host *host;

        /* Options. */
        char alt_name[ALT_NAME_MAX + 1]; /* "alt" when not a number; empty = none */
        bool alt_is_number;
        uint64_t alt_number;
        uint64_t poll_max_ms, timeout_ms, transfer_timeout_ms, reenumerate_timeout_ms;
        uint64_t transfer_size_opt; /* 0 = the device's */
        bool have_address;
        uint64_t address_opt;
        bool leave;
        enum gw_dfu_file_format format;
        int reset_opt;   /* option reset: 1 true, 0 false, -1 unset (reset when detached) */
        bool verify;     /* option verify: read what was written back before leaving */
        bool mass_erase; /* option mass-erase: DfuSe, one erase of everything, not per page */

        const struct gw_reader *reader; /* install */
        const struct gw_writer *writer; /* upload */
        bool uploading;
        enum dfu_state state;
        int error;
        /* Times are microseconds of now(): exact where the host has a microsecond clock,
         * else its milliseconds times 1000. */
        bool fine_clock;
        uint64_t deadline;    /* the armed timer, 0 = none */
        uint64_t op_deadline; /* when the whole operation gives up */
        bool cancel_requested;
        unsigned recoveries;

        /* The image file: a suffix is not sent, a DfuSe container is written element by
         * element. */
        struct gw_dfu_file file;

        /* The device as last opened; its run-time ids as it had them before DFU_DETACH. */
        uint8_t interface, alt;
        bool runtime, dfuse;
        bool have_runtime_ids; /* the board ran its application: the operation detached it */
        uint16_t runtime_vid, runtime_pid;
        struct gw_dfu_functional func;
        uint16_t xfer; /* wTransferSize capped */
        struct gw_dfuse_layout layout;

        /* The download: the regions to write, in address order (one for a plain image, the
         * chosen alt's elements for a DfuSe container), and how far erasing and writing got. */
        const struct gw_dfu_element *regions;
        size_t n_regions;
        struct gw_dfu_element whole; /* the one region of a plain image */
        uint64_t total;              /* bytes to write: the regions' sizes */
        size_t region;               /* the region being written */
        uint64_t region_off;         /* its bytes the device acknowledged */
        size_t erase_region;         /* the region being erased */
        bool mass_erased;            /* option mass-erase: done */
        enum dfu_command cmd;
        uint16_t cmd_len;
        uint64_t offset;  /* image bytes the device acknowledged, over all regions */
        uint16_t block;   /* DFU 1.1: the next block number */
        uint32_t address; /* DfuSe: where the image starts (where leaving jumps to) */
        uint64_t erase_cursor;
        bool run_open;        /* DfuSe: SET_ADDRESS done for the current run */
        uint32_t run_blocks;  /* data blocks sent in the current run */
        uint32_t cmd_address; /* DfuSe: the address the command in flight carries */
        /* DfuSe: the device's address pointer, as the last SET_ADDRESS left it. Data blocks do
         * not move it (AN3156); an ERASE may (ST's device library keeps the erased page in
         * it), so it is known only from a SET_ADDRESS with no ERASE since. */
        bool pointer_known;
        uint32_t pointer;
        /* The upload: offset counts bytes written to the writer, block the UPLOADs. */
        uint64_t up_limit; /* w->max, or UPLOAD_LIMIT when the caller set none */
        bool up_reading;   /* DfuSe: the ABORT after this run's SET_ADDRESS is done */
        /* Verifying an install: each region is uploaded and compared with the image block by
         * block; verify_region counts the regions done. */
        bool verifying, verified;
        size_t verify_region;
        uint8_t buf[GW_DFU_TRANSFER_MAX];
};

static const char *const state_names[_DFU_STATE_MAX] = {
    [DFU_STATE_IDLE] = "idle",
    [DFU_STATE_DETACHING] = "detaching",
    [DFU_STATE_REENUMERATE] = "reenumerate",
    [DFU_STATE_START] = "start",
    [DFU_STATE_START_WAIT] = "start-wait",
    [DFU_STATE_CLEARING] = "clearing",
    [DFU_STATE_ABORTING] = "aborting",
    [DFU_STATE_COMMAND] = "command",
    [DFU_STATE_POLL] = "poll",
    [DFU_STATE_POLL_WAIT] = "poll-wait",
    [DFU_STATE_STALLED] = "stalled",
    [DFU_STATE_MANIFEST] = "manifest",
    [DFU_STATE_MANIFEST_WAIT] = "manifest-wait",
    [DFU_STATE_UPLOAD] = "upload",
    [DFU_STATE_UPLOAD_ABORT] = "upload-abort",
    [DFU_STATE_UPLOAD_END] = "upload-end",
    [DFU_STATE_CANCELLING] = "cancelling",
    [DFU_STATE_DONE] = "done",
    [DFU_STATE_FAILED] = "failed",
};

static const char *dfu_state_to_string(enum dfu_state s)
{
        if ((unsigned) s >= _DFU_STATE_MAX)
                return NULL;
        return state_names[s];
}

static const char *command_name(enum dfu_command c)
{
        switch (c) {
        case CMD_DATA:
                return "DNLOAD";
        case CMD_ERASE:
                return "ERASE";
        case CMD_MASS_ERASE:
                return "mass ERASE";
        case CMD_SET_ADDRESS:
        case CMD_LEAVE_ADDRESS:
                return "SET_ADDRESS";
        case CMD_END:
                return "the final empty DNLOAD";
        case CMD_UPLOAD:
                return "UPLOAD";
        }
        return "?";
}

static const char *dev_state_name(unsigned s)
{
        const char *n = gw_dfu_dev_state_to_string(s);

        return n ? n : "unknown";
}

static void set_state(struct dfu *d, enum dfu_state s)
{
        if (d->state == s)
                return;
        gw_proto_debug(d->host, "dfu: %s -> %s", dfu_state_to_string(d->state),
                       dfu_state_to_string(s));
        d->state = s;
}

/* Arms the timer for at (microseconds, > 0); a millisecond host gets the first tick at or
 * after it. */
static void arm(struct dfu *d, uint64_t at)
{
        d->deadline = at;
        if (d->fine_clock)
                d->host->set_deadline_us(d->host->ctx, at);
        else
                d->host->set_deadline(d->host->ctx, (at + 999u) / 1000u);
}

static void disarm(struct dfu *d)
{
        d->deadline = 0;
        if (d->fine_clock)
                d->host->set_deadline_us(d->host->ctx, 0);
        else
                d->host->set_deadline(d->host->ctx, 0);
}

static uint64_t now(struct dfu *d)
{
        if (d->fine_clock)
                return d->host->now_us(d->host->ctx);
        return d->host->now_ms(d->host->ctx) * 1000u;
}

/* Enters FAILED with err, whose reason the core reports; returns err. */
static int fail(struct dfu *d, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct dfu *d, int err, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        gw_proto_debug(d->host, "dfu: %s", msg);
        if (d->host->set_error)
                d->host->set_error(d->host->ctx, "%s", msg);
        d->error = err;
        set_state(d, DFU_STATE_FAILED);
        disarm(d);
        return err;
}

/* The device reported an error status. */
static int fail_status(struct dfu *d, const struct gw_dfu_status *st, const char *during)
{
        if (st->status == 0x0b) /* errVENDOR: the reason is string descriptor iString */
                return fail(d, gw_dfu_status_to_errno(st->status),
                            "device error %s during %s: %s (string descriptor %u)",
                            gw_dfu_status_to_string(st->status), during,
                            gw_dfu_status_to_message(st->status), st->istring);
        return fail(d, gw_dfu_status_to_errno(st->status), "device error %s during %s: %s",
                    gw_dfu_status_to_string(st->status), during,
                    gw_dfu_status_to_message(st->status));
}

static int succeed(struct dfu *d)
{
        set_state(d, DFU_STATE_DONE);
        disarm(d);
        return GW_PROTO_DONE;
}

static int result(const struct dfu *d)
{
        if (d->state == DFU_STATE_DONE)
                return GW_PROTO_DONE;
        if (d->state == DFU_STATE_FAILED)
                return d->error;
        return GW_PROTO_CONTINUE;
}

/* Submits one class request to the DFU interface and enters s. */
static int handle_done(struct dfu *d, int status, const uint8_t *data, size_t len);

static int submit(struct dfu *d, enum dfu_state s, uint8_t type, uint8_t request, uint16_t value,
                  const void *data, uint16_t length)
{
        struct gw_control_setup setup = {
            .request_type = type,
            .request = request,
            .value = value,
            .index = d->interface,
            .length = length,
        };
        int r;

        set_state(d, s);
        r = d->host->control(d->host->ctx, &setup, data, (unsigned) d->transfer_timeout_ms);
        /* A device that vanished (it reset after leave or manifestation) may be refused at
         * submission rather than at completion: the state decides whether that is the end
         * we expected. */
        if (r == -ENODEV)
                return handle_done(d, -ENODEV, NULL, 0);
        if (r < 0)
                return fail(d, r, "submitting a control transfer failed: %s", strerror(-r));
        return GW_PROTO_CONTINUE;
}

static int get_status(struct dfu *d, enum dfu_state s)
{
        return submit(d, s, REQ_IN, DFU_GETSTATUS, 0, NULL, GW_DFU_STATUS_LEN);
}

/* The device is busy for ms: ask again after that, capped by poll-max-ms and by the
 * operation's deadline, which, once passed, fails the operation. */
static int wait_poll(struct dfu *d, enum dfu_state s, uint32_t ms, const char *what)
{
        uint64_t t = now(d), wait = ms, at;

        if (t >= d->op_deadline)
                return fail(d, -ETIMEDOUT, "gave up after %" PRIu64 " ms: the device is still %s",
                            d->timeout_ms, what);
        if (wait > d->poll_max_ms)
                wait = d->poll_max_ms;
        at = t + wait * 1000u;
        /* A millisecond clock is rounded down: the answer came up to 1 ms after t, so one tick
         * more is the first that is surely wait ms after it. That millisecond also keeps a
         * busy device that asks for no wait from drawing a tight loop of GETSTATUS requests. */
        if (!d->fine_clock || wait == 0)
                at += 1000u;
        if (at > d->op_deadline)
                at = d->op_deadline;
        set_state(d, s);
        arm(d, at);
        return GW_PROTO_CONTINUE;
}

/* Picks the DFU alternate setting: in run-time mode the first run-time DFU interface; in DFU
 * mode the one named by option "alt" (number, whole name, or DfuSe layout name), else the
 * first. NULL when none fits. */
static const struct gw_usb_alt *choose_alt(const struct dfu *d,
                                           const struct gw_usb_device_info *info, bool *ret_runtime)
{
        const struct gw_usb_alt *first_dfu = NULL, *first_runtime = NULL;

        for (size_t i = 0; i < info->n_alts; i++) {
                const struct gw_usb_alt *a = &info->alts[i];

                if (a->class_code != CLASS_APP_SPECIFIC || a->subclass != SUBCLASS_DFU)
                        continue;
                if (a->protocol == PROTOCOL_RUNTIME) {
                        if (!first_runtime)
                                first_runtime = a;
                        continue;
                }
                if (!first_dfu)
                        first_dfu = a;
        }
        if (!first_dfu) {
                *ret_runtime = first_runtime != NULL;
                return first_runtime;
        }
        *ret_runtime = false;
        if (!d->alt_is_number && !d->alt_name[0])
                return first_dfu;
        for (size_t i = 0; i < info->n_alts; i++) {
                const struct gw_usb_alt *a = &info->alts[i];
                struct gw_dfuse_layout l;
                const char *want = d->alt_name;

                if (a->class_code != CLASS_APP_SPECIFIC || a->subclass != SUBCLASS_DFU ||
                    a->protocol == PROTOCOL_RUNTIME)
                        continue;
                if (d->alt_is_number) {
                        if (a->alt == d->alt_number)
                                return a;
                        continue;
                }
                if (!a->name)
                        continue;
                if (strcmp(a->name, want) == 0)
                        return a;
                if (want[0] == '@')
                        want++;
                if (gw_dfuse_parse_layout(a->name, &l) == 0 && strcmp(l.name, want) == 0)
                        return a;
        }
        return NULL;
}

/* The functional descriptor follows the interface it belongs to, but hosts attach it to
 * different alternate settings: look in the chosen one, then its interface's, then any. */
static int find_functional(const struct gw_usb_device_info *info, const struct gw_usb_alt *alt,
                           struct gw_dfu_functional *ret)
{
        int r = gw_dfu_parse_functional(alt->extra, alt->extra_len, ret);

        if (r != -ENOENT)
                return r;
        for (int pass = 0; pass < 2; pass++)
                for (size_t i = 0; i < info->n_alts; i++) {
                        const struct gw_usb_alt *a = &info->alts[i];

                        if (a == alt || (pass == 0 && a->interface != alt->interface))
                                continue;
                        r = gw_dfu_parse_functional(a->extra, a->extra_len, ret);
                        if (r != -ENOENT)
                                return r;
                }
        return -ENOENT;
}

static int check_download(struct dfu *d);
static int check_upload(struct dfu *d);

/* Reads what the device offers into d. claim: also claims the interface and, in DFU mode,
 * checks that the operation can run (the image against the memory layout, the upload against
 * the readable memory). 0 or the failure (already reported). */
static int setup_device(struct dfu *d, bool claim)
{
        const struct gw_usb_device_info *info =
            d->host->usb_info ? d->host->usb_info(d->host->ctx) : NULL;
        const struct gw_usb_alt *alt;
        int r;

        if (!info)
                return fail(d, -ENODEV, "no USB device on this link");
        if (info->n_alts > 0 && !info->alts)
                return fail(d, -EINVAL, "the transport lists alternate settings without data");
        alt = choose_alt(d, info, &d->runtime);
        if (alt && d->runtime) {
                d->have_runtime_ids = true;
                d->runtime_vid = info->vid;
                d->runtime_pid = info->pid;
        }
        if (!alt) {
                if (d->alt_is_number)
                        return fail(d, -ENOENT, "%04x:%04x has no DFU alternate setting %" PRIu64,
                                    info->vid, info->pid, d->alt_number);
                if (d->alt_name[0])
                        return fail(d, -ENOENT, "%04x:%04x has no DFU alternate setting \"%s\"",
                                    info->vid, info->pid, d->alt_name);
                return fail(d, -ENOENT, "%04x:%04x has no DFU interface", info->vid, info->pid);
        }
        d->interface = alt->interface;
        d->alt = alt->alt;
        r = find_functional(info, alt, &d->func);
        if (r == -ENOENT)
                return fail(d, -EPROTO, "DFU interface %u has no DFU functional descriptor",
                            alt->interface);
        if (r < 0)
                return fail(d, -EPROTO, "DFU interface %u has a malformed functional descriptor",
                            alt->interface);
        d->xfer = d->func.transfer_size;
        if (d->xfer > GW_DFU_TRANSFER_MAX)
                d->xfer = GW_DFU_TRANSFER_MAX;
        if (d->transfer_size_opt && d->xfer > d->transfer_size_opt)
                d->xfer = (uint16_t) d->transfer_size_opt;
        d->dfuse = !d->runtime && d->func.bcd_dfu == GW_DFU_BCD_DFUSE;
        gw_proto_debug(
            d->host,
            "dfu: %04x:%04x interface %u alt %u (%s mode), DFU %x.%02x, attributes 0x%02x, "
            "transfer size %u (declared %u), detach timeout %u ms",
            info->vid, info->pid, d->interface, d->alt, d->runtime ? "run-time" : "DFU",
            d->func.bcd_dfu >> 8, d->func.bcd_dfu & 0xff, d->func.attributes, d->xfer,
            d->func.transfer_size, d->func.detach_timeout_ms);
        if (d->dfuse) {
                if (gw_dfuse_parse_layout(alt->name, &d->layout) < 0)
                        return fail(d, -EPROTO,
                                    "DfuSe alternate setting %u has no valid memory layout in its "
                                    "name \"%.80s\"",
                                    d->alt, alt->name ? alt->name : "");
        }
        if (!claim)
                return 0;

        r = d->host->select_alt(d->host->ctx, d->interface, d->alt);
        if (r < 0)
                return fail(d, r, "selecting interface %u alternate setting %u failed: %s%s",
                            d->interface, d->alt, strerror(-r),
                            r == -EBUSY ? " (another driver or program holds it)" : "");
        if (d->runtime)
                return 0;
        return d->uploading ? check_upload(d) : check_download(d);
}

/* The ids a file's suffix names, for messages: "0483:df11", "any:df11". */
static void file_ids(const struct gw_dfu_file *f, char *buf, size_t n)
{
        char v[8] = "any", p[8] = "any";

        if (f->suffix.vid != GW_DFU_ID_ANY)
                snprintf(v, sizeof(v), "%04x", f->suffix.vid);
        if (f->suffix.pid != GW_DFU_ID_ANY)
                snprintf(p, sizeof(p), "%04x", f->suffix.pid);
        snprintf(buf, n, "%s:%s", v, p);
}

/* The regions of a DfuSe container: the elements of the chosen alt, all of it. */
static int plan_container(struct dfu *d)
{
        const struct gw_dfu_file *f = &d->file;
        uint64_t bad = 0;

        if (!d->dfuse)
                return fail(d, -EPROTO,
                            "the file is a DfuSe container, but the device speaks DFU %x.%02x, "
                            "not DfuSe (1.1a)",
                            d->func.bcd_dfu >> 8, d->func.bcd_dfu & 0xff);
        /* open_file() made sure that option address is not set, and that all elements are
         * for one alt. */
        if (f->elements[0].alt != d->alt)
                return fail(d, -ENOENT,
                            "the DfuSe file holds an image for alternate setting %u, and alt "
                            "%u was chosen",
                            f->elements[0].alt, d->alt);
        d->regions = f->elements;
        d->n_regions = f->n_elements;
        d->total = f->elements_size;
        for (size_t i = 0; i < d->n_regions; i++) {
                const struct gw_dfu_element *e = &d->regions[i];

                if (gw_dfuse_check_writable(&d->layout, e->address, e->size, &bad) < 0)
                        return fail(d, -ENOSPC,
                                    "the file's element %zu (%" PRIu32 " bytes at 0x%08" PRIx32
                                    ") does not fit in the writable memory of \"%s\": "
                                    "0x%08" PRIx64 " is not writable",
                                    i + 1, e->size, e->address, d->layout.name, bad);
        }
        d->address = d->regions[0].address;
        return 0;
}

/* Does the file's suffix allow a device with these ids, or the run-time ids it had? */
static int check_ids(struct dfu *d, uint16_t vid, uint16_t pid)
{
        char ids[16];

        if (gw_dfu_file_matches(&d->file, vid, pid) ||
            (d->have_runtime_ids && gw_dfu_file_matches(&d->file, d->runtime_vid, d->runtime_pid)))
                return 0;
        file_ids(&d->file, ids, sizeof(ids));
        return fail(d, -ENOEXEC,
                    "the file's DFU suffix is for %s, and this device is %04x:%04x: not flashed "
                    "(option format=raw sends the file as it is, suffix and all)",
                    ids, vid, pid);
}

/* Where the image goes, against the device (d->dfuse, d->layout, d->alt): a DFU 1.1 device
 * takes a plain image as it is; on DfuSe, writable memory for all of it, a plain image at
 * option address (default: the first writable segment), a container's elements where they
 * say. */
static int plan_download(struct dfu *d)
{
        uint64_t bad = 0;

        if (d->file.dfuse)
                return plan_container(d);
        d->whole.offset = 0;
        d->whole.address = 0; /* DfuSe: set below */
        d->whole.size = (uint32_t) d->file.payload_size;
        d->regions = &d->whole;
        d->n_regions = 1;
        d->total = d->file.payload_size;
        if (!d->dfuse) {
                if (d->have_address)
                        return fail(d, -EINVAL, "option address applies to DfuSe devices only");
                if (d->mass_erase)
                        return fail(d, -EINVAL, "option mass-erase applies to DfuSe devices only");
                return 0;
        }
        if (d->have_address)
                d->address = (uint32_t) d->address_opt;
        else if (gw_dfuse_first_writable(&d->layout, &d->address) < 0)
                return fail(d, -ENOSPC, "the DfuSe layout \"%s\" has no writable memory",
                            d->layout.name);
        d->whole.address = d->address;
        if (gw_dfuse_check_writable(&d->layout, d->address, d->total, &bad) < 0)
                return fail(d, -ENOSPC,
                            "the image (%" PRIu64 " bytes at 0x%08" PRIx32 ") does not fit "
                            "in the writable memory of \"%s\": 0x%08" PRIx64 " is not writable",
                            d->total, d->address, d->layout.name, bad);
        return 0;
}

/* Option verify reads back what was written: the device must allow uploads, a DFU 1.1 one
 * must still be there after manifestation, and DfuSe memory must be readable where it goes. */
static int check_verify(struct dfu *d)
{
        uint64_t bad = 0;

        if (!(d->func.attributes & GW_DFU_ATTR_CAN_UPLOAD))
                return fail(d, -EOPNOTSUPP,
                            "option verify: the device does not allow uploads (bitCanUpload is "
                            "clear)");
        if (!d->dfuse && !(d->func.attributes & GW_DFU_ATTR_MANIFEST_TOLERANT))
                return fail(d, -EOPNOTSUPP,
                            "option verify: the device resets once it has the image "
                            "(bitManifestationTolerant is clear), nothing is left to read back");
        for (size_t i = 0; d->dfuse && i < d->n_regions; i++)
                if (gw_dfuse_check_readable(&d->layout, d->regions[i].address, d->regions[i].size,
                                            &bad) < 0)
                        return fail(d, -ENOSPC,
                                    "option verify: 0x%08" PRIx64 " is not readable in \"%s\"", bad,
                                    d->layout.name);
        return 0;
}

/* A download needs bitCanDnload, a device the file's suffix allows, and room for the image. */
static int check_download(struct dfu *d)
{
        const struct gw_usb_device_info *info = d->host->usb_info(d->host->ctx);
        int r;

        if (!(d->func.attributes & GW_DFU_ATTR_CAN_DNLOAD))
                return fail(d, -EOPNOTSUPP,
                            "the device does not accept downloads (bitCanDnload "
                            "is clear)");
        r = check_ids(d, info->vid, info->pid);
        if (r < 0)
                return r;
        r = plan_download(d);
        if (r < 0 || !d->verify)
                return r;
        return check_verify(d);
}

/* An upload needs bitCanUpload; on DfuSe also a size, all of it in readable memory from
 * option address (default: the first readable segment): a DfuSe device sends no short block
 * at the end of its memory, it reads on (or stalls), so the layout is the only bound. */
static int check_upload(struct dfu *d)
{
        uint64_t bad = 0;

        if (!(d->func.attributes & GW_DFU_ATTR_CAN_UPLOAD))
                return fail(d, -EOPNOTSUPP,
                            "the device does not allow uploads (bitCanUpload is clear)");
        if (!d->dfuse) {
                if (d->have_address)
                        return fail(d, -EINVAL, "option address applies to DfuSe devices only");
                return 0;
        }
        if (d->writer->max == 0)
                return fail(d, -EINVAL,
                            "a DfuSe upload needs a size: the device does not tell where its "
                            "memory ends");
        if (d->have_address)
                d->address = (uint32_t) d->address_opt;
        else if (gw_dfuse_first_readable(&d->layout, &d->address) < 0)
                return fail(d, -ENOSPC, "the DfuSe layout \"%s\" has no readable memory",
                            d->layout.name);
        if (gw_dfuse_check_readable(&d->layout, d->address, d->writer->max, &bad) < 0)
                return fail(d, -ENOSPC,
                            "the upload (%" PRIu64 " bytes at 0x%08" PRIx32 ") reaches past "
                            "the readable memory of \"%s\": 0x%08" PRIx64 " is not readable",
                            d->writer->max, d->address, d->layout.name, bad);
        return 0;
}

/* Reads len image bytes at off into d->buf. */
static int read_image(struct dfu *d, uint64_t off, size_t len)
{
        size_t got = 0;

        while (got < len) {
                ssize_t n = d->reader->pread(d->reader->ctx, d->buf + got, len - got, off + got);

                if (n < 0)
                        return fail(d, (int) n, "reading the image at %" PRIu64 " failed: %s",
                                    off + got, strerror((int) -n));
                if (n == 0 || (size_t) n > len - got)
                        return fail(d, -EIO,
                                    "the image ended at %" PRIu64 ", before its size %" PRIu64,
                                    off + got, d->reader->size);
                got += (size_t) n;
        }
        return 0;
}

static int send_dnload(struct dfu *d, enum dfu_command cmd, uint16_t value, uint16_t len)
{
        d->cmd = cmd;
        d->cmd_len = len;
        return submit(d, DFU_STATE_COMMAND, REQ_OUT, DFU_DNLOAD, value, len ? d->buf : NULL, len);
}

static int send_dfuse_command(struct dfu *d, enum dfu_command cmd, uint32_t addr)
{
        d->buf[0] = cmd == CMD_ERASE ? DFUSE_ERASE : DFUSE_SET_ADDRESS;
        d->buf[1] = (uint8_t) addr;
        d->buf[2] = (uint8_t) (addr >> 8);
        d->buf[3] = (uint8_t) (addr >> 16);
        d->buf[4] = (uint8_t) (addr >> 24);
        d->cmd_address = addr;
        gw_proto_debug(d->host, "dfu: DfuSe %s 0x%08" PRIx32, command_name(cmd), addr);
        return send_dnload(d, cmd, 0, DFUSE_CMD_LEN);
}

static int send_data(struct dfu *d, uint16_t value)
{
        const struct gw_dfu_element *g = &d->regions[d->region];
        uint64_t remaining = g->size - d->region_off;
        size_t len = remaining < d->xfer ? (size_t) remaining : d->xfer;
        int r = read_image(d, g->offset + d->region_off, len);

        if (r < 0)
                return r;
        return send_dnload(d, CMD_DATA, value, (uint16_t) len);
}

static int send_end(struct dfu *d)
{
        return send_dnload(d, CMD_END, d->dfuse ? DFUSE_BLOCK_FIRST : d->block, 0);
}

static int finish_in_dfu_mode(struct dfu *d);
static int next_upload(struct dfu *d);
static int begin_verify(struct dfu *d);
static int verify_region_done(struct dfu *d);

/* The next region with bytes left to write; a new region needs its own SET_ADDRESS. */
static bool next_region(struct dfu *d)
{
        while (d->region < d->n_regions && d->region_off >= d->regions[d->region].size) {
                d->region++;
                d->region_off = 0;
                d->run_open = false;
        }
        return d->region < d->n_regions;
}

/* DfuSe: the next page to erase, in address order over the regions, each page once (two
 * regions may share one). 1 with its start in *ret_page, 0 when all are erased, or a failure.
 * With option mass-erase the one mass erase did it all. */
static int next_erase(struct dfu *d, uint32_t *ret_page)
{
        if (d->mass_erase)
                return 0;
        while (d->erase_region < d->n_regions) {
                const struct gw_dfu_element *g = &d->regions[d->erase_region];
                uint64_t end = (uint64_t) g->address + g->size, start = 0, page_end = 0;
                const struct gw_dfuse_segment *seg;

                if (d->erase_cursor < g->address)
                        d->erase_cursor = g->address;
                if (d->erase_cursor >= end) {
                        d->erase_region++;
                        continue;
                }
                seg = gw_dfuse_find_page(&d->layout, (uint32_t) d->erase_cursor, &start, &page_end);
                if (!seg) /* checked before the download began */
                        return fail(d, -ENOSPC, "0x%08" PRIx64 " is outside the memory layout",
                                    d->erase_cursor);
                d->erase_cursor = page_end;
                if (seg->type & GW_DFUSE_ERASABLE) {
                        *ret_page = (uint32_t) start;
                        return 1;
                }
        }
        return 0;
}

/* Sends what comes next: DfuSe erases every page the image covers, sets the address once per
 * run of blocks (and for each region), writes, and leaves; DFU 1.1 writes numbered blocks. */
static int next_step(struct dfu *d)
{
        uint32_t page = 0;
        int r;

        if (d->uploading)
                return next_upload(d);
        if (!d->dfuse) {
                if (next_region(d))
                        return send_data(d, d->block);
                return send_end(d);
        }
        if (d->mass_erase && !d->mass_erased) {
                /* ERASE without an address: the whole memory, in one (long) busy time. */
                d->buf[0] = DFUSE_ERASE;
                gw_proto_debug(d->host, "dfu: DfuSe mass erase");
                return send_dnload(d, CMD_MASS_ERASE, 0, 1);
        }
        r = next_erase(d, &page);
        if (r < 0)
                return r;
        if (r > 0)
                return send_dfuse_command(d, CMD_ERASE, page);
        if (next_region(d)) {
                if (!d->run_open || d->run_blocks >= DFUSE_RUN_BLOCKS)
                        return send_dfuse_command(
                            d, CMD_SET_ADDRESS,
                            (uint32_t) (d->regions[d->region].address + d->region_off));
                return send_data(d, (uint16_t) (DFUSE_BLOCK_FIRST + d->run_blocks));
        }
        if (d->verify && !d->verified)
                return begin_verify(d);
        if (d->leave && d->pointer_known && d->pointer == d->address) {
                /* The leave jumps to the address pointer: already the image's start (one
                 * run, erases before it), so no SET_ADDRESS and no wait for it. */
                gw_proto_debug(d->host, "dfu: address pointer at 0x%08" PRIx32 " already, leaving",
                               d->address);
                return send_end(d);
        }
        if (d->leave)
                return send_dfuse_command(d, CMD_LEAVE_ADDRESS, d->address);
        gw_proto_debug(d->host, "dfu: image written, staying in DFU mode (leave=false)");
        return succeed(d);
}

/* Bytes the device acknowledged (install) or sent (upload) of the image's size or the
 * upload's w->max (0: the caller set no size). */
static void report_progress(struct dfu *d)
{
        if (d->host->progress && !d->verifying)
                d->host->progress(d->host->ctx, d->offset,
                                  d->uploading ? d->writer->max : d->total);
}

/* The device finished the DNLOAD in flight (it reports dfuDNLOAD_IDLE). */
static int command_done(struct dfu *d)
{
        switch (d->cmd) {
        case CMD_DATA:
                d->offset += d->cmd_len;
                d->region_off += d->cmd_len;
                if (d->dfuse)
                        d->run_blocks++;
                else
                        d->block++;
                report_progress(d);
                break;
        case CMD_SET_ADDRESS:
                d->run_open = true;
                d->run_blocks = 0;
                d->pointer_known = true;
                d->pointer = d->cmd_address;
                break;
        case CMD_LEAVE_ADDRESS:
                return send_end(d);
        case CMD_MASS_ERASE:
                d->mass_erased = true;
                /* fall through */
        case CMD_ERASE:
                d->pointer_known = false;
                break;
        case CMD_END:
        case CMD_UPLOAD: /* never polled: its completion carries the data */
                break;
        }
        return next_step(d);
}

static int begin_download(struct dfu *d)
{
        d->offset = 0;
        d->block = 0;
        d->verifying = false;
        d->verified = false;
        d->region = 0;
        d->region_off = 0;
        d->erase_region = 0;
        d->mass_erased = false;
        d->erase_cursor = 0;
        d->run_open = false;
        d->run_blocks = 0;
        d->pointer_known = false;
        gw_proto_debug(
            d->host, "dfu: downloading %" PRIu64 " bytes in %zu region%s, blocks of %u%s", d->total,
            d->n_regions, d->n_regions == 1 ? "" : "s", d->xfer, d->dfuse ? " (DfuSe)" : "");
        report_progress(d);
        return next_step(d);
}

static int send_abort(struct dfu *d, enum dfu_state s)
{
        return submit(d, s, REQ_OUT, DFU_ABORT, 0, NULL, 0);
}

static int send_upload(struct dfu *d)
{
        uint64_t left = d->up_limit - d->offset;
        uint16_t len = left < d->xfer ? (uint16_t) left : d->xfer;
        uint16_t value = d->dfuse ? (uint16_t) (DFUSE_BLOCK_FIRST + d->run_blocks) : d->block;

        /* An upload does not poll: the operation's deadline is checked block by block. */
        if (now(d) >= d->op_deadline)
                return fail(d, -ETIMEDOUT,
                            "gave up after %" PRIu64 " ms: the upload is still going on (%" PRIu64
                            " bytes read)",
                            d->timeout_ms, d->offset);
        d->cmd = CMD_UPLOAD;
        d->cmd_len = len;
        return submit(d, DFU_STATE_UPLOAD, REQ_IN, DFU_UPLOAD, value, NULL, len);
}

/* Sends what comes next in an upload: DfuSe sets the address once per run, ABORTs back to
 * dfuIDLE (UPLOAD is not allowed in dfuDNLOAD_IDLE) and reads blocks numbered from 2; DFU 1.1
 * reads blocks numbered from 0. At the limit an ABORT leaves dfuUPLOAD_IDLE. */
static int next_upload(struct dfu *d)
{
        if (d->offset >= d->up_limit) {
                if (!d->verifying && d->writer->max == 0)
                        return fail(d, -EFBIG,
                                    "the device sent %" PRIu64 " bytes without ending the upload "
                                    "with a short block: give a size",
                                    d->offset);
                gw_proto_debug(d->host, "dfu: %" PRIu64 " bytes read, the size asked for",
                               d->offset);
                return send_abort(d, DFU_STATE_UPLOAD_END);
        }
        if (!d->dfuse)
                return send_upload(d);
        if (d->up_reading && d->run_blocks >= DFUSE_RUN_BLOCKS) {
                /* wValue would pass 0xffff: back to dfuIDLE for the next run's SET_ADDRESS. */
                d->run_open = false;
                d->up_reading = false;
                return send_abort(d, DFU_STATE_UPLOAD_ABORT);
        }
        if (!d->run_open)
                return send_dfuse_command(d, CMD_SET_ADDRESS, (uint32_t) (d->address + d->offset));
        if (!d->up_reading)
                return send_abort(d, DFU_STATE_UPLOAD_ABORT);
        return send_upload(d);
}

static int begin_upload(struct dfu *d)
{
        d->offset = 0;
        d->block = 0;
        d->run_open = false;
        d->run_blocks = 0;
        d->up_reading = false;
        d->up_limit = d->writer->max ? d->writer->max : UPLOAD_LIMIT;
        if (d->dfuse)
                gw_proto_debug(d->host,
                               "dfu: uploading %" PRIu64 " bytes from 0x%08" PRIx32
                               " in blocks of %u",
                               d->writer->max, d->address, d->xfer);
        else
                gw_proto_debug(d->host, "dfu: uploading up to %" PRIu64 " bytes in blocks of %u",
                               d->up_limit, d->xfer);
        report_progress(d);
        return next_upload(d);
}

/* A verify's read-back block of n bytes at d->offset of the region against the image's bytes
 * there (read into d->buf, idle during an upload). */
static int verify_block(struct dfu *d, const uint8_t *got, size_t n)
{
        const struct gw_dfu_element *g = &d->regions[d->verify_region];
        int r = read_image(d, g->offset + d->offset, n);

        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                if (got[i] != d->buf[i])
                        return fail(d, -EIO,
                                    "verify failed: 0x%08" PRIx64 " reads back 0x%02x, the image "
                                    "has 0x%02x there%s",
                                    (d->dfuse ? g->address : 0) + d->offset + i, got[i], d->buf[i],
                                    d->dfuse ? "; the board stays in DFU mode" : "");
        return 0;
}

/* An UPLOAD brought n bytes: they go to the writer at the offset. A short block ends a DFU 1.1
 * upload (the device is back in dfuIDLE); on DfuSe, whose memory the layout said is readable,
 * it is a failure. */
static int upload_done(struct dfu *d, int status, const uint8_t *data, size_t len)
{
        size_t n = (size_t) status;

        if (n > d->cmd_len)
                return fail(d, -EPROTO, "the device sent %zu bytes for a %u-byte UPLOAD", n,
                            d->cmd_len);
        if (n > len || (n > 0 && !data))
                return fail(d, -EIO, "the UPLOAD reported %zu bytes but delivered %zu", n,
                            data ? len : 0);
        if (n > 0 && d->verifying) {
                int r = verify_block(d, data, n);

                if (r < 0)
                        return r;
        } else if (n > 0) {
                ssize_t w = d->writer->pwrite(d->writer->ctx, data, n, d->offset);

                if (w != (ssize_t) n) {
                        int r = w < 0 ? (int) w : -EIO;

                        return fail(d, r, "writing what was read at %" PRIu64 " failed: %s",
                                    d->offset, strerror(-r));
                }
        }
        d->offset += n;
        if (d->dfuse)
                d->run_blocks++;
        else
                d->block++;
        report_progress(d);
        if (n == d->cmd_len)
                return next_upload(d);
        if (d->dfuse)
                return fail(d, -EIO,
                            "the device ended the upload at 0x%08" PRIx64 ", after %" PRIu64
                            " of %" PRIu64 " bytes",
                            (uint64_t) d->address + d->offset, d->offset, d->up_limit);
        if (d->verifying)
                return fail(d, -EIO,
                            "verify failed: the device read back %" PRIu64 " of the %" PRIu64
                            " bytes written",
                            d->offset, d->up_limit);
        gw_proto_debug(d->host,
                       "dfu: a short block of %zu bytes ended the upload after %" PRIu64 " bytes",
                       n, d->offset);
        return finish_in_dfu_mode(d);
}

/* A device that does not tolerate manifestation may reset and vanish once it has the whole
 * image, and a DfuSe device leaves DFU mode on request: then a lost device is the end. */
static bool vanishing_expected(const struct dfu *d)
{
        if (d->dfuse)
                return d->leave;
        return !(d->func.attributes & GW_DFU_ATTR_MANIFEST_TOLERANT);
}

static bool is_lost(int status)
{
        return status == -ENODEV || status == -EPIPE || status == -EIO;
}

/* Sends ABORT to a device found in a transfer (or CLRSTATUS when in dfuERROR), bounded. */
static int recover(struct dfu *d, const struct gw_dfu_status *st)
{
        if (d->recoveries >= RECOVERIES_MAX)
                return fail(d, -EPROTO,
                            "the device does not return to dfuIDLE (still %s after %u "
                            "attempts)",
                            dev_state_name(st->state), d->recoveries);
        d->recoveries++;
        if (st->state == GW_DFU_ERROR) {
                gw_proto_debug(d->host, "dfu: device in dfuERROR (%s), clearing",
                               gw_dfu_status_to_string(st->status));
                return submit(d, DFU_STATE_CLEARING, REQ_OUT, DFU_CLRSTATUS, 0, NULL, 0);
        }
        gw_proto_debug(d->host, "dfu: device in %s, aborting", dev_state_name(st->state));
        return submit(d, DFU_STATE_ABORTING, REQ_OUT, DFU_ABORT, 0, NULL, 0);
}

static int reenumerate(struct dfu *d, const char *why)
{
        int r;

        gw_proto_debug(d->host, "dfu: %s, waiting up to %" PRIu64 " ms for the board to come back",
                       why, d->reenumerate_timeout_ms);
        set_state(d, DFU_STATE_REENUMERATE);
        r = d->host->reopen(d->host->ctx, d->reenumerate_timeout_ms);
        if (r < 0)
                return fail(d, r, "waiting for the board to re-enumerate failed: %s", strerror(-r));
        return GW_PROTO_CONTINUE;
}

static int reset_and_reenumerate(struct dfu *d, const char *why)
{
        int r = d->host->reset(d->host->ctx);

        if (r < 0 && r != -ENODEV)
                return fail(d, r, "resetting the device failed: %s", strerror(-r));
        return reenumerate(d, why);
}

static int on_start_status(struct dfu *d, const struct gw_dfu_status *st)
{
        switch (st->state) {
        case GW_DFU_IDLE:
                return d->uploading ? begin_upload(d) : begin_download(d);
        case GW_DFU_ERROR:
        case GW_DFU_DNLOAD_IDLE:
        case GW_DFU_UPLOAD_IDLE:
        case GW_DFU_DNLOAD_SYNC:
        case GW_DFU_MANIFEST_SYNC:
                return recover(d, st);
        case GW_DFU_DNBUSY:
        case GW_DFU_MANIFEST:
                return wait_poll(d, DFU_STATE_START_WAIT, st->poll_timeout_ms,
                                 dev_state_name(st->state));
        case GW_DFU_MANIFEST_WAIT_RESET:
                if (d->recoveries >= RECOVERIES_MAX)
                        return fail(d, -EPROTO, "the device keeps waiting for a reset");
                d->recoveries++;
                return reset_and_reenumerate(d, "device waits for a reset after manifestation");
        default:
                return fail(d, -EPROTO, "the device reports the run-time state %s in DFU mode",
                            dev_state_name(st->state));
        }
}

static int on_poll_status(struct dfu *d, const struct gw_dfu_status *st)
{
        if (st->status != GW_DFU_STATUS_OK)
                return fail_status(d, st, command_name(d->cmd));
        switch (st->state) {
        case GW_DFU_DNLOAD_IDLE:
                /* Done with it: the next request goes out now, without any wait. */
                return command_done(d);
        case GW_DFU_DNBUSY:
        case GW_DFU_DNLOAD_SYNC:
                return wait_poll(d, DFU_STATE_POLL_WAIT, st->poll_timeout_ms, "busy");
        default:
                return fail(d, -EPROTO, "the device left the download: %s after %s",
                            dev_state_name(st->state), command_name(d->cmd));
        }
}

/* Reads the next region back (an upload; upload_done() compares each block). */
static int verify_next_region(struct dfu *d)
{
        const struct gw_dfu_element *g = &d->regions[d->verify_region];

        d->address = g->address;
        d->offset = 0;
        d->block = 0;
        d->run_open = false;
        d->run_blocks = 0;
        d->up_reading = false;
        d->up_limit = g->size;
        gw_proto_debug(d->host, "dfu: verifying %" PRIu32 " bytes%s", g->size,
                       d->dfuse ? " (DfuSe)" : "");
        return next_upload(d);
}

/* Option verify: all written, before a DfuSe device leaves (so it never jumps into an image that
 * did not read back right) or, on DFU 1.1, once a manifestation-tolerant device is back in
 * dfuIDLE. check_download() made sure the device can upload what was written. */
static int begin_verify(struct dfu *d)
{
        d->verifying = true;
        d->uploading = true;
        d->verify_region = 0;
        return verify_next_region(d);
}

/* A region read back whole and equal: the next, or back to the install. */
static int verify_region_done(struct dfu *d)
{
        if (++d->verify_region < d->n_regions)
                return verify_next_region(d);
        gw_proto_debug(d->host, "dfu: verified %" PRIu64 " bytes in %zu region(s)", d->total,
                       d->n_regions);
        d->verifying = false;
        d->verified = true;
        d->uploading = false;
        d->offset = d->total;
        d->address = d->regions[0].address;
        if (d->dfuse)
                return next_step(d);
        return finish_in_dfu_mode(d);
}

/* The operation ended with the device in dfuIDLE. A board this operation detached from its
 * application is reset so that it runs one again (after an install, the new one), unless
 * option reset says otherwise. */
static int finish_in_dfu_mode(struct dfu *d)
{
        int r;

        if (d->reset_opt == 0 || (d->reset_opt < 0 && !d->have_runtime_ids))
                return succeed(d);
        r = d->host->reset(d->host->ctx);
        if (r < 0 && r != -ENODEV)
                return fail(d, r, "resetting the board to leave DFU mode failed: %s", strerror(-r));
        gw_proto_debug(d->host, "dfu: board reset to leave DFU mode");
        return succeed(d);
}

static int on_manifest_status(struct dfu *d, const struct gw_dfu_status *st)
{
        if (st->status != GW_DFU_STATUS_OK)
                return fail_status(d, st, "manifestation");
        switch (st->state) {
        case GW_DFU_IDLE:
                gw_proto_debug(d->host, "dfu: manifestation complete");
                if (d->verify && !d->verified)
                        return begin_verify(d);
                return finish_in_dfu_mode(d);
        case GW_DFU_MANIFEST_SYNC:
        case GW_DFU_MANIFEST:
        case GW_DFU_DNBUSY:
                return wait_poll(d, DFU_STATE_MANIFEST_WAIT, st->poll_timeout_ms, "manifesting");
        case GW_DFU_MANIFEST_WAIT_RESET: {
                int r = d->host->reset(d->host->ctx);

                if (r < 0 && r != -ENODEV)
                        return fail(d, r, "resetting the device after manifestation failed: %s",
                                    strerror(-r));
                gw_proto_debug(d->host, "dfu: manifestation complete, device reset");
                return succeed(d);
        }
        default:
                return fail(d, -EPROTO, "unexpected state %s during manifestation",
                            dev_state_name(st->state));
        }
}

/* Handles a completed transfer whose state expected one. */
static int handle_done(struct dfu *d, int status, const uint8_t *data, size_t len)
{
        struct gw_dfu_status st;
        enum dfu_state s = d->state;
        bool status_reply = s == DFU_STATE_START || s == DFU_STATE_POLL || s == DFU_STATE_STALLED ||
                            s == DFU_STATE_MANIFEST;

        if (status_reply && status >= 0) {
                if (gw_dfu_parse_status(data, (size_t) status < len ? (size_t) status : len, &st) <
                    0)
                        return fail(d, -EBADMSG, "malformed DFU_GETSTATUS reply (%d bytes)",
                                    status);
                gw_proto_debug(d->host, "dfu: status %s, state %s, poll %" PRIu32 " ms",
                               gw_dfu_status_to_string(st.status), dev_state_name(st.state),
                               st.poll_timeout_ms);
        }

        switch (s) {
        case DFU_STATE_DETACHING:
                if (status == -EPIPE)
                        return fail(d, -EPIPE, "the device refused DFU_DETACH");
                if (status < 0 && status != -ENODEV &&
                    !(status == -EIO && (d->func.attributes & GW_DFU_ATTR_WILL_DETACH)))
                        return fail(d, status, "DFU_DETACH failed: %s", strerror(-status));
                if (status == -ENODEV || (d->func.attributes & GW_DFU_ATTR_WILL_DETACH))
                        return reenumerate(d, "detached");
                return reset_and_reenumerate(d, "detach requested, device reset");

        case DFU_STATE_START:
                if (status < 0)
                        return fail(d, status, "DFU_GETSTATUS failed: %s", strerror(-status));
                return on_start_status(d, &st);

        case DFU_STATE_CLEARING:
                if (status < 0)
                        return fail(d, status, "DFU_CLRSTATUS failed: %s", strerror(-status));
                return get_status(d, DFU_STATE_START);

        case DFU_STATE_ABORTING:
                /* A device that stalls the ABORT is in dfuERROR now: the next GETSTATUS shows. */
                if (status < 0 && status != -EPIPE)
                        return fail(d, status, "DFU_ABORT failed: %s", strerror(-status));
                return get_status(d, DFU_STATE_START);

        case DFU_STATE_COMMAND:
                if (status == -EPIPE)
                        return get_status(d, DFU_STATE_STALLED);
                if (status < 0 && d->cmd == CMD_END && status == -ENODEV && vanishing_expected(d)) {
                        gw_proto_debug(d->host, "dfu: device gone after the final DNLOAD: done");
                        return succeed(d);
                }
                if (status < 0)
                        return fail(d, status, "%s failed: %s%s", command_name(d->cmd),
                                    strerror(-status),
                                    status == -ENODEV ? " (the device disconnected)" : "");
                if (status != d->cmd_len)
                        return fail(d, -EIO, "%s: the device took %d of %u bytes",
                                    command_name(d->cmd), status, d->cmd_len);
                return get_status(d, d->cmd == CMD_END ? DFU_STATE_MANIFEST : DFU_STATE_POLL);

        case DFU_STATE_POLL:
                if (status < 0)
                        return fail(d, status, "DFU_GETSTATUS after %s failed: %s%s",
                                    command_name(d->cmd), strerror(-status),
                                    status == -ENODEV ? " (the device disconnected)" : "");
                return on_poll_status(d, &st);

        case DFU_STATE_STALLED:
                if (status < 0)
                        return fail(d, -EPIPE, "the device stalled %s", command_name(d->cmd));
                if (st.status != GW_DFU_STATUS_OK)
                        return fail_status(d, &st, command_name(d->cmd));
                return fail(d, -EPIPE, "the device stalled %s (status OK, state %s)",
                            command_name(d->cmd), dev_state_name(st.state));

        case DFU_STATE_MANIFEST:
                if (status < 0 && is_lost(status) && vanishing_expected(d)) {
                        gw_proto_debug(d->host, "dfu: device gone during manifestation: done");
                        return succeed(d);
                }
                if (status < 0)
                        return fail(d, status, "DFU_GETSTATUS during manifestation failed: %s",
                                    strerror(-status));
                return on_manifest_status(d, &st);

        case DFU_STATE_UPLOAD:
                if (status == -EPIPE)
                        return get_status(d, DFU_STATE_STALLED);
                if (status < 0)
                        return fail(d, status, "UPLOAD failed after %" PRIu64 " bytes: %s%s",
                                    d->offset, strerror(-status),
                                    status == -ENODEV ? " (the device disconnected)" : "");
                return upload_done(d, status, data, len);

        case DFU_STATE_UPLOAD_ABORT:
                if (status < 0)
                        return fail(d, status, "DFU_ABORT before UPLOAD failed: %s",
                                    strerror(-status));
                if (d->run_open)
                        d->up_reading = true;
                return next_upload(d);

        case DFU_STATE_UPLOAD_END:
                if (status < 0)
                        return fail(d, status, "DFU_ABORT after the upload failed: %s",
                                    strerror(-status));
                gw_proto_debug(d->host, "dfu: uploaded %" PRIu64 " bytes, device back in dfuIDLE",
                               d->offset);
                if (d->verifying)
                        return verify_region_done(d);
                return finish_in_dfu_mode(d);

        case DFU_STATE_CANCELLING:
                return fail(d, -ECANCELED, "cancelled");

        default:
                gw_proto_debug(d->host, "dfu: transfer completion in state %s, ignoring",
                               dfu_state_to_string(s));
                return result(d);
        }
}

/* init() touches neither the link nor the timer: a bad option is only explained. */
static int bad_option(struct dfu *d, const char *key, const char *expected)
{
        gw_proto_debug(d->host, "dfu: option %s: expected %s", key, expected);
        if (d->host->set_error)
                d->host->set_error(d->host->ctx, "option %s: expected %s", key, expected);
        return -EINVAL;
}

static int dfu_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct dfu *d = priv;
        const char *alt, *format;

        d->host = host;
        d->fine_clock = host->version >= 3 && host->now_us && host->set_deadline_us;
        d->state = DFU_STATE_IDLE;
        alt = gw_options_get(opts, "alt");
        if (alt) {
                size_t n = strlen(alt);

                if (n == 0 || n > ALT_NAME_MAX)
                        return bad_option(d, "alt", "a number or a name of 1 to 255 bytes");
                if (gw_parse_u64(alt, &d->alt_number) == 0) {
                        if (d->alt_number > 255)
                                return bad_option(d, "alt", "a number from 0 to 255, or a name");
                        d->alt_is_number = true;
                } else
                        memcpy(d->alt_name, alt, n + 1);
        }
        if (gw_options_get_u64(opts, "poll-max-ms", DEFAULT_POLL_MAX_MS, 1, 600000,
                               &d->poll_max_ms) < 0)
                return bad_option(d, "poll-max-ms", "1 to 600000");
        if (gw_options_get_u64(opts, "timeout-ms", DEFAULT_TIMEOUT_MS, 1, 86400000,
                               &d->timeout_ms) < 0)
                return bad_option(d, "timeout-ms", "1 to 86400000");
        if (gw_options_get_u64(opts, "transfer-timeout-ms", DEFAULT_TRANSFER_TIMEOUT_MS, 1, 600000,
                               &d->transfer_timeout_ms) < 0)
                return bad_option(d, "transfer-timeout-ms", "1 to 600000");
        if (gw_options_get_u64(opts, "reenumerate-timeout-ms", DEFAULT_REENUMERATE_TIMEOUT, 1,
                               600000, &d->reenumerate_timeout_ms) < 0)
                return bad_option(d, "reenumerate-timeout-ms", "1 to 600000");
        if (gw_options_get_u64(opts, "transfer-size", 0, 1, GW_DFU_TRANSFER_MAX,
                               &d->transfer_size_opt) < 0)
                return bad_option(d, "transfer-size", "1 to 4096");
        if (gw_options_get(opts, "address")) {
                if (gw_options_get_u64(opts, "address", 0, 0, UINT32_MAX, &d->address_opt) < 0)
                        return bad_option(d, "address", "a 32-bit address");
                d->have_address = true;
        }
        if (gw_options_get_bool(opts, "leave", true, &d->leave) < 0)
                return bad_option(d, "leave", "true or false");
        d->reset_opt = -1;
        if (gw_options_get(opts, "reset")) {
                bool reset;

                if (gw_options_get_bool(opts, "reset", false, &reset) < 0)
                        return bad_option(d, "reset", "true or false");
                d->reset_opt = reset;
        }
        if (gw_options_get_bool(opts, "verify", false, &d->verify) < 0)
                return bad_option(d, "verify", "true or false");
        if (gw_options_get_bool(opts, "mass-erase", false, &d->mass_erase) < 0)
                return bad_option(d, "mass-erase", "true or false");
        format = gw_options_get(opts, "format");
        if (!format || strcmp(format, "auto") == 0)
                d->format = GW_DFU_FORMAT_AUTO;
        else if (strcmp(format, "raw") == 0)
                d->format = GW_DFU_FORMAT_RAW;
        else if (strcmp(format, "dfu") == 0)
                d->format = GW_DFU_FORMAT_DFU;
        else
                return bad_option(d, "format", "auto, raw or dfu");
        return 0;
}

static void dfu_done(void *priv)
{
        struct dfu *d = priv;

        /* The block buffer lives in priv, reader and writer are the core's. */
        gw_dfu_file_done(&d->file);
}

static bool have_control_link(const struct dfu *d)
{
        return d->host->control && d->host->usb_info && d->host->select_alt && d->host->reset &&
               d->host->reopen;
}

/* Claims the device and starts the operation: DFU_DETACH in run-time mode, else GETSTATUS
 * and the start-up recovery. */
static int start_operation(struct dfu *d)
{
        int r;

        d->recoveries = 0;
        d->cancel_requested = false;
        d->have_runtime_ids = false;
        d->op_deadline = now(d) + d->timeout_ms * 1000u;
        r = setup_device(d, true);
        if (r < 0)
                return r;
        if (d->runtime) {
                uint16_t t =
                    d->func.detach_timeout_ms ? d->func.detach_timeout_ms : DEFAULT_DETACH_MS;

                return submit(d, DFU_STATE_DETACHING, REQ_OUT, DFU_DETACH, t, NULL, 0);
        }
        return get_status(d, DFU_STATE_START);
}

/* Reads what the image file holds before anything reaches the device: a suffix is checked
 * and not sent, a DfuSe container must be for one alternate setting, which is then the one
 * used unless option alt names another (refused once the device is seen). */
static int open_file(struct dfu *d)
{
        char why[200] = "";
        int r;

        gw_dfu_file_done(&d->file);
        if (d->reader->size == 0)
                return fail(d, -EINVAL, "the image is empty");
        if (d->reader->size > UINT32_MAX)
                return fail(d, -EFBIG, "the image (%" PRIu64 " bytes) is 4 GiB or more",
                            d->reader->size);
        r = gw_dfu_file_parse(d->reader, d->format, &d->file, why, sizeof(why));
        if (r < 0)
                return fail(d, r, "%s", why[0] ? why : strerror(-r));
        if (d->file.has_suffix)
                gw_proto_debug(
                    d->host,
                    "dfu: DFU suffix: ids %04x:%04x, bcdDevice %04x, bcdDFU %04x, %u bytes; "
                    "%" PRIu64 " bytes before it",
                    d->file.suffix.vid, d->file.suffix.pid, d->file.suffix.bcd_device,
                    d->file.suffix.bcd_dfu, d->file.suffix.length, d->file.payload_size);
        if (!d->file.dfuse) {
                if (d->file.payload_size == 0)
                        return fail(d, -EINVAL, "the image is empty (a DFU suffix only)");
                return 0;
        }
        if (d->file.n_elements == 0)
                return fail(d, -EINVAL, "the DfuSe file holds no data");
        if (d->have_address)
                return fail(d, -EINVAL,
                            "option address does not apply to a DfuSe file: its elements "
                            "carry their own addresses");
        if (d->file.elements[d->file.n_elements - 1].alt != d->file.elements[0].alt)
                return fail(d, -EOPNOTSUPP,
                            "the DfuSe file holds images for alternate settings %u and %u; one "
                            "install writes one: split it",
                            d->file.elements[0].alt, d->file.elements[d->file.n_elements - 1].alt);
        gw_proto_debug(d->host, "dfu: DfuSe file: %zu element(s), %" PRIu64 " bytes, for alt %u",
                       d->file.n_elements, d->file.elements_size, d->file.elements[0].alt);
        if (!d->alt_is_number && !d->alt_name[0]) {
                d->alt_is_number = true;
                d->alt_number = d->file.elements[0].alt;
        }
        return 0;
}

static int dfu_install(void *priv, const struct gw_reader *reader)
{
        struct dfu *d = priv;
        int r;

        if (d->state != DFU_STATE_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        if (!have_control_link(d))
                return fail(d, -EPROTO, "the dfu protocol needs a USB control link");
        d->reader = reader;
        d->uploading = false;
        r = open_file(d);
        if (r < 0)
                return r;
        return start_operation(d);
}

/* Reads the device's memory back into w: DFU 1.1 until a short block or w->max bytes, DfuSe
 * exactly w->max bytes from option address. */
static int dfu_upload(void *priv, const struct gw_writer *w)
{
        struct dfu *d = priv;

        if (d->state != DFU_STATE_IDLE)
                return -EBUSY;
        if (!w || !w->pwrite)
                return -EINVAL;
        if (!have_control_link(d))
                return fail(d, -EPROTO, "the dfu protocol needs a USB control link");
        d->writer = w;
        d->uploading = true;
        return start_operation(d);
}

/* "0483:df11" into its ids. */
static bool parse_usb_id(const char *s, uint16_t *ret_vid, uint16_t *ret_pid)
{
        unsigned v, p;
        int n = 0;

        if (!s || sscanf(s, "%4x:%4x%n", &v, &p, &n) != 2 || s[n] != '\0')
                return false;
        *ret_vid = (uint16_t) v;
        *ret_pid = (uint16_t) p;
        return true;
}

/* The image before any node is written: the file itself, then, when identify() found the board
 * in DFU mode, its ids, its DFU version and (DfuSe, the alt setting the install will use) its
 * layout, as install() will check them. A board in run-time mode shows its DFU-mode ids and
 * layout only once detached: install() checks those. */
static int dfu_check_image(void *priv, const struct gw_reader *reader,
                           const struct gw_options *facts)
{
        struct dfu *d = priv;
        const char *mode, *version, *layout, *alt;
        uint16_t vid = 0, pid = 0;
        uint64_t alt_no = 0;
        unsigned major = 0, minor = 0;
        /* Option alt, before open_file() lets a DfuSe file's alt stand in for it. */
        bool alt_given = d->alt_is_number || d->alt_name[0];
        int r;

        if (d->state != DFU_STATE_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        d->reader = reader;
        r = open_file(d);
        if (r < 0 || !facts)
                return r;
        mode = gw_options_get(facts, "mode");
        version = gw_options_get(facts, "dfu-version");
        if (!mode || strcmp(mode, "dfu") != 0 ||
            !parse_usb_id(gw_options_get(facts, "usb-id"), &vid, &pid) || !version ||
            sscanf(version, "%x.%x", &major, &minor) != 2 || major > 0xff || minor > 0xff)
                return 0;
        r = check_ids(d, vid, pid);
        if (r < 0)
                return r;
        d->func.bcd_dfu = (uint16_t) (major << 8 | minor);
        d->dfuse = d->func.bcd_dfu == GW_DFU_BCD_DFUSE;
        if (!d->dfuse)
                return plan_download(d);
        layout = gw_options_get(facts, "layout");
        alt = gw_options_get(facts, "alt");
        if (!layout || !alt || gw_parse_u64(alt, &alt_no) < 0 || alt_no > 255 ||
            gw_dfuse_parse_layout(layout, &d->layout) < 0)
                return 0;
        /* identify() described the alt the options choose. Without option alt, a container
         * picks its own, which identify() may not have described: install() checks it. */
        if (d->file.dfuse && d->file.elements[0].alt != alt_no && !alt_given)
                return 0;
        d->alt = (uint8_t) alt_no;
        return plan_download(d);
}

static int dfu_control_done(void *priv, int status, const uint8_t *data, size_t len)
{
        struct dfu *d = priv;

        if (d->state == DFU_STATE_DONE || d->state == DFU_STATE_FAILED)
                return result(d);
        if (d->cancel_requested && d->state != DFU_STATE_CANCELLING) {
                if (d->state != DFU_STATE_COMMAND && d->state != DFU_STATE_POLL &&
                    d->state != DFU_STATE_UPLOAD)
                        return fail(d, -ECANCELED, "cancelled");
                /* Mid-transfer: leave the device in dfuIDLE rather than dfuDNLOAD_IDLE or
                 * dfuUPLOAD_IDLE. */
                return submit(d, DFU_STATE_CANCELLING, REQ_OUT, DFU_ABORT, 0, NULL, 0) < 0
                           ? fail(d, -ECANCELED, "cancelled")
                           : GW_PROTO_CONTINUE;
        }
        return handle_done(d, status, data, len);
}

static int dfu_reopened(void *priv, int status)
{
        struct dfu *d = priv;
        int r;

        if (d->state != DFU_STATE_REENUMERATE)
                return result(d);
        if (status < 0)
                return fail(d, status == -ETIMEDOUT ? -ETIMEDOUT : status,
                            "the board did not come back in DFU mode within %" PRIu64 " ms",
                            d->reenumerate_timeout_ms);
        if (d->cancel_requested)
                return fail(d, -ECANCELED, "cancelled");
        r = setup_device(d, true);
        if (r < 0)
                return r;
        if (d->runtime)
                return fail(d, -EPROTO,
                            "the board came back still in run-time mode after "
                            "DFU_DETACH");
        return get_status(d, DFU_STATE_START);
}

static int dfu_timeout(void *priv)
{
        struct dfu *d = priv;

        if (d->deadline == 0 || now(d) < d->deadline)
                return result(d); /* stale or early: the armed deadline stands */
        disarm(d);
        switch (d->state) {
        case DFU_STATE_START_WAIT:
                return get_status(d, DFU_STATE_START);
        case DFU_STATE_POLL_WAIT:
                return get_status(d, DFU_STATE_POLL);
        case DFU_STATE_MANIFEST_WAIT:
                return get_status(d, DFU_STATE_MANIFEST);
        default:
                return result(d);
        }
}

static int dfu_cancel(void *priv)
{
        struct dfu *d = priv;

        switch (d->state) {
        case DFU_STATE_IDLE:
        case DFU_STATE_DONE:
        case DFU_STATE_FAILED:
                disarm(d);
                return -ECANCELED;
        case DFU_STATE_REENUMERATE:
        case DFU_STATE_START_WAIT:
        case DFU_STATE_MANIFEST_WAIT:
                return fail(d, -ECANCELED, "cancelled");
        case DFU_STATE_POLL_WAIT:
                /* Nothing in flight: abort the download now. */
                d->cancel_requested = true;
                disarm(d);
                if (submit(d, DFU_STATE_CANCELLING, REQ_OUT, DFU_ABORT, 0, NULL, 0) < 0)
                        return fail(d, -ECANCELED, "cancelled");
                return GW_PROTO_CONTINUE;
        default:
                /* A transfer is in flight: act on its completion. */
                d->cancel_requested = true;
                return GW_PROTO_CONTINUE;
        }
}

/* Adds key with a printf-formatted value. 0 or -ENOMEM. */
static int add_option(struct gw_options *ret, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int add_option(struct gw_options *ret, const char *key, const char *fmt, ...)
{
        char *value = NULL;
        va_list ap;
        int n, r;

        va_start(ap, fmt);
        n = vasprintf(&value, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -ENOMEM;
        r = gw_options_set(ret, key, value) < 0 ? -ENOMEM : 0;
        free(value);
        return r;
}

/* What the device tells without a transfer: its ids, mode, DFU version and transfer size,
 * and for DfuSe the layout. Never touches the link. */
static int dfu_identify(void *priv, struct gw_options *ret)
{
        struct dfu *d = priv;
        const struct gw_usb_device_info *info;
        int r;

        if (d->state != DFU_STATE_IDLE)
                return -EBUSY;
        if (!ret)
                return -EINVAL;
        r = setup_device(d, false);
        if (r < 0)
                return r;
        info = d->host->usb_info(d->host->ctx);
        r = add_option(ret, "usb-id", "%04x:%04x", info->vid, info->pid);
        if (r >= 0 && info->serial)
                r = add_option(ret, "serial", "%s", info->serial);
        if (r >= 0)
                r = add_option(ret, "mode", "%s", d->runtime ? "runtime" : "dfu");
        if (r >= 0)
                r = add_option(ret, "dfu-version", "%x.%02x", d->func.bcd_dfu >> 8,
                               d->func.bcd_dfu & 0xff);
        if (r >= 0)
                r = add_option(ret, "transfer-size", "%u", d->xfer);
        if (r >= 0)
                r = add_option(ret, "alt", "%u", d->alt);
        if (r >= 0 && d->dfuse) {
                for (size_t i = 0; i < info->n_alts; i++)
                        if (info->alts[i].interface == d->interface &&
                            info->alts[i].alt == d->alt && info->alts[i].name) {
                                r = add_option(ret, "layout", "%s", info->alts[i].name);
                                break;
                        }
        }
        if (r < 0)
                return fail(d, r, "out of memory");
        return succeed(d);
}

/* The functional descriptor of alt, for listings: nothing when alt is no DFU interface or has
 * no readable descriptor. */
static int dfu_describe(const struct gw_usb_device_info *dev, const struct gw_usb_alt *alt,
                        struct gw_options *ret)
{
        struct gw_dfu_functional fd;
        int r;

        if (!dev || !alt || !ret || alt->class_code != CLASS_APP_SPECIFIC ||
            alt->subclass != SUBCLASS_DFU || find_functional(dev, alt, &fd) < 0)
                return 0;
        r = add_option(ret, "variant", "%s", fd.bcd_dfu == GW_DFU_BCD_DFUSE ? "dfuse" : "dfu");
        if (r >= 0)
                r = add_option(ret, "bcd-dfu", "0x%04x", fd.bcd_dfu);
        if (r >= 0)
                r = add_option(ret, "transfer-size", "%u", fd.transfer_size);
        if (r >= 0)
                r = add_option(ret, "detach-timeout-ms", "%u", fd.detach_timeout_ms);
        if (r >= 0)
                r = add_option(ret, "attributes", "0x%02x", fd.attributes);
        return r;
}

static const char *const dfu_options[] = {"alt",
                                          "address",
                                          "leave",
                                          "format",
                                          "reset",
                                          "verify",
                                          "mass-erase",
                                          "transfer-size",
                                          "poll-max-ms",
                                          "timeout-ms",
                                          "transfer-timeout-ms",
                                          "reenumerate-timeout-ms",
                                          NULL};

const struct gw_protocol_ops gw_protocol_dfu_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "dfu",
    .shape = GW_LINK_CONTROL,
    .priv_size = sizeof(struct dfu),
    .init = dfu_init,
    .done = dfu_done,
    .install = dfu_install,
    .input = NULL,
    .timeout = dfu_timeout,
    .cancel = dfu_cancel,
    .identify = dfu_identify,
    .hangup = NULL,
    .control_done = dfu_control_done,
    .reopened = dfu_reopened,
    .upload = dfu_upload,
    .options = dfu_options,
    .check_image = dfu_check_image,
    .describe = dfu_describe,
};
