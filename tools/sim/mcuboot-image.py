#!/usr/bin/python3
# Makes MCUboot-format test images for the smp tests and benchmarks: a 32-byte header (magic
# 0x96f3b83d, little-endian fields), padding to the header size, a body, an optional protected
# TLV area (magic 0x6908) and the TLV area (magic 0x6907) with the SHA-256 TLV (type 0x10) over
# header, body and protected TLVs, as MCUboot checks it. Unsigned: no key or signature TLVs.
# Written from the image format's description; needs only the standard library.
#
# Usage: mcuboot-image.py --version 1.2.3[+BUILD] [--size N | --body FILE] [--seed S]
#            [--hdr-size N] [--protected] [--load-addr A] [--non-bootable] [--bad-hash]
#            [--pad N] OUT
import argparse
import hashlib
import random
import re
import struct
import sys

MAGIC = 0x96F3B83D
TLV_INFO = 0x6907
TLV_PROT_INFO = 0x6908
TLV_SHA256 = 0x10
TLV_SEC_CNT = 0x50
F_NON_BOOTABLE = 0x10


def parse_version(s):
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:[+.](\d+))?", s)
    if not m:
        raise argparse.ArgumentTypeError("version wants MAJOR.MINOR.REVISION[+BUILD]")
    major, minor, rev = int(m[1]), int(m[2]), int(m[3])
    build = int(m[4] or 0)
    if major > 255 or minor > 255 or rev > 65535 or build > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("version field out of range")
    return major, minor, rev, build


def tlv(kind, value):
    return struct.pack("<HH", kind, len(value)) + value


def make(args):
    if args.body:
        with open(args.body, "rb") as f:
            body = f.read()
    else:
        body = random.Random(args.seed).randbytes(args.size)
    major, minor, rev, build = args.version
    prot = b""
    if args.protected:
        entries = tlv(TLV_SEC_CNT, struct.pack("<I", build))
        prot = struct.pack("<HH", TLV_PROT_INFO, 4 + len(entries)) + entries
    flags = F_NON_BOOTABLE if args.non_bootable else 0
    header = struct.pack("<IIHHIIBBHII", MAGIC, args.load_addr, args.hdr_size, len(prot),
                         len(body), flags, major, minor, rev, build, 0)
    assert len(header) == 32
    image = header + b"\0" * (args.hdr_size - len(header)) + body + prot
    digest = bytearray(hashlib.sha256(image).digest())
    if args.bad_hash:
        digest[0] ^= 0xFF
    entries = tlv(TLV_SHA256, bytes(digest))
    image += struct.pack("<HH", TLV_INFO, 4 + len(entries)) + entries
    if args.pad:
        if args.pad < len(image):
            sys.exit("mcuboot-image.py: --pad %d is smaller than the image (%d bytes)"
                     % (args.pad, len(image)))
        image += b"\xff" * (args.pad - len(image))
    return image, bytes(digest)


def main():
    p = argparse.ArgumentParser(description="Make an unsigned MCUboot image for tests.")
    p.add_argument("--version", type=parse_version, required=True)
    p.add_argument("--size", type=int, default=16384, help="random body bytes (default 16384)")
    p.add_argument("--body", help="take the body from this file instead")
    p.add_argument("--seed", type=int, default=1, help="seed of the random body")
    p.add_argument("--hdr-size", type=lambda s: int(s, 0), default=0x200)
    p.add_argument("--load-addr", type=lambda s: int(s, 0), default=0)
    p.add_argument("--protected", action="store_true", help="add a protected TLV area")
    p.add_argument("--non-bootable", action="store_true")
    p.add_argument("--bad-hash", action="store_true", help="a SHA-256 TLV that does not match")
    p.add_argument("--pad", type=int, default=0, help="pad with 0xff to this many bytes")
    p.add_argument("--print-hash", action="store_true", help="print the hash TLV's value")
    p.add_argument("out")
    args = p.parse_args()
    if args.hdr_size < 32 or args.hdr_size > 0xFFFF:
        p.error("--hdr-size must be 32 to 65535")
    image, digest = make(args)
    with open(args.out, "wb") as f:
        f.write(image)
    if args.print_hash:
        print(digest.hex())


if __name__ == "__main__":
    main()
