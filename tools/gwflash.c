/* gwflash: flash one node straight from the shell, through the same transport and protocol
 * plugins gatewayd uses. A progress bar on a terminal, plain lines otherwise, --json for
 * scripts. Exit 0 only when the node took the whole image; 1 on failure; 2 on usage errors. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gw-config.h"
#include "gw/flash.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/registry.h"

struct run {
        struct gw_loop *loop;
        struct gw_flash *flash;
        const char *file;
        bool json, tty, quiet;
        uint64_t t0, last_ms, total;
        int last_decile;
        int result;
        bool finished;
        char reason[256];
        uint64_t done;
};

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: gwflash [OPTIONS] FILE\n"
                "       gwflash list [--json]\n"
                "\n"
                "Flash FILE to one node through a transport and a protocol plugin.\n"
                "\n"
                "  -t, --transport NAME   link to the node (built in: uart)\n"
                "  -p, --port PATH        serial port, e.g. /dev/ttyUSB0 or a pty from socat\n"
                "  -b, --baud N           line rate for serial links (default 115200)\n"
                "  -P, --protocol NAME    update protocol (built in: ymodem)\n"
                "  -o, --option KEY=VAL   extra transport or protocol option (repeatable),\n"
                "                         e.g. -o ack-timeout-ms=3000 -o parity=even\n"
                "  -n, --name NAME        file name announced to the node (default: FILE's)\n"
                "      --json             machine-readable progress and result on stdout\n"
                "  -q, --quiet            no progress output\n"
                "  -v, --verbose          debug logging (protocol state changes)\n"
                "  -h, --help             this text\n"
                "\n"
                "Exit status: 0 when the node took the whole image, 1 when flashing failed,\n"
                "2 on a usage error.\n"
                "\n"
                "Example:\n"
                "  gwflash --transport uart --port /dev/ttyUSB0 --baud 115200 --protocol ymodem "
                "fw.bin\n");
}

static void fmt_bytes(char *buf, size_t n, double v)
{
        if (v >= 1024.0 * 1024.0)
                snprintf(buf, n, "%.1f MiB", v / (1024.0 * 1024.0));
        else if (v >= 1024.0)
                snprintf(buf, n, "%.1f KiB", v / 1024.0);
        else
                snprintf(buf, n, "%.0f B", v);
}

static void on_progress(void *userdata, uint64_t done, uint64_t total)
{
        struct run *run = userdata;
        uint64_t now = gw_now_ms(), el = now - run->t0;
        double rate = el ? (double) done * 1000.0 / (double) el : 0.0;
        int pct = total ? (int) (done * 100 / total) : 100;

        run->done = done;
        run->total = total;
        if (run->quiet)
                return;
        if (run->json) {
                /* At most ten lines a second: scripts want a stream, not a flood. */
                if (done != total && now - run->last_ms < 100)
                        return;
                run->last_ms = now;
                printf("{\"event\":\"progress\",\"bytes\":%llu,\"total\":%llu,\"rate_bps\":%.0f}\n",
                       (unsigned long long) done, (unsigned long long) total, rate);
                fflush(stdout);
        } else if (run->tty) {
                char d[32], t[32], r[32], eta[32] = "--:--";
                int width = 30, fill = total ? (int) (done * (uint64_t) width / total) : width;

                if (done != total && now - run->last_ms < 100)
                        return;
                run->last_ms = now;
                fmt_bytes(d, sizeof(d), (double) done);
                fmt_bytes(t, sizeof(t), (double) total);
                fmt_bytes(r, sizeof(r), rate);
                if (rate > 0 && total >= done) {
                        unsigned s = (unsigned) ((double) (total - done) / rate + 0.5);

                        snprintf(eta, sizeof(eta), "%u:%02u", s / 60, s % 60);
                }
                fprintf(stderr, "\r[%.*s%*s] %3d%% %s / %s  %s/s  left %s\033[K", fill,
                        "##############################", width - fill, "", pct, d, t, r, eta);
        } else {
                int decile = pct / 10;

                if (decile == run->last_decile)
                        return;
                run->last_decile = decile;
                fprintf(stderr, "progress %d%% %llu/%llu bytes\n", pct, (unsigned long long) done,
                        (unsigned long long) total);
        }
}

static void on_finished(void *userdata, int result, const char *reason)
{
        struct run *run = userdata;

        run->finished = true;
        run->result = result;
        if (reason)
                snprintf(run->reason, sizeof(run->reason), "%s", reason);
        gw_loop_exit(run->loop, 0);
}

