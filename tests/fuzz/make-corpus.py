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


# ---- uds ------------------------------------------------------------------------------------
# fuzz-uds.c: three set-up bytes (link flags, image size / 4, limits), then actions: 0 + length +
# data delivers a frame from the ECU, 1 expires the deadline, 4 cancels. The ECU's side of a
# transfer is modelled here: a flow control for each request that needs first and consecutive
# frames, and the response to each.

UDS_EXPIRE = b"\x01"
UDS_CANCEL = b"\x04"


def can_frame(data):
    return b"\x00" + bytes([len(data)]) + data


def uds_pad(data):
    return data + b"\xcc" * (8 - len(data)) if len(data) < 8 else data


class Ecu:
    """What the ECU sends for a link: classic (8) or CAN FD (64) frames."""

    def __init__(self, dl=8):
        self.dl = dl

    def request(self, n):
        # A request longer than a single frame goes out after our flow control.
        sf_max = 7 if self.dl == 8 else self.dl - 2
        return can_frame(uds_pad(b"\x30\x00\x00")) if n > sf_max else b""

    def response(self, msg):
        if len(msg) <= 7:
            return can_frame(uds_pad(bytes([len(msg)]) + msg))
        out = can_frame(bytes([0x10 | len(msg) >> 8, len(msg) & 0xff]) + msg[:6])
        off, sn = 6, 1
        while off < len(msg):
            out += can_frame(uds_pad(bytes([0x20 | sn]) + msg[off:off + 7]))
            off += 7
            sn = (sn + 1) & 0x0f
        return out

    def exchange(self, req_len, msg):
        return self.request(req_len) + self.response(msg)


SESSION = b"\x50\x02\x00\x32\x01\xf4"


