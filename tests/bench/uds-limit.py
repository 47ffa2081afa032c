#!/usr/bin/env python3
"""The limit of a UDS download over can-sim's bus (tests/bench/uds-throughput.sh), from the
simulator's model (docs/simulators.md, can-sim) and nothing the host did: every frame the
exchange needs is built here from the image's bytes (ISO-TP normal addressing, BS 0, STmin 0,
frames padded to 8 bytes with 0xCC on both sides), its length on the wire counted here bit by bit
(ISO 11898-1 classic base frame: SOF, 11-bit id, RTR, IDE, r0, DLC, data, CRC-15, stuff bits after
five equal bits from SOF to the end of the CRC, then CRC delimiter, ACK slot and delimiter, 7 bits
of EOF and the 3-bit intermission), and the ECU's modelled times added: its reaction time before a
flow control or an answer, its programming time per block, its erase time, its reset. The frames
are then laid end to end with no host turnaround at all.

It also reads can-sim's --trace of the run: what the host took (the download: the first
TransferData's first frame to the last TransferData's answer; the install: DiagnosticSessionControl
to the answer of the poll after the reset), and checks the bit counts here against the
simulator's, frame by frame (two independent counts of the same frames).

Usage: uds-limit.py IMAGE TRACE REPORT ADDRESS  (prints key=value lines and the arithmetic)"""
import json
import sys
import zlib

PAD = 0xCC


def crc15(bits):
    crc = 0
    for b in bits:
        nxt = b ^ ((crc >> 14) & 1)
        crc = (crc << 1) & 0x7FFF
        if nxt:
            crc ^= 0x4599
    return crc


def frame_bits(can_id, data):
    """Bits on the wire of a classic data frame with an 11-bit id, intermission included."""
    seq = [0]                                             # SOF
    seq += [(can_id >> (10 - i)) & 1 for i in range(11)]  # identifier
    seq += [0, 0, 0]                                      # RTR, IDE, r0 (dominant)
    seq += [(len(data) >> (3 - i)) & 1 for i in range(4)]  # DLC
    for byte in data:
        seq += [(byte >> (7 - i)) & 1 for i in range(8)]
    crc = crc15(seq)
    seq += [(crc >> (14 - i)) & 1 for i in range(15)]
    stuff, run, last = 0, 0, None
    for b in seq:
        if b == last:
            run += 1
        else:
            last, run = b, 1
        if run == 5:            # a stuff bit of the other value follows, and starts a run
            stuff += 1
            last, run = 1 - b, 1
    return len(seq) + stuff + 1 + 2 + 7 + 3, stuff


def isotp_frames(msg):
    """The frames of one ISO-TP message, each padded to 8 bytes."""
    if len(msg) <= 7:
        out = [bytes([len(msg)]) + msg]
    else:
        out = [bytes([0x10 | (len(msg) >> 8), len(msg) & 0xFF]) + msg[:6]]
        sn, off = 1, 6
        while off < len(msg):
            out.append(bytes([0x20 | sn]) + msg[off:off + 7])
            sn, off = (sn + 1) & 0xF, off + 7
    return [f + bytes([PAD]) * (8 - len(f)) for f in out]


