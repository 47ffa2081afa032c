/* The bit length of CAN and CAN FD frames on the wire (see can-bits.h): the frame is laid out bit
 * by bit as ISO 11898-1 sends it and the stuff bits are counted from those bits. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "can-bits.h"

/* The longest stuffed part: an FD frame with a 29-bit id and 64 data bytes has 41 header bits
 * and 512 data bits before the CRC field. */
#define SEQ_MAX 640

/* After the CRC sequence: delimiter, ACK slot, ACK delimiter, 7 bits EOF. */
#define TAIL_BITS 10

static const uint8_t fd_lengths[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64};

int gw_can_dlc_to_len(unsigned dlc)
{
        return dlc < 16 ? fd_lengths[dlc] : -EINVAL;
}

int gw_can_len_to_dlc(unsigned len)
{
        for (unsigned i = 0; i < 16; i++)
                if (fd_lengths[i] == len)
                        return (int) i;
        return -EINVAL;
}

/* The bits of the frame before its CRC field, one per byte, and where the data phase starts. */
struct seq {
        uint8_t bit[SEQ_MAX];
        uint32_t n;
        uint32_t data_from; /* index of the first data-phase bit (ESI); n when none */
};

static void put(struct seq *s, uint32_t value, unsigned nbits)
{
        while (nbits-- > 0)
                s->bit[s->n++] = (uint8_t) ((value >> nbits) & 1u);
}

uint16_t gw_can_crc15(const uint8_t *bits, uint32_t nbits)
{
        uint16_t crc = 0;

        for (uint32_t i = 0; i < nbits; i++) {
                unsigned b = (bits[i / 8] >> (7 - i % 8)) & 1u;
                unsigned next = b ^ ((crc >> 14) & 1u);

                crc = (uint16_t) ((crc << 1) & 0x7fff);
                if (next)
                        crc ^= 0x4599;
        }
        return crc;
}

/* The CRC-15 over a sequence stored one bit per byte. */
static uint16_t seq_crc15(const struct seq *s)
{
        uint8_t packed[SEQ_MAX / 8];

        memset(packed, 0, sizeof(packed));
        for (uint32_t i = 0; i < s->n; i++)
                if (s->bit[i])
                        packed[i / 8] |= (uint8_t) (0x80u >> (i % 8));
        return gw_can_crc15(packed, s->n);
}

/* Counts the stuff bits that dynamic stuffing inserts into bits [0, n) of s: after five equal
 * bits, a bit of the other value, which starts the next run. With stuff_last false no stuff bit
 * follows the last bit (CAN FD: the fixed stuff bit of the CRC field comes next instead).
 * Returns the total; *ret_data counts those inserted at or after s->data_from. */
static uint32_t count_stuff(const struct seq *s, bool stuff_last, uint32_t *ret_data)
{
        uint32_t stuff = 0, data = 0, run = 0;
        int last = -1;

        for (uint32_t i = 0; i < s->n; i++) {
                if (s->bit[i] == last) {
                        run++;
                } else {
                        last = s->bit[i];
                        run = 1;
                }
                if (run == 5 && (stuff_last || i + 1 < s->n)) {
                        stuff++;
                        if (i + 1 >= s->data_from)
                                data++;
                        last = !last;
                        run = 1;
                }
        }
        *ret_data = data;
        return stuff;
}

static bool id_ok(const struct gw_can_frame *f)
{
        return (f->flags & GW_CAN_EFF) ? f->id <= 0x1fffffffu : f->id <= 0x7ffu;
}

static void put_id(struct seq *s, const struct gw_can_frame *f, unsigned rtr_or_rrs)
{
        if (f->flags & GW_CAN_EFF) {
                put(s, f->id >> 18, 11);
                put(s, 1, 1); /* SRR, recessive */
                put(s, 1, 1); /* IDE */
                put(s, f->id & 0x3ffffu, 18);
                put(s, rtr_or_rrs, 1);
        } else {
                put(s, f->id, 11);
                put(s, rtr_or_rrs, 1);
                put(s, 0, 1); /* IDE */
        }
}

