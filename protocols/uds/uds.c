/* The uds protocol plugin: reprogramming an ECU with UDS (ISO 14229-1) over ISO-TP (isotp.c) on
 * a frames link, a state machine fed by frames and timer expiries whose own timers and ISO-TP's
 * share the instance's one deadline. docs/protocols.md describes the sequence and options. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <zlib.h>

#include "gw/plugin.h"

#include "debug.h"
#include "read.h"

#include "isotp.h"
#include "seedkey.h"

/* Service ids. */
#define SID_SESSION       0x10
#define SID_RESET         0x11
#define SID_READ_DID      0x22
#define SID_SECURITY      0x27
#define SID_COMM_CONTROL  0x28
#define SID_ROUTINE       0x31
#define SID_DOWNLOAD      0x34
#define SID_TRANSFER      0x36
#define SID_EXIT          0x37
#define SID_TESTER        0x3e
#define SID_DTC_SETTING   0x85
#define SID_NEGATIVE      0x7f
#define POSITIVE_OFFSET   0x40
#define SUPPRESS_RESPONSE 0x80

#define NRC_BUSY             0x21
#define NRC_OUT_OF_RANGE     0x31
#define NRC_RESPONSE_PENDING 0x78

#define ROUTINE_START   0x01
#define DTC_SETTING_OFF 0x02

/* The longest ASCII fact read from a DID; longer data is refused. */
#define DID_DATA_MAX 128
/* An ECU's maxNumberOfBlockLength field, in bytes: more is no length we could use. */
#define BLOCK_LENGTH_BYTES_MAX 4
/* The smallest useful block: SID, counter and a byte. */
#define BLOCK_LENGTH_MIN 3
/* A fixed parameter record given in hex (erase-params, check-params). */
#define PARAMS_MAX 64
/* Request bytes besides the block in TransferData. */
#define TRANSFER_HEADER 2
/* The request buffer at least: SecurityAccess sendKey with the longest key. */
#define REQUEST_MIN (2 + GW_UDS_KEY_MAX)
/* How often a running key program is looked at. */
#define KEYPROG_POLL_US 10000u
/* Bits of one classic frame on the wire, stuffing included (111 to 135): for how long a
 * request is still leaving the transport's queue. */
#define FRAME_BITS       135u
#define FALLBACK_BITRATE 125000u

#define DEFAULT_P2_MS            50
#define DEFAULT_P2_STAR_MS       5000
#define DEFAULT_MARGIN_MS        200
#define DEFAULT_PENDING_MAX      60
#define DEFAULT_BUSY_RETRIES     3
#define DEFAULT_BUSY_DELAY_MS    100
#define DEFAULT_TESTER_MS        2000
#define DEFAULT_N_MS             1000
#define DEFAULT_WFT_MAX          10
#define DEFAULT_PADDING          0xcc
#define DEFAULT_EXT_SESSION      0x03
#define DEFAULT_PROG_SESSION     0x02
#define DEFAULT_LEVEL            0x01
#define DEFAULT_KEY_TIMEOUT_MS   5000
#define DEFAULT_ALFID            0x44
#define DEFAULT_ERASE_RID        0xff00
#define DEFAULT_CHECK_RID        0x0202
#define DEFAULT_TRANSFER_RETRIES 3
#define DEFAULT_RESUME_DID       0xf1a0
#define DEFAULT_RESET_TYPE       0x01
#define DEFAULT_RESET_DELAY_MS   500
#define DEFAULT_RESET_POLL_MS    200
#define DEFAULT_RESET_TIMEOUT_MS 10000
#define DEFAULT_SERIAL_DID       0xf18c
#define DEFAULT_VERSION_DID      0xf195
#define DEFAULT_HARDWARE_DID     0xf191

enum uds_state {
        UDS_IDLE,
        UDS_IDENTIFY,            /* ReadDataByIdentifier of the identify DIDs */
        UDS_EXTENDED_SESSION,    /* DiagnosticSessionControl extended */
        UDS_DTC_OFF,             /* ControlDTCSetting off */
        UDS_COMM_CONTROL,        /* CommunicationControl */
        UDS_PROGRAMMING_SESSION, /* DiagnosticSessionControl programming */
        UDS_SEED,                /* SecurityAccess requestSeed */
        UDS_KEY_COMPUTE,         /* the seedkey-program runs */
        UDS_KEY,                 /* SecurityAccess sendKey */
        UDS_RESUME_READ,         /* ReadDataByIdentifier of the resume point */
        UDS_ERASE,               /* RoutineControl erase */
        UDS_DOWNLOAD,            /* RequestDownload */
        UDS_TRANSFER,            /* TransferData */
        UDS_TRANSFER_EXIT,       /* RequestTransferExit */
        UDS_CHECK,               /* RoutineControl check */
        UDS_RESET,               /* ECUReset */
        UDS_RESET_WAIT,          /* the ECU restarts: waiting before asking */
        UDS_RESET_POLL,          /* asking whether it is back */
        UDS_CANCEL_EXIT,         /* RequestTransferExit after cancel() */
        UDS_DONE,
        UDS_FAILED,
        _UDS_STATE_MAX,
};

/* The timers multiplexed onto the instance's deadline, besides ISO-TP's. */
enum uds_timer {
        T_RESPONSE,  /* P2 / P2* for the request in flight */
        T_KEEPALIVE, /* TesterPresent while a session other than the default is open */
        T_STEP,      /* a delay before the next request: busy, reset wait, reset poll */
        T_KEYPROG,   /* looking at the key program */
        _T_MAX,
};

enum reset_wait {
        RESET_WAIT_TESTER,  /* TesterPresent 3E 00 until answered */
        RESET_WAIT_SESSION, /* DiagnosticSessionControl default until answered */
        RESET_WAIT_NONE,
};

enum params_layout {
        PARAMS_NONE,
        PARAMS_ALFID_ADDRESS_SIZE, /* the address-and-length format, address, size */
        PARAMS_ADDRESS_SIZE,       /* address, size */
        PARAMS_CRC32,              /* CRC-32 of the image, big-endian */
        PARAMS_FIXED,              /* bytes given in hex */
};

struct params {
        enum params_layout layout;
        size_t len;
        uint8_t bytes[PARAMS_MAX];
};

/* One DID identify reads, with the fact it becomes. */
struct did_fact {
        const char *fact;
        bool enabled;
        bool optional; /* requestOutOfRange: the ECU does not have it, no failure */
        uint16_t did;
};

#define N_IDENTIFY_DIDS 3

struct uds {
        const struct gw_proto_host *host;
        bool fine_clock;

        /* Options. */
        struct gw_isotp_config tp;
        uint64_t p2_us, p2_star_us, margin_us;
        bool ecu_timing;
        uint64_t pending_max, busy_retries, busy_delay_us, tester_us;
        bool ext_session_on;
        uint8_t ext_session, prog_session;
        bool dtc_off;
        bool comm_control_on;
        uint8_t comm_control[2];
        uint8_t level; /* 0: no SecurityAccess */
        char *key_module, *key_params, *key_program;
        char *key_args_buf;
        char *key_args[GW_UDS_KEYPROG_ARGS_MAX];
        size_t n_key_args;
        bool seed_on_stdin;
        uint64_t key_timeout_us;
        bool have_address;
        uint64_t address;
        uint8_t alfid, data_format;
        uint64_t max_block_opt;
        bool erase_on, check_on;
        uint16_t erase_rid, check_rid;
        struct params erase_params, check_params;
        bool routine_status_check;
        uint64_t transfer_retries;
        bool resume_on;
        uint16_t resume_did;
        bool reset_on;
        uint8_t reset_type;
        enum reset_wait reset_wait;
        uint64_t reset_delay_us, reset_poll_us, reset_timeout_us;
        struct did_fact dids[N_IDENTIFY_DIDS];

        /* The operation. */
        enum uds_state state;
        int error;
        const struct gw_reader *reader;
        struct gw_options *facts;
        const struct gw_can_link_info *info;
        struct gw_isotp tp_conn;
        bool tp_ready;
        uint64_t timers[_T_MAX];
        uint64_t armed; /* the deadline given to the host, 0 = none, UINT64_MAX = unknown */

        uint8_t *req;
        size_t req_len;
        uint8_t sid;       /* of the request in flight */
        bool awaiting;     /* a response to it is due */
        bool keepalive_tx; /* what ISO-TP sends is a TesterPresent without response */
        unsigned pending;  /* responsePending in a row */
        unsigned busy;     /* busyRepeatRequest in a row */
        unsigned repeats;  /* TransferData resent for want of an answer */
        bool session_open; /* a non-default session the ECU drops after S3 */
        bool heard;        /* a frame came from the ECU during this operation */

        size_t did_index;
        uint8_t seed[GW_UDS_SEED_MAX];
        size_t seed_len;
        struct gw_uds_keymod keymod;
        struct gw_uds_keyprog keyprog;
        uint64_t keyprog_deadline;

        uint64_t resume_offset; /* where this download starts in the image */
        bool resumed;           /* it started past 0 without an erase */
        bool restarted;         /* a resumed download was redone from the erase */
        size_t block_data;      /* image bytes per TransferData */
        uint8_t counter;        /* of the TransferData in flight */
        size_t block_len;       /* image bytes in it */
        uint64_t offset;        /* image bytes the ECU acknowledged */
        uint64_t reset_deadline;

        char why[256];
};

