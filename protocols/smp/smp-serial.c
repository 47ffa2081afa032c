/* SMP over console (see smp-serial.h): packets to lines and lines back to packets. Base64
 * through OpenSSL's EVP block coder, the CRC through protocols/common's CRC-16/XMODEM.
 * Everything here is fed by a device and so bounded: line length, packet length. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crc16.h"
#include "smp-serial.h"

#define MARK_PKT_0  0x06
#define MARK_PKT_1  0x09
#define MARK_FRAG_0 0x04
#define MARK_FRAG_1 0x14

/* Base64 characters of n raw bytes. */
static size_t b64_len(size_t n)
{
        return (n + 2) / 3 * 4;
}

/* How many raw bytes line i of lines carries, for a frame of total raw bytes (length field,
 * packet, CRC). Every line but the last carries GW_SMP_LINE_RAW, a multiple of three so that no
 * line but the last is padded; when that would leave the last line a lone CRC byte, the line
 * before it gives up three. */
static size_t line_raw(size_t total, size_t lines, size_t i)
{
        size_t last = total - (lines - 1) * GW_SMP_LINE_RAW;

        if (lines > 1 && last < 2) {
                if (i == lines - 2)
                        return GW_SMP_LINE_RAW - 3;
                if (i == lines - 1)
                        return last + 3;
        }
        return i == lines - 1 ? last : GW_SMP_LINE_RAW;
}

size_t gw_smp_serial_lines(size_t len)
{
        size_t total = len + GW_SMP_FRAME_OVERHEAD;

        if (len == 0 || len > GW_SMP_PACKET_MAX)
                return 0;
        return (total + GW_SMP_LINE_RAW - 1) / GW_SMP_LINE_RAW;
}

size_t gw_smp_serial_encoded_size(size_t len)
{
        size_t lines = gw_smp_serial_lines(len), size = 0;

        for (size_t i = 0; i < lines; i++)
                size += 2 + b64_len(line_raw(len + GW_SMP_FRAME_OVERHEAD, lines, i)) + 1;
        return size;
}

/* Byte p of the frame: length field, packet, CRC (both big-endian). */
static uint8_t frame_byte(const uint8_t *pkt, size_t len, uint16_t crc, size_t p)
{
        size_t announced = len + 2;

        if (p < 2)
                return (uint8_t) (p == 0 ? announced >> 8 : announced);
        if (p < 2 + len)
                return pkt[p - 2];
        return (uint8_t) (p == 2 + len ? crc >> 8 : crc);
}

ssize_t gw_smp_serial_encode(const uint8_t *pkt, size_t len, uint8_t *out, size_t out_size)
{
        size_t lines = gw_smp_serial_lines(len), total = len + GW_SMP_FRAME_OVERHEAD;
        size_t p = 0, o = 0;
        uint16_t crc;

        if (lines == 0)
                return -EMSGSIZE;
        if (gw_smp_serial_encoded_size(len) > out_size)
                return -ENOBUFS;
        crc = gw_crc16_xmodem(0, pkt, len);
        for (size_t i = 0; i < lines; i++) {
                uint8_t raw[GW_SMP_LINE_RAW];
                unsigned char b64[GW_SMP_LINE_RAW / 3 * 4 + 1];
                size_t n = line_raw(total, lines, i);
                int w;

                for (size_t k = 0; k < n; k++)
                        raw[k] = frame_byte(pkt, len, crc, p + k);
                p += n;
                w = EVP_EncodeBlock(b64, raw, (int) n);
                if (w < 0 || (size_t) w != b64_len(n))
                        return -EIO;
                out[o++] = i == 0 ? MARK_PKT_0 : MARK_FRAG_0;
                out[o++] = i == 0 ? MARK_PKT_1 : MARK_FRAG_1;
                memcpy(out + o, b64, (size_t) w);
                o += (size_t) w;
                out[o++] = '\n';
        }
        return (ssize_t) o;
}

/* The framing layer: one packet down as lines. Its state is only the encoding buffer, made for
 * each packet (a few per second), so the layer has no ctx. */
static int serial_send(struct gw_smp_layer *l, const uint8_t *buf, size_t n)
{
        size_t size = gw_smp_serial_encoded_size(n);
        uint8_t *out;
        ssize_t w;
        int r;

        if (size == 0)
                return -EMSGSIZE;
        out = malloc(size);
        if (!out)
                return -ENOMEM;
        w = gw_smp_serial_encode(buf, n, out, size);
        r = w < 0 ? (int) w : l->next->ops->send(l->next, out, (size_t) w);
        free(out);
        return r;
}

