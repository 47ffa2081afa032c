#!/usr/bin/env python3
"""What systemd would receive from gatewayd, for the integration tests, without systemd.

  sd-listen.py notify SOCKET LOG   the service manager's notification socket ($NOTIFY_SOCKET):
                                   one JSON line per datagram, {"t": monotonic s, "msg": "..."}
  sd-listen.py journal SOCKET LOG  journald's native socket (/run/systemd/journal/socket in a
                                   mount namespace of the test's own): one JSON object of fields
                                   per entry, in the native protocol's two field forms

Prints "ready" on stdout once the socket is bound, then serves until killed."""
import json, os, socket, struct, sys, time


def journal_fields(data):
    """The native journal protocol: KEY=value\n, or KEY\n + 64-bit LE length + value + \n."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.find(b"\n", i)
        if nl < 0:
            break
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode("utf-8", "replace")
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[line.decode()] = data[nl + 9:nl + 9 + n].decode("utf-8", "replace")
            i = nl + 9 + n + 1
    return fields


def main():
    mode, path, log = sys.argv[1:4]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s.bind(path)
    os.chmod(path, 0o777)
    out = open(log, "a", buffering=1)
    print("ready", flush=True)
    while True:
        data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(64))
        # Big entries come as a memfd (SCM_RIGHTS) and an empty datagram.
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fd = struct.unpack("i", payload[:4])[0]
                data = os.pread(fd, 1 << 20, 0)
                os.close(fd)
        if mode == "notify":
            out.write(json.dumps({"t": time.monotonic(), "msg": data.decode("utf-8", "replace")}) + "\n")
        else:
            out.write(json.dumps(journal_fields(data)) + "\n")


if __name__ == "__main__":
    main()
