#!/usr/bin/python3
# A UDS client over ISO-TP over python-can's slcan interface: an independent host for can-sim
# (tests/integration/can-slcan.sh). Its ISO-TP and UDS are written here from the standards, not
# taken from gatewayd. Runs under Debian's /usr/bin/python3 (python3-can 4.1).
#
#   can-uds-client.py PORT rdbi DID...            prints "DID=value" lines (ASCII or hex)
#   can-uds-client.py PORT flash IMAGE ADDR [--stop-after BLOCKS] [--resume] [--secret N]
#                                                 prints "result: ..." lines
#   can-uds-client.py PORT raw ID HEX             sends one frame, prints the first answer
# Exit status 0 on success, 1 on a failure (the reason on stderr), 2 on usage errors.
import argparse
import sys
import time
import zlib

import can

TX, RX = 0x7E0, 0x7E8
PAD = 0xCC


class Fail(Exception):
    pass


class IsoTp:
    """ISO 15765-2 normal addressing, classic frames, padding 0xCC."""

    def __init__(self, bus, tx, rx):
        self.bus, self.tx, self.rx = bus, tx, rx

    def frame(self, data):
        data = bytes(data) + bytes([PAD] * (8 - len(data)))
        self.bus.send(can.Message(arbitration_id=self.tx, is_extended_id=False, data=data))

    def wait_frame(self, timeout):
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0:
                return None
            m = self.bus.recv(left)
            if m is not None and m.arbitration_id == self.rx and not m.is_extended_id:
                return bytes(m.data)

    def send(self, msg):
        if len(msg) <= 7:
            self.frame(bytes([len(msg)]) + msg)
            return
        if len(msg) > 4095:
            raise Fail("message too long for this client")
        self.frame(bytes([0x10 | len(msg) >> 8, len(msg) & 0xFF]) + msg[:6])
        off, sn = 6, 1
        while off < len(msg):
            fc = self.wait_frame(1.0)
            if fc is None:
                raise Fail("N_Bs: no flow control")
            if fc[0] >> 4 != 3:
                continue
            fs = fc[0] & 0xF
            if fs == 1:
                continue
            if fs != 0:
                raise Fail("flow control status %d" % fs)
            bs, st = fc[1], fc[2]
            stmin = st / 1000.0 if st <= 0x7F else ((st - 0xF0) / 10000.0 if 0xF1 <= st <= 0xF9
                                                     else 0.127)
            sent = 0
            while off < len(msg) and (bs == 0 or sent < bs):
                self.frame(bytes([0x20 | sn]) + msg[off:off + 7])
                off += 7
                sn = (sn + 1) & 0xF
                sent += 1
                if stmin:
                    time.sleep(stmin)

    def recv(self, timeout):
        f = self.wait_frame(timeout)
        if f is None:
            return None
        kind = f[0] >> 4
        if kind == 0:
            n = f[0] & 0xF
            if n == 0 or n > 7:
                raise Fail("bad single frame %s" % f.hex())
            return f[1:1 + n]
        if kind != 1:
            raise Fail("unexpected frame %s" % f.hex())
        n = (f[0] & 0xF) << 8 | f[1]
        data = bytearray(f[2:8])
        self.frame(bytes([0x30, 0, 0]))
        sn = 1
        while len(data) < n:
            cf = self.wait_frame(1.0)
            if cf is None:
                raise Fail("N_Cr: no consecutive frame")
            if cf[0] != 0x20 | sn:
                raise Fail("consecutive frame %02x, expected %02x" % (cf[0], 0x20 | sn))
            data += cf[1:1 + min(7, n - len(data))]
            sn = (sn + 1) & 0xF
        return bytes(data)


