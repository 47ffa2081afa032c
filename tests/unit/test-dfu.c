/* Tests for the dfu protocol plugin: its decoders (functional descriptor, GETSTATUS, DfuSe
 * layout), scripted exchanges on the fake control link (fake-usb.h) for install and upload,
 * and a model device that answers every request and counts what the host made it do. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "../../protocols/dfu/dfu-desc.h"
#include "fake-usb.h"

extern const struct gw_protocol_ops gw_protocol_dfu_ops;

/* Device states. */
#define S_APP_IDLE 0
#define S_IDLE     2
#define S_DNSYNC   3
#define S_DNBUSY   4
#define S_DNIDLE   5
#define S_MSYNC    6
#define S_MANIFEST 7
#define S_MWRESET  8
#define S_UPIDLE   9
#define S_ERROR    10

/* Expected requests to interface 0. */
#define GETSTATUS       FU_EXPECT(0xa1, 3, 0, 0, 6)
#define DNLOAD(b, l)    FU_EXPECT(0x21, 1, (b), 0, (l))
#define DFUSE_CMD(s)    FU_EXPECT_OUT(0x21, 1, 0, 0, s)
#define CLRSTATUS       FU_EXPECT(0x21, 4, 0, 0, 0)
#define ABORT           FU_EXPECT(0x21, 6, 0, 0, 0)
#define DETACH(t)       FU_EXPECT(0x21, 0, (t), 0, 0)
#define ST(s, p, state) FU_STATUS((s), (p), (state))
#define NO_DEADLINE     FU_DEADLINE(0)
/* The timer armed for a declared wait of ms: one tick more, because now_ms() is rounded down
 * and the answer may have come just before the next tick (see test_poll_rounding). */
#define WAIT(ms) FU_DEADLINE((ms) + 1)

/* ---- fixtures ------------------------------------------------------------------------- */

/* A DFU functional descriptor: attributes, detach timeout, transfer size, bcdDFU. */
#define FUNC(attr, detach, xfer, bcd)                                                              \
        {                                                                                          \
                9, 0x21, (attr), (detach) &0xff, (detach) >> 8, (xfer) &0xff, (xfer) >> 8,         \
                    (bcd) &0xff, (bcd) >> 8                                                        \
        }

static const uint8_t func_dfu11[] = FUNC(0x07, 1000, 64, 0x0110); /* tolerant */
static const uint8_t func_nontol[] = FUNC(0x03, 1000, 64, 0x0110);
static const uint8_t func_big[] = FUNC(0x07, 1000, 8192, 0x0110);
static const uint8_t func_runtime[] = FUNC(0x03, 500, 64, 0x0110);
static const uint8_t func_runtime_wd[] = FUNC(0x0b, 500, 64, 0x0110);
/* ST's ROM bootloader: can download and upload, will detach, not manifestation tolerant. */
static const uint8_t func_dfuse[] = FUNC(0x0b, 255, 1024, 0x011a);

#define ALT(i, a, proto, nm, ex)                                                                   \
        {                                                                                          \
                .interface = (i), .alt = (a), .class_code = 0xfe, .subclass = 1,                   \
                .protocol = (proto), .name = (nm), .extra = (ex), .extra_len = sizeof(ex)          \
        }
#define ALT_NOEX(i, a, proto, nm)                                                                  \
        {                                                                                          \
                .interface = (i), .alt = (a), .class_code = 0xfe, .subclass = 1,                   \
                .protocol = (proto), .name = (nm)                                                  \
        }

static const struct gw_usb_alt alts_dfu11[] = {ALT(0, 0, 2, "Flash", func_dfu11)};
static const struct gw_usb_device_info dev_dfu11 = {.vid = 0x1209,
                                                    .pid = 0x2002,
                                                    .serial = "ABC123",
                                                    .path = "1-2",
                                                    .alts = alts_dfu11,
                                                    .n_alts = 1};
static const struct gw_usb_alt alts_nontol[] = {ALT(0, 0, 2, "Flash", func_nontol)};
static const struct gw_usb_device_info dev_nontol = {
    .vid = 0x1209, .pid = 0x2002, .serial = "ABC123", .alts = alts_nontol, .n_alts = 1};
static const struct gw_usb_alt alts_big[] = {ALT(0, 0, 2, "Flash", func_big)};
static const struct gw_usb_device_info dev_big = {
    .vid = 0x1209, .pid = 0x2002, .alts = alts_big, .n_alts = 1};

/* A run-time device: a vendor interface, then the DFU run-time interface 1. */
static const struct gw_usb_alt alts_runtime[] = {
    {.interface = 0, .alt = 0, .class_code = 0xff},
    ALT(1, 0, 1, "DFU", func_runtime),
};
static const struct gw_usb_device_info dev_runtime = {
    .vid = 0x1209, .pid = 0x2001, .serial = "ABC123", .alts = alts_runtime, .n_alts = 2};
static const struct gw_usb_alt alts_runtime_wd[] = {ALT(0, 0, 1, "DFU", func_runtime_wd)};
static const struct gw_usb_device_info dev_runtime_wd = {
    .vid = 0x1209, .pid = 0x2001, .serial = "ABC123", .alts = alts_runtime_wd, .n_alts = 1};

/* DfuSe: 8 KiB read-only, 8 KiB of 1 KiB pages, 4 pages of 2 KiB; RAM (writable, not
 * erasable); option bytes. The functional descriptor sits after the last alternate setting,
 * where libusb attaches it. */
#define LAYOUT_FLASH "@Internal Flash  /0x08000000/8*1Ka,8*1Kg,4*2Kg"
#define LAYOUT_RAM   "@SRAM /0x20000000/16*1Ke"
#define LAYOUT_OPT   "@Option Bytes  /0x1FFFC000/01*016 e"
static const struct gw_usb_alt alts_dfuse[] = {
    ALT_NOEX(0, 0, 2, LAYOUT_FLASH),
    ALT_NOEX(0, 1, 2, LAYOUT_RAM),
    ALT(0, 2, 2, LAYOUT_OPT, func_dfuse),
};
static const struct gw_usb_device_info dev_dfuse = {
    .vid = 0x0483, .pid = 0xdf11, .serial = "3267358B3133", .alts = alts_dfuse, .n_alts = 3};

/* ---- the world of one test ------------------------------------------------------------ */

struct world {
        struct fake_usb f;
        struct gw_options *opts;
        uint8_t *data;
        size_t size;
        struct gw_reader reader;
};

static struct world *cur;

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct world *w = ctx;

        if (off >= w->size)
                return 0;
        if (n > w->size - off)
                n = w->size - off;
        memcpy(buf, w->data + off, n);
        return (ssize_t) n;
}

/* "key=value,key=value" (sep ","), or with another separator when values hold commas. */
static struct gw_options *parse_opts_sep(const char *spec, const char *sep)
{
        struct gw_options *o = gw_options_new();
        char buf[512], *save = NULL;

        assert_non_null(o);
        if (!spec)
                return o;
        assert_true(strlen(spec) < sizeof(buf));
        strcpy(buf, spec);
        for (char *kv = strtok_r(buf, sep, &save); kv; kv = strtok_r(NULL, sep, &save)) {
                char *eq = strchr(kv, '=');

                assert_non_null(eq);
                *eq = '\0';
                assert_int_equal(gw_options_set(o, kv, eq + 1), 0);
        }
        return o;
}

static struct gw_options *parse_opts(const char *spec)
{
        return parse_opts_sep(spec, ",");
}

/* A clock finer than the host's: now_ms() rounds it down, as the core's does. */
static uint64_t fine_us;

static uint64_t fine_now_ms(void *ctx)
{
        return fine_us / 1000;
}

/* A microsecond host (proto host version 3), on the same clock; world_open() gives the
 * instance one while fine_host is set. */
static bool fine_host;
static uint64_t fine_deadline_us;
static unsigned fine_deadlines_set;

static uint64_t fine_now_us(void *ctx)
{
        return fine_us;
}

static void fine_set_deadline_us(void *ctx, uint64_t at_us)
{
        fine_deadline_us = at_us;
        fine_deadlines_set++;
}

/* Opens an instance on dev with opts, for an image of size bytes; does not install. */
static void world_open(struct world *w, const struct gw_usb_device_info *dev, size_t size,
                       const char *opts)
{
        memset(w, 0, sizeof(*w));
        cur = w;
        fake_usb_init(&w->f, &gw_protocol_dfu_ops, dev);
        if (fine_host) {
                w->f.host.now_ms = fine_now_ms;
                w->f.host.now_us = fine_now_us;
                w->f.host.set_deadline_us = fine_set_deadline_us;
        }
        w->opts = parse_opts(opts);
        assert_int_equal(fake_usb_open(&w->f, w->opts), 0);
        w->size = size;
        w->data = malloc(size ? size : 1);
        assert_non_null(w->data);
        for (size_t i = 0; i < size; i++)
                w->data[i] = (uint8_t) (i * 131 + (i >> 7) + 7);
        w->reader =
            (struct gw_reader){.size = size, .name = "fw.bin", .ctx = w, .pread = mem_pread};
}

static void world_start(struct world *w, const struct gw_usb_device_info *dev, size_t size,
                        const char *opts)
{
        world_open(w, dev, size, opts);
        fake_usb_install(&w->f, &w->reader);
}

static void world_end(struct world *w)
{
        fake_usb_done(&w->f);
        gw_options_free(w->opts);
        free(w->data);
        cur = NULL;
}

/* The DNLOAD in flight carries the image from offset arg[0]. */
static bool check_data(struct fake_usb *f, const struct fake_usb_step *s)
{
        size_t off = (size_t) s->arg[0];

        return off + f->setup.length <= cur->size &&
               memcmp(f->out, cur->data + off, f->setup.length) == 0;
}
#define DATA(off) FU_CHECK(check_data, (off), 0, 0)

/* ---- decoders ------------------------------------------------------------------------- */

static void test_functional(void **state)
{
        static const struct {
                const char *what;
                uint8_t bytes[24];
                size_t len;
                int r;
                uint16_t xfer, bcd;
        } v[] = {
            {"plain", {9, 0x21, 7, 0xe8, 3, 0x40, 0, 0x10, 1}, 9, 0, 64, 0x0110},
            {"dfu 1.0, 7 bytes", {7, 0x21, 7, 0, 0, 0, 1}, 7, 0, 256, 0x0100},
            {"after another descriptor",
             {3, 0x24, 0, 9, 0x21, 7, 0, 0, 0, 4, 0x1a, 1},
             12,
             0,
             1024,
             0x011a},
            {"empty", {0}, 0, -ENOENT, 0, 0},
            {"no functional", {3, 0x24, 0}, 3, -ENOENT, 0, 0},
            {"bLength 0", {0, 0x21, 7, 0, 0, 0x40, 0, 0x10, 1}, 9, -EBADMSG, 0, 0},
            {"bLength past the end", {12, 0x21, 7, 0, 0, 0x40, 0, 0x10, 1}, 9, -EBADMSG, 0, 0},
            {"one byte left", {3, 0x24, 0, 9}, 4, -EBADMSG, 0, 0},
            {"too short", {5, 0x21, 7, 0, 0}, 5, -EBADMSG, 0, 0},
            {"transfer size 0", {9, 0x21, 7, 0, 0, 0, 0, 0x10, 1}, 9, -EBADMSG, 0, 0},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct gw_dfu_functional fd = {.transfer_size = 0xbeef};
                int r = gw_dfu_parse_functional(v[i].bytes, v[i].len, &fd);

                if (r != v[i].r)
                        fail_msg("%s: %d, expected %d", v[i].what, r, v[i].r);
                if (r == 0) {
                        assert_int_equal(fd.transfer_size, v[i].xfer);
                        assert_int_equal(fd.bcd_dfu, v[i].bcd);
                } else
                        assert_int_equal(fd.transfer_size, 0xbeef);
        }
}

static void test_status_decode(void **state)
{
        static const uint8_t ok[] = {0, 0x10, 0x27, 0x01, 4, 9};
        static const uint8_t bad_state[] = {0, 0, 0, 0, 11, 0};
        static const uint8_t bad_status[] = {0x10, 0, 0, 0, 2, 0};
        struct gw_dfu_status st = {0};

        assert_int_equal(gw_dfu_parse_status(ok, sizeof(ok), &st), 0);
        assert_int_equal(st.poll_timeout_ms, 0x012710);
        assert_int_equal(st.state, 4);
        assert_int_equal(st.istring, 9);
        assert_int_equal(gw_dfu_parse_status(ok, 5, &st), -EBADMSG);
        assert_int_equal(gw_dfu_parse_status(bad_state, 6, &st), -EBADMSG);
        assert_int_equal(gw_dfu_parse_status(bad_status, 6, &st), -EBADMSG);
        assert_int_equal(gw_dfu_parse_status(NULL, 6, &st), -EBADMSG);
        for (unsigned s = 0; s < 11; s++)
                assert_non_null(gw_dfu_dev_state_to_string(s));
        assert_null(gw_dfu_dev_state_to_string(11));
        for (unsigned s = 1; s <= 15; s++) {
                assert_non_null(gw_dfu_status_to_string(s));
                assert_non_null(gw_dfu_status_to_message(s));
                assert_true(gw_dfu_status_to_errno(s) < 0);
        }
        assert_null(gw_dfu_status_to_string(16));
        assert_int_equal(gw_dfu_status_to_errno(16), -EPROTO);
}

