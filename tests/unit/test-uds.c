/* Tests for the uds protocol plugin (protocols/uds/): the whole reprogramming sequence against
 * a scripted ECU on the fake frames link (fake-can.h) with a virtual clock, every request's
 * bytes checked: response pending and its cap, every NRC named, security access with the
 * seed-to-key module and program (spawned for real), block lengths, the counter wrap, repeats,
 * resume, TesterPresent, cancel, reset polling, identify, options and image checks. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw/flash.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "fake-can.h"

extern const struct gw_protocol_ops gw_protocol_uds_ops;

#define ADDRESS      0x08000000u
#define SECRET       0x5a5aa5a5u
#define SEED         0x11223344u
#define P2_MS        50
#define MARGIN_MS    200
#define DEFAULT_OPTS "address=0x08000000,tester-present-ms=0"
/* Straight to the programming session and the erase. */
#define SHORT_OPTS "extended-session=none,security-level=0,resume-did=none"

struct world {
        struct fake_can f;
        struct gw_options *opts;
        uint8_t *data;
        size_t size;
        struct gw_reader reader;
        /* The ECU's side of the transfer. */
        uint64_t offset;
        uint8_t counter;
        size_t block;
        char tmp[64]; /* a directory for scripts, "" = none */
};

static struct world w;

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct world *x = ctx;

        if (off >= x->size)
                return 0;
        if (n > x->size - off)
                n = x->size - (size_t) off;
        memcpy(buf, x->data + off, n);
        return (ssize_t) n;
}

static void set_opts(struct gw_options *o, const char *spec)
{
        char buf[1024], *save = NULL;

        if (!spec)
                return;
        assert_true(strlen(spec) < sizeof(buf));
        strcpy(buf, spec);
        for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');

                assert_non_null(eq);
                *eq = '\0';
                assert_int_equal(gw_options_set(o, kv, eq + 1), 0);
        }
}

static int setup(void **state)
{
        memset(&w, 0, sizeof(w));
        fake_can_init(&w.f, &gw_protocol_uds_ops);
        w.opts = gw_options_new();
        assert_non_null(w.opts);
        set_opts(w.opts, DEFAULT_OPTS);
        w.counter = 1;
        return 0;
}

static int teardown(void **state);

/* A new world for the next row of a table-driven test. */
static void fresh(void **state);

static int teardown(void **state)
{
        fake_can_done(&w.f);
        gw_options_free(w.opts);
        free(w.data);
        if (w.tmp[0]) {
                char cmd[128];

                snprintf(cmd, sizeof(cmd), "rm -rf %s", w.tmp);
                assert_int_equal(system(cmd), 0);
        }
        memset(&w, 0, sizeof(w));
        return 0;
}

static void fresh(void **state)
{
        teardown(state);
        setup(state);
}

/* Opens the instance with the default options, then spec's. */
static int open_uds(const char *spec)
{
        set_opts(w.opts, spec);
        return fake_can_open(&w.f, w.opts);
}

static void make_image(size_t size)
{
        free(w.data);
        w.size = size;
        w.data = malloc(size ? size : 1);
        assert_non_null(w.data);
        for (size_t i = 0; i < size; i++)
                w.data[i] = (uint8_t) (i * 31 + (i >> 8) + 7);
        w.reader =
            (struct gw_reader){.size = size, .name = "ecu.bin", .ctx = &w, .pread = mem_pread};
}

/* Opens with spec and installs a size-byte image; the first request must be out. */
static void start(size_t size, const char *spec)
{
        assert_int_equal(open_uds(spec), 0);
        make_image(size);
        assert_int_equal(fake_can_install(&w.f, &w.reader), GW_PROTO_CONTINUE);
        assert_true(fake_can_pending(&w.f) > 0);
}

#define RUN(steps) fake_can_run(&w.f, steps, sizeof(steps) / sizeof(steps[0]))

static uint32_t ref_key(uint32_t seed, uint32_t secret)
{
        uint32_t x = seed ^ secret;

        return (x << 7) | (x >> 25);
}

/* Bitwise CRC-32 (IEEE, reflected, zlib's), written independently of the code under test. */
static uint32_t ref_crc32(const uint8_t *p, size_t n)
{
        uint32_t crc = 0xffffffffu;

        for (size_t i = 0; i < n; i++) {
                crc ^= p[i];
                for (int b = 0; b < 8; b++)
                        crc = (crc & 1) ? (crc >> 1) ^ 0xedb88320u : crc >> 1;
        }
        return ~crc;
}

static bool msg_is(struct fake_can *f, const uint8_t *want, size_t n)
{
        if (f->msg_len != n || memcmp(f->msg, want, n) != 0) {
                fprintf(stderr, "request (%zu bytes):", f->msg_len);
                for (size_t i = 0; i < f->msg_len && i < 32; i++)
                        fprintf(stderr, " %02x", f->msg[i]);
                fprintf(stderr, "\nexpected (%zu bytes):", n);
                for (size_t i = 0; i < n && i < 32; i++)
                        fprintf(stderr, " %02x", want[i]);
                fprintf(stderr, "\n");
                return false;
        }
        return true;
}

/* SecurityAccess sendKey for seed arg[0] with secret arg[1], level arg[2] (0: 1). */
static bool key_request(struct fake_can *f, const struct fake_can_step *s)
{
        uint32_t k = ref_key((uint32_t) s->arg[0], (uint32_t) s->arg[1]);
        uint8_t level = s->arg[2] ? (uint8_t) s->arg[2] : 1;
        uint8_t want[6] = {0x27,
                           (uint8_t) (level + 1),
                           (uint8_t) (k >> 24),
                           (uint8_t) (k >> 16),
                           (uint8_t) (k >> 8),
                           (uint8_t) k};

        return fake_can_take_message(f) && msg_is(f, want, sizeof(want));
}

/* RoutineControl start arg[0] with the image's CRC-32. */
static bool crc_request(struct fake_can *f, const struct fake_can_step *s)
{
        uint32_t crc = ref_crc32(w.data, w.size);
        uint8_t want[8] = {0x31,
                           0x01,
                           (uint8_t) (s->arg[0] >> 8),
                           (uint8_t) s->arg[0],
                           (uint8_t) (crc >> 24),
                           (uint8_t) (crc >> 16),
                           (uint8_t) (crc >> 8),
                           (uint8_t) crc};

        return fake_can_take_message(f) && msg_is(f, want, sizeof(want));
}

/* The next TransferData must carry counter w.counter and the image at w.offset, arg[0] (or
 * w.block) bytes at most. */
static bool take_block(struct fake_can *f, uint8_t counter, uint64_t offset, size_t block)
{
        size_t n = w.size - offset < block ? w.size - (size_t) offset : block;

        if (!fake_can_take_message(f))
                return false;
        if (f->msg_len != 2 + n || f->msg[0] != 0x36 || f->msg[1] != counter ||
            memcmp(f->msg + 2, w.data + offset, n) != 0) {
                fprintf(stderr, "TransferData: %zu bytes, counter %02x; expected %zu, %02x\n",
                        f->msg_len, f->msg[1], 2 + n, counter);
                return false;
        }
        return true;
}

/* arg[0] blocks of arg[1] image bytes from w.offset: each taken, checked, acknowledged. */
static bool transfer_blocks(struct fake_can *f, const struct fake_can_step *s)
{
        for (long i = 0; i < s->arg[0]; i++) {
                uint8_t ack[2] = {0x76, w.counter};
                size_t n;

                if (!take_block(f, w.counter, w.offset, (size_t) s->arg[1])) {
                        fprintf(stderr, "block %ld\n", i);
                        return false;
                }
                n = f->msg_len - 2;
                if (!fake_can_send_message(f, ack, sizeof(ack)) || f->last != GW_PROTO_CONTINUE)
                        return false;
                w.offset += n;
                w.counter++;
                if (f->progress_done != w.offset || f->progress_total != w.size) {
                        fprintf(stderr, "progress %llu of %llu, expected %llu\n",
                                (unsigned long long) f->progress_done,
                                (unsigned long long) f->progress_total,
                                (unsigned long long) w.offset);
                        return false;
                }
        }
        return true;
}

/* The block arg[0] (counter) of arg[1] bytes, taken and checked, not acknowledged. */
static bool block_sent(struct fake_can *f, const struct fake_can_step *s)
{
        return take_block(f, (uint8_t) s->arg[0], (uint64_t) (s->arg[0] - 1) * (size_t) s->arg[1],
                          (size_t) s->arg[1]);
}

static bool error_has(struct fake_can *f, const struct fake_can_step *s)
{
        if (!strstr(f->error, (const char *) s->arg[0])) {
                fprintf(stderr, "error \"%s\" lacks \"%s\"\n", f->error, (const char *) s->arg[0]);
                return false;
        }
        return true;
}

/* The deadline is arg[0] us ahead, give or take arg[1]. */
static bool deadline_in(struct fake_can *f, const struct fake_can_step *s)
{
        uint64_t ahead = f->deadline - f->now;

        if (f->deadline == 0 || ahead < (uint64_t) (s->arg[0] - s->arg[1]) ||
            ahead > (uint64_t) (s->arg[0] + s->arg[1])) {
                fprintf(stderr, "deadline %lld us ahead, expected %ld\n",
                        (long long) (f->deadline - f->now), s->arg[0]);
                return false;
        }
        return true;
}