class Uds:
    def __init__(self, tp):
        self.tp = tp
        self.p2, self.p2star = 0.05, 5.0
        self.pending = 0

    def request(self, req, expect_nrc=None):
        self.tp.send(bytes(req))
        timeout = self.p2 + 0.5
        while True:
            r = self.tp.recv(timeout)
            if r is None:
                raise Fail("no answer to %s" % bytes(req[:3]).hex())
            if len(r) == 3 and r[0] == 0x7F and r[1] == req[0] and r[2] == 0x78:
                self.pending += 1
                timeout = self.p2star + 0.5
                continue
            if r[0] == 0x7F:
                if expect_nrc is not None and r[2] == expect_nrc:
                    return r
                raise Fail("NRC 0x%02x for service 0x%02x" % (r[2], r[1]))
            if r[0] != req[0] + 0x40:
                raise Fail("answer %s to %s" % (r.hex(), bytes(req[:3]).hex()))
            if expect_nrc is not None:
                raise Fail("expected NRC 0x%02x, got %s" % (expect_nrc, r.hex()))
            return r

    def session(self, n):
        r = self.request([0x10, n])
        self.p2 = (r[2] << 8 | r[3]) / 1000.0
        self.p2star = (r[4] << 8 | r[5]) / 100.0

    def unlock(self, secret):
        seed = int.from_bytes(self.request([0x27, 0x01])[2:6], "big")
        x = seed ^ secret
        key = ((x << 7) | (x >> 25)) & 0xFFFFFFFF
        return self.request([0x27, 0x02] + list(key.to_bytes(4, "big")))

    def rdbi(self, did):
        r = self.request([0x22, did >> 8, did & 0xFF])
        if r[1] << 8 | r[2] != did:
            raise Fail("DID %04x answered as %04x" % (did, r[1] << 8 | r[2]))
        return r[3:]


def cmd_rdbi(uds, args):
    for d in args.dids:
        v = uds.rdbi(int(d, 16))
        text = v.decode() if all(0x20 <= b < 0x7F for b in v) and d.lower() != "f1a0" else v.hex()
        print("%s=%s" % (d.upper(), text))


def cmd_flash(uds, args):
    image = open(args.image, "rb").read()
    addr = int(args.addr, 0)
    uds.session(2)
    uds.unlock(int(args.secret, 0))
    start = 0
    if args.resume:
        start = int.from_bytes(uds.rdbi(0xF1A0), "big")
        print("result: resume point %d" % start)
    if start == 0:
        uds.request([0x31, 0x01, 0xFF, 0x00, 0x44] + list(addr.to_bytes(4, "big")) +
                    list(len(image).to_bytes(4, "big")))
        print("result: erased (%d response pending)" % uds.pending)
    r = uds.request([0x34, 0x00, 0x44] + list((addr + start).to_bytes(4, "big")) +
                    list((len(image) - start).to_bytes(4, "big")))
    block = (r[2] << 8 | r[3]) - 2
    off, counter, blocks = start, 1, 0
    while off < len(image):
        chunk = image[off:off + block]
        uds.request([0x36, counter] + list(chunk))
        off += len(chunk)
        counter = (counter + 1) & 0xFF
        blocks += 1
        if args.stop_after and blocks >= args.stop_after:
            print("result: stopped after %d blocks at %d" % (blocks, off))
            return
    uds.request([0x37])
    crc = zlib.crc32(image) & 0xFFFFFFFF
    r = uds.request([0x31, 0x01, 0x02, 0x02] + list(crc.to_bytes(4, "big")))
    if r[4] != 0:
        raise Fail("check routine: %d" % r[4])
    uds.request([0x11, 0x01])
    time.sleep(0.3)
    print("result: flashed %d bytes in %d blocks, version %s" %
          (len(image) - start, blocks, uds.rdbi(0xF195).decode()))


def cmd_raw(bus, args):
    data = bytes.fromhex(args.hex)
    bus.send(can.Message(arbitration_id=int(args.id, 16), is_extended_id=False, data=data))
    m = bus.recv(2.0)
    if m is None:
        raise Fail("no answer")
    print("%03X %s" % (m.arbitration_id, bytes(m.data).hex()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port")
    p.add_argument("--tx", default="0x7e0")
    p.add_argument("--rx", default="0x7e8")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rdbi")
    r.add_argument("dids", nargs="+")
    f = sub.add_parser("flash")
    f.add_argument("image")
    f.add_argument("addr")
    f.add_argument("--stop-after", type=int, default=0)
    f.add_argument("--resume", action="store_true")
    f.add_argument("--secret", default="0x5a5aa5a5")
    w = sub.add_parser("raw")
    w.add_argument("id")
    w.add_argument("hex")
    args = p.parse_args()
    bus = can.Bus(interface="slcan", channel=args.port, bitrate=500000, sleep_after_open=0)
    try:
        if args.cmd == "raw":
            cmd_raw(bus, args)
        else:
            uds = Uds(IsoTp(bus, int(args.tx, 0), int(args.rx, 0)))
            {"rdbi": cmd_rdbi, "flash": cmd_flash}[args.cmd](uds, args)
    except Fail as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    finally:
        bus.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
