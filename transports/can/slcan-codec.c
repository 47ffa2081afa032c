/* The slcan line codec (see slcan.h): strict parsing of what an adapter sends, with every length
 * checked against the DLC before a digit is read, and the formatting of frames to send. */
#include <errno.h>
#include <string.h>

#include "can-bits.h"
#include "slcan.h"

static const char hexdigits[] = "0123456789ABCDEF";

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* n hex digits at p into *ret; -EINVAL on anything else. */
static int hexnum(const char *p, size_t n, uint32_t *ret)
{
        uint32_t v = 0;

        for (size_t i = 0; i < n; i++) {
                int d = hexval(p[i]);

                if (d < 0)
                        return -EINVAL;
                v = (v << 4) | (uint32_t) d;
        }
        *ret = v;
        return 0;
}

bool gw_slcan_is_frame_letter(char c)
{
        return c != '\0' && strchr("tTrRdDbB", c) != NULL;
}

int gw_slcan_format(const struct gw_can_frame *f, char *buf, size_t n)
{
        bool ext = f->flags & GW_CAN_EFF, fd = f->flags & GW_CAN_FD, brs = f->flags & GW_CAN_BRS,
             rtr = f->flags & GW_CAN_RTR;
        unsigned idlen = ext ? 8 : 3;
        size_t need, at = 0;
        int dlc;
        char c;

        if (ext ? f->id > 0x1fffffffu : f->id > 0x7ffu)
                return -EINVAL;
        if ((brs && !fd) || (rtr && fd))
                return -EINVAL;
        if (fd) {
                dlc = gw_can_len_to_dlc(f->len);
                if (dlc < 0)
                        return -EINVAL;
                c = brs ? (ext ? 'B' : 'b') : (ext ? 'D' : 'd');
        } else {
                if (f->len > 8)
                        return -EINVAL;
                dlc = f->len;
                c = rtr ? (ext ? 'R' : 'r') : (ext ? 'T' : 't');
        }
        need = 1 + idlen + 1 + (rtr ? 0 : 2u * f->len) + 1;
        if (need > n)
                return -ENOBUFS;
        buf[at++] = c;
        for (unsigned i = idlen; i-- > 0;)
                buf[at++] = hexdigits[(f->id >> (4 * i)) & 0xf];
        buf[at++] = hexdigits[dlc];
        if (!rtr)
                for (unsigned i = 0; i < f->len; i++) {
                        buf[at++] = hexdigits[f->data[i] >> 4];
                        buf[at++] = hexdigits[f->data[i] & 0xf];
                }
        buf[at++] = '\r';
        return (int) at;
}

int gw_slcan_parse(const char *line, size_t len, struct gw_can_frame *ret)
{
        struct gw_can_frame f = {0};
        unsigned idlen;
        uint32_t v;
        size_t body;
        int dlc, flen;
        char c;

        if (len < 1 || !gw_slcan_is_frame_letter(line[0]))
                return -EINVAL;
        c = line[0];
        idlen = (c >= 'A' && c <= 'Z') ? 8 : 3;
        if (c == 'T' || c == 'R' || c == 'D' || c == 'B')
                f.flags |= GW_CAN_EFF;
        if (c == 'r' || c == 'R')
                f.flags |= GW_CAN_RTR;
        if (c == 'd' || c == 'D' || c == 'b' || c == 'B')
                f.flags |= GW_CAN_FD;
        if (c == 'b' || c == 'B')
                f.flags |= GW_CAN_BRS;
        if (len < 1 + idlen + 1)
                return -EINVAL;
        if (hexnum(line + 1, idlen, &f.id) < 0)
                return -EINVAL;
        if ((f.flags & GW_CAN_EFF) ? f.id > 0x1fffffffu : f.id > 0x7ffu)
                return -EINVAL;
        dlc = hexval(line[1 + idlen]);
        if (dlc < 0)
                return -EINVAL;
        if (f.flags & GW_CAN_FD) {
                flen = gw_can_dlc_to_len((unsigned) dlc);
        } else {
                if (dlc > 8)
                        return -EINVAL;
                flen = dlc;
        }
        f.len = (uint8_t) flen;
        body = 1 + idlen + 1 + ((f.flags & GW_CAN_RTR) ? 0 : 2u * (size_t) flen);
        /* Exactly the frame, or the frame and a 4-digit timestamp. */
        if (len != body && len != body + 4)
                return -EINVAL;
        if (!(f.flags & GW_CAN_RTR))
                for (int i = 0; i < flen; i++) {
                        if (hexnum(line + 2 + idlen + 2 * i, 2, &v) < 0)
                                return -EINVAL;
                        f.data[i] = (uint8_t) v;
                }
        if (len == body + 4 && hexnum(line + body, 4, &v) < 0)
                return -EINVAL;
        *ret = f;
        return 1;
}

const char *gw_slcan_event_to_string(enum gw_slcan_event e)
{
        switch (e) {
        case GW_SLCAN_OK:
                return "ok";
        case GW_SLCAN_ERROR:
                return "error";
        case GW_SLCAN_FRAME:
                return "frame";
        case GW_SLCAN_MALFORMED:
                return "malformed";
        case GW_SLCAN_OVERLONG:
                return "overlong";
        case GW_SLCAN_OTHER:
                return "other";
        }
        return NULL;
}

/* A whole line (without its '\r') is in r->line. */
static void end_line(struct gw_slcan_reader *r, gw_slcan_event_fn cb, void *userdata)
{
        struct gw_can_frame f;
        size_t len = r->len;

        r->line[len] = '\0';
        r->len = 0;
        if (r->overlong) {
                r->overlong = false;
                cb(userdata, GW_SLCAN_OVERLONG, NULL, r->line, len);
                return;
        }
        if (len == 0 || (len == 1 && (r->line[0] == 'z' || r->line[0] == 'Z'))) {
                cb(userdata, GW_SLCAN_OK, NULL, r->line, len);
                return;
        }
        if (gw_slcan_is_frame_letter(r->line[0])) {
                if (gw_slcan_parse(r->line, len, &f) == 1)
                        cb(userdata, GW_SLCAN_FRAME, &f, r->line, len);
                else
                        cb(userdata, GW_SLCAN_MALFORMED, NULL, r->line, len);
                return;
        }
        cb(userdata, GW_SLCAN_OTHER, NULL, r->line, len);
}

void gw_slcan_feed(struct gw_slcan_reader *r, const uint8_t *buf, size_t n, gw_slcan_event_fn cb,
                   void *userdata)
{
        for (size_t i = 0; i < n; i++) {
                char c = (char) buf[i];

                if (c == '\r') {
                        end_line(r, cb, userdata);
                } else if (c == '\a') {
                        if (r->len > 0 || r->overlong) {
                                r->line[r->len] = '\0';
                                cb(userdata, r->overlong ? GW_SLCAN_OVERLONG : GW_SLCAN_MALFORMED,
                                   NULL, r->line, r->len);
                                r->len = 0;
                                r->overlong = false;
                        }
                        cb(userdata, GW_SLCAN_ERROR, NULL, "", 0);
                } else if (c == '\n') {
                        continue;
                } else if (r->overlong) {
                        continue;
                } else if (r->len < GW_SLCAN_LINE_MAX) {
                        r->line[r->len++] = c;
                } else {
                        r->overlong = true;
                }
        }
}
