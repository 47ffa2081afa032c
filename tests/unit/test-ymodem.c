/* Tests for the ymodem protocol plugin: scripted exchanges on the fake link (fake-link.h), and
 * a model receiver that decodes every block the sender writes and reassembles the image. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gw/options.h"
#include "gw/plugin.h"

#include "../../protocols/common/crc16.h"
#include "fake-link.h"

extern const struct gw_protocol_ops gw_protocol_ymodem_ops;

/* Receiver bytes, as string literals that concatenate: ACK C is "\x06" "C". */
#define ACK "\x06"
#define NAK "\x15"
#define CAN "\x18"
#define EOT "\x04"
#define C   "C"

#define ACK_MS   10000 /* the defaults */
#define START_MS 60000
#define FINAL_MS 2000

/* Bitwise CRC-16/XMODEM, written independently of crc16.c to check it. */
static uint16_t ref_crc(const uint8_t *p, size_t n)
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

/* An image in memory, read at most chunk bytes per call (0 = any), failing from fail_from on
 * (0 = never), holding only avail bytes of its declared size. */
struct mem_image {
        const uint8_t *data;
        size_t avail;
        size_t chunk;
        uint64_t fail_from;
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem_image *m = ctx;

        if (m->fail_from && off >= m->fail_from)
                return -EIO;
        if (off >= m->avail)
                return 0;
        if (n > m->avail - off)
                n = m->avail - off;
        if (m->chunk && n > m->chunk)
                n = m->chunk;
        memcpy(buf, m->data + off, n);
        return (ssize_t) n;
}

/* One test's world: the fake link, the image and its reader. */
struct world {
        struct fake_link f;
        struct gw_options *opts;
        uint8_t *data;
        size_t size;
        struct mem_image mem;
        struct gw_reader reader;
        const char *expect_name; /* what block 0 must carry */
};

/* The checks run from scripts find the image here. */
static struct world *cur;

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
        uint32_t x = seed * 2654435761u + 12345u;

        for (size_t i = 0; i < n; i++) {
                x = x * 1103515245u + 12345u;
                p[i] = (uint8_t) (x >> 16);
        }
}

/* "k=v,k=v" into an options list; NULL for none. */
static struct gw_options *parse_opts(const char *spec)
{
        struct gw_options *o = gw_options_new();
        char buf[512], *save = NULL;

        assert_non_null(o);
        if (!spec)
                return o;
        assert_true(strlen(spec) < sizeof(buf));
        strcpy(buf, spec);
        for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');

                assert_non_null(eq);
                *eq = '\0';
                assert_int_equal(gw_options_set(o, kv, eq + 1), 0);
        }
        return o;
}

/* Opens the instance with opts and installs a size-byte image called name; the sender must
 * then wait for the receiver's 'C', with the start timeout armed. */
static void world_start(struct world *w, size_t size, const char *name, const char *opts)
{
        memset(w, 0, sizeof(*w));
        cur = w;
        fake_link_init(&w->f, &gw_protocol_ymodem_ops);
        w->opts = parse_opts(opts);
        assert_int_equal(fake_link_open(&w->f, w->opts), 0);
        w->size = size;
        w->data = malloc(size ? size : 1);
        assert_non_null(w->data);
        fill(w->data, size, (uint32_t) size);
        w->mem = (struct mem_image){.data = w->data, .avail = size};
        w->reader =
            (struct gw_reader){.size = size, .name = name, .ctx = &w->mem, .pread = mem_pread};
        w->expect_name = name;
        assert_int_equal(fake_link_install(&w->f, &w->reader), GW_PROTO_CONTINUE);
        assert_int_equal(fake_link_pending(&w->f), 0);
        assert_true(w->f.deadline > w->f.now);
}

static void world_end(struct world *w)
{
        fake_link_done(&w->f);
        gw_options_free(w->opts);
        free(w->data);
        cur = NULL;
}

struct block {
        uint8_t seq;
        size_t len;
        uint8_t data[1024];
};

/* Decodes one block from what the sender wrote: SOH/STX, number, complement, data, CRC. */
static bool take_block(struct fake_link *f, struct block *b)
{
        const uint8_t *p = fake_link_peek(f);
        size_t pending = fake_link_pending(f);
        uint16_t crc;

        if (pending < 1 || (p[0] != 0x01 && p[0] != 0x02)) {
                fprintf(stderr, "no block start (%zu bytes pending, first %02x)\n", pending,
                        pending ? p[0] : 0);
                return false;
        }
        b->len = p[0] == 0x02 ? 1024 : 128;
        if (pending < b->len + 5) {
                fprintf(stderr, "block cut short: %zu bytes\n", pending);
                return false;
        }
        if ((p[1] ^ p[2]) != 0xff) {
                fprintf(stderr, "bad block number complement %02x %02x\n", p[1], p[2]);
                return false;
        }
        crc = ref_crc(p + 3, b->len);
        if (p[3 + b->len] != (crc >> 8) || p[4 + b->len] != (crc & 0xff)) {
                fprintf(stderr, "bad CRC\n");
                return false;
        }
        b->seq = p[1];
        memcpy(b->data, p + 3, b->len);
        return fake_link_take(f, NULL, b->len + 5);
}

