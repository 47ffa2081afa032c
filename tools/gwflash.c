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
#include "gw/access.h"
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

/* "uart, usb, can": the names of what is built in or loaded. */
static void plugin_names(bool transports, char *buf, size_t n)
{
        size_t used = 0;

        buf[0] = '\0';
        for (size_t i = 0; used < n; i++) {
                const char *name = transports
                                       ? (gw_transport_get(i) ? gw_transport_get(i)->name : NULL)
                                       : (gw_protocol_get(i) ? gw_protocol_get(i)->name : NULL);

                if (!name)
                        break;
                used += (size_t) snprintf(buf + used, n - used, "%s%s", i ? ", " : "", name);
        }
}

static void usage(FILE *out)
{
        char transports[256], protocols[256];

        plugin_names(true, transports, sizeof(transports));
        plugin_names(false, protocols, sizeof(protocols));
        fprintf(
            out,
            "Usage: gwflash [OPTIONS] FILE\n"
            "       gwflash --usb VID:PID[,serial=S][,path=P] --alt N|NAME [OPTIONS] FILE\n"
            "       gwflash --usb VID:PID ... --upload FILE [--size N]\n"
            "       gwflash -t TRANSPORT -p PORT -P PROTOCOL --identify\n"
            "       gwflash list [--json]\n"
            "\n"
            "Flash FILE to one node through a transport and a protocol plugin, or read the\n"
            "node's memory back into a file (--upload, protocols that can: dfu). With dfu,\n"
            "FILE may be a raw image or a .dfu file: a DFU suffix (checked against the\n"
            "board's ids, not sent) or a DfuSe container (each element written at its\n"
            "address); -o format=raw sends the file exactly as it is.\n"
            "\n"
            "  -t, --transport NAME   link to the node (built in: %s)\n"
            "  -p, --port PATH        serial port, e.g. /dev/ttyUSB0 or a pty from socat\n"
            "  -b, --baud N           line rate for serial links (default 115200)\n"
            "  -u, --usb SPEC         USB device: VID:PID in hex, optionally ,serial=S and\n"
            "                         ,path=BUS-PORT[.PORT]... to tell identical boards apart;\n"
            "                         implies --transport usb --protocol dfu\n"
            "  -a, --alt N|NAME       DFU alternate setting: number, name or DfuSe layout name\n"
            "      --address A        DfuSe, stm32: where the image starts (default: the\n"
            "                         first writable segment of the layout; the chip's\n"
            "                         flash base)\n"
            "      --verify           dfu: read the image back before the board leaves DFU\n"
            "                         mode (-o verify=true); -o reset=false keeps a board\n"
            "                         that was running its application in DFU mode\n"
            "      --dfu-usb VID:PID  the ids the board has in DFU mode, when it runs with\n"
            "                         others and must be detached first (optional: the\n"
            "                         board is looked for again at the same port)\n"
            "  -P, --protocol NAME    update protocol (built in: %s)\n"
            "      --identify         only ask the node what it runs (chip, bootloader,\n"
            "                         image version and hash, as the protocol can tell)\n"
            "      --force            flash even when the node already runs the image\n"
            "  -o, --option KEY=VAL   extra transport or protocol option (repeatable),\n"
            "                         e.g. -o ack-timeout-ms=3000 -o parity=even\n"
            "  -n, --name NAME        file name announced to the node (default: FILE's)\n"
            "      --upload FILE      read the node back into FILE instead of flashing\n"
            "      --size N           bytes to read back (required on DfuSe; on DFU 1.1\n"
            "                         the device's short block ends the upload)\n"
            "      --json             machine-readable progress and result on stdout\n"
            "  -q, --quiet            no progress output\n"
            "  -v, --verbose          debug logging (protocol state changes)\n"
            "  -h, --help             this text\n"
            "  -V, --version          print the version\n"
            "\n"
            "Before flashing, a protocol that can identify the node is asked what it runs:\n"
            "the answer is printed, the image is checked against it (a chip it was not\n"
            "built for is refused before anything is written), and a node that already\n"
            "runs exactly this image is left alone unless --force.\n"
            "\n"
            "Exit status: 0 when the node took the whole image (or already ran it, or the\n"
            "upload or identify completed), 1 when flashing failed, 2 on a usage error.\n"
            "\n"
            "Examples:\n"
            "  gwflash --transport uart --port /dev/ttyUSB0 --baud 115200 --protocol ymodem "
            "fw.bin\n"
            "  gwflash --usb 0483:df11 --alt 0 --address 0x08000000 fw.bin\n"
            "  gwflash --usb 0483:df11 fw.dfu\n"
            "  gwflash --usb 0483:df11 --alt 0 --address 0x08000000 --size 65536 --upload "
            "back.bin\n"
            "  gwflash -t uart -p /dev/ttyUSB0 -P stm32 --address 0x08000000 fw.bin\n"
            "  gwflash -t uart -p /dev/ttyACM0 -P smp app-1.5.0.signed.bin\n"
            "  gwflash -t can -p /dev/ttyACM0 -o tx-id=0x7e0 -o rx-id=0x7e8 -P uds \\\n"
            "          -o address=0x8000 -o seedkey-program=/usr/lib/oem/seedkey ecu.bin\n"
            "  gwflash -t uart -p /dev/ttyUSB0 -P stm32 --identify\n"
            "  gwflash list\n",
            transports, protocols);
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
        } else if (total == 0) {
                /* An upload of unknown length: only what arrived so far. */
                if (now - run->last_ms < 1000)
                        return;
                run->last_ms = now;
                fprintf(stderr, "%llu bytes\n", (unsigned long long) done);
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

static void on_finished(void *userdata, int result, const char *reason);

/* Must --port be given? A transport that checks its own options says whether it needs one
 * (uart: "option port is required"; none: it is only a label; can: port or interface); one that
 * cannot check is asked for it when it is a stream. */
static bool needs_port(const struct gw_transport_ops *t)
{
        return t->shape == GW_LINK_STREAM && (t->version < 3 || !t->check);
}

/* Runs the loop until the operation just started reports finished(); its result. */
static int wait_finished(struct run *run)
{
        int r = 0;

        if (!run->finished)
                r = gw_loop_run(run->loop);
        return r < 0 ? r : run->result;
}

/* What identify reported: one line on stderr, or an "identify" event with --json. */
static void print_facts(const struct run *run, const struct gw_options *facts)
{
        if (run->json) {
                json_t *o = json_object(), *f = json_object();
                char *s;

                for (size_t i = 0; o && f && i < gw_options_count(facts); i++)
                        json_object_set_new(f, gw_options_key(facts, i),
                                            json_string(gw_options_value(facts, i)));
                if (!o || !f) {
                        json_decref(o);
                        json_decref(f);
                        return;
                }
                json_object_set_new(o, "event", json_string("identify"));
                json_object_set_new(o, "facts", f);
                s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
                printf("%s\n", s ? s : "");
                fflush(stdout);
                free(s);
                json_decref(o);
                return;
        }
        if (run->quiet)
                return;
        fprintf(stderr, "Node:");
        for (size_t i = 0; i < gw_options_count(facts); i++)
                fprintf(stderr, "%s %s=%s", i ? "," : "", gw_options_key(facts, i),
                        gw_options_value(facts, i));
        fprintf(stderr, "%s\n", gw_options_count(facts) ? "" : " (nothing reported)");
}

/* The final --json line of a run that wrote nothing: identify only, or an image the node runs
 * already. */
static void print_result_event(const char *result, const char *error)
{
        json_t *o = json_pack("{s:s, s:s}", "event", "result", "result", result);
        char *s;

        if (o && error)
                json_object_set_new(o, "error", json_string(error));
        s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        printf("%s\n", s ? s : "");
        free(s);
        json_decref(o);
}

/* Asks the node what it runs (protocols with identify), prints it, and checks the image against
 * it. Returns 0 to go on flashing, 1 when the node already runs the image (and !force), or
 * -errno with the error reported. facts stays the caller's. */
static int identify_node(struct run *run, const struct gw_protocol_ops *p,
                         const struct gw_options *opts, const struct gw_reader *reader,
                         struct gw_options *facts, bool force)
{
        static const struct gw_flash_callbacks cbs = {.finished = on_finished};
        char why[512];
        int r;

        /* The file itself first: one the protocol cannot take (not an MCUboot image, a DFU
         * file for other ids) is refused before a byte reaches the node. */
        if (reader) {
                r = gw_plugin_check_image(p, opts, reader, NULL, why, sizeof(why));
                if (r < 0) {
                        if (run->json)
                                print_result_event("failed", why);
                        gw_log_error("Not flashing %s: %s", reader->name, why);
                        return r;
                }
        }
        run->finished = false;
        run->result = 0;
        run->reason[0] = '\0';
        r = gw_flash_identify(run->flash, facts, &cbs, run);
        if (r >= 0)
                r = wait_finished(run);
        if (r < 0) {
                const char *reason = run->reason[0] ? run->reason : gw_flash_reason(run->flash);

                if (!reason[0])
                        reason = strerror(-r);
                if (run->json)
                        print_result_event("failed", reason);
                gw_log_error("Cannot identify the node: %s", reason);
                return r;
        }
        print_facts(run, facts);
        if (!reader)
                return 0;
        r = gw_plugin_check_image(p, opts, reader, facts, why, sizeof(why));
        if (r < 0) {
                if (run->json)
                        print_result_event("failed", why);
                gw_log_error("Not flashing %s: %s", reader->name, why);
                return r;
        }
        r = gw_plugin_installed(p, opts, reader, facts, why, sizeof(why));
        if (r < 0) {
                if (run->json)
                        print_result_event("failed", why);
                gw_log_error("Cannot read %s: %s", reader->name, why);
                return r;
        }
        if (r == 1 && !force) {
                if (run->json)
                        print_result_event("unchanged", NULL);
                else if (!run->quiet)
                        fprintf(stderr,
                                "The node already runs %s; not flashed (--force flashes "
                                "it anyway)\n",
                                reader->name);
                return 1;
        }
        return 0;
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
        bool v3; /* the transport fills the version 3 fields of gw_link_info */
};

static int list_usb_one(const struct gw_link_info *info, struct list_ctx *c);

static int list_one(const struct gw_link_info *info, void *userdata)
{
        struct list_ctx *c = userdata;

        if (c->v3 && info->usb)
                return list_usb_one(info, c);
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

/* bcdDFUVersion as people write it: 0x0110 "1.1", 0x011a "1.1a" (DfuSe). */
static void dfu_version(unsigned bcd, char *buf, size_t n)
{
        if (bcd & 0xf)
                snprintf(buf, n, "%x.%x%x", (bcd >> 8) & 0xff, (bcd >> 4) & 0xf, bcd & 0xf);
        else
                snprintf(buf, n, "%x.%x", (bcd >> 8) & 0xff, (bcd >> 4) & 0xf);
}

/* What the dfu protocol reads in an alt setting's descriptors (its describe op): "DFU 1.1a
 * (DfuSe), 2048-byte transfers", bcdDFU and wTransferSize; all empty or 0 when it cannot tell. */
static void dfu_facts(const struct gw_usb_device_info *d, const struct gw_usb_alt *a, char *buf,
                      size_t n, unsigned *ret_bcd, unsigned *ret_transfer)
{
        const struct gw_protocol_ops *p = gw_protocol_find("dfu");
        struct gw_options *o;
        const char *bcd, *ts, *variant;
        unsigned long b, t;
        char *end;

        buf[0] = '\0';
        *ret_bcd = *ret_transfer = 0;
        if (!p || p->version < 4 || !p->describe)
                return;
        o = gw_options_new();
        if (!o || p->describe(d, a, o) < 0) {
                gw_options_free(o);
                return;
        }
        bcd = gw_options_get(o, "bcd-dfu");
        ts = gw_options_get(o, "transfer-size");
        variant = gw_options_get(o, "variant");
        if (bcd && ts && variant) {
                b = strtoul(bcd, &end, 16);
                t = *end ? 0 : strtoul(ts, &end, 10);
                if (!*end && b <= 0xffff && t <= 0xffff) {
                        char v[16];

                        *ret_bcd = (unsigned) b;
                        *ret_transfer = (unsigned) t;
                        dfu_version(*ret_bcd, v, sizeof(v));
                        snprintf(buf, n, "DFU %s%s, %u-byte transfers", v,
                                 strcmp(variant, "dfuse") == 0 ? " (DfuSe)" : "", *ret_transfer);
                }
        }
        gw_options_free(o);
}

static bool is_dfu_alt(const struct gw_usb_alt *a)
{
        return a->class_code == 0xfe && a->subclass == 0x01;
}

/* A USB device as the transport describes it: ids, mode, and its DFU alt settings. */
static int list_usb_one(const struct gw_link_info *info, struct list_ctx *c)
{
        const struct gw_usb_device_info *d = info->usb;
        const char *mode = "dfu";
        char id[16];

        c->n++;
        snprintf(id, sizeof(id), "%04x:%04x", d->vid, d->pid);
        /* bInterfaceProtocol 1: the application's runtime interface, 2: DFU mode. */
        for (size_t i = 0; i < d->n_alts; i++)
                if (is_dfu_alt(&d->alts[i]) && d->alts[i].protocol == 1)
                        mode = "runtime";
        if (c->json) {
                json_t *o =
                    json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s?, s:s, s:[]}", "transport", "usb",
                              "path", d->path, "usb", id, "serial", d->serial, "description",
                              info->product, "node", info->node, "mode", mode, "alts");
                json_t *alts = o ? json_object_get(o, "alts") : NULL;

                for (size_t i = 0; alts && i < d->n_alts; i++) {
                        const struct gw_usb_alt *a = &d->alts[i];
                        unsigned bcd, ts;
                        char facts[64];
                        json_t *ao;

                        if (!is_dfu_alt(a))
                                continue;
                        dfu_facts(d, a, facts, sizeof(facts), &bcd, &ts);
                        ao = json_pack("{s:i, s:i, s:s?}", "interface", a->interface, "alt", a->alt,
                                       "name", a->name);
                        if (ao && bcd) {
                                char v[16];

                                dfu_version(bcd, v, sizeof(v));
                                json_object_set_new(ao, "dfu_version", json_string(v));
                                json_object_set_new(ao, "transfer_size", json_integer(ts));
                        }
                        if (ao)
                                json_array_append_new(alts, ao);
                }
                if (o && info->error < 0)
                        json_object_set_new(o, "error", json_string(strerror(-info->error)));
                if (o)
                        json_array_append_new(c->arr, o);
                return 0;
        }
        printf("%-6s %-24s %s", "usb", d->path, id);
        if (d->serial)
                printf(" serial=%s", d->serial);
        printf("  %s (%s mode, %s)\n", info->product ? info->product : "USB device", mode,
               info->node ? info->node : "no device node");
        if (info->error < 0)
                printf("       cannot open %s: %s; names and serial unknown (run as root or "
                       "add a udev rule)\n",
                       info->node ? info->node : "it", strerror(-info->error));
        for (size_t i = 0; i < d->n_alts; i++) {
                const struct gw_usb_alt *a = &d->alts[i];
                unsigned bcd, ts;
                char facts[64];

                if (!is_dfu_alt(a))
                        continue;
                dfu_facts(d, a, facts, sizeof(facts), &bcd, &ts);
                printf("       alt %u (interface %u) \"%s\"%s%s\n", a->alt, a->interface,
                       a->name ? a->name : "", facts[0] ? "  " : "", facts);
        }
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
                               "can see: serial ports (with USB ids and serial numbers) and USB\n"
                               "DFU devices with their alternate settings.\n");
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
                c.v3 = t->version >= 3;
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

