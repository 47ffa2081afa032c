/* Fuzz target for the dfu protocol (protocols/dfu/): the bytes choose the device's
 * descriptors (a functional descriptor and a DfuSe layout string, valid or raw fuzz bytes),
 * the operation (install, or upload when bit 7 of the size's high byte is set, the size then
 * being w->max), and then script the device's side: raw GETSTATUS and UPLOAD replies,
 * completions, stalls, disconnections, timer expiries, re-enumeration and cancel, on a virtual
 * clock. The host checks that at most one transfer is in flight, none exceeds 4096 bytes,
 * every data block carries the image at the acknowledged offset, an upload asks for no more
 * than is left of its size and writes exactly what the device sent, in order, something (a
 * transfer, the timer or a reopen) is always pending while the operation continues, success
 * comes only after the whole image was acknowledged (or the upload's size arrived, or a short
 * block ended it), and the operation ends within a bounded number of steps once the device
 * falls silent.
 * Bit 6 of the size's high byte (the size is its low 14 bits and the low byte) wraps an install's
 * image into a file: the byte after the layout chooses a DfuSe container of 1-3 elements (at
 * addresses that the next bytes place after the first writable address of the device's
 * layout, in address order or not, maybe with an empty one) or a plain image with a DFU
 * suffix, and the ids the suffix names (the device's, wildcards, or others: then it must
 * fail). There, and for a plain image, the host also checks that every data block carries the
 * bytes of the region being written at its offset (and, DfuSe, lands at the address pointer
 * plus (wValue - 2) * transfer size, the region's address there), that no DfuSe data goes out
 * before a SET_ADDRESS, that no page is erased twice, that the final DNLOAD comes only after
 * every region was acknowledged (and, DfuSe, with the pointer at the lowest region), so that
 * the suffix is never sent and success means every byte of every element went out. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "../../protocols/dfu/dfu-desc.h"
#include "../../protocols/dfu/dfu-file.h"
#include "fuzz.h"

#define IMAGE_MAX  (20 * 1024)
#define EXTRA_MAX  64
#define LAYOUT_MAX 160

enum { SETUP_MODES, SETUP_SIZE_LO, SETUP_SIZE_HI, SETUP_LEN };
#define SIZE_HI_UPLOAD 0x80
#define SIZE_HI_WRAP   0x40

/* The wrap byte. */
#define WRAP_CONTAINER 0x01
#define WRAP_IDS_SHIFT 1    /* 2 bits: 0483:df11, any:any, any:df11, 0483:df12 (wrong) */
#define WRAP_N_SHIFT   3    /* 2 bits: 1, 2, 3, 3 elements */
#define WRAP_ALT1      0x20 /* the container's target is for alt 1 */
/* container: elements in the file in reverse address order; plain: bcdDFU 0x011a */
#define WRAP_REVERSE 0x40
#define WRAP_EMPTY   0x80 /* container: an empty element first */
#define WRAP_ARGS    6    /* the wrap byte, two split points, three gaps */

#define REGIONS_MAX 3
#define ERASED_MAX  256
#define FILE_MAX    (11 + 274 + (REGIONS_MAX + 1) * 8 + IMAGE_MAX + GW_DFU_SUFFIX_LEN)

/* What the install must write: bytes of the file, at a DfuSe address. */
struct region {
        uint32_t address;
        uint64_t offset;
        uint32_t size;
};

struct host {
        struct gw_proto_host h;
        uint64_t now, deadline;
        bool in_flight, reopening;
        struct gw_control_setup setup;
        uint8_t out[4096];
        struct gw_usb_alt alts[2];
        struct gw_usb_device_info info;
        const uint8_t *image;
        uint64_t size; /* the bytes to write: the regions' sizes, or the upload's max */
        /* An install: the file the reader reads, the regions it must write in this order. */
        const uint8_t *file;
        size_t file_size;
        struct region reg[REGIONS_MAX];
        size_t n_reg;
        bool must_fail; /* the wrapped file is not for this device */
        /* The device as the host sees it: DfuSe, its transfer size, where the address pointer
         * is (known only after a SET_ADDRESS), the pages erased. */
        bool dfuse, know_xfer;
        uint16_t xfer;
        bool pointer_valid;
        uint32_t pointer;
        uint32_t erased[ERASED_MAX];
        size_t n_erased;
        uint64_t progress_done;
        bool error_set;
        /* Upload: size is w->max; what the UPLOAD completing now delivers. */
        bool upload, up_short;
        uint64_t written;
        const uint8_t *reply;
        size_t reply_len;
};