static const char *const state_names[_UDS_STATE_MAX] = {
    [UDS_IDLE] = "idle",
    [UDS_IDENTIFY] = "identify",
    [UDS_EXTENDED_SESSION] = "extended-session",
    [UDS_DTC_OFF] = "dtc-setting-off",
    [UDS_COMM_CONTROL] = "communication-control",
    [UDS_PROGRAMMING_SESSION] = "programming-session",
    [UDS_SEED] = "request-seed",
    [UDS_KEY_COMPUTE] = "key-compute",
    [UDS_KEY] = "send-key",
    [UDS_RESUME_READ] = "resume-read",
    [UDS_ERASE] = "erase",
    [UDS_DOWNLOAD] = "request-download",
    [UDS_TRANSFER] = "transfer-data",
    [UDS_TRANSFER_EXIT] = "transfer-exit",
    [UDS_CHECK] = "check",
    [UDS_RESET] = "ecu-reset",
    [UDS_RESET_WAIT] = "reset-wait",
    [UDS_RESET_POLL] = "reset-poll",
    [UDS_CANCEL_EXIT] = "cancel-exit",
    [UDS_DONE] = "done",
    [UDS_FAILED] = "failed",
};

static const char *uds_state_to_string(enum uds_state s)
{
        if ((unsigned) s >= _UDS_STATE_MAX)
                return NULL;
        return state_names[s];
}

/* Negative response codes (ISO 14229-1 annex A.1) by value, with the errno each fails with. */
struct nrc {
        const char *name;
        int err;
};

static const struct nrc nrcs[256] = {
    [0x10] = {"generalReject", EPROTO},
    [0x11] = {"serviceNotSupported", EOPNOTSUPP},
    [0x12] = {"subFunctionNotSupported", EOPNOTSUPP},
    [0x13] = {"incorrectMessageLengthOrInvalidFormat", EINVAL},
    [0x14] = {"responseTooLong", EMSGSIZE},
    [0x21] = {"busyRepeatRequest", EBUSY},
    [0x22] = {"conditionsNotCorrect", EAGAIN},
    [0x24] = {"requestSequenceError", EPROTO},
    [0x25] = {"noResponseFromSubnetComponent", EHOSTUNREACH},
    [0x26] = {"failurePreventsExecutionOfRequestedAction", EIO},
    [0x31] = {"requestOutOfRange", ERANGE},
    [0x33] = {"securityAccessDenied", EACCES},
    [0x34] = {"authenticationRequired", EACCES},
    [0x35] = {"invalidKey", EACCES},
    [0x36] = {"exceedNumberOfAttempts", EACCES},
    [0x37] = {"requiredTimeDelayNotExpired", EACCES},
    [0x38] = {"secureDataTransmissionRequired", EACCES},
    [0x39] = {"secureDataTransmissionNotAllowed", EACCES},
    [0x3a] = {"secureDataVerificationFailed", EACCES},
    [0x50] = {"certificateVerificationFailedInvalidTimePeriod", EACCES},
    [0x51] = {"certificateVerificationFailedInvalidSignature", EACCES},
    [0x52] = {"certificateVerificationFailedInvalidChainOfTrust", EACCES},
    [0x53] = {"certificateVerificationFailedInvalidType", EACCES},
    [0x54] = {"certificateVerificationFailedInvalidFormat", EACCES},
    [0x55] = {"certificateVerificationFailedInvalidContent", EACCES},
    [0x56] = {"certificateVerificationFailedInvalidScope", EACCES},
    [0x57] = {"certificateVerificationFailedInvalidCertificate", EACCES},
    [0x58] = {"ownershipVerificationFailed", EACCES},
    [0x59] = {"challengeCalculationFailed", EACCES},
    [0x5a] = {"settingAccessRightsFailed", EACCES},
    [0x5b] = {"sessionKeyCreationDerivationFailed", EACCES},
    [0x5c] = {"configurationDataUsageFailed", EACCES},
    [0x5d] = {"deAuthenticationFailed", EACCES},
    [0x70] = {"uploadDownloadNotAccepted", EIO},
    [0x71] = {"transferDataSuspended", EIO},
    [0x72] = {"generalProgrammingFailure", EIO},
    [0x73] = {"wrongBlockSequenceCounter", EIO},
    [0x78] = {"requestCorrectlyReceivedResponsePending", EINPROGRESS},
    [0x7e] = {"subFunctionNotSupportedInActiveSession", EOPNOTSUPP},
    [0x7f] = {"serviceNotSupportedInActiveSession", EOPNOTSUPP},
    [0x81] = {"rpmTooHigh", EAGAIN},
    [0x82] = {"rpmTooLow", EAGAIN},
    [0x83] = {"engineIsRunning", EAGAIN},
    [0x84] = {"engineIsNotRunning", EAGAIN},
    [0x85] = {"engineRunTimeTooLow", EAGAIN},
    [0x86] = {"temperatureTooHigh", EAGAIN},
    [0x87] = {"temperatureTooLow", EAGAIN},
    [0x88] = {"vehicleSpeedTooHigh", EAGAIN},
    [0x89] = {"vehicleSpeedTooLow", EAGAIN},
    [0x8a] = {"throttle/PedalTooHigh", EAGAIN},
    [0x8b] = {"throttle/PedalTooLow", EAGAIN},
    [0x8c] = {"transmissionRangeNotInNeutral", EAGAIN},
    [0x8d] = {"transmissionRangeNotInGear", EAGAIN},
    [0x8f] = {"brakeSwitch(es)NotClosed", EAGAIN},
    [0x90] = {"shifterLeverNotInPark", EAGAIN},
    [0x91] = {"torqueConverterClutchLocked", EAGAIN},
    [0x92] = {"voltageTooHigh", EAGAIN},
    [0x93] = {"voltageTooLow", EAGAIN},
    [0x94] = {"resourceTemporarilyNotAvailable", EAGAIN},
};

/* The name of an NRC, for messages: the table's, or the range it falls in. */
static const char *nrc_name(uint8_t nrc)
{
        if (nrcs[nrc].name)
                return nrcs[nrc].name;
        if (nrc >= 0x95 && nrc <= 0xef)
                return "reservedForSpecificConditionsNotCorrect";
        if (nrc >= 0xf0 && nrc <= 0xfe)
                return "vehicleManufacturerSpecificConditionsNotCorrect";
        if (nrc >= 0x38 && nrc <= 0x4f)
                return "reservedByExtendedDataLinkSecurityDocument";
        return "ISOSAEReserved";
}

static int nrc_errno(uint8_t nrc)
{
        return nrcs[nrc].err ? -nrcs[nrc].err : -EPROTO;
}

struct uds;
typedef int (*positive_fn)(struct uds *u, const uint8_t *rsp, size_t len);

static int on_session(struct uds *u, const uint8_t *rsp, size_t len);
static int on_reset(struct uds *u, const uint8_t *rsp, size_t len);
static int on_read_did(struct uds *u, const uint8_t *rsp, size_t len);
static int on_security(struct uds *u, const uint8_t *rsp, size_t len);
static int on_simple(struct uds *u, const uint8_t *rsp, size_t len);
static int on_routine(struct uds *u, const uint8_t *rsp, size_t len);
static int on_download(struct uds *u, const uint8_t *rsp, size_t len);
static int on_transfer(struct uds *u, const uint8_t *rsp, size_t len);
static int on_transfer_exit(struct uds *u, const uint8_t *rsp, size_t len);
static int on_tester(struct uds *u, const uint8_t *rsp, size_t len);

/* The services this protocol sends, by id: the bytes after the SID that a positive response
 * repeats (sub-function without its suppress bit, DID, routine, counter), and what handles it. */
struct service {
        const char *name;
        size_t echo;
        bool subfunction; /* the first echoed byte is a sub-function */
        positive_fn positive;
};

static const struct service services[256] = {
    [SID_SESSION] = {"DiagnosticSessionControl", 1, true, on_session},
    [SID_RESET] = {"ECUReset", 1, true, on_reset},
    [SID_READ_DID] = {"ReadDataByIdentifier", 2, false, on_read_did},
    [SID_SECURITY] = {"SecurityAccess", 1, true, on_security},
    [SID_COMM_CONTROL] = {"CommunicationControl", 1, true, on_simple},
    [SID_ROUTINE] = {"RoutineControl", 3, true, on_routine},
    [SID_DOWNLOAD] = {"RequestDownload", 0, false, on_download},
    [SID_TRANSFER] = {"TransferData", 1, false, on_transfer},
    [SID_EXIT] = {"RequestTransferExit", 0, false, on_transfer_exit},
    [SID_TESTER] = {"TesterPresent", 1, true, on_tester},
    [SID_DTC_SETTING] = {"ControlDTCSetting", 1, true, on_simple},
};

static const char *service_name(uint8_t sid)
{
        return services[sid].name ? services[sid].name : "an unknown service";
}

static void set_state(struct uds *u, enum uds_state s)
{
        if (u->state == s)
                return;
        gw_proto_debug(u->host, "uds: %s -> %s", uds_state_to_string(u->state),
                       uds_state_to_string(s));
        u->state = s;
}

/* ---- Time: microseconds, exact where the host has a microsecond clock. */

static uint64_t now(struct uds *u)
{
        if (u->fine_clock)
                return u->host->now_us(u->host->ctx);
        return u->host->now_ms(u->host->ctx) * 1000u;
}

/* Gives the host the earliest of our timers and ISO-TP's. */
static void rearm(struct uds *u)
{
        uint64_t at = u->tp_ready ? gw_isotp_deadline(&u->tp_conn) : 0;

        if (u->state == UDS_DONE || u->state == UDS_FAILED)
                at = 0;
        else
                for (int i = 0; i < _T_MAX; i++)
                        if (u->timers[i] && (!at || u->timers[i] < at))
                                at = u->timers[i];
        if (at == u->armed)
                return;
        u->armed = at;
        if (u->fine_clock)
                u->host->set_deadline_us(u->host->ctx, at);
        else
                /* A millisecond clock rounds down: the first tick surely at or after it. */
                u->host->set_deadline(u->host->ctx, at ? (at + 999u) / 1000u : 0);
}

static void timer_set(struct uds *u, enum uds_timer t, uint64_t at)
{
        u->timers[t] = at;
}

static void timers_clear(struct uds *u)
{
        memset(u->timers, 0, sizeof(u->timers));
}

/* ---- Outcomes. */

static void stop_key_program(struct uds *u)
{
        if (u->keyprog.pid > 0)
                gw_uds_keyprog_stop(&u->keyprog);
}

