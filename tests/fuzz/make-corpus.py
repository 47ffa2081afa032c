#!/usr/bin/env python3
# Regenerates the seed corpora in tests/fuzz/corpus/ (small valid and near-valid inputs, tens
# per target) and fuzz-manifest-keys.h. The manifest seeds are signed with two keys made here
# with openssl (Ed25519, P-256); only their public halves are kept, in the header the fuzz
# target embeds. Crash regressions (crash-*) already in the corpus are left alone.
#
# Usage: tests/fuzz/make-corpus.py [GWMANIFEST]   (GWMANIFEST: checks the valid seeds verify)
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
MANIFEST_TYPE = "application/vnd.gatewayd.manifest+yaml"
KEYS_TYPE = "application/vnd.gatewayd.keys+yaml"


def reset(target):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith("crash-"):
            os.unlink(os.path.join(d, f))
    return d


def write(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- request ----------------------------------------------------------------------------

def request_seeds():
    d = reset("request")
    small = base64.b64encode(b"kind: gatewayd/manifest\n").decode()
    big = base64.b64encode(b"x" * 1025).decode()
    seeds = {
        "url": '{"id":"spring-release-r3","manifest_url":"https://updates.example.com/m.yaml"}',
        "url-file": '{"id":"d1","manifest_url":"file:///srv/m.yaml"}',
        "url-ftp": '{"id":"d1","manifest_url":"ftp://srv/m.yaml"}',
        "url-empty": '{"id":"d1","manifest_url":""}',
        "url-long": '{"id":"d1","manifest_url":"https://h/' + "a" * 2048 + '"}',
        "url-control": '{"id":"d1","manifest_url":"https://h/a\\u0001b"}',
        "inline": '{"id":"r4","manifest":"%s"}' % small,
        "inline-too-large": '{"id":"r4","manifest":"%s"}' % big,
        "inline-bad-base64": '{"id":"r4","manifest":"a2luZA=x"}',
        "inline-no-padding": '{"id":"r4","manifest":"a2luZA"}',
        "inline-empty": '{"id":"r4","manifest":""}',
        "both": '{"id":"d1","manifest_url":"https://h/m","manifest":"%s"}' % small,
        "neither": '{"id":"d1"}',
        "no-id": '{"manifest_url":"https://h/m"}',
        "id-number": '{"id":7,"manifest_url":"https://h/m"}',
        "id-bad-chars": '{"id":"a/b","manifest_url":"https://h/m"}',
        "id-128": '{"id":"%s","manifest_url":"https://h/m"}' % ("i" * 128),
        "id-129": '{"id":"%s","manifest_url":"https://h/m"}' % ("i" * 129),
        "unknown-member": '{"id":"d1","manifest_url":"https://h/m","x":{"y":[1,2]}}',
        "too-deep": '{"id":"d1","manifest_url":"https://h/m","x":{"y":{"z":[1]}}}',
        "duplicate": '{"id":"d1","id":"d2","manifest_url":"https://h/m"}',
        "nul-escape": '{"id":"d\\u0000","manifest_url":"https://h/m"}',
        "array": '[{"id":"d1"}]',
        "string": '"d1"',
        "truncated": '{"id":"d1","manifest_url":"https:',
        "whitespace": " \n\t ",
        "cancel": '{"id":"spring-release-r3"}',
        "cancel-extra": '{"id":"d1","reason":"operator"}',
    }
    for name, text in seeds.items():
        write(d, name, text)
    write(d, "bad-utf8", b'{"id":"d1","manifest_url":"https://h/\xc3\x28"}')
    write(d, "empty", b"")


# ---- config -----------------------------------------------------------------------------

MINIMAL_CONFIG = "gateway: { id: gw-1 }\ntrust: { keys: keys.yaml }\n"


def config_seeds():
    d = reset("config")
    with open(os.path.join(HERE, "..", "..", "docs", "gatewayd.example.yaml")) as f:
        example = f.read()
    node = ("nodes:\n  - name: node-1\n    class: demo-mcu\n    hardware: { chip-id: \"0x413\" }\n"
            "    transport: { type: uart, port: /dev/ttyUSB0, baud: 115200 }\n"
            "    protocol: { type: ymodem, ack-timeout-ms: 5000 }\n")
    seeds = {
        "example": example,
        "minimal": MINIMAL_CONFIG,
        "public-keys": "gateway: { id: gw-1 }\ntrust:\n  public-keys: [a.pub, /etc/b.pub]\n"
                       "  threshold: 2\n",
        "threshold-too-high": "gateway: { id: gw-1 }\ntrust: { public-keys: [a.pub], threshold: 2 }\n",
        "keys-and-public": "gateway: { id: gw-1 }\ntrust: { keys: k.yaml, public-keys: [a.pub] }\n",
        "no-trust": "gateway: { id: gw-1 }\n",
        "no-gateway": "trust: { keys: k.yaml }\n",
        "node": MINIMAL_CONFIG + node,
        "nodes-duplicate": MINIMAL_CONFIG + node + node[len("nodes:\n"):],
        "node-dotdot": MINIMAL_CONFIG + node.replace("node-1", ".."),
        "node-no-transport": MINIMAL_CONFIG + "nodes:\n  - name: n\n    protocol: { type: ymodem }\n",
        "node-usb-options": MINIMAL_CONFIG + "nodes:\n  - name: b\n"
                            "    transport: { type: usb, usb: \"0483:df11,serial=A,path=1-2.3\","
                            " dfu-usb: \"1209:0001\" }\n"
                            "    protocol: { type: dfu, alt: \"Internal Flash\", address: 0x08004000,"
                            " leave: false, transfer-size: 2048 }\n",
        "node-bad-options": MINIMAL_CONFIG + "nodes:\n  - name: c\n"
                            "    transport: { type: uart, port: /dev/ttyS0, baudrate: 9600,"
                            " parity: space }\n"
                            "    protocol: { type: ymodem, retries: -1, ack-timeout: 5 }\n",
        "tls": MINIMAL_CONFIG + "mqtt:\n  tls: { ca: ca.pem, cert: c.pem, key: c.key, insecure: true }\n",
        "tls-cert-only": MINIMAL_CONFIG + "mqtt: { tls: { cert: c.pem } }\n",
        "tls-empty": MINIMAL_CONFIG + "mqtt: { tls: {} }\n",
        "password-alone": MINIMAL_CONFIG + "mqtt: { password: x }\n",
        "reconnect-inverted": MINIMAL_CONFIG + "mqtt: { reconnect-min: 10, reconnect-max: 5 }\n",
        "prefix-wildcard": MINIMAL_CONFIG + "mqtt: { prefix: gw/+/x }\n",
        "port-range": MINIMAL_CONFIG + "mqtt: { port: 65536 }\n",
        "port-hex": MINIMAL_CONFIG + "mqtt: { port: 0x50 }\n",
        "log-level-bad": MINIMAL_CONFIG + "log-level: verbose\n",
        "unknown-key": MINIMAL_CONFIG + "colour: blue\n",
        "limits": MINIMAL_CONFIG + "limits: { manifest-size: 1023, image-size: 1 }\n",
        "fetch": MINIMAL_CONFIG + "fetch: { min-rate: 0, rate-window: 3600, deadline: 1,"
                                  " connect-timeout: 600 }\n",
        "anchor": "gateway: &g { id: gw-1 }\nother: *g\ntrust: { keys: k.yaml }\n",
        "tag": "gateway: !!map { id: gw-1 }\ntrust: { keys: k.yaml }\n",
        "two-documents": MINIMAL_CONFIG + "---\n" + MINIMAL_CONFIG,
        "deep": "a: " + "[" * 12 + "]" * 12 + "\n",
        "list-root": "- gateway\n- trust\n",
        "gateway-id-long": "gateway: { id: %s }\ntrust: { keys: k.yaml }\n" % ("g" * 65),
        "duplicate-key": "gateway: { id: a }\ngateway: { id: b }\ntrust: { keys: k.yaml }\n",
        "bad-syntax": "gateway: { id: gw-1\ntrust: [\n",
        "comment-only": "# nothing here\n",
    }
    for name, text in seeds.items():
        write(d, name, text)
    write(d, "empty", b"")


# ---- manifest ---------------------------------------------------------------------------

BODY = """kind: gatewayd/manifest
format: 1
id: spring-release-r3
sequence: 42
expires: 2031-06-30T00:00:00Z
gateway: { hardware: [gw-imx8-rev2, gw-imx8-rev3] }
policy: { atomic: true, parallel: 8, canary: 1 }
images:
  - name: motor-ctrl
    version: 1.4.2
    targets: { class: stm32f4-motor }
    hardware: { chip-id: 0x413 }
    protocol: stm32-rom
    options: { address: 0x08000000, verify: true }
    size: 131072
    sha256: 5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c
    url: images/motor-ctrl-1.4.2.bin
    mirrors: [https://mirror.example/motor-ctrl-1.4.2.bin]
  - name: sensor
    version: "2.0"
    targets: { nodes: [sensor-1, sensor-2] }
    protocol: ymodem
    size: 1000
    sha256: 0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef
    url: https://updates.example.com/sensor-2.0.bin
"""


class Key:
    def __init__(self, tmp, name, algo):
        self.priv = os.path.join(tmp, name + ".pem")
        self.pub = os.path.join(tmp, name + ".pub")
        self.algo = algo
        args = ["-algorithm", "ED25519"] if algo == "ed25519" else \
            ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        subprocess.run(["openssl", "genpkey"] + args + ["-out", self.priv], check=True)
        subprocess.run(["openssl", "pkey", "-in", self.priv, "-pubout", "-out", self.pub],
                       check=True)
        der = subprocess.run(["openssl", "pkey", "-pubin", "-in", self.pub, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.keyid = hashlib.sha256(der).hexdigest()
        with open(self.pub) as f:
            self.pem = f.read()

    def sign(self, tmp, ptype, body):
        pae = b"DSSEv1 %d %s %d " % (len(ptype), ptype.encode(), len(body)) + body
        pae_file = os.path.join(tmp, "pae.bin")
        with open(pae_file, "wb") as f:
            f.write(pae)
        if self.algo == "ed25519":
            cmd = ["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", self.priv, "-in", pae_file]
        else:
            cmd = ["openssl", "dgst", "-sha256", "-sign", self.priv, pae_file]
        sig = subprocess.run(cmd, check=True, capture_output=True).stdout
        return base64.b64encode(sig).decode()


def envelope(tmp, body, keys, ptype=MANIFEST_TYPE):
    """body + "---" + a signatures document with a signature by each key."""
    b = body.encode()
    if not keys:
        return b + b"---\nsignatures: []\n"
    sigs = "".join("  - keyid: %s\n    sig: %s\n" % (k.keyid, k.sign(tmp, ptype, b)) for k in keys)
    return b + b"---\nsignatures:\n" + sigs.encode()


def keys_doc(version, threshold, keys):
    doc = "kind: gatewayd/keys\nformat: 1\nversion: %d\nthreshold: %d\nkeys:\n" % (version,
                                                                                   threshold)
    for k in keys:
        doc += "  - public: |\n" + "".join("      %s\n" % l for l in k.pem.splitlines())
    return doc


def c_string_lines(pem):
    return "".join('"%s\\n"' % l for l in pem.splitlines())


def write_keys_header(ed, p256):
    lines = [
        "/* Generated by make-corpus.py: the public halves of the keys that signed the seeds in",
        " * corpus/manifest/ (the private halves were thrown away). fuzz-manifest.c trusts each",
        " * alone. */",
        "#pragma once",
        "",
    ]
    for name, k in (("FUZZ_KEY_ED25519_PEM", ed), ("FUZZ_KEY_P256_PEM", p256)):
        lines.append("#define %s \\" % name)
        pem_lines = k.pem.splitlines()
        for i, l in enumerate(pem_lines):
            lines.append('        "%s\\n"%s' % (l, " \\" if i + 1 < len(pem_lines) else ""))
    path = os.path.join(HERE, "fuzz-manifest-keys.h")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if shutil.which("clang-format"):
        subprocess.run(["clang-format", "-i", path], check=True)


def manifest_seeds(gwmanifest):
    d = reset("manifest")
    tmp = tempfile.mkdtemp(prefix="gw-fuzz-keys-")
    try:
        ed = Key(tmp, "ed", "ed25519")
        p256 = Key(tmp, "p256", "p256")
        other = Key(tmp, "other", "ed25519")  # not trusted by the fuzz target
        write_keys_header(ed, p256)

        valid = {
            "valid-ed25519": envelope(tmp, BODY, [ed]),
            "valid-p256": envelope(tmp, BODY, [p256]),
            "valid-both": envelope(tmp, BODY, [p256, ed]),
            "valid-untrusted-first": envelope(tmp, BODY, [other, ed]),
            "valid-fraction-leapday": envelope(
                tmp, BODY.replace("2031-06-30T00:00:00Z", "2032-02-29T00:00:00.5Z"), [ed]),
            "valid-node-target": envelope(
                tmp, BODY.replace("{ class: stm32f4-motor }", "{ node: motor-1 }"), [p256]),
            "valid-no-gateway": envelope(
                tmp, BODY.replace("gateway: { hardware: [gw-imx8-rev2, gw-imx8-rev3] }\n", ""),
                [ed]),
            "valid-document-start": envelope(tmp, "---\n" + BODY, [ed]),
        }
        for name, data in valid.items():
            write(d, name, data)
        signed = {
            "expired": BODY.replace("2031-06-30", "2029-06-30"),
            "sequence-equal": BODY.replace("sequence: 42", "sequence: 41"),
            "sequence-lower": BODY.replace("sequence: 42", "sequence: 7"),
            "gateway-incompatible": BODY.replace("gw-imx8-rev2, gw-imx8-rev3", "gw-rpi4"),
            "schema-two-targets": BODY.replace("{ class: stm32f4-motor }",
                                               "{ class: stm32f4-motor, node: m1 }"),
            "schema-duplicate-image": BODY.replace("name: sensor", "name: motor-ctrl"),
            "schema-bad-sha": BODY.replace("sha256: 5f0c", "sha256: 5g0c"),
            "schema-string-integer": BODY.replace("size: 1000", 'size: "1000"'),
            "schema-feb-30": BODY.replace("2031-06-30", "2031-02-30"),
            "schema-unknown-field": BODY + "extra: 1\n",
            "body-anchor": BODY.replace("policy: {", "policy: &p {") + "x: *p\n",
            "body-syntax": BODY.replace("targets: { nodes: [sensor-1, sensor-2] }",
                                        "targets: { nodes: [sensor-1, sensor-2 }"),
            "body-tag": BODY.replace("format: 1", "format: !!int 1"),
        }
        for name, body in signed.items():
            write(d, name, envelope(tmp, body, [ed]))
        good = envelope(tmp, BODY, [ed])
        body, sigs = good.split(b"---\n", 1)
        sig_line = [l for l in sigs.split(b"\n") if b"sig:" in l][0]
        flipped = sig_line[:-3] + (b"A" if sig_line[-3:-2] != b"A" else b"B") + sig_line[-2:]
        write(d, "bad-signature", good.replace(sig_line, flipped))
        write(d, "body-tampered", good.replace(b"sequence: 42", b"sequence: 43"))
        write(d, "untrusted-only", envelope(tmp, BODY, [other]))
        write(d, "unsigned-empty-list", envelope(tmp, BODY, []))
        write(d, "unsigned-bare", BODY)
        write(d, "sigs-dashes-at-eof", BODY.encode() + b"---")
        write(d, "sigs-dashes-cr", BODY.encode() + b"---\r\nsignatures: []\n")
        write(d, "sigs-keyid-upper", good.replace(ed.keyid.encode(), ed.keyid.upper().encode()))
        write(d, "sigs-not-base64", good.replace(sig_line, b"    sig: not+base64!"))
        write(d, "sigs-duplicate", good + sigs.split(b"signatures:\n", 1)[1])
        write(d, "sigs-not-a-list", body + b"---\nsignatures: { keyid: x }\n")
        write(d, "two-dashes-lines", body + b"---\n" + body + b"---\nsignatures: []\n")

        # Trust roots: provisioned (signatures not checked), and rotations from the Ed25519
        # root (version 1) the fuzz target holds.
        write(d, "keys-provisioned", envelope(tmp, keys_doc(1, 2, [ed, p256]), [], KEYS_TYPE))
        write(d, "keys-threshold-too-high",
              envelope(tmp, keys_doc(1, 3, [ed, p256]), [], KEYS_TYPE))
        write(d, "keys-duplicate-key", envelope(tmp, keys_doc(1, 1, [ed, ed]), [], KEYS_TYPE))
        write(d, "keys-rotation", envelope(tmp, keys_doc(2, 1, [ed, p256]), [ed], KEYS_TYPE))
        write(d, "keys-rotation-p256",
              envelope(tmp, keys_doc(2, 1, [p256]), [ed, p256], KEYS_TYPE))
        write(d, "keys-rotation-not-self-signed",
              envelope(tmp, keys_doc(2, 1, [p256]), [ed], KEYS_TYPE))
        write(d, "keys-rotation-version-skip",
              envelope(tmp, keys_doc(3, 1, [ed]), [ed], KEYS_TYPE))
        write(d, "keys-bad-pem", envelope(tmp, keys_doc(1, 1, [ed]).replace("MC", "Mc", 1), [],
                                           KEYS_TYPE))

        if gwmanifest:
            for name in valid:
                args = [gwmanifest, "verify", "--quiet", "--key", ed.pub, "--key", p256.pub,
                        os.path.join(d, name)]
                subprocess.run(args, check=True)
    finally:
        shutil.rmtree(tmp)


# ---- ymodem -----------------------------------------------------------------------------
# fuzz-ymodem.c's input: size (2 bytes, little-endian), modes (retries | name << 2 |
# reader << 5), then actions: (n - 1) << 3 | 0 delivers the next n bytes, 3 expires the
# deadline, 4 | t << 3 advances the clock by t * 250 ms, 5 is an early timeout, 6 cancels,
# 7 fails the next write.

C, ACK, NAK, CAN = b"C", b"\x06", b"\x15", b"\x18"


def deliver(data):
    out = b""
    for i in range(0, len(data), 32):
        chunk = data[i:i + 32]
        out += bytes([(len(chunk) - 1) << 3]) + chunk
    return out


def blocks(size):
    """How many data blocks the sender uses for size bytes."""
    n = 0
    while size > 0:
        if size >= 1024 or (size + 127) // 128 * 134 >= 1030:
            size -= min(size, 1024)
        else:
            size -= min(size, 128)
        n += 1
    return n


def ymodem(size, retries=2, name=0, reader=0):
    return struct.pack("<HB", size, retries | name << 2 | reader << 5)


def transfer(size, **kw):
    """A whole transfer the way lrzsz rb answers: C, ACK, C, ACK per block, NAK ACK for EOT,
    C, ACK for the end of the batch."""
    out = ymodem(size, **kw) + deliver(C) + deliver(ACK) + deliver(C)
    for _ in range(blocks(size)):
        out += deliver(ACK)
    return out + deliver(NAK) + deliver(ACK) + deliver(C) + deliver(ACK)


def ymodem_seeds():
    d = reset("ymodem")
    for size in (0, 1, 128, 129, 1000, 1024, 1025, 3000, 8192):
        write(d, "transfer-%d" % size, transfer(size))
    for name in range(8):
        write(d, "name-mode-%d" % name, transfer(300, name=name))
    write(d, "reader-short", transfer(3000, reader=1))
    write(d, "reader-fails", transfer(3000, reader=2))
    write(d, "reader-truncated", transfer(3000, reader=3))
    write(d, "no-receiver", ymodem(100) + b"\x03\x03")
    write(d, "checksum-receiver", ymodem(100) + deliver(NAK * 3) + b"\x03")
    write(d, "header-lost", ymodem(100) + deliver(C) + deliver(C) + deliver(ACK) + deliver(C))
    write(d, "block-naks", ymodem(2000, retries=3) + deliver(C + ACK) + deliver(C) +
          deliver(NAK) + deliver(NAK) + deliver(ACK) + deliver(NAK) + b"\x03\x03\x03\x03")
    write(d, "timeouts", ymodem(500, retries=1) + deliver(C) + b"\x03" + deliver(ACK) +
          b"\x03\x03" + deliver(C) + b"\x03\x03")
    write(d, "receiver-cancels", ymodem(500) + deliver(C) + deliver(ACK) + deliver(C) +
          deliver(CAN + CAN))
    write(d, "single-can-noise", ymodem(100) + deliver(C) + deliver(CAN + ACK) + deliver(C) +
          deliver(ACK))
    write(d, "cancel", ymodem(5000) + deliver(C) + deliver(ACK) + deliver(C) + b"\x06")
    write(d, "link-fails", ymodem(100) + b"\x07" + deliver(C))
    write(d, "early-and-advance", ymodem(100) + b"\x05" + bytes([4 | 31 << 3]) + deliver(C) +
          b"\x05" + bytes([4 | 20 << 3]) * 3 + deliver(ACK))
    write(d, "end-ack-lost", transfer(10)[:-2] + b"\x03")
    write(d, "noise", ymodem(200) + deliver(b"xyz\x00\xff" + C + b"garbage" + ACK))


# ---- exec --------------------------------------------------------------------------------
def chunks(data, size=200):
    """A tool's output as fuzz-exec.c reads it: a length byte before each chunk."""
    out = b""
    for i in range(0, len(data), size):
        c = data[i:i + size]
        out += bytes([len(c)]) + c
    return out


def exec_seeds():
    d = reset("exec")
    # The set-up byte: mode (0 percent, 1 done/total, 2 identify, 3 identify with a pattern)
    # plus 4 * (size / 1000).
    bar = b"".join(b"Writing: [%-20s] %3d%%\r" % (b"#" * (p // 5), p) for p in range(0, 101, 7))
    write(d, "percent-bar", bytes([0 + 4 * 50]) + chunks(bar + b"\nDone\n"))
    write(d, "percent-ofl", bytes([0 + 4 * 3]) + chunks(
        b"\x1b[94mdetected xvcServer\x1b[0m\r\nload program\r\n\x1b[94m\rFlash SRAM: [\x1b[0m"
        b"=====      \x1b[94m] 43.98%\x1b[0m\rFlash SRAM: [==========] 100.00%\r\nDone\r\n"))
    write(d, "percent-overflow", bytes([0 + 4 * 1]) + chunks(b"150% 99999% 1.999% 100%\n"))
    write(d, "done-total", bytes([1 + 4 * 9]) + chunks(
        b"".join(b"block %d/37\n" % i for i in range(38)) + b"block 40/37\n0/0\n"))
    write(d, "identify", bytes([2]) + chunks(
        b"Scanning\nidcode=0x0362d093\nFamily: sim-fpga\n  version = 1.2.3  \nempty=\n"
        + b"".join(b"k%d=v\n" % i for i in range(40)) + b"long=" + b"x" * 300 + b"\n"))
    write(d, "identify-pattern", bytes([3]) + chunks(
        b"index 0:\n\tidcode 0x362d093\n\tmanufacturer xilinx\n\tfamily artix a7 35t\n"))
    write(d, "long-line", bytes([0]) + chunks(b"x" * 3000 + b" 50%\n"))
    write(d, "escapes", bytes([2]) + chunks(
        b"\x1b]0;title\x07a=1\n\x1b[1;31mb=2\x1b[0m\n\x1b\x1b[c=3\n\x01\xff\tk=\xc3\xa9\n"))
    write(d, "crlf", bytes([0 + 4 * 2]) + chunks(b"a\r\nb\r\r\nc 10%\r\n\r\n\n"))
    write(d, "empty", b"")


def main():
    gwmanifest = sys.argv[1] if len(sys.argv) > 1 else None
    request_seeds()
    config_seeds()
    manifest_seeds(gwmanifest)
    ymodem_seeds()
    exec_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print("%s: %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
