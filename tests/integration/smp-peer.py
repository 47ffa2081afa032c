#!/usr/bin/python3
# An independent SMP-over-console peer for cross-checking the smp plugin and smp-sim, written
# from the specifications (SMP over console: 0x06 0x09 / 0x04 0x14 lines of at most 127 bytes,
# base64 of length + packet + CRC-16 poly 0x1021 init 0; the SMP header; img_mgmt and os_mgmt
# bodies in CBOR) with Python's base64 and cbor2 modules and its own CRC. No code is shared with
# the C side. Three modes:
#   vector                  checks its framing of mcumgr's published os-reset frame
#   device LINK OUT SLOT0   an MCUboot device on a pty (LINK is a symlink to it) that checks
#                           every line the host writes, takes an upload, tests, resets, confirms;
#                           on SIGTERM writes what runs in slot 0 to OUT and a summary on stdout
#   host PORT IMAGE         uploads IMAGE to the device at PORT (window 1), marks it for test,
#                           resets it, waits for it, confirms it; exit 0 when it runs confirmed
import base64
import hashlib
import os
import select
import signal
import struct
import sys
import termios
import time
import tty

import cbor2

LINE_MAX = 127
RAW_PER_LINE = (LINE_MAX - 3) // 4 * 3  # 93


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(pkt):
    """Lines for one packet; the CRC stays whole on the last line (a partial-final frame)."""
    raw = struct.pack(">H", len(pkt) + 2) + pkt + struct.pack(">H", crc16(pkt))
    pieces, off = [], 0
    while off < len(raw):
        n = min(RAW_PER_LINE, len(raw) - off)
        if len(raw) - off - n == 1:  # the CRC's last byte would be alone
            n -= 3
        pieces.append(raw[off:off + n])
        off += n
    out = b""
    for i, p in enumerate(pieces):
        out += (b"\x06\x09" if i == 0 else b"\x04\x14") + base64.b64encode(p) + b"\n"
    return out


class Deframer:
    """Lines to packets; strict when asked (the host under test must write well-formed lines)."""

    def __init__(self, strict):
        self.strict = strict
        self.buf = b""
        self.acc = None
        self.want = 0
        self.lines = 0
        self.violations = []
        self.noise = 0

    def bad(self, what):
        if self.strict:
            self.violations.append(what)
        self.acc = None

    def feed(self, data):
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            start = max(line.rfind(b"\x06\x09"), line.rfind(b"\x04\x14"))
            if start < 0:
                self.noise += len(line) + 1
                continue
            if start > 0:
                self.noise += start
                if self.strict:
                    self.violations.append("bytes before a frame marker")
            line = line[start:]
            self.lines += 1
            if len(line) + 1 > LINE_MAX:
                self.bad("a line of %d bytes" % (len(line) + 1))
                continue
            body = line[2:].rstrip(b"\r")
            try:
                raw = base64.b64decode(body, validate=True)
            except Exception:
                self.bad("a line that is not base64")
                continue
            if line[:2] == b"\x06\x09":
                if self.acc is not None:
                    self.bad("a packet cut short")
                if len(raw) < 2:
                    self.bad("an initial line without a length")
                    continue
                self.want = struct.unpack(">H", raw[:2])[0]
                self.acc = raw[2:]
            else:
                if self.acc is None:
                    self.bad("a continuation without a packet")
                    continue
                self.acc += raw
            if len(self.acc) > self.want:
                self.bad("more than the announced length")
                continue
            if len(self.acc) < self.want:
                if self.strict and body.endswith(b"="):
                    self.violations.append("padding before the last line")
                if self.strict and len(self.acc) > self.want - 2:
                    self.violations.append("the CRC split across lines")
                continue
            pkt, crc = self.acc[:-2], struct.unpack(">H", self.acc[-2:])[0]
            self.acc = None
            if crc16(pkt) != crc:
                self.bad("a bad CRC")
                continue
            out.append(pkt)
        return out


def header(op, group, seq, cmd, body_len, ver=0):
    return struct.pack(">BBHHBB", (ver << 3) | op, 0, body_len, group, seq, cmd)


def parse_header(pkt):
    b0, flags, length, group, seq, cmd = struct.unpack(">BBHHBB", pkt[:8])
    return b0 & 7, (b0 >> 3) & 3, length, group, seq, cmd