/* Block 0 of arg[0] bytes carrying the expected name and the image size. */
static bool check_header(struct fake_link *f, const struct fake_step *s)
{
        struct block b;
        char size[32];
        size_t name_len = strlen(cur->expect_name), i;

        if (!take_block(f, &b) || b.seq != 0 || b.len != (size_t) s->arg[0])
                return false;
        if (memcmp(b.data, cur->expect_name, name_len + 1) != 0) {
                fprintf(stderr, "block 0 name: %.*s\n", (int) name_len, b.data);
                return false;
        }
        snprintf(size, sizeof(size), "%zu 0", cur->size);
        i = name_len + 1;
        if (memcmp(b.data + i, size, strlen(size) + 1) != 0) {
                fprintf(stderr, "block 0 size: %.20s\n", b.data + i);
                return false;
        }
        for (i += strlen(size) + 1; i < b.len; i++)
                if (b.data[i] != 0)
                        return false;
        return true;
}

/* Data block number arg[0] of arg[1] bytes carrying the image from offset arg[2], padded. */
static bool check_data(struct fake_link *f, const struct fake_step *s)
{
        struct block b;
        size_t off = (size_t) s->arg[2], n;

        if (!take_block(f, &b))
                return false;
        if (b.seq != (uint8_t) s->arg[0] || b.len != (size_t) s->arg[1]) {
                fprintf(stderr, "block %u of %zu bytes, expected %ld of %ld\n", b.seq, b.len,
                        s->arg[0], s->arg[1]);
                return false;
        }
        n = cur->size - off < b.len ? cur->size - off : b.len;
        if (memcmp(b.data, cur->data + off, n) != 0)
                return false;
        for (size_t i = n; i < b.len; i++)
                if (b.data[i] != 0x1a)
                        return false;
        return true;
}

/* The empty block 0 that ends the batch. */
static bool check_end(struct fake_link *f, const struct fake_step *s)
{
        struct block b;

        if (!take_block(f, &b) || b.seq != 0 || b.len != 128)
                return false;
        for (size_t i = 0; i < b.len; i++)
                if (b.data[i] != 0)
                        return false;
        return f->deadline == f->now + (uint64_t) s->arg[0];
}

/* set_error() named the reason, and no timer is left armed. */
static bool check_error(struct fake_link *f, const struct fake_step *s)
{
        if (strstr(f->error, (const char *) s->data) == NULL) {
                fprintf(stderr, "error \"%s\", expected \"%s\"\n", f->error,
                        (const char *) s->data);
                return false;
        }
        return f->deadline == 0;
}

/* Progress reported arg[0] bytes of the image, and the deadline is armed arg[1] ms ahead. */
static bool check_progress(struct fake_link *f, const struct fake_step *s)
{
        return f->progress_done == (uint64_t) s->arg[0] && f->progress_total == cur->size &&
               f->deadline == f->now + (uint64_t) s->arg[1];
}

#define HEADER(len)         FAKE_CHECK(check_header, (len), 0, 0)
#define DATA(seq, len, off) FAKE_CHECK(check_data, (seq), (len), (off))
#define END(ms)             FAKE_CHECK(check_end, (ms), 0, 0)
#define PROGRESS(done, ms)  FAKE_CHECK(check_progress, (done), (ms), 0)
#define ERROR_IS(text)                                                                             \
        {                                                                                          \
                .type = FAKE_STEP_CHECK, .fn = check_error, .data = (text)                         \
        }

/* The scripts send a 200-byte image "fw.bin": block 1 (128 bytes) and block 2 (72 + padding). */
#define SCRIPT_SIZE 200
#define BEGIN       FAKE_IN(C), HEADER(128), FAKE_IN(ACK), FAKE_SILENT(), FAKE_IN(C), DATA(1, 128, 0)
#define REST                                                                                       \
        FAKE_IN(ACK), DATA(2, 128, 128), FAKE_IN(ACK), FAKE_WRITTEN(EOT), FAKE_IN(ACK),            \
            FAKE_SILENT(), FAKE_IN(C), END(FINAL_MS), FAKE_IN(ACK), FAKE_RESULT(GW_PROTO_DONE),    \
            FAKE_SILENT()

