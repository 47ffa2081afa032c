/* gatewayd's MQTT v5 session: libmosquitto without its thread, its socket watched by our
 * loop, and each connection attempt preceded by a reachability probe in a short-lived thread.
 * libmosquitto's return codes are converted to -errno in gw_mosq_to_errno(), nowhere else. */
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gw/log.h"
#include "mqtt.h"
#include "status.h"

/* A persistent session outlives short outages of the gateway (a week). */
#define SESSION_EXPIRY_S (7u * 24u * 3600u)
/* What a PUBLISH adds to its payload: fixed header, topic, properties. */
#define PACKET_OVERHEAD 1024u
#define TOPIC_MAX       512u

struct gw_mqtt {
        struct gw_loop *loop;
        const struct gw_mqtt_config *cfg;
        const char *version;
        struct mosquitto *mosq;
        struct gw_source *io;
        struct gw_source *timer; /* loop_misc ticks and reconnects */
        int probe_fd;            /* our end of the running probe's socketpair, or -1 */
        struct gw_source *probe_io;
        struct gw_mqtt_callbacks cb;
        void *userdata;
        /* The last error libmosquitto logged (OpenSSL's reason for a failed handshake): it
         * says more than its return codes. */
        char lib_error[256];
        bool connected;   /* CONNACK received */
        bool socket_open; /* TCP up, maybe waiting for CONNACK */
        bool stopping;
        unsigned backoff_s;
        uint64_t next_attempt;
        char *will_payload;
};

static int topic_for(const struct gw_mqtt *m, const char *suffix, char *buf, size_t n)
{
        int len = snprintf(buf, n, "%s/%s", m->cfg->prefix, suffix);

        return len < 0 || (size_t) len >= n ? -ENAMETOOLONG : 0;
}

static void update_events(struct gw_mqtt *m)
{
        short ev = POLLIN;

        if (!m->io)
                return;
        if (mosquitto_want_write(m->mosq))
                ev |= POLLOUT;
        gw_source_set_io_events(m->io, ev);
}

static void schedule_reconnect(struct gw_mqtt *m)
{
        uint64_t now = gw_now_ms();

        if (m->stopping)
                return;
        if (m->backoff_s == 0)
                m->backoff_s = m->cfg->reconnect_min ? m->cfg->reconnect_min : 1;
        m->next_attempt = now + (uint64_t) m->backoff_s * 1000u;
        gw_log_info("MQTT: reconnecting to %s:%u in %u s", m->cfg->host, m->cfg->port,
                    m->backoff_s);
        m->backoff_s *= 2;
        if (m->backoff_s > m->cfg->reconnect_max)
                m->backoff_s = m->cfg->reconnect_max;
        gw_source_set_time(m->timer, m->next_attempt);
}

/* rc: libmosquitto's code for it (MOSQ_ERR_*), or MOSQ_ERR_SUCCESS when r says it all. */
static void connection_lost(struct gw_mqtt *m, int r, int rc)
{
        const char *why =
            rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_ERRNO ? strerror(-r) : mosquitto_strerror(rc);

        if (m->connected)
                gw_log_warning("MQTT: connection to %s:%u lost: %s%s%s", m->cfg->host, m->cfg->port,
                               why, m->lib_error[0] ? ": " : "", m->lib_error);
        else if (!m->stopping)
                /* Before the broker accepted the session: a refused TLS handshake (certificate
                 * verify failed, host name mismatch), a broker that hung up. */
                gw_log_warning("MQTT: cannot open a session with %s:%u: %s%s%s", m->cfg->host,
                               m->cfg->port, why, m->lib_error[0] ? ": " : "", m->lib_error);
        m->lib_error[0] = '\0';
        m->connected = false;
        m->socket_open = false;
        m->io = gw_source_free(m->io);
        schedule_reconnect(m);
}

static int on_io(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_mqtt *m = userdata;
        int rc;

        if (revents & (POLLIN | POLLHUP | POLLERR)) {
                rc = mosquitto_loop_read(m->mosq, 16);
                if (rc != MOSQ_ERR_SUCCESS) {
                        connection_lost(m, gw_mosq_to_errno(rc), rc);
                        return 0;
                }
        }
        if (m->io && (revents & POLLOUT) && mosquitto_want_write(m->mosq)) {
                rc = mosquitto_loop_write(m->mosq, 16);
                if (rc != MOSQ_ERR_SUCCESS) {
                        connection_lost(m, gw_mosq_to_errno(rc), rc);
                        return 0;
                }
        }
        update_events(m);
        return 0;
}

