/* Downloads for gatewayd over libcurl's multi interface, driven by the loop: http, https and
 * file URLs, capped in size, hashed with SHA-256 while they stream, with a minimum rate and an
 * overall deadline (slow-retrieval defence). */
#pragma once

#include <stdint.h>

#include "gw/error.h"
#include "gw/loop.h"

struct gw_fetcher;
struct gw_fetch;

struct gw_fetch_params {
        const char *url;
        int fd;             /* the body is written here; -1: collected in memory */
        uint64_t max_bytes; /* more than this fails the fetch (image-size-mismatch) */
        uint64_t min_rate;  /* bytes/s averaged over rate_window_s; 0: no minimum */
        unsigned rate_window_s;
        uint64_t deadline_ms;       /* absolute gw_now_ms() time; 0: none */
        unsigned connect_timeout_s; /* 0: curl's default */
        /* Bytes received so far. May be NULL. */
        void (*progress)(void *userdata, uint64_t bytes);
        /* Called once, unless the fetch is cancelled first. result 0 with the SHA-256 and size
         * of what arrived; else -errno with a stable code (download-failed, download-too-slow,
         * image-size-mismatch) and a message. mem (memory mode only, NULL otherwise) is the
         * body, malloc'd and now the callee's. */
        void (*finished)(void *userdata, int result, enum gw_error code, const char *message,
                         const uint8_t sha256[32], uint64_t bytes, uint8_t *mem);
        void *userdata;
};

int gw_fetcher_new(struct gw_loop *loop, struct gw_fetcher **ret);
/* Cancels what is still running, without callbacks. */
struct gw_fetcher *gw_fetcher_free(struct gw_fetcher *f);

/* Starts a download. The URL must be http, https or file; redirects stay within http(s). */
int gw_fetch_start(struct gw_fetcher *f, const struct gw_fetch_params *p, struct gw_fetch **ret);
/* Stops a running fetch; finished() is not called. Accepts NULL. */
void gw_fetch_cancel(struct gw_fetch *x);

/* Resolves a possibly relative reference against base (an absolute URL). *ret is malloc'd.
 * -EINVAL when the result is not a valid absolute URL. */
int gw_url_resolve(const char *base, const char *ref, char **ret);
