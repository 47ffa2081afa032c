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
 * falls silent. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "../../protocols/dfu/dfu-desc.h"
#include "fuzz.h"

#define IMAGE_MAX  (20 * 1024)
#define EXTRA_MAX  64
#define LAYOUT_MAX 160

enum { SETUP_MODES, SETUP_SIZE_LO, SETUP_SIZE_HI, SETUP_LEN };
#define SIZE_HI_UPLOAD 0x80

struct host {
        struct gw_proto_host h;
        uint64_t now, deadline;
        bool in_flight, reopening;
        struct gw_control_setup setup;
        uint8_t out[4096];
        struct gw_usb_alt alts[2];
        struct gw_usb_device_info info;
        const uint8_t *image;
        uint64_t size;
        uint64_t progress_done;
        bool error_set;
        /* Upload: size is w->max; what the UPLOAD completing now delivers. */
        bool upload, up_short;
        uint64_t written;
        const uint8_t *reply;
        size_t reply_len;
};

static uint8_t image[IMAGE_MAX];
static const struct gw_protocol_ops *ops;

__attribute__((format(printf, 3, 0))) static void host_logv(void *ctx, int level, const char *fmt,
                                                            va_list ap)
{
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
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
        /* A DFU 1.1 data block, or a DfuSe one (wValue >= 2), carries the image right after
         * what the device acknowledged. */
        if (setup->request == 1 && setup->length > 0 && !(setup->length == 5 && setup->value == 0))
                fuzz_check(h->progress_done + setup->length <= h->size &&
                           memcmp(h->out, h->image + h->progress_done, setup->length) == 0);
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

        fuzz_check(n >= 1 && off < h->size && n <= h->size - off);
        memcpy(buf, h->image + off, n);
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
                        fuzz_check(h->progress_done == h->size);
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

/* GW_FUZZ_VERBOSE=1 tells how each input ended: a check that the seeds reach their paths. */
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
        uint8_t modes;
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
            (data[SETUP_SIZE_LO] | (uint64_t) (data[SETUP_SIZE_HI] & 0x7f) << 8) % (IMAGE_MAX + 1);
        set_descriptors(&h, modes, extra_p, extra_len, layout_p, valid_extra);

        opts = gw_options_new();
        fuzz_check(opts);
        fuzz_check(gw_options_set(opts, "timeout-ms", "60000") == 0);
        if (modes & 0x80)
                fuzz_check(gw_options_set(opts, "leave", "false") == 0);
        rd.size = h.size;
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