static void test_layout(void **state)
{
        struct gw_dfuse_layout l;
        uint64_t ps = 0, pe = 0, bad = 0;
        uint32_t first = 0;
        char many[1024];
        size_t n;

        assert_int_equal(
            gw_dfuse_parse_layout("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg", &l),
            0);
        assert_string_equal(l.name, "Internal Flash");
        assert_int_equal(l.n, 3);
        assert_int_equal(l.seg[0].start, 0x08000000);
        assert_int_equal(l.seg[0].page_size, 16 * 1024);
        assert_int_equal(l.seg[0].pages, 4);
        assert_int_equal(l.seg[0].type, 7);
        assert_int_equal(l.seg[1].start, 0x08010000);
        assert_int_equal(l.seg[2].start, 0x08020000);
        assert_int_equal(l.seg[2].page_size, 128 * 1024);
        assert_non_null(gw_dfuse_find_page(&l, 0x08030001, &ps, &pe));
        assert_int_equal(ps, 0x08020000);
        assert_int_equal(pe, 0x08040000);
        assert_null(gw_dfuse_find_page(&l, 0x08100000, NULL, NULL));
        assert_int_equal(gw_dfuse_check_writable(&l, 0x08000000, 1024 * 1024, &bad), 0);
        assert_int_equal(gw_dfuse_check_writable(&l, 0x08000000, 1024 * 1024 + 1, &bad), -ENOSPC);
        assert_int_equal(bad, 0x08100000);

        /* Two regions, byte units, types a..g. */
        assert_int_equal(
            gw_dfuse_parse_layout("@X/0x1FFF7800/01*512 e,01*016 a/0x20000000/2*1Md", &l), 0);
        assert_int_equal(l.n, 3);
        assert_int_equal(l.seg[0].page_size, 512);
        assert_int_equal(l.seg[0].type, GW_DFUSE_READABLE | GW_DFUSE_WRITABLE);
        assert_int_equal(l.seg[1].start, 0x1FFF7A00);
        assert_int_equal(l.seg[1].type, GW_DFUSE_READABLE);
        assert_int_equal(l.seg[2].start, 0x20000000);
        assert_int_equal(l.seg[2].page_size, 1024 * 1024);
        assert_int_equal(l.seg[2].type, GW_DFUSE_WRITABLE);
        assert_int_equal(gw_dfuse_first_writable(&l, &first), 0);
        assert_int_equal(first, 0x1FFF7800);
        /* The read-only group between them is not writable. */
        assert_int_equal(gw_dfuse_check_writable(&l, 0x1FFF7800, 600, &bad), -ENOSPC);
        assert_int_equal(bad, 0x1FFF7A00);
        /* Reaching exactly 4 GiB is fine; a trailing '/' too. */
        assert_int_equal(gw_dfuse_parse_layout("@Top/0xFFFFF000/4*1Kg/", &l), 0);
        assert_int_equal(gw_dfuse_parse_layout("@Nothing/0x0/1*1Ka", &l), 0);
        assert_int_equal(gw_dfuse_first_writable(&l, &first), -ENOENT);

        /* 32 groups fit, 33 do not. */
        n = (size_t) snprintf(many, sizeof(many), "@M/0x08000000/");
        for (int i = 0; i < 32; i++)
                n += (size_t) snprintf(many + n, sizeof(many) - n, "%s1*1Kg", i ? "," : "");
        assert_int_equal(gw_dfuse_parse_layout(many, &l), 0);
        assert_int_equal(l.n, 32);
        snprintf(many + n, sizeof(many) - n, ",1*1Kg");
        assert_int_equal(gw_dfuse_parse_layout(many, &l), -EBADMSG);

        static const char *const bad_layouts[] = {
            "",
            "Internal Flash /0x08000000/1*1Kg",
            "@Internal Flash",
            "@X/",
            "@X/0x08000000",
            "@X/0x08000000/",
            "@X/08000000/1*1Kg",
            "@X/0x/1*1Kg",
            "@X/0x123456789/1*1Kg",
            "@X/0x08000000/1*1Kz",
            "@X/0x08000000/1*1Qg",
            "@X/0x08000000/0*1Kg",
            "@X/0x08000000/1*0Kg",
            "@X/0x08000000/1*1K",
            "@X/0x08000000/1*1",
            "@X/0x08000000/*1Kg",
            "@X/0x08000000/1Kg",
            "@X/0x08000000/1*1Kg,",
            "@X/0x08000000/1*1Kg junk",
            "@X/0x08000000/1*1Kg/0x1",
            "@X/0xFFFFF000/5*1Kg",
            "@X/0x00000000/2*4095Mg",
            "@X/0x08000000/1234567890*1Kg",
        };
        for (size_t i = 0; i < sizeof(bad_layouts) / sizeof(bad_layouts[0]); i++) {
                memset(&l, 0x5a, sizeof(l));
                if (gw_dfuse_parse_layout(bad_layouts[i], &l) != -EBADMSG)
                        fail_msg("layout \"%s\" accepted", bad_layouts[i]);
                assert_int_equal(l.n, 0x5a5a5a5a5a5a5a5aull);
        }
        assert_int_equal(gw_dfuse_parse_layout(NULL, &l), -EBADMSG);
}

/* ---- DFU 1.1 scripts ------------------------------------------------------------------ */

/* 150 bytes in blocks of 64: 0 (64), 1 (64), 2 (22), then the empty block 3. The device is
 * busy 10 ms after block 0, idle at once after the others. */
static const struct fake_usb_step s_dfu11[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_PROGRESS(0, 150),
    DNLOAD(0, 64),
    DATA(0),
    FU_COMPLETE(64),
    GETSTATUS,
    NO_DEADLINE,
    ST(0, 10, S_DNBUSY),
    FU_NOTHING(),
    WAIT(10),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 10, S_DNIDLE),
    /* Idle: block 1 goes out at once, no timer armed. */
    NO_DEADLINE,
    FU_PROGRESS(64, 150),
    DNLOAD(1, 64),
    DATA(64),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 25, S_DNIDLE),
    NO_DEADLINE,
    DNLOAD(2, 22),
    DATA(128),
    FU_COMPLETE(22),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    FU_PROGRESS(150, 150),
    DNLOAD(3, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 5, S_MSYNC),
    WAIT(5),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 20, S_MANIFEST),
    WAIT(20),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_RESULT(GW_PROTO_DONE),
    NO_DEADLINE,
    FU_RESETS(0),
};

static void test_dfu11_download(void **state)
{
        struct world w;

        world_start(&w, &dev_dfu11, 150, NULL);
        assert_int_equal(w.f.selects, 1);
        assert_int_equal(w.f.sel_interface, 0);
        assert_int_equal(w.f.sel_alt, 0);
        fake_usb_run(&w.f, s_dfu11, sizeof(s_dfu11) / sizeof(s_dfu11[0]));
        assert_int_equal(w.f.transfers, 12);
        world_end(&w);
}

/* A bwPollTimeout of hours waits poll-max-ms at most. */
static const struct fake_usb_step s_huge_poll[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 64),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 0xffffff, S_DNBUSY),
    WAIT(5000),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0, S_DNBUSY),
    WAIT(0), /* 0 while busy: the next tick */
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0xffffff, S_DNIDLE),
    NO_DEADLINE,
    DNLOAD(1, 36),
    FU_CANCEL(),
    FU_RESULT(GW_PROTO_CONTINUE),
    FU_COMPLETE(36),
    ABORT,
    FU_COMPLETE(0),
    FU_RESULT(-ECANCELED),
    FU_ERROR("cancelled"),
};

static void test_huge_poll_capped(void **state)
{
        struct world w;

        world_start(&w, &dev_dfu11, 100, NULL);
        fake_usb_run(&w.f, s_huge_poll, sizeof(s_huge_poll) / sizeof(s_huge_poll[0]));
        world_end(&w);

        world_start(&w, &dev_dfu11, 100, "poll-max-ms=200");
        {
                static const struct fake_usb_step s[] = {
                    GETSTATUS,
                    ST(0, 0, S_IDLE),
                    DNLOAD(0, 64),
                    FU_COMPLETE(64),
                    GETSTATUS,
                    ST(0, 0xffffff, S_DNBUSY),
                    WAIT(200),
                    FU_ADVANCE(200),
                    FU_NOTHING(),
                    FU_ADVANCE(1),
                    GETSTATUS,
                    FU_CANCEL(),
                    FU_RESULT(GW_PROTO_CONTINUE),
                    ST(0, 0, S_DNIDLE),
                    ABORT,
                    FU_COMPLETE(-EPIPE),
                    FU_RESULT(-ECANCELED),
                };
                fake_usb_run(&w.f, s, sizeof(s) / sizeof(s[0]));
        }
        world_end(&w);
}

/* A device stuck busy fails with -ETIMEDOUT once timeout-ms has passed, each wait capped. */
static void test_stuck_busy(void **state)
{
        struct world w;
        unsigned polls = 0;
        uint64_t start;

        world_start(&w, &dev_dfu11, 100, "timeout-ms=1000,poll-max-ms=300");
        start = w.f.now;
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        fake_usb_complete(&w.f, 64, NULL, 0);
        while (w.f.last == GW_PROTO_CONTINUE) {
                assert_true(w.f.in_flight);
                fake_usb_status(&w.f, 0, 0xffffff, S_DNBUSY);
                if (w.f.last != GW_PROTO_CONTINUE)
                        break;
                assert_false(w.f.in_flight);
                assert_true(w.f.deadline > w.f.now && w.f.deadline - w.f.now <= 300 + 1);
                assert_true(w.f.deadline <= start + 1000);
                fake_usb_expire(&w.f);
                assert_true(++polls < 10);
        }
        assert_int_equal(w.f.last, -ETIMEDOUT);
        assert_int_equal(w.f.now, start + 1000);
        assert_int_equal(polls, 4); /* 300 + 300 + 300 + 100 */
        assert_non_null(strstr(w.f.error, "busy"));
        assert_int_equal(w.f.deadline, 0);
        world_end(&w);
}

/* Start-up recovery: the state GETSTATUS finds, and the request that must follow. */
static void test_recovery(void **state)
{
        static const struct {
                uint8_t status, state;
                uint8_t request; /* 4 CLRSTATUS, 6 ABORT, 3 GETSTATUS after a wait */
        } v[] = {
            {0x03, S_ERROR, 4}, {0x0e, S_ERROR, 4}, {0, S_DNIDLE, 6}, {0, S_UPIDLE, 6},
            {0, S_MSYNC, 6},    {0, S_DNSYNC, 6},   {0, S_DNBUSY, 3}, {0, S_MANIFEST, 3},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct world w;

                world_start(&w, &dev_dfu11, 64, NULL);
                fake_usb_status(&w.f, v[i].status, 7, v[i].state);
                assert_int_equal(w.f.last, GW_PROTO_CONTINUE);
                if (v[i].request == 3) {
                        assert_false(w.f.in_flight);
                        assert_int_equal(w.f.deadline, w.f.now + 7 + 1);
                        fake_usb_expire(&w.f);
                } else
                        fake_usb_complete(&w.f, 0, NULL, 0);
                assert_true(w.f.in_flight);
                if (v[i].request != 3) {
                        /* ... the request went out, and now the state is asked again. */
                        assert_int_equal(w.f.setup.request, 3);
                }
                fake_usb_status(&w.f, 0, 0, S_IDLE);
                assert_true(w.f.in_flight);
                assert_int_equal(w.f.setup.request, 1);
                assert_int_equal(w.f.setup.value, 0);
                assert_int_equal(w.f.setup.length, 64);
                world_end(&w);
        }
}

static const struct fake_usb_step s_recover_error[] = {
    GETSTATUS,
    ST(0x0a, 0, S_ERROR),
    CLRSTATUS,
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    ABORT,
    FU_COMPLETE(-EPIPE),
    GETSTATUS,
    ST(0x0f, 0, S_ERROR),
    CLRSTATUS,
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 64),
    DATA(0),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DNLOAD(1, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_RESULT(GW_PROTO_DONE),
};

static const struct fake_usb_step s_recover_exhausted[] = {
    GETSTATUS,    ST(0x0a, 0, S_ERROR), CLRSTATUS,          FU_COMPLETE(0),
    GETSTATUS,    ST(0x0a, 0, S_ERROR), CLRSTATUS,          FU_COMPLETE(0),
    GETSTATUS,    ST(0x0a, 0, S_ERROR), CLRSTATUS,          FU_COMPLETE(0),
    GETSTATUS,    ST(0x0a, 0, S_ERROR), CLRSTATUS,          FU_COMPLETE(0),
    GETSTATUS,    ST(0x0a, 0, S_ERROR), FU_RESULT(-EPROTO), FU_ERROR("dfuIDLE"),
    FU_NOTHING(),
};

static const struct fake_usb_step s_clrstatus_stalls[] = {
    GETSTATUS,           ST(0x0a, 0, S_ERROR), CLRSTATUS,
    FU_COMPLETE(-EPIPE), FU_RESULT(-EPIPE),    FU_ERROR("CLRSTATUS"),
};

/* Found waiting for a reset after an earlier manifestation: reset, re-enumerate, go on. */
static const struct fake_usb_step s_start_wait_reset[] = {
    GETSTATUS,
    ST(0, 0, S_MWRESET),
    FU_RESETS(1),
    FU_REOPEN(10000),
    FU_NOTHING(),
    FU_REOPENED(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 10),
    FU_CANCEL(),
    FU_COMPLETE(-ENODEV),
    ABORT,
    FU_COMPLETE(-ENODEV),
    FU_RESULT(-ECANCELED),
};

static const struct fake_usb_step s_start_runtime_state[] = {
    GETSTATUS,
    ST(0, 0, S_APP_IDLE),
    FU_RESULT(-EPROTO),
    FU_ERROR("appIDLE"),
};

static void run_script(const struct gw_usb_device_info *dev, size_t size, const char *opts,
                       const struct fake_usb_step *s, size_t n)
{
        struct world w;

        world_start(&w, dev, size, opts);
        fake_usb_run(&w.f, s, n);
        world_end(&w);
}
#define RUN(dev, size, opts, s) run_script((dev), (size), (opts), (s), sizeof(s) / sizeof((s)[0]))

static void test_recovery_scripts(void **state)
{
        RUN(&dev_dfu11, 64, NULL, s_recover_error);
        RUN(&dev_dfu11, 64, NULL, s_recover_exhausted);
        RUN(&dev_dfu11, 64, NULL, s_clrstatus_stalls);
        RUN(&dev_dfu11, 10, NULL, s_start_wait_reset);
        RUN(&dev_dfu11, 10, NULL, s_start_runtime_state);
}

/* Every error status, after a data block and during manifestation, fails with its errno and
 * a message naming it; vendor errors name their string index. */