/* Enters FAILED with err, whose reason the core reports; returns err. */
static int fail(struct uds *u, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct uds *u, int err, const char *fmt, ...)
{
        va_list ap;

        if (u->state == UDS_FAILED)
                return u->error;
        va_start(ap, fmt);
        vsnprintf(u->why, sizeof(u->why), fmt, ap);
        va_end(ap);
        gw_proto_debug(u->host, "uds: %s", u->why);
        if (u->host->set_error)
                u->host->set_error(u->host->ctx, "%s", u->why);
        u->error = err;
        set_state(u, UDS_FAILED);
        stop_key_program(u);
        if (u->tp_ready)
                gw_isotp_abort_send(&u->tp_conn);
        u->awaiting = false;
        timers_clear(u);
        return err;
}

static int succeed(struct uds *u)
{
        set_state(u, UDS_DONE);
        u->awaiting = false;
        timers_clear(u);
        return GW_PROTO_DONE;
}

static int result(const struct uds *u)
{
        if (u->state == UDS_DONE)
                return GW_PROTO_DONE;
        if (u->state == UDS_FAILED)
                return u->error;
        return GW_PROTO_CONTINUE;
}

/* What every op returns: its outcome, with the deadline given to the host once. */
static int leave(struct uds *u)
{
        rearm(u);
        return result(u);
}

static bool ended(const struct uds *u)
{
        return u->state == UDS_DONE || u->state == UDS_FAILED;
}

/* ---- Requests. */

static uint16_t be16(const uint8_t *p)
{
        return (uint16_t) (p[0] << 8 | p[1]);
}

static void put_be(uint8_t *p, uint64_t v, size_t n)
{
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (v >> (8 * (n - 1 - i)));
}

/* How long a request of len bytes may still be leaving the transport after its last frame was
 * queued: every frame at the link's bitrate. */
static uint64_t wire_time_us(const struct uds *u, size_t len)
{
        size_t dl = u->tp.tx_dl, sf_max = dl == 8 ? 7 : dl - 2, per = dl - 1, frames = 1;
        uint64_t bitrate = u->info && u->info->bitrate ? u->info->bitrate : FALLBACK_BITRATE;
        uint64_t bits;

        /* A first frame carries dl - 2 bytes, each consecutive frame dl - 1. */
        if (len > sf_max)
                frames += (len - (dl - 2) + per - 1) / per;
        bits = (uint64_t) frames * (u->tp.fd ? FRAME_BITS + 8u * per : FRAME_BITS);

        return bits * 1000000u / bitrate;
}

static void arm_keepalive(struct uds *u)
{
        if (u->session_open && u->tester_us)
                timer_set(u, T_KEEPALIVE, now(u) + u->tester_us);
        else
                timer_set(u, T_KEEPALIVE, 0);
}

/* Sends u->req (u->req_len bytes) and waits for its response. */
static int send_request(struct uds *u)
{
        int r;

        u->sid = u->req[0];
        u->awaiting = true;
        u->pending = 0;
        u->keepalive_tx = false;
        timer_set(u, T_RESPONSE, 0);
        if (gw_isotp_sending(&u->tp_conn))
                gw_isotp_abort_send(&u->tp_conn); /* a TesterPresent still leaving */
        gw_proto_debug(u->host, "uds: %s request, %zu bytes", service_name(u->sid), u->req_len);
        arm_keepalive(u);
        r = gw_isotp_send(&u->tp_conn, u->req, u->req_len, now(u));
        if (r < 0)
                return fail(u, r, "%s: cannot send the request: %s", service_name(u->sid),
                            strerror(-r));
        return result(u);
}

/* Builds a request from bytes and sends it. */
static int request(struct uds *u, enum uds_state s, const uint8_t *bytes, size_t n)
{
        set_state(u, s);
        memcpy(u->req, bytes, n);
        u->req_len = n;
        return send_request(u);
}

/* ---- The install sequence, step by step; each either sends its request or moves on. */

static int step_dtc(struct uds *u);
static int step_comm(struct uds *u);
static int step_programming(struct uds *u);
static int step_security(struct uds *u);
static int step_resume(struct uds *u);
static int step_erase(struct uds *u);
static int step_download(struct uds *u);
static int step_transfer(struct uds *u);
static int step_check(struct uds *u);
static int step_reset(struct uds *u);
static int step_reset_wait(struct uds *u);

static int step_extended(struct uds *u)
{
        uint8_t r[2] = {SID_SESSION, u->ext_session};

        if (!u->ext_session_on)
                return step_dtc(u);
        return request(u, UDS_EXTENDED_SESSION, r, sizeof(r));
}

static int step_dtc(struct uds *u)
{
        uint8_t r[2] = {SID_DTC_SETTING, DTC_SETTING_OFF};

        if (!u->dtc_off)
                return step_comm(u);
        return request(u, UDS_DTC_OFF, r, sizeof(r));
}

static int step_comm(struct uds *u)
{
        uint8_t r[3] = {SID_COMM_CONTROL, u->comm_control[0], u->comm_control[1]};

        if (!u->comm_control_on)
                return step_programming(u);
        return request(u, UDS_COMM_CONTROL, r, sizeof(r));
}

static int step_programming(struct uds *u)
{
        uint8_t r[2] = {SID_SESSION, u->prog_session};

        return request(u, UDS_PROGRAMMING_SESSION, r, sizeof(r));
}

static int step_security(struct uds *u)
{
        uint8_t r[2] = {SID_SECURITY, u->level};

        if (u->level == 0)
                return step_resume(u);
        return request(u, UDS_SEED, r, sizeof(r));
}

/* A resumed download that cannot go on: the next one starts from the erase, once. */
static void forget_resume(struct uds *u)
{
        u->restarted = true;
        u->resumed = false;
        u->resume_offset = 0;
        u->offset = 0;
}

static int step_resume(struct uds *u)
{
        uint8_t r[3] = {SID_READ_DID, (uint8_t) (u->resume_did >> 8), (uint8_t) u->resume_did};

        u->resume_offset = 0;
        u->resumed = false;
        if (!u->resume_on || u->restarted)
                return step_erase(u);
        return request(u, UDS_RESUME_READ, r, sizeof(r));
}

/* Appends a parameter record for the image range [address + from, address + size). */
static size_t put_params(const struct uds *u, const struct params *p, uint8_t *out, uint64_t from,
                         uint32_t crc)
{
        size_t a = u->alfid & 0x0f, s = u->alfid >> 4, n = 0;

        switch (p->layout) {
        case PARAMS_NONE:
                return 0;
        case PARAMS_ALFID_ADDRESS_SIZE:
                out[n++] = u->alfid;
                /* fall through */
        case PARAMS_ADDRESS_SIZE:
                put_be(out + n, u->address + from, a);
                n += a;
                put_be(out + n, u->reader->size - from, s);
                return n + s;
        case PARAMS_CRC32:
                put_be(out, crc, 4);
                return 4;
        case PARAMS_FIXED:
                memcpy(out, p->bytes, p->len);
                return p->len;
        }
        return 0;
}

static int step_erase(struct uds *u)
{
        size_t n = 0;

        if (!u->erase_on)
                return step_download(u);
        u->req[n++] = SID_ROUTINE;
        u->req[n++] = ROUTINE_START;
        u->req[n++] = (uint8_t) (u->erase_rid >> 8);
        u->req[n++] = (uint8_t) u->erase_rid;
        n += put_params(u, &u->erase_params, u->req + n, 0, 0);
        set_state(u, UDS_ERASE);
        u->req_len = n;
        return send_request(u);
}

static int step_download(struct uds *u)
{
        static const struct params alfid_address_size = {.layout = PARAMS_ALFID_ADDRESS_SIZE};
        uint64_t from = u->resume_offset;
        size_t n = 0;

        u->req[n++] = SID_DOWNLOAD;
        u->req[n++] = u->data_format;
        n += put_params(u, &alfid_address_size, u->req + n, from, 0);
        gw_proto_debug(u->host, "uds: download of %" PRIu64 " bytes at 0x%" PRIx64 "%s",
                       u->reader->size - from, u->address + from, u->resumed ? " (resumed)" : "");
        set_state(u, UDS_DOWNLOAD);
        u->req_len = n;
        return send_request(u);
}

static void report_progress(struct uds *u)
{
        if (u->host->progress)
                u->host->progress(u->host->ctx, u->offset, u->reader->size);
}

/* Reads len image bytes at off into buf. */
static int read_image(struct uds *u, uint8_t *buf, size_t len, uint64_t off)
{
        char why[128];
        int r = gw_reader_read_exact(u->reader, buf, len, off, why, sizeof(why));

        return r < 0 ? fail(u, r, "%s", why) : 0;
}

/* Sends the block at u->offset with u->counter; RequestTransferExit after the last. */
static int step_transfer(struct uds *u)
{
        uint64_t left = u->reader->size - u->offset;
        int r;

        if (left == 0) {
                uint8_t exit_req[1] = {SID_EXIT};

                return request(u, UDS_TRANSFER_EXIT, exit_req, sizeof(exit_req));
        }
        u->block_len = left < u->block_data ? (size_t) left : u->block_data;
        u->req[0] = SID_TRANSFER;
        u->req[1] = u->counter;
        r = read_image(u, u->req + TRANSFER_HEADER, u->block_len, u->offset);
        if (r < 0)
                return r;
        set_state(u, UDS_TRANSFER);
        u->req_len = TRANSFER_HEADER + u->block_len;
        return send_request(u);
}

/* CRC-32 (zlib's) of the whole image. */
static int image_crc(struct uds *u, uint32_t *ret)
{
        uint8_t buf[4096];
        uLong crc = crc32(0L, Z_NULL, 0);

        for (uint64_t off = 0; off < u->reader->size;) {
                uint64_t left = u->reader->size - off;
                size_t n = left < sizeof(buf) ? (size_t) left : sizeof(buf);
                int r = read_image(u, buf, n, off);

                if (r < 0)
                        return r;
                crc = crc32(crc, buf, (uInt) n);
                off += n;
        }
        *ret = (uint32_t) crc;
        return 0;
}