static int classic_bits(const struct gw_can_frame *f, struct gw_can_bits *ret)
{
        struct seq s = {.n = 0};
        bool rtr = f->flags & GW_CAN_RTR;
        uint32_t stuff, unused;

        if (f->len > 8)
                return -EINVAL;
        put(&s, 0, 1); /* SOF */
        put_id(&s, f, rtr ? 1 : 0);
        if (f->flags & GW_CAN_EFF)
                put(&s, 0, 1); /* r1 */
        put(&s, 0, 1);         /* r0 */
        put(&s, f->len, 4);    /* DLC */
        if (!rtr)
                for (unsigned i = 0; i < f->len; i++)
                        put(&s, f->data[i], 8);
        put(&s, seq_crc15(&s), 15);
        s.data_from = s.n;
        stuff = count_stuff(&s, true, &unused);
        ret->nominal = s.n + stuff + TAIL_BITS + GW_CAN_IFS_BITS;
        ret->data = 0;
        ret->stuff = stuff;
        return 0;
}

static int fd_bits(const struct gw_can_frame *f, struct gw_can_bits *ret)
{
        struct seq s = {.n = 0};
        bool brs = f->flags & GW_CAN_BRS;
        uint32_t stuff, stuff_data, crc_field, fixed;
        int dlc = gw_can_len_to_dlc(f->len);

        if (dlc < 0 || (f->flags & GW_CAN_RTR))
                return -EINVAL;
        put(&s, 0, 1);           /* SOF */
        put_id(&s, f, 0);        /* RRS dominant */
        put(&s, 1, 1);           /* FDF (where a classic frame has r0) */
        put(&s, 0, 1);           /* res */
        put(&s, brs ? 1 : 0, 1); /* BRS: the bit rate switches at its sample point */
        s.data_from = s.n;       /* ESI onwards */
        put(&s, 0, 1);           /* ESI: error active */
        put(&s, (uint32_t) dlc, 4);
        for (unsigned i = 0; i < f->len; i++)
                put(&s, f->data[i], 8);
        stuff = count_stuff(&s, false, &stuff_data);
        /* Stuff count (3 bits Gray code and a parity bit) and the CRC, a fixed stuff bit before
         * them and after every 4 of their bits. */
        crc_field = 4 + (f->len <= 16 ? 17 : 21);
        fixed = 1 + (crc_field - 1) / 4;
        ret->stuff = stuff + fixed;
        if (brs) {
                ret->data = (s.n - s.data_from) + stuff_data + crc_field + fixed;
                ret->nominal = s.data_from + (stuff - stuff_data) + TAIL_BITS + GW_CAN_IFS_BITS;
        } else {
                ret->data = 0;
                ret->nominal = s.n + stuff + crc_field + fixed + TAIL_BITS + GW_CAN_IFS_BITS;
        }
        return 0;
}

int gw_can_frame_bits(const struct gw_can_frame *f, struct gw_can_bits *ret)
{
        if (!f || !ret || !id_ok(f))
                return -EINVAL;
        if ((f->flags & GW_CAN_BRS) && !(f->flags & GW_CAN_FD))
                return -EINVAL;
        return (f->flags & GW_CAN_FD) ? fd_bits(f, ret) : classic_bits(f, ret);
}

uint64_t gw_can_bits_ns(const struct gw_can_bits *b, uint32_t bitrate, uint32_t data_bitrate)
{
        uint64_t ns;

        if (data_bitrate == 0)
                data_bitrate = bitrate;
        ns = ((uint64_t) b->nominal * 1000000000u + bitrate - 1) / bitrate;
        ns += ((uint64_t) b->data * 1000000000u + data_bitrate - 1) / data_bitrate;
        return ns;
}
