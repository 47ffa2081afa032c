#!/usr/bin/python3
# Regenerates the seed corpora of the smp fuzz targets (tests/fuzz/corpus/smp/ and
# corpus/mcuboot/), kept apart from make-corpus.py. Crash regressions (crash-*) are left alone.
# The smp seeds follow fuzz-smp.c's input format: image size, option bits, image seed, then
# actions (low 3 bits: 0 raw bytes, 1 an answer with the input's body, 2 the model's answer,
# 3 expire, 4 advance, 5 early timer, 6 cancel, 7 hang up / link error; high 5 bits: argument).
#
# Usage: /usr/bin/python3 tests/fuzz/make-corpus-smp.py   (needs python3-cbor2)
import hashlib
import os
import struct

import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def reset(target):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith("crash-"):
            os.unlink(os.path.join(d, f))
    return d


def write(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


RAW, BODY, MODEL, EXPIRE, ADVANCE, EARLY, CANCEL, OTHER = range(8)


def act(op, arg=0):
    return bytes([op | (arg << 3)])


def model(arg=0, extra=b""):
    return act(MODEL, arg) + bytes([len(extra)]) + extra


def body(obj, arg=0):
    enc = obj if isinstance(obj, bytes) else cbor2.dumps(obj)
    return act(BODY, arg) + bytes([len(enc)]) + enc


def raw(data):
    out = b""
    while data:
        chunk, data = data[:32], data[32:]
        out += act(RAW, len(chunk) - 1) + chunk
    return out


def flow(arg=0, rounds=60):
    """Answers everything the model can, with the timer driving the reset wait."""
    out = b""
    for _ in range(rounds):
        out += model(arg) * 4 + act(EXPIRE)
    return out


def smp_seeds():
    d = reset("smp")
    # image size byte, option bits (1-2 window, 4 v2, 8 confirm=false, 0x30 retries,
    # 0x40 identify params, 0x80 identify), seed
    write(d, "install-small", bytes([0, 0x30, 1]) + flow(0))
    write(d, "install-window", bytes([30, 0x33, 2]) + flow(0x08 | 1))
    write(d, "install-v2", bytes([10, 0x24, 3]) + flow(1))
    write(d, "install-no-confirm", bytes([5, 0x38, 4]) + flow(0))
    write(d, "install-rc", bytes([8, 0x10, 5]) + model(0) * 2 + model(0x10 | 10) + flow(0))
    write(d, "install-rc-fatal", bytes([8, 0x10, 5]) + model(0) * 2 + model(0x10 | 3) + flow(0))
    write(d, "install-resume", bytes([20, 0x30, 6]) + model(0) * 2 +
          model(1, struct.pack("<H", 40)) + flow(0))
    write(d, "install-match-false", bytes([1, 0x30, 7]) + flow(2))
    write(d, "install-reverted", bytes([2, 0x30, 8]) + model(0) * 6 + flow(4, 30))
    write(d, "identify", bytes([0, 0x80, 9]) + model(0) + model(0))
    write(d, "identify-params", bytes([0, 0xc0, 9]) + model(0) + model(3))
    write(d, "noise", bytes([0, 0x30, 10]) + raw(b"*** Booting Zephyr OS ***\r\n\x06\x09AAsC\n\x04\x14") +
          flow(0))
    write(d, "cancel", bytes([40, 0x30, 11]) + model(0) * 5 + act(CANCEL))
    write(d, "hangup", bytes([40, 0x30, 11]) + model(0) * 5 + act(OTHER, 0))
    write(d, "link-error", bytes([40, 0x30, 11]) + model(0) * 2 + act(OTHER, 1) + flow(0, 5))
    write(d, "silence", bytes([3, 0x10, 12]) + act(EXPIRE) * 8)
    write(d, "early-and-advance", bytes([3, 0x10, 12]) + act(EARLY) + act(ADVANCE, 31) +
          flow(0, 10))
    write(d, "out-of-order", bytes([30, 0x33, 13]) + (model(0x08 | 1 << 0) + model(0x08)) * 3 +
          (act(MODEL, 1) + b"\x00") * 30 + flow(0x08))
    # Bodies from the input, each answering the next request.
    write(d, "body-params", bytes([0, 0x30, 14]) + body({"buf_size": 512, "buf_count": 4}) +
          body({"images": [{"slot": 0, "version": "1.0.0", "hash": bytes(32), "active": True,
                            "confirmed": True}]}) + flow(0))
    write(d, "body-indefinite", bytes([0, 0x30, 15]) +
          body(bytes.fromhex("bf686275665f73697a651901f4696275665f636f756e7404ff")) + flow(0))
    write(d, "body-err", bytes([0, 0x34, 16]) + body({"err": {"group": 1, "rc": 9}}) + flow(0))
    write(d, "body-deep", bytes([0, 0x30, 17]) + body(bytes.fromhex("a1617881818181818181818100")))
    write(d, "body-huge-array", bytes([0, 0x30, 18]) + body(bytes.fromhex("a161789b00000000ffffffff")))
    write(d, "body-bad-types", bytes([0, 0x30, 19]) + body({"buf_size": "x", "buf_count": -1}) +
          body({"images": [{"slot": 0, "hash": b"short"}]}) + flow(0))
    write(d, "body-rsn", bytes([0, 0x30, 20]) + body({"rc": 3, "rsn": "hdr\nmalformed" * 15}))


def image(version=(1, 2, 3, 0), size=200, seed=1, protected=False, bad_hash=False):
    body_bytes = bytes((i * 31 + seed) & 0xFF for i in range(size))
    prot = b""
    if protected:
        entries = struct.pack("<HHI", 0x50, 4, 7)
        prot = struct.pack("<HH", 0x6908, 4 + len(entries)) + entries
    hdr = struct.pack("<IIHHIIBBHII", 0x96F3B83D, 0, 32, len(prot), size, 0, *version, 0)
    img = hdr + body_bytes + prot
    h = bytearray(hashlib.sha256(img).digest())
    if bad_hash:
        h[0] ^= 1
    tlv = struct.pack("<HH", 0x10, 32) + bytes(h)
    return img + struct.pack("<HH", 0x6907, 4 + len(tlv)) + tlv


def mcuboot_seeds():
    d = reset("mcuboot")
    good = image()
    write(d, "valid", good)
    write(d, "valid-build", image((2, 0, 1, 77), 1000, 2))
    write(d, "protected", image(protected=True))
    write(d, "bad-hash", image(bad_hash=True))
    write(d, "padded", good + b"\xff" * 100)
    write(d, "truncated", good[:-10])
    write(d, "no-magic", b"\0" + good[1:])
    write(d, "short", good[:20])
    write(d, "empty", b"")
    two = bytearray(good[:-40])
    tlv = struct.pack("<HH", 0x10, 32) + bytes(32)
    two += struct.pack("<HH", 0x6907, 4 + 2 * len(tlv)) + tlv + tlv
    write(d, "two-hashes", bytes(two))
    many = bytearray(good[:-40])
    entries = struct.pack("<HH", 0x20, 0) * 200
    many += struct.pack("<HH", 0x6907, 4 + len(entries)) + entries
    write(d, "many-tlvs", bytes(many))
    big = bytearray(good)
    struct.pack_into("<I", big, 12, 0xFFFFFFF0)
    write(d, "huge-body", bytes(big))


def main():
    smp_seeds()
    mcuboot_seeds()
    for t in ("smp", "mcuboot"):
        print("%s: %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