static int attempt_connect(struct gw_mqtt *m, const char *addr)
{
        mosquitto_property *props = NULL;
        int rc, fd;

        /* Clean start off plus a session expiry: a persistent session (see DESIGN). */
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, SESSION_EXPIRY_S);
        mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                     (uint32_t) (m->cfg->max_payload + PACKET_OVERHEAD));
        /* libmosquitto 2.0 resolves and connects synchronously (its asynchronous connect sends
         * no v5 properties), but the probe has just seen this broker answer within
         * connect-timeout, every address before the one that answered failing at once, so this
         * returns quickly. Without TLS we connect to the very address that answered, which also
         * spares a second name lookup; TLS needs the host name (SNI, certificate check), so
         * there the resolver is asked again and a resolver slow to answer twice still stalls. */
        rc = mosquitto_connect_bind_v5(m->mosq, m->cfg->tls ? m->cfg->host : addr, m->cfg->port,
                                       (int) m->cfg->keepalive, NULL, props);
        mosquitto_property_free_all(&props);
        if (rc != MOSQ_ERR_SUCCESS) {
                int r = gw_mosq_to_errno(rc);

                gw_log_warning_errno(r, "MQTT: cannot connect to %s:%u: %s%s%s", m->cfg->host,
                                     m->cfg->port,
                                     rc == MOSQ_ERR_ERRNO ? strerror(-r) : mosquitto_strerror(rc),
                                     m->lib_error[0] ? ": " : "", m->lib_error);
                m->lib_error[0] = '\0';
                schedule_reconnect(m);
                return 0;
        }
        fd = mosquitto_socket(m->mosq);
        if (fd < 0) {
                schedule_reconnect(m);
                return 0;
        }
        m->socket_open = true;
        rc = gw_loop_add_io(m->loop, fd, POLLIN, on_io, m, &m->io);
        if (rc < 0)
                return rc;
        update_events(m);
        return 0;
}

/* The reachability probe. A thread resolves the host and opens (then closes) a TCP connection
 * to it with a deadline, and reports through a socketpair; the loop only waits for that
 * report. The thread owns a copy of all it uses and never touches struct gw_mqtt, so stopping
 * needs no join: closing our end makes the thread's send fail, and it exits on its own. */
struct probe {
        int fd; /* the thread's end of the socketpair */
        unsigned timeout_s;
        char port[8];
        char host[]; /* a copy of mqtt.host */
};

struct probe_result {
        int error;             /* 0, or the positive errno of the last address tried */
        int gai;               /* 0, or getaddrinfo()'s EAI_* code */
        char addr[NI_MAXHOST]; /* the numeric address that answered (error == 0) */
};

