/* Finding plugins: the static table of built-ins and out-of-tree modules loaded with dlopen. */
#pragma once

#include <stdbool.h>

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

/* Checks a node's options before anything is opened: keys neither plugin reads (the reason
 * lists the keys they do read), then the values, as t->check() and p->init() see them.
 * topts and popts may be the same set (gwflash's): a key is then fine when either plugin
 * reads it. 0, or -EINVAL with a one-line reason in why. Plugins that cannot tell (older ops
 * versions, no option list) are given the benefit of the doubt. */
int gw_plugin_check_options(const struct gw_transport_ops *t, const struct gw_options *topts,
                            const struct gw_protocol_ops *p, const struct gw_options *popts,
                            char *why, size_t why_size);

/* Checks an image against protocol p before any node is written: p->check_image() on an
 * instance that p->init() prepared with popts (the node's protocol options merged with the
 * image's). facts: what the node's identify reported, or NULL. 0, or -errno with a one-line
 * reason in why; 0 too when p cannot tell (ops version below 4, no check_image). */
int gw_plugin_check_image(const struct gw_protocol_ops *p, const struct gw_options *popts,
                          const struct gw_reader *reader, const struct gw_options *facts, char *why,
                          size_t why_size);

/* Does the node already run reader's image? p->installed() on an instance p->init() prepared
 * with popts, against facts (what the node's identify reported). 1 yes, 0 no or cannot tell
 * (ops version below 5, no installed op, facts NULL), or -errno with a one-line reason in why. */
int gw_plugin_installed(const struct gw_protocol_ops *p, const struct gw_options *popts,
                        const struct gw_reader *reader, const struct gw_options *facts, char *why,
                        size_t why_size);
/* The transport options a link for protocol p is opened with: p's link_defaults, then topts
 * over them (the node's settings win). *ret is new. 0 or -ENOMEM. p may be NULL. */
int gw_plugin_link_options(const struct gw_protocol_ops *p, const struct gw_options *topts,
                           struct gw_options **ret);

/* A manifest image's options for protocol p (before they are merged over the node's): -EPERM
 * with a one-line reason when one names a key only a node's configuration may set
 * (p->node_options, protocol ops version 7), else 0. */
int gw_plugin_check_image_options(const struct gw_protocol_ops *p,
                                  const struct gw_options *image_opts, char *why, size_t why_size);

/* Whether p's identify() reaches the node after an install, with popts (identify and
 * identifies_after_install, protocol ops version 8): true when it says so or cannot tell, false
 * when p has no identify or says it cannot (or popts are refused). */
bool gw_plugin_identifies_after_install(const struct gw_protocol_ops *p,
                                        const struct gw_options *popts);