static void test_error_statuses(void **state)
{
        static const int errnos[16] = {
            0,       -ENOEXEC, -EBADMSG, -EIO,       -EIO,        -EIO,        -EIO,       -EIO,
            -EFAULT, -ENODATA, -ENOEXEC, -EREMOTEIO, -ECONNRESET, -ECONNRESET, -EREMOTEIO, -EPROTO,
        };

        for (unsigned code = 1; code <= 15; code++)
                for (int phase = 0; phase < 2; phase++) {
                        struct world w;

                        world_start(&w, &dev_dfu11, 10, NULL);
                        fake_usb_status(&w.f, 0, 0, S_IDLE);
                        fake_usb_complete(&w.f, 10, NULL, 0);
                        if (phase == 1) {
                                fake_usb_status(&w.f, 0, 0, S_DNIDLE);
                                assert_int_equal(w.f.setup.length, 0);
                                fake_usb_complete(&w.f, 0, NULL, 0);
                        }
                        {
                                uint8_t b[6] = {(uint8_t) code, 0, 0, 0, S_ERROR, 4};

                                fake_usb_complete(&w.f, 6, b, 6);
                        }
                        if (w.f.last != errnos[code])
                                fail_msg("status %u: %d, expected %d", code, w.f.last,
                                         errnos[code]);
                        assert_non_null(strstr(w.f.error, gw_dfu_status_to_string(code)));
                        assert_non_null(strstr(w.f.error, gw_dfu_status_to_message(code)));
                        assert_non_null(strstr(w.f.error, phase ? "manifestation" : "DNLOAD"));
                        if (code == 0x0b)
                                assert_non_null(strstr(w.f.error, "string descriptor 4"));
                        assert_false(w.f.in_flight);
                        assert_int_equal(w.f.deadline, 0);
                        world_end(&w);
                }
}

/* A stalled DNLOAD: GETSTATUS tells why. */
static const struct fake_usb_step s_stall_notdone[] = {
    GETSTATUS, ST(0, 0, S_IDLE),     DNLOAD(0, 10),       FU_COMPLETE(10),
    GETSTATUS, ST(0, 0, S_DNIDLE),   DNLOAD(1, 0),        FU_COMPLETE(-EPIPE),
    GETSTATUS, ST(0x09, 0, S_ERROR), FU_RESULT(-ENODATA), FU_ERROR("errNOTDONE"),
};
static const struct fake_usb_step s_stall_ok[] = {
    GETSTATUS, ST(0, 0, S_IDLE),   DNLOAD(0, 10),     FU_COMPLETE(-EPIPE),
    GETSTATUS, ST(0, 0, S_DNIDLE), FU_RESULT(-EPIPE), FU_ERROR("stalled DNLOAD"),
};
static const struct fake_usb_step s_stall_status_stalls[] = {
    GETSTATUS, ST(0, 0, S_IDLE),    DNLOAD(0, 10),     FU_COMPLETE(-EPIPE),
    GETSTATUS, FU_COMPLETE(-EPIPE), FU_RESULT(-EPIPE), FU_ERROR("stalled DNLOAD"),
};
static const struct fake_usb_step s_short_write[] = {
    GETSTATUS,      ST(0, 0, S_IDLE), DNLOAD(0, 10),
    FU_COMPLETE(4), FU_RESULT(-EIO),  FU_ERROR("4 of 10"),
};
static const struct fake_usb_step s_gone[] = {
    GETSTATUS, ST(0, 0, S_IDLE),     DNLOAD(0, 10),      FU_COMPLETE(10),
    GETSTATUS, FU_COMPLETE(-ENODEV), FU_RESULT(-ENODEV), FU_ERROR("disconnected"),
};
static const struct fake_usb_step s_timeout[] = {
    GETSTATUS, ST(0, 0, S_IDLE), DNLOAD(0, 10), FU_COMPLETE(-ETIMEDOUT), FU_RESULT(-ETIMEDOUT),
};
static const struct fake_usb_step s_left_download[] = {
    GETSTATUS, ST(0, 0, S_IDLE), DNLOAD(0, 10),      FU_COMPLETE(10),
    GETSTATUS, ST(0, 0, S_IDLE), FU_RESULT(-EPROTO), FU_ERROR("left the download: dfuIDLE"),
};
static const struct fake_usb_step s_error_status_ok[] = {
    GETSTATUS, ST(0, 0, S_IDLE),  DNLOAD(0, 10),      FU_COMPLETE(10),
    GETSTATUS, ST(0, 0, S_ERROR), FU_RESULT(-EPROTO),
};
static const struct fake_usb_step s_malformed_status[] = {
    GETSTATUS,
    FU_REPLY("\x00\x00\x00"),
    FU_RESULT(-EBADMSG),
    FU_ERROR("malformed"),
};
static const struct fake_usb_step s_bad_state[] = {
    GETSTATUS,
    FU_REPLY("\x00\x00\x00\x00\x0b\x00"),
    FU_RESULT(-EBADMSG),
};
static const struct fake_usb_step s_submit_fails[] = {
    GETSTATUS, FU_SUBMIT_FAIL(-EIO), ST(0, 0, S_IDLE), FU_RESULT(-EIO), FU_ERROR("submitting"),
};
/* Refused at submission because the device is gone: as if the transfer had said so. */
static const struct fake_usb_step s_submit_gone[] = {
    GETSTATUS,          FU_SUBMIT_FAIL(-ENODEV),  ST(0, 0, S_IDLE),
    FU_RESULT(-ENODEV), FU_ERROR("disconnected"),
};
static const struct fake_usb_step s_getstatus_stalls[] = {
    GETSTATUS,
    FU_COMPLETE(-EPIPE),
    FU_RESULT(-EPIPE),
    FU_ERROR("GETSTATUS"),
};

static void test_transfer_failures(void **state)
{
        RUN(&dev_dfu11, 10, NULL, s_stall_notdone);
        RUN(&dev_dfu11, 10, NULL, s_stall_ok);
        RUN(&dev_dfu11, 10, NULL, s_stall_status_stalls);
        RUN(&dev_dfu11, 10, NULL, s_short_write);
        RUN(&dev_dfu11, 10, NULL, s_gone);
        RUN(&dev_dfu11, 10, NULL, s_timeout);
        RUN(&dev_dfu11, 10, NULL, s_left_download);
        RUN(&dev_dfu11, 10, NULL, s_error_status_ok);
        RUN(&dev_dfu11, 10, NULL, s_malformed_status);
        RUN(&dev_dfu11, 10, NULL, s_bad_state);
        RUN(&dev_dfu11, 10, NULL, s_submit_fails);
        RUN(&dev_dfu11, 10, NULL, s_submit_gone);
        RUN(&dev_dfu11, 10, NULL, s_getstatus_stalls);
}

/* Manifestation: a device that is not tolerant waits for a reset, or vanishes. */
#define TO_END                                                                                     \
        GETSTATUS, ST(0, 0, S_IDLE), DNLOAD(0, 10), FU_COMPLETE(10), GETSTATUS,                    \
            ST(0, 0, S_DNIDLE), DNLOAD(1, 0)
static const struct fake_usb_step s_manifest_wait_reset[] = {
    TO_END,       FU_COMPLETE(0), GETSTATUS,           ST(0, 3, S_MANIFEST),     WAIT(3),
    FU_EXPIRE(),  GETSTATUS,      ST(0, 0, S_MWRESET), FU_RESULT(GW_PROTO_DONE), FU_RESETS(1),
    FU_NOTHING(),
};
static const struct fake_usb_step s_manifest_vanishes[] = {
    TO_END, FU_COMPLETE(0), GETSTATUS, FU_COMPLETE(-ENODEV), FU_RESULT(GW_PROTO_DONE),
};
/* It reset so fast that the next GETSTATUS is refused at submission. */
static const struct fake_usb_step s_manifest_vanishes_at_submit[] = {
    TO_END,           FU_COMPLETE(0),           GETSTATUS, FU_SUBMIT_FAIL(-ENODEV),
    ST(0, 0, S_IDLE), FU_RESULT(GW_PROTO_DONE),
};
static const struct fake_usb_step s_manifest_vanishes_at_end[] = {
    TO_END,
    FU_COMPLETE(-ENODEV),
    FU_RESULT(GW_PROTO_DONE),
};
static const struct fake_usb_step s_tolerant_vanishes[] = {
    TO_END,
    FU_COMPLETE(0),
    GETSTATUS,
    FU_COMPLETE(-ENODEV),
    FU_RESULT(-ENODEV),
    FU_ERROR("manifestation"),
};
static const struct fake_usb_step s_manifest_unexpected[] = {
    TO_END, FU_COMPLETE(0), GETSTATUS, ST(0, 0, S_DNIDLE), FU_RESULT(-EPROTO),
};

static void test_manifestation(void **state)
{
        RUN(&dev_nontol, 10, NULL, s_manifest_wait_reset);
        RUN(&dev_nontol, 10, NULL, s_manifest_vanishes);
        RUN(&dev_nontol, 10, NULL, s_manifest_vanishes_at_submit);
        RUN(&dev_nontol, 10, NULL, s_manifest_vanishes_at_end);
        RUN(&dev_dfu11, 10, NULL, s_tolerant_vanishes);
        RUN(&dev_dfu11, 10, NULL, s_manifest_unexpected);
}

/* ---- detach and re-enumeration -------------------------------------------------------- */

static bool check_selected(struct fake_usb *f, const struct fake_usb_step *s)
{
        return f->selects == (unsigned) s->arg[0] && f->sel_interface == s->arg[1] &&
               f->sel_alt == s->arg[2];
}

/* Run-time device without bitWillDetach: DETACH (wValue = wDetachTimeOut, wIndex = its
 * interface 1), reset, re-enumerate, continue in DFU mode on interface 0. */
