/* Fuzz target for the configuration parser (gatewayd/config.c): the bytes are a gatewayd.yaml.
 * Besides not crashing or leaking, a configuration it accepts must hold what config.h
 * promises (absolute paths, one trust source, consistent pairs, unique node names), and a
 * rejection must come with a "file:line:column: message". Each node's options then go
 * through its plugins' option check, as --check-config runs it. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "gw/registry.h"

#define NAME     "fuzz.yaml"
#define BASE_DIR "/etc/gatewayd"

static void check_path(const char *path)
{
        if (path)
                fuzz_check(path[0] == '/');
}

static void check_node(const struct gw_config *c, size_t i)
{
        const struct gw_node_config *n = &c->nodes[i];
        size_t len;

        fuzz_check(n->name);
        len = strlen(n->name);
        fuzz_check(len >= 1 && len <= GW_CONFIG_MAX_NAME);
        fuzz_check(strcmp(n->name, ".") != 0 && strcmp(n->name, "..") != 0);
        fuzz_check(strspn(n->name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789._-") == len);
        /* Unique: the lookup finds this very entry. */
        fuzz_check(gw_config_find_node(c, n->name) == n);
        fuzz_check(n->hardware && n->transport_opts && n->protocol_opts);
        fuzz_check(n->transport && n->protocol);
        fuzz_check(n->pos.line >= 1);
        {
                const struct gw_transport_ops *t = gw_transport_find(n->transport);
                const struct gw_protocol_ops *p = gw_protocol_find(n->protocol);
                char why[1024];
                int r;

                if (t && p) {
                        why[0] = 'x';
                        r = gw_plugin_check_options(t, n->transport_opts, p, n->protocol_opts, why,
                                                    sizeof(why));
                        fuzz_check(r == 0 || r == -EINVAL);
                        fuzz_check(memchr(why, '\0', sizeof(why)) != NULL);
                        if (r < 0)
                                fuzz_check(why[0] != '\0');
                }
        }
}

static void check_config(const struct gw_config *c)
{
        const char *level;

        fuzz_check(c->path && strcmp(c->path, NAME) == 0);
        fuzz_check(c->gateway_id && strlen(c->gateway_id) >= 1 &&
                   strlen(c->gateway_id) <= GW_CONFIG_MAX_NAME);
        check_path(c->state_dir);
        check_path(c->plugin_dir);
        level = gw_config_log_level_to_string(c->log_level);
        fuzz_check(level && gw_config_log_level_from_string(level) == c->log_level);

        fuzz_check(c->mqtt.host && c->mqtt.client_id && c->mqtt.prefix);
        fuzz_check(!strpbrk(c->mqtt.prefix, "+#"));
        fuzz_check(c->mqtt.reconnect_min <= c->mqtt.reconnect_max);
        fuzz_check(!c->mqtt.password || c->mqtt.username);
        fuzz_check(!c->mqtt.tls_cert == !c->mqtt.tls_key);
        check_path(c->mqtt.tls_ca);
        check_path(c->mqtt.tls_cert);
        check_path(c->mqtt.tls_key);

        fuzz_check(!c->trust.keys != !c->trust.n_public_keys);
        check_path(c->trust.keys);
        fuzz_check(c->trust.n_public_keys <= GW_CONFIG_MAX_PUBLIC_KEYS);
        for (size_t i = 0; i < c->trust.n_public_keys; i++)
                check_path(c->trust.public_keys[i]);
        if (c->trust.n_public_keys > 0)
                fuzz_check(c->trust.threshold >= 1 && c->trust.threshold <= c->trust.n_public_keys);

        for (size_t i = 0; i < c->n_nodes; i++)
                check_node(c, i);
        fuzz_check(gw_config_find_node(c, "no/such/node") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gw_config *c = NULL;
        char *error = NULL;
        int r;

        r = gw_config_parse((const char *) data, size, NAME, BASE_DIR, &c, &error);
        if (r < 0) {
                fuzz_check(r == -EINVAL || r == -EFBIG || r == -ENOMEM);
                fuzz_check(!c);
                if (r != -ENOMEM)
                        fuzz_check(error && strncmp(error, NAME ":", strlen(NAME ":")) == 0);
                free(error);
                return 0;
        }
        fuzz_check(r == 0 && c && !error);
        check_config(c);
        gw_config_free(c);
        return 0;
}
