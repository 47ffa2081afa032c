/* gwctl: drive and watch gatewayd deployments over MQTT v5 (libmosquitto, jansson): publish
 * the desired state, cancel or clear it, follow a deployment node by node, print what a gateway
 * last reported. Everything received is untrusted: sizes are capped, JSON types are checked and
 * strings are stripped of control characters before they reach the terminal. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gw-config.h"
#include "gw/log.h"
#include "gw/loop.h"
#include "gw/mosquitto-errno.h"

#define PREFIX_MAX         512u
#define ID_MAX             128u
#define URL_MAX            2048u
#define DEFAULT_PAYLOAD    262144u    /* gatewayd's default mqtt.max-payload */
#define PAYLOAD_LIMIT      268434431u /* MQTT's largest packet minus room for the header */
#define INCOMING_MAX       (1024u * 1024u)
#define PACKET_OVERHEAD    1024u
#define NODES_MAX          1024u
#define FIELD_MAX          256u /* a state, version, image name, error code, ... as displayed */
#define MESSAGE_MAX        512u /* an error message as displayed */
#define KEEPALIVE_S        30
#define DEFAULT_TIMEOUT_MS 10000u /* commands that only publish or read retained messages */
#define CONNECT_BOUND_S    30u    /* the blocking TCP connect when no --timeout is given */
#define COLLECT_MS         500u   /* retained messages arrive right after the SUBACK */
#define REDRAW_MS          100u
#define BAR_MIN            10
#define BAR_MAX            30

enum command {
        CMD_DEPLOY,
        CMD_WATCH,
        CMD_CANCEL,
        CMD_CLEAR,
        CMD_STATUS,
        _CMD_MAX,
};

static const char *const command_names[_CMD_MAX] = {
    [CMD_DEPLOY] = "deploy", [CMD_WATCH] = "watch",   [CMD_CANCEL] = "cancel",
    [CMD_CLEAR] = "clear",   [CMD_STATUS] = "status",
};

/* Long-only options get values above the ASCII range. */
enum {
        OPT_BROKER = 0x100,
        OPT_GATEWAY,
        OPT_PREFIX,
        OPT_TLS_CA,
        OPT_TLS_CERT,
        OPT_TLS_KEY,
        OPT_USERNAME,
        OPT_PASSWORD,
        OPT_TIMEOUT,
        OPT_JSON,
        OPT_ID,
        OPT_MANIFEST_URL,
        OPT_MANIFEST,
        OPT_WATCH,
        OPT_MAX_PAYLOAD,
};

/* Which commands take which command-specific option (common options go everywhere). */
#define ONLY(c) (1u << (c))
static const struct {
        int opt;
        const char *name;
        unsigned commands;
} specific[] = {
    {OPT_ID, "--id", ONLY(CMD_DEPLOY) | ONLY(CMD_WATCH) | ONLY(CMD_CANCEL)},
    {OPT_MANIFEST_URL, "--manifest-url", ONLY(CMD_DEPLOY)},
    {OPT_MANIFEST, "--manifest", ONLY(CMD_DEPLOY)},
    {OPT_WATCH, "--watch", ONLY(CMD_DEPLOY)},
    {OPT_MAX_PAYLOAD, "--max-payload", ONLY(CMD_DEPLOY)},
};

struct opts {
        enum command cmd;
        char *host;
        int port;
        const char *gateway, *prefix_arg;
        char *prefix;
        const char *tls_ca, *tls_cert, *tls_key;
        const char *username, *password;
        uint64_t timeout_ms; /* 0: none given */
        bool json, verbose;
        const char *id, *manifest_url, *manifest_file;
        bool watch;
        size_t max_payload;
};

struct node {
        char *name;
        /* From the inventory. */
        char *transport, *protocol, *class_name, *installed;
        /* From the latest node status, or from a deployment report. */
        char *state, *deployment, *image, *version, *err_code, *err_msg, *ts;
        int progress; /* -1 when unknown */
        int attempt;  /* 2, 3, ...: the install runs again (node retries); -1: first or unknown */
        int64_t bytes, total, rate;
        bool in_inventory, has_status;
        /* Plain output: what was printed last for this node. */
        char *shown_state;
        int shown_decile, shown_attempt;
};

struct ctl {
        const struct opts *o;
        struct mosquitto *mosq;
        bool connected, done, disconnecting;
        int exit_code;
        uint64_t t0, deadline, collect_until;

        /* Subscriptions. */
        int pending_subs;
        bool subscribed;

        /* The one message we publish (deploy, cancel, clear). */
        char *pub_topic, *pub_payload;
        size_t pub_len;
        bool pub_retain, pub_sent, pub_acked;
        int pub_mid;

        /* watch and deploy --watch. */
        char *id;       /* the deployment followed; NULL until known */
        bool live_only; /* deploy --watch: ignore retained (older) reports and statuses */
        bool want_deploy_id;
        bool deploy_seen; /* a retained <prefix>/deploy (or its absence) was decided */
        char *earlier_final;
        bool heard_live; /* a report or status for id after our publish */
        bool announced;
        char *phase;
        json_t *early; /* node statuses received before the id was known: name -> [obj, retained] */
        bool gateway_offline;
        bool gateway_known;

        struct node *nodes;
        size_t n_nodes;
        bool nodes_full;

        /* status */
        json_t *state_obj, *inventory_obj, *deploy_obj, *report_obj, *statuses;
        bool deploy_cleared, report_subscribed;

        /* Output. */
        bool tty;
        int drawn; /* table lines on screen below the last message */
        bool dirty;
        uint64_t last_draw;
};

static volatile sig_atomic_t interrupted;

static void on_sigint(int signo)
{
        interrupted = 1;
}

static void on_sigalrm(int signo)
{
        /* Only interrupts a blocking connect(). */
}

/* ---- Strings from the outside -------------------------------------------------------------- */

static bool valid_name(const char *s, size_t max)
{
        size_t n = s ? strlen(s) : 0;

        if (n == 0 || n > max)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];

                if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
                        return false;
        }
        return true;
}

/* A copy of s fit for a terminal: at most max bytes, cut on a character boundary, with C0,
 * DEL and C1 control characters (escape sequences!) replaced by '?'. s is valid UTF-8 (jansson
 * checks it). NULL when s is NULL or on ENOMEM. */
static char *clean_dup(const char *s, size_t max)
{
        const unsigned char *in = (const unsigned char *) s;
        size_t n, j = 0;
        char *out;

        if (!s)
                return NULL;
        n = strlen(s);
        if (n > max) {
                n = max;
                while (n > 0 && (in[n] & 0xc0) == 0x80)
                        n--;
        }
        out = malloc(n + 1);
        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                if (in[i] < 0x20 || in[i] == 0x7f)
                        out[j++] = '?';
                else if (in[i] == 0xc2 && i + 1 < n && in[i + 1] >= 0x80 && in[i + 1] <= 0x9f) {
                        out[j++] = '?';
                        i++;
                } else
                        out[j++] = (char) in[i];
        }
        out[j] = '\0';
        return out;
}

static void set_field(char **field, const char *s, size_t max)
{
        free(*field);
        *field = clean_dup(s, max);
}