static int on_signal(struct gw_source *s, int signo, void *userdata)
{
        struct run *run = userdata;

        if (run->finished)
                return 0;
        if (!run->json && !run->quiet && run->tty)
                fputc('\n', stderr);
        gw_log_notice("Interrupted, cancelling the transfer");
        gw_flash_cancel(run->flash);
        return 0;
}

struct list_ctx {
        bool json;
        json_t *arr;
        unsigned n;
};

static int list_one(const struct gw_link_info *info, void *userdata)
{
        struct list_ctx *c = userdata;

        c->n++;
        if (c->json) {
                json_t *o =
                    json_pack("{s:s, s:s, s:s?, s:s?}", "transport", info->transport, "path",
                              info->path, "description", info->description, "serial", info->serial);

                if (o && (info->vid || info->pid)) {
                        char id[16];

                        snprintf(id, sizeof(id), "%04x:%04x", info->vid, info->pid);
                        json_object_set_new(o, "usb", json_string(id));
                }
                if (o)
                        json_array_append_new(c->arr, o);
                return 0;
        }
        printf("%-6s %-24s", info->transport, info->path);
        if (info->vid || info->pid)
                printf(" %04x:%04x", info->vid, info->pid);
        if (info->serial)
                printf(" serial=%s", info->serial);
        if (info->description)
                printf("  %s", info->description);
        printf("\n");
        return 0;
}

static int cmd_list(int argc, char **argv)
{
        const struct gw_transport_ops *t;
        struct list_ctx c = {0};

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--json") == 0)
                        c.json = true;
                else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        printf("Usage: gwflash list [--json]\n\nLists the links every transport "
                               "can see: serial ports (with USB ids and serial numbers).\n");
                        return 0;
                } else {
                        fprintf(stderr, "gwflash list: unknown argument '%s'\n", argv[i]);
                        return 2;
                }
        }
        if (c.json)
                c.arr = json_array();
        for (size_t i = 0; (t = gw_transport_get(i)); i++) {
                int r;

                if (!t->enumerate)
                        continue;
                r = t->enumerate(NULL, list_one, &c);
                if (r < 0)
                        gw_log_warning_errno(r, "Failed to enumerate %s links: %m, ignoring",
                                             t->name);
        }
        if (c.json) {
                char *s = json_dumps(c.arr, JSON_COMPACT);

                printf("%s\n", s ? s : "[]");
                free(s);
                json_decref(c.arr);
        } else if (c.n == 0) {
                fprintf(stderr, "No links found.\n");
        }
        return 0;
}

