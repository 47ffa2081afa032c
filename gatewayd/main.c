/* gatewayd: the command line. Everything else lives in daemon.c and what it wires up. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "gw-config.h"
#include "gw/log.h"
#include "gw/systemd.h"
#include "udev.h"

/* SYSCONFDIR/gatewayd/gatewayd.yaml: /etc/gatewayd/gatewayd.yaml for prefix /usr. */
#define DEFAULT_CONFIG GW_CONFIG_FILE

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: gatewayd [OPTIONS]\n"
                "       gatewayd --check-config FILE\n"
                "       gatewayd [-c FILE] --rotate-keys KEYS.yaml\n"
                "       gatewayd [-c FILE] --udev-rules\n"
                "\n"
                "Gateway daemon: takes signed deployments over MQTT and flashes the nodes\n"
                "behind this gateway (UART, USB, CAN).\n"
                "\n"
                "  -c, --config FILE        configuration (default " DEFAULT_CONFIG ")\n"
                "      --check-config FILE  check FILE (syntax, plugins, trust keys) and exit\n"
                "      --rotate-keys KEYS   apply a gatewayd/keys rotation to the state dir and\n"
                "                           exit (signed by a threshold of the current keys and\n"
                "                           of its own, version exactly one more)\n"
                "      --udev-rules         print udev rules giving group gatewayd the device\n"
                "                           nodes of the configured nodes (for " GW_UDEV_LOCAL_RULES
                ")\n"
                "  -l, --log TARGET         stderr, syslog, both or journal (default: journal\n"
                "                           when systemd connected stderr to the journal,\n"
                "                           else stderr)\n"
                "  -v, --verbose            debug logging (overrides log-level)\n"
                "  -h, --help               this text\n"
                "  -V, --version            print the version\n"
                "\n"
                "Exit status: 0 after a clean shutdown (SIGTERM, SIGINT), a valid\n"
                "configuration or an applied rotation, 1 on errors (a refused rotation prints\n"
                "'error: <code>: <message>'), 2 on usage errors.\n");
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
            {"config", required_argument, NULL, 'c'},
            {"check-config", required_argument, NULL, 'C'},
            {"rotate-keys", required_argument, NULL, 'R'},
            {"udev-rules", no_argument, NULL, 'U'},
            {"log", required_argument, NULL, 'l'},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        const char *path = DEFAULT_CONFIG, *rotate = NULL;
        unsigned targets = 0;
        struct gw_config *cfg = NULL;
        char *error = NULL;
        bool check = false, verbose = false, udev = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "c:l:vhV", longopts, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'C':
                        path = optarg;
                        check = true;
                        break;
                case 'R':
                        rotate = optarg;
                        break;
                case 'U':
                        udev = true;
                        break;
                case 'l':
                        if (strcmp(optarg, "stderr") == 0)
                                targets = GW_LOG_STDERR;
                        else if (strcmp(optarg, "syslog") == 0)
                                targets = GW_LOG_SYSLOG;
                        else if (strcmp(optarg, "both") == 0)
                                targets = GW_LOG_STDERR | GW_LOG_SYSLOG;
                        else if (strcmp(optarg, "journal") == 0 && gw_sd_supported())
                                targets = GW_LOG_JOURNAL;
                        else {
                                fprintf(stderr, "gatewayd: --log takes stderr, syslog, both%s\n",
                                        gw_sd_supported() ? " or journal"
                                                          : " (built without libsystemd: no "
                                                            "journal)");
                                return 2;
                        }
                        break;
                case 'v':
                        verbose = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("gatewayd %s\n", GW_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'gatewayd --help'.\n");
                        return 2;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "gatewayd: unexpected argument '%s'\nTry 'gatewayd --help'.\n",
                        argv[optind]);
                return 2;
        }
        if ((check ? 1 : 0) + (rotate ? 1 : 0) + (udev ? 1 : 0) > 1) {
                fprintf(stderr, "gatewayd: --check-config, --rotate-keys and --udev-rules exclude "
                                "each other\n");
                return 2;
        }
        /* Started by systemd with stderr on the journal: native entries carry the deployment
         * and node as fields (GW_DEPLOYMENT=, GW_NODE=). */
        if (!targets)
                targets = gw_sd_supported() && gw_sd_journal_stream_is(STDERR_FILENO)
                              ? GW_LOG_JOURNAL
                              : GW_LOG_STDERR;
        gw_log_open("gatewayd", targets);

        r = gw_config_load(path, &cfg, &error);
        if (r < 0) {
                fprintf(stderr, "%s\n", error ? error : strerror(-r));
                free(error);
                return 1;
        }
        gw_log_set_max_level(verbose ? LOG_DEBUG : cfg->log_level);
        if (udev) {
                r = gw_udev_rules_write(cfg, "/sys", stdout);
                if (r < 0)
                        fprintf(stderr, "gatewayd: cannot write the rules: %s\n", strerror(-r));
                else
                        fprintf(stderr, "%d rule(s) for %zu node(s); install them as %s\n", r,
                                cfg->n_nodes, GW_UDEV_LOCAL_RULES);
        } else if (rotate) {
                struct gw_manifest_error err = {0};
                uint64_t version = 0;

                r = gw_daemon_rotate_keys(cfg, rotate, &version, &err);
                if (r >= 0)
                        printf("%s: applied: trust root version %llu\n", rotate,
                               (unsigned long long) version);
                else
                        fprintf(stderr, "error: %s: %s\n",
                                gw_error_to_string(err.code ? err.code : GW_ERR_INTERNAL),
                                err.message[0] ? err.message : strerror(-r));
        } else if (check) {
                r = gw_daemon_check(cfg);
                if (r >= 0)
                        printf("%s: OK: gateway %s, %zu node(s), broker %s:%u\n", path,
                               cfg->gateway_id, cfg->n_nodes, cfg->mqtt.host, cfg->mqtt.port);
        } else {
                r = gw_daemon_run(cfg);
        }
        gw_config_free(cfg);
        gw_log_close();
        return r < 0 ? 1 : 0;
}
