/* Fuzz target for the slcan line codec (transports/can/slcan-codec.c): the bytes an adapter sends,
 * split into lines by the reader in chunks the first byte chooses. Every frame it reports must be
 * one a bus can carry, format back to a line that parses to the same frame, and have a bit length
 * within the bounds of its kind; every line it hands out is within GW_SLCAN_LINE_MAX. The whole
 * input is also parsed as one line. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "can-bits.h"
#include "slcan.h"

#include "fuzz.h"

static void check_frame(const struct gw_can_frame *f)
{
        struct gw_can_frame back;
        struct gw_can_bits bits;
        char line[GW_SLCAN_LINE_MAX + 2];
        int n;

        fuzz_check((f->flags & GW_CAN_EFF) ? f->id <= 0x1fffffff : f->id <= 0x7ff);
        fuzz_check(f->len <= GW_CAN_FRAME_MAX);
        if (f->flags & GW_CAN_FD)
                fuzz_check(gw_can_len_to_dlc(f->len) >= 0 && !(f->flags & GW_CAN_RTR));
        else
                fuzz_check(f->len <= 8 && !(f->flags & GW_CAN_BRS));
        n = gw_slcan_format(f, line, sizeof(line));
        fuzz_check(n > 0 && (size_t) n <= GW_SLCAN_LINE_MAX + 1 && line[n - 1] == '\r');
        fuzz_check(gw_slcan_parse(line, (size_t) n - 1, &back) == 1);
        fuzz_check(back.id == f->id && back.flags == f->flags && back.len == f->len);
        if (!(f->flags & GW_CAN_RTR))
                fuzz_check(memcmp(back.data, f->data, f->len) == 0);
        fuzz_check(gw_can_frame_bits(f, &bits) == 0);
        /* At least the unstuffed frame, at most a stuff bit per four bits more. */
        fuzz_check(bits.nominal + bits.data >= 47);
        fuzz_check(bits.nominal + bits.data <= 47 + 20 + 8 * 64 + 8 + 21 + 8 + 160);
        if (!(f->flags & GW_CAN_BRS))
                fuzz_check(bits.data == 0);
}

static void on_event(void *userdata, enum gw_slcan_event e, const struct gw_can_frame *f,
                     const char *line, size_t len)
{
        unsigned *events = userdata;

        (*events)++;
        fuzz_check(len <= GW_SLCAN_LINE_MAX);
        fuzz_check(gw_slcan_event_to_string(e) != NULL);
        if (e == GW_SLCAN_FRAME) {
                fuzz_check(f != NULL);
                check_frame(f);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gw_slcan_reader r;
        struct gw_can_frame f;
        unsigned events = 0;
        size_t chunk, off = 1;

        if (size < 1)
                return 0;
        memset(&r, 0, sizeof(r));
        chunk = data[0] % 17; /* 0: all at once */
        while (off < size) {
                size_t n = chunk ? chunk : size - off;

                if (n > size - off)
                        n = size - off;
                gw_slcan_feed(&r, data + off, n, on_event, &events);
                fuzz_check(r.len <= GW_SLCAN_LINE_MAX);
                off += n;
        }
        /* No more events than terminators. */
        {
                unsigned ends = 0;

                for (size_t i = 1; i < size; i++)
                        ends += data[i] == '\r' ? 1 : data[i] == '\a' ? 2 : 0;
                fuzz_check(events <= ends);
        }
        if (gw_slcan_parse((const char *) data + 1, size - 1, &f) == 1)
                check_frame(&f);
        return 0;
}