static int add_kv(struct gw_options *o, const char *kv)
{
        const char *eq = strchr(kv, '=');
        char key[128];

        if (!eq || eq == kv || (size_t) (eq - kv) >= sizeof(key))
                return -EINVAL;
        memcpy(key, kv, (size_t) (eq - kv));
        key[eq - kv] = '\0';
        return gw_options_set(o, key, eq + 1);
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
            {"transport", required_argument, NULL, 't'},
            {"port", required_argument, NULL, 'p'},
            {"baud", required_argument, NULL, 'b'},
            {"protocol", required_argument, NULL, 'P'},
            {"option", required_argument, NULL, 'o'},
            {"name", required_argument, NULL, 'n'},
            {"json", no_argument, NULL, 'j'},
            {"quiet", no_argument, NULL, 'q'},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        const char *transport = NULL, *protocol = NULL, *name = NULL;
        const struct gw_transport_ops *t;
        const struct gw_protocol_ops *p;
        struct gw_options *opts = gw_options_new();
        struct gw_reader reader = {0};
        struct run run = {.last_decile = -1};
        struct gw_flash_callbacks cbs = {.progress = on_progress, .finished = on_finished};
        int c, r, ret = 1;

        gw_log_open("gwflash", GW_LOG_STDERR);
        if (!opts)
                return 1;
        if (argc > 1 && strcmp(argv[1], "list") == 0) {
                gw_options_free(opts);
                return cmd_list(argc - 1, argv + 1);
        }
        while ((c = getopt_long(argc, argv, "t:p:b:P:o:n:qvh", longopts, NULL)) != -1) {
                switch (c) {
                case 't':
                        transport = optarg;
                        break;
                case 'p':
                        r = gw_options_set(opts, "port", optarg);
                        break;
                case 'b':
                        r = gw_options_set(opts, "baud", optarg);
                        break;
                case 'P':
                        protocol = optarg;
                        break;
                case 'o':
                        if (add_kv(opts, optarg) < 0) {
                                fprintf(stderr, "gwflash: --option wants KEY=VALUE, got '%s'\n",
                                        optarg);
                                goto usage;
                        }
                        break;
                case 'n':
                        name = optarg;
                        break;
                case 'j':
                        run.json = true;
                        break;
                case 'q':
                        run.quiet = true;
                        break;
                case 'v':
                        gw_log_set_max_level(LOG_DEBUG);
                        break;
                case 'h':
                        usage(stdout);
                        gw_options_free(opts);
                        return 0;
                case 'V':
                        printf("gwflash %s\n", GW_VERSION);
                        gw_options_free(opts);
                        return 0;
                default:
                        goto usage;
                }
        }
        if (optind != argc - 1) {
                fprintf(stderr, "gwflash: expected exactly one FILE to flash\n");
                goto usage;
        }
        run.file = argv[optind];
        if (!transport || !protocol) {
                fprintf(stderr, "gwflash: --transport and --protocol are required\n");
                goto usage;
        }
        t = gw_transport_find(transport);
        if (!t) {
                fprintf(stderr, "gwflash: unknown transport '%s'\n", transport);
                goto usage;
        }
        p = gw_protocol_find(protocol);
        if (!p) {
                fprintf(stderr, "gwflash: unknown protocol '%s'\n", protocol);
                goto usage;
        }
        if (t->shape == GW_LINK_STREAM && !gw_options_get(opts, "port")) {
                fprintf(stderr, "gwflash: --port is required for transport %s\n", transport);
                goto usage;
        }

        r = gw_file_reader_open(run.file, name, &reader);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot read %s: %m", run.file);
                goto out;
        }
        r = gw_loop_new(&run.loop);
        if (r < 0)
                goto out;
        gw_loop_add_signal(run.loop, SIGINT, on_signal, &run, NULL);
        gw_loop_add_signal(run.loop, SIGTERM, on_signal, &run, NULL);

        r = gw_flash_new(run.loop,
                         gw_options_get(opts, "port") ? gw_options_get(opts, "port") : transport, t,
                         opts, p, opts, &run.flash);
        if (r == -EPROTO) {
                gw_log_error("Protocol %s cannot run over transport %s", protocol, transport);
                goto out;
        }
        if (r < 0) {
                gw_log_error_errno(r, "Cannot open %s link %s: %m", transport,
                                   gw_options_get(opts, "port") ? gw_options_get(opts, "port")
                                                                : "");
                goto out;
        }
        run.tty = isatty(STDERR_FILENO);
        run.t0 = gw_now_ms();
        if (!run.quiet && !run.json)
                fprintf(stderr, "Flashing %s (%llu bytes) with %s over %s; waiting for the node\n",
                        run.file, (unsigned long long) reader.size, protocol, transport);
        r = gw_flash_install(run.flash, &reader, &cbs, &run);
        if (r < 0) {
                gw_log_error_errno(r, "Cannot start flashing: %m");
                goto out;
        }
        if (!run.finished)
                r = gw_loop_run(run.loop);
        if (r < 0)
                run.result = r;
        {
                uint64_t el = gw_now_ms() - run.t0;
                double rate = el ? (double) reader.size * 1000.0 / (double) el : 0.0;

                if (run.tty && !run.json && !run.quiet && run.total)
                        fputc('\n', stderr);
                if (run.json) {
                        json_t *o = json_pack(
                            "{s:s, s:s, s:I, s:I, s:f}", "event", "result", "result",
                            run.result == 0 ? "ok" : "failed", "bytes", (json_int_t) run.done,
                            "total", (json_int_t) reader.size, "seconds", (double) el / 1000.0);

                        if (o && run.result < 0)
                                json_object_set_new(o, "error", json_string(run.reason));
                        if (o) {
                                char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

                                printf("%s\n", s ? s : "");
                                free(s);
                                json_decref(o);
                        }
                } else if (run.result == 0) {
                        if (!run.quiet)
                                fprintf(stderr, "Done: %llu bytes in %.2f s (%.0f bytes/s)\n",
                                        (unsigned long long) reader.size, (double) el / 1000.0,
                                        rate);
                } else {
                        gw_log_error("Flashing %s failed after %llu of %llu bytes: %s", run.file,
                                     (unsigned long long) run.done,
                                     (unsigned long long) reader.size, run.reason);
                }
        }
        ret = run.result == 0 ? 0 : 1;
out:
        gw_flash_free(run.flash);
        gw_loop_free(run.loop);
        gw_file_reader_close(&reader);
        gw_options_free(opts);
        return ret;
usage:
        fprintf(stderr, "Try 'gwflash --help'.\n");
        gw_options_free(opts);
        return 2;
}