static uint8_t image[IMAGE_MAX];
static uint8_t file_buf[FILE_MAX];
static const struct gw_protocol_ops *ops;

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        const char *v = getenv("GW_FUZZ_VERBOSE");
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
        if (v && strcmp(v, "2") == 0) /* and with 2, what the protocol logs */
                fprintf(stderr, "  %s\n", buf);
}

static uint64_t host_now_ms(void *ctx)
{
        struct host *h = ctx;

        return h->now;
}

static void host_set_deadline(void *ctx, uint64_t at_ms)
{
        struct host *h = ctx;

        h->deadline = at_ms;
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct host *h = ctx;

        if (h->upload)
                fuzz_check(total == h->size && done == h->written);
        else
                fuzz_check(total == h->size && done <= total && done >= h->progress_done);
        h->progress_done = done;
}

__attribute__((format(printf, 2, 3))) static void host_set_error(void *ctx, const char *fmt, ...)
{
        struct host *h = ctx;
        char buf[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        h->error_set = true;
}

static const struct gw_usb_device_info *host_usb_info(void *ctx)
{
        struct host *h = ctx;

        return h->reopening ? NULL : &h->info;
}

static int host_select_alt(void *ctx, uint8_t interface, uint8_t alt)
{
        struct host *h = ctx;

        return h->reopening ? -ENODEV : 0;
}

/* DfuSe ERASE and SET_ADDRESS: the pointer, pages erased once each. */
static void check_dfuse_command(struct host *h, const struct gw_control_setup *setup)
{
        uint32_t addr = (uint32_t) h->out[1] | (uint32_t) h->out[2] << 8 |
                        (uint32_t) h->out[3] << 16 | (uint32_t) h->out[4] << 24;

        fuzz_check(setup->length == 5 && (h->out[0] == 0x21 || h->out[0] == 0x41));
        if (h->out[0] == 0x21) {
                h->pointer = addr;
                h->pointer_valid = true;
                return;
        }
        /* Erases come before any data, each page once. */
        fuzz_check(h->progress_done == 0);
        h->pointer_valid = false;
        for (size_t k = 0; k < h->n_erased; k++)
                fuzz_check(h->erased[k] != addr);
        if (h->n_erased < ERASED_MAX)
                h->erased[h->n_erased++] = addr;
}

/* A DNLOAD of an install: a DfuSe command, a data block carrying the region being written
 * right after what the device acknowledged of it, or the final empty one after all. */
static void check_dnload(struct host *h, const struct gw_control_setup *setup)
{
        uint64_t start = 0, off;
        size_t k = 0;

        if (h->dfuse && setup->value == 0 && setup->length > 0) {
                check_dfuse_command(h, setup);
                return;
        }
        if (setup->length == 0) {
                fuzz_check(h->progress_done == h->size);
                /* DfuSe leaves to the pointer: the image's lowest address. */
                if (h->dfuse && h->n_reg > 0)
                        fuzz_check(h->pointer_valid && h->pointer == h->reg[0].address);
                return;
        }
        fuzz_check(!h->dfuse || setup->value >= 2);
        while (k < h->n_reg && h->progress_done >= start + h->reg[k].size)
                start += h->reg[k++].size;
        fuzz_check(k < h->n_reg);
        off = h->progress_done - start;
        fuzz_check(setup->length <= h->reg[k].size - off);
        fuzz_check(memcmp(h->out, h->file + h->reg[k].offset + off, setup->length) == 0);
        if (h->dfuse) {
                fuzz_check(h->pointer_valid);
                if (h->know_xfer)
                        fuzz_check((uint64_t) h->pointer +
                                       (uint64_t) (setup->value - 2) * h->xfer ==
                                   (uint64_t) h->reg[k].address + off);
        }
}

static int host_control(void *ctx, const struct gw_control_setup *setup, const void *data,
                        unsigned timeout_ms)
{
        struct host *h = ctx;

        fuzz_check(!h->in_flight && !h->reopening);
        fuzz_check(setup->length <= 4096);
        fuzz_check(setup->request_type == 0x21 || setup->request_type == 0xa1);
        /* An upload reads, never writes: DNLOAD only for DfuSe's SET_ADDRESS. */
        if (h->upload && setup->request == 1)
                fuzz_check(setup->length == 5 && setup->value == 0 && data &&
                           ((const uint8_t *) data)[0] == 0x21);
        if (setup->request == 2)
                fuzz_check(h->upload && setup->request_type == 0xa1 && setup->length > 0 &&
                           (h->size == 0 || setup->length <= h->size - h->written));
        h->setup = *setup;
        if (setup->request_type == 0x21 && setup->length > 0) {
                fuzz_check(data != NULL);
                memcpy(h->out, data, setup->length);
        }
        if (setup->request == 1 && !h->upload)
                check_dnload(h, setup);
        h->in_flight = true;
        return 0;
}

/* The upload writes what the device sent, right after what it wrote before, within w->max. */
static ssize_t writer_pwrite(void *ctx, const void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        fuzz_check(h->upload && n >= 1 && off == h->written && n <= h->reply_len);
        fuzz_check(h->size == 0 || n <= h->size - off);
        fuzz_check(memcmp(buf, h->reply, n) == 0);
        h->written += n;
        return (ssize_t) n;
}

/* The protocol reads only inside the image. */
static ssize_t reader_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct host *h = ctx;

        fuzz_check(n >= 1 && off < h->file_size && n <= h->file_size - off);
        memcpy(buf, h->file + off, n);
        return (ssize_t) n;
}