/* Connects to one address without blocking past deadline_ms; a positive errno or 0. */
static int probe_one(const struct addrinfo *ai, uint64_t deadline_ms)
{
        struct pollfd pfd = {.events = POLLOUT};
        socklen_t len = sizeof(int);
        int err = 0;

        pfd.fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (pfd.fd < 0)
                return errno;
        if (connect(pfd.fd, ai->ai_addr, ai->ai_addrlen) == 0)
                goto out;
        if (errno != EINPROGRESS) {
                err = errno;
                goto out;
        }
        for (;;) {
                uint64_t now = gw_now_ms();
                int n;

                if (now >= deadline_ms) {
                        err = ETIMEDOUT;
                        goto out;
                }
                n = poll(&pfd, 1, (int) (deadline_ms - now));
                if (n > 0)
                        break;
                if (n < 0 && errno != EINTR) {
                        err = errno;
                        goto out;
                }
        }
        if (getsockopt(pfd.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
out:
        close(pfd.fd);
        return err;
}

static void *probe_run(void *arg)
{
        struct probe *p = arg;
        uint64_t deadline = gw_now_ms() + (uint64_t) p->timeout_s * 1000u;
        const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct probe_result res = {.error = EHOSTUNREACH};
        struct addrinfo *list = NULL;

        /* getaddrinfo() has no timeout of its own: the resolver's bounds it. */
        res.gai = getaddrinfo(p->host, p->port, &hints, &list);
        if (res.gai == EAI_SYSTEM)
                res.error = errno;
        if (res.gai == 0) {
                /* One deadline for all addresses, in getaddrinfo's order (libmosquitto's): an
                 * address that gives no answer uses it up, so success means every address before
                 * the one that answered failed at once. */
                for (const struct addrinfo *ai = list; ai; ai = ai->ai_next) {
                        if (gw_now_ms() >= deadline) {
                                res.error = ETIMEDOUT;
                                break;
                        }
                        res.error = probe_one(ai, deadline);
                        if (res.error == 0) {
                                if (getnameinfo(ai->ai_addr, ai->ai_addrlen, res.addr,
                                                sizeof(res.addr), NULL, 0, NI_NUMERICHOST) != 0)
                                        res.addr[0] = '\0';
                                break;
                        }
                }
                freeaddrinfo(list);
        }
        /* Fails with EPIPE when gatewayd stopped waiting: nothing left to do then. */
        (void) send(p->fd, &res, sizeof(res), MSG_NOSIGNAL);
        close(p->fd);
        free(p);
        return NULL;
}

static void probe_drop(struct gw_mqtt *m)
{
        m->probe_io = gw_source_free(m->probe_io);
        if (m->probe_fd >= 0)
                close(m->probe_fd);
        m->probe_fd = -1;
}

static int on_probe(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_mqtt *m = userdata;
        struct probe_result res;
        ssize_t n;
        int r;

        n = recv(fd, &res, sizeof(res), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n != (ssize_t) sizeof(res)) {
                /* The thread died without a word; cannot happen short of a crash. */
                res.error = n < 0 ? errno : EIO;
                res.gai = 0;
        }
        probe_drop(m);
        if (m->stopping)
                return 0;
        if (res.gai != 0) {
                gw_log_warning("MQTT: cannot resolve %s: %s", m->cfg->host,
                               res.gai == EAI_SYSTEM ? strerror(res.error) : gai_strerror(res.gai));
                schedule_reconnect(m);
                return 0;
        }
        if (res.error != 0) {
                gw_log_warning_errno(-res.error, "MQTT: cannot reach %s:%u: %m", m->cfg->host,
                                     m->cfg->port);
                schedule_reconnect(m);
                return 0;
        }
        res.addr[sizeof(res.addr) - 1] = '\0';
        r = attempt_connect(m, res.addr[0] ? res.addr : m->cfg->host);
        if (r < 0)
                return r;
        if (m->socket_open)
                gw_source_set_time(m->timer, gw_now_ms() + 1000);
        return 0;
}

static int probe_start(struct gw_mqtt *m)
{
        size_t hlen = strlen(m->cfg->host);
        pthread_attr_t attr;
        sigset_t all, old;
        struct probe *p;
        pthread_t tid;
        int sv[2], r;

        p = malloc(sizeof(*p) + hlen + 1);
        if (!p)
                return -ENOMEM;
        memcpy(p->host, m->cfg->host, hlen + 1);
        snprintf(p->port, sizeof(p->port), "%u", (unsigned) m->cfg->port);
        p->timeout_s = m->cfg->connect_timeout;
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
                r = -errno;
                free(p);
                return r;
        }
        p->fd = sv[1];
        r = gw_loop_add_io(m->loop, sv[0], POLLIN, on_probe, m, &m->probe_io);
        if (r < 0)
                goto close_fds;
        r = -pthread_attr_init(&attr);
        if (r < 0)
                goto drop_io;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* Signals stay with the loop's signalfd: the thread blocks all of them. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&tid, &attr, probe_run, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (r < 0)
                goto drop_io;
        m->probe_fd = sv[0];
        gw_log_debug("MQTT: probing %s:%u (timeout %u s)", m->cfg->host, m->cfg->port,
                     m->cfg->connect_timeout);
        return 0;
drop_io:
        m->probe_io = gw_source_free(m->probe_io);
close_fds:
        close(sv[0]);
        close(sv[1]);
        free(p);
        return r;
}

static int on_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_mqtt *m = userdata;

        if (m->socket_open) {
                int rc = mosquitto_loop_misc(m->mosq);

                if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
                        connection_lost(m, gw_mosq_to_errno(rc), rc);
                        return 0;
                }
                update_events(m);
                gw_source_set_time(m->timer, now + 1000);
                return 0;
        }
        if (m->stopping || m->probe_io)
                return 0;
        if (now >= m->next_attempt) {
                int r = probe_start(m);

                if (r < 0) {
                        gw_log_warning_errno(r, "MQTT: cannot start connecting to %s:%u: %m",
                                             m->cfg->host, m->cfg->port);
                        schedule_reconnect(m);
                }
        }
        return 0;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
        struct gw_mqtt *m = obj;
        char topic[TOPIC_MAX];
        char *state = NULL;

        if (rc != 0) {
                gw_log_error("MQTT: broker %s:%u refused the connection: %s", m->cfg->host,
                             m->cfg->port, mosquitto_reason_string(rc));
                mosquitto_disconnect(mosq);
                connection_lost(m, -ECONNREFUSED, MOSQ_ERR_SUCCESS);
                return;
        }
        m->connected = true;
        m->backoff_s = 0;
        gw_log_info("MQTT: connected to %s:%u as %s%s", m->cfg->host, m->cfg->port,
                    m->cfg->client_id, (flags & 1) ? " (session resumed)" : "");

        /* Subscribing again on a resumed session is harmless and covers a broker that lost it.
         * The retained desired state is delivered again on every subscribe. */
        if (topic_for(m, GW_MQTT_TOPIC_DEPLOY, topic, sizeof(topic)) == 0)
                mosquitto_subscribe_v5(mosq, NULL, topic, 1, 0, NULL);
        if (topic_for(m, GW_MQTT_TOPIC_CANCEL, topic, sizeof(topic)) == 0)
                mosquitto_subscribe_v5(mosq, NULL, topic, 1, 0, NULL);
        if (topic_for(m, GW_MQTT_TOPIC_KEYS, topic, sizeof(topic)) == 0)
                mosquitto_subscribe_v5(mosq, NULL, topic, 1, 0, NULL);

        if (gw_status_gateway_json(true, m->version, time(NULL), &state) == 0)
                gw_mqtt_publish(m, "state", state, 1, true);
        free(state);
        if (m->cb.connected)
                m->cb.connected(m->userdata);
        update_events(m);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc, const mosquitto_property *p)
{
        struct gw_mqtt *m = obj;

        /* Reason codes from 0x80 come with a DISCONNECT the broker sent; below, rc is
         * libmosquitto's own code for a connection that broke, which connection_lost()
         * reports. */
        if (m->stopping || rc < 0x80)
                return;
        gw_log_warning("MQTT: broker %s:%u disconnected us: %s", m->cfg->host, m->cfg->port,
                       mosquitto_reason_string(rc));
}