static int step_check(struct uds *u)
{
        uint32_t crc = 0;
        size_t n = 0;

        if (!u->check_on)
                return step_reset(u);
        if (u->check_params.layout == PARAMS_CRC32) {
                int r = image_crc(u, &crc);

                if (r < 0)
                        return r;
                gw_proto_debug(u->host, "uds: image CRC-32 0x%08" PRIx32, crc);
        }
        u->req[n++] = SID_ROUTINE;
        u->req[n++] = ROUTINE_START;
        u->req[n++] = (uint8_t) (u->check_rid >> 8);
        u->req[n++] = (uint8_t) u->check_rid;
        n += put_params(u, &u->check_params, u->req + n, 0, crc);
        set_state(u, UDS_CHECK);
        u->req_len = n;
        return send_request(u);
}

static int step_reset(struct uds *u)
{
        uint8_t r[2] = {SID_RESET, u->reset_type};

        if (!u->reset_on)
                return succeed(u);
        return request(u, UDS_RESET, r, sizeof(r));
}

/* The ECU restarts: it is in its default session when it is back. */
static int step_reset_wait(struct uds *u)
{
        u->session_open = false;
        timer_set(u, T_KEEPALIVE, 0);
        if (u->reset_wait == RESET_WAIT_NONE)
                return succeed(u);
        u->reset_deadline = now(u) + u->reset_timeout_us;
        set_state(u, UDS_RESET_WAIT);
        timer_set(u, T_STEP, now(u) + u->reset_delay_us);
        return GW_PROTO_CONTINUE;
}

static int send_reset_poll(struct uds *u)
{
        uint8_t tester[2] = {SID_TESTER, 0x00}, session[2] = {SID_SESSION, 0x01};

        if (u->reset_wait == RESET_WAIT_SESSION)
                return request(u, UDS_RESET_POLL, session, sizeof(session));
        return request(u, UDS_RESET_POLL, tester, sizeof(tester));
}

/* ---- Positive responses, dispatched by service. */

static int on_simple(struct uds *u, const uint8_t *rsp, size_t len)
{
        switch (u->state) {
        case UDS_DTC_OFF:
                return step_comm(u);
        case UDS_COMM_CONTROL:
                return step_programming(u);
        default:
                return result(u);
        }
}

static int on_session(struct uds *u, const uint8_t *rsp, size_t len)
{
        if (u->state == UDS_RESET_POLL) {
                gw_proto_debug(u->host, "uds: the ECU is back after the reset");
                return succeed(u);
        }
        u->session_open = true;
        arm_keepalive(u);
        /* P2 in ms, P2* in units of 10 ms (ISO 14229-2). */
        if (len >= 6 && u->ecu_timing) {
                uint64_t p2 = be16(rsp + 2), p2_star = (uint64_t) be16(rsp + 4) * 10u;

                gw_proto_debug(u->host, "uds: the ECU's P2 %" PRIu64 " ms, P2* %" PRIu64 " ms", p2,
                               p2_star);
                u->p2_us = p2 * 1000u;
                u->p2_star_us = p2_star * 1000u;
        }
        if (u->state == UDS_EXTENDED_SESSION)
                return step_dtc(u);
        return step_security(u);
}

static int compute_key(struct uds *u);

static bool all_zero(const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (p[i])
                        return false;
        return true;
}

static int on_security(struct uds *u, const uint8_t *rsp, size_t len)
{
        if (u->state == UDS_KEY) {
                gw_proto_debug(u->host, "uds: security level %u unlocked", u->level);
                return step_resume(u);
        }
        if (len < 3)
                return fail(u, -EPROTO, "SecurityAccess: the ECU sent no seed");
        if (len - 2 > GW_UDS_SEED_MAX)
                return fail(u, -EPROTO, "SecurityAccess: a seed of %zu bytes, more than %d",
                            len - 2, GW_UDS_SEED_MAX);
        u->seed_len = len - 2;
        memcpy(u->seed, rsp + 2, u->seed_len);
        if (all_zero(u->seed, u->seed_len)) {
                gw_proto_debug(u->host, "uds: a zero seed: level %u is unlocked already", u->level);
                return step_resume(u);
        }
        return compute_key(u);
}

static int send_key(struct uds *u, const uint8_t *key, size_t n)
{
        u->req[0] = SID_SECURITY;
        u->req[1] = (uint8_t) (u->level + 1);
        memcpy(u->req + 2, key, n);
        set_state(u, UDS_KEY);
        u->req_len = 2 + n;
        return send_request(u);
}

static int compute_key(struct uds *u)
{
        uint8_t key[GW_UDS_KEY_MAX];
        char why[200];
        int r;

        if (u->key_module) {
                if (!u->keymod.fn) {
                        r = gw_uds_keymod_load(&u->keymod, u->key_module, why, sizeof(why));
                        if (r < 0)
                                return fail(u, r, "SecurityAccess: %s", why);
                }
                r = gw_uds_keymod_compute(&u->keymod, u->level, u->seed, u->seed_len, u->key_params,
                                          key, sizeof(key), why, sizeof(why));
                if (r < 0)
                        return fail(u, r, "SecurityAccess: %s", why);
                return send_key(u, key, (size_t) r);
        }
        if (u->key_program) {
                r = gw_uds_keyprog_start(&u->keyprog, u->key_program, u->key_args, u->n_key_args,
                                         u->level, u->seed, u->seed_len, u->seed_on_stdin, why,
                                         sizeof(why));
                if (r < 0)
                        return fail(u, r, "SecurityAccess: %s", why);
                set_state(u, UDS_KEY_COMPUTE);
                u->keyprog_deadline = now(u) + u->key_timeout_us;
                timer_set(u, T_KEYPROG, now(u) + KEYPROG_POLL_US);
                return GW_PROTO_CONTINUE;
        }
        return fail(u, -ENOKEY,
                    "SecurityAccess: the ECU asks for a key for level %u (a %zu-byte seed), and "
                    "no seedkey-module or seedkey-program is configured",
                    u->level, u->seed_len);
}

static int poll_key_program(struct uds *u)
{
        uint8_t key[GW_UDS_KEY_MAX];
        char why[200];
        int r;

        r = gw_uds_keyprog_poll(&u->keyprog, key, sizeof(key), why, sizeof(why));
        if (r < 0)
                return fail(u, r, "SecurityAccess: %s", why);
        if (r > 0)
                return send_key(u, key, (size_t) r);
        if (now(u) >= u->keyprog_deadline) {
                stop_key_program(u);
                return fail(u, -ETIMEDOUT,
                            "SecurityAccess: the seedkey-program gave no key within %" PRIu64 " ms",
                            u->key_timeout_us / 1000);
        }
        timer_set(u, T_KEYPROG, now(u) + KEYPROG_POLL_US);
        return GW_PROTO_CONTINUE;
}

/* A DID's data as a fact: printable ASCII as it is (trailing NUL, space and 0xff padding
 * dropped), anything else in hex. */
static int add_fact(struct uds *u, const char *key, const uint8_t *data, size_t n)
{
        char value[2 * DID_DATA_MAX + 3];
        bool printable = true;
        int r;

        while (n > 0 && (data[n - 1] == 0x00 || data[n - 1] == ' ' || data[n - 1] == 0xff))
                n--;
        for (size_t i = 0; i < n; i++)
                if (data[i] < 0x20 || data[i] > 0x7e)
                        printable = false;
        if (printable) {
                memcpy(value, data, n);
                value[n] = '\0';
        } else {
                static const char digits[] = "0123456789abcdef";

                value[0] = '0';
                value[1] = 'x';
                for (size_t i = 0; i < n; i++) {
                        value[2 + 2 * i] = digits[data[i] >> 4];
                        value[3 + 2 * i] = digits[data[i] & 0x0f];
                }
                value[2 + 2 * n] = '\0';
        }
        if (n == 0)
                return 0; /* an empty value says nothing */
        r = gw_options_set(u->facts, key, value);
        if (r < 0)
                return fail(u, r, "out of memory");
        return 0;
}

static int add_fact_id(struct uds *u, const char *key, uint32_t id)
{
        char value[16];

        snprintf(value, sizeof(value), "0x%" PRIx32, id);
        if (gw_options_set(u->facts, key, value) < 0)
                return fail(u, -ENOMEM, "out of memory");
        return 0;
}

static int next_identify(struct uds *u)
{
        while (u->did_index < N_IDENTIFY_DIDS && !u->dids[u->did_index].enabled)
                u->did_index++;
        if (u->did_index >= N_IDENTIFY_DIDS)
                return succeed(u);
        {
                uint16_t did = u->dids[u->did_index].did;
                uint8_t r[3] = {SID_READ_DID, (uint8_t) (did >> 8), (uint8_t) did};

                return request(u, UDS_IDENTIFY, r, sizeof(r));
        }
}

static int on_read_did(struct uds *u, const uint8_t *rsp, size_t len)
{
        const uint8_t *data = rsp + 3;
        size_t n = len - 3; /* the echo check made sure of SID and DID */
        int r;

        if (u->state == UDS_IDENTIFY) {
                if (n > DID_DATA_MAX)
                        return fail(u, -EPROTO,
                                    "ReadDataByIdentifier 0x%04x: %zu bytes, more than %d",
                                    u->dids[u->did_index].did, n, DID_DATA_MAX);
                r = add_fact(u, u->dids[u->did_index].fact, data, n);
                if (r < 0)
                        return r;
                u->did_index++;
                return next_identify(u);
        }
        /* The resume point: bytes of the download the ECU kept. */
        if (n == 0 || n > 8)
                return fail(u, -EPROTO, "ReadDataByIdentifier 0x%04x: a resume point of %zu bytes",
                            u->resume_did, n);
        {
                uint64_t v = 0;

                for (size_t i = 0; i < n; i++)
                        v = v << 8 | data[i];
                if (v > 0 && v < u->reader->size) {
                        gw_proto_debug(
                            u->host,
                            "uds: the ECU kept %" PRIu64 " bytes of the download: resuming", v);
                        u->resume_offset = v;
                        u->resumed = true;
                        u->offset = v;
                        if (u->host->version >= 6 && u->host->resumed)
                                u->host->resumed(u->host->ctx, v);
                        return step_download(u);
                }
                gw_proto_debug(u->host,
                               "uds: resume point %" PRIu64 " of %" PRIu64 ": starting over", v,
                               u->reader->size);
        }
        return step_erase(u);
}