static const char *str_member(const json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

/* An integer member in [0, max], or -1. */
static int64_t int_member(const json_t *o, const char *key, int64_t max)
{
        const json_t *v = json_object_get(o, key);
        json_int_t i;

        if (!json_is_integer(v))
                return -1;
        i = json_integer_value(v);
        return i >= 0 && i <= max ? (int64_t) i : -1;
}

/* Characters on screen (UTF-8 lead bytes); wide characters count as one. */
static size_t display_len(const char *s)
{
        size_t n = 0;

        for (; *s; s++)
                if (((unsigned char) *s & 0xc0) != 0x80)
                        n++;
        return n;
}

/* Cuts s to at most cols characters on screen. */
static void fit(char *s, size_t cols)
{
        size_t n = 0;

        for (char *p = s; *p; p++) {
                if (((unsigned char) *p & 0xc0) != 0x80) {
                        if (n == cols) {
                                *p = '\0';
                                return;
                        }
                        n++;
                }
        }
}

static void fmt_bytes(char *buf, size_t n, int64_t v)
{
        if (v < 0)
                snprintf(buf, n, "?");
        else if (v >= 1024 * 1024)
                snprintf(buf, n, "%.1f MiB", (double) v / (1024.0 * 1024.0));
        else if (v >= 1024)
                snprintf(buf, n, "%.1f KiB", (double) v / 1024.0);
        else
                snprintf(buf, n, "%lld B", (long long) v);
}

/* ---- Nodes --------------------------------------------------------------------------------- */

static struct node *node_find(struct ctl *c, const char *name)
{
        for (size_t i = 0; i < c->n_nodes; i++)
                if (strcmp(c->nodes[i].name, name) == 0)
                        return &c->nodes[i];
        return NULL;
}

static void node_reset_status(struct node *n)
{
        set_field(&n->state, NULL, 0);
        set_field(&n->deployment, NULL, 0);
        set_field(&n->image, NULL, 0);
        set_field(&n->version, NULL, 0);
        set_field(&n->err_code, NULL, 0);
        set_field(&n->err_msg, NULL, 0);
        set_field(&n->ts, NULL, 0);
        n->progress = -1;
        n->attempt = -1;
        n->bytes = n->total = n->rate = -1;
}

/* The node called name (already validated), added when new; NULL past NODES_MAX or ENOMEM. */
static struct node *node_get(struct ctl *c, const char *name)
{
        struct node *n = node_find(c, name), *grown;

        if (n)
                return n;
        if (c->n_nodes >= NODES_MAX) {
                if (!c->nodes_full)
                        gw_log_warning("More than %u nodes, ignoring the rest", NODES_MAX);
                c->nodes_full = true;
                return NULL;
        }
        grown = realloc(c->nodes, (c->n_nodes + 1) * sizeof(*c->nodes));
        if (!grown)
                return NULL;
        c->nodes = grown;
        n = &c->nodes[c->n_nodes];
        *n = (struct node){.progress = -1,
                           .attempt = -1,
                           .bytes = -1,
                           .total = -1,
                           .rate = -1,
                           .shown_decile = -1,
                           .shown_attempt = -1};
        n->name = strdup(name);
        if (!n->name)
                return NULL;
        c->n_nodes++;
        return n;
}

static void node_done(struct node *n)
{
        node_reset_status(n);
        free(n->name);
        free(n->transport);
        free(n->protocol);
        free(n->class_name);
        free(n->installed);
        free(n->shown_state);
}

static void node_set_error(struct node *n, const json_t *err)
{
        set_field(&n->err_code, NULL, 0);
        set_field(&n->err_msg, NULL, 0);
        if (!json_is_object(err) || !str_member(err, "code"))
                return;
        set_field(&n->err_code, str_member(err, "code"), FIELD_MAX);
        set_field(&n->err_msg, str_member(err, "message"), MESSAGE_MAX);
}

/* A full node status replaces everything known about the node's state. */
static void node_apply_status(struct node *n, const json_t *st)
{
        node_reset_status(n);
        set_field(&n->state, str_member(st, "state"), FIELD_MAX);
        set_field(&n->deployment, str_member(st, "deployment"), FIELD_MAX);
        set_field(&n->image, str_member(st, "image"), FIELD_MAX);
        set_field(&n->version, str_member(st, "version"), FIELD_MAX);
        set_field(&n->ts, str_member(st, "ts"), FIELD_MAX);
        n->progress = (int) int_member(st, "progress", 100);
        n->bytes = int_member(st, "bytes", INT64_C(1) << 53);
        n->total = int_member(st, "total", INT64_C(1) << 53);
        n->rate = int_member(st, "rate_bps", INT64_C(1) << 53);
        n->attempt = (int) int_member(st, "attempt", 100);
        node_set_error(n, json_object_get(st, "error"));
        n->has_status = true;
}

/* ---- Output -------------------------------------------------------------------------------- */

static int term_cols(void)
{
        struct winsize ws;

        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
                return ws.ws_col;
        return 80;
}

static int term_rows(void)
{
        struct winsize ws;

        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row >= 4)
                return ws.ws_row;
        return 24;
}

static void json_event(json_t *o)
{
        char *s;

        if (!o)
                return;
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s)
                printf("%s\n", s);
        fflush(stdout);
        free(s);
        json_decref(o);
}

/* Moves the cursor back over the live table and clears it. */
static void table_erase(struct ctl *c)
{
        if (c->tty && c->drawn > 0)
                printf("\r\033[%dA\033[J", c->drawn);
        c->drawn = 0;
}

static void table_draw(struct ctl *c)
{
        int cols = term_cols(), rows = term_rows(), max_lines, bar_w;
        size_t name_w = 4;
        char *buf = NULL, line[1024];
        size_t len = 0;
        FILE *m;

        if (!c->tty || c->o->json)
                return;
        m = open_memstream(&buf, &len);
        if (!m)
                return;
        /* Redraw in one write so the terminal never shows a half-drawn table. */
        if (c->drawn > 0)
                fprintf(m, "\r\033[%dA\033[J", c->drawn);
        c->drawn = 0;
        snprintf(line, sizeof(line), "deployment %s: %s%s", c->id ? c->id : "?",
                 c->phase ? c->phase : "waiting", c->gateway_offline ? " (gateway offline)" : "");
        fit(line, (size_t) cols - 1);
        fprintf(m, "%s\n", line);
        c->drawn++;
        for (size_t i = 0; i < c->n_nodes; i++)
                if (display_len(c->nodes[i].name) > name_w)
                        name_w = display_len(c->nodes[i].name);
        if (name_w > 24)
                name_w = 24;
        /* Lines must not wrap, or moving the cursor back up misses: the bar takes what is left
         * of the width after name, state, percent, amounts and rate. */
        bar_w = cols - 1 - (int) name_w - 52;
        bar_w = bar_w < BAR_MIN ? BAR_MIN : bar_w > BAR_MAX ? BAR_MAX : bar_w;
        /* A table taller than the screen cannot be redrawn in place. */
        max_lines = rows - 2;
        for (size_t i = 0; i < c->n_nodes; i++) {
                const struct node *n = &c->nodes[i];
                char name[32], bar[BAR_MAX + 1], pct[16] = "", done[32] = "", total[32] = "",
                                                 amount[72] = "", rate[40] = "", state[32];
                int fill;

                if (c->drawn >= max_lines - 1 && i + 1 < c->n_nodes) {
                        fprintf(m, "... and %zu more nodes\n", c->n_nodes - i);
                        c->drawn++;
                        break;
                }
                snprintf(name, sizeof(name), "%s", n->name);
                fit(name, name_w);
                fill = n->progress >= 0 ? n->progress * bar_w / 100 : 0;
                memset(bar, '#', (size_t) fill);
                memset(bar + fill, '-', (size_t) (bar_w - fill));
                bar[bar_w] = '\0';
                if (n->progress >= 0)
                        snprintf(pct, sizeof(pct), "%3d%%", n->progress);
                if (n->total >= 0) {
                        fmt_bytes(done, sizeof(done), n->bytes);
                        fmt_bytes(total, sizeof(total), n->total);
                        snprintf(amount, sizeof(amount), "%s/%s", done, total);
                } else if (n->version)
                        snprintf(amount, sizeof(amount), "%.32s%s%.32s", n->image ? n->image : "",
                                 n->image ? " " : "", n->version);
                if (n->rate >= 0) {
                        fmt_bytes(rate, sizeof(rate), n->rate);
                        strcat(rate, "/s");
                }
                /* "flashing#2": the second attempt (node retries). */
                snprintf(state, sizeof(state), "%.20s", n->state ? n->state : "-");
                if (n->attempt > 1)
                        snprintf(state, sizeof(state), "%.16s#%d", n->state ? n->state : "-",
                                 n->attempt);
                if (n->err_code)
                        snprintf(line, sizeof(line), "%-*s %-11s [%s] %4s  %s: %s",
                                 (int) (name_w + strlen(name) - display_len(name)), name, state,
                                 bar, pct, n->err_code, n->err_msg ? n->err_msg : "");
                else
                        snprintf(line, sizeof(line), "%-*s %-11s [%s] %4s %19s %11s",
                                 (int) (name_w + strlen(name) - display_len(name)), name, state,
                                 bar, pct, amount, rate);
                fit(line, (size_t) cols - 1);
                fprintf(m, "%s\n", line);
                c->drawn++;
        }
        fclose(m);
        if (buf)
                fwrite(buf, 1, len, stdout);
        fflush(stdout);
        free(buf);
        c->dirty = false;
        c->last_draw = gw_now_ms();
}

/* One line of news for humans; on a terminal it goes above the live table. */
__attribute__((format(printf, 2, 3))) static void say(struct ctl *c, const char *fmt, ...)
{
        va_list ap;
        bool redraw = c->tty && c->drawn > 0;

        if (c->o->json)
                return;
        table_erase(c);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        if (redraw)
                table_draw(c);
        fflush(stdout);
}