/* "0483:df11 with serial S at path 1-2" for messages about what --usb asked for. */
static void describe_match(const struct gw_options *opts, char *buf, size_t n)
{
        const char *dfu = gw_options_get(opts, "dfu-usb"), *serial = gw_options_get(opts, "serial");
        const char *path = gw_options_get(opts, "path");
        size_t used = (size_t) snprintf(buf, n, "%s", gw_options_get(opts, "usb"));

        if (dfu && used < n)
                used += (size_t) snprintf(buf + used, n - used, " (or %s in DFU mode)", dfu);
        if (serial && used < n)
                used += (size_t) snprintf(buf + used, n - used, " with serial %s", serial);
        if (path && used < n)
                snprintf(buf + used, n - used, " at path %s", path);
}

/* The devices the transport says --usb could mean, printed or searched for one that could
 * not be opened. */
struct usb_report {
        const struct gw_transport_ops *t;
        const struct gw_options *opts;
        bool print;
        unsigned n;
        char node[64];
        uint16_t vid, pid;
};

static int report_one(const struct gw_link_info *info, void *userdata)
{
        struct usb_report *u = userdata;

        if (!info->usb || u->t->claims(u->opts, info) < 1)
                return 0;
        u->n++;
        if (info->error == -EACCES && info->node && !u->node[0]) {
                snprintf(u->node, sizeof(u->node), "%s", info->node);
                u->vid = info->vid;
                u->pid = info->pid;
        }
        if (u->print)
                fprintf(stderr, "  %04x:%04x serial=%s path=%s  %s%s%s\n", info->vid, info->pid,
                        info->serial ? info->serial : "(unknown)", info->path,
                        info->node ? info->node : "", info->error < 0 ? ": " : "",
                        info->error < 0 ? strerror(-info->error) : "");
        return 0;
}