static int on_routine(struct uds *u, const uint8_t *rsp, size_t len)
{
        bool status_bad = u->routine_status_check && len > 4 && rsp[4] != 0;

        if (u->state == UDS_ERASE) {
                if (status_bad)
                        return fail(u, -EIO, "the erase routine 0x%04x reports status 0x%02x",
                                    u->erase_rid, rsp[4]);
                return step_download(u);
        }
        if (!status_bad)
                return step_reset(u);
        if (u->resumed && !u->restarted) {
                /* The part kept may have been another image's: all of it again. */
                gw_proto_debug(u->host,
                               "uds: the check failed after a resumed download: starting over");
                forget_resume(u);
                report_progress(u);
                return step_erase(u);
        }
        return fail(u, -EIO,
                    "the check routine 0x%04x reports status 0x%02x: the ECU does not hold the "
                    "image",
                    u->check_rid, rsp[4]);
}

static int on_download(struct uds *u, const uint8_t *rsp, size_t len)
{
        size_t n, cap;
        uint64_t max = 0;

        if (len < 2)
                return fail(u, -EPROTO, "RequestDownload: no lengthFormatIdentifier");
        n = rsp[1] >> 4;
        if (n == 0 || n > BLOCK_LENGTH_BYTES_MAX || len < 2 + n)
                return fail(u, -EPROTO,
                            "RequestDownload: lengthFormatIdentifier 0x%02x in a %zu-byte "
                            "response: no block length this protocol can use",
                            rsp[1], len);
        for (size_t i = 0; i < n; i++)
                max = max << 8 | rsp[2 + i];
        if (max < BLOCK_LENGTH_MIN)
                return fail(u, -EPROTO,
                            "RequestDownload: maxNumberOfBlockLength %" PRIu64
                            " leaves no room for data",
                            max);
        /* The ECU's length counts SID and counter; we may send less (ISO-TP, option). */
        cap = u->tp.max_tx;
        if (u->max_block_opt && u->max_block_opt < cap)
                cap = (size_t) u->max_block_opt;
        if (max > cap) {
                gw_proto_debug(u->host,
                               "uds: the ECU takes blocks of %" PRIu64 " bytes, sending %zu", max,
                               cap);
                max = cap;
        }
        u->block_data = (size_t) max - TRANSFER_HEADER;
        u->counter = 1;
        u->repeats = 0;
        gw_proto_debug(u->host, "uds: blocks of %zu image bytes", u->block_data);
        report_progress(u);
        return step_transfer(u);
}

static int on_transfer(struct uds *u, const uint8_t *rsp, size_t len)
{
        u->offset += u->block_len;
        u->counter++; /* 0xff wraps to 0x00 */
        u->repeats = 0;
        report_progress(u);
        return step_transfer(u);
}

static int on_transfer_exit(struct uds *u, const uint8_t *rsp, size_t len)
{
        if (u->state == UDS_CANCEL_EXIT)
                return fail(u, -ECANCELED, "cancelled");
        return step_check(u);
}

static int on_reset(struct uds *u, const uint8_t *rsp, size_t len)
{
        return step_reset_wait(u);
}

static int on_tester(struct uds *u, const uint8_t *rsp, size_t len)
{
        if (u->state == UDS_RESET_POLL) {
                gw_proto_debug(u->host, "uds: the ECU is back after the reset");
                return succeed(u);
        }
        return result(u);
}

/* ---- When a request gets no (usable) answer. */

/* The request got no response in time, or could not be sent (err, why from ISO-TP). */
static int no_response(struct uds *u, int err, const char *why)
{
        uint64_t t = now(u);

        u->awaiting = false;
        timer_set(u, T_RESPONSE, 0);
        switch (u->state) {
        case UDS_TRANSFER:
                if (err == -EMSGSIZE)
                        break; /* the ECU cannot take the block: repeating will not help */
                if (u->repeats >= u->transfer_retries)
                        break;
                u->repeats++;
                gw_proto_debug(u->host,
                               "uds: TransferData %u: %s: sending it again (%u/%" PRIu64 ")",
                               u->counter, why, u->repeats, u->transfer_retries);
                return send_request(u);
        case UDS_RESET:
                /* Some ECUs reset before they answer. */
                gw_proto_debug(u->host, "uds: no answer to ECUReset (%s): assuming it resets", why);
                return step_reset_wait(u);
        case UDS_RESET_POLL:
                if (t >= u->reset_deadline)
                        return fail(u, -ETIMEDOUT,
                                    "the ECU did not come back within %" PRIu64 " ms of the reset",
                                    u->reset_timeout_us / 1000);
                set_state(u, UDS_RESET_WAIT);
                timer_set(u, T_STEP, t + u->reset_poll_us);
                return GW_PROTO_CONTINUE;
        case UDS_CANCEL_EXIT:
                return fail(u, -ECANCELED, "cancelled");
        default:
                break;
        }
        if (err != -ETIMEDOUT)
                return fail(u, err, "%s: %s", service_name(u->sid), why);
        /* Say whom the silence is about: nobody on these ids at all, or an ECU that answered
         * before and stopped. */
        if (!u->heard)
                return fail(u, err,
                            "%s: %s: no ECU answers on 0x%" PRIx32 " to requests on 0x%" PRIx32
                            " (tx-id, rx-id wrong, or the ECU is off?)",
                            service_name(u->sid), why, u->info->rx_id, u->info->tx_id);
        if (u->state == UDS_TRANSFER)
                return fail(u, err,
                            "TransferData block %u (image offset %" PRIu64 "): %s, sent %u "
                            "times: the ECU stopped answering",
                            u->counter, u->offset, why, u->repeats + 1);
        return fail(u, err, "%s: %s: the ECU stopped answering", service_name(u->sid), why);
}

static int on_negative(struct uds *u, uint8_t nrc)
{
        uint64_t t = now(u);

        if (nrc == NRC_RESPONSE_PENDING) {
                if (++u->pending > u->pending_max)
                        return fail(u, -ETIMEDOUT,
                                    "%s: the ECU answered requestCorrectlyReceivedResponsePending "
                                    "(0x78) more than %" PRIu64 " times in a row",
                                    service_name(u->sid), u->pending_max);
                gw_proto_debug(u->host,
                               "uds: %s: response pending (%u), waiting P2* %" PRIu64 " ms",
                               service_name(u->sid), u->pending, u->p2_star_us / 1000);
                timer_set(u, T_RESPONSE, t + u->p2_star_us + u->margin_us);
                return GW_PROTO_CONTINUE;
        }
        u->awaiting = false;
        timer_set(u, T_RESPONSE, 0);
        if (nrc == NRC_BUSY && u->busy < u->busy_retries && u->state != UDS_CANCEL_EXIT) {
                u->busy++;
                gw_proto_debug(
                    u->host, "uds: %s: busyRepeatRequest, again in %" PRIu64 " ms (%u/%" PRIu64 ")",
                    service_name(u->sid), u->busy_delay_us / 1000, u->busy, u->busy_retries);
                timer_set(u, T_STEP, t + u->busy_delay_us);
                return GW_PROTO_CONTINUE;
        }
        switch (u->state) {
        case UDS_IDENTIFY:
                if (nrc == NRC_OUT_OF_RANGE && u->dids[u->did_index].optional) {
                        gw_proto_debug(u->host, "uds: the ECU has no DID 0x%04x",
                                       u->dids[u->did_index].did);
                        u->did_index++;
                        return next_identify(u);
                }
                break;
        case UDS_RESUME_READ:
                gw_proto_debug(u->host, "uds: no resume point (DID 0x%04x: %s): starting over",
                               u->resume_did, nrc_name(nrc));
                return step_erase(u);
        case UDS_DOWNLOAD:
                if (u->resumed) {
                        gw_proto_debug(u->host,
                                       "uds: the ECU refuses to resume (%s): starting over",
                                       nrc_name(nrc));
                        forget_resume(u);
                        return step_erase(u);
                }
                break;
        case UDS_RESET_POLL:
                gw_proto_debug(u->host, "uds: the ECU is back after the reset (it answered %s)",
                               nrc_name(nrc));
                return succeed(u);
        case UDS_CANCEL_EXIT:
                return fail(u, -ECANCELED, "cancelled");
        default:
                break;
        }
        if (u->state == UDS_TRANSFER)
                return fail(u, nrc_errno(nrc),
                            "TransferData block %u (image offset %" PRIu64
                            "): negative response 0x%02x %s",
                            u->counter, u->offset, nrc, nrc_name(nrc));
        return fail(u, nrc_errno(nrc), "%s: negative response 0x%02x %s", service_name(u->sid), nrc,
                    nrc_name(nrc));
}

/* ---- ISO-TP's indications. */