/* Plain output: a line when the node's state changes and for every 10 % of progress. */
static void node_report_plain(struct ctl *c, struct node *n)
{
        int decile = n->progress >= 0 ? n->progress / 10 : -1;
        bool changed = !n->shown_state || !n->state || strcmp(n->shown_state, n->state) != 0 ||
                       n->attempt != n->shown_attempt;
        char line[1024], done[32], total[32], rate[32];
        size_t len;

        if (!n->state)
                return;
        if (!changed && decile <= n->shown_decile)
                return;
        set_field(&n->shown_state, n->state, FIELD_MAX);
        n->shown_decile = decile;
        n->shown_attempt = n->attempt;
        len = (size_t) snprintf(line, sizeof(line), "%s: %s", n->name, n->state);
        if (n->attempt > 1 && len < sizeof(line))
                len +=
                    (size_t) snprintf(line + len, sizeof(line) - len, " (attempt %d)", n->attempt);
        if (n->progress >= 0 && len < sizeof(line))
                len += (size_t) snprintf(line + len, sizeof(line) - len, " %d%%", n->progress);
        if (n->total >= 0 && len < sizeof(line)) {
                fmt_bytes(done, sizeof(done), n->bytes);
                fmt_bytes(total, sizeof(total), n->total);
                len += (size_t) snprintf(line + len, sizeof(line) - len, " (%s of %s", done, total);
                if (n->rate >= 0 && len < sizeof(line)) {
                        fmt_bytes(rate, sizeof(rate), n->rate);
                        len += (size_t) snprintf(line + len, sizeof(line) - len, ", %s/s", rate);
                }
                if (len < sizeof(line))
                        len += (size_t) snprintf(line + len, sizeof(line) - len, ")");
        }
        if (n->err_code && len < sizeof(line))
                snprintf(line + len, sizeof(line) - len, " error: %s: %s", n->err_code,
                         n->err_msg ? n->err_msg : "");
        say(c, "%s", line);
}

static void node_changed(struct ctl *c, struct node *n)
{
        if (c->o->json)
                return;
        if (c->tty)
                c->dirty = true;
        else
                node_report_plain(c, n);
}

static void set_phase(struct ctl *c, const char *phase)
{
        set_field(&c->phase, phase, FIELD_MAX);
        c->dirty = true;
}

static void finish(struct ctl *c, int exit_code)
{
        c->exit_code = exit_code;
        c->done = true;
}

/* ---- MQTT plumbing ------------------------------------------------------------------------- */

static char *topic(const struct ctl *c, const char *suffix)
{
        char *t = NULL;

        if (asprintf(&t, "%s/%s", c->o->prefix, suffix) < 0)
                return NULL;
        return t;
}

static int subscribe(struct ctl *c, const char *suffix)
{
        char *t = topic(c, suffix);
        int rc;

        if (!t)
                return -ENOMEM;
        rc = mosquitto_subscribe_v5(c->mosq, NULL, t, 1, 0, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
                int r = gw_mosq_to_errno(rc);

                gw_log_error_errno(r, "Cannot subscribe to %s: %s", t, mosquitto_strerror(rc));
                free(t);
                return r;
        }
        gw_log_debug("Subscribing to %s", t);
        free(t);
        c->pending_subs++;
        return 0;
}

static int publish(struct ctl *c)
{
        int rc;

        rc = mosquitto_publish_v5(c->mosq, &c->pub_mid, c->pub_topic, (int) c->pub_len,
                                  c->pub_len ? c->pub_payload : NULL, 1, c->pub_retain, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
                int r = gw_mosq_to_errno(rc);

                gw_log_error("Cannot publish to %s: %s", c->pub_topic,
                             rc == MOSQ_ERR_ERRNO ? strerror(-r) : mosquitto_strerror(rc));
                finish(c, 1);
                return r;
        }
        gw_log_debug("Published %zu bytes to %s (mid %d)", c->pub_len, c->pub_topic, c->pub_mid);
        c->pub_sent = true;
        return 0;
}

/* The subscriptions each command needs once connected. */
static int subscribe_all(struct ctl *c)
{
        int r = 0;

        switch (c->o->cmd) {
        case CMD_DEPLOY:
                if (!c->o->watch)
                        return 0;
                /* fall through */
        case CMD_WATCH:
                r = subscribe(c, "state");
                if (r >= 0)
                        r = subscribe(c, "nodes/+/status");
                if (r >= 0 && c->want_deploy_id)
                        r = subscribe(c, "deploy");
                if (r >= 0 && c->id) {
                        char *s = NULL;

                        if (asprintf(&s, "deployments/%s", c->id) < 0)
                                return -ENOMEM;
                        r = subscribe(c, s);
                        free(s);
                }
                return r;
        case CMD_STATUS:
                r = subscribe(c, "state");
                if (r >= 0)
                        r = subscribe(c, "inventory");
                if (r >= 0)
                        r = subscribe(c, "nodes/+/status");
                if (r >= 0)
                        r = subscribe(c, "deploy");
                return r;
        default:
                return 0;
        }
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
        struct ctl *c = obj;

        if (rc != 0) {
                gw_log_error("Broker %s:%d refused the connection: %s", c->o->host, c->o->port,
                             mosquitto_reason_string(rc));
                finish(c, 1);
                return;
        }
        c->connected = true;
        gw_log_debug("Connected to %s:%d", c->o->host, c->o->port);
        if (subscribe_all(c) < 0) {
                finish(c, 1);
                return;
        }
        /* deploy --watch publishes only once subscribed, so that nothing is missed. */
        if (c->pending_subs == 0 && c->pub_topic)
                publish(c);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props)
{
        struct ctl *c = obj;

        c->connected = false;
        if (c->done || c->disconnecting)
                return;
        /* rc is a MOSQ_ERR_* code here, not an MQTT reason code. */
        gw_log_error("Lost the connection to %s:%d: %s", c->o->host, c->o->port,
                     mosquitto_strerror(rc));
        finish(c, 1);
}

static void subscriptions_ready(struct ctl *c);

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int qos_count,
                         const int *granted_qos, const mosquitto_property *props)
{
        struct ctl *c = obj;

        for (int i = 0; i < qos_count; i++)
                if (granted_qos[i] >= 0x80) {
                        gw_log_error("The broker refused a subscription: %s",
                                     mosquitto_reason_string(granted_qos[i]));
                        finish(c, 1);
                        return;
                }
        if (c->pending_subs > 0)
                c->pending_subs--;
        if (c->pending_subs == 0)
                subscriptions_ready(c);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
        struct ctl *c = obj;

        if (!c->pub_sent || mid != c->pub_mid)
                return;
        if (reason >= 0x80) {
                gw_log_error("The broker refused the message on %s: %s", c->pub_topic,
                             mosquitto_reason_string(reason));
                finish(c, 1);
                return;
        }
        c->pub_acked = true;
        switch (c->o->cmd) {
        case CMD_DEPLOY:
                if (c->o->json)
                        json_event(json_pack("{s:s, s:s, s:s}", "event", "published", "id",
                                             c->o->id, "topic", c->pub_topic));
                else if (c->o->watch)
                        say(c, "Published deployment %s; waiting for the gateway", c->o->id);
                else
                        say(c, "Published deployment %s to %s", c->o->id, c->pub_topic);
                if (!c->o->watch)
                        finish(c, 0);
                else
                        set_phase(c, "published, waiting for the gateway");
                break;
        case CMD_CANCEL:
                if (c->o->json)
                        json_event(json_pack("{s:s, s:s, s:s}", "event", "published", "id",
                                             c->o->id, "topic", c->pub_topic));
                else
                        say(c, "Asked the gateway to cancel deployment %s", c->o->id);
                finish(c, 0);
                break;
        case CMD_CLEAR:
                if (c->o->json)
                        json_event(
                            json_pack("{s:s, s:s}", "event", "cleared", "topic", c->pub_topic));
                else
                        say(c, "Cleared the desired state on %s", c->pub_topic);
                finish(c, 0);
                break;
        default:
                break;
        }
}

/* ---- Watching a deployment ----------------------------------------------------------------- */

static void print_final(struct ctl *c, const json_t *report, const char *state)
{
        const json_t *err = json_object_get(report, "error");
        const json_t *nodes = json_object_get(report, "nodes");
        char *code = NULL, *msg = NULL;
        bool ok = strcmp(state, "success") == 0;

        if (json_is_object(err)) {
                code = clean_dup(str_member(err, "code"), FIELD_MAX);
                msg = clean_dup(str_member(err, "message"), MESSAGE_MAX);
        }
        if (c->o->json) {
                json_t *o = json_pack("{s:s, s:s, s:s, s:O?, s:O?}", "event", "result", "id", c->id,
                                      "state", state, "error", json_is_object(err) ? err : NULL,
                                      "nodes", json_is_object(nodes) ? nodes : NULL);

                json_event(o);
        } else {
                if (c->tty) {
                        table_draw(c);
                        c->drawn = 0; /* the final table stays on screen */
                }
                say(c, "deployment %s: %s", c->id, state);
                if (!c->tty)
                        for (size_t i = 0; i < c->n_nodes; i++) {
                                const struct node *n = &c->nodes[i];

                                if (!n->state)
                                        continue;
                                say(c, "  %s: %s%s%s%s%s%s%s", n->name, n->state,
                                    n->image ? " " : "", n->image ? n->image : "",
                                    n->version ? " " : "", n->version ? n->version : "",
                                    n->err_code ? " error: " : "", n->err_code ? n->err_code : "");
                        }
        }
        if (!ok) {
                if (code)
                        gw_log_error("%s: %s", code, msg ? msg : "");
                else
                        gw_log_error("deployment %s %s", c->id, state);
                for (size_t i = 0; i < c->n_nodes; i++) {
                        const struct node *n = &c->nodes[i];

                        if (n->err_code)
                                gw_log_error("%s: %s: %s", n->name, n->err_code,
                                             n->err_msg ? n->err_msg : "");
                }
        }
        free(code);
        free(msg);
        finish(c, ok ? 0 : 1);
}

