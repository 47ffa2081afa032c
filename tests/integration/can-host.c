/* can-host: drives the can transport from the command line for the integration tests: opens one
 * or more nodes on one adapter (sharing its bus), queues frames, and prints every frame the nodes
 * receive, until enough arrived or time ran out.
 *
 *   can-host --port PATH [--set KEY=VALUE]... --node TX:RX[:ext]... [--send N:ID:HEX]...
 *            [--repeat K] [--expect COUNT] [--timeout MS] [--hold MS]
 *
 * Prints "rx N ID HEX @US" per frame received by node N (0-based; US: microseconds since the
 * first frame was queued), "sent COUNT in US us" once the
 * transport took everything, and "error: ..." when a node fails. Exit 0 when COUNT frames came. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "gw/loop.h"
#include "gw/options.h"
#include "gw/plugin.h"

extern const struct gw_transport_ops gw_transport_can_ops;

#define NODES_MAX  8
#define FRAMES_MAX 4096

static const struct gw_transport_ops *ops = &gw_transport_can_ops;
static struct gw_loop *loop;
static bool verbose;

struct node {
        void *priv;
        struct gw_source *src;
        int index;
        char tx[16], rx[16];
        bool ext;
};

static struct node nodes[NODES_MAX];
static size_t n_nodes;
static struct {
        int node;
        struct gw_can_frame f;
} frames[FRAMES_MAX];
static size_t n_frames;
static unsigned long received, expect;
static int failed;
static uint64_t t0_us;

static void logv(void *ctx, int level, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void logv(void *ctx, int level, const char *fmt, va_list ap)
{
        if (!verbose)
                return;
        fputs("can-host: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

static uint64_t now_ms(void *ctx)
{
        return gw_now_ms();
}

struct watch {
        struct gw_source *src;
        void (*cb)(void *userdata, int fd, short revents);
        void *userdata;
};

static int on_watch(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct watch *w = userdata;

        w->cb(w->userdata, fd, revents);
        return 0;
}

static int watch_fd(void *ctx, int fd, short events, void (*cb)(void *, int, short), void *userdata,
                    void **ret_handle)
{
        struct watch *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        w->cb = cb;
        w->userdata = userdata;
        r = gw_loop_add_io(loop, fd, events, on_watch, w, &w->src);
        if (r < 0) {
                free(w);
                return r;
        }
        *ret_handle = w;
        return 0;
}

static void unwatch_fd(void *ctx, void *handle)
{
        struct watch *w = handle;

        gw_source_free(w->src);
        free(w);
}

static const struct gw_plugin_services svc = {
    .version = GW_SERVICES_VERSION,
    .logv = logv,
    .now_ms = now_ms,
    .watch_fd = watch_fd,
    .unwatch_fd = unwatch_fd,
};

static int on_node(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct node *n = userdata;
        struct gw_can_frame f;
        int r;

        while ((r = ops->recv_frame(n->priv, &f)) == 1) {
                printf("rx %d %X%s ", n->index, f.id, (f.flags & GW_CAN_FD) ? "/fd" : "");
                for (unsigned i = 0; i < f.len; i++)
                        printf("%02X", f.data[i]);
                printf(" @%" PRIu64 "\n", gw_now_us() - t0_us);
                fflush(stdout);
                received++;
        }
        if (r != -EAGAIN) {
                printf("error: node %d: %s\n", n->index, strerror(-r));
                fflush(stdout);
                failed = r;
                n->src = gw_source_free(n->src);
        }
        return 0;
}

static int parse_frame(const char *spec)
{
        unsigned node;
        char id[16], hex[160];
        size_t len;

        if (n_frames == FRAMES_MAX ||
            sscanf(spec, "%u:%15[0-9a-fA-F]:%159[0-9a-fA-F]", &node, id, hex) < 2)
                return -EINVAL;
        if (sscanf(spec, "%u:%15[0-9a-fA-F]:%159[0-9a-fA-F]", &node, id, hex) == 2)
                hex[0] = '\0';
        len = strlen(hex);
        if (len % 2 || len / 2 > GW_CAN_FRAME_MAX || node >= NODES_MAX)
                return -EINVAL;
        frames[n_frames].node = (int) node;
        frames[n_frames].f.id = (uint32_t) strtoul(id, NULL, 16);
        frames[n_frames].f.len = (uint8_t) (len / 2);
        for (size_t i = 0; i < len / 2; i++) {
                unsigned v;

                sscanf(hex + 2 * i, "%2x", &v);
                frames[n_frames].f.data[i] = (uint8_t) v;
        }
        if (len / 2 > 8)
                frames[n_frames].f.flags |= GW_CAN_FD | GW_CAN_BRS;
        n_frames++;
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
            {"port", required_argument, NULL, 'p'},    {"set", required_argument, NULL, 'o'},
            {"node", required_argument, NULL, 'n'},    {"send", required_argument, NULL, 's'},
            {"repeat", required_argument, NULL, 'r'},  {"expect", required_argument, NULL, 'e'},
            {"timeout", required_argument, NULL, 't'}, {"hold", required_argument, NULL, 'H'},
            {"verbose", no_argument, NULL, 'v'},       {},
        };
        struct gw_options *common = gw_options_new();
        const char *port = NULL;
        unsigned long repeat = 1, timeout_ms = 5000, hold_ms = 0;
        uint64_t t0, end, sent_at = 0;
        int c, status = 1;

        if (!common || gw_loop_new(&loop) < 0)
                return 1;
        while ((c = getopt_long(argc, argv, "v", opts, NULL)) >= 0) {
                char *eq;

                switch (c) {
                case 'p':
                        port = optarg;
                        break;
                case 'o':
                        eq = strchr(optarg, '=');
                        if (!eq)
                                return 2;
                        *eq = '\0';
                        gw_options_set(common, optarg, eq + 1);
                        break;
                case 'n':
                        if (n_nodes == NODES_MAX ||
                            sscanf(optarg, "%15[^:]:%15[^:]", nodes[n_nodes].tx,
                                   nodes[n_nodes].rx) != 2)
                                return 2;
                        nodes[n_nodes].ext = strstr(optarg, ":ext") != NULL;
                        nodes[n_nodes].index = (int) n_nodes;
                        n_nodes++;
                        break;
                case 's':
                        if (parse_frame(optarg) < 0)
                                return 2;
                        break;
                case 'r':
                        repeat = strtoul(optarg, NULL, 0);
                        break;
                case 'e':
                        expect = strtoul(optarg, NULL, 0);
                        break;
                case 't':
                        timeout_ms = strtoul(optarg, NULL, 0);
                        break;
                case 'H':
                        hold_ms = strtoul(optarg, NULL, 0);
                        break;
                case 'v':
                        verbose = true;
                        break;
                default:
                        return 2;
                }
        }
        if (!port || n_nodes == 0)
                return 2;
        gw_options_set(common, "port", port);
        for (size_t i = 0; i < n_nodes; i++) {
                struct gw_options *o = gw_options_new();
                char why[256];
                int r;

                gw_options_merge(o, common);
                gw_options_set(o, "tx-id", nodes[i].tx);
                gw_options_set(o, "rx-id", nodes[i].rx);
                if (nodes[i].ext)
                        gw_options_set(o, "extended", "true");
                if (ops->check(o, why, sizeof(why)) < 0) {
                        printf("error: node %zu: %s\n", i, why);
                        return 2;
                }
                nodes[i].priv = calloc(1, ops->priv_size);
                r = ops->open(nodes[i].priv, o, &svc);
                gw_options_free(o);
                if (r < 0) {
                        printf("error: node %zu: open: %s\n", i, strerror(-r));
                        return 1;
                }
                gw_loop_add_io(loop, ops->get_fd(nodes[i].priv), POLLIN, on_node, &nodes[i],
                               &nodes[i].src);
        }
        t0 = t0_us = gw_now_us();
        for (unsigned long k = 0; k < repeat; k++)
                for (size_t i = 0; i < n_frames; i++) {
                        struct gw_can_frame f = frames[i].f;
                        int r;

                        if (nodes[frames[i].node].ext)
                                f.flags |= GW_CAN_EFF;
                        r = (size_t) frames[i].node < n_nodes
                                ? ops->send_frame(nodes[frames[i].node].priv, &f)
                                : -EINVAL;
                        /* Refused until the adapter is open, or while the queue is full. */
                        for (uint64_t until = gw_now_ms() + timeout_ms;
                             r == -ENOBUFS && gw_now_ms() < until;
                             r = ops->send_frame(nodes[frames[i].node].priv, &f))
                                gw_loop_iterate(loop, 1);
                        if (r < 0) {
                                printf("error: sending frame %zu: %s\n", i, strerror(-r));
                                goto out;
                        }
                }
        end = gw_now_ms() + timeout_ms;
        while (gw_now_ms() < end && !failed && (received < expect || hold_ms)) {
                gw_loop_iterate(loop, 5);
                if (received >= expect && hold_ms && !sent_at)
                        sent_at = gw_now_ms();
                if (sent_at && gw_now_ms() >= sent_at + hold_ms)
                        break;
        }
        printf("sent %lu in %" PRIu64 " us\n", repeat * n_frames, gw_now_us() - t0);
        status = received >= expect && !failed ? 0 : 1;
        if (received < expect)
                printf("error: %lu of %lu frames received\n", received, expect);
out:
        for (size_t i = 0; i < n_nodes; i++) {
                gw_source_free(nodes[i].src);
                ops->close(nodes[i].priv);
                free(nodes[i].priv);
        }
        /* Let the adapter's close go out. */
        gw_options_free(common);
        gw_loop_free(loop);
        return status;
}