static void tp_received(void *ctx, const uint8_t *msg, size_t len)
{
        struct uds *u = ctx;
        const struct service *s;

        if (ended(u))
                return;
        if (!u->awaiting) {
                gw_proto_debug(u->host, "uds: a %zu-byte message with no request waiting, ignored",
                               len);
                return;
        }
        if (msg[0] == SID_NEGATIVE) {
                if (len < 3 || msg[1] != u->sid) {
                        gw_proto_debug(u->host, "uds: a negative response not to %s, ignored",
                                       service_name(u->sid));
                        return;
                }
                on_negative(u, msg[2]);
                return;
        }
        if (msg[0] != (uint8_t) (u->sid + POSITIVE_OFFSET)) {
                gw_proto_debug(u->host, "uds: response 0x%02x while waiting for %s, ignored",
                               msg[0], service_name(u->sid));
                return;
        }
        s = &services[u->sid];
        if (len < 1 + s->echo) {
                gw_proto_debug(u->host, "uds: a %zu-byte %s response, ignored", len, s->name);
                return;
        }
        for (size_t i = 0; i < s->echo; i++) {
                uint8_t want = u->req[1 + i];

                if (i == 0 && s->subfunction)
                        want &= (uint8_t) ~SUPPRESS_RESPONSE;
                if (msg[1 + i] != want) {
                        /* A late answer to an earlier request (a repeated block). */
                        gw_proto_debug(u->host, "uds: a %s response for another request, ignored",
                                       s->name);
                        return;
                }
        }
        u->awaiting = false;
        u->busy = 0;
        timer_set(u, T_RESPONSE, 0);
        s->positive(u, msg, len);
}

static void tp_sent(void *ctx, int result_code, const char *why)
{
        struct uds *u = ctx;

        if (ended(u))
                return;
        if (u->keepalive_tx) {
                u->keepalive_tx = false;
                if (result_code < 0)
                        gw_proto_debug(u->host, "uds: TesterPresent not sent: %s", why);
                return;
        }
        if (!u->awaiting)
                return;
        if (result_code < 0) {
                no_response(u, result_code, why);
                return;
        }
        timer_set(u, T_RESPONSE, now(u) + wire_time_us(u, u->req_len) + u->p2_us + u->margin_us);
}

static void tp_rx_failed(void *ctx, int error, const char *why)
{
        struct uds *u = ctx;

        gw_proto_debug(u->host, "uds: a message from the ECU was lost: %s", why);
}

__attribute__((format(printf, 2, 0))) static void tp_logv(void *ctx, const char *fmt, va_list ap)
{
        struct uds *u = ctx;

        if (u->host->logv)
                u->host->logv(u->host->ctx, LOG_DEBUG, fmt, ap);
}

static const struct gw_isotp_ops tp_ops = {
    .received = tp_received,
    .sent = tp_sent,
    .rx_failed = tp_rx_failed,
    .logv = tp_logv,
};

static int tp_send_frame(void *ctx, const struct gw_can_frame *f)
{
        struct uds *u = ctx;

        return u->host->send_frame(u->host->ctx, f);
}

/* ---- Timers. */

static int send_keepalive(struct uds *u)
{
        static const uint8_t tp[2] = {SID_TESTER, SUPPRESS_RESPONSE};
        int r;

        if (u->awaiting || gw_isotp_sending(&u->tp_conn) || !u->session_open) {
                arm_keepalive(u);
                return GW_PROTO_CONTINUE;
        }
        gw_proto_debug(u->host, "uds: TesterPresent");
        u->keepalive_tx = true;
        r = gw_isotp_send(&u->tp_conn, tp, sizeof(tp), now(u));
        if (r < 0) {
                u->keepalive_tx = false;
                gw_proto_debug(u->host, "uds: TesterPresent not sent: %s", strerror(-r));
        }
        arm_keepalive(u);
        return GW_PROTO_CONTINUE;
}

static int on_timer(struct uds *u, enum uds_timer t)
{
        switch (t) {
        case T_RESPONSE:
                if (!u->awaiting)
                        return result(u);
                {
                        char why[96];

                        snprintf(why, sizeof(why), "no response within %" PRIu64 " ms%s",
                                 ((u->pending ? u->p2_star_us : u->p2_us) + u->margin_us) / 1000,
                                 u->pending ? " of the last responsePending" : "");
                        return no_response(u, -ETIMEDOUT, why);
                }
        case T_KEEPALIVE:
                return send_keepalive(u);
        case T_STEP:
                if (u->state == UDS_RESET_WAIT)
                        return send_reset_poll(u);
                /* After busyRepeatRequest: the same request again. */
                return send_request(u);
        case T_KEYPROG:
                if (u->state == UDS_KEY_COMPUTE)
                        return poll_key_program(u);
                return result(u);
        default:
                return result(u);
        }
}

/* ---- The link. */

static int setup_link(struct uds *u)
{
        const struct gw_can_link_info *info;
        int r;

        if (u->host->version < 5 || !u->host->can_info || !u->host->send_frame)
                return fail(u, -EPROTO, "the uds protocol needs a CAN (frames) link");
        info = u->host->can_info(u->host->ctx);
        if (!info)
                return fail(u, -ENODEV, "the CAN link is not open");
        u->info = info;
        u->tp.tx_id = info->tx_id;
        u->tp.extended = info->extended;
        u->tp.fd = info->fd && info->tx_dl > 8;
        u->tp.brs = u->tp.fd && info->data_bitrate > 0;
        u->tp.tx_dl = u->tp.fd ? info->tx_dl : 8;
        if (u->tp.fd && !gw_isotp_valid_dl(u->tp.tx_dl))
                return fail(u, -EINVAL, "the link's tx-dl %u is no CAN FD data length",
                            info->tx_dl);
        r = gw_isotp_init(&u->tp_conn, &u->tp, &tp_ops, u,
                          &(struct gw_isotp_next){.send_frame = tp_send_frame, .ctx = u});
        if (r < 0)
                return fail(u, r, "cannot set up ISO-TP: %s", strerror(-r));
        u->tp_ready = true;
        /* Room for the longest request whatever max-message says: ISO-TP refuses it. */
        u->req = malloc(u->tp.max_tx > REQUEST_MIN ? u->tp.max_tx : REQUEST_MIN);
        if (!u->req)
                return fail(u, -ENOMEM, "out of memory");
        gw_proto_debug(u->host, "uds: %s ids 0x%" PRIx32 "/0x%" PRIx32 ", %s, frames of %u bytes",
                       info->bus ? info->bus : "CAN", info->tx_id, info->rx_id,
                       u->tp.fd ? "CAN FD" : "classic CAN", u->tp.tx_dl);
        return 0;
}

/* ---- Options. */

static int bad_option(struct uds *u, const char *key, const char *expected)
{
        gw_proto_debug(u->host, "uds: option %s: expected %s", key, expected);
        if (u->host->set_error)
                u->host->set_error(u->host->ctx, "option %s: expected %s", key, expected);
        return -EINVAL;
}

static bool is_none(const char *v)
{
        return v && (strcmp(v, "none") == 0 || strcmp(v, "off") == 0);
}

/* A number, or "none": *ret_on says which. */
static int get_optional(struct uds *u, const struct gw_options *o, const char *key, uint64_t def,
                        uint64_t min, uint64_t max, bool def_on, bool *ret_on, uint64_t *ret,
                        const char *expected)
{
        const char *v = gw_options_get(o, key);

        if (!v) {
                *ret_on = def_on;
                *ret = def;
                return 0;
        }
        if (is_none(v)) {
                *ret_on = false;
                *ret = def;
                return 0;
        }
        if (gw_options_get_u64(o, key, def, min, max, ret) < 0)
                return bad_option(u, key, expected);
        *ret_on = true;
        return 0;
}

static int get_ms(struct uds *u, const struct gw_options *o, const char *key, uint64_t def,
                  uint64_t min, uint64_t max, uint64_t *ret_us)
{
        char expected[64];
        uint64_t v;

        if (gw_options_get_u64(o, key, def, min, max, &v) < 0) {
                snprintf(expected, sizeof(expected), "%" PRIu64 " to %" PRIu64 " (ms)", min, max);
                return bad_option(u, key, expected);
        }
        *ret_us = v * 1000u;
        return 0;
}

static int get_params(struct uds *u, const struct gw_options *o, const char *key,
                      enum params_layout def, bool allow_crc, struct params *ret)
{
        const char *v = gw_options_get(o, key);
        const char *expected = allow_crc ? "crc32, none or 0x and up to 64 bytes in hex"
                                         : "alfid-address-size, address-size, none or 0x and up "
                                           "to 64 bytes in hex";
        int n;

        memset(ret, 0, sizeof(*ret));
        ret->layout = def;
        if (!v)
                return 0;
        if (is_none(v))
                ret->layout = PARAMS_NONE;
        else if (allow_crc && strcmp(v, "crc32") == 0)
                ret->layout = PARAMS_CRC32;
        else if (!allow_crc && strcmp(v, "alfid-address-size") == 0)
                ret->layout = PARAMS_ALFID_ADDRESS_SIZE;
        else if (!allow_crc && strcmp(v, "address-size") == 0)
                ret->layout = PARAMS_ADDRESS_SIZE;
        else if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
                n = gw_uds_parse_hex(v, ret->bytes, sizeof(ret->bytes));
                if (n < 0)
                        return bad_option(u, key, expected);
                ret->layout = PARAMS_FIXED;
                ret->len = (size_t) n;
        } else
                return bad_option(u, key, expected);
        return 0;
}

static int get_string(struct uds *u, const struct gw_options *o, const char *key, size_t max,
                      bool absolute, char **ret)
{
        const char *v = gw_options_get(o, key);
        char expected[96];

        if (!v)
                return 0;
        if (strlen(v) == 0 || strlen(v) > max || (absolute && v[0] != '/')) {
                snprintf(expected, sizeof(expected), "%s of 1 to %zu bytes",
                         absolute ? "an absolute path" : "a string", max);
                return bad_option(u, key, expected);
        }
        *ret = strdup(v);
        if (!*ret)
                return -ENOMEM;
        return 0;
}

/* seedkey-args: words separated by spaces, no quoting (no shell ever sees them). */
static int get_args(struct uds *u, const struct gw_options *o)
{
        const char *v = gw_options_get(o, "seedkey-args");
        char *save = NULL;

        if (!v)
                return 0;
        if (strlen(v) > 1024)
                return bad_option(u, "seedkey-args", "at most 1024 bytes");
        u->key_args_buf = strdup(v);
        if (!u->key_args_buf)
                return -ENOMEM;
        for (char *w = strtok_r(u->key_args_buf, " \t", &save); w;
             w = strtok_r(NULL, " \t", &save)) {
                if (u->n_key_args >= GW_UDS_KEYPROG_ARGS_MAX)
                        return bad_option(u, "seedkey-args", "at most 32 words");
                u->key_args[u->n_key_args++] = w;
        }
        return 0;
}