def tlv_hash(img):
    """The image's SHA-256 TLV, and whether it matches header + body + protected TLVs."""
    magic, _, hdr, prot, size = struct.unpack_from("<IIHHI", img, 0)
    if magic != 0x96F3B83D:
        return None, False
    off = hdr + size + prot
    m, tot = struct.unpack_from("<HH", img, off)
    p, found = off + 4, None
    while p + 4 <= off + tot:
        t, n = struct.unpack_from("<HH", img, p)
        if t == 0x10 and n == 32:
            found = img[p + 4:p + 36]
        p += 4 + n
    return found, found is not None and hashlib.sha256(img[:off]).digest() == found


def version(img):
    major, minor, rev, build = struct.unpack_from("<BBHI", img, 20)
    return "%d.%d.%d" % (major, minor, rev) + (".%d" % build if build else "")


# ---- vector --------------------------------------------------------------------------------

def mode_vector():
    pkt = bytes.fromhex("0200000100008a05a0")
    want = b"\x06\x09AAsCAAABAACKBaA1Qw==\n"
    got = frame(pkt)
    d = Deframer(strict=True)
    back = d.feed(want)
    ok = got == want and back == [pkt] and not d.violations
    print("vector: %s (frame %r)" % ("ok" if ok else "MISMATCH", got))
    return 0 if ok else 1


# ---- device --------------------------------------------------------------------------------

class Device:
    def __init__(self, slot0):
        self.slots = [slot0, None]
        self.swap = "none"  # none, test, revert
        self.up = None  # [off, size, data]
        self.requests = 0
        self.uploads = 0

    def state(self):
        images = []
        for i, img in enumerate(self.slots):
            if img is None:
                continue
            h, _ = tlv_hash(img)
            if h is None:
                continue
            images.append({"slot": i, "version": version(img), "hash": h, "bootable": True,
                           "pending": i == 1 and self.swap == "test",
                           "confirmed": (i == 0) != (self.swap == "revert"),
                           "active": i == 0, "permanent": False})
        return {"images": images}

    def serve(self, op, group, cmd, body):
        self.requests += 1
        if (group, cmd, op) == (0, 6, 0):
            return {"buf_size": 512, "buf_count": 1}
        if (group, cmd, op) == (1, 0, 0):
            return self.state()
        if (group, cmd, op) == (1, 0, 2):
            if body.get("confirm"):
                if self.swap == "revert":
                    self.swap = "none"
                return self.state()
            h = body.get("hash")
            if self.slots[1] is None or tlv_hash(self.slots[1])[0] != h:
                return {"rc": 3}
            self.swap = "test"
            return self.state()
        if (group, cmd, op) == (1, 1, 2):
            self.uploads += 1
            off, data = body["off"], body["data"]
            if off == 0:
                if body.get("sha") is None or "len" not in body:
                    return {"rc": 3}
                self.up = [0, body["len"], bytearray(), body["sha"]]
            if self.up is None or off != self.up[0]:
                return {"rc": 0, "off": self.up[0] if self.up else 0}
            self.up[2] += data
            self.up[0] += len(data)
            rsp = {"rc": 0, "off": self.up[0]}
            if self.up[0] == self.up[1]:
                self.slots[1] = bytes(self.up[2])
                rsp["match"] = hashlib.sha256(self.slots[1]).digest() == self.up[3]
                self.up = None
            return rsp
        if (group, cmd, op) == (0, 5, 2):
            return "reset"
        return {"rc": 8}

    def reboot(self):
        if self.swap == "test" and tlv_hash(self.slots[1])[1]:
            self.slots = [self.slots[1], self.slots[0]]
            self.swap = "revert"
        elif self.swap == "revert":
            self.slots = [self.slots[1], self.slots[0]]
            self.swap = "none"