/* Per-node members of a deployment report; final reports carry image, version and error. */
static void apply_report_nodes(struct ctl *c, const json_t *nodes, bool final)
{
        const char *name;
        json_t *v;

        if (json_is_array(nodes)) { /* accepted: the names of the nodes it touches */
                size_t i;

                json_array_foreach(nodes, i, v)
                {
                        struct node *n;

                        if (!valid_name(json_string_value(v), ID_MAX))
                                continue;
                        n = node_get(c, json_string_value(v));
                        if (n && !n->state) {
                                set_field(&n->state, "queued", FIELD_MAX);
                                node_changed(c, n);
                        }
                }
                return;
        }
        if (!json_is_object(nodes))
                return;
        json_object_foreach((json_t *) nodes, name, v)
        {
                const char *state = str_member(v, "state");
                struct node *n;
                bool changed;

                if (!json_is_object(v) || !state || !valid_name(name, ID_MAX))
                        continue;
                n = node_get(c, name);
                if (!n)
                        continue;
                changed = !n->state || strcmp(n->state, state) != 0;
                set_field(&n->state, state, FIELD_MAX);
                if (final) {
                        if (str_member(v, "image"))
                                set_field(&n->image, str_member(v, "image"), FIELD_MAX);
                        if (str_member(v, "version"))
                                set_field(&n->version, str_member(v, "version"), FIELD_MAX);
                        node_set_error(n, json_object_get(v, "error"));
                        /* Progress belonged to a step that is over. */
                        n->bytes = n->total = n->rate = -1;
                        n->progress = strcmp(state, "success") == 0 ? 100 : -1;
                } else if (!n->has_status || changed) {
                        /* Node statuses are richer; a running report only fills gaps. */
                        int64_t p = int_member(v, "progress", 100);

                        n->progress = (int) p;
                        if (changed)
                                n->bytes = n->total = n->rate = -1;
                }
                if (!final)
                        node_changed(c, n);
        }
}

static void handle_report(struct ctl *c, const json_t *o, bool retained)
{
        const char *state = str_member(o, "state"), *id = str_member(o, "id");
        bool final;

        if (!state || (id && strcmp(id, c->id) != 0)) {
                gw_log_debug("Ignoring a malformed report for %s", c->id);
                return;
        }
        final = strcmp(state, "success") == 0 || strcmp(state, "failed") == 0 ||
                strcmp(state, "rejected") == 0;
        if (c->live_only && retained) {
                /* From an earlier run of the same id: not the answer to our publish. */
                if (final)
                        set_field(&c->earlier_final, state, FIELD_MAX);
                gw_log_debug("Ignoring the retained report (%s) of an earlier run of %s", state,
                             c->id);
                return;
        }
        if (c->live_only && !c->pub_sent)
                return;
        c->heard_live = true;
        if (c->o->json && !final)
                json_event(json_pack("{s:s, s:O}", "event", "deployment", "report", o));
        if (final) {
                apply_report_nodes(c, json_object_get(o, "nodes"), true);
                set_phase(c, state);
                print_final(c, o, state);
                return;
        }
        if (strcmp(state, "accepted") == 0) {
                const json_t *nodes = json_object_get(o, "nodes");

                set_phase(c, "accepted");
                say(c, "deployment %s: accepted for %zu node(s)", c->id,
                    json_is_array(nodes) ? json_array_size(nodes) : (size_t) 0);
                apply_report_nodes(c, nodes, false);
        } else if (strcmp(state, "running") == 0) {
                if (!c->phase || strcmp(c->phase, "running") != 0) {
                        set_phase(c, "running");
                        if (!c->tty)
                                say(c, "deployment %s: running", c->id);
                }
                apply_report_nodes(c, json_object_get(o, "nodes"), false);
        }
}

static void handle_status(struct ctl *c, const char *name, json_t *o, bool retained)
{
        const char *dep = str_member(o, "deployment");
        struct node *n;

        if (!str_member(o, "state"))
                return;
        if (c->o->cmd == CMD_STATUS) {
                if (json_object_size(c->statuses) < NODES_MAX || json_object_get(c->statuses, name))
                        json_object_set(c->statuses, name, o);
                return;
        }
        if (!c->id) {
                /* watch without --id: keep it until the desired deployment is known. */
                json_t *pair = json_pack("[O, b]", o, retained);

                if (pair && json_object_size(c->early) < NODES_MAX)
                        json_object_set_new(c->early, name, pair);
                else
                        json_decref(pair);
                return;
        }
        /* Statuses of other deployments, or of none, are stale here. */
        if (!dep || strcmp(dep, c->id) != 0)
                return;
        if (c->live_only && (retained || !c->pub_sent))
                return;
        c->heard_live = true;
        n = node_get(c, name);
        if (!n)
                return;
        node_apply_status(n, o);
        if (c->o->json)
                json_event(
                    json_pack("{s:s, s:s, s:O}", "event", "node", "node", name, "status", o));
        node_changed(c, n);
}

static void handle_state(struct ctl *c, const json_t *o)
{
        const char *state = str_member(o, "state");
        bool offline;

        if (c->o->cmd == CMD_STATUS) {
                json_decref(c->state_obj);
                c->state_obj = json_incref((json_t *) o);
                return;
        }
        if (!state)
                return;
        offline = strcmp(state, "offline") == 0;
        if (c->gateway_known && offline == c->gateway_offline)
                return;
        if (offline)
                say(c, "gateway %s is offline; waiting for it to come back", c->o->prefix);
        else if (c->gateway_known)
                say(c, "gateway %s is online again", c->o->prefix);
        c->gateway_known = true;
        c->gateway_offline = offline;
        c->dirty = true;
        if (c->o->json)
                json_event(json_pack("{s:s, s:O}", "event", "gateway", "state", o));
}

static void follow(struct ctl *c, const char *id)
{
        const char *name;
        json_t *pair, *tmp;
        char *s = NULL;

        c->id = strdup(id);
        if (!c->id || asprintf(&s, "deployments/%s", id) < 0 || subscribe(c, s) < 0) {
                free(s);
                finish(c, 1);
                return;
        }
        free(s);
        json_object_foreach_safe(c->early, tmp, name, pair)
        {
                handle_status(c, name, json_array_get(pair, 0),
                              json_is_true(json_array_get(pair, 1)));
        }
        json_object_clear(c->early);
        c->dirty = true;
}

static void handle_deploy(struct ctl *c, json_t *o, size_t len)
{
        const char *id;

        if (c->o->cmd == CMD_STATUS) {
                if (len == 0) {
                        c->deploy_cleared = true;
                        return;
                }
                if (!o)
                        return;
                json_decref(c->deploy_obj);
                c->deploy_obj = json_incref(o);
                id = str_member(o, "id");
                if (!c->report_subscribed && valid_name(id, ID_MAX)) {
                        char *s = NULL;

                        c->report_subscribed = true;
                        if (asprintf(&s, "deployments/%s", id) >= 0)
                                subscribe(c, s);
                        free(s);
                }
                return;
        }
        if (!c->want_deploy_id || c->deploy_seen)
                return;
        c->deploy_seen = true;
        id = o ? str_member(o, "id") : NULL;
        if (!valid_name(id, ID_MAX)) {
                gw_log_error("No desired deployment on %s/deploy%s; pass --id", c->o->prefix,
                             len ? " (it holds no valid id)" : "");
                finish(c, 1);
                return;
        }
        follow(c, id);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
        struct ctl *c = obj;
        size_t plen = strlen(c->o->prefix), len;
        const char *suffix;
        json_t *o = NULL;
        json_error_t jerr;

        if (c->done || !msg->topic || strncmp(msg->topic, c->o->prefix, plen) != 0 ||
            msg->topic[plen] != '/')
                return;
        suffix = msg->topic + plen + 1;
        len = msg->payloadlen > 0 ? (size_t) msg->payloadlen : 0;
        gw_log_debug("Received %zu bytes on %s%s", len, msg->topic,
                     msg->retain ? " (retained)" : "");
        if (len > INCOMING_MAX) {
                gw_log_warning("Message of %zu bytes on %s is over %u bytes, ignoring", len,
                               msg->topic, INCOMING_MAX);
                return;
        }
        if (len > 0) {
                o = json_loadb(msg->payload, len, JSON_REJECT_DUPLICATES, &jerr);
                if (!json_is_object(o)) {
                        gw_log_debug("Message on %s is not a JSON object, ignoring", msg->topic);
                        json_decref(o);
                        o = NULL;
                }
        }
        if (strcmp(suffix, "deploy") == 0)
                handle_deploy(c, o, len);
        else if (!o)
                ; /* Everything else must be an object. */
        else if (strcmp(suffix, "state") == 0)
                handle_state(c, o);
        else if (strcmp(suffix, "inventory") == 0 && c->o->cmd == CMD_STATUS) {
                json_decref(c->inventory_obj);
                c->inventory_obj = json_incref(o);
        } else if (strncmp(suffix, "nodes/", 6) == 0) {
                const char *name = suffix + 6, *slash = strchr(name, '/');
                char buf[ID_MAX + 1];

                if (slash && strcmp(slash, "/status") == 0 && slash > name &&
                    (size_t) (slash - name) <= ID_MAX) {
                        memcpy(buf, name, (size_t) (slash - name));
                        buf[slash - name] = '\0';
                        if (valid_name(buf, ID_MAX))
                                handle_status(c, buf, o, msg->retain);
                }
        } else if (strncmp(suffix, "deployments/", 12) == 0) {
                if (c->o->cmd == CMD_STATUS) {
                        json_decref(c->report_obj);
                        c->report_obj = json_incref(o);
                } else if (c->id && strcmp(suffix + 12, c->id) == 0)
                        handle_report(c, o, msg->retain);
        }
        json_decref(o);
}

