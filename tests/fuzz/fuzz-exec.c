/* Fuzz target for the exec protocol's reading of a tool's output (protocols/exec/): the bytes
 * are what an external flasher printed, in chunks, read as exec reads them (lines, carriage
 * returns, escape sequences, progress patterns, identify facts). The plugin's file is compiled
 * in here so that its output parser is reached without a child process. Checks: progress never
 * passes the image's size, facts stay within their count and lengths, the error message's tail
 * stays short and printable. */
#include <stdint.h>
#include <string.h>

/* The copy compiled here must not clash with the core's built-in one. */
#define gw_protocol_exec_ops fuzz_exec_ops
#include "../../protocols/exec/exec.c"

#include "fuzz.h"

/* The input: one byte of set-up, then chunks (a length byte, then up to that many bytes). */
enum {
        MODE_PERCENT,    /* install, progress as a percent */
        MODE_DONE_TOTAL, /* install, progress as done/total */
        MODE_IDENTIFY,   /* identify with the default key=value pattern */
        MODE_PATTERN,    /* identify with a pattern of its own */
        _MODE_MAX,
};

struct fuzz_host {
        uint64_t now;
        uint64_t size;
        uint64_t last_done;
};

static void host_logv(void *ctx, int level, const char *fmt, va_list ap)
{
}

static uint64_t host_now(void *ctx)
{
        return ((struct fuzz_host *) ctx)->now;
}

static void host_set_deadline(void *ctx, uint64_t at)
{
}

static void host_progress(void *ctx, uint64_t done, uint64_t total)
{
        struct fuzz_host *h = ctx;

        fuzz_check(total == h->size);
        fuzz_check(done <= total);
        h->last_done = done;
}

static void host_set_error(void *ctx, const char *fmt, ...)
{
}

static ssize_t no_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        return 0;
}

static bool printable(const char *s)
{
        for (; *s; s++)
                if (*s < 0x20 || *s > 0x7e)
                        return false;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const char *const patterns[_MODE_MAX] = {
            [MODE_PERCENT] = "([0-9.,]+)%",
            [MODE_DONE_TOTAL] = "([0-9]+)/([0-9]+)",
        };
        struct fuzz_host fh = {.now = 1000};
        struct gw_proto_host host = {
            .version = GW_PROTO_HOST_VERSION,
            .ctx = &fh,
            .logv = host_logv,
            .now_ms = host_now,
            .set_deadline = host_set_deadline,
            .progress = host_progress,
            .set_error = host_set_error,
        };
        struct gw_reader reader = {.name = "x.bit", .pread = no_pread};
        struct gw_options *opts, *facts;
        char tail[MESSAGE_TAIL_MAX + 1];
        struct exec e;
        unsigned mode;
        size_t pos = 1;

        if (size < 1)
                return 0;
        mode = data[0] % _MODE_MAX;
        fh.size = reader.size = (uint64_t) (data[0] / _MODE_MAX) * 1000u + 1u;
        opts = gw_options_new();
        facts = gw_options_new();
        fuzz_check(opts && facts);
        gw_options_set(opts, "command", "[\"flasher\",\"{image}\"]");
        if (patterns[mode])
                gw_options_set(opts, "progress", patterns[mode]);
        if (mode >= MODE_IDENTIFY)
                gw_options_set(opts, "identify-command", "[\"flasher\",\"--id\"]");
        if (mode == MODE_PATTERN)
                gw_options_set(opts, "identify-pattern", "^[[:space:]]*([a-z]+)[[:space:]]+(.*)$");
        memset(&e, 0, sizeof(e));
        fuzz_check(exec_init(&e, opts, &host) == 0);
        e.reader = &reader;
        e.op = mode >= MODE_IDENTIFY ? OP_IDENTIFY : OP_INSTALL;
        e.facts = mode >= MODE_IDENTIFY ? facts : NULL;
        e.last_progress = UINT64_MAX;

        while (pos < size) {
                size_t n = data[pos++];

                if (n > size - pos)
                        n = size - pos;
                feed(&e, data + pos, n);
                pos += n;
                fuzz_check(e.line_len <= LINE_MAX_LEN);
        }
        if (e.line_len > 0)
                end_line(&e, false);

        tail_text(&e, tail, sizeof(tail));
        fuzz_check(strlen(tail) <= MESSAGE_TAIL_MAX);
        fuzz_check(printable(tail));
        fuzz_check(gw_options_count(facts) <= FACTS_MAX);
        for (size_t i = 0; i < gw_options_count(facts); i++) {
                fuzz_check(strlen(gw_options_key(facts, i)) <= FACT_KEY_MAX);
                fuzz_check(strlen(gw_options_value(facts, i)) <= FACT_VALUE_MAX);
                fuzz_check(printable(gw_options_key(facts, i)));
                fuzz_check(printable(gw_options_value(facts, i)));
        }
        exec_done(&e);
        gw_options_free(opts);
        gw_options_free(facts);
        return 0;
}