/* libmosquitto's own log: its errors (OpenSSL's among them) are kept for the next warning. */
static void on_lib_log(struct mosquitto *mosq, void *obj, int level, const char *str)
{
        struct gw_mqtt *m = obj;

        if (!(level & MOSQ_LOG_ERR) || !str)
                return;
        gw_log_debug("MQTT: libmosquitto: %s", str);
        if (!m->lib_error[0])
                snprintf(m->lib_error, sizeof(m->lib_error), "%s", str);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
        struct gw_mqtt *m = obj;
        size_t plen = strlen(m->cfg->prefix);
        const char *suffix;
        size_t len;

        if (!msg->topic || strncmp(msg->topic, m->cfg->prefix, plen) != 0 ||
            msg->topic[plen] != '/')
                return;
        suffix = msg->topic + plen + 1;
        len = msg->payloadlen > 0 ? (size_t) msg->payloadlen : 0;
        if (!m->cb.message)
                return;
        if (len > m->cfg->max_payload)
                m->cb.message(m->userdata, suffix, NULL, len, true, msg->retain);
        else
                m->cb.message(m->userdata, suffix, msg->payload, len, false, msg->retain);
}

int gw_mqtt_new(struct gw_loop *loop, const struct gw_mqtt_config *cfg, const char *version,
                const struct gw_mqtt_callbacks *cb, void *userdata, struct gw_mqtt **ret)
{
        struct gw_mqtt *m;
        char topic[TOPIC_MAX];
        int rc, r;

        mosquitto_lib_init();
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->probe_fd = -1;
        m->loop = loop;
        m->cfg = cfg;
        m->version = version;
        m->cb = *cb;
        m->userdata = userdata;
        m->mosq = mosquitto_new(cfg->client_id, false, m);
        if (!m->mosq) {
                r = -errno;
                goto fail;
        }
        mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
        mosquitto_connect_v5_callback_set(m->mosq, on_connect);
        mosquitto_disconnect_v5_callback_set(m->mosq, on_disconnect);
        mosquitto_log_callback_set(m->mosq, on_lib_log);
        mosquitto_message_v5_callback_set(m->mosq, on_message);

        /* The will carries no meaningful time: the broker sends it whenever we vanish. */
        r = gw_status_gateway_json(false, version, time(NULL), &m->will_payload);
        if (r >= 0)
                r = topic_for(m, "state", topic, sizeof(topic));
        if (r < 0)
                goto fail;
        rc = mosquitto_will_set_v5(m->mosq, topic, (int) strlen(m->will_payload), m->will_payload,
                                   1, true, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
                r = gw_mosq_to_errno(rc);
                goto fail;
        }
        if (cfg->username) {
                rc = mosquitto_username_pw_set(m->mosq, cfg->username, cfg->password);
                if (rc != MOSQ_ERR_SUCCESS) {
                        r = gw_mosq_to_errno(rc);
                        goto fail;
                }
        }
        if (cfg->tls) {
                rc = mosquitto_tls_set(m->mosq, cfg->tls_ca, cfg->tls_ca ? NULL : "/etc/ssl/certs",
                                       cfg->tls_cert, cfg->tls_key, NULL);
                if (rc == MOSQ_ERR_SUCCESS && cfg->tls_insecure)
                        rc = mosquitto_tls_insecure_set(m->mosq, true);
                if (rc != MOSQ_ERR_SUCCESS) {
                        r = gw_log_error_errno(
                            gw_mosq_to_errno(rc),
                            "MQTT: bad TLS settings (ca %s, cert %s, key %s): %s%s%s",
                            cfg->tls_ca ? cfg->tls_ca : "the system's",
                            cfg->tls_cert ? cfg->tls_cert : "none",
                            cfg->tls_key ? cfg->tls_key : "none", mosquitto_strerror(rc),
                            m->lib_error[0] ? ": " : "", m->lib_error);
                        goto fail;
                }
        }
        r = gw_loop_add_timer(loop, 0, on_timer, m, &m->timer);
        if (r < 0)
                goto fail;
        *ret = m;
        return 0;
fail:
        gw_mqtt_free(m);
        return r;
}