static int get_did(struct uds *u, const struct gw_options *o, const char *key, uint16_t def,
                   bool *ret_on, uint16_t *ret)
{
        uint64_t v;
        int r = get_optional(u, o, key, def, 0, 0xffff, true, ret_on, &v,
                             "a DID 0x0000 to 0xffff "
                             "or none");

        *ret = (uint16_t) v;
        return r;
}

/* The durations, all given in ms and kept in us. */
struct duration_option {
        const char *key;
        uint64_t def, min, max;
        size_t offset; /* of the uint64_t in struct uds */
};

static const struct duration_option durations[] = {
    {"n-as-ms", DEFAULT_N_MS, 1, 60000, offsetof(struct uds, tp.n_as_us)},
    {"n-bs-ms", DEFAULT_N_MS, 1, 60000, offsetof(struct uds, tp.n_bs_us)},
    {"n-cr-ms", DEFAULT_N_MS, 1, 60000, offsetof(struct uds, tp.n_cr_us)},
    {"p2-ms", DEFAULT_P2_MS, 1, 65535, offsetof(struct uds, p2_us)},
    {"p2-star-ms", DEFAULT_P2_STAR_MS, 1, 655350, offsetof(struct uds, p2_star_us)},
    {"timing-margin-ms", DEFAULT_MARGIN_MS, 0, 60000, offsetof(struct uds, margin_us)},
    {"busy-delay-ms", DEFAULT_BUSY_DELAY_MS, 0, 60000, offsetof(struct uds, busy_delay_us)},
    {"tester-present-ms", DEFAULT_TESTER_MS, 0, 60000, offsetof(struct uds, tester_us)},
    {"seedkey-timeout-ms", DEFAULT_KEY_TIMEOUT_MS, 1, 600000, offsetof(struct uds, key_timeout_us)},
    {"reset-delay-ms", DEFAULT_RESET_DELAY_MS, 0, 600000, offsetof(struct uds, reset_delay_us)},
    {"reset-poll-ms", DEFAULT_RESET_POLL_MS, 1, 60000, offsetof(struct uds, reset_poll_us)},
    {"reset-timeout-ms", DEFAULT_RESET_TIMEOUT_MS, 1, 3600000,
     offsetof(struct uds, reset_timeout_us)},
};

/* The identify DIDs: option, default, fact. */
static const struct {
        const char *key;
        uint16_t def;
        const char *fact;
        bool optional;
} did_options[N_IDENTIFY_DIDS] = {
    {"serial-did", DEFAULT_SERIAL_DID, "serial", false},
    {"version-did", DEFAULT_VERSION_DID, "version", false},
    {"hardware-did", DEFAULT_HARDWARE_DID, "hardware", true},
};

static int parse_isotp_options(struct uds *u, const struct gw_options *o)
{
        const char *v = gw_options_get(o, "padding");
        uint64_t x;

        u->tp.padding = DEFAULT_PADDING;
        if (is_none(v))
                u->tp.padding = -1;
        else if (v) {
                if (gw_options_get_u64(o, "padding", 0, 0, 0xff, &x) < 0)
                        return bad_option(u, "padding", "a byte 0x00 to 0xff, or none");
                u->tp.padding = (int) x;
        }
        if (gw_options_get_u64(o, "rx-block-size", 0, 0, 0xff, &x) < 0)
                return bad_option(u, "rx-block-size", "0 to 255");
        u->tp.rx_bs = (uint8_t) x;
        if (gw_options_get_u64(o, "rx-stmin", 0, 0, 0xf9, &x) < 0 || (x > 0x7f && x < 0xf1))
                return bad_option(u, "rx-stmin", "0x00 to 0x7f (ms) or 0xf1 to 0xf9 (100-900 us)");
        u->tp.rx_stmin = (uint8_t) x;
        if (gw_options_get_u64(o, "max-message", GW_ISOTP_CLASSIC_MAX, 64, GW_ISOTP_MESSAGE_MAX,
                               &x) < 0)
                return bad_option(u, "max-message", "64 to 1048576 (bytes)");
        u->tp.max_rx = u->tp.max_tx = (uint32_t) x;
        if (gw_options_get_u64(o, "wait-frames-max", DEFAULT_WFT_MAX, 0, 1000, &x) < 0)
                return bad_option(u, "wait-frames-max", "0 to 1000");
        u->tp.wft_max = (unsigned) x;
        return 0;
}

static int parse_session_options(struct uds *u, const struct gw_options *o)
{
        uint64_t x;
        bool on;
        int r;

        if (gw_options_get_bool(o, "ecu-timing", true, &u->ecu_timing) < 0)
                return bad_option(u, "ecu-timing", "true or false");
        if (gw_options_get_u64(o, "response-pending-max", DEFAULT_PENDING_MAX, 0, 10000,
                               &u->pending_max) < 0)
                return bad_option(u, "response-pending-max", "0 to 10000");
        if (gw_options_get_u64(o, "busy-retries", DEFAULT_BUSY_RETRIES, 0, 100, &u->busy_retries) <
            0)
                return bad_option(u, "busy-retries", "0 to 100");
        r = get_optional(u, o, "extended-session", DEFAULT_EXT_SESSION, 0x01, 0x7f, true, &on, &x,
                         "a session 0x01 to 0x7f, or none");
        if (r < 0)
                return r;
        u->ext_session_on = on;
        u->ext_session = (uint8_t) x;
        if (gw_options_get_u64(o, "programming-session", DEFAULT_PROG_SESSION, 0x01, 0x7f, &x) < 0)
                return bad_option(u, "programming-session", "a session 0x01 to 0x7f");
        u->prog_session = (uint8_t) x;
        if (gw_options_get_bool(o, "dtc-setting-off", false, &u->dtc_off) < 0)
                return bad_option(u, "dtc-setting-off", "true or false");
        r = get_optional(u, o, "communication-control", 0, 0, 0x7fff, false, &on, &x,
                         "0xCCTT (control type 0x00-0x7f, communication type), or none");
        if (r < 0)
                return r;
        u->comm_control_on = on;
        u->comm_control[0] = (uint8_t) (x >> 8);
        u->comm_control[1] = (uint8_t) x;
        return 0;
}

static int parse_security_options(struct uds *u, const struct gw_options *o)
{
        const char *v;
        uint64_t x;
        int r;

        if (gw_options_get_u64(o, "security-level", DEFAULT_LEVEL, 0, 0x7d, &x) < 0 ||
            (x != 0 && x % 2 == 0))
                return bad_option(u, "security-level", "an odd level 0x01 to 0x7d, or 0 (none)");
        u->level = (uint8_t) x;
        r = get_string(u, o, "seedkey-module", 4096, true, &u->key_module);
        if (r >= 0)
                r = get_string(u, o, "seedkey-params", 1024, false, &u->key_params);
        if (r >= 0)
                r = get_string(u, o, "seedkey-program", 4096, true, &u->key_program);
        if (r >= 0)
                r = get_args(u, o);
        if (r < 0)
                return r;
        if (u->key_module && u->key_program)
                return bad_option(u, "seedkey-module",
                                  "either seedkey-module or seedkey-program, not both");
        v = gw_options_get(o, "seedkey-input");
        if (v && strcmp(v, "stdin") == 0)
                u->seed_on_stdin = true;
        else if (v && strcmp(v, "argument") != 0)
                return bad_option(u, "seedkey-input", "argument or stdin");
        return 0;
}

static int parse_memory_options(struct uds *u, const struct gw_options *o)
{
        const char *v;
        uint64_t x;
        int r;

        if (gw_options_get(o, "address")) {
                if (gw_options_get_u64(o, "address", 0, 0, UINT64_MAX, &u->address) < 0)
                        return bad_option(u, "address", "an address (decimal or 0x hex)");
                u->have_address = true;
        }
        if (gw_options_get_u64(o, "address-length-format", DEFAULT_ALFID, 0x11, 0x88, &x) < 0 ||
            (x & 0x0f) == 0 || (x & 0x0f) > 8 || (x >> 4) == 0 || (x >> 4) > 8)
                return bad_option(u, "address-length-format",
                                  "0xSA: S size bytes and A address bytes, each 1 to 8");
        u->alfid = (uint8_t) x;
        if (u->have_address && (u->alfid & 0x0f) < 8 && u->address >> (8 * (u->alfid & 0x0f)))
                return bad_option(u, "address", "an address that fits address-length-format");
        if (gw_options_get_u64(o, "data-format", 0, 0, 0xff, &x) < 0)
                return bad_option(u, "data-format", "a dataFormatIdentifier byte 0x00 to 0xff");
        u->data_format = (uint8_t) x;
        if (gw_options_get_u64(o, "max-block-length", 0, BLOCK_LENGTH_MIN, GW_ISOTP_MESSAGE_MAX,
                               &u->max_block_opt) < 0)
                return bad_option(u, "max-block-length",
                                  "3 to 1048576 (bytes, SID and counter included)");
        r = get_optional(u, o, "erase-routine", DEFAULT_ERASE_RID, 0, 0xffff, true, &u->erase_on,
                         &x, "a routine 0x0000 to 0xffff, or none");
        if (r < 0)
                return r;
        u->erase_rid = (uint16_t) x;
        r = get_optional(u, o, "check-routine", DEFAULT_CHECK_RID, 0, 0xffff, true, &u->check_on,
                         &x, "a routine 0x0000 to 0xffff, or none");
        if (r < 0)
                return r;
        u->check_rid = (uint16_t) x;
        r = get_params(u, o, "erase-params", PARAMS_ALFID_ADDRESS_SIZE, false, &u->erase_params);
        if (r >= 0)
                r = get_params(u, o, "check-params", PARAMS_CRC32, true, &u->check_params);
        if (r < 0)
                return r;
        v = gw_options_get(o, "routine-status");
        u->routine_status_check = true;
        if (v && strcmp(v, "ignore") == 0)
                u->routine_status_check = false;
        else if (v && strcmp(v, "check") != 0)
                return bad_option(u, "routine-status", "check or ignore");
        if (gw_options_get_u64(o, "transfer-retries", DEFAULT_TRANSFER_RETRIES, 0, 100,
                               &u->transfer_retries) < 0)
                return bad_option(u, "transfer-retries", "0 to 100");
        return get_did(u, o, "resume-did", DEFAULT_RESUME_DID, &u->resume_on, &u->resume_did);
}