/* Once every subscription is acknowledged, retained messages are on their way. */
static void subscriptions_ready(struct ctl *c)
{
        uint64_t now = gw_now_ms();

        c->subscribed = true;
        gw_log_debug("Subscriptions acknowledged");
        if (c->o->cmd == CMD_WATCH && c->id && !c->announced) {
                /* Also the line scripts wait for: from here on nothing is missed. */
                c->announced = true;
                if (!c->tty)
                        say(c, "watching deployment %s on %s", c->id, c->o->prefix);
        }
        if (c->pub_topic && !c->pub_sent) {
                publish(c);
                return;
        }
        if (c->o->cmd == CMD_STATUS || (c->want_deploy_id && !c->deploy_seen))
                c->collect_until = now + COLLECT_MS;
}

/* The collection window after the SUBACKs closed. */
static void collect_done(struct ctl *c)
{
        c->collect_until = 0;
        if (c->o->cmd == CMD_WATCH && c->want_deploy_id && !c->deploy_seen) {
                c->deploy_seen = true;
                gw_log_error("No desired deployment on %s/deploy; pass --id", c->o->prefix);
                finish(c, 1);
        }
}

/* ---- status -------------------------------------------------------------------------------- */

static void status_collect_nodes(struct ctl *c)
{
        const json_t *arr = json_object_get(c->inventory_obj, "nodes"), *v;
        const char *name;
        json_t *st;
        size_t i;

        if (json_is_array(arr))
                json_array_foreach(arr, i, v)
                {
                        struct node *n;

                        if (!json_is_object(v) || !valid_name(str_member(v, "name"), ID_MAX))
                                continue;
                        n = node_get(c, str_member(v, "name"));
                        if (!n)
                                break;
                        n->in_inventory = true;
                        set_field(&n->transport, str_member(v, "transport"), FIELD_MAX);
                        set_field(&n->protocol, str_member(v, "protocol"), FIELD_MAX);
                        set_field(&n->class_name, str_member(v, "class"), FIELD_MAX);
                        set_field(&n->installed, str_member(v, "version"), FIELD_MAX);
                }
        json_object_foreach(c->statuses, name, st)
        {
                struct node *n = node_get(c, name);

                if (n)
                        node_apply_status(n, st);
        }
}

static int status_print(struct ctl *c)
{
        const char *s;

        status_collect_nodes(c);
        if (!c->state_obj && !c->inventory_obj && c->n_nodes == 0 && !c->deploy_obj) {
                gw_log_error("Nothing retained under %s/: no gateway has reported there",
                             c->o->prefix);
                return 1;
        }
        if (c->o->json) {
                json_t *o =
                    json_pack("{s:s, s:O?, s:O?, s:O?, s:O?, s:O}", "prefix", c->o->prefix, "state",
                              c->state_obj, "inventory", c->inventory_obj, "deploy", c->deploy_obj,
                              "deployment", c->report_obj, "nodes", c->statuses);

                json_event(o);
                return 0;
        }
        {
                char *st = clean_dup(str_member(c->state_obj, "state"), FIELD_MAX);
                char *ver = clean_dup(str_member(c->state_obj, "version"), FIELD_MAX);
                char *ts = clean_dup(str_member(c->state_obj, "ts"), FIELD_MAX);

                printf("gateway:    %s %s", c->o->prefix, st ? st : "unknown (no state retained)");
                if (ver)
                        printf(", gatewayd %s", ver);
                if (ts)
                        printf(", %s", ts);
                printf("\n");
                free(st);
                free(ver);
                free(ts);
        }
        if (c->deploy_obj) {
                char *id = clean_dup(str_member(c->deploy_obj, "id"), ID_MAX);
                char *url = clean_dup(str_member(c->deploy_obj, "manifest_url"), URL_MAX);
                const char *m = str_member(c->deploy_obj, "manifest");

                printf("desired:    %s", id ? id : "(no id)");
                if (url)
                        printf(" from %s", url);
                else if (m)
                        printf(" (manifest inline, %zu bytes of base64)", strlen(m));
                printf("\n");
                free(id);
                free(url);
        } else
                printf("desired:    none\n");
        if (c->report_obj) {
                char *st = clean_dup(str_member(c->report_obj, "state"), FIELD_MAX);
                char *ts = clean_dup(str_member(c->report_obj, "ts"), FIELD_MAX);
                const json_t *err = json_object_get(c->report_obj, "error");
                char *code = clean_dup(str_member(err, "code"), FIELD_MAX);
                char *msg = clean_dup(str_member(err, "message"), MESSAGE_MAX);

                printf("outcome:    %s%s%s", st ? st : "?", ts ? " at " : "", ts ? ts : "");
                if (code)
                        printf(" (%s: %s)", code, msg ? msg : "");
                printf("\n");
                free(st);
                free(ts);
                free(code);
                free(msg);
        }
        if (c->n_nodes == 0) {
                printf("nodes:      none reported\n");
                return 0;
        }
        printf("\n%-16s %-9s %-10s %-14s %-10s %-11s %-8s %s\n", "NODE", "TRANSPORT", "PROTOCOL",
               "CLASS", "INSTALLED", "STATE", "PROGRESS", "DEPLOYMENT");
        for (size_t i = 0; i < c->n_nodes; i++) {
                const struct node *n = &c->nodes[i];
                char pct[16] = "";

                if (n->progress >= 0)
                        snprintf(pct, sizeof(pct), "%d%%", n->progress);
                s = n->installed ? n->installed
                                 : (n->state && strcmp(n->state, "idle") == 0 ? n->version : NULL);
                printf("%-16s %-9s %-10s %-14s %-10s %-11s %-8s %s\n", n->name,
                       n->transport ? n->transport : "-", n->protocol ? n->protocol : "-",
                       n->class_name ? n->class_name : "-", s ? s : "-", n->state ? n->state : "-",
                       pct[0] ? pct : "-", n->deployment ? n->deployment : "-");
                if (n->err_code)
                        printf("%-16s error: %s: %s\n", "", n->err_code,
                               n->err_msg ? n->err_msg : "");
        }
        return 0;
}

/* ---- Running a session --------------------------------------------------------------------- */

static void on_timeout(struct ctl *c)
{
        double secs = (double) c->o->timeout_ms / 1000.0;

        if (c->o->json && c->id)
                json_event(json_pack("{s:s, s:s, s:s}", "event", "result", "id", c->id, "state",
                                     "timeout"));
        if (c->tty && !c->o->json) {
                table_draw(c);
                c->drawn = 0;
        }
        if (c->o->cmd == CMD_STATUS && c->subscribed) {
                /* Whatever came within --timeout is the answer. */
                finish(c, status_print(c));
                return;
        }
        if (c->id && (c->o->cmd == CMD_WATCH || c->pub_acked)) {
                gw_log_error("timed out after %.1f s waiting for deployment %s to finish", secs,
                             c->id);
                if (c->earlier_final && !c->heard_live)
                        gw_log_error("The gateway did not answer; an earlier run of %s ended "
                                     "'%s', and a gateway ignores a deployment it has already "
                                     "done: use a new id",
                                     c->id, c->earlier_final);
        } else if (!c->connected)
                gw_log_error("timed out after %.1f s connecting to %s:%d", secs, c->o->host,
                             c->o->port);
        else
                gw_log_error("timed out after %.1f s waiting for the broker", secs);
        finish(c, 1);
}