class Bus:
    """Frames laid end to end, with the ECU's modelled delays between them."""

    def __init__(self, bitrate):
        self.bitrate = bitrate
        self.t = 0              # ns
        self.frames = 0
        self.bits = 0
        self.stuff = 0
        self.wait_ns = 0        # ECU reaction, programming, erase, reset
        self.expected = []      # (sender, id, data) in order

    def frame(self, sender, can_id, data):
        bits, stuff = frame_bits(can_id, data)
        self.t += -(-bits * 10**9 // self.bitrate)   # the simulator rounds each frame up
        self.frames += 1
        self.bits += bits
        self.stuff += stuff
        self.expected.append((sender, can_id, data.hex(), bits))

    def wait(self, ns):
        self.t += ns
        self.wait_ns += ns

    def request(self, tx, rx, msg, react_ns, busy_ns=None, pending=False):
        """A request and its answer: the ECU's flow control after a first frame (reaction
        time), the answer after the reaction time or, for an operation, once it is done
        (measured from the request's last frame, as can-sim does; a 0x78 first when it is
        longer than P2, which the bus carries meanwhile)."""
        frames = isotp_frames(msg)
        self.frame("host", tx, frames[0])
        if len(frames) > 1:
            self.wait(react_ns)
            self.frame("ecu", rx, bytes([0x30, 0, 0]) + bytes([PAD]) * 5)
            for f in frames[1:]:
                self.frame("host", tx, f)
        return frames


def load_trace(path):
    rows = []
    for line in open(path):
        f = line.split()
        if len(f) < 7:
            continue
        rows.append({"ready": int(f[0]), "start": int(f[1]), "end": int(f[2]), "from": f[3],
                     "id": int(f[4], 16), "bits": int(f[5]), "stuff": int(f[6]),
                     "data": f[7] if len(f) > 7 else ""})
    return rows


def main():
    image = open(sys.argv[1], "rb").read()
    rows = load_trace(sys.argv[2])
    report = json.load(open(sys.argv[3]))
    address = int(sys.argv[4], 0)
    ecu = report["ecus"][0]
    tm = ecu["timing"]
    tx, rx = int(ecu["tx"], 16), int(ecu["rx"], 16)
    bitrate = report["bus"]["bitrate"]
    react = tm["response_us"] * 1000
    prog = tm["program_ms_per_block"] * 10**6
    block = tm["block_length"]
    page = tm["page_size"]
    p2, p2star = tm["p2_ms"], tm["p2star_ms"]

    # The install in the trace: from DiagnosticSessionControl extended to the poll's answer.
    i0 = next(i for i, r in enumerate(rows) if r["from"] == "host" and r["data"].startswith("021003"))
    i1 = max(i for i, r in enumerate(rows) if r["from"] != "host" and r["data"].startswith("027e00"))
    inst = rows[i0:i1 + 1]
    seed = next(bytes.fromhex(r["data"][6:14]) for r in inst if r["data"].startswith("066701"))
    key = next(bytes.fromhex(r["data"][6:14]) for r in inst if r["data"].startswith("062702"))

    bus = Bus(bitrate)
    sf = lambda payload: payload + bytes([PAD]) * (8 - len(payload))  # noqa: E731
    session_rsp = lambda s: sf(bytes([6, 0x50, s, p2 >> 8, p2 & 0xFF,  # noqa: E731
                                      (p2star // 10) >> 8, (p2star // 10) & 0xFF]))
    phases = []

    def phase(name, fn):
        t0, w0 = bus.t, bus.wait_ns
        fn()
        phases.append((name, bus.t - t0, bus.wait_ns - w0))

    def simple(msg, rsp):
        def run():
            bus.request(tx, rx, msg, react)
            bus.wait(react)
            bus.frame("ecu", rx, rsp)
        return run

    size = len(image)
    a4, s4 = address.to_bytes(4, "big"), size.to_bytes(4, "big")
    pages = (address % page + size + page - 1) // page
    erase_ns = pages * tm["erase_ms_per_page"] * 10**6

    def erase():
        bus.request(tx, rx, bytes([0x31, 0x01, 0xFF, 0x00, 0x44]) + a4 + s4, react)
        if erase_ns > p2 * 10**6:
            # 0x78 at once; the final answer when the erase is done, counted from the request.
            t_req = bus.t
            bus.wait(react)
            bus.frame("ecu", rx, sf(bytes([3, 0x7F, 0x31, 0x78])))
            bus.wait(max(0, erase_ns - (bus.t - t_req)))
        else:
            bus.wait(erase_ns)
        bus.frame("ecu", rx, sf(bytes([5, 0x71, 0x01, 0xFF, 0x00, 0x00])))

    phase("DiagnosticSessionControl extended", simple(bytes([0x10, 0x03]), session_rsp(3)))
    phase("DiagnosticSessionControl programming", simple(bytes([0x10, 0x02]), session_rsp(2)))
    phase("SecurityAccess seed", simple(bytes([0x27, 0x01]), sf(bytes([6, 0x67, 0x01]) + seed)))
    phase("SecurityAccess key", simple(bytes([0x27, 0x02]) + key, sf(bytes([2, 0x67, 0x02]))))
    phase("ReadDataByIdentifier F1A0 (resume point)",
          simple(bytes([0x22, 0xF1, 0xA0]), sf(bytes([7, 0x62, 0xF1, 0xA0, 0, 0, 0, 0]))))
    phase("RoutineControl erase (%d pages)" % pages, erase)
    phase("RequestDownload", simple(bytes([0x34, 0x00, 0x44]) + a4 + s4,
                                    sf(bytes([4, 0x74, 0x20, (block + 2) >> 8, (block + 2) & 0xFF]))))

    dl_t0, dl_w0, dl_f0, dl_b0, dl_s0 = bus.t, bus.wait_ns, bus.frames, bus.bits, bus.stuff
    n_blocks, ctr = 0, 1
    per_block = []
    for off in range(0, size, block):
        t0 = bus.t
        data = image[off:off + block]
        bus.request(tx, rx, bytes([0x36, ctr]) + data, react)
        bus.wait(prog if prog > 0 else react)
        bus.frame("ecu", rx, sf(bytes([2, 0x76, ctr])))
        per_block.append(bus.t - t0)
        ctr, n_blocks = (ctr + 1) & 0xFF, n_blocks + 1
    dl_ns, dl_wait = bus.t - dl_t0, bus.wait_ns - dl_w0
    dl_frames, dl_bits, dl_stuff = bus.frames - dl_f0, bus.bits - dl_b0, bus.stuff - dl_s0
    phases.append(("TransferData x %d" % n_blocks, dl_ns, dl_wait))

    crc = zlib.crc32(image) & 0xFFFFFFFF
    phase("RequestTransferExit", simple(bytes([0x37]), sf(bytes([1, 0x77]))))
    phase("RoutineControl check (CRC-32)",
          simple(bytes([0x31, 0x01, 0x02, 0x02]) + crc.to_bytes(4, "big"),
                 sf(bytes([5, 0x71, 0x01, 0x02, 0x02, 0x00]))))

    def reset():
        bus.request(tx, rx, bytes([0x11, 0x01]), react)
        deaf_until = bus.t + react + 2 * 10**6 + tm["reset_ms"] * 10**6
        bus.wait(react)
        bus.frame("ecu", rx, sf(bytes([2, 0x51, 0x01])))
        # The poll must end once the ECU listens again.
        poll_ns = -(-frame_bits(tx, sf(bytes([2, 0x3E, 0x00])))[0] * 10**9 // bitrate)
        bus.wait(max(0, deaf_until - poll_ns - bus.t))
        bus.request(tx, rx, bytes([0x3E, 0x00]), react)
        bus.wait(react)
        bus.frame("ecu", rx, sf(bytes([2, 0x7E, 0x00])))
    phase("ECUReset, %d ms deaf, TesterPresent" % tm["reset_ms"], reset)

    # What the host took, from the trace.
    blocks_ff = [r for r in inst if r["from"] == "host" and r["data"][:1] == "1" and r["data"][4:6] == "36"]
    rsp = [r for r in inst if r["from"] != "host" and r["data"].startswith("0276")]
    meas_dl = rsp[-1]["end"] - blocks_ff[0]["start"]
    meas_inst = inst[-1]["end"] - inst[0]["start"]

    # Two counts of the same frames: here and the simulator's.
    got = [(r["from"] if r["from"] == "host" else "ecu", r["id"], r["data"], r["bits"]) for r in inst]
    same_frames = [(s, i, d) for s, i, d, _ in got] == [(s, i, d) for s, i, d, _ in bus.expected]
    bits_agree = same_frames and all(g[3] == e[3] for g, e in zip(got, bus.expected))

    raw111 = 8 * bitrate / 111
    raw135 = 8 * bitrate / 135
    out = {
        "bitrate": bitrate, "image": size, "blocks": n_blocks, "block": block,
        "program_ms": tm["program_ms_per_block"], "response_us": tm["response_us"],
        "dl_limit_s": dl_ns / 1e9, "dl_measured_s": meas_dl / 1e9,
        "dl_ratio": dl_ns / meas_dl, "dl_rate": size / (meas_dl / 1e9), "dl_limit_rate": size / (dl_ns / 1e9),
        "install_limit_s": bus.t / 1e9, "install_measured_s": meas_inst / 1e9,
        "install_ratio": bus.t / meas_inst,
        "frames_expected": bus.frames, "frames_seen": len(inst), "same_frames": same_frames,
        "bits_agree": bits_agree, "raw_rate_111": raw111, "raw_rate_135": raw135,
    }
    # The arithmetic.
    print("  model: %d bit/s, %d-byte blocks (maxNumberOfBlockLength %d), BS 0, STmin 0, ECU reaction %d us,"
          % (bitrate, block, block + 2, tm["response_us"]))
    print("         programming %d ms a block, erase %d ms a %d-byte page, reset %d ms, padding 0xCC"
          % (tm["program_ms_per_block"], tm["erase_ms_per_page"], page, tm["reset_ms"]))
    full = bytes([0x36, 1]) + image[:block]
    nf = len(isotp_frames(full))
    print("  a full block: TransferData of %d bytes = FF (6) + ceil((%d + 2 - 6) / 7) = %d CFs, the ECU's FC,"
          % (block + 2, block, nf - 1))
    print("         its answer (SF): %d frames; %d frames for the %d blocks, %d bits with %d stuff bits"
          % (nf + 2, dl_frames, n_blocks, dl_bits, dl_stuff))
    print("         (%.2f bits a frame on average: 111 bits with no stuffing, 135 at worst)"
          % (dl_bits / dl_frames))
    print("  per block: bits / bitrate + %d us (FC) + %s = %.3f ms on average (%.3f to %.3f)"
          % (tm["response_us"], ("%d ms programming" % tm["program_ms_per_block"]) if prog else
             ("%d us (answer)" % tm["response_us"]), dl_ns / n_blocks / 1e6,
             min(per_block) / 1e6, max(per_block) / 1e6))
    print("  download limit: %.4f s (%.0f B/s of image); bus raw payload rate 8 bytes a frame: %.0f B/s"
          " (111 bits) to %.0f B/s (135 bits)" % (dl_ns / 1e9, size / (dl_ns / 1e9), raw111, raw135))
    print("  fixed phases (each: request frames + %d us + answer; the ECU's own times):" % tm["response_us"])
    for name, ns, w in phases:
        print("    %-44s %9.3f ms  (of which ECU time %8.3f ms)" % (name, ns / 1e6, w / 1e6))
    print("  install limit: %.4f s" % (bus.t / 1e9))
    print("  frames: %d expected, %d on the bus%s; bit counts %s"
          % (bus.frames, len(inst), "" if same_frames else " (NOT the same frames: repeats?)",
             "agree with can-sim's, frame by frame" if bits_agree else "NOT compared / differ"))
    for k, v in out.items():
        print("%s=%s" % (k, v))


if __name__ == "__main__":
    main()
