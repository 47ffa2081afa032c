/* fpga-flasher: a small external flasher standing in for a vendor's tool (openFPGALoader,
 * ecpprog, iceprog), for the exec protocol's tests and the demo. It "programs" a simulated
 * FPGA whose configuration flash is a file: erases, writes the bitstream at a pace, verifies,
 * prints progress as real tools do, identifies the FPGA, and fails on demand. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

#define PROG "fpga-flasher"

/* The simulated FPGA's bitstreams carry the sync word 7-series Xilinx parts look for
 * (UG470), somewhere in their first SYNC_WINDOW bytes, after an optional ASCII header that
 * may say "version=X" on a line of its own. */
static const uint8_t sync_word[4] = {0xaa, 0x99, 0x55, 0x66};
#define SYNC_WINDOW    4096
#define VERSION_MAX    64
#define DEFAULT_IDCODE 0x0362d093u /* as an XC7A35T answers; this FPGA is not one */
#define DEFAULT_FLASH  (1024u * 1024u)
#define DEFAULT_RATE   (512u * 1024u) /* bytes programmed per second */
#define ERASE_RATE     (8u * 1024u * 1024u)
#define CHUNK          4096u
#define FLASH_MAX      (256u * 1024u * 1024u)
#define BAR_WIDTH      40

struct opts {
        const char *flash;
        const char *report;
        const char *image;
        uint64_t flash_size;
        uint64_t offset;
        uint64_t rate;
        uint64_t idcode;
        int64_t fail_at;  /* percent, -1 = never */
        int64_t crash_at; /* percent, -1 = never */
        int64_t stall_at; /* percent, -1 = never: print progress up to it, then hang */
        bool identify;
        bool hang;
        bool silent;
        bool slow;
        bool newlines;
        bool any;
        bool ignore_term;
        bool report_start; /* a report line when programming starts too */
        bool helper;       /* --hang also starts a helper in the same process group */
        pid_t helper_pid;  /* that helper, once started */
        int argc;
        char **argv;
};

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: " PROG " --flash FILE [OPTIONS] BITSTREAM\n"
                "       " PROG " --flash FILE --idcode\n"
                "\n"
                "Programs a simulated FPGA whose configuration flash is FILE (created, erased\n"
                "to 0xff, when missing): checks BITSTREAM's sync word AA 99 55 66 in its first\n"
                "4 KiB, erases, writes it at --offset at --rate bytes/s and verifies it,\n"
                "printing progress as real tools do. --idcode prints what the FPGA is and what\n"
                "its flash holds as key=value lines.\n"
                "\n"
                "  --flash FILE        the configuration flash (required)\n"
                "  --flash-size N      its size when created (default 1048576)\n"
                "  --offset N          where the bitstream goes (default 0)\n"
                "  --rate N            bytes programmed per second (default 524288)\n"
                "  --idcode-value N    the JTAG IDCODE reported (default 0x0362d093)\n"
                "  --any               accept a bitstream without the sync word\n"
                "  --newlines          end progress lines with LF, not CR\n"
                "  --report FILE       append a JSON line: result, bytes, argv\n"
                "  --report-start      and one when programming starts (result: started)\n"
                "Faults:\n"
                "  --fail-at PCT       stop at PCT with an error line, exit status 1\n"
                "  --crash-at PCT      die of SIGSEGV at PCT\n"
                "  --crash             the same at 50%%\n"
                "  --stall-at PCT      print progress up to PCT, then hang\n"
                "  --hang              print nothing and never exit (with a helper process in\n"
                "                      the same process group, holding the output open)\n"
                "  --silent            no progress output\n"
                "  --slow              ten times slower\n"
                "  --ignore-term       ignore SIGTERM (only SIGKILL ends it)\n"
                "\n"
                "Exit status: 0 programmed, 1 failed, 2 usage.\n");
}

static void report(const struct opts *o, const char *result, const char *reason, uint64_t bytes)
{
        json_t *j, *args;
        FILE *f;
        char *s;

        if (!o->report)
                return;
        args = json_array();
        for (int i = 0; args && i < o->argc; i++)
                json_array_append_new(args, json_string(o->argv[i]));
        j = json_pack("{s:s, s:s?, s:s?, s:I, s:i, s:o}", "result", result, "reason", reason,
                      "image", o->image, "bytes", (json_int_t) bytes, "pid", (int) getpid(), "argv",
                      args ? args : json_null());
        if (j && o->helper_pid > 0)
                json_object_set_new(j, "helper", json_integer(o->helper_pid));
        s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        f = fopen(o->report, "ae");
        if (f && s)
                fprintf(f, "%s\n", s);
        if (f)
                fclose(f);
        free(s);
        json_decref(j);
}

