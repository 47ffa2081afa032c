/* Finding plugins: the static table of built-ins and out-of-tree modules loaded with dlopen. */
#pragma once

#include "gw/plugin.h"

/* Loads one shared module. -EPROTO (and an error logged) when its ABI version differs,
 * -ENOEXEC when it lacks the entry symbol, -EEXIST when a plugin of that name is known. */
int gw_plugin_load(const char *path);
/* Loads every *.so in dir; a missing dir is not an error. Returns the number loaded or the
 * first hard error. Modules that fail are logged and skipped. */
int gw_plugin_load_dir(const char *dir);

const struct gw_transport_ops *gw_transport_find(const char *name);
const struct gw_protocol_ops *gw_protocol_find(const char *name);
/* Iteration over everything known: NULL past the end. */
const struct gw_transport_ops *gw_transport_get(size_t i);
const struct gw_protocol_ops *gw_protocol_get(size_t i);
