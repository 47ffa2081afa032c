#!/usr/bin/python3
# An slcan adapter played by python-can 4.1's own slcan code, for tests/integration/can-slcan.sh:
# on one side of a socat pty pair it answers the host's commands (C, S, Y, O with CR) and hands
# every transmit command the host writes to python-can's slcan frame parser, then sends frames
# back with python-can's slcan formatting. So the lines gatewayd's can transport writes must parse
# with python-can's parser, and the lines python-can writes with the transport's. It reaches into
# slcanBus internals (_read, _buffer, _recv_internal): pinned by Debian's python3-can 4.1.
#
#   can-slcan-peer.py PORT --frames N [--reply ID:HEX[:ext]]... [--timeout S]
# Prints "ready", then "cmd X" per command, "frame ID ext|std DATA" per frame, "done".
import argparse
import sys
import time

import can


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port")
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--reply", action="append", default=[])
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    bus = can.Bus(interface="slcan", channel=args.port, bitrate=500000, sleep_after_open=0)
    print("ready", flush=True)
    got, end = 0, time.time() + args.timeout
    try:
        while got < args.frames:
            if time.time() > end:
                print("error: %d of %d frames" % (got, args.frames), flush=True)
                return 1
            line = bus._read(0.2)
            if not line:
                continue
            if line in ("\r", "\a"):
                continue
            body = line[:-1]
            if body[:1] in ("t", "T", "r", "R"):
                # python-can's parser takes the line back from its buffer.
                bus._buffer[:0] = line.encode()
                msg, _ = bus._recv_internal(0)
                if msg is None:
                    print("error: python-can could not parse %r" % body, flush=True)
                    return 1
                print("frame %X %s %s%s" % (msg.arbitration_id,
                                            "ext" if msg.is_extended_id else "std",
                                            "remote " if msg.is_remote_frame else "",
                                            bytes(msg.data).hex().upper()), flush=True)
                bus.serialPortOrig.write(b"Z\r" if msg.is_extended_id else b"z\r")
                got += 1
            else:
                print("cmd %s" % body, flush=True)
                bus.serialPortOrig.write(b"\r")
        for r in args.reply:
            parts = r.split(":")
            bus.send(can.Message(arbitration_id=int(parts[0], 16),
                                 is_extended_id=len(parts) > 2 and parts[2] == "ext",
                                 data=bytes.fromhex(parts[1])))
        time.sleep(0.5)
        print("done", flush=True)
        return 0
    finally:
        bus.serialPortOrig.close()


if __name__ == "__main__":
    sys.exit(main())