static void sleep_ms(uint64_t ms)
{
        struct timespec ts = {.tv_sec = (time_t) (ms / 1000),
                              .tv_nsec = (long) (ms % 1000) * 1000000};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static void hang(void)
{
        for (;;)
                pause();
}

/* The flash file, created at flash_size bytes of 0xff when missing. */
static int open_flash(const struct opts *o, uint64_t *ret_size)
{
        struct stat st;
        int fd = open(o->flash, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

        if (fd < 0 || fstat(fd, &st) < 0) {
                fprintf(stderr, "error: cannot open the flash %s: %m\n", o->flash);
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        if ((uint64_t) st.st_size < o->flash_size && st.st_size == 0) {
                uint8_t ff[CHUNK];

                memset(ff, 0xff, sizeof(ff));
                for (uint64_t off = 0; off < o->flash_size; off += CHUNK) {
                        size_t n =
                            o->flash_size - off < CHUNK ? (size_t) (o->flash_size - off) : CHUNK;

                        if (pwrite(fd, ff, n, (off_t) off) != (ssize_t) n) {
                                fprintf(stderr, "error: cannot create the flash %s: %m\n",
                                        o->flash);
                                close(fd);
                                return -1;
                        }
                }
                st.st_size = (off_t) o->flash_size;
        }
        *ret_size = (uint64_t) st.st_size;
        return fd;
}

/* The "version=" line of a bitstream's header (before the sync word), or "". */
static void header_version(const uint8_t *p, size_t n, char *buf, size_t size)
{
        static const char key[] = "version=";
        size_t end = n;

        buf[0] = '\0';
        for (size_t i = 0; i + 4 <= n; i++)
                if (memcmp(p + i, sync_word, 4) == 0) {
                        end = i;
                        break;
                }
        for (size_t i = 0; i + sizeof(key) - 1 < end; i++) {
                size_t k = 0;

                if ((i > 0 && p[i - 1] != '\n' && p[i - 1] != ' ') ||
                    memcmp(p + i, key, sizeof(key) - 1) != 0)
                        continue;
                i += sizeof(key) - 1;
                while (i + k < end && k + 1 < size && p[i + k] > ' ' && p[i + k] < 0x7f) {
                        buf[k] = (char) p[i + k];
                        k++;
                }
                buf[k] = '\0';
                return;
        }
}

static int identify(struct opts *o)
{
        uint8_t head[SYNC_WINDOW];
        char version[VERSION_MAX];
        uint64_t size;
        ssize_t n;
        int fd;

        if (o->hang) {
                report(o, "hanging", "hang", 0);
                hang();
        }
        fd = open_flash(o, &size);
        if (fd < 0)
                return 1;
        n = pread(fd, head, sizeof(head), (off_t) o->offset);
        close(fd);
        printf("Scanning the JTAG chain\n");
        printf("idcode=0x%08" PRIx64 "\n", o->idcode);
        printf("family: sim-fpga\n");
        printf("flash-size=%" PRIu64 "\n", size);
        header_version(head, n > 0 ? (size_t) n : 0, version, sizeof(version));
        if (version[0])
                printf("version=%s\n", version);
        else
                printf("No design version in the flash\n");
        report(o, "identified", NULL, 0);
        return 0;
}

static void progress(const struct opts *o, const char *what, unsigned pct)
{
        unsigned fill = pct * BAR_WIDTH / 100;

        if (o->silent)
                return;
        printf("%s: [%.*s%*s] %3u%%%s", what, (int) fill,
               "########################################", (int) (BAR_WIDTH - fill), "", pct,
               o->newlines || pct == 100 ? "\n" : "\r");
        fflush(stdout);
}

/* The fault that fires at pct, if any; does not return for crash and stall. */
static int fault_at(const struct opts *o, unsigned pct, uint64_t written)
{
        if (o->fail_at >= 0 && pct >= (uint64_t) o->fail_at) {
                if (!o->silent && !o->newlines)
                        printf("\n");
                printf("error: programming failed at %u%% (0x%06" PRIx64
                       "): the FPGA does not answer\n",
                       pct, o->offset + written);
                fflush(stdout);
                report(o, "failed", "fail-at", written);
                return 1;
        }
        if (o->crash_at >= 0 && pct >= (uint64_t) o->crash_at) {
                fflush(stdout);
                report(o, "crashed", "crash-at", written);
                signal(SIGSEGV, SIG_DFL);
                raise(SIGSEGV);
                _exit(99);
        }
        if (o->stall_at >= 0 && pct >= (uint64_t) o->stall_at) {
                fflush(stdout);
                report(o, "stalled", "stall-at", written);
                hang();
        }
        return 0;
}

static int program(struct opts *o)
{
        uint8_t *image = NULL, buf[CHUNK];
        uint64_t flash_size, size, rate = o->slow ? o->rate / 10 : o->rate;
        struct stat st;
        unsigned last = 101;
        bool sync = false;
        int fd, in, ret = 1;

        if (rate == 0)
                rate = 1;
        if (o->hang) {
                /* A helper in the same process group holds the output open too: only a kill of
                 * the whole group ends the run. */
                if (o->helper) {
                        o->helper_pid = fork();
                        if (o->helper_pid == 0)
                                hang();
                }
                report(o, "hanging", "hang", 0);
                hang();
        }
        if (o->report_start)
                report(o, "started", NULL, 0);
        in = open(o->image, O_RDONLY | O_CLOEXEC);
        if (in < 0 || fstat(in, &st) < 0) {
                printf("error: cannot read %s: %s\n", o->image, strerror(errno));
                report(o, "failed", "unreadable", 0);
                return 1;
        }
        size = (uint64_t) st.st_size;
        fd = open_flash(o, &flash_size);
        if (fd < 0) {
                close(in);
                return 1;
        }
        printf("Simulated FPGA: IDCODE 0x%08" PRIx64 ", flash %" PRIu64 " bytes\n", o->idcode,
               flash_size);
        if (size == 0 || o->offset > flash_size || size > flash_size - o->offset) {
                printf("error: a %" PRIu64 "-byte bitstream at 0x%" PRIx64
                       " does not fit the %" PRIu64 "-byte flash\n",
                       size, o->offset, flash_size);
                report(o, "failed", "too-large", 0);
                goto out;
        }
        image = malloc(size);
        if (!image || pread(in, image, size, 0) != (ssize_t) size) {
                printf("error: cannot read %s\n", o->image);
                report(o, "failed", "unreadable", 0);
                goto out;
        }
        for (uint64_t i = 0; i + 4 <= size && i < SYNC_WINDOW && !sync; i++)
                sync = memcmp(image + i, sync_word, 4) == 0;
        if (!sync && !o->any) {
                printf("error: no sync word (AA 99 55 66) in the first %d bytes: not a bitstream "
                       "for this FPGA\n",
                       SYNC_WINDOW);
                report(o, "failed", "no-sync", 0);
                goto out;
        }
        /* Erase the sectors the bitstream covers. */
        memset(buf, 0xff, sizeof(buf));
        for (uint64_t off = 0; off < size; off += CHUNK) {
                size_t n = size - off < CHUNK ? (size_t) (size - off) : CHUNK;

                if (pwrite(fd, buf, n, (off_t) (o->offset + off)) != (ssize_t) n) {
                        printf("error: erase failed: %s\n", strerror(errno));
                        report(o, "failed", "erase", 0);
                        goto out;
                }
        }
        sleep_ms(size * 1000 / ERASE_RATE);
        if (!o->silent)
                printf("Erasing: done\n");
        for (uint64_t off = 0; off <= size; off += CHUNK) {
                size_t n = size - off < CHUNK ? (size_t) (size - off) : CHUNK;
                unsigned pct = (unsigned) (off * 100 / size);

                if (pct != last) {
                        last = pct;
                        if (fault_at(o, pct, off))
                                goto out;
                        progress(o, "Writing", pct);
                }
                if (n == 0)
                        break;
                if (pwrite(fd, image + off, n, (off_t) (o->offset + off)) != (ssize_t) n) {
                        printf("\nerror: write failed at 0x%06" PRIx64 ": %s\n", o->offset + off,
                               strerror(errno));
                        report(o, "failed", "write", off);
                        goto out;
                }
                sleep_ms(n * 1000 / rate);
        }
        if (last != 100)
                progress(o, "Writing", 100);
        /* Verify: read the flash back. */
        for (uint64_t off = 0; off < size; off += CHUNK) {
                size_t n = size - off < CHUNK ? (size_t) (size - off) : CHUNK;

                if (pread(fd, buf, n, (off_t) (o->offset + off)) != (ssize_t) n ||
                    memcmp(buf, image + off, n) != 0) {
                        printf("error: verify failed at 0x%06" PRIx64 "\n", o->offset + off);
                        report(o, "failed", "verify", size);
                        goto out;
                }
        }
        if (fsync(fd) < 0) {
                printf("error: cannot sync the flash: %s\n", strerror(errno));
                goto out;
        }
        printf("Verifying: ok\nDone: %" PRIu64 " bytes programmed\n", size);
        report(o, "ok", NULL, size);
        ret = 0;
out:
        fflush(stdout);
        free(image);
        close(fd);
        close(in);
        return ret;
}

static int percent(const char *s, int64_t *ret)
{
        uint64_t v;

        if (gw_sim_parse_u64(s, 10, 100, &v) < 0)
                return -EINVAL;
        *ret = (int64_t) v;
        return 0;
}

int main(int argc, char **argv)
{
        enum {
                OPT_FLASH = 256,
                OPT_FLASH_SIZE,
                OPT_OFFSET,
                OPT_RATE,
                OPT_IDCODE_VALUE,
                OPT_IDCODE,
                OPT_ANY,
                OPT_NEWLINES,
                OPT_REPORT,
                OPT_FAIL_AT,
                OPT_CRASH_AT,
                OPT_CRASH,
                OPT_STALL_AT,
                OPT_HANG,
                OPT_SILENT,
                OPT_SLOW,
                OPT_IGNORE_TERM,
                OPT_REPORT_START,
        };
        static const struct option longopts[] = {
            {"flash", required_argument, NULL, OPT_FLASH},
            {"flash-size", required_argument, NULL, OPT_FLASH_SIZE},
            {"offset", required_argument, NULL, OPT_OFFSET},
            {"rate", required_argument, NULL, OPT_RATE},
            {"idcode-value", required_argument, NULL, OPT_IDCODE_VALUE},
            {"idcode", no_argument, NULL, OPT_IDCODE},
            {"any", no_argument, NULL, OPT_ANY},
            {"newlines", no_argument, NULL, OPT_NEWLINES},
            {"report", required_argument, NULL, OPT_REPORT},
            {"fail-at", required_argument, NULL, OPT_FAIL_AT},
            {"crash-at", required_argument, NULL, OPT_CRASH_AT},
            {"crash", no_argument, NULL, OPT_CRASH},
            {"stall-at", required_argument, NULL, OPT_STALL_AT},
            {"hang", no_argument, NULL, OPT_HANG},
            {"silent", no_argument, NULL, OPT_SILENT},
            {"slow", no_argument, NULL, OPT_SLOW},
            {"ignore-term", no_argument, NULL, OPT_IGNORE_TERM},
            {"report-start", no_argument, NULL, OPT_REPORT_START},
            {"help", no_argument, NULL, 'h'},
            {},
        };
        struct opts o = {
            .flash_size = DEFAULT_FLASH,
            .rate = DEFAULT_RATE,
            .idcode = DEFAULT_IDCODE,
            .fail_at = -1,
            .crash_at = -1,
            .stall_at = -1,
            .helper = true,
            .argc = argc,
            .argv = argv,
        };
        int c, bad = 0;

        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                switch (c) {
                case OPT_FLASH:
                        o.flash = optarg;
                        break;
                case OPT_FLASH_SIZE:
                        bad |= gw_sim_parse_u64(optarg, 0, FLASH_MAX, &o.flash_size) < 0 ||
                               o.flash_size == 0;
                        break;
                case OPT_OFFSET:
                        bad |= gw_sim_parse_u64(optarg, 0, FLASH_MAX, &o.offset) < 0;
                        break;
                case OPT_RATE:
                        bad |= gw_sim_parse_u64(optarg, 0, UINT32_MAX, &o.rate) < 0 || o.rate == 0;
                        break;
                case OPT_IDCODE_VALUE:
                        bad |= gw_sim_parse_u64(optarg, 0, UINT32_MAX, &o.idcode) < 0;
                        break;
                case OPT_IDCODE:
                        o.identify = true;
                        break;
                case OPT_ANY:
                        o.any = true;
                        break;
                case OPT_NEWLINES:
                        o.newlines = true;
                        break;
                case OPT_REPORT:
                        o.report = optarg;
                        break;
                case OPT_FAIL_AT:
                        bad |= percent(optarg, &o.fail_at) < 0;
                        break;
                case OPT_CRASH_AT:
                        bad |= percent(optarg, &o.crash_at) < 0;
                        break;
                case OPT_CRASH:
                        o.crash_at = 50;
                        break;
                case OPT_STALL_AT:
                        bad |= percent(optarg, &o.stall_at) < 0;
                        break;
                case OPT_HANG:
                        o.hang = true;
                        break;
                case OPT_SILENT:
                        o.silent = true;
                        break;
                case OPT_SLOW:
                        o.slow = true;
                        break;
                case OPT_IGNORE_TERM:
                        o.ignore_term = true;
                        break;
                case OPT_REPORT_START:
                        o.report_start = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (bad || !o.flash || (o.identify ? optind != argc : optind != argc - 1)) {
                fprintf(stderr, PROG ": %s\n",
                        bad       ? "a bad number"
                        : o.flash ? "expected one BITSTREAM (none with --idcode)"
                                  : "--flash FILE is required");
                usage(stderr);
                return 2;
        }
        if (!o.identify)
                o.image = argv[optind];
        if (o.ignore_term)
                signal(SIGTERM, SIG_IGN);
        return o.identify ? identify(&o) : program(&o);
}