static const struct fake_usb_step s_detach[] = {
    FU_CHECK(check_selected, 1, 1, 0),
    FU_EXPECT(0x21, 0, 500, 1, 0),
    FU_COMPLETE(0),
    FU_RESETS(1),
    FU_REOPEN(10000),
    FU_NOTHING(),
    FU_REOPENED(0),
    FU_CHECK(check_selected, 2, 0, 0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 64),
    DATA(0),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DNLOAD(1, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    /* Detached from its application: reset once written, to run the new one. */
    FU_RESULT(GW_PROTO_DONE),
    FU_RESETS(2),
};
/* The same with option reset=false: the board stays in DFU mode. */
static const struct fake_usb_step s_detach_stay[] = {
    FU_EXPECT(0x21, 0, 500, 1, 0),
    FU_COMPLETE(0),
    FU_RESETS(1),
    FU_REOPEN(10000),
    FU_REOPENED(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 64),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DNLOAD(1, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_RESULT(GW_PROTO_DONE),
    FU_RESETS(1),
};
/* A board found in DFU mode stays there, unless option reset=true. */
static const struct fake_usb_step s_dfu_reset[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DNLOAD(0, 64),
    FU_COMPLETE(64),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DNLOAD(1, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_RESULT(GW_PROTO_DONE),
    FU_RESETS(1),
};
/* The same with a reset the transport refuses: written, but not back in the application, so
 * the install fails and says so. */
static const struct fake_usb_step s_dfu_reset_fails[] = {
    GETSTATUS, ST(0, 0, S_IDLE),   DNLOAD(0, 64),   FU_COMPLETE(64),
    GETSTATUS, ST(0, 0, S_DNIDLE), DNLOAD(1, 0),    FU_COMPLETE(0),
    GETSTATUS, ST(0, 0, S_IDLE),   FU_RESULT(-EIO), FU_ERROR("to leave DFU mode failed"),
};
/* bitWillDetach: no reset; a device that drops off inside the DETACH is fine. */
static const struct fake_usb_step s_detach_will[] = {
    DETACH(500), FU_COMPLETE(-ENODEV), FU_RESETS(0),          FU_REOPEN(2000), FU_REOPENED(0),
    GETSTATUS,   ST(0, 0, S_IDLE),     DNLOAD(0, 64),         FU_CANCEL(),     FU_COMPLETE(64),
    ABORT,       FU_COMPLETE(0),       FU_RESULT(-ECANCELED),
};
static const struct fake_usb_step s_detach_timeout[] = {
    FU_EXPECT(0x21, 0, 500, 1, 0), FU_COMPLETE(0),        FU_REOPEN(10000),
    FU_REOPENED(-ETIMEDOUT),       FU_RESULT(-ETIMEDOUT), FU_ERROR("did not come back"),
};
static const struct fake_usb_step s_detach_refused[] = {
    FU_EXPECT(0x21, 0, 500, 1, 0),
    FU_COMPLETE(-EPIPE),
    FU_RESULT(-EPIPE),
    FU_ERROR("DETACH"),
};
static const struct fake_usb_step s_detach_cancel[] = {
    FU_EXPECT(0x21, 0, 500, 1, 0), FU_COMPLETE(0), FU_REOPEN(10000), FU_CANCEL(),
    FU_RESULT(-ECANCELED),
};

static void test_detach(void **state)
{
        struct world w;

        world_start(&w, &dev_runtime, 64, NULL);
        w.f.reopen_info = &dev_dfu11;
        fake_usb_run(&w.f, s_detach, sizeof(s_detach) / sizeof(s_detach[0]));
        world_end(&w);

        world_start(&w, &dev_runtime_wd, 100, "reenumerate-timeout-ms=2000");
        w.f.reopen_info = &dev_dfu11;
        fake_usb_run(&w.f, s_detach_will, sizeof(s_detach_will) / sizeof(s_detach_will[0]));
        world_end(&w);

        world_start(&w, &dev_runtime, 64, "reset=false");
        w.f.reopen_info = &dev_dfu11;
        fake_usb_run(&w.f, s_detach_stay, sizeof(s_detach_stay) / sizeof(s_detach_stay[0]));
        world_end(&w);
        RUN(&dev_dfu11, 64, "reset=true", s_dfu_reset);
        world_start(&w, &dev_dfu11, 64, "reset=true");
        w.f.reset_error = -EIO;
        fake_usb_run(&w.f, s_dfu_reset_fails,
                     sizeof(s_dfu_reset_fails) / sizeof(s_dfu_reset_fails[0]));
        world_end(&w);

        RUN(&dev_runtime, 64, NULL, s_detach_timeout);
        RUN(&dev_runtime, 64, NULL, s_detach_refused);
        RUN(&dev_runtime, 64, NULL, s_detach_cancel);

        /* Back, but still in run-time mode. */
        world_start(&w, &dev_runtime, 64, NULL);
        w.f.reopen_info = &dev_runtime;
        fake_usb_complete(&w.f, 0, NULL, 0);
        assert_true(w.f.reopening);
        assert_int_equal(fake_usb_reopened(&w.f, 0), -EPROTO);
        assert_non_null(strstr(w.f.error, "run-time"));
        world_end(&w);
}

/* ---- set-up failures ------------------------------------------------------------------ */

static void expect_install_fails(const struct gw_usb_device_info *dev, size_t size,
                                 const char *opts, int err, const char *text)
{
        struct world w;

        world_start(&w, dev, size, opts);
        if (w.f.last != err)
                fail_msg("%s: %d, expected %d (%s)", text, w.f.last, err, w.f.error);
        if (!strstr(w.f.error, text))
                fail_msg("error \"%s\", expected \"%s\"", w.f.error, text);
        assert_false(w.f.in_flight);
        assert_int_equal(w.f.deadline, 0);
        world_end(&w);
}

static void test_setup_failures(void **state)
{
        static const uint8_t short_func[] = {5, 0x21, 7, 0, 0};
        static const uint8_t overrun[] = {9, 0x21, 7, 0, 0, 0x40, 0};
        static const uint8_t zero_len[] = {0, 0x21, 7};
        static const uint8_t xfer0[] = FUNC(0x07, 0, 0, 0x0110);
        static const uint8_t no_dnload[] = FUNC(0x02, 0, 64, 0x0110);
        static const uint8_t other[] = {3, 0x24, 0};
        static const struct gw_usb_alt a_short[] = {ALT(0, 0, 2, "x", short_func)};
        static const struct gw_usb_alt a_overrun[] = {ALT(0, 0, 2, "x", overrun)};
        static const struct gw_usb_alt a_zero[] = {ALT(0, 0, 2, "x", zero_len)};
        static const struct gw_usb_alt a_xfer0[] = {ALT(0, 0, 2, "x", xfer0)};
        static const struct gw_usb_alt a_nodn[] = {ALT(0, 0, 2, "x", no_dnload)};
        static const struct gw_usb_alt a_none[] = {ALT(0, 0, 2, "x", other)};
        static const struct gw_usb_alt a_vendor[] = {{.class_code = 0xff}};
        static const struct gw_usb_alt a_dfuse_bad[] = {
            ALT(0, 0, 2, "@Internal Flash  /0x08000000/8*1Kz", func_dfuse)};
        static const struct gw_usb_alt a_dfuse_noname[] = {ALT(0, 0, 2, NULL, func_dfuse)};
        static const struct gw_usb_alt a_dfuse_ro[] = {
            ALT(0, 0, 2, "@Boot /0x1FFF0000/8*1Ka", func_dfuse)};
#define DEV(a)                                                                                     \
        {                                                                                          \
                .vid = 0x1209, .pid = 0x2002, .alts = (a), .n_alts = sizeof(a) / sizeof((a)[0])    \
        }
        static const struct gw_usb_device_info d_short = DEV(a_short), d_overrun = DEV(a_overrun),
                                               d_zero = DEV(a_zero), d_xfer0 = DEV(a_xfer0),
                                               d_nodn = DEV(a_nodn), d_none = DEV(a_none),
                                               d_vendor = DEV(a_vendor),
                                               d_dfuse_bad = DEV(a_dfuse_bad),
                                               d_dfuse_noname = DEV(a_dfuse_noname),
                                               d_dfuse_ro = DEV(a_dfuse_ro);
        static const struct gw_usb_device_info d_empty = {.vid = 1, .pid = 2};

        expect_install_fails(&d_short, 10, NULL, -EPROTO, "malformed functional descriptor");
        expect_install_fails(&d_overrun, 10, NULL, -EPROTO, "malformed functional descriptor");
        expect_install_fails(&d_zero, 10, NULL, -EPROTO, "malformed functional descriptor");
        expect_install_fails(&d_xfer0, 10, NULL, -EPROTO, "malformed functional descriptor");
        expect_install_fails(&d_none, 10, NULL, -EPROTO, "no DFU functional descriptor");
        expect_install_fails(&d_nodn, 10, NULL, -EOPNOTSUPP, "bitCanDnload");
        expect_install_fails(&d_vendor, 10, NULL, -ENOENT, "no DFU interface");
        expect_install_fails(&d_empty, 10, NULL, -ENOENT, "no DFU interface");
        expect_install_fails(&d_dfuse_bad, 10, NULL, -EPROTO, "memory layout");
        expect_install_fails(&d_dfuse_noname, 10, NULL, -EPROTO, "memory layout");
        expect_install_fails(&d_dfuse_ro, 10, NULL, -ENOSPC, "no writable memory");
        expect_install_fails(&dev_dfu11, 0, NULL, -EINVAL, "empty");
        expect_install_fails(&dev_dfu11, 10, "alt=3", -ENOENT, "alternate setting 3");
        expect_install_fails(&dev_dfu11, 10, "alt=Nope", -ENOENT, "\"Nope\"");
        expect_install_fails(&dev_dfu11, 10, "address=0x08000000", -EINVAL, "DfuSe");
        /* Read-only memory, past the end of flash, outside any segment. */
        expect_install_fails(&dev_dfuse, 10, "address=0x08000000", -ENOSPC,
                             "0x08000000 is not writable");
        expect_install_fails(&dev_dfuse, 16 * 1024 + 1, NULL, -ENOSPC,
                             "0x08006000 is not writable");
        expect_install_fails(&dev_dfuse, 10, "address=0x30000000", -ENOSPC, "not writable");
        expect_install_fails(&dev_dfuse, 10, "alt=2,address=0x1FFFC00c", -ENOSPC,
                             "0x1fffc010 is not writable");

        /* The interface is held by someone else. */
        {
                struct world w;

                world_open(&w, &dev_dfu11, 10, NULL);
                w.f.select_error = -EBUSY;
                assert_int_equal(fake_usb_install(&w.f, &w.reader), -EBUSY);
                assert_non_null(strstr(w.f.error, "another driver"));
                world_end(&w);
        }
        /* No device on the link. */
        {
                struct world w;

                world_open(&w, NULL, 10, NULL);
                assert_int_equal(fake_usb_install(&w.f, &w.reader), -ENODEV);
                world_end(&w);
        }
}

static void test_bad_options(void **state)
{
        static const char *const bad[] = {
            "alt=",
            "alt=256",
            "poll-max-ms=0",
            "poll-max-ms=x",
            "timeout-ms=0",
            "transfer-size=0",
            "transfer-size=4097",
            "address=0x100000000",
            "address=x",
            "leave=maybe",
            "verify=maybe",
            "reset=2",
            "format=zip",
            "reenumerate-timeout-ms=0",
            "transfer-timeout-ms=0",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct fake_usb f;
                struct gw_options *o = parse_opts(bad[i]);

                fake_usb_init(&f, &gw_protocol_dfu_ops, &dev_dfu11);
                if (fake_usb_open(&f, o) != -EINVAL)
                        fail_msg("option %s accepted", bad[i]);
                assert_non_null(strstr(f.error, "option"));
                fake_usb_done(&f);
                gw_options_free(o);
        }
}

/* ---- identify, transfer size, alternate settings -------------------------------------- */

static void test_identify(void **state)
{
        struct world w;
        struct gw_options *o = gw_options_new();

        world_open(&w, &dev_dfuse, 1, NULL);
        assert_int_equal(fake_usb_identify(&w.f, o), GW_PROTO_DONE);
        assert_string_equal(gw_options_get(o, "usb-id"), "0483:df11");
        assert_string_equal(gw_options_get(o, "serial"), "3267358B3133");
        assert_string_equal(gw_options_get(o, "mode"), "dfu");
        assert_string_equal(gw_options_get(o, "dfu-version"), "1.1a");
        assert_string_equal(gw_options_get(o, "transfer-size"), "1024");
        assert_string_equal(gw_options_get(o, "alt"), "0");
        assert_string_equal(gw_options_get(o, "layout"), LAYOUT_FLASH);
        assert_int_equal(w.f.transfers, 0);
        assert_int_equal(w.f.selects, 0);
        world_end(&w);
        gw_options_free(o);

        o = gw_options_new();
        world_open(&w, &dev_runtime, 1, NULL);
        assert_int_equal(fake_usb_identify(&w.f, o), GW_PROTO_DONE);
        assert_string_equal(gw_options_get(o, "mode"), "runtime");
        assert_string_equal(gw_options_get(o, "dfu-version"), "1.10");
        assert_null(gw_options_get(o, "layout"));
        world_end(&w);
        gw_options_free(o);

        /* wTransferSize 8192 is capped at 4096 (usbfs's limit), in identify and on the wire. */
        o = gw_options_new();
        world_open(&w, &dev_big, 5000, NULL);
        assert_int_equal(fake_usb_identify(&w.f, o), GW_PROTO_DONE);
        assert_string_equal(gw_options_get(o, "transfer-size"), "4096");
        world_end(&w);
        gw_options_free(o);

        world_start(&w, &dev_big, 5000, NULL);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        assert_int_equal(w.f.setup.length, 4096);
        fake_usb_complete(&w.f, 4096, NULL, 0);
        fake_usb_status(&w.f, 0, 0, S_DNIDLE);
        assert_int_equal(w.f.setup.length, 5000 - 4096);
        world_end(&w);

        /* A smaller transfer-size option wins. */
        world_start(&w, &dev_big, 5000, "transfer-size=1000");
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        assert_int_equal(w.f.setup.length, 1000);
        world_end(&w);
}

static void test_alt_choice(void **state)
{
        static const struct {
                const char *opts;
                uint8_t alt;
        } v[] = {
            {NULL, 0},
            {"alt=1", 1},
            {"alt=0x2", 2},
            {"alt=@SRAM", 1},
            {"alt=SRAM", 1},
            {"alt=Option Bytes", 2},
            {"alt=" LAYOUT_OPT, 2},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct world w;

                world_start(&w, &dev_dfuse, 16, v[i].opts);
                if (w.f.last != GW_PROTO_CONTINUE || w.f.sel_alt != v[i].alt)
                        fail_msg("%s: result %d, alt %u (%s)", v[i].opts ? v[i].opts : "(none)",
                                 w.f.last, w.f.sel_alt, w.f.error);
                world_end(&w);
        }
}

/* ---- upload --------------------------------------------------------------------------- */

#define UPLOAD(b, l) FU_EXPECT(0xa1, 2, (b), 0, (l))
#define DEVMEM_SIZE  (128 * 1024)

/* What the device holds: scripted UPLOAD replies come from here. */
static uint8_t devmem[DEVMEM_SIZE];
#define UP_REPLY(off, n) FU_REPLY_N(devmem + (off), (n))

/* The core's side of an upload: a writer into memory that can be told to fail. */
struct sink {
        uint8_t buf[DEVMEM_SIZE];
        uint64_t written; /* the end of what was written */
        unsigned calls;
        bool out_of_order; /* a write did not start where the last one ended */
        ssize_t fail;      /* when < 0, pwrite() returns it */
        struct gw_writer w;
};

static struct sink sink;

static ssize_t sink_pwrite(void *ctx, const void *buf, size_t n, uint64_t off)
{
        struct sink *k = ctx;

        if (k->fail < 0)
                return k->fail;
        assert_true(n > 0 && off <= sizeof(k->buf) && n <= sizeof(k->buf) - off);
        if (off != k->written)
                k->out_of_order = true;
        memcpy(k->buf + off, buf, n);
        if (off + n > k->written)
                k->written = off + n;
        k->calls++;
        return (ssize_t) n;
}

static void sink_reset(uint64_t max)
{
        memset(&sink, 0, sizeof(sink));
        sink.w = (struct gw_writer){.max = max, .ctx = &sink, .pwrite = sink_pwrite};
        for (size_t i = 0; i < sizeof(devmem); i++)
                devmem[i] = (uint8_t) (i * 37 + (i >> 9) + 1);
}

/* What was written is the device's memory from offset 0, arg[0] bytes, in order. */
static bool check_sink(struct fake_usb *f, const struct fake_usb_step *s)
{
        return sink.written == (uint64_t) s->arg[0] && !sink.out_of_order &&
               memcmp(sink.buf, devmem, sink.written) == 0;
}
#define SINK(n) FU_CHECK(check_sink, (n), 0, 0)

static void up_start(struct world *w, const struct gw_usb_device_info *dev, uint64_t max,
                     const char *opts)
{
        world_open(w, dev, 0, opts);
        sink_reset(max);
        fake_usb_upload(&w->f, &sink.w);
}

static void run_upload(const struct gw_usb_device_info *dev, uint64_t max, const char *opts,
                       const struct fake_usb_step *s, size_t n)
{
        struct world w;

        up_start(&w, dev, max, opts);
        fake_usb_run(&w.f, s, n);
        world_end(&w);
}
#define RUN_UP(dev, max, opts, s) run_upload((dev), (max), (opts), (s), sizeof(s) / sizeof((s)[0]))

/* DFU 1.1 without a size: blocks from 0 until a short one, which leaves the device in
 * dfuIDLE: no ABORT, no GETSTATUS after it. */
static const struct fake_usb_step s_up_short[] = {
    GETSTATUS,           ST(0, 0, S_IDLE), FU_PROGRESS(0, 0),  UPLOAD(0, 64),
    UP_REPLY(0, 64),     NO_DEADLINE,      FU_PROGRESS(64, 0), UPLOAD(1, 64),
    UP_REPLY(64, 64),    UPLOAD(2, 64),    UP_REPLY(128, 10),  FU_RESULT(GW_PROTO_DONE),
    FU_PROGRESS(138, 0), SINK(138),        FU_NOTHING(),       NO_DEADLINE,
};
/* An empty block after full ones ends it too. */
static const struct fake_usb_step s_up_empty_end[] = {
    GETSTATUS,      ST(0, 0, S_IDLE),         UPLOAD(0, 64), UP_REPLY(0, 64), UPLOAD(1, 64),
    FU_COMPLETE(0), FU_RESULT(GW_PROTO_DONE), SINK(64),      FU_NOTHING(),
};
/* With a size: the last request asks only for what is left; the device, still in
 * dfuUPLOAD_IDLE, gets ABORT. */
static const struct fake_usb_step s_up_max[] = {
    GETSTATUS,       ST(0, 0, S_IDLE), FU_PROGRESS(0, 100),      UPLOAD(0, 64),
    UP_REPLY(0, 64), UPLOAD(1, 36),    UP_REPLY(64, 36),         FU_PROGRESS(100, 100),
    ABORT,           FU_COMPLETE(0),   FU_RESULT(GW_PROTO_DONE), SINK(100),
    FU_NOTHING(),    NO_DEADLINE,
};
/* A size the device does not reach: its short block ends it, without ABORT. */
static const struct fake_usb_step s_up_max_short[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    UPLOAD(0, 64),
    UP_REPLY(0, 64),
    UPLOAD(1, 64),
    UP_REPLY(64, 63),
    FU_RESULT(GW_PROTO_DONE),
    SINK(127),
    FU_PROGRESS(127, 1000),
    FU_NOTHING(),
};
/* A stall mid-upload: GETSTATUS tells why; what arrived before stays written, no success. */
static const struct fake_usb_step s_up_stall[] = {
    GETSTATUS,          ST(0, 0, S_IDLE),
    UPLOAD(0, 64),      UP_REPLY(0, 64),
    UPLOAD(1, 64),      FU_COMPLETE(-EPIPE),
    GETSTATUS,          ST(0x08, 0, S_ERROR),
    FU_RESULT(-EFAULT), FU_ERROR("errADDRESS during UPLOAD"),
    SINK(64),           FU_NOTHING(),
    NO_DEADLINE,
};
static const struct fake_usb_step s_up_stall_ok[] = {
    GETSTATUS, ST(0, 0, S_IDLE),   UPLOAD(0, 64),     FU_COMPLETE(-EPIPE),
    GETSTATUS, ST(0, 0, S_UPIDLE), FU_RESULT(-EPIPE), FU_ERROR("stalled UPLOAD"),
    SINK(0),
};
static const struct fake_usb_step s_up_gone[] = {
    GETSTATUS,          ST(0, 0, S_IDLE),         UPLOAD(0, 64), FU_COMPLETE(-ENODEV),
    FU_RESULT(-ENODEV), FU_ERROR("disconnected"),
};
static const struct fake_usb_step s_up_too_long[] = {
    GETSTATUS,       ST(0, 0, S_IDLE),   UPLOAD(0, 64),
    UP_REPLY(0, 65), FU_RESULT(-EPROTO), FU_ERROR("65 bytes for a 64-byte UPLOAD"),
    SINK(0),
};
/* A count without the data (a broken transport) is not taken as data. */
static const struct fake_usb_step s_up_no_data[] = {
    GETSTATUS, ST(0, 0, S_IDLE), UPLOAD(0, 64), FU_COMPLETE(64), FU_RESULT(-EIO), SINK(0),
};
static const struct fake_usb_step s_up_abort_fails[] = {
    GETSTATUS, ST(0, 0, S_IDLE),    UPLOAD(0, 64),     UP_REPLY(0, 64),
    ABORT,     FU_COMPLETE(-EPIPE), FU_RESULT(-EPIPE), FU_ERROR("ABORT after the upload"),
};
/* Found in dfuERROR, then in dfuUPLOAD_IDLE (an earlier upload), then busy: recovered. */
static const struct fake_usb_step s_up_recover[] = {
    GETSTATUS,
    ST(0x0e, 0, S_ERROR),
    CLRSTATUS,
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_UPIDLE),
    ABORT,
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 30, S_DNBUSY),
    WAIT(30),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    UPLOAD(0, 64),
    UP_REPLY(0, 20),
    FU_RESULT(GW_PROTO_DONE),
    SINK(20),
};
static const struct fake_usb_step s_up_cancel[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    UPLOAD(0, 64),
    FU_CANCEL(),
    FU_RESULT(GW_PROTO_CONTINUE),
    UP_REPLY(0, 64),
    ABORT,
    FU_COMPLETE(0),
    FU_RESULT(-ECANCELED),
    FU_NOTHING(),
};
/* The operation's deadline holds even though an upload never polls. */
static const struct fake_usb_step s_up_deadline[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    UPLOAD(0, 64),
    FU_ADVANCE(150),
    UP_REPLY(0, 64),
    FU_RESULT(-ETIMEDOUT),
    FU_ERROR("still going on"),
    SINK(64),
    FU_NOTHING(),
};
/* A run-time device: DETACH, reset, back in DFU mode, then the upload. */
static const struct fake_usb_step s_up_detach[] = {
    FU_EXPECT(0x21, 0, 500, 1, 0),
    FU_COMPLETE(0),
    FU_RESETS(1),
    FU_REOPEN(10000),
    FU_REOPENED(0),
    GETSTATUS,
    ST(0, 0, S_IDLE),
    UPLOAD(0, 64),
    UP_REPLY(0, 64),
    UPLOAD(1, 64),
    UP_REPLY(64, 1),
    FU_RESULT(GW_PROTO_DONE),
    SINK(65),
};

static void test_upload_dfu11(void **state)
{
        struct world w;

        RUN_UP(&dev_dfu11, 0, NULL, s_up_short);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_empty_end);
        RUN_UP(&dev_dfu11, 100, NULL, s_up_max);
        RUN_UP(&dev_dfu11, 1000, NULL, s_up_max_short);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_stall);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_stall_ok);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_gone);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_too_long);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_no_data);
        RUN_UP(&dev_dfu11, 64, NULL, s_up_abort_fails);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_recover);
        RUN_UP(&dev_dfu11, 0, NULL, s_up_cancel);
        RUN_UP(&dev_dfu11, 0, "timeout-ms=100", s_up_deadline);

        up_start(&w, &dev_runtime, 0, NULL);
        w.f.reopen_info = &dev_dfu11;
        fake_usb_run(&w.f, s_up_detach, sizeof(s_up_detach) / sizeof(s_up_detach[0]));
        world_end(&w);

        /* The writer fails: its error, nothing more requested. */
        up_start(&w, &dev_dfu11, 0, NULL);
        sink.fail = -ENOSPC;
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        assert_int_equal(fake_usb_complete(&w.f, 64, devmem, 64), -ENOSPC);
        assert_non_null(strstr(w.f.error, "writing what was read at 0"));
        assert_false(w.f.in_flight);
        world_end(&w);

        /* wTransferSize 8192: UPLOADs of 4096 at most. */
        up_start(&w, &dev_big, 5000, NULL);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        assert_int_equal(w.f.setup.length, 4096);
        fake_usb_complete(&w.f, 4096, devmem, 4096);
        assert_int_equal(w.f.setup.length, 5000 - 4096);
        world_end(&w);
}

