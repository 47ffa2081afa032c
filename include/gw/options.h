/* An ordered list of string key/value pairs: a node's transport and protocol settings from
 * gatewayd.yaml, an image's options from the manifest, or gwflash's command line. Plugins
 * read their settings through it, so they never see YAML. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gw_options;

struct gw_options *gw_options_new(void);
struct gw_options *gw_options_free(struct gw_options *o);
/* Sets key to value (both copied), replacing an earlier value. 0 or -ENOMEM/-EINVAL. */
int gw_options_set(struct gw_options *o, const char *key, const char *value);
/* The same from one "key=value" string (everything after the first '=' is the value). 0,
 * -EINVAL (no '=', or nothing before it), -ENOMEM. */
int gw_options_set_kv(struct gw_options *o, const char *kv);
/* Copies every pair of src into dst, replacing what dst had for the same key. */
int gw_options_merge(struct gw_options *dst, const struct gw_options *src);
size_t gw_options_count(const struct gw_options *o);
/* The i-th pair, in insertion order; NULL past the end. */
const char *gw_options_key(const struct gw_options *o, size_t i);
const char *gw_options_value(const struct gw_options *o, size_t i);

/* The value or NULL. o may be NULL. */
const char *gw_options_get(const struct gw_options *o, const char *key);
/* Typed getters: def when the key is absent, -EINVAL when the value does not parse or is out
 * of [min, max]. Integers accept decimal and 0x hex. Booleans accept true/false/yes/no/1/0. */
int gw_options_get_u64(const struct gw_options *o, const char *key, uint64_t def, uint64_t min,
                       uint64_t max, uint64_t *ret);
int gw_options_get_bool(const struct gw_options *o, const char *key, bool def, bool *ret);

/* Strict unsigned parse of a whole string (decimal or 0x hex). 0 or -EINVAL/-ERANGE. */
int gw_parse_u64(const char *s, uint64_t *ret);
