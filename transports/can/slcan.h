/* The slcan (Lawicel) line codec: frames to and from the ASCII lines an slcan adapter speaks,
 * and a reader that splits the adapter's untrusted byte stream into frames and replies with
 * every length bounded. Pure: no I/O. Used by the can transport's slcan backend and fuzzed by
 * tests/fuzz/fuzz-slcan.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw/plugin.h"

/* The longest valid line without its '\r': 'B', 8 id digits, the DLC digit, 64 bytes as 128 hex
 * digits and a 4-digit timestamp (adapters with timestamps on, Lawicel Z1). */
#define GW_SLCAN_LINE_MAX (1 + 8 + 1 + 2 * GW_CAN_FRAME_MAX + 4)

/* Formats f as the command that transmits it, '\r' included, into buf (not NUL-terminated):
 * t/T (classic), r/R (remote, len = DLC), d/D (FD), b/B (FD with BRS). Returns the length, or
 * -EINVAL for a frame no adapter can send (an id or length out of range, BRS without FD, FD
 * remote) or -ENOBUFS when n is too small. */
int gw_slcan_format(const struct gw_can_frame *f, char *buf, size_t n);

/* Parses one line the adapter sent (without its terminator) as a received frame. 1 and *ret, or
 * -EINVAL when it is not a well-formed frame line: wrong length for its DLC, an id out of range,
 * a character that is not a hex digit. A trailing 4-digit timestamp is accepted and ignored. */
int gw_slcan_parse(const char *line, size_t len, struct gw_can_frame *ret);

/* Whether a line starting with c is meant to be a frame (t T r R d D b B). */
bool gw_slcan_is_frame_letter(char c);

enum gw_slcan_event {
        GW_SLCAN_OK,        /* "\r", "z\r" or "Z\r": the oldest command was taken */
        GW_SLCAN_ERROR,     /* BEL: the oldest command was refused */
        GW_SLCAN_FRAME,     /* a received frame */
        GW_SLCAN_MALFORMED, /* a frame line that does not parse: dropped */
        GW_SLCAN_OVERLONG,  /* a line longer than GW_SLCAN_LINE_MAX: dropped */
        GW_SLCAN_OTHER,     /* another line (an answer to V, N, F, ...): not a reply we count */
};

const char *gw_slcan_event_to_string(enum gw_slcan_event e);

/* Splits the adapter's bytes into lines. Lines end at '\r'; a BEL ends whatever line was in
 * progress (dropped as malformed) and is a reply of its own; '\n' is ignored. */
struct gw_slcan_reader {
        char line[GW_SLCAN_LINE_MAX + 1];
        size_t len;
        bool overlong;
};

typedef void (*gw_slcan_event_fn)(void *userdata, enum gw_slcan_event e,
                                  const struct gw_can_frame *f, const char *line, size_t len);

/* Feeds n bytes; calls cb for every event they complete, in order (f only for
 * GW_SLCAN_FRAME; line/len: the line, valid for the call). */
void gw_slcan_feed(struct gw_slcan_reader *r, const uint8_t *buf, size_t n, gw_slcan_event_fn cb,
                   void *userdata);