static int host_reset(void *ctx)
{
        return 0;
}

static int host_reopen(void *ctx, uint64_t timeout_ms)
{
        struct host *h = ctx;

        fuzz_check(!h->in_flight);
        h->reopening = true;
        h->pointer_valid = false; /* a device that comes back starts afresh */
        return 0;
}

/* Checks what an op returned; true when the operation ended. */
static bool check_result(struct host *h, int r)
{
        if (r == GW_PROTO_CONTINUE) {
                fuzz_check(h->in_flight || h->reopening || h->deadline > 0);
                return false;
        }
        fuzz_check(h->deadline == 0);
        if (r == GW_PROTO_DONE) {
                if (h->upload)
                        fuzz_check((h->size > 0 && h->written == h->size) || h->up_short);
                else
                        fuzz_check(h->progress_done == h->size && h->size > 0 && !h->must_fail);
                return true;
        }
        fuzz_check(r < 0 && h->error_set);
        return true;
}

static int complete(struct host *h, void *priv, int status, const uint8_t *data, size_t len)
{
        h->in_flight = false;
        if (h->setup.request == 2) {
                h->reply = data;
                h->reply_len = data ? len : 0;
                h->up_short = status >= 0 && status < h->setup.length;
        }
        return ops->control_done(priv, status, data, len);
}