def mode_device(link, out, slot0_path):
    dev = Device(open(slot0_path, "rb").read())
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, link)
    deframer = Deframer(strict=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("smp-peer: ready %s" % link, file=sys.stderr, flush=True)
    reset_at = None
    while not stop:
        if reset_at and time.monotonic() >= reset_at:
            dev.reboot()
            reset_at = None
            os.write(master, b"*** Booting Zephyr OS ***\r\n")
        try:
            r, _, _ = select.select([master], [], [], 0.05)
        except InterruptedError:
            continue
        if not r:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:
            time.sleep(0.05)
            continue
        if reset_at:
            continue  # down: deaf
        for pkt in deframer.feed(data):
            op, ver, length, group, seq, cmd = parse_header(pkt)
            if length != len(pkt) - 8:
                deframer.violations.append("a header length that is not the body's")
                continue
            body = cbor2.loads(pkt[8:]) if length else {}
            rsp = dev.serve(op, group, cmd, body)
            if rsp == "reset":
                rsp = {}
                reset_at = time.monotonic() + 0.2
            enc = cbor2.dumps(rsp)
            os.write(master, frame(header(op + 1, group, seq, cmd, len(enc), ver) + enc))
    with open(out, "wb") as f:
        f.write(dev.slots[0])
    print("lines=%d violations=%d requests=%d uploads=%d swap=%s confirmed=%s" %
          (deframer.lines, len(deframer.violations), dev.requests, dev.uploads, dev.swap,
           dev.swap == "none"))
    for v in sorted(set(deframer.violations)):
        print("violation: %s" % v)
    os.unlink(link)
    return 0


# ---- host ----------------------------------------------------------------------------------

class Host:
    def __init__(self, port):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.deframer = Deframer(strict=False)
        self.seq = 0

    def request(self, op, group, cmd, body, timeout=3.0, tries=3):
        enc = cbor2.dumps(body)
        for _ in range(tries):
            self.seq = (self.seq + 1) & 0xFF
            os.write(self.fd, frame(header(op, group, self.seq, cmd, len(enc)) + enc))
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                r, _, _ = select.select([self.fd], [], [], 0.05)
                if not r:
                    continue
                for pkt in self.deframer.feed(os.read(self.fd, 4096)):
                    rop, _, length, group_r, seq, cmd_r = parse_header(pkt)
                    if seq == self.seq and group_r == group and cmd_r == cmd and rop == op + 1:
                        return cbor2.loads(pkt[8:]) if length else {}
        return None

    def state(self):
        return self.request(0, 1, 0, {})


def mode_host(port, image_path):
    img = open(image_path, "rb").read()
    want, valid = tlv_hash(img)
    if not valid:
        print("host: %s is not a valid MCUboot image" % image_path)
        return 1
    h = Host(port)
    params = h.request(0, 0, 6, {})
    buf = params.get("buf_size", 256) if params else 256
    # The decoded frame (length, packet, CRC) must fit the buffer: leave room for the header
    # (8), the CBOR around the data (under 80 bytes even for the first request) and framing (4).
    chunk = max(32, buf - 4 - 8 - 80)
    sha = hashlib.sha256(img).digest()
    off, sent = 0, 0
    while off < len(img):
        body = {"off": off, "data": img[off:off + chunk]}
        if off == 0:
            body.update({"len": len(img), "sha": sha})
        rsp = h.request(2, 1, 1, body)
        if rsp is None or rsp.get("rc", 0) != 0 or "off" not in rsp:
            print("host: upload at %d failed: %r" % (off, rsp))
            return 1
        sent += len(body["data"])
        off = rsp["off"]
    st = h.state()
    if not st or not any(e.get("slot") == 1 and e.get("hash") == want for e in st["images"]):
        print("host: slot 1 does not hold the image after the upload: %r" % st)
        return 1
    if h.request(2, 1, 0, {"hash": want, "confirm": False}) is None:
        print("host: no answer to the test request")
        return 1
    h.request(2, 0, 5, {}, tries=1)
    deadline, st = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        st = h.request(0, 1, 0, {}, timeout=0.3, tries=1)
        if st and any(e.get("active") and e.get("hash") == want for e in st["images"]):
            break
        st = None
    if not st:
        print("host: the device did not come back running the image")
        return 1
    st = h.request(2, 1, 0, {"confirm": True})
    ok = st and any(e.get("active") and e.get("hash") == want and e.get("confirmed")
                    for e in st["images"])
    print("host: %s, %d data bytes sent, chunk %d, noise %d bytes" %
          ("confirmed" if ok else "NOT confirmed", sent, chunk, h.deframer.noise))
    return 0 if ok else 1


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "vector":
        return mode_vector()
    if len(sys.argv) == 5 and sys.argv[1] == "device":
        return mode_device(sys.argv[2], sys.argv[3], sys.argv[4])
    if len(sys.argv) == 4 and sys.argv[1] == "host":
        return mode_host(sys.argv[2], sys.argv[3])
    print(__doc__ or "usage: smp-peer.py vector | device LINK OUT SLOT0 | host PORT IMAGE",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