/* Tells the user what to do when the USB device could not be opened. */
static void explain_usb_error(int r, const struct gw_transport_ops *t,
                              const struct gw_options *opts)
{
        struct usb_report u = {.t = t, .opts = opts};
        bool can_list = t->version >= 3 && t->enumerate && t->claims;
        char what[192];

        describe_match(opts, what, sizeof(what));
        switch (r) {
        case -ENODEV:
        case -ENOENT:
                gw_log_error("No DFU device %s found; is it in DFU mode? `gwflash list` shows "
                             "what is attached",
                             what);
                return;
        case -EEXIST:
                gw_log_error("Several devices match %s:", what);
                u.print = true;
                if (can_list)
                        (void) t->enumerate(NULL, report_one, &u);
                fprintf(stderr, "Add ,serial=S or ,path=P to --usb to choose one.\n");
                return;
        case -EACCES:
                if (can_list)
                        (void) t->enumerate(NULL, report_one, &u);
                if (!u.node[0]) {
                        gw_log_error("Permission denied opening USB device %s: run gwflash as "
                                     "root or add a udev rule giving you access",
                                     what);
                        return;
                }
                gw_log_error("Permission denied on %s (USB device %04x:%04x): add a udev rule "
                             "such as\n  SUBSYSTEM==\"usb\", ATTR{idVendor}==\"%04x\", "
                             "ATTR{idProduct}==\"%04x\", MODE=\"0660\", GROUP=\"plugdev\"\nto "
                             "a file in /etc/udev/rules.d/ (then replug the board), or run "
                             "gwflash as root",
                             u.node, u.vid, u.pid, u.vid, u.pid);
                return;
        case -EBUSY:
                gw_log_error("USB device %s is busy: another program or a kernel driver holds "
                             "it",
                             what);
                return;
        default:
                gw_log_error_errno(r, "Cannot open USB device %s: %m", what);
        }
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
            {"transport", required_argument, NULL, 't'},
            {"port", required_argument, NULL, 'p'},
            {"baud", required_argument, NULL, 'b'},
            {"usb", required_argument, NULL, 'u'},
            {"alt", required_argument, NULL, 'a'},
            {"address", required_argument, NULL, 'A'},
            {"dfu-usb", required_argument, NULL, 'D'},
            {"verify", no_argument, NULL, 'K'},
            {"protocol", required_argument, NULL, 'P'},
            {"option", required_argument, NULL, 'o'},
            {"name", required_argument, NULL, 'n'},
            {"upload", required_argument, NULL, 'U'},
            {"size", required_argument, NULL, 'S'},
            {"json", no_argument, NULL, 'j'},
            {"quiet", no_argument, NULL, 'q'},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {"identify", no_argument, NULL, 'I'},
            {"force", no_argument, NULL, 'F'},
            {},
        };
        const char *transport = NULL, *protocol = NULL, *name = NULL, *usb = NULL, *label;
        char why[1024];
        const struct gw_transport_ops *t;
        const struct gw_protocol_ops *p;
        struct gw_options *opts = gw_options_new();
        struct gw_reader reader = {0};
        struct gw_writer writer = {0};
        struct gw_options *facts = NULL;
        bool identify_only = false, force = false;
        const char *upload = NULL;
        uint64_t upload_size = 0;
        struct run run = {.last_decile = -1};
        struct gw_flash_callbacks cbs = {.progress = on_progress, .finished = on_finished};
        int c, r, ret = 1;

        gw_log_open("gwflash", GW_LOG_STDERR);
        if (!opts)
                return 1;
        /* Out-of-tree plugins installed for this build's plugin ABI, as gatewayd loads them when
         * its configuration names no plugin-dir. */
        (void) gw_plugin_load_dir(GW_PLUGIN_DIR);
        if (argc > 1 && strcmp(argv[1], "list") == 0) {
                gw_options_free(opts);
                return cmd_list(argc - 1, argv + 1);
        }
        while ((c = getopt_long(argc, argv, "t:p:b:u:a:P:o:n:qvhV", longopts, NULL)) != -1) {
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
                case 'u':
                        usb = optarg;
                        r = gw_options_set(opts, "usb", optarg);
                        break;
                case 'a':
                        r = gw_options_set(opts, "alt", optarg);
                        break;
                case 'A':
                        r = gw_options_set(opts, "address", optarg);
                        break;
                case 'D':
                        r = gw_options_set(opts, "dfu-usb", optarg);
                        break;
                case 'K':
                        r = gw_options_set(opts, "verify", "true");
                        break;
                case 'P':
                        protocol = optarg;
                        break;
                case 'o':
                        if (gw_options_set_kv(opts, optarg) < 0) {
                                fprintf(stderr, "gwflash: --option wants KEY=VALUE, got '%s'\n",
                                        optarg);
                                goto usage;
                        }
                        break;
                case 'n':
                        name = optarg;
                        break;
                case 'U':
                        upload = optarg;
                        break;
                case 'S':
                        if (gw_parse_u64(optarg, &upload_size) < 0 || upload_size == 0) {
                                fprintf(stderr, "gwflash: --size wants a byte count, got '%s'\n",
                                        optarg);
                                goto usage;
                        }
                        break;
                case 'j':
                        run.json = true;
                        break;
                case 'I':
                        identify_only = true;
                        break;
                case 'F':
                        force = true;
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
        if (upload && optind != argc) {
                fprintf(stderr, "gwflash: --upload FILE takes no other FILE\n");
                goto usage;
        }
        if (identify_only && (upload || optind != argc)) {
                fprintf(stderr, "gwflash: --identify takes no FILE and no --upload\n");
                goto usage;
        }
        if (!upload && !identify_only && optind != argc - 1) {
                fprintf(stderr, "gwflash: expected exactly one FILE to flash\n");
                goto usage;
        }
        if (upload_size && !upload) {
                fprintf(stderr, "gwflash: --size goes with --upload\n");
                goto usage;
        }
        run.file = upload ? upload : identify_only ? NULL : argv[optind];
        /* --usb VID:PID means the usb transport and, unless told otherwise, DFU. */
        if (usb) {
                if (transport && strcmp(transport, "usb") != 0) {
                        fprintf(stderr, "gwflash: --usb needs transport usb, not %s\n", transport);
                        goto usage;
                }
                transport = "usb";
                if (!protocol)
                        protocol = "dfu";
        }
        if (!transport || !protocol) {
                fprintf(stderr, "gwflash: --transport and --protocol are required\n");
                goto usage;
        }
        t = gw_transport_find(transport);
        if (!t && strcmp(transport, "usb") == 0) {
                fprintf(stderr, "gwflash: built without the usb transport (it needs libusb-1.0)\n");
                goto usage;
        }
        if (!t) {
                fprintf(stderr, "gwflash: unknown transport '%s'\n", transport);
                goto usage;
        }
        p = gw_protocol_find(protocol);
        if (!p) {
                fprintf(stderr, "gwflash: unknown protocol '%s'\n", protocol);
                goto usage;
        }
        if (needs_port(t) && !gw_options_get(opts, "port")) {
                fprintf(stderr, "gwflash: --port is required for transport %s\n", transport);
                goto usage;
        }
        /* Every option, before anything is opened: a typo or a bad value is a usage error. */
        if (gw_plugin_check_options(t, opts, p, opts, why, sizeof(why)) < 0) {
                fprintf(stderr, "gwflash: %s\n", why);
                if (strncmp(why, "transport usb:", 14) == 0)
                        fprintf(stderr, "gwflash: --usb takes VID:PID[,serial=S][,path=P]\n");
                goto usage;
        }
        label = gw_options_get(opts, "port")        ? gw_options_get(opts, "port")
                : gw_options_get(opts, "usb")       ? gw_options_get(opts, "usb")
                : gw_options_get(opts, "interface") ? gw_options_get(opts, "interface")
                                                    : transport;

        if (identify_only && !p->identify) {
                fprintf(stderr, "gwflash: protocol %s cannot identify a node\n", p->name);
                goto usage;
        }
        if (identify_only) {
                /* Nothing to read or write. */
        } else if (upload) {
                if (!p->upload) {
                        fprintf(stderr, "gwflash: protocol %s cannot read a node back\n", p->name);
                        goto usage;
                }
                r = gw_file_writer_open(upload, upload_size, &writer);
                if (r < 0) {
                        gw_log_error_errno(r, "Cannot create %s: %m", upload);
                        goto out;
                }
        } else {
                r = gw_file_reader_open(run.file, name, &reader);
                if (r < 0) {
                        gw_log_error_errno(r, "Cannot read %s: %m", run.file);
                        goto out;
                }
        }
        r = gw_loop_new(&run.loop);
        if (r < 0)
                goto out;
        gw_loop_add_signal(run.loop, SIGINT, on_signal, &run, NULL);
        gw_loop_add_signal(run.loop, SIGTERM, on_signal, &run, NULL);

        r = gw_flash_new(run.loop, label, t, opts, p, opts, &run.flash);
        if (r == -EPROTO) {
                gw_log_error("Protocol %s cannot run over transport %s", protocol, transport);
                goto out;
        }
        if (r < 0 && strcmp(t->name, "usb") == 0 && r != -EINVAL) {
                explain_usb_error(r, t, opts);
                goto out;
        }
        if (r == -EACCES) {
                gw_access_explain(t, opts, why, sizeof(why));
                gw_log_error("Cannot open %s link %s: %s", transport, label, why);
                goto out;
        }
        if (r < 0) {
                gw_log_error_errno(r, "Cannot open %s link %s: %m%s", transport, label,
                                   r == -EINVAL         ? " (a bad option? -v says which)"
                                   : r == -EAFNOSUPPORT ? " (this kernel has no SocketCAN)"
                                                        : "");
                goto out;
        }
        run.tty = isatty(STDERR_FILENO);
        if (p->identify && !upload) {
                facts = gw_options_new();
                r = facts
                        ? identify_node(&run, p, opts, identify_only ? NULL : &reader, facts, force)
                        : -ENOMEM;
                if (r < 0)
                        goto out;
                if (r == 1 || identify_only) {
                        ret = 0;
                        goto out;
                }
                run.finished = false;
                run.result = 0;
                run.reason[0] = '\0';
        }
        run.t0 = gw_now_ms();
        if (!run.quiet && !run.json && upload)
                fprintf(stderr, "Reading %s back into %s with %s over %s\n", label, upload,
                        protocol, transport);
        else if (!run.quiet && !run.json)
                fprintf(stderr, "Flashing %s (%llu bytes) with %s over %s; waiting for the node\n",
                        run.file, (unsigned long long) reader.size, protocol, transport);
        if (upload)
                r = gw_flash_upload(run.flash, &writer, &cbs, &run);
        else
                r = gw_flash_install(run.flash, &reader, &cbs, &run);
        if (r < 0) {
                const char *reason = gw_flash_reason(run.flash);

                if (*reason)
                        gw_log_error("Cannot start %s: %s", upload ? "the upload" : "flashing",
                                     reason);
                else
                        gw_log_error_errno(r, "Cannot start %s: %m",
                                           upload ? "the upload" : "flashing");
                goto out;
        }
        if (!run.finished)
                r = gw_loop_run(run.loop);
        if (r < 0)
                run.result = r;
        if (upload) {
                r = gw_file_writer_close(&writer);
                if (r < 0 && run.result == 0) {
                        run.result = r;
                        snprintf(run.reason, sizeof(run.reason), "cannot write %s: %s", upload,
                                 strerror(-r));
                }
                /* A partial read-back looks like a real one: do not leave it behind. */
                if (run.result < 0)
                        unlink(upload);
                else
                        reader.size = run.done;
        }
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
                                fprintf(stderr, "Done: %llu bytes %s in %.2f s (%.0f bytes/s)\n",
                                        (unsigned long long) reader.size,
                                        upload ? "read back" : "written", (double) el / 1000.0,
                                        rate);
                } else if (upload) {
                        gw_log_error("Reading back into %s failed after %llu bytes: %s", upload,
                                     (unsigned long long) run.done, run.reason);
                } else {
                        gw_log_error("Flashing %s failed after %llu of %llu bytes: %s", run.file,
                                     (unsigned long long) run.done,
                                     (unsigned long long) reader.size, run.reason);
                }
        }
        ret = run.result == 0 ? 0 : 1;
out:
        gw_options_free(facts);
        gw_flash_free(run.flash);
        gw_loop_free(run.loop);
        gw_file_reader_close(&reader);
        if (writer.pwrite) {
                gw_file_writer_close(&writer);
                unlink(upload);
        }
        gw_options_free(opts);
        return ret;
usage:
        fprintf(stderr, "Try 'gwflash --help'.\n");
        gw_options_free(opts);
        return 2;
}