static int session_open(struct ctl *c)
{
        const struct opts *o = c->o;
        mosquitto_property *props = NULL;
        struct sigaction sa = {.sa_handler = on_sigalrm};
        uint32_t rnd[2] = {0, 0};
        char client_id[32];
        unsigned bound_s;
        int rc, r;

        /* A random client id and a clean start: gwctl never resumes a session. */
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd)) {
                rnd[0] = (uint32_t) getpid();
                rnd[1] = (uint32_t) gw_now_ms();
        }
        snprintf(client_id, sizeof(client_id), "gwctl-%08x%08x", rnd[0], rnd[1]);
        c->mosq = mosquitto_new(client_id, true, c);
        if (!c->mosq)
                return gw_log_error_errno(errno ? errno : ENOMEM,
                                          "Cannot create an MQTT client: %m");
        mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
        mosquitto_connect_v5_callback_set(c->mosq, on_connect);
        mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
        mosquitto_subscribe_v5_callback_set(c->mosq, on_subscribe);
        mosquitto_publish_v5_callback_set(c->mosq, on_publish);
        mosquitto_message_v5_callback_set(c->mosq, on_message);
        if (o->username) {
                rc = mosquitto_username_pw_set(c->mosq, o->username, o->password);
                if (rc != MOSQ_ERR_SUCCESS)
                        return gw_log_error_errno(gw_mosq_to_errno(rc),
                                                  "Bad username or password: %s",
                                                  mosquitto_strerror(rc));
        }
        if (o->tls_ca || o->tls_cert) {
                rc = mosquitto_tls_set(c->mosq, o->tls_ca, o->tls_ca ? NULL : "/etc/ssl/certs",
                                       o->tls_cert, o->tls_key, NULL);
                if (rc != MOSQ_ERR_SUCCESS)
                        return gw_log_error_errno(gw_mosq_to_errno(rc), "Bad TLS settings: %s",
                                                  mosquitto_strerror(rc));
        }
        /* The broker then drops what is too large for us instead of delivering it. */
        mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                     INCOMING_MAX + PACKET_OVERHEAD);

        /* libmosquitto's connect() blocks: bound it with an alarm (no SA_RESTART). */
        sigaction(SIGALRM, &sa, NULL);
        bound_s = CONNECT_BOUND_S;
        if (c->deadline) {
                uint64_t left = c->deadline > gw_now_ms() ? c->deadline - gw_now_ms() : 0;

                bound_s = (unsigned) ((left + 999) / 1000);
                if (bound_s == 0)
                        bound_s = 1;
        }
        alarm(bound_s);
        rc = mosquitto_connect_bind_v5(c->mosq, o->host, o->port, KEEPALIVE_S, NULL, props);
        r = gw_mosq_to_errno(rc);
        alarm(0);
        mosquitto_property_free_all(&props);
        if (rc != MOSQ_ERR_SUCCESS) {
                if (r == -EINTR)
                        r = -ETIMEDOUT;
                if (rc == MOSQ_ERR_EAI)
                        return gw_log_error_errno(r, "Cannot resolve %s", o->host);
                if (rc == MOSQ_ERR_ERRNO)
                        return gw_log_error_errno(r, "Cannot connect to %s:%d: %m", o->host,
                                                  o->port);
                return gw_log_error_errno(r, "Cannot connect to %s:%d: %s", o->host, o->port,
                                          mosquitto_strerror(rc));
        }
        return 0;
}

static void session_run(struct ctl *c)
{
        while (!c->done) {
                uint64_t now = gw_now_ms(), wait = 100;
                int rc;

                if (interrupted) {
                        if (c->tty && !c->o->json) {
                                table_draw(c);
                                c->drawn = 0;
                        }
                        gw_log_error("Interrupted");
                        finish(c, 130);
                        break;
                }
                if (c->deadline && now >= c->deadline) {
                        on_timeout(c);
                        break;
                }
                if (c->collect_until && now >= c->collect_until) {
                        collect_done(c);
                        if (c->o->cmd == CMD_STATUS && c->pending_subs == 0)
                                finish(c, status_print(c));
                        continue;
                }
                if (c->deadline && c->deadline - now < wait)
                        wait = c->deadline - now;
                if (c->collect_until && c->collect_until - now < wait)
                        wait = c->collect_until - now;
                rc = mosquitto_loop(c->mosq, (int) wait, 1);
                if (rc != MOSQ_ERR_SUCCESS && !c->done && !interrupted) {
                        int r = gw_mosq_to_errno(rc);

                        if (rc == MOSQ_ERR_ERRNO)
                                gw_log_error_errno(r, "Connection to %s:%d failed: %m", c->o->host,
                                                   c->o->port);
                        else
                                gw_log_error("Connection to %s:%d failed: %s", c->o->host,
                                             c->o->port, mosquitto_strerror(rc));
                        finish(c, 1);
                }
                if (c->tty && c->dirty && !c->done && !c->o->json &&
                    gw_now_ms() - c->last_draw >= REDRAW_MS)
                        table_draw(c);
        }
        if (c->connected) {
                c->disconnecting = true;
                mosquitto_disconnect_v5(c->mosq, 0, NULL);
        }
}

/* ---- Building what we publish --------------------------------------------------------------- */

static char *base64_encode(const uint8_t *in, size_t n)
{
        static const char tab[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        char *out = malloc(4 * ((n + 2) / 3) + 1), *p = out;

        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i += 3) {
                uint32_t v = (uint32_t) in[i] << 16;

                if (i + 1 < n)
                        v |= (uint32_t) in[i + 1] << 8;
                if (i + 2 < n)
                        v |= in[i + 2];
                *p++ = tab[(v >> 18) & 63];
                *p++ = tab[(v >> 12) & 63];
                *p++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
                *p++ = i + 2 < n ? tab[v & 63] : '=';
        }
        *p = '\0';
        return out;
}

/* Reads at most max bytes of path ("-" is stdin); -EFBIG when there is more. */
static int read_capped(const char *path, size_t max, uint8_t **ret, size_t *ret_len)
{
        FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
        uint8_t *buf;
        size_t n = 0;
        int r = 0;

        if (!f)
                return -errno;
        buf = malloc(max + 1);
        if (!buf) {
                r = -ENOMEM;
                goto out;
        }
        while (n < max + 1) {
                size_t got = fread(buf + n, 1, max + 1 - n, f);

                if (got == 0)
                        break;
                n += got;
        }
        if (ferror(f))
                r = -EIO;
        else if (n > max)
                r = -EFBIG;
        if (r < 0) {
                free(buf);
                goto out;
        }
        *ret = buf;
        *ret_len = n;
out:
        if (f != stdin)
                fclose(f);
        return r;
}

static char *dump(json_t *o)
{
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

        json_decref(o);
        return s;
}

/* The deploy payload; 1 on errors the user can fix (logged), -errno otherwise. */
static int build_deploy(const struct opts *o, char **ret)
{
        static const char fixed[] = "{\"id\":\"\",\"manifest\":\"\"}";
        uint8_t *data = NULL;
        size_t len = 0, room, max_bytes;
        char *b64, *payload;
        int r;

        if (o->manifest_url) {
                payload =
                    dump(json_pack("{s:s, s:s}", "id", o->id, "manifest_url", o->manifest_url));
        } else {
                room = o->max_payload > sizeof(fixed) - 1 + strlen(o->id)
                           ? o->max_payload - (sizeof(fixed) - 1 + strlen(o->id))
                           : 0;
                max_bytes = room / 4 * 3;
                r = read_capped(o->manifest_file, max_bytes, &data, &len);
                if (r == -EFBIG) {
                        gw_log_error("Manifest %s is larger than %zu bytes, the most that fits a "
                                     "deploy message of %zu bytes in base64 (--max-payload)",
                                     o->manifest_file, max_bytes, o->max_payload);
                        return 1;
                }
                if (r < 0) {
                        gw_log_error_errno(r, "Cannot read manifest %s: %m", o->manifest_file);
                        return 1;
                }
                if (len == 0) {
                        free(data);
                        gw_log_error("Manifest %s is empty", o->manifest_file);
                        return 1;
                }
                b64 = base64_encode(data, len);
                free(data);
                if (!b64)
                        return -ENOMEM;
                payload = dump(json_pack("{s:s, s:s}", "id", o->id, "manifest", b64));
                free(b64);
        }
        if (!payload)
                return -ENOMEM;
        if (strlen(payload) > o->max_payload) {
                gw_log_error("The deploy message is %zu bytes, over --max-payload %zu",
                             strlen(payload), o->max_payload);
                free(payload);
                return 1;
        }
        *ret = payload;
        return 0;
}

