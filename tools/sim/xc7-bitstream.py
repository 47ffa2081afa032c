#!/usr/bin/env python3
"""xc7-bitstream.py: writes a Xilinx 7-series style configuration bitstream for tools/sim/xvc-sim
(and any loader that speaks to it): the packet sequence UG470 describes for an uncompressed
bitstream (bus width detection, sync word, RCRC, IDCODE, WCFG, FAR, frame data through FDRI in a
type 2 packet, the CRC, START, DESYNC), with random frame data, as a .bit file (with the
design/part/date header) or a raw .bin. The frame data goes to --frames-out too, so that a test
can compare it with what the simulated FPGA received."""
import argparse
import random
import struct
import sys

SYNC = 0xAA995566
NOOP = 0x20000000
REG_CRC, REG_FAR, REG_FDRI, REG_CMD, REG_IDCODE = 0x00, 0x01, 0x02, 0x04, 0x0C
CMD_WCFG, CMD_DGHIGH, CMD_START, CMD_RCRC, CMD_GRESTORE, CMD_DESYNC = 1, 3, 5, 7, 0x0A, 0x0D
FRAME_WORDS = 101  # a 7-series configuration frame


def type1_write(reg, count):
    return (1 << 29) | (2 << 27) | (reg << 13) | count


def type2_write(count):
    return (2 << 29) | (2 << 27) | count


def crc_step(crc, reg, word):
    """The configuration CRC: 37 bits (register address above the data word), least
    significant first, through a reflected CRC-32C."""
    v = ((reg & 0x1F) << 32) | word
    for i in range(37):
        fb = (crc ^ (v >> i)) & 1
        crc >>= 1
        if fb:
            crc ^= 0x82F63B78
    return crc


class Stream:
    def __init__(self):
        self.words = []
        self.crc = 0

    def raw(self, *words):
        self.words.extend(words)

    def write(self, reg, *data):
        self.words.append(type1_write(reg, len(data)))
        for w in data:
            self.data(reg, w)

    def data(self, reg, w):
        self.words.append(w)
        if reg != REG_CRC:
            self.crc = crc_step(self.crc, reg, w)
        if reg == REG_CMD and w == CMD_RCRC:
            self.crc = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--format", choices=["bit", "bin"], default=None,
                    help="default: from --out's extension")
    ap.add_argument("--idcode", type=lambda s: int(s, 0), default=0x0362D093)
    ap.add_argument("--part", default="7a35tcpg236")
    ap.add_argument("--design", default="top")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames-out", help="write the frame data (big-endian words) here")
    ap.add_argument("--bad-crc", action="store_true", help="a CRC that does not match")
    ap.add_argument("--no-start", action="store_true", help="no START command")
    ap.add_argument("--selftest", action="store_true", help="check the CRC against vectors")
    a = ap.parse_args()

    if a.selftest:
        # Published vectors for this CRC (prjxray's unit tests).
        assert crc_step(0, 0, 0) == 0
        assert crc_step(0, 1 << 4, 0) == 0x82F63B78
        assert crc_step(0, 0x1F, 0xFFFFFFFF) == 0xBF86D4DF
        assert crc_step(0xFFFFFFFF, 0, 0) == 0xC631E365

    rnd = random.Random(a.seed)
    frames = [rnd.getrandbits(32) for _ in range(a.frames * FRAME_WORDS)]

    s = Stream()
    s.raw(*([0xFFFFFFFF] * 8))
    s.raw(0x000000BB, 0x11220044, 0xFFFFFFFF, 0xFFFFFFFF)  # bus width detection
    s.raw(SYNC, NOOP)
    s.write(REG_CMD, CMD_RCRC)
    s.raw(NOOP, NOOP)
    s.write(REG_IDCODE, a.idcode)
    s.write(REG_CMD, CMD_WCFG)
    s.write(REG_FAR, 0)
    s.raw(type1_write(REG_FDRI, 0), type2_write(len(frames)))
    for w in frames:
        s.data(REG_FDRI, w)
    s.write(REG_CRC, s.crc ^ (1 if a.bad_crc else 0))
    s.write(REG_CMD, CMD_GRESTORE)
    s.write(REG_CMD, CMD_DGHIGH)
    s.raw(*([NOOP] * 4))
    if not a.no_start:
        s.write(REG_CMD, CMD_START)
    s.raw(NOOP)
    s.write(REG_CMD, CMD_DESYNC)
    s.raw(*([NOOP] * 16))
    body = struct.pack(">%dI" % len(s.words), *s.words)

    fmt = a.format or ("bit" if a.out.endswith(".bit") else "bin")
    with open(a.out, "wb") as f:
        if fmt == "bit":
            def field(key, text):
                b = text.encode() + b"\0"
                return key + struct.pack(">H", len(b)) + b
            f.write(struct.pack(">H", 9) + bytes.fromhex("0ff00ff00ff00ff000") +
                    struct.pack(">H", 1))
            f.write(field(b"a", "%s;UserID=0XFFFFFFFF;Version=sim" % a.design))
            f.write(field(b"b", a.part))
            f.write(field(b"c", "2024/01/01"))
            f.write(field(b"d", "12:00:00"))
            f.write(b"e" + struct.pack(">I", len(body)))
        f.write(body)
    if a.frames_out:
        with open(a.frames_out, "wb") as f:
            f.write(struct.pack(">%dI" % len(frames), *frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