/* 3000 bytes at 0x08000000: the erase and download requests. */
#define ERASE_3000     "\x31\x01\xff\x00\x44\x08\x00\x00\x00\x00\x00\x0b\xb8"
#define DOWNLOAD_3000  "\x34\x00\x44\x08\x00\x00\x00\x00\x00\x0b\xb8"
#define SESSION_RSP(s) "\x50" s "\x00\x32\x01\xf4" /* P2 50 ms, P2* 5000 ms */

/* ---- The whole sequence. */

static void test_happy_path(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x03"),
            CAN_RSP(SESSION_RSP("\x03")),
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x27\x01"),
            CAN_RSP("\x67\x01\x11\x22\x33\x44"),
            CAN_CHECK(key_request, SEED, SECRET, 0),
            CAN_RSP("\x67\x02"),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RSP("\x62\xf1\xa0\x00\x00\x00\x00"),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x71\x01\xff\x00\x00"),
            CAN_REQ(DOWNLOAD_3000),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 3, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x00"),
            CAN_REQ("\x11\x01"),
            CAN_RSP("\x51\x01"),
            /* The ECU restarts: asked after reset-delay-ms. */
            CAN_SILENT(),
            CAN_EXPIRE(500000),
            CAN_REQ("\x3e\x00"),
            CAN_RSP("\x7e\x00"),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_SILENT(),
        };
        char spec[512];

        snprintf(spec, sizeof(spec), "seedkey-module=%s", getenv("GW_TEST_SEEDKEY_MODULE"));
        start(3000, spec);
        RUN(steps);
        assert_int_equal(w.f.progress_done, 3000);
        assert_int_equal(w.f.deadline, 0);
}

static void test_pre_programming_steps(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x03"),
            CAN_RSP(SESSION_RSP("\x03")),
            CAN_REQ("\x85\x02"),
            CAN_RSP("\xc5\x02"),
            CAN_REQ("\x28\x03\x01"),
            CAN_RSP("\x68\x03"),
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x27\x03"),
            /* A zero seed: unlocked already, no key. */
            CAN_RSP("\x67\x03\x00\x00\x00\x00"),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, "dtc-setting-off=true,communication-control=0x0301,security-level=3");
        RUN(steps);
}

/* Other ECUs: routine ids and parameter layouts, the address and length format, the data
 * format, no F1A0, no check, no reset. */
static void test_configured_ecu(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP("\x50\x02"), /* no timing in the response: the defaults stay */
            CAN_REQ("\x31\x01\xff\x01\x08\x00\x00\x00\x0b\xb8"),
            CAN_RSP("\x71\x01\xff\x01"),
            CAN_REQ("\x34\x11\x24\x08\x00\x00\x00\x0b\xb8"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 3, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_REQ("\x31\x01\xf0\x0f\xab\xcd"),
            CAN_RSP("\x71\x01\xf0\x0f"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        start(3000, SHORT_OPTS ",erase-routine=0xff01,erase-params=address-size,"
                               "address-length-format=0x24,data-format=0x11,check-routine=0xf00f,"
                               "check-params=0xabcd,reset-type=none");
        RUN(steps);
}

static void test_no_erase_no_check(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x10"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 1, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_REQ("\x11\x03"),
            CAN_RSP("\x51\x03"),
            /* reset-wait=session: DiagnosticSessionControl default until answered. */
            CAN_EXPIRE(100000),
            CAN_REQ("\x10\x01"),
            CAN_RSP(SESSION_RSP("\x01")),
            CAN_RESULT(GW_PROTO_DONE),
        };

        start(16, SHORT_OPTS ",erase-routine=none,check-routine=none,reset-type=3,"
                             "reset-wait=session,reset-delay-ms=100");
        RUN(steps);
}

static void test_erase_params_fixed(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x31\x01\xff\x00\x01\x02"),
            CAN_RSP("\x71\x01\xff\x00"),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x10"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(16, SHORT_OPTS ",erase-params=0x0102");
        RUN(steps);
}

/* ---- Timing. */

static void test_timing_from_session(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            /* Before any response: the default P2, one frame on the wire (270 us). */
            CAN_CHECK(deadline_in, 50000 + 270, 0, 0),
            CAN_RSP("\x50\x02\x00\x19\x00\x64"), /* P2 25 ms, P2* 1000 ms */
            CAN_REQ(ERASE_3000),
            /* Two frames of 135 bits at 500 kbit/s. */
            CAN_CHECK(deadline_in, 25000 + 540, 0, 0),
            CAN_RSP("\x7f\x31\x78"),
            CAN_CHECK(deadline_in, 1000000, 0, 0),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, SHORT_OPTS ",timing-margin-ms=0");
        RUN(steps);
}

static void test_timing_not_from_ecu(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),           CAN_RSP("\x50\x02\x00\x19\x00\x64"),
            CAN_REQ(ERASE_3000),           CAN_CHECK(deadline_in, 40000 + 540, 0, 0),
            CAN_RSP("\x7f\x31\x78"),       CAN_CHECK(deadline_in, 3000000, 0, 0),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, SHORT_OPTS ",timing-margin-ms=0,ecu-timing=false,p2-ms=40,p2-star-ms=3000");
        RUN(steps);
}