static void set_descriptors(struct host *h, uint8_t modes, const uint8_t *extra, size_t extra_len,
                            const char *layout, uint8_t *valid_extra)
{
        static const char *const layouts[] = {
            "@Internal Flash  /0x08000000/8*1Ka,8*1Kg,4*2Kg",
            "@SRAM /0x20000000/16*1Ke",
        };
        uint16_t xfer = (uint16_t[]){64, 1024, 4096, 8192}[(modes >> 3) & 3];
        bool dfuse = modes & 1;

        if (!extra) {
                valid_extra[0] = 9;
                valid_extra[1] = 0x21;
                valid_extra[2] = (uint8_t) (0x03 | (modes & 4) | (modes & 0x20 ? 0x08 : 0));
                valid_extra[3] = 0xe8;
                valid_extra[4] = 0x03;
                valid_extra[5] = (uint8_t) xfer;
                valid_extra[6] = (uint8_t) (xfer >> 8);
                valid_extra[7] = dfuse ? 0x1a : 0x10;
                valid_extra[8] = 0x01;
                extra = valid_extra;
                extra_len = 9;
        }
        h->alts[0] = (struct gw_usb_alt){
            .interface = 0,
            .alt = 0,
            .class_code = 0xfe,
            .subclass = 1,
            .protocol = modes & 2 ? 1 : 2,
            .name = layout ? layout : layouts[(modes >> 6) & 1],
            .extra = extra,
            .extra_len = extra_len,
        };
        h->alts[1] = h->alts[0];
        h->alts[1].alt = 1;
        h->alts[1].extra = NULL;
        h->alts[1].extra_len = 0;
        h->info = (struct gw_usb_device_info){
            .vid = 0x0483, .pid = 0xdf11, .serial = "S", .alts = h->alts, .n_alts = 2};
}

static void put16(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
        put16(p, (uint16_t) v);
        put16(p + 2, (uint16_t) (v >> 16));
}

/* Ends the file at *pos with a DFU suffix naming these ids, its CRC right. */
static void add_suffix(uint8_t *f, size_t *pos, const uint16_t ids[2], uint16_t bcd_dfu)
{
        uint8_t *s = f + *pos;

        put16(s, 0xffff);
        put16(s + 2, ids[1]);
        put16(s + 4, ids[0]);
        put16(s + 6, bcd_dfu);
        memcpy(s + 8, "UFD", 3);
        s[11] = GW_DFU_SUFFIX_LEN;
        *pos += GW_DFU_SUFFIX_LEN;
        put32(f + *pos - 4, (uint32_t) ~crc32(crc32(0L, Z_NULL, 0), f, (uInt) (*pos - 4)));
}

/* Wraps the image's first h->size bytes into file_buf as the wrap bytes a[] say (see the top),
 * the regions in address order starting at base; sets what the install must write. */