/* DfuSe: SET_ADDRESS (polled), ABORT to dfuIDLE, UPLOADs from wValue 2 reading across the
 * read-only and the read-write segment, ABORT at the size. */
static const struct fake_usb_step s_up_dfuse[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    FU_PROGRESS(0, 2048),
    DFUSE_CMD("\x21\x00\x1c\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 25, S_DNBUSY),
    WAIT(25),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 25, S_DNIDLE),
    NO_DEADLINE,
    ABORT,
    FU_COMPLETE(0),
    UPLOAD(2, 1024),
    UP_REPLY(0, 1024),
    FU_PROGRESS(1024, 2048),
    UPLOAD(3, 1024),
    UP_REPLY(1024, 1024),
    FU_PROGRESS(2048, 2048),
    ABORT,
    FU_COMPLETE(0),
    FU_RESULT(GW_PROTO_DONE),
    SINK(2048),
    FU_NOTHING(),
    NO_DEADLINE,
    FU_RESETS(0),
};
/* Default address: the first readable segment; the last block asks only for the rest. */
static const struct fake_usb_step s_up_dfuse_default[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x21\x00\x00\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    ABORT,
    FU_COMPLETE(0),
    UPLOAD(2, 1024),
    UP_REPLY(0, 1024),
    UPLOAD(3, 476),
    UP_REPLY(1024, 476),
    ABORT,
    FU_COMPLETE(0),
    FU_RESULT(GW_PROTO_DONE),
    SINK(1500),
};
static const struct fake_usb_step s_up_dfuse_address_fails[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x21\x00\x00\x00\x08"),
    FU_COMPLETE(-EPIPE),
    GETSTATUS,
    ST(0x08, 0, S_ERROR),
    FU_RESULT(-EFAULT),
    FU_ERROR("errADDRESS during SET_ADDRESS"),
};
/* DfuSe promises the size: a short block is a failure, not an end. */
static const struct fake_usb_step s_up_dfuse_short[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x21\x00\x00\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    ABORT,
    FU_COMPLETE(0),
    UPLOAD(2, 1024),
    UP_REPLY(0, 100),
    FU_RESULT(-EIO),
    FU_ERROR("at 0x08000064, after 100 of 1500 bytes"),
    SINK(100),
};
static const struct fake_usb_step s_up_dfuse_abort_fails[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x21\x00\x00\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    ABORT,
    FU_COMPLETE(-ENODEV),
    FU_RESULT(-ENODEV),
    FU_ERROR("ABORT before UPLOAD"),
};

static void expect_upload_fails(const struct gw_usb_device_info *dev, uint64_t max,
                                const char *opts, int err, const char *text)
{
        struct world w;

        up_start(&w, dev, max, opts);
        if (w.f.last != err)
                fail_msg("%s: %d, expected %d (%s)", text, w.f.last, err, w.f.error);
        if (!strstr(w.f.error, text))
                fail_msg("error \"%s\", expected \"%s\"", w.f.error, text);
        assert_false(w.f.in_flight);
        assert_int_equal(w.f.transfers, 0);
        assert_int_equal(w.f.deadline, 0);
        world_end(&w);
}

static void test_upload_dfuse(void **state)
{
        static const uint8_t no_upload[] = FUNC(0x09, 255, 1024, 0x011a);
        static const struct gw_usb_alt a_wo[] = {
            ALT(0, 0, 2, "@RAM /0x20000000/4*1Kd", func_dfuse)};
        static const struct gw_usb_alt a_noup[] = {ALT(0, 0, 2, LAYOUT_FLASH, no_upload)};
        static const struct gw_usb_device_info d_wo = {
            .vid = 0x0483, .pid = 0xdf11, .alts = a_wo, .n_alts = 1};
        static const struct gw_usb_device_info d_noup = {
            .vid = 0x0483, .pid = 0xdf11, .alts = a_noup, .n_alts = 1};
        struct world w;

        RUN_UP(&dev_dfuse, 2048, "address=0x08001c00", s_up_dfuse);
        RUN_UP(&dev_dfuse, 1500, NULL, s_up_dfuse_default);
        RUN_UP(&dev_dfuse, 1500, NULL, s_up_dfuse_address_fails);
        RUN_UP(&dev_dfuse, 1500, NULL, s_up_dfuse_short);
        RUN_UP(&dev_dfuse, 1500, NULL, s_up_dfuse_abort_fails);

        /* Refused before any transfer: past the readable memory, no size, nothing readable. */
        expect_upload_fails(&dev_dfuse, 0x2000, "address=0x08005000", -ENOSPC,
                            "0x08006000 is not readable");
        expect_upload_fails(&dev_dfuse, 24 * 1024 + 1, NULL, -ENOSPC, "0x08006000 is not readable");
        expect_upload_fails(&dev_dfuse, UINT64_MAX, NULL, -ENOSPC, "not readable");
        expect_upload_fails(&dev_dfuse, 16, "address=0x30000000", -ENOSPC,
                            "0x30000000 is not readable");
        expect_upload_fails(&dev_dfuse, 0, NULL, -EINVAL, "needs a size");
        expect_upload_fails(&d_wo, 16, NULL, -ENOSPC, "no readable memory");
        expect_upload_fails(&d_wo, 16, "address=0x20000000", -ENOSPC, "not readable");
        expect_upload_fails(&d_noup, 16, NULL, -EOPNOTSUPP, "bitCanUpload");
        expect_upload_fails(&dev_dfu11, 16, "address=0x08000000", -EINVAL, "DfuSe");

        /* Option bytes (type e: readable): the whole 16-byte segment, one block. */
        up_start(&w, &dev_dfuse, 16, "alt=2");
        assert_int_equal(w.f.sel_alt, 2);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        assert_memory_equal(w.f.out, "\x21\x00\xc0\xff\x1f", 5);
        world_end(&w);

        /* Misuse: no writer, a writer without pwrite, a second operation. */
        world_open(&w, &dev_dfu11, 0, NULL);
        assert_int_equal(w.f.ops->upload(w.f.priv, NULL), -EINVAL);
        sink_reset(0);
        sink.w.pwrite = NULL;
        assert_int_equal(w.f.ops->upload(w.f.priv, &sink.w), -EINVAL);
        sink_reset(0);
        assert_int_equal(fake_usb_upload(&w.f, &sink.w), GW_PROTO_CONTINUE);
        assert_int_equal(w.f.ops->upload(w.f.priv, &sink.w), -EBUSY);
        assert_int_equal(w.f.ops->install(w.f.priv, &w.reader), -EBUSY);
        world_end(&w);
}

/* ---- a model device ------------------------------------------------------------------- */

#define MODEL_MEM (128 * 1024)

/* Answers every request like a device would: DFU 1.1 (block numbers in order) or DfuSe
 * (commands, address pointer, blocks from 2), busy for busy_ms after each DNLOAD. Counts what
 * the host made it do. */
struct model {
        bool dfuse;
        uint32_t base; /* the address of mem[0] */
        uint16_t xfer;
        uint32_t busy_ms;
        uint8_t mem[MODEL_MEM];
        uint8_t state;
        bool busy_pending;
        uint16_t next_block;
        size_t written;
        uint32_t addr;
        unsigned set_addresses, erases, dnloads, getstatus, mass_erases;
        uint32_t erased[64];
        uint64_t waited;
        bool leaving;
        uint32_t leave_addr; /* the pointer when the leave request came */
        bool manifested;
        /* Upload: DFU 1.1 sends fw_size bytes of mem, then a short block. */
        size_t fw_size, up_off;
        /* With corrupt: a write that programs this address (DfuSe: the address, DFU 1.1: the
         * offset) wrong, with status OK. */
        bool corrupt;
        uint32_t corrupt_addr;
        uint16_t next_up_block;
        unsigned uploads, aborts;
};