static void test_response_pending(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x7f\x31\x78"),
            /* P2* from the session response, plus the margin. */
            CAN_CHECK(deadline_in, 5000000 + MARGIN_MS * 1000, 0, 0),
            CAN_ADVANCE(5000000),
            CAN_RSP("\x7f\x31\x78"),
            CAN_ADVANCE(5100000),
            CAN_RSP("\x7f\x31\x78"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            /* A response to another service is no answer to this one. */
            CAN_RSP("\x7f\x22\x31"),
            CAN_RSP("\x62\xf1\xa0\x00"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_RSP("\x71\x01\xff\x00\x00"),
            CAN_REQ(DOWNLOAD_3000),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
}

static void test_response_pending_cap(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x7f\x31\x78"),
            CAN_RSP("\x7f\x31\x78"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_RSP("\x7f\x31\x78"),
            CAN_RESULT(-ETIMEDOUT),
            CAN_CHECK(error_has, (long) "more than 2 times", 0, 0),
            CAN_SILENT(),
        };

        start(3000, SHORT_OPTS ",response-pending-max=2");
        RUN(steps);
}

static void test_response_pending_then_silence(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x7f\x31\x78"),
            CAN_EXPIRE(5200000),
            CAN_RESULT(-ETIMEDOUT),
            CAN_CHECK(error_has,
                      (long) "RoutineControl: no response within 5200 ms of the last "
                             "responsePending",
                      0, 0),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
}

static void test_no_response(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_EXPIRE(0),
            CAN_RESULT(-ETIMEDOUT),
            CAN_CHECK(error_has,
                      (long) "DiagnosticSessionControl: no response within 250 ms: no ECU "
                             "answers on 0x7e8 to requests on 0x7e0 (tx-id, rx-id wrong, or the "
                             "ECU is off?)",
                      0, 0),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
}

/* An ECU that answered and then falls silent: said so, not blamed on the ids. */
static void test_stops_answering(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_EXPIRE(0),
            CAN_RESULT(-ETIMEDOUT),
            CAN_CHECK(error_has,
                      (long) "RequestDownload: no response within 250 ms: the ECU stopped "
                             "answering",
                      0, 0),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
}

static void test_busy_repeat(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP("\x7f\x10\x21"),
            CAN_SILENT(),
            CAN_EXPIRE(100000),
            CAN_REQ("\x10\x02"),
            CAN_RSP("\x7f\x10\x21"),
            CAN_EXPIRE(100000),
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x7f\x31\x21"),
            CAN_EXPIRE(100000),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x7f\x31\x21"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_EXPIRE(100000),
            CAN_REQ(ERASE_3000),
            /* busy-retries (2) in a row: the third fails. */
            CAN_RSP("\x7f\x31\x21"),
            CAN_RESULT(-EBUSY),
            CAN_CHECK(error_has, (long) "0x21 busyRepeatRequest", 0, 0),
        };

        start(3000, SHORT_OPTS ",busy-retries=2");
        RUN(steps);
}

/* ---- Negative responses: every code named. */

static const struct {
        uint8_t nrc;
        const char *name;
} nrc_rows[] = {
    {0x10, "generalReject"},
    {0x11, "serviceNotSupported"},
    {0x12, "subFunctionNotSupported"},
    {0x13, "incorrectMessageLengthOrInvalidFormat"},
    {0x14, "responseTooLong"},
    {0x21, "busyRepeatRequest"},
    {0x22, "conditionsNotCorrect"},
    {0x24, "requestSequenceError"},
    {0x25, "noResponseFromSubnetComponent"},
    {0x26, "failurePreventsExecutionOfRequestedAction"},
    {0x31, "requestOutOfRange"},
    {0x33, "securityAccessDenied"},
    {0x34, "authenticationRequired"},
    {0x35, "invalidKey"},
    {0x36, "exceedNumberOfAttempts"},
    {0x37, "requiredTimeDelayNotExpired"},
    {0x38, "secureDataTransmissionRequired"},
    {0x39, "secureDataTransmissionNotAllowed"},
    {0x3a, "secureDataVerificationFailed"},
    {0x3b, "reservedByExtendedDataLinkSecurityDocument"},
    {0x50, "certificateVerificationFailedInvalidTimePeriod"},
    {0x51, "certificateVerificationFailedInvalidSignature"},
    {0x52, "certificateVerificationFailedInvalidChainOfTrust"},
    {0x53, "certificateVerificationFailedInvalidType"},
    {0x54, "certificateVerificationFailedInvalidFormat"},
    {0x55, "certificateVerificationFailedInvalidContent"},
    {0x56, "certificateVerificationFailedInvalidScope"},
    {0x57, "certificateVerificationFailedInvalidCertificate"},
    {0x58, "ownershipVerificationFailed"},
    {0x59, "challengeCalculationFailed"},
    {0x5a, "settingAccessRightsFailed"},
    {0x5b, "sessionKeyCreationDerivationFailed"},
    {0x5c, "configurationDataUsageFailed"},
    {0x5d, "deAuthenticationFailed"},
    {0x70, "uploadDownloadNotAccepted"},
    {0x71, "transferDataSuspended"},
    {0x72, "generalProgrammingFailure"},
    {0x73, "wrongBlockSequenceCounter"},
    {0x7e, "subFunctionNotSupportedInActiveSession"},
    {0x7f, "serviceNotSupportedInActiveSession"},
    {0x81, "rpmTooHigh"},
    {0x82, "rpmTooLow"},
    {0x83, "engineIsRunning"},
    {0x84, "engineIsNotRunning"},
    {0x85, "engineRunTimeTooLow"},
    {0x86, "temperatureTooHigh"},
    {0x87, "temperatureTooLow"},
    {0x88, "vehicleSpeedTooHigh"},
    {0x89, "vehicleSpeedTooLow"},
    {0x8a, "throttle/PedalTooHigh"},
    {0x8b, "throttle/PedalTooLow"},
    {0x8c, "transmissionRangeNotInNeutral"},
    {0x8d, "transmissionRangeNotInGear"},
    {0x8f, "brakeSwitch(es)NotClosed"},
    {0x90, "shifterLeverNotInPark"},
    {0x91, "torqueConverterClutchLocked"},
    {0x92, "voltageTooHigh"},
    {0x93, "voltageTooLow"},
    {0x94, "resourceTemporarilyNotAvailable"},
    {0x95, "reservedForSpecificConditionsNotCorrect"},
    {0xef, "reservedForSpecificConditionsNotCorrect"},
    {0xf0, "vehicleManufacturerSpecificConditionsNotCorrect"},
    {0xfe, "vehicleManufacturerSpecificConditionsNotCorrect"},
    {0x00, "ISOSAEReserved"},
    {0x01, "ISOSAEReserved"},
    {0xff, "ISOSAEReserved"},
};

static void test_nrc_names(void **state)
{
        for (size_t i = 0; i < sizeof(nrc_rows) / sizeof(nrc_rows[0]); i++) {
                uint8_t nr[3] = {0x7f, 0x10, nrc_rows[i].nrc};
                char want[128];

                fresh(state);
                start(3000, SHORT_OPTS ",busy-retries=0");
                assert_true(fake_can_take_message(&w.f));
                assert_true(fake_can_send_message(&w.f, nr, sizeof(nr)));
                assert_true(w.f.last < 0);
                snprintf(want, sizeof(want),
                         "DiagnosticSessionControl: negative response 0x%02x %s", nrc_rows[i].nrc,
                         nrc_rows[i].name);
                /* The name ends the reason. */
                if (strlen(w.f.error) < strlen(want) ||
                    strcmp(w.f.error + strlen(w.f.error) - strlen(want), want) != 0)
                        fail_msg("NRC 0x%02x: error \"%s\"", nrc_rows[i].nrc, w.f.error);
                assert_int_equal(fake_can_pending(&w.f), 0);
                assert_int_equal(w.f.deadline, 0);
        }
}

static void test_nrc_errnos(void **state)
{
        static const struct {
                uint8_t nrc;
                int err;
        } rows[] = {
            {0x11, -EOPNOTSUPP}, {0x22, -EAGAIN}, {0x31, -ERANGE}, {0x33, -EACCES}, {0x35, -EACCES},
            {0x72, -EIO},        {0x92, -EAGAIN}, {0x10, -EPROTO}, {0xf0, -EPROTO},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                uint8_t nr[3] = {0x7f, 0x10, rows[i].nrc};

                fresh(state);
                start(3000, SHORT_OPTS);
                assert_true(fake_can_take_message(&w.f));
                assert_true(fake_can_send_message(&w.f, nr, sizeof(nr)));
                assert_int_equal(w.f.last, rows[i].err);
        }
}

static void test_malformed_responses_ignored(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            /* Too short a negative response, an echo for another session, an unknown SID. */
            CAN_RSP("\x7f\x10"),
            CAN_RSP("\x50\x03\x00\x32\x01\xf4"),
            CAN_RSP("\x99\x01"),
            CAN_RSP("\x50"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
}

/* ---- Security access. */

#define UNLOCK_HEAD                                                                                \
        CAN_REQ("\x10\x02"), CAN_RSP(SESSION_RSP("\x02")), CAN_REQ("\x27\x01"),                    \
            CAN_RSP("\x67\x01\x11\x22\x33\x44")

static void test_wrong_key(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_CHECK(key_request, SEED, 0x01020304, 0),
            CAN_RSP("\x7f\x27\x35"),
            CAN_RESULT(-EACCES),
            CAN_CHECK(error_has, (long) "SecurityAccess: negative response 0x35 invalidKey", 0, 0),
            CAN_SILENT(),
        };
        char spec[512];

        snprintf(spec, sizeof(spec),
                 "extended-session=none,seedkey-module=%s,seedkey-params=secret=0x01020304",
                 getenv("GW_TEST_SEEDKEY_MODULE"));
        start(3000, spec);
        RUN(steps);
}

static void test_no_key_source(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_RESULT(-ENOKEY),
            CAN_CHECK(error_has, (long) "no seedkey-module or seedkey-program is configured", 0, 0),
            CAN_SILENT(),
        };

        start(3000, "extended-session=none");
        RUN(steps);
}

static void test_seed_too_long(void **state)
{
        uint8_t rsp[2 + 300] = {0x67, 0x01, 0x55};

        start(3000, "extended-session=none,max-message=4095");
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, rsp, sizeof(rsp)));
        assert_int_equal(w.f.last, -EPROTO);
        assert_non_null(strstr(w.f.error, "a seed of 300 bytes"));
}

static void test_seedkey_module_missing(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_RESULT(-ENOENT),
            CAN_CHECK(error_has, (long) "cannot load seedkey-module /nonexistent/seedkey.so", 0, 0),
        };

        start(3000, "extended-session=none,seedkey-module=/nonexistent/seedkey.so");
        RUN(steps);
}

static void test_seedkey_module_no_symbol(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_RESULT(-ENOEXEC),
            CAN_CHECK(error_has, (long) "does not export gw_uds_seedkey_v1", 0, 0),
        };
        char spec[512];

        snprintf(spec, sizeof(spec), "extended-session=none,seedkey-module=%s/libplugin-dummy.so",
                 getenv("GW_TEST_PLUGINS"));
        start(3000, spec);
        RUN(steps);
}

static void test_seedkey_module_refuses(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x27\x01"),
            /* The test algorithm takes 4-byte seeds only. */
            CAN_RSP("\x67\x01\x11\x22\x33"),
            CAN_RESULT(-EINVAL),
            CAN_CHECK(error_has, (long) "the seedkey-module failed", 0, 0),
        };
        char spec[512];

        snprintf(spec, sizeof(spec), "extended-session=none,seedkey-module=%s",
                 getenv("GW_TEST_SEEDKEY_MODULE"));
        start(3000, spec);
        RUN(steps);
}

/* Polls a running key program on the virtual clock, letting real time pass, until the
 * instance sends something or ends. */
static bool wait_key_program(struct fake_can *f, const struct fake_can_step *s)
{
        for (int i = 0; i < 1000; i++) {
                if (fake_can_pending(f) > 0 || f->last != GW_PROTO_CONTINUE)
                        return true;
                usleep(5000);
                fake_can_expire(f);
        }
        fprintf(stderr, "the key program never finished\n");
        return false;
}

static void test_seedkey_program(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_CHECK(wait_key_program, 0, 0, 0),
            CAN_CHECK(key_request, SEED, 0x0badcafe, 0),
            CAN_RSP("\x67\x02"),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };
        char spec[512];

        snprintf(spec, sizeof(spec),
                 "extended-session=none,seedkey-program=%s,seedkey-args=--secret 0x0badcafe",
                 getenv("GW_TEST_SEEDKEY_PROGRAM"));
        start(3000, spec);
        RUN(steps);
}

static void test_seedkey_program_stdin(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_CHECK(wait_key_program, 0, 0, 0),
            CAN_CHECK(key_request, SEED, SECRET, 0),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };
        char spec[512];

        snprintf(spec, sizeof(spec), "extended-session=none,seedkey-program=%s,seedkey-input=stdin",
                 getenv("GW_TEST_SEEDKEY_PROGRAM"));
        start(3000, spec);
        RUN(steps);
}

/* A script of ours as the key program: it sees the seed in its environment too. */
static void write_script(const char *name, const char *body, char *path, size_t n)
{
        FILE *fp;

        if (!w.tmp[0]) {
                snprintf(w.tmp, sizeof(w.tmp), "/tmp/test-uds-XXXXXX");
                assert_non_null(mkdtemp(w.tmp));
        }
        snprintf(path, n, "%s/%s", w.tmp, name);
        fp = fopen(path, "w");
        assert_non_null(fp);
        fprintf(fp, "#!/bin/sh\n%s", body);
        fclose(fp);
        assert_int_equal(chmod(path, 0755), 0);
}