const struct gw_smp_layer_ops gw_smp_serial_layer_ops = {
    .name = "serial",
    .send = serial_send,
};

void gw_smp_deframer_reset(struct gw_smp_deframer *d)
{
        memset(d, 0, sizeof(*d));
        d->marker = -1;
}

static bool is_b64(uint8_t c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '/';
}

/* Strict base64 of one line: whole groups of four, '=' only as the last one or two characters.
 * Returns the decoded length or -EBADMSG. */
static ssize_t decode_line(const uint8_t *s, size_t len, uint8_t *out)
{
        size_t pad = 0;
        int n;

        if (len == 0 || len % 4 != 0)
                return -EBADMSG;
        if (s[len - 1] == '=')
                pad = s[len - 2] == '=' ? 2 : 1;
        for (size_t i = 0; i < len - pad; i++)
                if (!is_b64(s[i]))
                        return -EBADMSG;
        n = EVP_DecodeBlock(out, s, (int) len);
        if (n < 0 || (size_t) n != len / 4 * 3)
                return -EBADMSG;
        return (ssize_t) ((size_t) n - pad);
}

static void drop_packet(struct gw_smp_deframer *d)
{
        if (d->open)
                d->bad_packets++;
        d->open = false;
}

static int take_line(struct gw_smp_deframer *d, gw_smp_packet_fn deliver, void *userdata)
{
        uint8_t raw[GW_SMP_RX_LINE_MAX / 4 * 3];
        const uint8_t *p = raw;
        ssize_t n = decode_line(d->line, d->line_len, raw);
        size_t left;
        uint16_t crc;

        if (n < 0) {
                d->bad_lines++;
                drop_packet(d);
                return 0;
        }
        left = (size_t) n;
        if (d->initial) {
                /* A packet still open was cut short: its lines were lost. */
                drop_packet(d);
                if (left < 2) {
                        d->bad_lines++;
                        return 0;
                }
                d->want = (size_t) raw[0] << 8 | raw[1];
                p += 2;
                left -= 2;
                if (d->want < 3 || d->want > sizeof(d->pkt)) {
                        d->bad_packets++;
                        return 0;
                }
                d->open = true;
                d->have = 0;
        } else if (!d->open) {
                d->bad_lines++;
                return 0;
        }
        if (left > d->want - d->have) {
                drop_packet(d);
                return 0;
        }
        memcpy(d->pkt + d->have, p, left);
        d->have += left;
        if (d->have < d->want)
                return 0;
        d->open = false;
        crc = gw_crc16_xmodem(0, d->pkt, d->want - 2);
        if (crc != ((uint16_t) d->pkt[d->want - 2] << 8 | d->pkt[d->want - 1])) {
                d->bad_packets++;
                return 0;
        }
        d->packets++;
        return deliver(userdata, d->pkt, d->want - 2);
}

int gw_smp_deframer_feed(struct gw_smp_deframer *d, const uint8_t *buf, size_t n,
                         gw_smp_packet_fn deliver, void *userdata)
{
        for (size_t i = 0; i < n; i++) {
                uint8_t c = buf[i];
                int r;

                if (d->in_line) {
                        if (c == '\n') {
                                d->in_line = false;
                                r = take_line(d, deliver, userdata);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        if (c == '\r')
                                continue;
                        if (c != '=' && !is_b64(c)) {
                                /* A line cut short, by a reset or by a log line written into
                                 * it: the packet it belonged to is lost. */
                                d->in_line = false;
                                d->bad_lines++;
                                drop_packet(d);
                        } else if (d->line_len == sizeof(d->line)) {
                                d->in_line = false;
                                d->bad_lines++;
                                drop_packet(d);
                                continue;
                        } else {
                                d->line[d->line_len++] = c;
                                continue;
                        }
                }
                if (d->marker >= 0) {
                        bool pkt = d->marker == MARK_PKT_0 && c == MARK_PKT_1;
                        bool frag = d->marker == MARK_FRAG_0 && c == MARK_FRAG_1;

                        d->marker = -1;
                        if (pkt || frag) {
                                d->in_line = true;
                                d->initial = pkt;
                                d->line_len = 0;
                                continue;
                        }
                        d->noise_bytes++;
                }
                if (c == MARK_PKT_0 || c == MARK_FRAG_0) {
                        d->marker = c;
                        continue;
                }
                d->noise_bytes++;
        }
        return 0;
}