def uds_install(size, link=0, limits=0x3f, block=16, resume=0, ecu=None, stop=None,
                pending=0, lose=None, nrc=None, ecu_block=None):
    """An install of size bytes answered as the contract's ECU would, up to step stop."""
    e = ecu or Ecu()
    steps = []
    if link & 16:
        steps.append(("ext", e.exchange(2, b"\x50\x03\x00\x32\x01\xf4")))
    steps.append(("session", e.exchange(2, SESSION)))
    steps.append(("seed", e.exchange(2, b"\x67\x01\x00\x00\x00\x00")))
    if not link & 64:
        steps.append(("resume", e.exchange(3, b"\x62\xf1\xa0" + resume.to_bytes(4, "big"))))
    if not (resume and resume < size):
        steps.append(("erase", e.request(13) + e.response(b"\x7f\x31\x78") * pending +
                      e.response(b"\x71\x01\xff\x00\x00")))
    steps.append(("download", e.exchange(11, b"\x74\x20" +
                                         ((ecu_block or block) + 2).to_bytes(2, "big"))))
    off, counter = (resume if resume and resume < size else 0), 1
    while off < size:
        n = min(block, size - off)
        out = e.request(n + 2)
        if lose == counter:
            out += UDS_EXPIRE + e.request(n + 2)
        if nrc is not None and counter == 2:
            out += e.response(b"\x7f\x36" + bytes([nrc]))
        out += e.response(b"\x76" + bytes([counter & 0xff]))
        steps.append(("block", out))
        off += n
        counter += 1
    steps.append(("exit", e.exchange(1, b"\x77")))
    steps.append(("check", e.exchange(8, b"\x71\x01\x02\x02\x00")))
    steps.append(("reset", e.exchange(2, b"\x51\x01")))
    poll = b"\x50\x01\x00\x32\x01\xf4" if limits & 128 else b"\x7e\x00"
    steps.append(("poll", UDS_EXPIRE + e.exchange(2, poll)))
    out = bytes([link, size // 4, limits])
    for name, data in steps:
        if name == stop:
            break
        out += data
    return out


def uds_identify(link=1, serial=b"SN-0001-ABCDEF", version=b"1.4.2", hardware=None):
    e = Ecu(64 if link & 2 else 8)
    out = bytes([link, 0, 0x3f])
    out += e.exchange(3, b"\x62\xf1\x8c" + serial)
    out += e.exchange(3, b"\x62\xf1\x95" + version)
    out += e.exchange(3, b"\x62\xf1\x91" + hardware if hardware else b"\x7f\x22\x31")
    return out


def uds_seeds():
    d = reset("uds")
    for size in (4, 16, 40, 100, 1020):
        write(d, "install-%d" % size, uds_install(size))
    write(d, "install-extended-tester", uds_install(40, link=16 | 32))
    write(d, "install-no-padding", uds_install(40, link=4))
    write(d, "install-ms-host", uds_install(40, link=8))
    write(d, "install-our-bs", uds_install(40, link=128))
    write(d, "install-no-resume", uds_install(40, link=64))
    write(d, "install-fd", uds_install(200, link=2, block=100, ecu=Ecu(64)))
    write(d, "install-max-message-64", uds_install(200, limits=0x3f | 64, block=62,
                                                         ecu_block=1000))
    write(d, "install-reset-session", uds_install(40, limits=0x3f | 128))
    write(d, "resume", uds_install(40, resume=16))
    write(d, "resume-past-end", uds_install(40, resume=400))
    write(d, "pending", uds_install(40, pending=3))
    write(d, "pending-over-cap", uds_install(40, pending=5))
    write(d, "lost-response", uds_install(40, lose=2))
    write(d, "transfer-nrc", uds_install(40, nrc=0x73))
    write(d, "transfer-pending", uds_install(40, nrc=0x78))
    write(d, "transfer-busy", uds_install(40, nrc=0x21))
    for stop in ("seed", "erase", "download", "block", "check", "reset", "poll"):
        write(d, "silent-before-%s" % stop, uds_install(40, stop=stop))
    write(d, "cancel-in-transfer", uds_install(40, stop="exit")[:-8] + UDS_CANCEL +
          Ecu().response(b"\x77"))
    write(d, "cancel-early", uds_install(40, stop="seed") + UDS_CANCEL)
    e = Ecu()
    base = bytes([0, 10, 0x3f]) + e.exchange(2, SESSION) + \
        e.exchange(2, b"\x67\x01\x00\x00\x00\x00") + \
        e.exchange(3, b"\x62\xf1\xa0\x00\x00\x00\x00") + \
        e.exchange(13, b"\x71\x01\xff\x00\x00") + e.request(11)
    for name, rsp in (("lfi-1", b"\x74\x10\x12"), ("lfi-3", b"\x74\x30\x00\x00\x12"),
                      ("lfi-4", b"\x74\x40\x00\x00\x00\x12"), ("lfi-0", b"\x74\x00"),
                      ("lfi-9", b"\x74\x90\x00"), ("block-2", b"\x74\x20\x00\x02"),
                      ("block-huge", b"\x74\x40\xff\xff\xff\xff"),
                      ("download-nrc", b"\x7f\x34\x70")):
        write(d, name, base + e.response(rsp) + UDS_EXPIRE * 3)
    write(d, "seed-nonzero", bytes([0, 10, 0x3f]) + e.exchange(2, SESSION) +
          e.exchange(2, b"\x67\x01\x12\x34\x56\x78"))
    write(d, "session-nrc", bytes([0, 10, 0x3f]) + e.exchange(2, b"\x7f\x10\x22"))
    write(d, "session-busy", bytes([0, 10, 0x3f]) + e.response(b"\x7f\x10\x21") + UDS_EXPIRE +
          e.exchange(2, SESSION))
    write(d, "session-short", bytes([0, 10, 0x3f]) + e.exchange(2, b"\x50\x02"))
    write(d, "identify", uds_identify())
    write(d, "identify-hardware", uds_identify(hardware=b"HW-7\x00\x00"))
    write(d, "identify-binary", uds_identify(version=b"\x01\x02\xff", serial=b"\x00"))
    write(d, "identify-fd", uds_identify(link=3, serial=b"S" * 60))
    write(d, "identify-long", uds_identify(serial=b"x" * 200))
    write(d, "identify-silent", bytes([1, 0, 0]))
    write(d, "empty-image", bytes([0, 0, 0]))
    # Frames that do not parse, then a proper exchange.
    write(d, "noise", bytes([0, 10, 0x3f]) + can_frame(b"") + can_frame(b"\x00\x01") +
          can_frame(b"\x10\x00\x00\x00\x00\x05\x01\x02") + can_frame(b"\x21\x01") +
          can_frame(b"\x3f\x00\x00") + can_frame(b"\xf0" * 12) + can_frame(b"\x00\x05" + b"\x50" * 10) +
          e.exchange(2, SESSION))
    write(d, "wrong-sequence", bytes([1, 0, 0]) + can_frame(b"\x10\x10\x62\xf1\x8c\x41\x42\x43") +
          can_frame(b"\x22\x44\x45\x46\x47\x48\x49\x4a") + UDS_EXPIRE)
    write(d, "first-frame-overflow", bytes([1, 0, 0]) + can_frame(b"\x1f\xff\x62\xf1\x8c\x41\x42\x43"))
    write(d, "fc-wait-overflow", bytes([0, 10, 0x3f]) + e.exchange(2, SESSION) +
          e.exchange(2, b"\x67\x01\x00\x00\x00\x00") +
          e.exchange(3, b"\x62\xf1\xa0\x00\x00\x00\x00") +
          can_frame(uds_pad(b"\x31\x00\x00")) * 3 + can_frame(uds_pad(b"\x32\x00\x00")))


# ---- slcan ------------------------------------------------------------------------------
# The first byte chooses how the adapter's bytes are cut into reads (0: one read; n: n bytes).

def slcan_seeds():
    d = reset("slcan")
    seeds = {
        "replies": b"\x00\rz\rZ\r\a\r",
        "classic": b"\x00t12381122334455667788\rt7E80\r",
        "extended": b"\x03T1FFFFFFF80102030405060708\rT000000000\r",
        "remote": b"\x01r4564\rR1ABCDEF08\r",
        "fd": b"\x05d7E89000102030405060708090A0B\rD18DAF110F" + b"AB" * 64 + b"\r",
        "fd-brs": b"\x00b7E8A00112233445566778899AABBCCDDEEFF\rB000000011" + b"\r",
        "longest": b"\x07B1FFFFFFFF" + b"5a" * 64 + b"EA5F\r",
        "timestamps": b"\x02t7E821122ABCD\rr1230FFFF\r",
        "version": b"\x00V1013\rNA123\rF00\r",
        "malformed": b"\x04t12\rt800\rt1239\rtXYZ0\rd1239\rt1232aabbc\r\n\x00\r",
        "overlong": b"\x10t" + b"1" * 300 + b"\rt1230\r" + b"x" * 200 + b"\a",
        "bel-mid-line": b"\x00t7E8\a\at7E80\r",
        "binary": bytes([0]) + bytes(range(256)) + b"\r",
    }
    for name, data in seeds.items():
        write(d, name, data)


# ---- stm32 -------------------------------------------------------------------------------

S_ACK, S_NACK = b"\x79", b"\x1f"
S_GET_EXT = S_ACK + bytes([11, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82,
                           0x92]) + S_ACK
S_GET_LEGACY = S_ACK + bytes([11, 0x22, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x43, 0x63, 0x73,
                              0x82, 0x92]) + S_ACK
# The chips the seeds use: id, flash KiB, erase unit (page or first sectors) in KiB.
S_CHIPS = {0x410: (128, 1), 0x413: (1024, 16), 0x417: (64, 0.125), 0x460: (128, 2)}


def stm32(size, retries=2, verify=False, go=True, mass=False, reader=0, entry=False, kib=0,
          lines_fail=False, exit_seq=False):
    modes = retries | verify << 2 | go << 3 | mass << 4 | reader << 5 | entry << 7
    return struct.pack("<HBB", size, modes, kib | lines_fail << 4 | exit_seq << 5)


def stm32_image(off, n):
    """The fuzz target's image bytes [off, off + n)."""
    return bytes(((i * 167 + (i >> 8)) & 0xff) for i in range(off, off + n))


def stm32_session(size, pid=0x410, legacy=True, verify=False, go=True, mass=False, kib=0,
                  batch=16, **kw):
    """A whole install the way the ROM answers (what fuzz-stm32.c's options make it ask)."""
    out = stm32(size, verify=verify, go=go, mass=mass, kib=kib, **kw)
    if kw.get("entry"):
        out += b"\x03\x03"  # the two waits of the entry sequence
    flash_kib, unit = S_CHIPS[pid]
    out += deliver(S_ACK) + deliver(S_GET_LEGACY if legacy else S_GET_EXT)
    out += deliver(S_ACK + bytes([1, pid >> 8, pid & 0xff]) + S_ACK)
    # the flash size register
    out += deliver(S_ACK) + deliver(S_ACK) + deliver(S_ACK + struct.pack("<H", flash_kib))
    if mass:
        out += deliver(S_ACK) + deliver(S_ACK)
    else:
        start, end = kib * 1024, kib * 1024 + size
        unit_bytes = int(unit * 1024)
        pages = (end + 3) // unit_bytes - start // unit_bytes + 1 if pid != 0x413 else None
        if pid == 0x413:
            bounds = [0, 16, 32, 48, 64, 128, 256, 384, 512, 640, 768, 896, 1024]
            pages = sum(1 for i in range(12)
                        if bounds[i] * 1024 < end + 3 and bounds[i + 1] * 1024 > start)
        for _ in range((pages + batch - 1) // batch):
            out += deliver(S_ACK) + deliver(S_ACK)
    blocks = (size + 255) // 256
    for _ in range(blocks):
        out += deliver(S_ACK) + deliver(S_ACK) + deliver(S_ACK)
    if verify:
        for b in range(blocks):
            n = min(256, size - b * 256)
            out += deliver(S_ACK) + deliver(S_ACK) + deliver(S_ACK + stm32_image(b * 256, n))
    if go:
        out += deliver(S_ACK) + deliver(S_ACK)
    if kw.get("exit_seq"):
        out += b"\x03"
    return out


def stm32_seeds():
    d = reset("stm32")
    for size in (1, 4, 255, 256, 257, 1000, 3000):
        write(d, "f1-%d" % size, stm32_session(size))
    write(d, "f1-verify", stm32_session(700, verify=True))
    write(d, "f1-not-at-base", stm32_session(2000, kib=3))
    write(d, "f1-mass", stm32_session(600, mass=True))
    write(d, "f1-no-go", stm32_session(600, go=False))
    write(d, "f4-sectors", stm32_session(5000, pid=0x413, legacy=False, verify=True))
    write(d, "f4-not-at-base", stm32_session(3000, pid=0x413, legacy=False, kib=14))
    write(d, "l0-pages", stm32_session(4000, pid=0x417, legacy=False))
    write(d, "g0-double-words", stm32_session(1001, pid=0x460, legacy=False))
    write(d, "entry-exit", stm32_session(300, entry=True, exit_seq=True))
    write(d, "entry-no-lines", stm32(300, entry=True, lines_fail=True))
    write(d, "exit-no-lines", stm32_session(300, exit_seq=True, lines_fail=True))
    write(d, "reader-short", stm32_session(3000, reader=1))
    write(d, "reader-fails", stm32_session(3000, reader=2))
    write(d, "reader-truncated", stm32_session(3000, reader=3))
    write(d, "silent", stm32(100) + b"\x03" * 4)
    write(d, "sync-nack", stm32(100) + deliver(S_NACK) + deliver(S_GET_EXT))
    write(d, "sync-noise", stm32(100) + deliver(b"\x00hello\xff" + S_ACK) + b"\x03")
    write(d, "rdp", stm32(1000) + deliver(S_ACK) + deliver(S_GET_LEGACY) +
          deliver(S_ACK + b"\x01\x04\x10" + S_ACK) + deliver(S_NACK) + deliver(S_NACK))
    write(d, "unknown-chip", stm32(1000) + deliver(S_ACK) + deliver(S_GET_EXT) +
          deliver(S_ACK + b"\x01\x09\x99" + S_ACK) + deliver(S_ACK + b"\x01\x09\x99" + S_ACK))
    write(d, "too-big", stm32(8192, kib=15) + deliver(S_ACK) + deliver(S_GET_LEGACY) +
          deliver(S_ACK + b"\x01\x04\x12" + S_ACK) + deliver(S_ACK) + deliver(S_ACK) +
          deliver(S_ACK + b"\x10\x00"))
    write(d, "get-too-long", stm32(100) + deliver(S_ACK) + deliver(S_ACK + b"\xc8") + b"\x03" * 6)
    write(d, "get-id-bad-length", stm32(100) + deliver(S_ACK) + deliver(S_GET_EXT) +
          deliver(S_ACK + b"\x05") + b"\x03\x03" + deliver(S_NACK) + b"\x03" * 3)
    s = stm32_session(1000, retries=3)
    cut = len(stm32(1000)) + 60
    write(d, "timeouts-midway", s[:cut] + b"\x03\x03\x03" + deliver(S_NACK) + s[cut:])
    write(d, "nacks", stm32_session(600, retries=3)[:80] + deliver(S_NACK) + deliver(S_NACK) +
          deliver(S_ACK) * 5)
    write(d, "garbage-acks", stm32_session(600, retries=3)[:70] + deliver(b"\x42") + b"\x03\x03" +
          deliver(S_NACK) + b"\x03")
    write(d, "cancel", stm32_session(3000)[:90] + b"\x06")
    write(d, "link-fails", stm32(100) + b"\x07" + deliver(S_ACK))
    write(d, "early-and-advance", stm32(100) + b"\x05" + bytes([4 | 31 << 3]) + deliver(S_ACK) +
          b"\x05" + bytes([4 | 20 << 3]) * 3)
    write(d, "go-ack-lost", stm32_session(300)[:-2] + b"\x03")


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
    # --only TARGET...: regenerate those corpora alone.
    if len(sys.argv) > 1 and sys.argv[1] == "--only":
        for t in sys.argv[2:]:
            globals()[t.replace("-", "_") + "_seeds"]()
        return
    gwmanifest = sys.argv[1] if len(sys.argv) > 1 else None
    request_seeds()
    config_seeds()
    manifest_seeds(gwmanifest)
    ymodem_seeds()
    uds_seeds()
    slcan_seeds()
    stm32_seeds()
    exec_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print("%s: %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