static const struct fake_step s_plain[] = {
    BEGIN,
    PROGRESS(0, ACK_MS),
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    PROGRESS(128, ACK_MS),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    PROGRESS(200, ACK_MS),
    FAKE_IN(NAK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK),
    FAKE_SILENT(),
    FAKE_IN(C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
    FAKE_SILENT(),
};
static const struct fake_step s_several_c[] = {
    FAKE_IN(C C C),  HEADER(128),   FAKE_SILENT(), FAKE_IN(ACK C),
    DATA(1, 128, 0), FAKE_SILENT(), REST,
};
static const struct fake_step s_header_nak[] = {
    FAKE_IN(C), HEADER(128), FAKE_IN(NAK), HEADER(128), FAKE_IN(ACK C), DATA(1, 128, 0), REST,
};
static const struct fake_step s_header_timeout[] = {
    FAKE_IN(C),      HEADER(128), FAKE_EXPIRE(ACK_MS), HEADER(128), FAKE_IN(ACK C),
    DATA(1, 128, 0), REST,
};
/* rb flushes its input right after each 'C': another 'C' means block 0 was lost. */
static const struct fake_step s_rb_extra_c[] = {
    FAKE_IN(C),   HEADER(128), FAKE_ADVANCE(1000), FAKE_IN(C), HEADER(128),
    FAKE_IN(ACK), FAKE_IN(C),  DATA(1, 128, 0),    REST,
};
static const struct fake_step s_data_nak[] = {
    BEGIN, FAKE_IN(NAK), DATA(1, 128, 0), FAKE_IN(NAK), DATA(1, 128, 0), REST,
};
static const struct fake_step s_data_timeout[] = {
    BEGIN,
    FAKE_EXPIRE(ACK_MS),
    DATA(1, 128, 0),
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_EXPIRE(ACK_MS),
    DATA(2, 128, 128),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
/* Block 1 flushed by the receiver: it asks with 'C' again. For later blocks 'C' means nothing. */
static const struct fake_step s_c_during_data[] = {
    BEGIN,
    FAKE_IN(C),
    DATA(1, 128, 0),
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(C),
    FAKE_SILENT(),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
/* Two ACKs read together: the second predates block 2 and must not acknowledge it. */
static const struct fake_step s_duplicate_ack[] = {
    BEGIN,
    FAKE_IN(ACK ACK),
    DATA(2, 128, 128),
    FAKE_SILENT(),
    PROGRESS(128, ACK_MS),
    FAKE_IN(ACK ACK ACK),
    FAKE_WRITTEN(EOT),
    FAKE_SILENT(),
    FAKE_IN(ACK),
    FAKE_IN(ACK),
    FAKE_SILENT(),
    FAKE_IN(C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
/* A duplicate ACK of block 0 while waiting for the 'C' that starts the data is ignored. */
static const struct fake_step s_duplicate_header_ack[] = {
    FAKE_IN(C),    HEADER(128), FAKE_IN(ACK),    FAKE_IN(ACK),
    FAKE_SILENT(), FAKE_IN(C),  DATA(1, 128, 0), REST,
};
static const struct fake_step s_garbage[] = {
    FAKE_IN("\x00\xff"
            "xyz"
            "\x01\x02" EOT),
    FAKE_SILENT(),
    FAKE_IN(C),
    HEADER(128),
    FAKE_IN("z"
            "\x00"),
    FAKE_SILENT(),
    FAKE_IN("\x80" ACK),
    FAKE_IN("\x7f" EOT),
    FAKE_SILENT(),
    FAKE_IN(C),
    DATA(1, 128, 0),
    FAKE_IN("\x01\x02\x03" EOT "\xfe"),
    FAKE_SILENT(),
    FAKE_IN("q" ACK),
    DATA(2, 128, 128),
    FAKE_IN("\xee" ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN("#"
            "\x02" ACK "\x99"),
    FAKE_SILENT(),
    FAKE_IN("\x05" C),
    END(FINAL_MS),
    FAKE_IN("!" ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
static const struct fake_step s_receiver_cancel[] = {
    BEGIN,         FAKE_IN(CAN CAN), FAKE_RESULT(-ECANCELED), ERROR_IS("receiver cancelled"),
    FAKE_SILENT(), FAKE_IN(ACK),     FAKE_RESULT(-ECANCELED), FAKE_SILENT(),
};
static const struct fake_step s_receiver_cancel_split[] = {
    BEGIN,         FAKE_IN(ACK), DATA(2, 128, 128),       FAKE_IN(CAN),
    FAKE_SILENT(), FAKE_IN(CAN), FAKE_RESULT(-ECANCELED), ERROR_IS("receiver cancelled"),
    FAKE_SILENT(),
};
static const struct fake_step s_receiver_cancel_at_start[] = {
    FAKE_IN(CAN CAN CAN),
    FAKE_RESULT(-ECANCELED),
    ERROR_IS("receiver cancelled"),
    FAKE_SILENT(),
};
/* One CAN is line noise, and so are two CANs that are not consecutive. */
static const struct fake_step s_single_can[] = {
    BEGIN,
    FAKE_IN(CAN),
    FAKE_SILENT(),
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(CAN "x" CAN),
    FAKE_SILENT(),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(CAN ACK),
    FAKE_IN(C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
static const struct fake_step s_eot_timeout[] = {
    BEGIN,
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_EXPIRE(ACK_MS),
    FAKE_WRITTEN(EOT),
    FAKE_IN(NAK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(C),
    FAKE_SILENT(),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
/* rb sometimes exits before its last ACK leaves. */
static const struct fake_step s_final_ack_lost[] = {
    BEGIN,
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_ADVANCE(FINAL_MS - 1),
    FAKE_SILENT(),
    FAKE_RESULT(GW_PROTO_CONTINUE),
    FAKE_EXPIRE(1),
    FAKE_RESULT(GW_PROTO_DONE),
    FAKE_SILENT(),
    FAKE_IN(NAK),
    FAKE_RESULT(GW_PROTO_DONE),
    FAKE_SILENT(),
};
/* A node that resets right after the transfer closes the link before its last ACK. */
static const struct fake_step s_hangup_after_eot[] = {
    BEGIN,         FAKE_IN(ACK),      DATA(2, 128, 128),
    FAKE_IN(ACK),  FAKE_WRITTEN(EOT), FAKE_IN(ACK C),
    END(FINAL_MS), FAKE_HANGUP(),     FAKE_RESULT(GW_PROTO_DONE),
    FAKE_SILENT(),
};
/* The same before the receiver acknowledged EOT: it may not have the whole file. */
static const struct fake_step s_hangup_before_eot_ack[] = {
    BEGIN,         FAKE_IN(ACK),        DATA(2, 128, 128), FAKE_IN(ACK), FAKE_WRITTEN(EOT),
    FAKE_HANGUP(), FAKE_RESULT(-EPIPE), FAKE_SILENT(),
};
static const struct fake_step s_hangup_mid_transfer[] = {
    BEGIN, FAKE_HANGUP(), FAKE_RESULT(-EPIPE), FAKE_IN(ACK), FAKE_RESULT(-EPIPE), FAKE_SILENT(),
};
static const struct fake_step s_final_nak[] = {
    BEGIN,
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_IN(NAK),
    END(FINAL_MS),
    FAKE_IN(C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};
/* EOT acknowledged but no 'C' follows: the receiver has the file; end the batch anyway. */
static const struct fake_step s_end_c_lost[] = {
    BEGIN,        FAKE_IN(ACK),        DATA(2, 128, 128), FAKE_IN(ACK), FAKE_WRITTEN(EOT),
    FAKE_IN(ACK), FAKE_EXPIRE(ACK_MS), END(FINAL_MS),     FAKE_IN(ACK), FAKE_RESULT(GW_PROTO_DONE),
};
/* No 'C' after block 0's ACK: keep waiting (the receiver repeats it), nothing is sent. */
static const struct fake_step s_data_start_timeout[] = {
    FAKE_IN(C),          HEADER(128),   FAKE_IN(ACK), FAKE_EXPIRE(ACK_MS), FAKE_SILENT(),
    FAKE_EXPIRE(ACK_MS), FAKE_SILENT(), FAKE_IN(C),   DATA(1, 128, 0),     REST,
};
static const struct fake_step s_data_start_exhausted[] = {
    FAKE_IN(C),
    HEADER(128),
    FAKE_IN(ACK),
    FAKE_EXPIRE(ACK_MS),
    FAKE_EXPIRE(ACK_MS),
    FAKE_EXPIRE(ACK_MS),
    FAKE_RESULT(-ETIMEDOUT),
    ERROR_IS("did not ask"),
    FAKE_SILENT(),
};
static const struct fake_step s_start_timeout[] = {
    FAKE_EXPIRE(START_MS),
    FAKE_RESULT(-ETIMEDOUT),
    ERROR_IS("no 'C'"),
    FAKE_SILENT(),
};
/* A receiver that wants checksum mode never gets a block; the failure says why. */
static const struct fake_step s_nak_only[] = {
    FAKE_IN(NAK),
    FAKE_ADVANCE(3000),
    FAKE_IN(NAK),
    FAKE_SILENT(),
    FAKE_EXPIRE(START_MS - 3000),
    FAKE_RESULT(-EPROTONOSUPPORT),
    ERROR_IS("checksum"),
    FAKE_SILENT(),
};
static const struct fake_step s_local_cancel[] = {
    BEGIN,
    FAKE_CANCEL(),
    FAKE_RESULT(-ECANCELED),
    FAKE_WRITTEN(CAN CAN CAN CAN CAN "\b\b\b\b\b"),
    ERROR_IS("cancelled"),
    FAKE_IN(ACK),
    FAKE_RESULT(-ECANCELED),
    FAKE_SILENT(),
    FAKE_CANCEL(),
    FAKE_RESULT(-ECANCELED),
    FAKE_SILENT(),
};
static const struct fake_step s_local_cancel_waiting[] = {
    FAKE_CANCEL(), FAKE_RESULT(-ECANCELED), FAKE_WRITTEN(CAN CAN CAN CAN CAN "\b\b\b\b\b"),
    FAKE_IN(C),    FAKE_RESULT(-ECANCELED), FAKE_SILENT(),
};
static const struct fake_step s_nak_exhausted[] = {
    BEGIN,           FAKE_IN(NAK), DATA(1, 128, 0),   FAKE_IN(NAK),
    DATA(1, 128, 0), FAKE_IN(NAK), FAKE_RESULT(-EIO), ERROR_IS("after 2 retries"),
    FAKE_SILENT(),
};
static const struct fake_step s_no_retries[] = {
    BEGIN,
    FAKE_EXPIRE(ACK_MS),
    FAKE_RESULT(-ETIMEDOUT),
    FAKE_SILENT(),
};
static const struct fake_step s_small_timeouts[] = {
    FAKE_IN(C),        HEADER(128),       FAKE_EXPIRE(50),
    HEADER(128),       FAKE_IN(ACK C),    DATA(1, 128, 0),
    FAKE_EXPIRE(50),   DATA(1, 128, 0),   FAKE_IN(ACK),
    DATA(2, 128, 128), FAKE_IN(ACK),      FAKE_WRITTEN(EOT),
    FAKE_EXPIRE(50),   FAKE_WRITTEN(EOT), FAKE_IN(ACK C),
    END(20),           FAKE_EXPIRE(20),   FAKE_RESULT(GW_PROTO_DONE),
};
static const struct fake_step s_start_timeout_option[] = {
    FAKE_EXPIRE(300),
    FAKE_RESULT(-ETIMEDOUT),
};
/* timeout() called before the deadline (a timer replaced meanwhile) changes nothing. */
static bool spurious_timeout(struct fake_link *f, const struct fake_step *s)
{
        uint64_t deadline = f->deadline;

        f->now += 10;
        return f->ops->timeout(f->priv) == GW_PROTO_CONTINUE && fake_link_pending(f) == 0 &&
               f->deadline == deadline;
}

static const struct fake_step s_early_timeout[] = {
    BEGIN,
    FAKE_ADVANCE(10),
    FAKE_SILENT(),
    FAKE_CHECK(spurious_timeout, 0, 0, 0),
    FAKE_SILENT(),
    FAKE_IN(ACK),
    DATA(2, 128, 128),
    FAKE_IN(ACK),
    FAKE_WRITTEN(EOT),
    FAKE_IN(ACK C),
    END(FINAL_MS),
    FAKE_IN(ACK),
    FAKE_RESULT(GW_PROTO_DONE),
};

struct script {
        const char *name;
        const char *options;
        const struct fake_step *steps;
        size_t n;
};

/* Named after the step table without its "s_" prefix. */
#define SCRIPT(opts, s)                                                                            \
        {                                                                                          \
                .name = &#s[2], .options = (opts), .steps = (s), .n = sizeof(s) / sizeof((s)[0])   \
        }

static struct script scripts[] = {
    SCRIPT(NULL, s_plain),
    SCRIPT(NULL, s_several_c),
    SCRIPT(NULL, s_header_nak),
    SCRIPT(NULL, s_header_timeout),
    SCRIPT(NULL, s_rb_extra_c),
    SCRIPT(NULL, s_data_nak),
    SCRIPT(NULL, s_data_timeout),
    SCRIPT(NULL, s_c_during_data),
    SCRIPT(NULL, s_duplicate_ack),
    SCRIPT(NULL, s_duplicate_header_ack),
    SCRIPT(NULL, s_garbage),
    SCRIPT(NULL, s_receiver_cancel),
    SCRIPT(NULL, s_receiver_cancel_split),
    SCRIPT(NULL, s_receiver_cancel_at_start),
    SCRIPT(NULL, s_single_can),
    SCRIPT(NULL, s_eot_timeout),
    SCRIPT(NULL, s_final_ack_lost),
    SCRIPT(NULL, s_hangup_after_eot),
    SCRIPT(NULL, s_hangup_before_eot_ack),
    SCRIPT(NULL, s_hangup_mid_transfer),
    SCRIPT(NULL, s_final_nak),
    SCRIPT(NULL, s_end_c_lost),
    SCRIPT(NULL, s_data_start_timeout),
    SCRIPT("retries=2", s_data_start_exhausted),
    SCRIPT(NULL, s_start_timeout),
    SCRIPT(NULL, s_nak_only),
    SCRIPT(NULL, s_local_cancel),
    SCRIPT(NULL, s_local_cancel_waiting),
    SCRIPT("retries=2", s_nak_exhausted),
    SCRIPT("retries=0", s_no_retries),
    SCRIPT("ack-timeout-ms=50,start-timeout-ms=300,final-ack-timeout-ms=20", s_small_timeouts),
    SCRIPT("ack-timeout-ms=50,start-timeout-ms=300,final-ack-timeout-ms=20",
           s_start_timeout_option),
    SCRIPT(NULL, s_early_timeout),
};

static void test_script(void **state)
{
        const struct script *sc = *state;
        struct world w;

        world_start(&w, SCRIPT_SIZE, "fw.bin", sc->options);
        fake_link_run(&w.f, sc->steps, sc->n);
        world_end(&w);
}

/* The default 10 retries, for block 0, a data block and EOT: 11 sends, then -ETIMEDOUT. */
static void test_retries_exhausted(void **state)
{
        for (int phase = 0; phase < 3; phase++) {
                struct fake_step steps[64];
                size_t n = 0;
                struct world w;
                const struct fake_step resend_header = HEADER(128), resend_data = DATA(1, 128, 0),
                                       resend_eot = FAKE_WRITTEN(EOT);
                const struct fake_step *resend = phase == 0   ? &resend_header
                                                 : phase == 1 ? &resend_data
                                                              : &resend_eot;

                world_start(&w, 100, "fw.bin", NULL);
                if (phase == 0) {
                        steps[n++] = (struct fake_step) FAKE_IN(C);
                        steps[n++] = resend_header;
                } else {
                        steps[n++] = (struct fake_step) FAKE_IN(C);
                        steps[n++] = (struct fake_step) HEADER(128);
                        steps[n++] = (struct fake_step) FAKE_IN(ACK C);
                        steps[n++] = resend_data;
                        if (phase == 2) {
                                steps[n++] = (struct fake_step) FAKE_IN(ACK);
                                steps[n++] = resend_eot;
                        }
                }
                for (int i = 0; i < 10; i++) {
                        steps[n++] = (struct fake_step) FAKE_EXPIRE(ACK_MS);
                        steps[n++] = *resend;
                        steps[n++] = (struct fake_step) FAKE_RESULT(GW_PROTO_CONTINUE);
                }
                steps[n++] = (struct fake_step) FAKE_EXPIRE(ACK_MS);
                steps[n++] = (struct fake_step) FAKE_RESULT(-ETIMEDOUT);
                steps[n++] = (struct fake_step) ERROR_IS("after 10 retries");
                steps[n++] = (struct fake_step) FAKE_SILENT();
                assert_true(n <= sizeof(steps) / sizeof(steps[0]));
                fake_link_run(&w.f, steps, n);
                world_end(&w);
        }
}

/* A model receiver that behaves like lrzsz rb, decoding every block and reassembling. */
struct transfer_case {
        const char *name;
        size_t size;
        size_t stx, soh;     /* expected data blocks of each kind */
        bool nak_first_eot;  /* classic receivers NAK the first EOT */
        bool lose_final_ack; /* rb exits before its last ACK leaves */
        bool together;       /* ACK and 'C' arrive in one read */
        size_t chunk;        /* the reader returns at most this much per call (0 = all) */
};

static void test_transfer(void **state)
{
        const struct transfer_case *tc = *state;
        struct world w;
        struct block b;
        uint8_t *got;
        size_t off = 0, stx = 0, soh = 0;
        uint8_t seq = 1;
        char size[32];
        unsigned progress_calls;

        world_start(&w, tc->size, "image.bin", NULL);
        w.mem.chunk = tc->chunk;
        got = calloc(1, tc->size + 1);
        assert_non_null(got);
        assert_int_equal(w.f.deadline, w.f.now + START_MS);

        w.f.now += 1000; /* rb waits a second before its first 'C' */
        assert_int_equal(fake_link_deliver(&w.f, C, 1), GW_PROTO_CONTINUE);
        assert_true(take_block(&w.f, &b));
        assert_int_equal(b.seq, 0);
        assert_string_equal((char *) b.data, "image.bin");
        snprintf(size, sizeof(size), "%zu 0", tc->size);
        assert_string_equal((char *) b.data + strlen("image.bin") + 1, size);
        if (tc->together) {
                assert_int_equal(fake_link_deliver(&w.f, ACK C, 2), GW_PROTO_CONTINUE);
        } else {
                assert_int_equal(fake_link_deliver(&w.f, ACK, 1), GW_PROTO_CONTINUE);
                assert_int_equal(fake_link_pending(&w.f), 0);
                assert_int_equal(fake_link_deliver(&w.f, C, 1), GW_PROTO_CONTINUE);
        }

        while (fake_link_pending(&w.f) > 0 && fake_link_peek(&w.f)[0] != 0x04) {
                size_t n;

                assert_true(take_block(&w.f, &b));
                assert_int_equal(b.seq, seq);
                assert_int_equal(fake_link_pending(&w.f), 0);
                assert_int_equal(w.f.deadline, w.f.now + ACK_MS);
                assert_true(off < tc->size);
                n = tc->size - off < b.len ? tc->size - off : b.len;
                memcpy(got + off, b.data, n);
                for (size_t i = n; i < b.len; i++)
                        assert_int_equal(b.data[i], 0x1a);
                off += n;
                if (b.len == 1024)
                        stx++;
                else
                        soh++;
                seq++;
                w.f.now += 3;
                progress_calls = w.f.progress_calls;
                assert_int_equal(fake_link_deliver(&w.f, ACK, 1), GW_PROTO_CONTINUE);
                assert_int_equal(w.f.progress_calls, progress_calls + 1);
                assert_int_equal(w.f.progress_done, off);
                assert_int_equal(w.f.progress_total, tc->size);
        }
        assert_int_equal(off, tc->size);
        assert_memory_equal(got, w.data, tc->size);
        assert_int_equal(stx, tc->stx);
        assert_int_equal(soh, tc->soh);

        assert_true(fake_link_take(&w.f, &b.data[0], 1));
        assert_int_equal(b.data[0], 0x04);
        assert_int_equal(fake_link_pending(&w.f), 0);
        if (tc->nak_first_eot) {
                assert_int_equal(fake_link_deliver(&w.f, NAK, 1), GW_PROTO_CONTINUE);
                assert_true(fake_link_take(&w.f, &b.data[0], 1));
                assert_int_equal(b.data[0], 0x04);
        } else {
                w.f.now += 1000; /* rb acknowledges the first EOT after a second */
        }
        if (tc->together) {
                assert_int_equal(fake_link_deliver(&w.f, ACK C, 2), GW_PROTO_CONTINUE);
        } else {
                assert_int_equal(fake_link_deliver(&w.f, ACK, 1), GW_PROTO_CONTINUE);
                assert_int_equal(fake_link_pending(&w.f), 0);
                assert_int_equal(fake_link_deliver(&w.f, C, 1), GW_PROTO_CONTINUE);
        }
        assert_true(take_block(&w.f, &b));
        assert_int_equal(b.seq, 0);
        assert_int_equal(b.len, 128);
        for (size_t i = 0; i < b.len; i++)
                assert_int_equal(b.data[i], 0);
        if (tc->lose_final_ack) {
                assert_int_equal(w.f.deadline, w.f.now + FINAL_MS);
                assert_int_equal(fake_link_expire(&w.f), GW_PROTO_DONE);
        } else {
                assert_int_equal(fake_link_deliver(&w.f, ACK, 1), GW_PROTO_DONE);
        }
        assert_int_equal(fake_link_pending(&w.f), 0);
        assert_int_equal(w.f.deadline, 0);
        assert_int_equal(w.f.progress_done, tc->size);
        /* Input is flushed before every frame: block 0, the data blocks, EOT(s), the end. */
        assert_int_equal(w.f.flushes, 1 + stx + soh + (tc->nak_first_eot ? 2 : 1) + 1);
        free(got);
        world_end(&w);
}

/* 128-byte blocks for a tail of up to 896 bytes (7 x 134 wire bytes beat 1030), 1K otherwise. */
static struct transfer_case transfers[] = {
    {.name = "transfer-0", .size = 0},
    {.name = "transfer-1", .size = 1, .soh = 1},
    {.name = "transfer-127", .size = 127, .soh = 1, .together = true},
    {.name = "transfer-128", .size = 128, .soh = 1, .nak_first_eot = true},
    {.name = "transfer-129", .size = 129, .soh = 2, .chunk = 7},
    {.name = "transfer-896", .size = 896, .soh = 7},
    {.name = "transfer-897", .size = 897, .stx = 1},
    {.name = "transfer-1023", .size = 1023, .stx = 1, .lose_final_ack = true},
    {.name = "transfer-1024", .size = 1024, .stx = 1, .nak_first_eot = true},
    {.name = "transfer-1025", .size = 1025, .stx = 1, .soh = 1},
    {.name = "transfer-4900", .size = 4900, .stx = 4, .soh = 7, .chunk = 1000},
    {.name = "transfer-5000", .size = 5000, .stx = 5, .together = true, .lose_final_ack = true},
    {.name = "transfer-1MiB", .size = 1 << 20, .stx = 1024},
    {.name = "transfer-1MiB+77",
     .size = (1 << 20) + 77,
     .stx = 1024,
     .soh = 1,
     .nak_first_eot = true,
     .together = true},
    /* 300 blocks: the block number wraps past 255. */
    {.name = "transfer-300K+500", .size = 300 * 1024 + 500, .stx = 300, .soh = 4, .chunk = 333},
};

/* Block 0 is 128 bytes while name, size and their NULs fit, 1024 bytes beyond. */
static void test_header_size(void **state)
{
        static const struct {
                const char *name;    /* the reader's name */
                const char *options; /* the instance's options */
                const char *sent;    /* the name block 0 carries */
                size_t size;
                long block;
        } cases[] = {
            {"fw.bin", NULL, "fw.bin", 5, 128},
            {"/var/lib/gatewayd/store/fw-1.2.bin", NULL, "fw-1.2.bin", 5, 128},
            {"dir/", NULL, "image", 5, 128},
            {NULL, NULL, "image", 5, 128},
            {"fw.bin", "filename=custom.img", "custom.img", 5, 128},
            /* 122 + NUL + "1 0" + NUL = 127; 123 + 5 = 128; 124 + 5 = 129. */
            {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             NULL, NULL, 1, 128},
            {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             NULL, NULL, 1, 128},
            {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             NULL, NULL, 1, 1024},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct world w;
                const struct fake_step steps[] = {
                    FAKE_IN(C),      HEADER(cases[i].block), FAKE_IN(ACK C),
                    DATA(1, 128, 0), FAKE_IN(ACK),           FAKE_WRITTEN(EOT),
                };

                world_start(&w, cases[i].size, cases[i].name, cases[i].options);
                w.expect_name = cases[i].sent ? cases[i].sent : cases[i].name;
                fake_link_run(&w.f, steps, sizeof(steps) / sizeof(steps[0]));
                world_end(&w);
        }
}

static void test_name_too_long(void **state)
{
        char name[300];
        struct world w;
        const struct fake_step steps[] = {
            FAKE_IN(C),
            FAKE_RESULT(-ENAMETOOLONG),
            ERROR_IS("file name"),
            FAKE_SILENT(),
        };

        memset(name, 'n', 256);
        name[256] = '\0';
        world_start(&w, 10, name, NULL);
        fake_link_run(&w.f, steps, sizeof(steps) / sizeof(steps[0]));
        world_end(&w);
}

static void test_bad_options(void **state)
{
        static const char *const bad[] = {
            "retries=abc",
            "retries=1001",
            "retries=-1",
            "ack-timeout-ms=0",
            "ack-timeout-ms=3600001",
            "start-timeout-ms=",
            "final-ack-timeout-ms=1x",
            "filename=a/b",
            "filename=nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
            "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
        };
        static const char *const good[] = {
            "retries=0",
            "retries=0x10",
            "ack-timeout-ms=1,start-timeout-ms=1,final-ack-timeout-ms=1",
            "filename=x",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct fake_link f;
                struct gw_options *o = parse_opts(bad[i]);

                fake_link_init(&f, &gw_protocol_ymodem_ops);
                if (fake_link_open(&f, o) != -EINVAL)
                        fail_msg("%s accepted", bad[i]);
                assert_true(f.error[0] != '\0');
                assert_int_equal(f.deadlines_set, 0);
                fake_link_done(&f);
                gw_options_free(o);
        }
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                struct fake_link f;
                struct gw_options *o = parse_opts(good[i]);

                fake_link_init(&f, &gw_protocol_ymodem_ops);
                if (fake_link_open(&f, o) != 0)
                        fail_msg("%s refused: %s", good[i], f.error);
                fake_link_done(&f);
                gw_options_free(o);
        }
}

static void test_install_misuse(void **state)
{
        struct world w;
        struct gw_reader no_pread = {.size = 1, .name = "x"};

        world_start(&w, 10, "fw.bin", NULL);
        assert_int_equal(fake_link_install(&w.f, &w.reader), -EBUSY);
        world_end(&w);

        {
                struct fake_link f;

                fake_link_init(&f, &gw_protocol_ymodem_ops);
                assert_int_equal(fake_link_open(&f, NULL), 0);
                assert_int_equal(fake_link_install(&f, NULL), -EINVAL);
                assert_int_equal(fake_link_install(&f, &no_pread), -EINVAL);
                /* Before install: cancel writes nothing; input and timeouts do nothing. */
                assert_int_equal(fake_link_cancel(&f), -ECANCELED);
                assert_int_equal(fake_link_deliver(&f, C, 1), GW_PROTO_CONTINUE);
                assert_int_equal(f.ops->timeout(f.priv), GW_PROTO_CONTINUE);
                assert_int_equal(fake_link_pending(&f), 0);
                fake_link_done(&f);
        }
}

static void test_write_error(void **state)
{
        struct world w;
        const struct fake_step steps[] = {
            FAKE_IN(C), FAKE_RESULT(-EPIPE), ERROR_IS("writing"), FAKE_IN(ACK), FAKE_RESULT(-EPIPE),
        };

        world_start(&w, 10, "fw.bin", NULL);
        w.f.write_error = -EPIPE;
        fake_link_run(&w.f, steps, sizeof(steps) / sizeof(steps[0]));
        world_end(&w);
}

static void test_reader_errors(void **state)
{
        struct world w;
        const struct fake_step failing[] = {
            BEGIN,         FAKE_IN(ACK), FAKE_RESULT(-EIO), ERROR_IS("reading the image at 128"),
            FAKE_SILENT(),
        };
        const struct fake_step truncated[] = {
            BEGIN, FAKE_IN(ACK), FAKE_RESULT(-EIO), ERROR_IS("ended at 150"), FAKE_SILENT(),
        };

        world_start(&w, SCRIPT_SIZE, "fw.bin", NULL);
        w.mem.fail_from = 128;
        fake_link_run(&w.f, failing, sizeof(failing) / sizeof(failing[0]));
        world_end(&w);

        world_start(&w, SCRIPT_SIZE, "fw.bin", NULL);
        w.mem.avail = 150;
        fake_link_run(&w.f, truncated, sizeof(truncated) / sizeof(truncated[0]));
        world_end(&w);
}

static void test_crc16(void **state)
{
        static const struct {
                const char *in;
                uint16_t crc;
        } vectors[] = {
            {"", 0x0000},
            {"123456789", 0x31c3},
            {"A", 0x58e5},
        };
        uint8_t buf[4096];

        for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
                assert_int_equal(gw_crc16_xmodem(0, vectors[i].in, strlen(vectors[i].in)),
                                 vectors[i].crc);
        fill(buf, sizeof(buf), 7);
        assert_int_equal(gw_crc16_xmodem(0, buf, sizeof(buf)), ref_crc(buf, sizeof(buf)));
        /* Incremental: continuing from a partial CRC gives the same result. */
        assert_int_equal(gw_crc16_xmodem(gw_crc16_xmodem(0, buf, 1000), buf + 1000, 3096),
                         ref_crc(buf, sizeof(buf)));
}

/* Random receiver bytes and timer expiries: the sender always ends in DONE or an error it
 * documents, writes no more than one 1K block per call, and never hangs. */
static void test_random_receiver(void **state)
{
        static const uint8_t alphabet[] = {'C', 0x06, 0x06, 0x06, 0x15, 0x18, 0x04, 0x00, 0xff};

        for (uint32_t seed = 1; seed <= 200; seed++) {
                struct world w;
                uint32_t x = seed;
                int r = GW_PROTO_CONTINUE;
                unsigned steps;

                world_start(&w, 1000 + seed * 37, "r.bin", seed % 2 ? "retries=3" : NULL);
                for (steps = 0; steps < 20000 && r == GW_PROTO_CONTINUE; steps++) {
                        uint8_t in[8];
                        size_t n;

                        x = x * 1103515245u + 12345u;
                        n = (x >> 16) % sizeof(in);
                        for (size_t i = 0; i < n; i++) {
                                x = x * 1103515245u + 12345u;
                                in[i] = alphabet[(x >> 16) % sizeof(alphabet)];
                        }
                        if (n == 0 && w.f.deadline != 0)
                                r = fake_link_expire(&w.f);
                        else
                                r = fake_link_deliver(&w.f, in, n);
                        assert_true(fake_link_pending(&w.f) <= 1029);
                        fake_link_take(&w.f, NULL, fake_link_pending(&w.f));
                        if (r == GW_PROTO_CONTINUE)
                                assert_true(w.f.deadline > w.f.now);
                }
                assert_true(r != GW_PROTO_CONTINUE);
                assert_true(r == GW_PROTO_DONE || r == -ECANCELED || r == -ETIMEDOUT || r == -EIO ||
                            r == -EPROTONOSUPPORT);
                assert_int_equal(w.f.deadline, 0);
                world_end(&w);
        }
}

int main(void)
{
        static const struct CMUnitTest fixed[] = {
            cmocka_unit_test(test_crc16),           cmocka_unit_test(test_retries_exhausted),
            cmocka_unit_test(test_header_size),     cmocka_unit_test(test_name_too_long),
            cmocka_unit_test(test_bad_options),     cmocka_unit_test(test_install_misuse),
            cmocka_unit_test(test_write_error),     cmocka_unit_test(test_reader_errors),
            cmocka_unit_test(test_random_receiver),
        };
        const size_t n_transfers = sizeof(transfers) / sizeof(transfers[0]);
        const size_t n_scripts = sizeof(scripts) / sizeof(scripts[0]);
        const size_t n_fixed = sizeof(fixed) / sizeof(fixed[0]);
        struct CMUnitTest tests[sizeof(transfers) / sizeof(transfers[0]) +
                                sizeof(scripts) / sizeof(scripts[0]) +
                                sizeof(fixed) / sizeof(fixed[0])];
        size_t n = 0;

        /* One named test per table row. */
        for (size_t i = 0; i < n_transfers; i++)
                tests[n++] = (struct CMUnitTest){.name = transfers[i].name,
                                                 .test_func = test_transfer,
                                                 .initial_state = &transfers[i]};
        for (size_t i = 0; i < n_scripts; i++)
                tests[n++] = (struct CMUnitTest){.name = scripts[i].name,
                                                 .test_func = test_script,
                                                 .initial_state = &scripts[i]};
        for (size_t i = 0; i < n_fixed; i++)
                tests[n++] = fixed[i];
        return _cmocka_run_group_tests("ymodem", tests, n, NULL, NULL);
}