static void model_answer(struct fake_usb *f, struct model *m)
{
        const struct gw_control_setup *s = &f->setup;

        if (s->request == 3) {
                m->getstatus++;
                if (m->leaving && m->state == S_MANIFEST) {
                        fake_usb_complete(f, -ENODEV, NULL, 0);
                        return;
                }
                if (m->busy_pending) {
                        m->busy_pending = false;
                        fake_usb_status(f, 0, m->busy_ms, S_DNBUSY);
                        return;
                }
                if (m->state == S_DNSYNC)
                        m->state = S_DNIDLE;
                if (m->state == S_MSYNC) {
                        m->manifested = true;
                        m->state = m->leaving ? S_MANIFEST : S_IDLE;
                }
                fake_usb_status(f, 0, 0, m->state);
                return;
        }
        if (s->request == 6) {
                m->aborts++;
                m->state = S_IDLE;
                fake_usb_complete(f, 0, NULL, 0);
                return;
        }
        if (s->request == 2) {
                size_t n = s->length;

                /* UPLOAD is refused in dfuDNLOAD_IDLE: the host must ABORT after SET_ADDRESS. */
                assert_true(m->state == S_IDLE || m->state == S_UPIDLE);
                assert_int_equal(s->request_type, 0xa1);
                m->uploads++;
                if (m->dfuse) {
                        uint64_t at = (uint64_t) m->addr + (uint64_t) (s->value - 2) * m->xfer;

                        assert_true(s->value >= 2);
                        assert_true(at >= m->base && at + n <= (uint64_t) m->base + MODEL_MEM);
                        m->state = S_UPIDLE;
                        fake_usb_complete(f, (int) n, m->mem + (at - m->base), n);
                        return;
                }
                if (m->state == S_IDLE) {
                        m->next_up_block = 0;
                        m->up_off = 0;
                }
                assert_int_equal(s->value, m->next_up_block);
                m->next_up_block++;
                if (n > m->fw_size - m->up_off)
                        n = m->fw_size - m->up_off;
                m->state = n < s->length ? S_IDLE : S_UPIDLE;
                m->up_off += n;
                fake_usb_complete(f, (int) n, m->mem + m->up_off - n, n);
                return;
        }
        assert_int_equal(s->request, 1);
        m->dnloads++;
        if (s->length == 0) {
                m->state = S_MSYNC;
                m->leaving = m->dfuse;
                m->leave_addr = m->addr;
                fake_usb_complete(f, 0, NULL, 0);
                return;
        }
        if (m->dfuse && s->value == 0 && s->length == 1) {
                assert_int_equal(f->out[0], 0x41); /* mass erase */
                m->mass_erases++;
                memset(m->mem, 0xff, MODEL_MEM);
        } else if (m->dfuse && s->value == 0) {
                uint32_t a = (uint32_t) f->out[1] | (uint32_t) f->out[2] << 8 |
                             (uint32_t) f->out[3] << 16 | (uint32_t) f->out[4] << 24;

                assert_int_equal(s->length, 5);
                if (f->out[0] == 0x21) {
                        m->set_addresses++;
                        m->addr = a;
                } else {
                        assert_int_equal(f->out[0], 0x41);
                        assert_true(m->erases < 64);
                        m->erased[m->erases++] = a;
                        /* Erased memory reads 0xff: mark it so writes can be checked. */
                        if (a >= m->base && a - m->base < MODEL_MEM)
                                memset(m->mem + (a - m->base), 0xff,
                                       MODEL_MEM - (a - m->base) < 1024 ? MODEL_MEM - (a - m->base)
                                                                        : 1024);
                        m->addr = a; /* ST's bootloader moves its pointer on erase */
                }
        } else if (m->dfuse) {
                uint64_t at = (uint64_t) m->addr + (uint64_t) (s->value - 2) * m->xfer;

                assert_true(s->value >= 2);
                assert_true(at >= m->base && at + s->length <= (uint64_t) m->base + MODEL_MEM);
                memcpy(m->mem + (at - m->base), f->out, s->length);
                if (m->corrupt && m->corrupt_addr >= at && m->corrupt_addr < at + s->length)
                        m->mem[m->corrupt_addr - m->base] ^= 0x10;
                if (at + s->length - m->base > m->written)
                        m->written = (size_t) (at + s->length - m->base);
        } else {
                assert_int_equal(s->value, m->next_block);
                m->next_block++;
                assert_true(m->written + s->length <= MODEL_MEM);
                memcpy(m->mem + m->written, f->out, s->length);
                if (m->corrupt && m->corrupt_addr >= m->written &&
                    m->corrupt_addr < m->written + s->length)
                        m->mem[m->corrupt_addr] ^= 0x10;
                m->written += s->length;
        }
        m->state = S_DNSYNC;
        m->busy_pending = m->busy_ms > 0;
        fake_usb_complete(f, s->length, NULL, 0);
}

/* Runs the instance against the model until it ends; returns its result. */
static int model_run(struct fake_usb *f, struct model *m)
{
        for (unsigned i = 0; f->last == GW_PROTO_CONTINUE; i++) {
                assert_true(i < 1000000);
                if (f->in_flight) {
                        assert_int_equal(f->deadline, 0);
                        model_answer(f, m);
                } else {
                        assert_true(f->deadline != 0);
                        m->waited += f->deadline - f->now;
                        fake_usb_expire(f);
                }
        }
        return f->last;
}

static void test_model_dfu11(void **state)
{
        static const struct {
                size_t size;
                uint32_t busy_ms;
        } v[] = {{1, 0}, {63, 0}, {64, 5}, {65, 5}, {1000, 25}, {4096, 0}};

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));
                unsigned blocks = (unsigned) ((v[i].size + 63) / 64);

                assert_non_null(m);
                m->busy_ms = v[i].busy_ms;
                m->state = S_IDLE;
                world_start(&w, &dev_dfu11, v[i].size, NULL);
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                assert_int_equal(m->written, v[i].size);
                assert_memory_equal(m->mem, w.data, v[i].size);
                assert_true(m->manifested);
                /* One DNLOAD per block plus the empty one; one GETSTATUS each, one more per
                 * busy report, plus the first: never more, and no wait beyond the busy ones
                 * (each the declared time and the tick that rounding down may hide). */
                assert_int_equal(m->dnloads, blocks + 1);
                assert_int_equal(m->getstatus, 1 + blocks * (v[i].busy_ms ? 2 : 1) + 1);
                assert_int_equal(m->waited,
                                 (uint64_t) blocks * (v[i].busy_ms ? v[i].busy_ms + 1 : 0));
                assert_int_equal(w.f.progress_done, v[i].size);
                world_end(&w);
                free(m);
        }
}

/* A DfuSe model device with memory at base, 1 KiB transfers, 20 ms busy per command. */
static struct model *dfuse_model(uint32_t base)
{
        struct model *m = calloc(1, sizeof(*m));

        assert_non_null(m);
        m->dfuse = true;
        m->base = base;
        m->xfer = 1024;
        m->busy_ms = 20;
        m->state = S_IDLE;
        return m;
}

/* DfuSe: erase exactly the pages the image covers (1 KiB pages, then 2 KiB ones), one
 * SET_ADDRESS for the run, blocks from 2, then the leave request. */
static void test_model_dfuse(void **state)
{
        static const struct {
                const char *opts;
                size_t size;
                uint32_t start; /* where the image goes */
                unsigned erases;
                uint32_t first_erase, last_erase;
        } v[] = {
            {NULL, 1, 0x08002000, 1, 0x08002000, 0x08002000},
            {NULL, 2500, 0x08002000, 3, 0x08002000, 0x08002800},
            {NULL, 8 * 1024, 0x08002000, 8, 0x08002000, 0x08003c00},
            {NULL, 8 * 1024 + 1, 0x08002000, 9, 0x08002000, 0x08004000},
            {NULL, 16 * 1024, 0x08002000, 12, 0x08002000, 0x08005800},
            {"address=0x08002300", 0x500, 0x08002300, 2, 0x08002000, 0x08002400},
            {"address=0x08003ff0", 0x20, 0x08003ff0, 2, 0x08003c00, 0x08004000},
            {"address=0x08004800,transfer-size=100", 3000, 0x08004800, 2, 0x08004800, 0x08005000},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));
                uint32_t off;

                assert_non_null(m);
                m->dfuse = true;
                m->base = 0x08000000;
                m->xfer = v[i].opts && strstr(v[i].opts, "transfer-size=100") ? 100 : 1024;
                m->busy_ms = 20;
                m->state = S_IDLE;
                world_start(&w, &dev_dfuse, v[i].size, v[i].opts);
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                off = v[i].start - m->base;
                assert_memory_equal(m->mem + off, w.data, v[i].size);
                if (m->erases != v[i].erases || m->erased[0] != v[i].first_erase ||
                    m->erased[m->erases - 1] != v[i].last_erase)
                        fail_msg("case %zu: %u erases, 0x%08x..0x%08x", i, m->erases, m->erased[0],
                                 m->erased[m->erases - 1]);
                for (unsigned e = 1; e < m->erases; e++)
                        assert_true(m->erased[e] > m->erased[e - 1]);
                /* One for the run, none to leave: the pointer is still the start, where the
                 * leave request jumps. */
                assert_int_equal(m->set_addresses, 1);
                assert_int_equal(m->addr, v[i].start);
                assert_true(m->leaving);
                assert_int_equal(m->leave_addr, v[i].start);
                assert_int_equal(w.f.resets, 0);
                world_end(&w);
                free(m);
        }

        /* leave=false: written, still in DFU mode. */
        {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));

                assert_non_null(m);
                m->dfuse = true;
                m->base = 0x08000000;
                m->xfer = 1024;
                m->state = S_IDLE;
                world_start(&w, &dev_dfuse, 3000, "leave=false");
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                assert_memory_equal(m->mem + 0x2000, w.data, 3000);
                assert_int_equal(m->set_addresses, 1);
                assert_false(m->leaving);
                world_end(&w);
                free(m);
        }

        /* mass-erase=true: one ERASE without an address instead of the pages. */
        {
                struct world w;
                struct model *m = dfuse_model(0x08000000);

                world_start(&w, &dev_dfuse, 5000, "mass-erase=true");
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                assert_memory_equal(m->mem + 0x2000, w.data, 5000);
                assert_int_equal(m->mass_erases, 1);
                assert_int_equal(m->erases, 0);
                world_end(&w);
                free(m);
                expect_install_fails(&dev_dfu11, 64, "mass-erase=true", -EINVAL,
                                     "DfuSe devices only");
        }

        /* RAM: writable, not erasable: no ERASE at all. */
        {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));

                assert_non_null(m);
                m->dfuse = true;
                m->base = 0x20000000;
                m->xfer = 1024;
                m->state = S_IDLE;
                world_start(&w, &dev_dfuse, 5000, "alt=1");
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                assert_memory_equal(m->mem, w.data, 5000);
                assert_int_equal(m->erases, 0);
                assert_int_equal(m->set_addresses, 1);
                assert_int_equal(m->leave_addr, 0x20000000);
                world_end(&w);
                free(m);
        }
}

/* Uploads against the model: exactly the device's bytes, one UPLOAD per block and nothing
 * else but the first GETSTATUS (and the ABORTs the device needs). */
static void test_model_upload(void **state)
{
        static const struct {
                size_t fw;    /* DFU 1.1: what the device sends before its short block */
                uint64_t max; /* 0 = no size */
                size_t got;
                unsigned uploads, aborts;
        } v[] = {
            {0, 0, 0, 1, 0},           {1, 0, 1, 1, 0},           {63, 0, 63, 1, 0},
            {64, 0, 64, 2, 0},         {65, 0, 65, 2, 0},         {1000, 0, 1000, 16, 0},
            {1000, 640, 640, 10, 1},   {1000, 650, 650, 11, 1},   {1000, 2000, 1000, 16, 0},
            {1000, 1000, 1000, 16, 1}, {1024, 1024, 1024, 16, 1},
        };

        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));

                assert_non_null(m);
                m->state = S_IDLE;
                m->fw_size = v[i].fw;
                for (size_t k = 0; k < MODEL_MEM; k++)
                        m->mem[k] = (uint8_t) (k * 37 + (k >> 9) + 1);
                up_start(&w, &dev_dfu11, v[i].max, NULL);
                if (model_run(&w.f, m) != GW_PROTO_DONE || sink.written != v[i].got ||
                    m->uploads != v[i].uploads || m->aborts != v[i].aborts)
                        fail_msg("case %zu: %d (%s), %llu bytes, %u uploads, %u aborts", i,
                                 w.f.last, w.f.error, (unsigned long long) sink.written, m->uploads,
                                 m->aborts);
                assert_memory_equal(sink.buf, m->mem, v[i].got);
                assert_false(sink.out_of_order);
                assert_int_equal(m->getstatus, 1);
                assert_int_equal(m->waited, 0);
                assert_int_equal(m->state, S_IDLE);
                assert_int_equal(w.f.progress_done, v[i].got);
                world_end(&w);
                free(m);
        }

        /* DfuSe, with a busy SET_ADDRESS: one SET_ADDRESS, ABORT before and after. */
        {
                static const struct {
                        const char *opts;
                        uint64_t max;
                        uint32_t start;
                        unsigned uploads;
                } d[] = {
                    {NULL, 3000, 0x08000000, 3},
                    {"address=0x08001c00", 5000, 0x08001c00, 5},
                    {"address=0x08001c00,transfer-size=100", 5000, 0x08001c00, 50},
                    {NULL, 24 * 1024, 0x08000000, 24},
                };

                for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
                        struct world w;
                        struct model *m = calloc(1, sizeof(*m));

                        assert_non_null(m);
                        m->dfuse = true;
                        m->base = 0x08000000;
                        m->xfer = d[i].opts && strstr(d[i].opts, "transfer-size=100") ? 100 : 1024;
                        m->busy_ms = 20;
                        m->state = S_IDLE;
                        for (size_t k = 0; k < MODEL_MEM; k++)
                                m->mem[k] = (uint8_t) (k * 91 + 3);
                        up_start(&w, &dev_dfuse, d[i].max, d[i].opts);
                        assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                        assert_int_equal(sink.written, d[i].max);
                        assert_memory_equal(sink.buf, m->mem + (d[i].start - m->base), d[i].max);
                        assert_int_equal(m->set_addresses, 1);
                        assert_int_equal(m->addr, d[i].start);
                        assert_int_equal(m->aborts, 2);
                        assert_int_equal(m->uploads, d[i].uploads);
                        assert_int_equal(m->getstatus, 3); /* start, busy, idle */
                        assert_int_equal(m->state, S_IDLE);
                        world_end(&w);
                        free(m);
                }
        }

        /* More blocks than wValue can number: ABORT, a second SET_ADDRESS, ABORT, go on. */
        {
                static const uint8_t func_1[] = FUNC(0x0b, 255, 1, 0x011a);
                static const struct gw_usb_alt a[] = {
                    ALT(0, 0, 2, "@RAM /0x20000000/128*1Ke", func_1)};
                static const struct gw_usb_device_info dv = {
                    .vid = 0x0483, .pid = 0xdf11, .alts = a, .n_alts = 1};
                struct world w;
                struct model *m = calloc(1, sizeof(*m));
                size_t size = 65534 + 10;

                assert_non_null(m);
                m->dfuse = true;
                m->base = 0x20000000;
                m->xfer = 1;
                m->state = S_IDLE;
                for (size_t k = 0; k < MODEL_MEM; k++)
                        m->mem[k] = (uint8_t) (k * 7 + (k >> 8));
                up_start(&w, &dv, size, NULL);
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                assert_int_equal(sink.written, size);
                assert_memory_equal(sink.buf, m->mem, size);
                assert_int_equal(m->set_addresses, 2);
                assert_int_equal(m->addr, 0x20000000 + 65534);
                assert_int_equal(m->aborts, 4);
                assert_int_equal(m->uploads, size);
                world_end(&w);
                free(m);
        }
}

