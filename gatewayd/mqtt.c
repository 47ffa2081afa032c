/* gatewayd's MQTT v5 session: libmosquitto without its thread, its socket watched by our
 * loop. libmosquitto's return codes are converted to -errno in gw_mosq_to_errno(), nowhere
 * else. */
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
        struct gw_mqtt_callbacks cb;
        void *userdata;
        bool connected;   /* CONNACK received */
        bool socket_open; /* TCP up, maybe waiting for CONNACK */
        bool stopping;
        unsigned backoff_s;
        uint64_t next_attempt;
        char *will_payload;
};

int gw_mosq_to_errno(int rc)
{
        switch (rc) {
        case MOSQ_ERR_SUCCESS:
                return 0;
        case MOSQ_ERR_NOMEM:
                return -ENOMEM;
        case MOSQ_ERR_INVAL:
        case MOSQ_ERR_MALFORMED_UTF8:
        case MOSQ_ERR_QOS_NOT_SUPPORTED:
                return -EINVAL;
        case MOSQ_ERR_NO_CONN:
                return -ENOTCONN;
        case MOSQ_ERR_CONN_REFUSED:
                return -ECONNREFUSED;
        case MOSQ_ERR_CONN_LOST:
                return -ECONNRESET;
        case MOSQ_ERR_TLS:
                return -EPROTO;
        case MOSQ_ERR_PAYLOAD_SIZE:
        case MOSQ_ERR_OVERSIZE_PACKET:
                return -EMSGSIZE;
        case MOSQ_ERR_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        case MOSQ_ERR_AUTH:
                return -EACCES;
        case MOSQ_ERR_ACL_DENIED:
                return -EPERM;
        case MOSQ_ERR_UNKNOWN:
                return -EIO;
        case MOSQ_ERR_ERRNO:
                return errno > 0 ? -errno : -EIO;
        case MOSQ_ERR_EAI:
                return -EHOSTUNREACH;
        case MOSQ_ERR_KEEPALIVE:
                return -ETIMEDOUT;
        default:
                return -EIO;
        }
}

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

static void connection_lost(struct gw_mqtt *m, int r)
{
        if (m->connected)
                gw_log_warning_errno(r, "MQTT: connection to %s:%u lost: %m", m->cfg->host,
                                     m->cfg->port);
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
                        connection_lost(m, gw_mosq_to_errno(rc));
                        return 0;
                }
        }
        if (m->io && (revents & POLLOUT) && mosquitto_want_write(m->mosq)) {
                rc = mosquitto_loop_write(m->mosq, 16);
                if (rc != MOSQ_ERR_SUCCESS) {
                        connection_lost(m, gw_mosq_to_errno(rc));
                        return 0;
                }
        }
        update_events(m);
        return 0;
}

static int attempt_connect(struct gw_mqtt *m)
{
        mosquitto_property *props = NULL;
        int rc, fd;

        /* Clean start off plus a session expiry: a persistent session (see DESIGN). */
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, SESSION_EXPIRY_S);
        mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                     (uint32_t) (m->cfg->max_payload + PACKET_OVERHEAD));
        /* libmosquitto connects synchronously; on loopback and LAN brokers this is quick. */
        rc = mosquitto_connect_bind_v5(m->mosq, m->cfg->host, m->cfg->port, (int) m->cfg->keepalive,
                                       NULL, props);
        mosquitto_property_free_all(&props);
        if (rc != MOSQ_ERR_SUCCESS) {
                int r = gw_mosq_to_errno(rc);

                gw_log_warning_errno(r, "MQTT: cannot connect to %s:%u: %s", m->cfg->host,
                                     m->cfg->port,
                                     rc == MOSQ_ERR_ERRNO ? strerror(-r) : mosquitto_strerror(rc));
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

static int on_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_mqtt *m = userdata;

        if (m->socket_open) {
                int rc = mosquitto_loop_misc(m->mosq);

                if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
                        connection_lost(m, gw_mosq_to_errno(rc));
                        return 0;
                }
                update_events(m);
                gw_source_set_time(m->timer, now + 1000);
                return 0;
        }
        if (m->stopping)
                return 0;
        if (now >= m->next_attempt) {
                int r = attempt_connect(m);

                if (r < 0)
                        return r;
                if (m->socket_open)
                        gw_source_set_time(m->timer, now + 1000);
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
                connection_lost(m, -ECONNREFUSED);
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

        if (m->stopping)
                return;
        gw_log_warning("MQTT: broker disconnected us (%s)", mosquitto_reason_string(rc));
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
                        r = gw_log_error_errno(gw_mosq_to_errno(rc), "MQTT: bad TLS settings: %s",
                                               mosquitto_strerror(rc));
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
                        connection_lost(m, gw_mosq_to_errno(rc));
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
        gw_source_free(m->io);
        gw_source_free(m->timer);
        if (m->mosq)
                mosquitto_destroy(m->mosq);
        free(m->will_payload);
        free(m);
        mosquitto_lib_cleanup();
        return NULL;
}