static void wrap_image(struct host *h, const uint8_t a[WRAP_ARGS], uint32_t base)
{
        static const uint16_t ids[4][2] = {
            {0x0483, 0xdf11}, {0xffff, 0xffff}, {0xffff, 0xdf11}, {0x0483, 0xdf12}};
        const uint16_t *id = ids[(a[0] >> WRAP_IDS_SHIFT) & 3];
        uint32_t sizes[REGIONS_MAX], lo, hi;
        uint64_t cursor = base, src = 0;
        size_t n = 1 + ((a[0] >> WRAP_N_SHIFT) & 3), pos = 0, nb = 0;
        uint8_t *f = file_buf;

        h->file = f;
        h->must_fail = (a[0] >> WRAP_IDS_SHIFT & 3) == 3;
        if (!(a[0] & WRAP_CONTAINER)) {
                memcpy(f, image, h->size);
                pos = h->size;
                add_suffix(f, &pos, id, a[0] & WRAP_REVERSE ? 0x011a : 0x0100);
                h->file_size = pos;
                h->reg[0] =
                    (struct region){.address = base, .offset = 0, .size = (uint32_t) h->size};
                h->n_reg = 1;
                return;
        }
        if (n > REGIONS_MAX)
                n = REGIONS_MAX;
        lo = (uint32_t) (a[1] * h->size / 255);
        hi = (uint32_t) (a[2] * h->size / 255);
        if (lo > hi) {
                uint32_t t = lo;

                lo = hi;
                hi = t;
        }
        if (n == 1) {
                sizes[0] = (uint32_t) h->size;
        } else if (n == 2) {
                sizes[0] = lo;
                sizes[1] = (uint32_t) h->size - lo;
        } else {
                sizes[0] = lo;
                sizes[1] = hi - lo;
                sizes[2] = (uint32_t) h->size - hi;
        }
        /* The regions, in address order, each a gap of a[3 + k] * 256 bytes after the last. */
        h->n_reg = 0;
        for (size_t k = 0; k < n; k++) {
                uint64_t addr = cursor + a[3 + k] * 256u;

                cursor = addr + sizes[k];
                if (cursor > UINT32_MAX)
                        h->must_fail = true; /* past 4 GiB: the file is refused */
                if (sizes[k] == 0)
                        continue;
                h->reg[h->n_reg++] =
                    (struct region){.address = (uint32_t) addr, .offset = src, .size = sizes[k]};
                src += sizes[k];
        }
        /* Prefix, one target, its elements (in the file maybe reversed), the suffix. */
        memcpy(f, "DfuSe", 5);
        f[5] = 1;
        f[10] = 1;
        pos = 11;
        memset(f + pos, 0, 274);
        memcpy(f + pos, "Target", 6);
        f[pos + 6] = a[0] & WRAP_ALT1 ? 1 : 0;
        pos += 274;
        if (a[0] & WRAP_EMPTY) {
                memset(f + pos, 0, 8);
                pos += 8;
                nb++;
        }
        for (size_t j = 0; j < h->n_reg; j++) {
                struct region *r = &h->reg[a[0] & WRAP_REVERSE ? h->n_reg - 1 - j : j];
                uint64_t from = r->offset;

                put32(f + pos, r->address);
                put32(f + pos + 4, r->size);
                pos += 8;
                memcpy(f + pos, image + from, r->size);
                r->offset = pos;
                pos += r->size;
                nb++;
        }
        put32(f + 11 + 266, (uint32_t) (pos - 11 - 274));
        put32(f + 11 + 270, (uint32_t) nb);
        put32(f + 6, (uint32_t) (pos + GW_DFU_SUFFIX_LEN));
        add_suffix(f, &pos, id, 0x011a);
        h->file_size = pos;
        if (h->n_reg == 0 || !h->dfuse)
                h->must_fail = true;
}

/* GW_FUZZ_VERBOSE=1 tells how each input ended: a check that the seeds reach their paths
 * (=2: with the protocol's log). */
static void report(int r, const char *how)
{
        if (getenv("GW_FUZZ_VERBOSE"))
                fprintf(stderr, "  ended %s: %d\n", how, r);
}