static int parse_reset_options(struct uds *u, const struct gw_options *o)
{
        const char *v;
        uint64_t x;
        int r;

        r = get_optional(u, o, "reset-type", DEFAULT_RESET_TYPE, 0x01, 0x7f, true, &u->reset_on, &x,
                         "a resetType 0x01 to 0x7f, or none");
        if (r < 0)
                return r;
        u->reset_type = (uint8_t) x;
        v = gw_options_get(o, "reset-wait");
        u->reset_wait = RESET_WAIT_TESTER;
        if (v && strcmp(v, "session") == 0)
                u->reset_wait = RESET_WAIT_SESSION;
        else if (is_none(v))
                u->reset_wait = RESET_WAIT_NONE;
        else if (v && strcmp(v, "tester-present") != 0)
                return bad_option(u, "reset-wait", "tester-present, session or none");
        return 0;
}

static int parse_options(struct uds *u, const struct gw_options *o)
{
        int r;

        for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
                const struct duration_option *d = &durations[i];

                r = get_ms(u, o, d->key, d->def, d->min, d->max,
                           (uint64_t *) (void *) ((uint8_t *) u + d->offset));
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < N_IDENTIFY_DIDS; i++) {
                u->dids[i] = (struct did_fact){.fact = did_options[i].fact,
                                               .optional = did_options[i].optional};
                r = get_did(u, o, did_options[i].key, did_options[i].def, &u->dids[i].enabled,
                            &u->dids[i].did);
                if (r < 0)
                        return r;
        }
        r = parse_isotp_options(u, o);
        if (r >= 0)
                r = parse_session_options(u, o);
        if (r >= 0)
                r = parse_security_options(u, o);
        if (r >= 0)
                r = parse_memory_options(u, o);
        if (r >= 0)
                r = parse_reset_options(u, o);
        return r;
}

static void uds_done(void *priv)
{
        struct uds *u = priv;

        stop_key_program(u);
        gw_uds_keymod_unload(&u->keymod);
        gw_isotp_done(&u->tp_conn);
        u->tp_ready = false;
        free(u->req);
        free(u->key_module);
        free(u->key_params);
        free(u->key_program);
        free(u->key_args_buf);
        u->req = NULL;
        u->key_module = u->key_params = u->key_program = u->key_args_buf = NULL;
}

static int uds_init(void *priv, const struct gw_options *opts, const struct gw_proto_host *host)
{
        struct uds *u = priv;
        int r;

        u->host = host;
        u->fine_clock = host->version >= 3 && host->now_us && host->set_deadline_us;
        u->state = UDS_IDLE;
        u->keyprog.out_fd = -1;
        r = parse_options(u, opts);
        if (r < 0)
                uds_done(u); /* the core frees priv without done() when init fails */
        return r;
}

/* Where the image goes against the address and length format: 0, or the reason. */
static int check_range(struct uds *u, uint64_t size, char *why, size_t why_size)
{
        unsigned a = u->alfid & 0x0f, s = u->alfid >> 4;

        if (!u->have_address) {
                snprintf(why, why_size,
                         "option address is required: where the image goes in the ECU's memory");
                return -EINVAL;
        }
        if (size == 0) {
                snprintf(why, why_size, "the image is empty");
                return -EINVAL;
        }
        if (s < 8 && size >> (8 * s)) {
                snprintf(why, why_size,
                         "the image (%" PRIu64 " bytes) does not fit the %u size bytes of "
                         "address-length-format 0x%02x",
                         size, s, u->alfid);
                return -EFBIG;
        }
        if (a < 8 && (size - 1) > (UINT64_C(1) << (8 * a)) - 1 - u->address) {
                snprintf(why, why_size,
                         "the image (%" PRIu64 " bytes at 0x%" PRIx64 ") reaches past the %u "
                         "address bytes of address-length-format 0x%02x",
                         size, u->address, a, u->alfid);
                return -EFBIG;
        }
        if (a == 8 && size - 1 > UINT64_MAX - u->address) {
                snprintf(why, why_size, "the image reaches past the end of memory");
                return -EFBIG;
        }
        return 0;
}

static int uds_install(void *priv, const struct gw_reader *reader)
{
        struct uds *u = priv;
        char why[200];
        int r;

        if (u->state != UDS_IDLE)
                return -EBUSY;
        if (!reader || !reader->pread)
                return -EINVAL;
        u->reader = reader;
        r = check_range(u, reader->size, why, sizeof(why));
        if (r < 0) {
                fail(u, r, "%s", why);
                return leave(u);
        }
        if (setup_link(u) < 0)
                return leave(u);
        gw_proto_debug(u->host, "uds: installing %" PRIu64 " bytes at 0x%" PRIx64, reader->size,
                       u->address);
        step_extended(u);
        return leave(u);
}

static int uds_identify(void *priv, struct gw_options *ret)
{
        struct uds *u = priv;

        if (u->state != UDS_IDLE)
                return -EBUSY;
        if (!ret)
                return -EINVAL;
        u->facts = ret;
        if (setup_link(u) < 0)
                return leave(u);
        if (add_fact_id(u, "tx-id", u->info->tx_id) < 0 ||
            add_fact_id(u, "rx-id", u->info->rx_id) < 0)
                return leave(u);
        u->did_index = 0;
        next_identify(u);
        return leave(u);
}

static int uds_frame(void *priv, const struct gw_can_frame *f)
{
        struct uds *u = priv;

        if (!u->tp_ready || ended(u))
                return result(u);
        u->heard = true;
        gw_isotp_frame(&u->tp_conn, f, now(u));
        return leave(u);
}

static int uds_timeout(void *priv)
{
        struct uds *u = priv;
        uint64_t t;

        if (ended(u) || !u->tp_ready)
                return result(u);
        t = now(u);
        /* A host timer that fired may be disarmed (the core's is one-shot) or not (a test's):
         * whatever is due next, 0 included, is given anew. */
        if (u->armed && t >= u->armed)
                u->armed = UINT64_MAX;
        if (gw_isotp_deadline(&u->tp_conn) && t >= gw_isotp_deadline(&u->tp_conn))
                gw_isotp_timeout(&u->tp_conn, t);
        for (int i = 0; i < _T_MAX && !ended(u); i++) {
                if (!u->timers[i] || t < u->timers[i])
                        continue;
                u->timers[i] = 0;
                on_timer(u, (enum uds_timer) i);
        }
        return leave(u);
}

static int uds_cancel(void *priv)
{
        struct uds *u = priv;
        uint8_t exit_req[1] = {SID_EXIT};

        switch (u->state) {
        case UDS_IDLE:
        case UDS_DONE:
        case UDS_FAILED:
                timers_clear(u);
                leave(u);
                return -ECANCELED;
        case UDS_TRANSFER:
                /* Stop sending; the ECU is told the download ends. */
                gw_isotp_abort_send(&u->tp_conn);
                timers_clear(u);
                request(u, UDS_CANCEL_EXIT, exit_req, sizeof(exit_req));
                return leave(u);
        default:
                fail(u, -ECANCELED, "cancelled");
                return leave(u);
        }
}

/* The image against the options before any node is written: an address, and a size and range
 * that the address-and-length format can carry. */
static int uds_check_image(void *priv, const struct gw_reader *reader,
                           const struct gw_options *facts)
{
        struct uds *u = priv;
        char why[200];
        int r;

        if (!reader)
                return -EINVAL;
        r = check_range(u, reader->size, why, sizeof(why));
        if (r < 0 && u->host->set_error)
                u->host->set_error(u->host->ctx, "%s", why);
        return r;
}

static const char *const uds_options[] = {
    "padding",
    "rx-block-size",
    "rx-stmin",
    "max-message",
    "n-as-ms",
    "n-bs-ms",
    "n-cr-ms",
    "wait-frames-max",
    "p2-ms",
    "p2-star-ms",
    "timing-margin-ms",
    "ecu-timing",
    "response-pending-max",
    "busy-retries",
    "busy-delay-ms",
    "tester-present-ms",
    "extended-session",
    "programming-session",
    "dtc-setting-off",
    "communication-control",
    "security-level",
    "seedkey-module",
    "seedkey-params",
    "seedkey-program",
    "seedkey-args",
    "seedkey-input",
    "seedkey-timeout-ms",
    "address",
    "address-length-format",
    "data-format",
    "max-block-length",
    "erase-routine",
    "erase-params",
    "check-routine",
    "check-params",
    "routine-status",
    "transfer-retries",
    "resume-did",
    "reset-type",
    "reset-wait",
    "reset-delay-ms",
    "reset-poll-ms",
    "reset-timeout-ms",
    "serial-did",
    "version-did",
    "hardware-did",
    NULL,
};

const struct gw_protocol_ops gw_protocol_uds_ops = {
    .version = GW_PROTOCOL_OPS_VERSION,
    .name = "uds",
    .shape = GW_LINK_FRAMES,
    .priv_size = sizeof(struct uds),
    .init = uds_init,
    .done = uds_done,
    .install = uds_install,
    .input = NULL,
    .timeout = uds_timeout,
    .cancel = uds_cancel,
    .identify = uds_identify,
    .hangup = NULL,
    .options = uds_options,
    .check_image = uds_check_image,
    .frame = uds_frame,
};