/* ---- Command line --------------------------------------------------------------------------- */

static const char common_help[] =
    "Common options:\n"
    "      --broker HOST[:PORT]  MQTT broker (default 127.0.0.1:1883; 8883 with TLS)\n"
    "      --gateway ID          the gateway; topics under gatewayd/ID\n"
    "      --prefix P            topic prefix instead of gatewayd/ID\n"
    "      --tls-ca FILE         CA certificate(s) for TLS (enables TLS)\n"
    "      --tls-cert FILE       client certificate for mutual TLS (with --tls-key)\n"
    "      --tls-key FILE        client private key\n"
    "      --username NAME       MQTT username\n"
    "      --password PW         MQTT password (or the environment's GWCTL_PASSWORD)\n"
    "      --timeout SECONDS     give up after this long (exit 1)\n"
    "      --json                one JSON object per line on stdout, for scripts\n"
    "  -v, --verbose             debug logging\n"
    "  -h, --help                help (also after a command)\n"
    "  -V, --version             print the version\n";

static void usage(FILE *out)
{
        fprintf(out,
                "Usage: gwctl COMMAND [OPTIONS]\n"
                "\n"
                "Drive and watch gatewayd deployments over MQTT.\n"
                "\n"
                "Commands:\n"
                "  deploy --id ID (--manifest-url URL | --manifest FILE) [--watch]\n"
                "                 publish the desired state (retained) and wait for the broker\n"
                "  watch [--id ID]  follow a deployment until it ends\n"
                "  cancel --id ID   ask the gateway to cancel a deployment\n"
                "  clear            clear the desired state\n"
                "  status           print the gateway's state, inventory and node states\n"
                "\n"
                "%s"
                "\n"
                "Exit status: 0 on success, 1 when the deployment failed or was rejected, on\n"
                "timeouts and broker errors, 2 on a usage error, 130 when interrupted.\n"
                "See 'gwctl COMMAND --help'.\n",
                common_help);
}

static void command_usage(enum command cmd)
{
        static const char *const text[_CMD_MAX] = {
            [CMD_DEPLOY] =
                "Usage: gwctl deploy --id ID (--manifest-url URL | --manifest FILE) [--watch]\n"
                "\n"
                "Publishes {\"id\",\"manifest_url\"} or {\"id\",\"manifest\":<base64 of FILE>} on\n"
                "<prefix>/deploy, retained, QoS 1, and waits for the broker's acknowledgement.\n"
                "With --watch it then follows the deployment like 'gwctl watch'; only reports\n"
                "that arrive after the publish count (not retained results of an earlier run).\n"
                "\n"
                "      --id ID             deployment id, [A-Za-z0-9._-]{1,128}\n"
                "      --manifest-url URL  http://, https:// or file:// URL of the manifest\n"
                "      --manifest FILE     send the manifest itself ('-' reads stdin)\n"
                "      --watch             follow the deployment until it ends\n"
                "      --max-payload N     refuse messages over N bytes (default 262144,\n"
                "                          gatewayd's default mqtt.max-payload)\n",
            [CMD_WATCH] = "Usage: gwctl watch [--id ID]\n"
                          "\n"
                          "Follows a deployment node by node until it ends: exit 0 on success,\n"
                          "1 when it failed, was rejected or --timeout passed. Without --id, the\n"
                          "deployment in the retained <prefix>/deploy message. A live table on a\n"
                          "terminal; otherwise a line per state change and per 10 % of progress.\n"
                          "\n"
                          "      --id ID             deployment id\n",
            [CMD_CANCEL] = "Usage: gwctl cancel --id ID\n"
                           "\n"
                           "Publishes {\"id\"} on <prefix>/cancel (QoS 1) and waits for the "
                           "broker.\n"
                           "\n"
                           "      --id ID             deployment id\n",
            [CMD_CLEAR] = "Usage: gwctl clear\n"
                          "\n"
                          "Publishes an empty retained message on <prefix>/deploy: the gateway\n"
                          "then has no desired deployment (a running one is not cancelled).\n",
            [CMD_STATUS] = "Usage: gwctl status\n"
                           "\n"
                           "Prints the gateway's retained state, inventory, desired deployment\n"
                           "and its outcome, and every node's latest status. Exit 1 when nothing\n"
                           "is retained under the prefix.\n",
        };

        printf("%s\n%s", text[cmd], common_help);
}

static int parse_broker(const char *arg, bool tls, struct opts *o)
{
        const char *colon = strrchr(arg, ':');
        size_t host_len = strlen(arg);
        const char *port = NULL;
        char *end;
        long p;

        if (arg[0] == '[') { /* [v6]:port */
                const char *close = strchr(arg, ']');

                if (!close || (close[1] != '\0' && close[1] != ':'))
                        return -EINVAL;
                o->host = strndup(arg + 1, (size_t) (close - arg - 1));
                port = close[1] == ':' ? close + 2 : NULL;
        } else {
                if (colon && strchr(arg, ':') == colon) {
                        host_len = (size_t) (colon - arg);
                        port = colon + 1;
                }
                o->host = strndup(arg, host_len);
        }
        if (!o->host || o->host[0] == '\0')
                return -EINVAL;
        o->port = tls ? 8883 : 1883;
        if (port) {
                errno = 0;
                p = strtol(port, &end, 10);
                if (errno || *end || end == port || p < 1 || p > 65535)
                        return -EINVAL;
                o->port = (int) p;
        }
        return 0;
}

static bool valid_prefix(const char *p)
{
        size_t n = strlen(p);

        if (n == 0 || n > PREFIX_MAX || p[0] == '/' || p[n - 1] == '/')
                return false;
        for (size_t i = 0; i < n; i++)
                if (p[i] == '+' || p[i] == '#' || (unsigned char) p[i] < 0x20 || p[i] == 0x7f)
                        return false;
        return true;
}

