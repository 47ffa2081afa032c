/* The gatewayd configuration file (gatewayd.yaml): its parsed form as plain C data, the strict
 * bounded parser that produces it, and lookups. docs/configuration.md describes every key. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/options.h"

/* Bounds on what a configuration file may contain. */
#define GW_CONFIG_MAX_FILE_SIZE   (1024 * 1024)
#define GW_CONFIG_MAX_DEPTH       8
#define GW_CONFIG_MAX_SCALAR      4096
#define GW_CONFIG_MAX_MAP_ENTRIES 128
#define GW_CONFIG_MAX_NODES       256
#define GW_CONFIG_MAX_PUBLIC_KEYS 32
#define GW_CONFIG_MAX_NAME        64 /* gateway id, node names */

/* Where something was in the file (1-based), for messages about it found later, e.g. a plugin
 * that refuses an option: "gatewayd.yaml:12:5: nodes[1].transport: ...". */
struct gw_config_pos {
        unsigned line, column;
};

#define GW_NODE_RETRIES_MAX 10

struct gw_node_config {
        struct gw_config_pos pos;           /* the node's entry */
        struct gw_config_pos transport_pos; /* its transport: mapping */
        struct gw_config_pos protocol_pos;  /* its protocol: mapping */
        char *name;                         /* unique, [A-Za-z0-9._-]{1,64}, not "." or ".." */
        char *class_name;                   /* "class", NULL when not given */
        struct gw_options *hardware;        /* never NULL; empty when not given */
        char *transport;                    /* transport.type */
        struct gw_options *transport_opts;  /* the other transport keys; never NULL */
        char *protocol;                     /* protocol.type */
        struct gw_options *protocol_opts;   /* the other protocol keys; never NULL */
        unsigned retries; /* "retries": installs tried again after one fails on the way
                           * (0..10, default 0) */
};

struct gw_mqtt_config {
        char *host;         /* default "localhost" */
        uint16_t port;      /* default 1883, or 8883 with tls */
        char *client_id;    /* default "gatewayd-" + gateway id */
        char *prefix;       /* default "gatewayd/" + gateway id; no wildcards, no trailing '/' */
        unsigned keepalive; /* seconds, default 30 */
        char *username;     /* NULL when not given */
        char *password;     /* NULL when not given; only with username */
        size_t max_payload; /* bytes, default 262144 */
        unsigned reconnect_min;   /* seconds, default 1 */
        unsigned reconnect_max;   /* seconds, default 60, >= reconnect_min */
        unsigned connect_timeout; /* seconds, default 10: DNS and TCP connect to the broker */
        bool tls;                 /* a tls: section was given */
        char *tls_ca;             /* NULL = the system's CA store */
        char *tls_cert;           /* cert and key both or neither: mutual TLS */
        char *tls_key;
        bool tls_insecure; /* skip host name verification */
};

struct gw_trust_config {
        char *keys;         /* a gatewayd/keys document, or NULL when public_keys is used */
        char **public_keys; /* PEM files */
        size_t n_public_keys;
        unsigned threshold; /* with public_keys; default 1 */
};

struct gw_config {
        char *path; /* as given to gw_config_load() / gw_config_parse() */
        char *gateway_id;
        char *gateway_hardware; /* NULL when not given */
        char *state_dir;        /* default /var/lib/gatewayd */
        char *plugin_dir;       /* NULL when not given */
        char *decryption_key;   /* the gateway's X25519 or P-256 private key (PEM) that
                                 * encrypted images are wrapped for; NULL when not given */
        int log_level;          /* LOG_DEBUG .. LOG_ERR, default LOG_INFO */
        struct gw_mqtt_config mqtt;
        struct gw_trust_config trust;
        uint64_t manifest_size_max;     /* limits.manifest-size, default 1 MiB */
        uint64_t image_size_max;        /* limits.image-size, default 256 MiB */
        uint64_t fetch_min_rate;        /* bytes/s, default 1024; 0 disables the check */
        unsigned fetch_rate_window;     /* seconds, default 30 */
        unsigned fetch_deadline;        /* seconds, default 3600 */
        unsigned fetch_connect_timeout; /* seconds, default 10 */
        struct gw_node_config *nodes;
        size_t n_nodes;
};

/* Reads and checks the file at path (at most GW_CONFIG_MAX_FILE_SIZE bytes). Relative paths in
 * it are resolved against the directory of the file, made absolute. On failure *ret_error (when
 * ret_error is not NULL) is a malloc'd "file:line:column: message" (or "file: message" when the
 * problem has no position) and the return value is -ENOENT/-EACCES/... for I/O problems,
 * -EFBIG when the file is too large, -EINVAL for anything wrong with its contents, -ENOMEM. */
int gw_config_load(const char *path, struct gw_config **ret, char **ret_error);

/* The same on a buffer: name is used in messages and kept as c->path; base_dir is where relative
 * paths start from (NULL: the directory part of name, "." when it has none). */
int gw_config_parse(const char *data, size_t size, const char *name, const char *base_dir,
                    struct gw_config **ret, char **ret_error);

struct gw_config *gw_config_free(struct gw_config *c);

/* The node called name, or NULL. */
const struct gw_node_config *gw_config_find_node(const struct gw_config *c, const char *name);

/* "debug", "info", "notice", "warning", "error" to LOG_* and back; -EINVAL / NULL otherwise. */
int gw_config_log_level_from_string(const char *s);
const char *gw_config_log_level_to_string(int level);