static void test_seedkey_program_environment(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_CHECK(wait_key_program, 0, 0, 0),
            /* The script answers with the seed itself, prefixed, level in front. */
            CAN_REQ("\x27\x02\x01\x11\x22\x33\x44"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };
        char path[128], spec[512];

        write_script("key",
                     "test \"$1\" = one || exit 3\n"
                     "test \"$2\" = \"$GW_UDS_SEED\" || exit 4\n"
                     "printf ' 0x0%s%s \\n' \"$GW_UDS_LEVEL\" \"$GW_UDS_SEED\"\n",
                     path, sizeof(path));
        snprintf(spec, sizeof(spec), "extended-session=none,seedkey-program=%s,seedkey-args=one",
                 path);
        start(3000, spec);
        RUN(steps);
}

static void test_seedkey_program_failures(void **state)
{
        static const struct {
                const char *body;
                int err;
                const char *why;
        } rows[] = {
            {"exit 7\n", -EIO, "exited with status 7"},
            {"echo zz\n", -EINVAL, "did not write one key in hex"},
            {"echo 123\n", -EINVAL, "did not write one key in hex"},
            {"echo 12 34\n", -EINVAL, "did not write one key in hex"},
            {"kill -9 $$\n", -EIO, "killed by signal 9"},
            {"head -c 2000 /dev/zero | tr '\\0' 'a'\n", -EMSGSIZE, "wrote more than 1024 bytes"},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                char path[128], spec[512];

                fresh(state);
                write_script("key", rows[i].body, path, sizeof(path));
                snprintf(spec, sizeof(spec), "extended-session=none,seedkey-program=%s", path);
                start(3000, spec);
                for (int j = 0; j < 4; j++) {
                        assert_true(fake_can_take_message(&w.f));
                        if (j == 0)
                                fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"),
                                                      6);
                        else if (j == 1) {
                                fake_can_send_message(
                                    &w.f, (const uint8_t *) "\x67\x01\x11\x22\x33\x44", 6);
                                break;
                        }
                }
                for (int j = 0; j < 2000 && w.f.last == GW_PROTO_CONTINUE; j++) {
                        usleep(2000);
                        fake_can_expire(&w.f);
                }
                if (w.f.last != rows[i].err || !strstr(w.f.error, rows[i].why))
                        fail_msg("row %zu: %d \"%s\"", i, w.f.last, w.f.error);
        }
}

static void test_seedkey_program_missing(void **state)
{
        static const struct fake_can_step steps[] = {
            UNLOCK_HEAD,
            CAN_RESULT(-ENOENT),
            CAN_CHECK(error_has, (long) "cannot start seedkey-program /nonexistent/key", 0, 0),
        };

        start(3000, "extended-session=none,seedkey-program=/nonexistent/key");
        RUN(steps);
}

/* A program that does not answer: TesterPresent keeps the session open every
 * tester-present-ms while nothing else is sent, and the key timeout ends it. */
static void test_tester_present_while_idle(void **state)
{
        char path[128], spec[512];
        uint64_t last_request, seen[3];
        size_t n = 0;

        write_script("slow", "exec sleep 30\n", path, sizeof(path));
        snprintf(spec, sizeof(spec),
                 "extended-session=none,seedkey-program=%s,seedkey-timeout-ms=5000,"
                 "tester-present-ms=2000",
                 path);
        start(3000, spec);
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
        assert_true(fake_can_take_message(&w.f));
        last_request = w.f.last_taken_at;
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x67\x01\x11\x22\x33\x44", 6));
        while (w.f.last == GW_PROTO_CONTINUE) {
                const struct fake_can_sent *s;

                fake_can_expire(&w.f);
                for (s = fake_can_take(&w.f); s; s = fake_can_take(&w.f)) {
                        assert_int_equal(s->f.len, 8);
                        assert_memory_equal(s->f.data, "\x02\x3e\x80\xcc\xcc\xcc\xcc\xcc", 8);
                        assert_true(n < 3);
                        seen[n++] = s->at;
                }
        }
        assert_int_equal(w.f.last, -ETIMEDOUT);
        assert_non_null(strstr(w.f.error, "gave no key within 5000 ms"));
        /* 2 s after the last request, then every 2 s. */
        assert_int_equal(n, 2);
        assert_int_equal(seen[0] - last_request, 2000000);
        assert_int_equal(seen[1] - seen[0], 2000000);
}

static void test_tester_present_off(void **state)
{
        char path[128], spec[512];

        write_script("slow", "exec sleep 30\n", path, sizeof(path));
        snprintf(spec, sizeof(spec),
                 "extended-session=none,seedkey-program=%s,seedkey-timeout-ms=5000", path);
        start(3000, spec);
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x67\x01\x11\x22\x33\x44", 6));
        while (w.f.last == GW_PROTO_CONTINUE)
                fake_can_expire(&w.f);
        assert_int_equal(w.f.last, -ETIMEDOUT);
        assert_int_equal(fake_can_pending(&w.f), 0);
}

/* ---- RequestDownload's block length. */

static void test_block_length_formats(void **state)
{
        static const struct {
                const char *rsp;
                size_t rsp_len;
                size_t block; /* image bytes per TransferData, 0: refused */
        } rows[] = {
            {"\x74\x10\x82", 3, 128},
            {"\x74\x20\x04\x02", 4, 1024},
            {"\x74\x30\x00\x01\x02", 5, 256},
            {"\x74\x40\x00\x00\x00\x12", 6, 16},
            /* More than ISO-TP carries: capped at max-message (4095) less SID and counter. */
            {"\x74\x40\xff\xff\xff\xff", 6, 4093},
            {"\x74\x20\x10\x02", 4, 4093},
            /* The low nibble is reserved: ignored. */
            {"\x74\x2f\x04\x02", 4, 1024},
            /* Refused: no length, 0, no room for data, more bytes than a length needs, cut
             * short. */
            {"\x74\x00", 2, 0},
            {"\x74\x20\x00\x00", 4, 0},
            {"\x74\x20\x00\x02", 4, 0},
            {"\x74\x50\x00\x00\x00\x04\x02", 7, 0},
            {"\x74\x80\x00\x00\x00\x00\x00\x00\x04\x02", 10, 0},
            {"\x74\x20\x04", 3, 0},
            {"\x74", 1, 0},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                fresh(state);
                start(5000, SHORT_OPTS ",erase-routine=none");
                assert_true(fake_can_take_message(&w.f));
                assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
                assert_true(fake_can_take_message(&w.f));
                assert_int_equal(w.f.msg[0], 0x34);
                assert_true(
                    fake_can_send_message(&w.f, (const uint8_t *) rows[i].rsp, rows[i].rsp_len));
                if (rows[i].block == 0) {
                        if (w.f.last != -EPROTO)
                                fail_msg("row %zu: %d (%s)", i, w.f.last, w.f.error);
                        assert_non_null(strstr(w.f.error, "RequestDownload"));
                } else {
                        assert_int_equal(w.f.last, GW_PROTO_CONTINUE);
                        if (!take_block(&w.f, 1, 0, rows[i].block))
                                fail_msg("row %zu", i);
                }
        }
}