/* More blocks than wValue can number: a new SET_ADDRESS starts a second run. */
static void test_dfuse_runs(void **state)
{
        static const uint8_t func_1[] = FUNC(0x0b, 255, 1, 0x011a);
        static const struct gw_usb_alt a[] = {ALT(0, 0, 2, "@RAM /0x20000000/128*1Ke", func_1)};
        static const struct gw_usb_device_info d = {
            .vid = 0x0483, .pid = 0xdf11, .alts = a, .n_alts = 1};
        struct world w;
        struct model *m = calloc(1, sizeof(*m));
        size_t size = 65533 + 10;

        assert_non_null(m);
        m->dfuse = true;
        m->base = 0x20000000;
        m->xfer = 1;
        m->state = S_IDLE;
        world_start(&w, &d, size, NULL);
        assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
        assert_memory_equal(m->mem, w.data, size);
        assert_int_equal(m->set_addresses, 3); /* two runs, then leave */
        assert_int_equal(m->leave_addr, 0x20000000);
        world_end(&w);
        free(m);
}

/* ---- DFU files: a suffix and DfuSe containers, against the model ------------------------ */

struct file_elem {
        uint8_t alt;
        uint32_t address;
        uint32_t size;
        uint8_t fill; /* the element's bytes: fill + offset */
};

static void put16(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
        put16(p, v);
        put16(p + 2, v >> 16);
}

/* Appends a DFU suffix (16 bytes, CRC over all before dwCRC) to buf[0..n); the new size. */
static size_t add_suffix(uint8_t *buf, size_t n, uint16_t vid, uint16_t pid, uint16_t bcd_dfu)
{
        put16(buf + n, 0xffff);
        put16(buf + n + 2, pid);
        put16(buf + n + 4, vid);
        put16(buf + n + 6, bcd_dfu);
        memcpy(buf + n + 8, "UFD", 3);
        buf[n + 11] = 16;
        put32(buf + n + 12, ~(uint32_t) crc32(0, buf, (uInt) (n + 12)));
        return n + 16;
}

/* A DfuSe container with suffix for 0483:df11: one target per run of elements with the same
 * alt. buf must be big enough. Its size. */
static size_t build_dfuse(uint8_t *buf, const struct file_elem *e, size_t n)
{
        size_t pos = 11, targets = 0;

        for (size_t i = 0; i < n;) {
                size_t t = pos, j = i, tsize = 0;

                memset(buf + t, 0, 274);
                memcpy(buf + t, "Target", 6);
                buf[t + 6] = e[i].alt;
                pos += 274;
                for (; j < n && e[j].alt == e[i].alt; j++) {
                        put32(buf + pos, e[j].address);
                        put32(buf + pos + 4, e[j].size);
                        for (uint32_t k = 0; k < e[j].size; k++)
                                buf[pos + 8 + k] = (uint8_t) (e[j].fill + k);
                        pos += 8 + e[j].size;
                        tsize += 8 + e[j].size;
                }
                put32(buf + t + 266, (uint32_t) tsize);
                put32(buf + t + 270, (uint32_t) (j - i));
                targets++;
                i = j;
        }
        memcpy(buf, "DfuSe\x01", 6);
        put32(buf + 6, (uint32_t) pos + 16); /* DFUImageSize: the whole file, suffix too */
        buf[10] = (uint8_t) targets;
        return add_suffix(buf, pos, 0x0483, 0xdf11, 0x011a);
}

/* Opens dev with opts and installs the file buf[0..n). */
static void world_start_file(struct world *w, const struct gw_usb_device_info *dev,
                             const uint8_t *buf, size_t n, const char *opts)
{
        world_open(w, dev, n, opts);
        memcpy(w->data, buf, n);
        fake_usb_install(&w->f, &w->reader);
}

static void expect_file_refused(const struct gw_usb_device_info *dev, const uint8_t *buf, size_t n,
                                const char *opts, int err, const char *text)
{
        struct world w;

        world_start_file(&w, dev, buf, n, opts);
        if (w.f.last != err || !strstr(w.f.error, text))
                fail_msg("%d \"%s\", expected %d \"%s\"", w.f.last, w.f.error, err, text);
        /* Refused before anything was written: at most the GETSTATUS of the start-up. */
        assert_true(w.f.transfers <= 1);
        world_end(&w);
}

static void test_dfu_files(void **state)
{
        static uint8_t buf[32 * 1024];
        /* Flash pages: 1 KiB from 0x08002000, 2 KiB from 0x08004000 (LAYOUT_FLASH). Two
         * elements share the page at 0x08002400; the third spans two 2 KiB pages. */
        static const struct file_elem three[] = {
            {0, 0x08004000, 2500, 0x30},
            {0, 0x08002000, 1500, 0x10},
            {0, 0x08002600, 100, 0x20},
        };
        static const uint32_t pages[] = {0x08002000, 0x08002400, 0x08004000, 0x08004800};
        struct world w;
        struct model *m;
        size_t n;

        /* Written where the elements say, in address order, each page erased once; a
         * SET_ADDRESS per element and one more to leave at the lowest address. */
        n = build_dfuse(buf, three, 3);
        m = dfuse_model(0x08000000);
        world_start_file(&w, &dev_dfuse, buf, n, NULL);
        assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
        for (size_t i = 0; i < 3; i++)
                for (uint32_t k = 0; k < three[i].size; k++)
                        if (m->mem[three[i].address - m->base + k] != (uint8_t) (three[i].fill + k))
                                fail_msg("element %zu byte %u", i, k);
        assert_int_equal(m->erases, 4);
        for (size_t i = 0; i < 4; i++)
                assert_int_equal(m->erased[i], pages[i]);
        assert_int_equal(m->set_addresses, 4);
        assert_true(m->leaving);
        assert_int_equal(m->leave_addr, 0x08002000);
        assert_int_equal(w.f.progress_done, 4100);
        assert_int_equal(w.f.progress_total, 4100);
        world_end(&w);
        free(m);

        /* A container for alt 1 (RAM) picks alt 1 by itself: no erase. */
        {
                static const struct file_elem ram[] = {{1, 0x20000400, 3000, 0x55}};

                n = build_dfuse(buf, ram, 1);
                m = dfuse_model(0x20000000);
                world_start_file(&w, &dev_dfuse, buf, n, NULL);
                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                for (uint32_t k = 0; k < 3000; k++)
                        assert_int_equal(m->mem[0x400 + k], (uint8_t) (0x55 + k));
                assert_int_equal(m->erases, 0);
                assert_int_equal(m->leave_addr, 0x20000400);
                world_end(&w);
                free(m);
                expect_file_refused(&dev_dfuse, buf, n, "alt=0", -ENOENT,
                                    "holds an image for alternate setting 1");
                expect_file_refused(&dev_dfuse, buf, n, "address=0x20000000", -EINVAL,
                                    "carry their own addresses");
        }

        /* Refused before any DNLOAD: two alts, a flipped bit, a layout that does not hold it,
         * a DFU 1.1 device, format=dfu on a raw image, a bad format. */
        {
                static const struct file_elem two[] = {{0, 0x08002000, 10, 0},
                                                       {1, 0x20000000, 10, 0}};
                static const struct file_elem ro[] = {{0, 0x08000000, 10, 0}};

                static const struct file_elem empty[] = {{0, 0x08002000, 0, 0}};

                n = build_dfuse(buf, two, 2);
                expect_file_refused(&dev_dfuse, buf, n, NULL, -EOPNOTSUPP,
                                    "alternate settings 0 and 1");
                n = build_dfuse(buf, empty, 1);
                expect_file_refused(&dev_dfuse, buf, n, NULL, -EINVAL, "holds no data");
                n = build_dfuse(buf, three, 3);
                buf[400] ^= 1;
                expect_file_refused(&dev_dfuse, buf, n, NULL, -EBADMSG, "CRC");
                buf[400] ^= 1;
                expect_file_refused(&dev_dfu11, buf, n, NULL, -ENOEXEC, "is for 0483:df11");
                n = build_dfuse(buf, ro, 1);
                expect_file_refused(&dev_dfuse, buf, n, NULL, -ENOSPC, "not writable");
                memset(buf, 0x5a, 100);
                expect_file_refused(&dev_dfuse, buf, 100, "format=dfu", -EBADMSG, "suffix");
        }

        /* DFU 1.1: a suffix for the device (or for any) is not sent; one for another is refused
         * unless format=raw, which sends every byte. */
        {
                static const struct {
                        uint16_t vid, pid;
                        const char *opts;
                        int result;
                        size_t written;
                } v[] = {
                    {0x1209, 0x2002, NULL, GW_PROTO_DONE, 3000},
                    {0xffff, 0xffff, NULL, GW_PROTO_DONE, 3000},
                    {0x1209, 0xffff, "format=dfu", GW_PROTO_DONE, 3000},
                    {0x1234, 0x2002, NULL, -ENOEXEC, 0},
                    {0x1234, 0x2002, "format=raw", GW_PROTO_DONE, 3016},
                };

                for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
                        m = calloc(1, sizeof(*m));
                        assert_non_null(m);
                        m->xfer = 64;
                        m->state = S_IDLE;
                        for (size_t k = 0; k < 3000; k++)
                                buf[k] = (uint8_t) (k * 7);
                        n = add_suffix(buf, 3000, v[i].vid, v[i].pid, 0x0100);
                        world_start_file(&w, &dev_dfu11, buf, n, v[i].opts);
                        if (v[i].result == GW_PROTO_DONE)
                                assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                        else
                                assert_int_equal(w.f.last, v[i].result);
                        assert_int_equal(m->written, v[i].written);
                        assert_memory_equal(m->mem, buf, v[i].written);
                        world_end(&w);
                        free(m);
                }
        }
}

/* Option verify: what was written is read back before a DfuSe device leaves (or after a
 * tolerant DFU 1.1 device manifested); a byte programmed wrong fails the install, and the DfuSe
 * device is not told to leave. */
static void test_verify(void **state)
{
        static uint8_t buf[16 * 1024];
        static const struct file_elem three[] = {
            {0, 0x08004000, 2500, 0x30}, {0, 0x08002000, 1500, 0x10}, {0, 0x08002600, 100, 0}};
        size_t n = build_dfuse(buf, three, 3);

        for (int corrupt = 0; corrupt < 2; corrupt++) {
                struct world w;
                struct model *m = dfuse_model(0x08000000);

                m->corrupt = corrupt;
                m->corrupt_addr = 0x08002605;
                world_start_file(&w, &dev_dfuse, buf, n, "verify=true");
                if (!corrupt) {
                        assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                        /* Every element read back, in blocks, after it was written. */
                        assert_true(m->uploads >= 4);
                        assert_true(m->leaving);
                        assert_int_equal(m->leave_addr, 0x08002000);
                        assert_int_equal(w.f.progress_done, 4100);
                } else {
                        assert_int_equal(model_run(&w.f, m), -EIO);
                        assert_non_null(strstr(w.f.error, "verify failed: 0x08002605"));
                        assert_false(m->leaving);
                }
                world_end(&w);
                free(m);
        }

        /* DFU 1.1, manifestation-tolerant: read back from block 0 once in dfuIDLE. */
        for (int corrupt = 0; corrupt < 2; corrupt++) {
                struct world w;
                struct model *m = calloc(1, sizeof(*m));

                assert_non_null(m);
                m->xfer = 64;
                m->state = S_IDLE;
                m->fw_size = 3000;
                m->corrupt = corrupt;
                m->corrupt_addr = 100;
                world_start(&w, &dev_dfu11, 3000, "verify=true");
                if (!corrupt) {
                        assert_int_equal(model_run(&w.f, m), GW_PROTO_DONE);
                        assert_int_equal(m->uploads, (3000 + 63) / 64);
                } else {
                        assert_int_equal(model_run(&w.f, m), -EIO);
                        assert_non_null(strstr(w.f.error, "verify failed: 0x00000064"));
                }
                world_end(&w);
                free(m);
        }

        /* Nothing to read back from: refused before anything is written. */
        expect_install_fails(&dev_nontol, 64, "verify=true", -EOPNOTSUPP,
                             "bitManifestationTolerant");
}

/* describe: what an alt setting's descriptors say, without an instance; nothing for an alt
 * that is not DFU. */
static void test_describe(void **state)
{
        static const struct gw_usb_alt vendor = {.class_code = 0xff};
        struct gw_options *o = gw_options_new();

        assert_non_null(o);
        assert_int_equal(gw_protocol_dfu_ops.describe(&dev_dfuse, &dev_dfuse.alts[0], o), 0);
        assert_string_equal(gw_options_get(o, "variant"), "dfuse");
        assert_string_equal(gw_options_get(o, "bcd-dfu"), "0x011a");
        assert_string_equal(gw_options_get(o, "transfer-size"), "1024");
        assert_string_equal(gw_options_get(o, "attributes"), "0x0b");
        gw_options_free(o);
        o = gw_options_new();
        assert_non_null(o);
        assert_int_equal(gw_protocol_dfu_ops.describe(&dev_dfu11, &dev_dfu11.alts[0], o), 0);
        assert_string_equal(gw_options_get(o, "variant"), "dfu");
        assert_string_equal(gw_options_get(o, "bcd-dfu"), "0x0110");
        assert_int_equal(gw_protocol_dfu_ops.describe(&dev_dfu11, &vendor, o), 0);
        assert_int_equal(gw_options_count(o), 5);
        gw_options_free(o);
}

/* check_image before any node is written: the file alone, then against what identify
 * reported; facts that cannot decide (run-time mode, another alt) leave it to install(). */
static struct gw_reader mem_reader(struct world *w, const uint8_t *buf, size_t n)
{
        w->data = (uint8_t *) buf;
        w->size = n;
        return (struct gw_reader){.size = n, .name = "fw.dfu", .ctx = w, .pread = mem_pread};
}

static void expect_image(const uint8_t *buf, size_t n, const char *opts, const char *facts, int err,
                         const char *text)
{
        struct world w;
        struct gw_reader r = mem_reader(&w, buf, n);
        struct gw_options *o = parse_opts(opts), *f = facts ? parse_opts_sep(facts, ";") : NULL;
        char why[400] = "";
        int got = gw_plugin_check_image(&gw_protocol_dfu_ops, o, &r, f, why, sizeof(why));

        if (got != err || (text && !strstr(why, text)))
                fail_msg("opts %s facts %s: %d \"%s\", expected %d \"%s\"", opts ? opts : "-",
                         facts ? facts : "-", got, why, err, text ? text : "");
        gw_options_free(o);
        gw_options_free(f);
}