int gw_mqtt_start(struct gw_mqtt *m)
{
        m->next_attempt = 0;
        return gw_source_set_time(m->timer, gw_now_ms());
}

bool gw_mqtt_is_connected(const struct gw_mqtt *m)
{
        return m && m->connected;
}

int gw_mqtt_publish(struct gw_mqtt *m, const char *suffix, const char *payload, int qos,
                    bool retain)
{
        char topic[TOPIC_MAX];
        int r, rc;

        if (!m->connected)
                return -ENOTCONN;
        r = topic_for(m, suffix, topic, sizeof(topic));
        if (r < 0)
                return r;
        rc = mosquitto_publish_v5(m->mosq, NULL, topic, (int) strlen(payload), payload, qos, retain,
                                  NULL);
        if (rc != MOSQ_ERR_SUCCESS)
                return gw_log_debug_errno(gw_mosq_to_errno(rc), "MQTT: publish to %s failed: %s",
                                          topic, mosquitto_strerror(rc));
        /* Write now rather than on the next poll: progress should not lag. */
        if (mosquitto_want_write(m->mosq)) {
                rc = mosquitto_loop_write(m->mosq, 16);
                if (rc != MOSQ_ERR_SUCCESS) {
                        connection_lost(m, gw_mosq_to_errno(rc), rc);
                        return -ECONNRESET;
                }
        }
        update_events(m);
        return 0;
}

void gw_mqtt_stop(struct gw_mqtt *m, int timeout_ms)
{
        uint64_t end = gw_now_ms() + (uint64_t) timeout_ms;
        char *state = NULL;

        if (!m || m->stopping)
                return;
        if (m->connected) {
                if (gw_status_gateway_json(false, m->version, time(NULL), &state) == 0)
                        gw_mqtt_publish(m, "state", state, 1, true);
                free(state);
        }
        m->stopping = true;
        /* A probe still running is abandoned, not waited for: it ends on its own. */
        probe_drop(m);
        if (!m->socket_open)
                return;
        /* QoS 1: wait for the PUBACK so the offline state is really stored. */
        while (m->connected && mosquitto_want_write(m->mosq) && gw_now_ms() < end)
                if (mosquitto_loop_write(m->mosq, 16) != MOSQ_ERR_SUCCESS)
                        break;
        mosquitto_disconnect_v5(m->mosq, 0, NULL);
        while (mosquitto_want_write(m->mosq) && gw_now_ms() < end)
                if (mosquitto_loop_write(m->mosq, 16) != MOSQ_ERR_SUCCESS)
                        break;
        m->connected = false;
        m->socket_open = false;
        m->io = gw_source_free(m->io);
}

struct gw_mqtt *gw_mqtt_free(struct gw_mqtt *m)
{
        if (!m)
                return NULL;
        probe_drop(m);
        gw_source_free(m->io);
        gw_source_free(m->timer);
        if (m->mosq)
                mosquitto_destroy(m->mosq);
        free(m->will_payload);
        free(m);
        mosquitto_lib_cleanup();
        return NULL;
}