static void test_block_length_option(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x30"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 3, 16, 0),
            CAN_REQ("\x37"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(48, SHORT_OPTS ",erase-routine=none,max-block-length=18");
        RUN(steps);
}

/* 300 blocks: the counter runs 1..255, 0, 1... */
static void test_counter_wraps(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x12\xc0"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_CHECK(transfer_blocks, 255, 16, 0),
            /* Block 256 has counter 0. */
            CAN_CHECK(transfer_blocks, 45, 16, 0),
            CAN_REQ("\x37"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(300 * 16, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
        assert_int_equal(w.counter, 45);
}

/* A TransferData response lost: the block goes again with the same counter; the late answer
 * to the first is taken, the one to the repeat ignored. */
static void test_lost_transfer_response(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_RSP("\x76\x01"),
            CAN_CHECK(block_sent, 2, 16, 0),
            CAN_SILENT(),
            CAN_EXPIRE(0),
            CAN_CHECK(block_sent, 2, 16, 0),
            CAN_RSP("\x76\x02"),
            CAN_CHECK(block_sent, 3, 16, 0),
            /* The answer to the repeat arrives late: not block 3's. */
            CAN_RSP("\x76\x02"),
            CAN_SILENT(),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_RSP("\x76\x03"),
            CAN_CHECK(block_sent, 4, 16, 0),
            CAN_RSP("\x76\x04"),
            CAN_REQ("\x37"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
        assert_int_equal(w.f.progress_done, 64);
}

static void test_lost_transfer_retries_end(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_EXPIRE(0),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_EXPIRE(0),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_EXPIRE(0),
            CAN_RESULT(-ETIMEDOUT),
            CAN_CHECK(error_has,
                      (long) "TransferData block 1 (image offset 0): no response within 250 ms, "
                             "sent 3 times: the ECU stopped answering",
                      0, 0),
        };

        start(64, SHORT_OPTS ",erase-routine=none,transfer-retries=2");
        RUN(steps);
}

/* The block's first frame gets no flow control (N_Bs): sent again too. */
static void test_lost_flow_control_repeats(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_SENT("\x10\x12\x36\x01\x07\x26\x45\x64"),
            CAN_EXPIRE(1000000),
            CAN_SENT("\x10\x12\x36\x01\x07\x26\x45\x64"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
}

static void test_transfer_nrc(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_RSP("\x76\x01"),
            CAN_CHECK(block_sent, 2, 16, 0),
            CAN_RSP("\x7f\x36\x73"),
            CAN_RESULT(-EIO),
            CAN_CHECK(error_has,
                      (long) "TransferData block 2 (image offset 16): negative response 0x73 "
                             "wrongBlockSequenceCounter",
                      0, 0),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
}

/* ---- Resume. */

static void test_resume(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RSP("\x62\xf1\xa0\x00\x00\x04\x00"),
            /* No erase; the rest from 0x08000400: 1976 bytes. */
            CAN_REQ("\x34\x00\x44\x08\x00\x04\x00\x00\x00\x07\xb8"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 2, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x00"),
            CAN_REQ("\x11\x01"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, "extended-session=none,security-level=0");
        w.offset = 1024;
        RUN(steps);
}

static void test_resume_points_not_used(void **state)
{
        static const struct {
                const char *rsp;
                size_t len;
        } rows[] = {
            {"\x62\xf1\xa0\x00\x00\x00\x00", 7}, /* nothing kept */
            {"\x62\xf1\xa0\x00\x00\x0b\xb8", 7}, /* all of it: not less than the size */
            {"\x62\xf1\xa0\x00\x00\xff\xff", 7}, /* more than the image */
            {"\x7f\x22\x31", 3},                 /* no such DID */
            {"\x7f\x22\x33", 3},                 /* not readable */
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                fresh(state);
                start(3000, "extended-session=none,security-level=0");
                assert_true(fake_can_take_message(&w.f));
                assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
                assert_true(fake_can_take_message(&w.f));
                assert_true(
                    fake_can_send_message(&w.f, (const uint8_t *) rows[i].rsp, rows[i].len));
                assert_true(fake_can_take_message(&w.f));
                if (!msg_is(&w.f, (const uint8_t *) ERASE_3000, sizeof(ERASE_3000) - 1))
                        fail_msg("row %zu", i);
        }
}

static void test_resume_malformed(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),     CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x22\xf1\xa0"), CAN_RSP("\x62\xf1\xa0\x00\x00\x00\x00\x00\x00\x04\x00\x00"),
            CAN_RESULT(-EPROTO),
        };

        start(3000, "extended-session=none,security-level=0");
        RUN(steps);
}

static void test_resume_refused_restarts(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RSP("\x62\xf1\xa0\x00\x00\x04\x00"),
            CAN_REQ("\x34\x00\x44\x08\x00\x04\x00\x00\x00\x07\xb8"),
            CAN_RSP("\x7f\x34\x70"),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x71\x01\xff\x00\x00"),
            CAN_REQ(DOWNLOAD_3000),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 3, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, "extended-session=none,security-level=0");
        RUN(steps);
}

static bool restart_offsets(struct fake_can *f, const struct fake_can_step *s)
{
        w.offset = 0;
        w.counter = 1;
        return true;
}

/* The part the ECU kept was not this image: the check fails, and all of it is written again,
 * once; a second failure is the image's. */
static void test_resume_check_fails_twice(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RSP("\x62\xf1\xa0\x00\x00\x08\x00"),
            CAN_REQ("\x34\x00\x44\x08\x00\x08\x00\x00\x00\x03\xb8"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 1, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x01"),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x71\x01\xff\x00\x00"),
            CAN_REQ(DOWNLOAD_3000),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(restart_offsets, 0, 0, 0),
            CAN_CHECK(transfer_blocks, 3, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x01"),
            CAN_RESULT(-EIO),
            CAN_CHECK(error_has, (long) "the ECU does not hold the image", 0, 0),
        };

        start(3000, "extended-session=none,security-level=0");
        w.offset = 2048;
        RUN(steps);
}

static void test_resume_check_fails_restarts_full(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x22\xf1\xa0"),
            CAN_RSP("\x62\xf1\xa0\x00\x00\x08\x00"),
            CAN_REQ("\x34\x00\x44\x08\x00\x08\x00\x00\x00\x03\xb8"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 1, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x01"),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x71\x01\xff\x00\x00"),
            CAN_REQ(DOWNLOAD_3000),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(restart_offsets, 0, 0, 0),
            CAN_CHECK(transfer_blocks, 3, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_CHECK(crc_request, 0x0202, 0, 0),
            CAN_RSP("\x71\x01\x02\x02\x00"),
            CAN_REQ("\x11\x01"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, "extended-session=none,security-level=0");
        w.offset = 2048;
        RUN(steps);
}

/* ---- Routines' status. */

static void test_erase_status(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),
            CAN_RSP("\x71\x01\xff\x00\x02"),
            CAN_RESULT(-EIO),
            CAN_CHECK(error_has, (long) "the erase routine 0xff00 reports status 0x02", 0, 0),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
}

static void test_routine_status_ignored(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),    CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ(ERASE_3000),    CAN_RSP("\x71\x01\xff\x00\x02"),
            CAN_REQ(DOWNLOAD_3000), CAN_RESULT(GW_PROTO_CONTINUE),
        };

        start(3000, SHORT_OPTS ",routine-status=ignore");
        RUN(steps);
}

/* ---- Cancel. */

static void test_cancel_during_transfer(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            CAN_CHECK(block_sent, 1, 16, 0),
            CAN_CANCEL(),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_REQ("\x37"),
            /* The answer to the block is no answer to the exit. */
            CAN_RSP("\x76\x01"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_SILENT(),
            CAN_RSP("\x77"),
            CAN_RESULT(-ECANCELED),
            CAN_SILENT(),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
        assert_int_equal(w.f.deadline, 0);
}

static void test_cancel_mid_block(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x40"),
            CAN_RSP("\x74\x20\x00\x12"),
            /* The block's first frame is out, its flow control not in: stop sending. */
            CAN_SENT("\x10\x12\x36\x01\x07\x26\x45\x64"),
            CAN_CANCEL(),
            CAN_REQ("\x37"),
            CAN_IN("\x30\x00\x00"),
            CAN_SILENT(),
            CAN_EXPIRE(0),
            CAN_RESULT(-ECANCELED),
        };

        start(64, SHORT_OPTS ",erase-routine=none");
        RUN(steps);
}

static void test_cancel_before_transfer(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"), CAN_RSP(SESSION_RSP("\x02")), CAN_REQ(ERASE_3000),
            CAN_CANCEL(),        CAN_RESULT(-ECANCELED),       CAN_SILENT(),
        };

        start(3000, SHORT_OPTS);
        RUN(steps);
        assert_int_equal(w.f.deadline, 0);
}

/* ---- The reset. */

static void test_reset_unanswered(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x00\x10"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 1, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RSP("\x77"),
            CAN_REQ("\x11\x01"),
            /* It resets without an answer. */
            CAN_EXPIRE(0),
            CAN_SILENT(),
            CAN_EXPIRE(500000),
            CAN_REQ("\x3e\x00"),
            CAN_EXPIRE(0),
            CAN_EXPIRE(200000),
            CAN_REQ("\x3e\x00"),
            /* Back, though busy with something: alive all the same. */
            CAN_RSP("\x7f\x3e\x22"),
            CAN_RESULT(GW_PROTO_DONE),
        };

        start(16, SHORT_OPTS ",erase-routine=none,check-routine=none");
        RUN(steps);
}

static void test_reset_never_back(void **state)
{
        start(16, SHORT_OPTS ",erase-routine=none,check-routine=none,reset-timeout-ms=2000");
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) SESSION_RSP("\x02"), 6));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x74\x20\x04\x02", 4));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x76\x01", 2));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x77", 1));
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, (const uint8_t *) "\x51\x01", 2));
        for (int i = 0; i < 100 && w.f.last == GW_PROTO_CONTINUE; i++) {
                fake_can_expire(&w.f);
                while (fake_can_take(&w.f))
                        ;
        }
        assert_int_equal(w.f.last, -ETIMEDOUT);
        assert_non_null(strstr(w.f.error, "did not come back within 2000 ms"));
        assert_true(w.f.now - 1000000 >= 2000000);
}

/* ---- Identify. */

static bool fact_is(struct fake_can *f, const struct fake_can_step *s)
{
        const char *v =
            gw_options_get((const struct gw_options *) s->arg[2], (const char *) s->arg[0]);

        if (!s->arg[1])
                return v == NULL;
        if (!v || strcmp(v, (const char *) s->arg[1]) != 0) {
                fprintf(stderr, "fact %s = %s, expected %s\n", (const char *) s->arg[0],
                        v ? v : "(none)", (const char *) s->arg[1]);
                return false;
        }
        return true;
}

static struct gw_options *facts;

static void start_identify(const char *spec)
{
        facts = gw_options_new();
        assert_non_null(facts);
        assert_int_equal(open_uds(spec), 0);
        assert_int_equal(fake_can_identify(&w.f, facts), GW_PROTO_CONTINUE);
}

static void test_identify(void **state)
{
        struct fake_can_step steps[] = {
            CAN_REQ("\x22\xf1\x8c"),
            CAN_RSP("\x62\xf1\x8c"
                    "SN-000042"),
            CAN_REQ("\x22\xf1\x95"),
            CAN_RSP("\x62\xf1\x95"
                    "1.4.2\0\0\0"),
            CAN_REQ("\x22\xf1\x91"),
            CAN_RSP("\x7f\x22\x31"),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_CHECK(fact_is, (long) "serial", (long) "SN-000042", 0),
            CAN_CHECK(fact_is, (long) "version", (long) "1.4.2", 0),
            CAN_CHECK(fact_is, (long) "hardware", 0, 0),
            CAN_CHECK(fact_is, (long) "tx-id", (long) "0x7e0", 0),
            CAN_CHECK(fact_is, (long) "rx-id", (long) "0x7e8", 0),
        };

        start_identify(NULL);
        for (size_t i = 7; i < sizeof(steps) / sizeof(steps[0]); i++)
                steps[i].arg[2] = (long) facts;
        RUN(steps);
        gw_options_free(facts);
}