static bool valid_url(const char *u)
{
        size_t n = strlen(u);

        if (n == 0 || n > URL_MAX)
                return false;
        if (strncasecmp(u, "http://", 7) != 0 && strncasecmp(u, "https://", 8) != 0 &&
            strncasecmp(u, "file://", 7) != 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (u[i] <= 0x20 || u[i] >= 0x7f)
                        return false;
        return true;
}

static int parse_command(const char *s)
{
        for (int i = 0; i < _CMD_MAX; i++)
                if (strcmp(command_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

/* 0 to run, 1 when help was printed, -EINVAL on a usage error (reported). */
static int parse_args(int argc, char **argv, struct opts *o)
{
        static const struct option longopts[] = {
            {"broker", required_argument, NULL, OPT_BROKER},
            {"gateway", required_argument, NULL, OPT_GATEWAY},
            {"prefix", required_argument, NULL, OPT_PREFIX},
            {"tls-ca", required_argument, NULL, OPT_TLS_CA},
            {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
            {"tls-key", required_argument, NULL, OPT_TLS_KEY},
            {"username", required_argument, NULL, OPT_USERNAME},
            {"password", required_argument, NULL, OPT_PASSWORD},
            {"timeout", required_argument, NULL, OPT_TIMEOUT},
            {"json", no_argument, NULL, OPT_JSON},
            {"id", required_argument, NULL, OPT_ID},
            {"manifest-url", required_argument, NULL, OPT_MANIFEST_URL},
            {"manifest", required_argument, NULL, OPT_MANIFEST},
            {"watch", no_argument, NULL, OPT_WATCH},
            {"max-payload", required_argument, NULL, OPT_MAX_PAYLOAD},
            {"verbose", no_argument, NULL, 'v'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        const char *broker = "127.0.0.1", *timeout = NULL, *max_payload = NULL;
        unsigned used[sizeof(specific) / sizeof(specific[0])] = {0};
        bool help = false;
        int opt, cmd;

        o->max_payload = DEFAULT_PAYLOAD;
        opterr = 1;
        while ((opt = getopt_long(argc, argv, "hvV", longopts, NULL)) != -1) {
                for (size_t i = 0; i < sizeof(specific) / sizeof(specific[0]); i++)
                        if (specific[i].opt == opt)
                                used[i] = 1;
                switch (opt) {
                case OPT_BROKER:
                        broker = optarg;
                        break;
                case OPT_GATEWAY:
                        o->gateway = optarg;
                        break;
                case OPT_PREFIX:
                        o->prefix_arg = optarg;
                        break;
                case OPT_TLS_CA:
                        o->tls_ca = optarg;
                        break;
                case OPT_TLS_CERT:
                        o->tls_cert = optarg;
                        break;
                case OPT_TLS_KEY:
                        o->tls_key = optarg;
                        break;
                case OPT_USERNAME:
                        o->username = optarg;
                        break;
                case OPT_PASSWORD:
                        o->password = optarg;
                        break;
                case OPT_TIMEOUT:
                        timeout = optarg;
                        break;
                case OPT_JSON:
                        o->json = true;
                        break;
                case OPT_ID:
                        o->id = optarg;
                        break;
                case OPT_MANIFEST_URL:
                        o->manifest_url = optarg;
                        break;
                case OPT_MANIFEST:
                        o->manifest_file = optarg;
                        break;
                case OPT_WATCH:
                        o->watch = true;
                        break;
                case OPT_MAX_PAYLOAD:
                        max_payload = optarg;
                        break;
                case 'v':
                        o->verbose = true;
                        break;
                case 'h':
                        help = true;
                        break;
                case 'V':
                        printf("gwctl %s\n", GW_VERSION);
                        return 1;
                default:
                        return -EINVAL;
                }
        }
        if (optind >= argc) {
                if (help) {
                        usage(stdout);
                        return 1;
                }
                fprintf(stderr, "gwctl: no command given\n");
                return -EINVAL;
        }
        cmd = parse_command(argv[optind]);
        if (cmd < 0) {
                fprintf(stderr, "gwctl: unknown command '%s'\n", argv[optind]);
                return -EINVAL;
        }
        o->cmd = (enum command) cmd;
        if (help) {
                command_usage(o->cmd);
                return 1;
        }
        if (optind + 1 < argc) {
                fprintf(stderr, "gwctl %s: unexpected argument '%s'\n", argv[optind],
                        argv[optind + 1]);
                return -EINVAL;
        }
        for (size_t i = 0; i < sizeof(specific) / sizeof(specific[0]); i++)
                if (used[i] && !(specific[i].commands & ONLY(o->cmd))) {
                        fprintf(stderr, "gwctl %s: %s is not an option of this command\n",
                                command_names[o->cmd], specific[i].name);
                        return -EINVAL;
                }

        if (!o->gateway == !o->prefix_arg) {
                fprintf(stderr, "gwctl: give exactly one of --gateway ID and --prefix P\n");
                return -EINVAL;
        }
        if (o->gateway) {
                if (!valid_name(o->gateway, 64) || strcmp(o->gateway, ".") == 0 ||
                    strcmp(o->gateway, "..") == 0) {
                        fprintf(stderr, "gwctl: --gateway wants [A-Za-z0-9._-]{1,64}, got '%s'\n",
                                o->gateway);
                        return -EINVAL;
                }
                if (asprintf(&o->prefix, "gatewayd/%s", o->gateway) < 0)
                        return -ENOMEM;
        } else {
                if (!valid_prefix(o->prefix_arg)) {
                        fprintf(stderr,
                                "gwctl: --prefix wants a topic without '+', '#' or a leading or "
                                "trailing '/', at most %u bytes\n",
                                PREFIX_MAX);
                        return -EINVAL;
                }
                o->prefix = strdup(o->prefix_arg);
                if (!o->prefix)
                        return -ENOMEM;
        }
        if (!o->tls_cert != !o->tls_key) {
                fprintf(stderr, "gwctl: --tls-cert and --tls-key go together\n");
                return -EINVAL;
        }
        if (parse_broker(broker, o->tls_ca || o->tls_cert, o) < 0) {
                fprintf(stderr, "gwctl: --broker wants HOST[:PORT], got '%s'\n", broker);
                return -EINVAL;
        }
        if (!o->password && o->username)
                o->password = getenv("GWCTL_PASSWORD");
        if (o->password && !o->username) {
                fprintf(stderr, "gwctl: --password needs --username\n");
                return -EINVAL;
        }
        if (timeout) {
                char *end;
                double t;

                errno = 0;
                t = strtod(timeout, &end);
                if (errno || *end || end == timeout || !(t > 0.0) || t > 7.0 * 86400.0) {
                        fprintf(stderr, "gwctl: --timeout wants seconds (> 0), got '%s'\n",
                                timeout);
                        return -EINVAL;
                }
                o->timeout_ms = (uint64_t) (t * 1000.0 + 0.5);
                if (o->timeout_ms == 0)
                        o->timeout_ms = 1;
        } else if (o->cmd != CMD_WATCH && !(o->cmd == CMD_DEPLOY && o->watch))
                o->timeout_ms = DEFAULT_TIMEOUT_MS;
        if (max_payload) {
                char *end;
                unsigned long long v;

                errno = 0;
                v = strtoull(max_payload, &end, 10);
                if (errno || *end || end == max_payload || v < 64 || v > PAYLOAD_LIMIT) {
                        fprintf(stderr, "gwctl: --max-payload wants 64 to %u bytes, got '%s'\n",
                                PAYLOAD_LIMIT, max_payload);
                        return -EINVAL;
                }
                o->max_payload = (size_t) v;
        }
        if (o->id && !valid_name(o->id, ID_MAX)) {
                fprintf(stderr, "gwctl: --id wants [A-Za-z0-9._-]{1,128}, got '%s'\n", o->id);
                return -EINVAL;
        }
        if ((o->cmd == CMD_DEPLOY || o->cmd == CMD_CANCEL) && !o->id) {
                fprintf(stderr, "gwctl %s: --id is required\n", command_names[o->cmd]);
                return -EINVAL;
        }
        if (o->cmd == CMD_DEPLOY) {
                if (!o->manifest_url == !o->manifest_file) {
                        fprintf(
                            stderr,
                            "gwctl deploy: give exactly one of --manifest-url and --manifest\n");
                        return -EINVAL;
                }
                if (o->manifest_url && !valid_url(o->manifest_url)) {
                        fprintf(stderr,
                                "gwctl deploy: --manifest-url wants an http://, https:// or "
                                "file:// URL of printable ASCII without spaces, at most %u "
                                "bytes\n",
                                URL_MAX);
                        return -EINVAL;
                }
        }
        return 0;
}

static void ctl_done(struct ctl *c)
{
        if (c->mosq)
                mosquitto_destroy(c->mosq);
        for (size_t i = 0; i < c->n_nodes; i++)
                node_done(&c->nodes[i]);
        free(c->nodes);
        free(c->pub_topic);
        free(c->pub_payload);
        free(c->id);
        free(c->earlier_final);
        free(c->phase);
        json_decref(c->early);
        json_decref(c->state_obj);
        json_decref(c->inventory_obj);
        json_decref(c->deploy_obj);
        json_decref(c->report_obj);
        json_decref(c->statuses);
}

int main(int argc, char **argv)
{
        struct opts o = {0};
        struct ctl c = {.o = &o};
        struct sigaction sa = {.sa_handler = on_sigint};
        int r, ret = 1;

        gw_log_open("gwctl", GW_LOG_STDERR);
        r = parse_args(argc, argv, &o);
        if (r == 1) {
                ret = 0;
                goto out;
        }
        if (r < 0) {
                if (r != -ENOMEM)
                        fprintf(stderr, "Try 'gwctl --help'.\n");
                ret = r == -ENOMEM ? 1 : 2;
                goto out;
        }
        if (o.verbose)
                gw_log_set_max_level(LOG_DEBUG);

        c.t0 = gw_now_ms();
        if (o.timeout_ms)
                c.deadline = c.t0 + o.timeout_ms;
        c.tty = isatty(STDOUT_FILENO) && !o.json;
        c.early = json_object();
        c.statuses = json_object();
        if (!c.early || !c.statuses)
                goto out;
        switch (o.cmd) {
        case CMD_DEPLOY:
                r = build_deploy(&o, &c.pub_payload);
                if (r != 0)
                        goto out;
                c.pub_topic = topic(&c, "deploy");
                c.pub_len = strlen(c.pub_payload);
                c.pub_retain = true;
                if (o.watch) {
                        c.id = strdup(o.id);
                        c.live_only = true;
                        if (!c.id)
                                goto out;
                }
                set_phase(&c, "publishing");
                break;
        case CMD_WATCH:
                if (o.id) {
                        c.id = strdup(o.id);
                        if (!c.id)
                                goto out;
                } else
                        c.want_deploy_id = true;
                break;
        case CMD_CANCEL:
                c.pub_payload = dump(json_pack("{s:s}", "id", o.id));
                c.pub_topic = topic(&c, "cancel");
                if (!c.pub_payload)
                        goto out;
                c.pub_len = strlen(c.pub_payload);
                break;
        case CMD_CLEAR:
                c.pub_topic = topic(&c, "deploy");
                c.pub_retain = true;
                break;
        default:
                break;
        }
        if ((o.cmd == CMD_DEPLOY || o.cmd == CMD_CANCEL || o.cmd == CMD_CLEAR) && !c.pub_topic)
                goto out;

        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        mosquitto_lib_init();
        r = session_open(&c);
        if (r >= 0) {
                session_run(&c);
                ret = c.exit_code;
        }
        ctl_done(&c);
        mosquitto_lib_cleanup();
        free(o.host);
        free(o.prefix);
        return ret;
out:
        ctl_done(&c);
        free(o.host);
        free(o.prefix);
        return ret;
}