#define FACTS_DFUSE(alt, layout)                                                                   \
        "mode=dfu;usb-id=0483:df11;dfu-version=1.1a;alt=" alt ";layout=" layout
#define FACTS_RUNTIME "mode=runtime;usb-id=1209:2001;dfu-version=1.10"
#define FACTS_DFU11   "mode=dfu;usb-id=0483:df11;dfu-version=1.10"

static void test_check_image(void **state)
{
        static uint8_t buf[16 * 1024];
        static const struct file_elem three[] = {
            {0, 0x08004000, 2500, 0x30}, {0, 0x08002000, 1500, 0x10}, {0, 0x08002600, 100, 0}};
        static const struct file_elem ro[] = {{0, 0x08000000, 10, 0}};
        static const struct file_elem ram[] = {{1, 0x20000000, 10, 0}};
        size_t n;

        n = build_dfuse(buf, three, 3);
        expect_image(buf, n, NULL, NULL, 0, NULL);
        expect_image(buf, n, NULL, FACTS_DFUSE("0", LAYOUT_FLASH), 0, NULL);
        expect_image(buf, n, NULL, FACTS_RUNTIME, 0, NULL); /* run-time ids: install decides */
        expect_image(buf, n, NULL, FACTS_DFU11, -EPROTO, "not DfuSe");
        expect_image(buf, n, "address=0x08002000", NULL, -EINVAL, "carry their own addresses");
        expect_image(buf, n, "format=raw", FACTS_DFUSE("0", LAYOUT_FLASH), 0, NULL);
        /* A layout whose flash is read-only there. */
        expect_image(buf, n, NULL, FACTS_DFUSE("0", "@Internal Flash /0x08000000/32*1Ka"), -ENOSPC,
                     "not writable");
        buf[100] ^= 1;
        expect_image(buf, n, NULL, NULL, -EBADMSG, "CRC");
        buf[100] ^= 1;
        /* The suffix names 0483:df11: a board in DFU mode with other ids is refused. */
        expect_image(buf, n, NULL, "mode=dfu;usb-id=0483:df12;dfu-version=1.1a", -ENOEXEC,
                     "is for 0483:df11, and this device is 0483:df12");

        n = build_dfuse(buf, ro, 1);
        expect_image(buf, n, NULL, FACTS_DFUSE("0", LAYOUT_FLASH), -ENOSPC, "not writable");

        /* A container for alt 1: identify described alt 0, so only install can tell; unless
         * option alt chose 0, which cannot be. */
        n = build_dfuse(buf, ram, 1);
        expect_image(buf, n, NULL, FACTS_DFUSE("0", LAYOUT_FLASH), 0, NULL);
        expect_image(buf, n, "alt=0", FACTS_DFUSE("0", LAYOUT_FLASH), -ENOENT,
                     "holds an image for alternate setting 1");
        expect_image(buf, n, "alt=1", FACTS_DFUSE("1", LAYOUT_RAM), 0, NULL);

        /* A plain image that does not fit at option address. */
        memset(buf, 0, 5000);
        expect_image(buf, 5000, "address=0x08005000", FACTS_DFUSE("0", LAYOUT_FLASH), -ENOSPC,
                     "does not fit");
        expect_image(buf, 5000, "address=0x08004000", FACTS_DFUSE("0", LAYOUT_FLASH), 0, NULL);
        expect_image(buf, 5000, "format=dfu", NULL, -EBADMSG, "suffix");
}

/* The exact DfuSe wire sequence for a 1500-byte image. */
static const struct fake_usb_step s_dfuse[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x41\x00\x20\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 40, S_DNBUSY),
    WAIT(40),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DFUSE_CMD("\x41\x00\x24\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DFUSE_CMD("\x21\x00\x20\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DNLOAD(2, 1024),
    DATA(0),
    FU_COMPLETE(1024),
    GETSTATUS,
    ST(0, 3, S_DNBUSY),
    FU_EXPIRE(),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    FU_PROGRESS(1024, 1500),
    DNLOAD(3, 476),
    DATA(1024),
    FU_COMPLETE(476),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    FU_PROGRESS(1500, 1500),
    /* The address pointer is still the start: the leave request follows at once. */
    DNLOAD(2, 0),
    FU_COMPLETE(0),
    GETSTATUS,
    ST(0, 0, S_MANIFEST),
    WAIT(0),
    FU_EXPIRE(),
    GETSTATUS,
    FU_COMPLETE(-ENODEV),
    FU_RESULT(GW_PROTO_DONE),
};
/* An erase the device rejects. */
static const struct fake_usb_step s_dfuse_erase_fails[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x41\x00\x20\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0x04, 0, S_ERROR),
    FU_RESULT(-EIO),
    FU_ERROR("errERASE during ERASE"),
};
static const struct fake_usb_step s_dfuse_address_fails[] = {
    GETSTATUS,
    ST(0, 0, S_IDLE),
    DFUSE_CMD("\x41\x00\x20\x00\x08"),
    FU_COMPLETE(5),
    GETSTATUS,
    ST(0, 0, S_DNIDLE),
    DFUSE_CMD("\x21\x00\x20\x00\x08"),
    FU_COMPLETE(-EPIPE),
    GETSTATUS,
    ST(0x08, 0, S_ERROR),
    FU_RESULT(-EFAULT),
    FU_ERROR("errADDRESS during SET_ADDRESS"),
};

static void test_dfuse_script(void **state)
{
        RUN(&dev_dfuse, 1500, NULL, s_dfuse);
        RUN(&dev_dfuse, 10, NULL, s_dfuse_erase_fails);
        RUN(&dev_dfuse, 10, NULL, s_dfuse_address_fails);
}

/* Cancelling in each kind of state ends with -ECANCELED, aborting a download in progress. */
static void test_cancel(void **state)
{
        struct world w;

        /* Before install: nothing to stop. */
        world_open(&w, &dev_dfu11, 10, NULL);
        assert_int_equal(fake_usb_cancel(&w.f), -ECANCELED);
        world_end(&w);

        /* Waiting for a busy device: ABORT goes out now. */
        world_start(&w, &dev_dfu11, 100, NULL);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        fake_usb_complete(&w.f, 64, NULL, 0);
        fake_usb_status(&w.f, 0, 50, S_DNBUSY);
        assert_false(w.f.in_flight);
        assert_int_equal(fake_usb_cancel(&w.f), GW_PROTO_CONTINUE);
        assert_true(w.f.in_flight);
        assert_int_equal(w.f.setup.request, 6);
        assert_int_equal(w.f.deadline, 0);
        assert_int_equal(fake_usb_complete(&w.f, 0, NULL, 0), -ECANCELED);
        world_end(&w);

        /* During the start-up GETSTATUS: no ABORT needed. */
        world_start(&w, &dev_dfu11, 100, NULL);
        assert_int_equal(fake_usb_cancel(&w.f), GW_PROTO_CONTINUE);
        assert_int_equal(fake_usb_status(&w.f, 0, 0, S_IDLE), -ECANCELED);
        assert_false(w.f.in_flight);
        world_end(&w);

        /* Waiting during manifestation. */
        world_start(&w, &dev_dfu11, 10, NULL);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        fake_usb_complete(&w.f, 10, NULL, 0);
        fake_usb_status(&w.f, 0, 0, S_DNIDLE);
        fake_usb_complete(&w.f, 0, NULL, 0);
        fake_usb_status(&w.f, 0, 100, S_MANIFEST);
        assert_int_equal(fake_usb_cancel(&w.f), -ECANCELED);
        assert_int_equal(w.f.deadline, 0);
        world_end(&w);
}

/* Busy answers at a fraction of a millisecond, and what a host must wait after each: with the
 * millisecond clock (wait_ms, counted from the answer in full) and with the microsecond one
 * (fine_wait_us: exactly the declared time; a declared 0 still waits 1 ms). */
static const struct poll_case {
        uint64_t answer_us; /* when the busy answer arrives */
        uint32_t poll_ms;   /* what it declares */
        const char *opts;
        uint32_t wait_ms;
        uint64_t fine_wait_us;
} poll_cases[] = {
    {2000000, 25, NULL, 25, 25000},
    {2000999, 25, NULL, 25, 25000},
    {2000500, 1, NULL, 1, 1000},
    {2000999, 0, NULL, 0, 1000},
    {2000750, 0xffffff, "poll-max-ms=200", 200, 200000},
};

/* The device's busy answer comes at a fraction of a millisecond: the timer must not fire
 * before the declared time has passed in full, counted from the answer, and must not wait a
 * tick more than needed. A deadline at now_ms() + declared fires up to 1 ms early. */
static void test_poll_rounding(void **state)
{
        const struct poll_case *v = poll_cases;

        for (size_t i = 0; i < sizeof(poll_cases) / sizeof(poll_cases[0]); i++) {
                struct world w;
                uint64_t due_us = v[i].answer_us + (uint64_t) v[i].wait_ms * 1000;

                world_open(&w, &dev_dfu11, 100, v[i].opts);
                w.f.host.now_ms = fine_now_ms;
                fine_us = 1000000;
                fake_usb_install(&w.f, &w.reader);
                fake_usb_status(&w.f, 0, 0, S_IDLE);
                fake_usb_complete(&w.f, 64, NULL, 0);
                fine_us = v[i].answer_us;
                fake_usb_status(&w.f, 0, v[i].poll_ms, S_DNBUSY);
                assert_int_equal(w.f.last, GW_PROTO_CONTINUE);
                assert_false(w.f.in_flight);
                /* The timer fires at the first tick of the deadline, no sooner. */
                if (w.f.deadline * 1000 < due_us)
                        fail_msg("case %zu: the deadline %llu ms fires %llu us before the "
                                 "declared wait is over",
                                 i, (unsigned long long) w.f.deadline,
                                 (unsigned long long) (due_us - w.f.deadline * 1000));
                /* ... and at most a tick after it: the wait is not padded further. */
                assert_true(w.f.deadline <= v[i].answer_us / 1000 + v[i].wait_ms + 1);
                fine_us = w.f.deadline * 1000 - 1;
                assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
                assert_false(w.f.in_flight);
                fine_us = w.f.deadline * 1000;
                assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
                assert_true(w.f.in_flight);
                assert_int_equal(w.f.setup.request, 3);
                world_end(&w);
        }
}

/* The microsecond host's timer is armed for the answer's time plus the declared wait
 * exactly, no tick more; a busy answer declaring 0 still waits 1 ms. */
static void test_poll_fine_clock(void **state)
{
        const struct poll_case *v = poll_cases;

        for (size_t i = 0; i < sizeof(poll_cases) / sizeof(poll_cases[0]); i++) {
                struct world w;
                uint64_t due_us = v[i].answer_us + v[i].fine_wait_us;

                fine_host = true;
                world_open(&w, &dev_dfu11, 100, v[i].opts);
                fine_host = false;
                fine_us = 1000000;
                fine_deadline_us = 0;
                fine_deadlines_set = 0;
                fake_usb_install(&w.f, &w.reader);
                fake_usb_status(&w.f, 0, 0, S_IDLE);
                fake_usb_complete(&w.f, 64, NULL, 0);
                fine_us = v[i].answer_us;
                fake_usb_status(&w.f, 0, v[i].poll_ms, S_DNBUSY);
                assert_int_equal(w.f.last, GW_PROTO_CONTINUE);
                assert_false(w.f.in_flight);
                /* The microsecond timer is used, and only it. */
                assert_int_equal(w.f.deadlines_set, 0);
                assert_true(fine_deadlines_set > 0);
                if (fine_deadline_us != due_us)
                        fail_msg("case %zu: deadline %llu us, expected %llu", i,
                                 (unsigned long long) fine_deadline_us,
                                 (unsigned long long) due_us);
                fine_us = due_us - 1;
                assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
                assert_false(w.f.in_flight);
                fine_us = due_us;
                assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
                assert_true(w.f.in_flight);
                assert_int_equal(w.f.setup.request, 3);
                assert_int_equal(fine_deadline_us, 0); /* disarmed once it fired */
                world_end(&w);
        }
}

/* Early and stale timer calls change nothing. */
static void test_early_timeout(void **state)
{
        struct world w;

        world_start(&w, &dev_dfu11, 100, NULL);
        fake_usb_status(&w.f, 0, 0, S_IDLE);
        fake_usb_complete(&w.f, 64, NULL, 0);
        fake_usb_status(&w.f, 0, 50, S_DNBUSY);
        assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
        assert_false(w.f.in_flight);
        assert_int_equal(w.f.deadline, w.f.now + 50 + 1);
        assert_int_equal(fake_usb_advance(&w.f, 50), GW_PROTO_CONTINUE);
        assert_false(w.f.in_flight);
        assert_int_equal(fake_usb_advance(&w.f, 1), GW_PROTO_CONTINUE);
        assert_true(w.f.in_flight);
        assert_int_equal(w.f.ops->timeout(w.f.priv), GW_PROTO_CONTINUE);
        assert_true(w.f.in_flight);
        world_end(&w);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_functional),       cmocka_unit_test(test_status_decode),
            cmocka_unit_test(test_layout),           cmocka_unit_test(test_dfu11_download),
            cmocka_unit_test(test_huge_poll_capped), cmocka_unit_test(test_stuck_busy),
            cmocka_unit_test(test_recovery),         cmocka_unit_test(test_recovery_scripts),
            cmocka_unit_test(test_error_statuses),   cmocka_unit_test(test_transfer_failures),
            cmocka_unit_test(test_manifestation),    cmocka_unit_test(test_detach),
            cmocka_unit_test(test_setup_failures),   cmocka_unit_test(test_bad_options),
            cmocka_unit_test(test_identify),         cmocka_unit_test(test_alt_choice),
            cmocka_unit_test(test_model_dfu11),      cmocka_unit_test(test_model_dfuse),
            cmocka_unit_test(test_dfuse_runs),       cmocka_unit_test(test_dfuse_script),
            cmocka_unit_test(test_cancel),           cmocka_unit_test(test_poll_rounding),
            cmocka_unit_test(test_poll_fine_clock),  cmocka_unit_test(test_early_timeout),
            cmocka_unit_test(test_upload_dfu11),     cmocka_unit_test(test_upload_dfuse),
            cmocka_unit_test(test_model_upload),     cmocka_unit_test(test_dfu_files),
            cmocka_unit_test(test_check_image),      cmocka_unit_test(test_verify),
            cmocka_unit_test(test_describe),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