static void test_identify_configured(void **state)
{
        struct fake_can_step steps[] = {
            CAN_REQ("\x22\xf1\x89"),
            CAN_RSP("\x62\xf1\x89\x01\x02\xff\xff"),
            CAN_REQ("\x22\xf1\x91"),
            CAN_RSP("\x62\xf1\x91"
                    "HW-B2  "),
            CAN_RESULT(GW_PROTO_DONE),
            CAN_CHECK(fact_is, (long) "serial", 0, 0),
            /* Not text: hex. */
            CAN_CHECK(fact_is, (long) "version", (long) "0x0102", 0),
            CAN_CHECK(fact_is, (long) "hardware", (long) "HW-B2", 0),
        };

        w.f.ms_only = true;
        start_identify("serial-did=none,version-did=0xf189");
        for (size_t i = 5; i < sizeof(steps) / sizeof(steps[0]); i++)
                steps[i].arg[2] = (long) facts;
        RUN(steps);
        gw_options_free(facts);
}

static void test_identify_required_did_missing(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x22\xf1\x8c"),
            CAN_RSP("\x62\xf1\x8c"
                    "S1"),
            CAN_REQ("\x22\xf1\x95"),
            /* An answer for another DID is no answer. */
            CAN_RSP("\x62\xf1\x8c"
                    "S1"),
            CAN_RESULT(GW_PROTO_CONTINUE),
            CAN_RSP("\x7f\x22\x31"),
            CAN_RESULT(-ERANGE),
            CAN_CHECK(error_has,
                      (long) "ReadDataByIdentifier: negative response 0x31 "
                             "requestOutOfRange",
                      0, 0),
        };

        start_identify(NULL);
        RUN(steps);
        gw_options_free(facts);
}

static void test_identify_long_data(void **state)
{
        uint8_t rsp[3 + 200] = {0x62, 0xf1, 0x8c};

        memset(rsp + 3, 'a', 200);
        start_identify(NULL);
        assert_true(fake_can_take_message(&w.f));
        assert_true(fake_can_send_message(&w.f, rsp, sizeof(rsp)));
        assert_int_equal(w.f.last, -EPROTO);
        assert_non_null(strstr(w.f.error, "200 bytes"));
        gw_options_free(facts);
}

static void test_identify_silent(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x22\xf1\x8c"),
            CAN_EXPIRE(0),
            CAN_RESULT(-ETIMEDOUT),
        };

        start_identify(NULL);
        RUN(steps);
        gw_options_free(facts);
}

/* ---- Links. */

static void test_fd_link(void **state)
{
        static const struct fake_can_step steps[] = {
            CAN_REQ("\x10\x02"),
            CAN_RSP(SESSION_RSP("\x02")),
            CAN_REQ("\x34\x00\x44\x08\x00\x00\x00\x00\x00\x08\x00"),
            CAN_RSP("\x74\x20\x04\x02"),
            CAN_CHECK(transfer_blocks, 2, 1024, 0),
            CAN_REQ("\x37"),
            CAN_RESULT(GW_PROTO_CONTINUE),
        };

        w.f.info.fd = true;
        w.f.info.tx_dl = 64;
        w.f.info.data_bitrate = 2000000;
        w.f.peer_dl = 64;
        start(2048, SHORT_OPTS ",erase-routine=none");
        assert_true(w.f.sent[0].f.flags & GW_CAN_FD);
        assert_true(w.f.sent[0].f.flags & GW_CAN_BRS);
        RUN(steps);
}

static void test_extended_ids(void **state)
{
        w.f.info.extended = true;
        w.f.info.tx_id = 0x18da10f1;
        w.f.info.rx_id = 0x18daf110;
        start(16, SHORT_OPTS);
        assert_int_equal(w.f.sent[0].f.id, 0x18da10f1);
        assert_true(w.f.sent[0].f.flags & GW_CAN_EFF);
}

static void test_not_a_frames_link(void **state)
{
        w.f.host.can_info = NULL;
        assert_int_equal(open_uds(NULL), 0);
        make_image(16);
        assert_int_equal(fake_can_install(&w.f, &w.reader), -EPROTO);
        assert_non_null(strstr(w.f.error, "needs a CAN (frames) link"));
}

static void test_link_gone(void **state)
{
        w.f.send_error = -ENETDOWN;
        assert_int_equal(open_uds(SHORT_OPTS), 0);
        make_image(16);
        assert_int_equal(fake_can_install(&w.f, &w.reader), -ENETDOWN);
        assert_non_null(strstr(w.f.error, "DiagnosticSessionControl: sending a frame failed"));
}

/* ---- Options and the image. */

static void test_options_refused(void **state)
{
        static const struct {
                const char *spec;
                const char *key;
        } rows[] = {
            {"padding=0x100", "padding"},
            {"padding=maybe", "padding"},
            {"rx-stmin=0x80", "rx-stmin"},
            {"rx-block-size=256", "rx-block-size"},
            {"max-message=10", "max-message"},
            {"max-message=2000000", "max-message"},
            {"n-bs-ms=0", "n-bs-ms"},
            {"p2-ms=0", "p2-ms"},
            {"p2-star-ms=700000", "p2-star-ms"},
            {"ecu-timing=perhaps", "ecu-timing"},
            {"response-pending-max=-1", "response-pending-max"},
            {"extended-session=0x80", "extended-session"},
            {"programming-session=0", "programming-session"},
            {"communication-control=0x8001", "communication-control"},
            {"security-level=2", "security-level"},
            {"security-level=0x7f", "security-level"},
            {"seedkey-module=relative.so", "seedkey-module"},
            {"seedkey-module=/a.so,seedkey-program=/b", "seedkey-module"},
            {"seedkey-program=bin/key", "seedkey-program"},
            {"seedkey-input=file", "seedkey-input"},
            {"address=banana", "address"},
            {"address=0x100000000", "address"},
            {"address-length-format=0x04", "address-length-format"},
            {"address-length-format=0x90", "address-length-format"},
            {"address-length-format=0x49", "address-length-format"},
            {"data-format=0x100", "data-format"},
            {"max-block-length=2", "max-block-length"},
            {"erase-routine=0x10000", "erase-routine"},
            {"erase-params=crc32", "erase-params"},
            {"erase-params=0xZZ", "erase-params"},
            {"check-params=address-size", "check-params"},
            {"check-params=0x123", "check-params"},
            {"routine-status=maybe", "routine-status"},
            {"transfer-retries=101", "transfer-retries"},
            {"resume-did=0x10000", "resume-did"},
            {"reset-type=0", "reset-type"},
            {"reset-wait=forever", "reset-wait"},
            {"reset-poll-ms=0", "reset-poll-ms"},
            {"serial-did=-1", "serial-did"},
            {"wait-frames-max=1001", "wait-frames-max"},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                char want[64];

                fresh(state);
                if (open_uds(rows[i].spec) != -EINVAL)
                        fail_msg("%s: accepted", rows[i].spec);
                snprintf(want, sizeof(want), "option %s: expected", rows[i].key);
                if (!strstr(w.f.error, want))
                        fail_msg("%s: \"%s\"", rows[i].spec, w.f.error);
        }
}

static void test_options_accepted(void **state)
{
        assert_int_equal(
            open_uds("padding=none,rx-block-size=8,rx-stmin=0xf9,max-message=65536,"
                     "extended-session=none,communication-control=0x0301,security-level=0x11,"
                     "address-length-format=0x88,address=0xffffffffffff0000,erase-params=none,"
                     "check-params=crc32,resume-did=none,reset-wait=none,serial-did=0x0001,"
                     "seedkey-program=/bin/true,seedkey-args=a b  c,seedkey-input=argument"),
            0);
        assert_non_null(gw_protocol_uds_ops.options);
        assert_string_equal(gw_protocol_uds_ops.name, "uds");
        assert_int_equal(gw_protocol_uds_ops.shape, GW_LINK_FRAMES);
}

static void test_check_image(void **state)
{
        static const struct {
                const char *spec;
                size_t size;
                int r;
                const char *why;
        } rows[] = {
            {NULL, 3000, 0, NULL},
            {NULL, 0, -EINVAL, "the image is empty"},
            {"address-length-format=0x14", 255, 0, NULL},
            {"address-length-format=0x14", 256, -EFBIG, "does not fit the 1 size bytes"},
            {"address=0xffffff00", 256, 0, NULL},
            {"address=0xffffff00", 257, -EFBIG, "reaches past the 4 address bytes"},
            {"address-length-format=0x42,address=0xff00", 0x100, 0, NULL},
            {"address-length-format=0x42,address=0xff00", 0x101, -EFBIG, "reaches past"},
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                int r;

                fresh(state);
                assert_int_equal(open_uds(rows[i].spec), 0);
                make_image(rows[i].size);
                r = gw_protocol_uds_ops.check_image(w.f.priv, &w.reader, NULL);
                if (r != rows[i].r || (rows[i].why && !strstr(w.f.error, rows[i].why)))
                        fail_msg("row %zu: %d \"%s\"", i, r, w.f.error);
        }
}

