/* The serial framing layer of the smp plugin ("SMP over console"): an SMP packet travels as a
 * 2-byte big-endian length, the packet and its CRC-16/XMODEM, base64-encoded in lines of at most
 * 127 bytes that start with 0x06 0x09 (the first) or 0x04 0x14 (the others) and end in '\n'.
 * Also the layer chain the plugin is built of: SMP -> serial framing -> link. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A line on the wire: marker, base64, newline. */
#define GW_SMP_LINE_MAX 127
/* Raw bytes one line's base64 carries: (127 - 3) / 4 groups of 3. */
#define GW_SMP_LINE_RAW ((GW_SMP_LINE_MAX - 3) / 4 * 3)
/* What the length field, and the CRC, add to a packet. */
#define GW_SMP_FRAME_OVERHEAD 4
/* The longest packet the length field can announce (it counts the CRC too). */
#define GW_SMP_PACKET_MAX (0xffff - 2)
/* The longest line accepted from a device; the spec says 127, some consoles are generous. */
#define GW_SMP_RX_LINE_MAX 512
/* The longest packet accepted from a device: responses here are a few hundred bytes. */
#define GW_SMP_RX_PACKET_MAX 4096

/* One layer of the stack, curl-filter style: its ops, the layer below it and its own state.
 * A layer never owns, or frees, its next. */
struct gw_smp_layer;

struct gw_smp_layer_ops {
        const char *name;
        /* Sends one unit down the stack: the framing layer takes an SMP packet, the link layer
         * bytes. Never blocks, never keeps buf. 0, or -errno (-EMSGSIZE: a packet the framing
         * cannot carry; what the link reports when it is gone). */
        int (*send)(struct gw_smp_layer *l, const uint8_t *buf, size_t n);
};

struct gw_smp_layer {
        const struct gw_smp_layer_ops *ops;
        struct gw_smp_layer *next;
        void *ctx;
};

/* The framing layer's ops: send() encodes the packet into lines and sends them to next. */
extern const struct gw_smp_layer_ops gw_smp_serial_layer_ops;

/* Bytes the lines of a len-byte packet take on the wire; 0 when the framing cannot carry it. */
size_t gw_smp_serial_encoded_size(size_t len);
/* Lines a len-byte packet takes. */
size_t gw_smp_serial_lines(size_t len);
/* Encodes a len-byte packet into out (out_size bytes). Each line carries GW_SMP_LINE_RAW raw bytes
 * of length + packet + CRC, except that the CRC is never split from the line that ends the
 * packet. Returns the bytes written, -EMSGSIZE when len is 0 or over GW_SMP_PACKET_MAX, or
 * -ENOBUFS when out is too small. */
ssize_t gw_smp_serial_encode(const uint8_t *pkt, size_t len, uint8_t *out, size_t out_size);

/* The receiving side: what arrives from the console, a byte at a time or in any pieces, with
 * the application's log lines (console noise) between frames. */
struct gw_smp_deframer {
        int marker;   /* the first byte of a marker just seen (0x06, 0x04), else -1 */
        bool in_line; /* inside a frame line: taking base64 up to '\n' */
        bool initial; /* the line is an initial frame (0x06 0x09) */
        size_t line_len;
        uint8_t line[GW_SMP_RX_LINE_MAX];

        bool open;   /* a packet is being reassembled */
        size_t want; /* its length field: packet + CRC */
        size_t have; /* bytes after the length field so far */
        uint8_t pkt[GW_SMP_RX_PACKET_MAX + 2];

        /* What was thrown away, for the log and the tests. */
        uint64_t noise_bytes; /* outside any frame */
        uint64_t bad_lines;   /* not base64, too long, a continuation without a packet */
        uint64_t bad_packets; /* wrong CRC, longer than announced, over the limit */
        uint64_t packets;     /* delivered */
};

/* Called for each whole packet, its CRC checked and stripped; pkt is valid for the call. A
 * negative return stops feeding and is returned by gw_smp_deframer_feed(). */
typedef int (*gw_smp_packet_fn)(void *userdata, const uint8_t *pkt, size_t len);

void gw_smp_deframer_reset(struct gw_smp_deframer *d);
/* Takes n bytes from the console. Anything that is not a well-formed frame is skipped: bytes
 * outside frames, lines that are not base64, a packet whose CRC or length is wrong (it is
 * dropped whole and the next initial frame starts afresh). Returns 0 or the first negative
 * value deliver returned. */
int gw_smp_deframer_feed(struct gw_smp_deframer *d, const uint8_t *buf, size_t n,
                         gw_smp_packet_fn deliver, void *userdata);
