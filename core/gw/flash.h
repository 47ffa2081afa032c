/* A flash job: one transport link and one protocol instance driven by the loop, installing
 * one image on one node. Shared by gatewayd (many at once) and gwflash (one). */
#pragma once

#include <stdint.h>

#include "gw/loop.h"
#include "gw/options.h"
#include "gw/plugin.h"

struct gw_flash;

struct gw_flash_callbacks {
        /* Called whenever the protocol reports progress. May be NULL. */
        void (*progress)(void *userdata, uint64_t done, uint64_t total);
        /* Called once when the job ends: result 0 = the node took the image, else -errno with
         * a human-readable reason. The job may be freed from inside this callback. */
        void (*finished)(void *userdata, int result, const char *reason);
        /* The install continues a write the node kept, from offset (host->resumed()). May be
         * NULL. */
        void (*resumed)(void *userdata, uint64_t offset);
};

/* Opens the link and prepares the protocol. name labels log messages (the node's name).
 * Fails with -EPROTO when the protocol needs a different link shape than the transport has. */
int gw_flash_new(struct gw_loop *loop, const char *name, const struct gw_transport_ops *t,
                 const struct gw_options *topts, const struct gw_protocol_ops *p,
                 const struct gw_options *popts, struct gw_flash **ret);
/* Operations (install, upload, identify) run one at a time on a job, each on a freshly
 * initialised protocol instance, so one open link serves an identify, then an install, then
 * another identify. finished() never runs from inside the call that started the operation.
 * Starts installing; the reader must stay valid until finished() ran. */
int gw_flash_install(struct gw_flash *f, const struct gw_reader *reader,
                     const struct gw_flash_callbacks *cb, void *userdata);
/* Starts reading the node's image back into writer (protocols with an upload op); the
 * writer must stay valid until finished() ran. -EOPNOTSUPP when the protocol cannot. */
int gw_flash_upload(struct gw_flash *f, const struct gw_writer *writer,
                    const struct gw_flash_callbacks *cb, void *userdata);
/* Why the last operation failed, as the protocol put it ("" when it said nothing): also for
 * a failure gw_flash_install() or gw_flash_upload() returned at once. */
const char *gw_flash_reason(const struct gw_flash *f);
/* Starts asking the node what it runs now (the protocol's identify op): the key/value pairs it
 * reports ("version", "usb-id", ...) are added to ret, which must stay valid until finished()
 * ran and is complete only when finished() reports 0. -EOPNOTSUPP when the protocol has no
 * identify. On a control link that already ran an operation (an install after which the board
 * may have reset and re-enumerated), the link is first closed and the board looked for again
 * by the transport (serial or port path) for up to GW_FLASH_REIDENTIFY_MS; not found is
 * finished() with -ETIMEDOUT. */
#define GW_FLASH_REIDENTIFY_MS 10000u
int gw_flash_identify(struct gw_flash *f, struct gw_options *ret,
                      const struct gw_flash_callbacks *cb, void *userdata);
/* Asks the protocol to stop; finished() follows with -ECANCELED. */
void gw_flash_cancel(struct gw_flash *f);
struct gw_flash *gw_flash_free(struct gw_flash *f);

/* A gw_reader over a local file. gw_file_reader_close() accepts a zeroed reader. */
int gw_file_reader_open(const char *path, const char *name, struct gw_reader *ret);
void gw_file_reader_close(struct gw_reader *r);
/* A gw_writer into a new local file (created or truncated, mode 0644), taking at most max
 * bytes. gw_file_writer_close() fsyncs it and returns 0 or -errno; it accepts a zeroed
 * writer. */
int gw_file_writer_open(const char *path, uint64_t max, struct gw_writer *ret);
int gw_file_writer_close(struct gw_writer *w);