static void test_no_address(void **state)
{
        struct gw_options *o = gw_options_new();

        assert_int_equal(gw_options_set(o, "tester-present-ms", "0"), 0);
        assert_int_equal(fake_can_open(&w.f, o), 0);
        make_image(16);
        assert_int_equal(gw_protocol_uds_ops.check_image(w.f.priv, &w.reader, NULL), -EINVAL);
        assert_non_null(strstr(w.f.error, "option address is required"));
        assert_int_equal(fake_can_install(&w.f, &w.reader), -EINVAL);
        assert_int_equal(fake_can_pending(&w.f), 0);
        gw_options_free(o);
}

/* ---- Through the core: the flash job and its loop (real time), a transport whose bus holds a
 * model of the contract's ECU with an ISO-TP of its own. */

#define ECU_MEMORY 8192
#define ECU_RXQ    4096

static struct {
        int efd;
        struct gw_can_link_info info;
        struct gw_can_frame rxq[ECU_RXQ]; /* frames the ECU sent, for recv_frame() */
        size_t rx_head, rx_tail;
        /* Its ISO-TP receiver. */
        uint8_t req[4200];
        size_t req_len, req_got;
        uint8_t req_sn;
        /* A response waiting for our flow control. */
        uint8_t rsp[512];
        size_t rsp_len;
        /* Its UDS server. */
        uint8_t session;
        bool unlocked, erased, download;
        uint8_t counter;
        uint64_t addr, size, got;
        uint8_t memory[ECU_MEMORY];
        bool reset_pending; /* ECUReset answered: the next TesterPresent goes unanswered */
        char version[16];
        unsigned requests, pendings, testers;
} ecu;

static void ecu_queue(const uint8_t *data, size_t n)
{
        struct gw_can_frame f = {.id = ecu.info.rx_id, .len = 8};
        uint64_t one = 1;

        assert_true(ecu.rx_tail - ecu.rx_head < ECU_RXQ);
        memset(f.data, 0xcc, 8);
        memcpy(f.data, data, n);
        ecu.rxq[ecu.rx_tail++ % ECU_RXQ] = f;
        assert_int_equal(write(ecu.efd, &one, sizeof(one)), (ssize_t) sizeof(one));
}

static void ecu_respond(const uint8_t *msg, size_t n)
{
        uint8_t fr[8];

        if (n <= 7) {
                fr[0] = (uint8_t) n;
                memcpy(fr + 1, msg, n);
                ecu_queue(fr, n + 1);
                return;
        }
        /* A first frame; the rest once our flow control came. */
        assert_true(n <= sizeof(ecu.rsp));
        fr[0] = (uint8_t) (0x10 | n >> 8);
        fr[1] = (uint8_t) n;
        memcpy(fr + 2, msg, 6);
        ecu_queue(fr, 8);
        memcpy(ecu.rsp, msg, n);
        ecu.rsp_len = n;
}

static void ecu_negative(uint8_t sid, uint8_t nrc)
{
        uint8_t m[3] = {0x7f, sid, nrc};

        ecu_respond(m, 3);
}