static void run(struct host *h, void *priv, const uint8_t *data, size_t size)
{
        size_t i = 0;
        int r = GW_PROTO_CONTINUE;

        while (i < size) {
                uint8_t b = data[i++];
                unsigned arg = b >> 3;

                switch (b & 7) {
                case 0: /* a raw GETSTATUS reply (or any IN data) from the next bytes */
                case 1: {
                        size_t n = arg % 8;

                        if (!h->in_flight)
                                continue;
                        if (n > size - i)
                                n = size - i;
                        r = complete(h, priv, (int) n, data + i, n);
                        i += n;
                        break;
                }
                case 2: { /* the expected completion: all bytes, or a status with state arg */
                        uint8_t st[6] = {0, (uint8_t) (arg & 3), 0, 0, (uint8_t) (arg % 11), 0};

                        if (!h->in_flight)
                                continue;
                        if (h->setup.request == 2) /* the device's memory, a full block */
                                r = complete(h, priv, h->setup.length, image + h->written % 4096,
                                             h->setup.length);
                        else if (h->setup.request_type == 0xa1)
                                r = complete(h, priv, 6, st, 6);
                        else
                                r = complete(h, priv, h->setup.length, NULL, 0);
                        break;
                }
                case 3: {
                        static const int errs[] = {-EPIPE, -ENODEV, -ETIMEDOUT, -EIO};

                        if (!h->in_flight)
                                continue;
                        r = complete(h, priv, errs[arg & 3], NULL, 0);
                        break;
                }
                case 4: /* the clock moves; the timer fires when due */
                        h->now += (uint64_t) arg * 100;
                        if (h->deadline == 0 || h->now < h->deadline) {
                                r = ops->timeout(priv); /* early: must change nothing */
                                fuzz_check(r == GW_PROTO_CONTINUE);
                                continue;
                        }
                        h->deadline = 0;
                        r = ops->timeout(priv);
                        break;
                case 5:
                        if (arg != 0)
                                continue;
                        r = ops->cancel(priv);
                        break;
                case 6:
                        if (!h->reopening)
                                continue;
                        h->reopening = false;
                        if (arg & 1) /* back in DFU mode */
                                h->alts[0].protocol = h->alts[1].protocol = 2;
                        r = ops->reopened(priv, arg & 2 ? -ETIMEDOUT : 0);
                        break;
                default:
                        if (!h->in_flight)
                                continue;
                        r = complete(h, priv, (int) (arg % 8), NULL, 0);
                        break;
                }
                if (check_result(h, r)) {
                        report(r, "scripted");
                        return;
                }
        }
        /* The device falls silent: transfers time out, the board never comes back. */
        for (int n = 0; n < 8; n++) {
                if (h->in_flight)
                        r = complete(h, priv, -ETIMEDOUT, NULL, 0);
                else if (h->reopening) {
                        h->reopening = false;
                        r = ops->reopened(priv, -ETIMEDOUT);
                } else {
                        h->now = h->deadline;
                        h->deadline = 0;
                        r = ops->timeout(priv);
                }
                if (check_result(h, r)) {
                        report(r, "after silence");
                        return;
                }
        }
        fuzz_check(!"the operation did not end after the device fell silent");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gw_options *opts;
        struct gw_reader rd = {0};
        struct gw_writer wr = {0};
        struct host h = {0};
        uint8_t extra[EXTRA_MAX], valid_extra[9];
        char layout[LAYOUT_MAX + 1];
        const uint8_t *extra_p = NULL;
        const char *layout_p = NULL;
        size_t extra_len = 0, i = SETUP_LEN;
        uint8_t *priv;
        uint8_t modes, wrap_args[WRAP_ARGS] = {0};
        struct gw_dfu_functional func;
        struct gw_dfuse_layout dev_layout;
        bool wrap, have_layout = false;
        uint32_t base = 0;
        int r;

        if (size < SETUP_LEN + 2)
                return 0;
        if (!ops) {
                ops = gw_protocol_find("dfu");
                fuzz_check(ops && ops->shape == GW_LINK_CONTROL);
                for (size_t k = 0; k < sizeof(image); k++)
                        image[k] = (uint8_t) (k * 167 + (k >> 8));
        }
        modes = data[SETUP_MODES];
        /* Raw descriptor bytes when the length byte is not 0, a raw layout likewise. */
        extra_len = data[i++] % (EXTRA_MAX + 1);
        if (extra_len > 0) {
                if (extra_len > size - i)
                        extra_len = size - i;
                memcpy(extra, data + i, extra_len);
                i += extra_len;
                extra_p = extra;
        }
        if (i < size) {
                size_t n = data[i++] % (LAYOUT_MAX + 1);

                if (n > 0) {
                        if (n > size - i)
                                n = size - i;
                        memcpy(layout, data + i, n);
                        layout[n] = '\0';
                        i += n;
                        layout_p = layout;
                }
        }
        wrap = (data[SETUP_SIZE_HI] & SIZE_HI_WRAP) && !(data[SETUP_SIZE_HI] & SIZE_HI_UPLOAD);
        if (wrap) {
                size_t n = size - i < WRAP_ARGS ? size - i : WRAP_ARGS;

                memcpy(wrap_args, data + i, n);
                i += n;
        }

        /* The decoders on their own. */
        {
                struct gw_dfu_functional f;
                struct gw_dfuse_layout l;

                if (gw_dfu_parse_functional(extra_p, extra_len, &f) == 0)
                        fuzz_check(f.transfer_size > 0);
                if (layout_p && gw_dfuse_parse_layout(layout_p, &l) == 0) {
                        uint64_t bad = 0, ps = 0, pe = 0;

                        fuzz_check(l.n >= 1 && l.n <= GW_DFUSE_SEGMENTS_MAX);
                        for (size_t k = 0; k < l.n; k++) {
                                fuzz_check(l.seg[k].pages > 0 && l.seg[k].page_size > 0);
                                fuzz_check(gw_dfuse_find_page(&l, l.seg[k].start, &ps, &pe));
                                fuzz_check(ps <= l.seg[k].start && pe > l.seg[k].start);
                        }
                        if (gw_dfuse_check_writable(&l, l.seg[0].start, 4096, &bad) < 0)
                                fuzz_check(bad >= l.seg[0].start);
                }
        }

        h.h = (struct gw_proto_host){
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &h,
            .logv = host_logv,
            .now_ms = host_now_ms,
            .set_deadline = host_set_deadline,
            .progress = host_progress,
            .set_error = host_set_error,
            .usb_info = host_usb_info,
            .select_alt = host_select_alt,
            .control = host_control,
            .reset = host_reset,
            .reopen = host_reopen,
        };
        h.now = 1000;
        h.image = image;
        h.upload = data[SETUP_SIZE_HI] & SIZE_HI_UPLOAD;
        h.size =
            (data[SETUP_SIZE_LO] | (uint64_t) (data[SETUP_SIZE_HI] & 0x3f) << 8) % (IMAGE_MAX + 1);
        set_descriptors(&h, modes, extra_p, extra_len, layout_p, valid_extra);
        /* What the protocol will find: alt 0's functional descriptor (alt 1 has none), the
         * layout both alts name. */
        if (gw_dfu_parse_functional(h.alts[0].extra, h.alts[0].extra_len, &func) == 0) {
                h.dfuse = func.bcd_dfu == GW_DFU_BCD_DFUSE;
                h.know_xfer = true;
                h.xfer = func.transfer_size < GW_DFU_TRANSFER_MAX ? func.transfer_size
                                                                  : GW_DFU_TRANSFER_MAX;
        }
        if (h.dfuse && gw_dfuse_parse_layout(h.alts[0].name, &dev_layout) == 0) {
                have_layout = true;
                if (gw_dfuse_first_writable(&dev_layout, &base) < 0)
                        base = 0;
        }
        h.file = image;
        h.file_size = h.size;
        h.reg[0] = (struct region){.address = base, .offset = 0, .size = (uint32_t) h.size};
        h.n_reg = 1;
        if (wrap)
                wrap_image(&h, wrap_args, base);
        /* A region outside writable memory must be refused. */
        for (size_t k = 0; have_layout && k < h.n_reg; k++) {
                uint64_t bad = 0;

                if (gw_dfuse_check_writable(&dev_layout, h.reg[k].address, h.reg[k].size, &bad) < 0)
                        h.must_fail = true;
        }

        opts = gw_options_new();
        fuzz_check(opts);
        fuzz_check(gw_options_set(opts, "timeout-ms", "60000") == 0);
        if (modes & 0x80)
                fuzz_check(gw_options_set(opts, "leave", "false") == 0);
        rd.size = h.file_size;
        rd.ctx = &h;
        rd.pread = reader_pread;
        priv = calloc(1, ops->priv_size);
        fuzz_check(priv);
        fuzz_check(ops->init(priv, opts, &h.h) == 0);
        wr.max = h.size;
        wr.ctx = &h;
        wr.pwrite = writer_pwrite;
        r = h.upload ? ops->upload(priv, &wr) : ops->install(priv, &rd);
        if (!check_result(&h, r))
                run(&h, priv, data + i, size - i);
        else
                report(r, h.upload ? "at upload" : "at install");

        ops->done(priv);
        free(priv);
        gw_options_free(opts);
        return 0;
}