static uint32_t be32(const uint8_t *p)
{
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static void ecu_did(uint16_t did)
{
        uint8_t m[64] = {0x62, (uint8_t) (did >> 8), (uint8_t) did};
        const char *v = NULL;

        if (did == 0xf18c)
                v = "SN-000042";
        else if (did == 0xf195)
                v = ecu.version;
        else if (did == 0xf1a0) {
                memset(m + 3, 0, 4);
                ecu_respond(m, 7);
                return;
        }
        if (!v) {
                ecu_negative(0x22, 0x31);
                return;
        }
        memcpy(m + 3, v, strlen(v));
        ecu_respond(m, 3 + strlen(v));
}

/* The contract's server, for one request. */
static void ecu_request(const uint8_t *r, size_t n)
{
        uint8_t m[16];
        uint32_t key;

        ecu.requests++;
        switch (r[0]) {
        case 0x10:
                ecu.session = r[1];
                /* P2 50 ms, P2* 20 ms: short, so that the test's response pending is quick. */
                memcpy(m, "\x50\x00\x00\x32\x00\x02", 6);
                m[1] = r[1];
                ecu_respond(m, 6);
                return;
        case 0x27:
                if (r[1] == 0x01) {
                        ecu_respond((const uint8_t *) "\x67\x01\x11\x22\x33\x44", 6);
                        return;
                }
                key = ref_key(SEED, SECRET);
                if (n != 6 || be32(r + 2) != key) {
                        ecu_negative(0x27, 0x35);
                        return;
                }
                ecu.unlocked = true;
                ecu_respond((const uint8_t *) "\x67\x02", 2);
                return;
        case 0x22:
                ecu_did((uint16_t) (r[1] << 8 | r[2]));
                return;
        case 0x31:
                if (ecu.session != 0x02 || !ecu.unlocked) {
                        ecu_negative(0x31, 0x33);
                        return;
                }
                if (r[2] == 0xff) {
                        ecu.erased = true;
                        /* Erasing takes a while. */
                        ecu_negative(0x31, 0x78);
                        ecu.pendings++;
                        ecu_respond((const uint8_t *) "\x71\x01\xff\x00\x00", 5);
                        return;
                }
                memcpy(m, "\x71\x01\x02\x02", 4);
                m[4] = be32(r + 4) == ref_crc32(ecu.memory, (size_t) ecu.size) ? 0 : 1;
                if (m[4] == 0)
                        snprintf(ecu.version, sizeof(ecu.version), "2.0.0");
                ecu_respond(m, 5);
                return;
        case 0x34:
                ecu.addr = be32(r + 3);
                ecu.size = be32(r + 7);
                if (!ecu.erased || ecu.addr != ADDRESS || ecu.size > ECU_MEMORY) {
                        ecu_negative(0x34, 0x70);
                        return;
                }
                ecu.download = true;
                ecu.counter = 1;
                ecu.got = 0;
                ecu_respond((const uint8_t *) "\x74\x20\x04\x02", 4);
                return;
        case 0x36:
                if (!ecu.download || r[1] != ecu.counter || ecu.got + n - 2 > ecu.size) {
                        ecu_negative(0x36, 0x73);
                        return;
                }
                memcpy(ecu.memory + ecu.got, r + 2, n - 2);
                ecu.got += n - 2;
                ecu.counter++;
                m[0] = 0x76;
                m[1] = r[1];
                ecu_respond(m, 2);
                return;
        case 0x37:
                ecu.download = false;
                ecu_respond((const uint8_t *) "\x77", 1);
                return;
        case 0x11:
                ecu.session = 0x01;
                ecu.unlocked = false;
                ecu.reset_pending = true;
                ecu_respond((const uint8_t *) "\x51\x01", 2);
                return;
        case 0x3e:
                ecu.testers++;
                if (ecu.reset_pending) {
                        ecu.reset_pending = false; /* still restarting */
                        return;
                }
                if (!(r[1] & 0x80))
                        ecu_respond((const uint8_t *) "\x7e\x00", 2);
                return;
        default:
                ecu_negative(r[0], 0x11);
        }
}

/* The ECU's ISO-TP: our frames in. */
static int ecu_send_frame(void *priv, const struct gw_can_frame *f)
{
        const uint8_t *d = f->data;

        assert_int_equal(f->id, ecu.info.tx_id);
        switch (d[0] >> 4) {
        case 0:
                ecu_request(d + 1, d[0] & 0x0f);
                return 0;
        case 1:
                ecu.req_len = (size_t) (d[0] & 0x0f) << 8 | d[1];
                assert_true(ecu.req_len <= sizeof(ecu.req));
                memcpy(ecu.req, d + 2, 6);
                ecu.req_got = 6;
                ecu.req_sn = 1;
                ecu_queue((const uint8_t *) "\x30\x00\x00", 3);
                return 0;
        case 2: {
                size_t n = ecu.req_len - ecu.req_got < 7 ? ecu.req_len - ecu.req_got : 7;

                assert_int_equal(d[0] & 0x0f, ecu.req_sn);
                memcpy(ecu.req + ecu.req_got, d + 1, n);
                ecu.req_got += n;
                ecu.req_sn = (ecu.req_sn + 1) & 0x0f;
                if (ecu.req_got == ecu.req_len)
                        ecu_request(ecu.req, ecu.req_len);
                return 0;
        }
        case 3: {
                uint8_t fr[8], sn = 1;

                /* Our flow control: the rest of the response. */
                for (size_t off = 6; off < ecu.rsp_len; off += 7) {
                        size_t n = ecu.rsp_len - off < 7 ? ecu.rsp_len - off : 7;

                        fr[0] = (uint8_t) (0x20 | sn);
                        memcpy(fr + 1, ecu.rsp + off, n);
                        ecu_queue(fr, n + 1);
                        sn = (sn + 1) & 0x0f;
                }
                ecu.rsp_len = 0;
                return 0;
        }
        }
        return -EINVAL;
}

static int ecu_open(void *priv, const struct gw_options *opts, const struct gw_plugin_services *svc)
{
        ecu.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        ecu.info = (struct gw_can_link_info){.tx_id = 0x7e0,
                                             .rx_id = 0x7e8,
                                             .functional_id = UINT32_MAX,
                                             .tx_dl = 8,
                                             .bitrate = 500000,
                                             .bus = "model0"};
        return ecu.efd >= 0 ? 0 : -errno;
}

static void ecu_close(void *priv)
{
        close(ecu.efd);
        ecu.efd = -1;
}

static int ecu_get_fd(void *priv)
{
        return ecu.efd;
}

static const struct gw_can_link_info *ecu_can_info(void *priv)
{
        return &ecu.info;
}

static int ecu_recv_frame(void *priv, struct gw_can_frame *ret)
{
        uint64_t v;

        if (ecu.rx_head == ecu.rx_tail) {
                if (read(ecu.efd, &v, sizeof(v)) < 0) {
                        /* Nothing was pending on the fd either. */
                }
                return -EAGAIN;
        }
        *ret = ecu.rxq[ecu.rx_head++ % ECU_RXQ];
        return 1;
}

static const char *const ecu_keys[] = {"port", NULL};

static const struct gw_transport_ops ecu_transport = {
    .version = GW_TRANSPORT_OPS_VERSION,
    .name = "model-can",
    .shape = GW_LINK_FRAMES,
    .priv_size = 8,
    .open = ecu_open,
    .close = ecu_close,
    .get_fd = ecu_get_fd,
    .options = ecu_keys,
    .can_info = ecu_can_info,
    .send_frame = ecu_send_frame,
    .recv_frame = ecu_recv_frame,
};

struct job {
        struct gw_loop *loop;
        bool finished;
        int result;
        char reason[256];
        uint64_t progress;
};

static void job_finished(void *userdata, int result, const char *reason)
{
        struct job *j = userdata;

        j->finished = true;
        j->result = result;
        snprintf(j->reason, sizeof(j->reason), "%s", reason ? reason : "");
}

static void job_progress(void *userdata, uint64_t done, uint64_t total)
{
        struct job *j = userdata;

        j->progress = done;
}

static void job_wait(struct job *j)
{
        for (int i = 0; i < 100000 && !j->finished; i++)
                assert_int_equal(gw_loop_iterate(j->loop, 2000), 0);
        assert_true(j->finished);
}

static void test_through_the_core(void **state)
{
        static const struct gw_flash_callbacks cbs = {.finished = job_finished,
                                                      .progress = job_progress};
        struct gw_options *topts = gw_options_new(), *found = gw_options_new();
        struct gw_flash *flash = NULL;
        struct job j = {0};
        char why[256] = "", module[512];

        memset(&ecu, 0, sizeof(ecu));
        snprintf(ecu.version, sizeof(ecu.version), "1.0.0");
        snprintf(module, sizeof(module), "seedkey-module=%s,reset-delay-ms=10",
                 getenv("GW_TEST_SEEDKEY_MODULE"));
        set_opts(w.opts, module);
        make_image(5000);
        assert_int_equal(gw_plugin_check_options(&ecu_transport, topts, &gw_protocol_uds_ops,
                                                 w.opts, why, sizeof(why)),
                         0);
        assert_int_equal(gw_loop_new(&j.loop), 0);
        assert_int_equal(gw_flash_new(j.loop, "ecu-1", &ecu_transport, topts, &gw_protocol_uds_ops,
                                      w.opts, &flash),
                         0);

        /* What it runs, the install, and what it runs then. */
        assert_int_equal(gw_flash_identify(flash, found, &cbs, &j), 0);
        job_wait(&j);
        assert_int_equal(j.result, 0);
        assert_string_equal(gw_options_get(found, "version"), "1.0.0");
        assert_string_equal(gw_options_get(found, "serial"), "SN-000042");
        assert_null(gw_options_get(found, "hardware"));

        j.finished = false;
        assert_int_equal(gw_flash_install(flash, &w.reader, &cbs, &j), 0);
        job_wait(&j);
        if (j.result != 0)
                fail_msg("install: %d %s", j.result, j.reason);
        assert_int_equal(j.progress, 5000);
        assert_int_equal(ecu.size, 5000);
        assert_memory_equal(ecu.memory, w.data, 5000);
        assert_int_equal(ecu.pendings, 1);
        /* The first question after the reset went unanswered, the second not. */
        assert_int_equal(ecu.testers, 2);

        gw_options_free(found);
        found = gw_options_new();
        j.finished = false;
        assert_int_equal(gw_flash_identify(flash, found, &cbs, &j), 0);
        job_wait(&j);
        assert_int_equal(j.result, 0);
        assert_string_equal(gw_options_get(found, "version"), "2.0.0");

        /* A wrong key: the reason reaches the job. */
        memset(ecu.memory, 0, sizeof(ecu.memory));
        gw_flash_free(flash);
        set_opts(w.opts, "seedkey-params=secret=1");
        assert_int_equal(gw_flash_new(j.loop, "ecu-1", &ecu_transport, topts, &gw_protocol_uds_ops,
                                      w.opts, &flash),
                         0);
        j.finished = false;
        assert_int_equal(gw_flash_install(flash, &w.reader, &cbs, &j), 0);
        job_wait(&j);
        assert_int_equal(j.result, -EACCES);
        assert_string_equal(j.reason, "SecurityAccess: negative response 0x35 invalidKey");

        gw_flash_free(flash);
        gw_loop_free(j.loop);
        gw_options_free(found);
        gw_options_free(topts);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_happy_path, setup, teardown),
            cmocka_unit_test_setup_teardown(test_pre_programming_steps, setup, teardown),
            cmocka_unit_test_setup_teardown(test_configured_ecu, setup, teardown),
            cmocka_unit_test_setup_teardown(test_no_erase_no_check, setup, teardown),
            cmocka_unit_test_setup_teardown(test_erase_params_fixed, setup, teardown),
            cmocka_unit_test_setup_teardown(test_timing_from_session, setup, teardown),
            cmocka_unit_test_setup_teardown(test_timing_not_from_ecu, setup, teardown),
            cmocka_unit_test_setup_teardown(test_response_pending, setup, teardown),
            cmocka_unit_test_setup_teardown(test_response_pending_cap, setup, teardown),
            cmocka_unit_test_setup_teardown(test_response_pending_then_silence, setup, teardown),
            cmocka_unit_test_setup_teardown(test_no_response, setup, teardown),
            cmocka_unit_test_setup_teardown(test_stops_answering, setup, teardown),
            cmocka_unit_test_setup_teardown(test_busy_repeat, setup, teardown),
            cmocka_unit_test_setup_teardown(test_nrc_names, setup, teardown),
            cmocka_unit_test_setup_teardown(test_nrc_errnos, setup, teardown),
            cmocka_unit_test_setup_teardown(test_malformed_responses_ignored, setup, teardown),
            cmocka_unit_test_setup_teardown(test_wrong_key, setup, teardown),
            cmocka_unit_test_setup_teardown(test_no_key_source, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seed_too_long, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_module_missing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_module_no_symbol, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_module_refuses, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_program, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_program_stdin, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_program_environment, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_program_failures, setup, teardown),
            cmocka_unit_test_setup_teardown(test_seedkey_program_missing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tester_present_while_idle, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tester_present_off, setup, teardown),
            cmocka_unit_test_setup_teardown(test_block_length_formats, setup, teardown),
            cmocka_unit_test_setup_teardown(test_block_length_option, setup, teardown),
            cmocka_unit_test_setup_teardown(test_counter_wraps, setup, teardown),
            cmocka_unit_test_setup_teardown(test_lost_transfer_response, setup, teardown),
            cmocka_unit_test_setup_teardown(test_lost_transfer_retries_end, setup, teardown),
            cmocka_unit_test_setup_teardown(test_lost_flow_control_repeats, setup, teardown),
            cmocka_unit_test_setup_teardown(test_transfer_nrc, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume_points_not_used, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume_malformed, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume_refused_restarts, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume_check_fails_twice, setup, teardown),
            cmocka_unit_test_setup_teardown(test_resume_check_fails_restarts_full, setup, teardown),
            cmocka_unit_test_setup_teardown(test_erase_status, setup, teardown),
            cmocka_unit_test_setup_teardown(test_routine_status_ignored, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_during_transfer, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_mid_block, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cancel_before_transfer, setup, teardown),
            cmocka_unit_test_setup_teardown(test_reset_unanswered, setup, teardown),
            cmocka_unit_test_setup_teardown(test_reset_never_back, setup, teardown),
            cmocka_unit_test_setup_teardown(test_identify, setup, teardown),
            cmocka_unit_test_setup_teardown(test_identify_configured, setup, teardown),
            cmocka_unit_test_setup_teardown(test_identify_required_did_missing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_identify_long_data, setup, teardown),
            cmocka_unit_test_setup_teardown(test_identify_silent, setup, teardown),
            cmocka_unit_test_setup_teardown(test_fd_link, setup, teardown),
            cmocka_unit_test_setup_teardown(test_extended_ids, setup, teardown),
            cmocka_unit_test_setup_teardown(test_not_a_frames_link, setup, teardown),
            cmocka_unit_test_setup_teardown(test_link_gone, setup, teardown),
            cmocka_unit_test_setup_teardown(test_options_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_options_accepted, setup, teardown),
            cmocka_unit_test_setup_teardown(test_check_image, setup, teardown),
            cmocka_unit_test_setup_teardown(test_no_address, setup, teardown),
            cmocka_unit_test_setup_teardown(test_through_the_core, setup, teardown),
        };

        gw_log_set_max_level(getenv("GW_TEST_VERBOSE") ? LOG_DEBUG : LOG_EMERG);

        return cmocka_run_group_tests(tests, NULL, NULL);
}
