#!/usr/bin/env python3
"""A hostile HTTP server for the attack tests: serves the files of a directory, with the
behaviour chosen by the first path segment, and logs every path requested (one per line).

  /<file>                  the file as it is
  /wrong/<file>            the same number of bytes, every byte inverted
  /endless/<file>          the file, then random bytes for ever, no Content-Length
  /trickle/<rate>/<file>   the file at <rate> bytes per second (with Content-Length)
  /drop/<n>/<file>         serves byte ranges (206, Content-Range, a strong ETag) but cuts
                           every connection after <n> body bytes: a client must resume
  /norange/<n>/<file>      ignores Range (always 200, the whole file) and cuts every
                           connection after <n> body bytes: a client cannot finish

Each request is logged as its path, followed by " range=<start>" when it asked for a range.

Usage: evil-http.py --dir DIR --port PORT --log FILE
"""
import argparse
import http.server
import os
import sys
import threading
import time

LOG_LOCK = threading.Lock()


def make_handler(root, log_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # quiet: the request log below is what counts
            pass

        def _file(self, rel):
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(path):
                return None
            with open(path, "rb") as f:
                return f.read()

        def _send(self, data, length=True):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def _range_start(self):
            h = self.headers.get("Range", "")
            if h.startswith("bytes=") and h.endswith("-") and h[6:-1].isdigit():
                return int(h[6:-1])
            return None

        def _cut(self, data, start, n, ranges):
            """Sends data from start (a 206 when ranges), then hangs up after n bytes."""
            total = len(data)
            if ranges and start is not None and 0 < start < total:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            else:
                start = 0
                self.send_response(200)
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"%08x"' % (hash(data) & 0xFFFFFFFF))
            self.send_header("Content-Length", str(total - start))
            self.end_headers()
            self.wfile.write(data[start:start + n])
            self.wfile.flush()
            # An abrupt end: no more bytes than that, whatever Content-Length said.
            self.connection.shutdown(2)

        def do_GET(self):
            start = self._range_start()
            with LOG_LOCK, open(log_path, "a", encoding="utf-8") as log:
                log.write(self.path + (f" range={start}" if start is not None else "") + "\n")
            parts = self.path.lstrip("/").split("/")
            try:
                if parts[0] == "wrong" and len(parts) >= 2:
                    data = self._file("/".join(parts[1:]))
                    if data is None:
                        return self.send_error(404)
                    self._send(data)
                    self.wfile.write(bytes(b ^ 0xFF for b in data))
                elif parts[0] == "endless" and len(parts) >= 2:
                    data = self._file("/".join(parts[1:]))
                    if data is None:
                        return self.send_error(404)
                    self._send(data, length=False)
                    self.wfile.write(data)
                    end = time.monotonic() + 30  # the client is expected to hang up long before
                    while time.monotonic() < end:
                        self.wfile.write(os.urandom(16384))
                elif parts[0] == "trickle" and len(parts) >= 3:
                    rate = max(1, int(parts[1]))
                    data = self._file("/".join(parts[2:]))
                    if data is None:
                        return self.send_error(404)
                    self._send(data)
                    chunk = max(1, rate // 10)
                    for off in range(0, len(data), chunk):
                        self.wfile.write(data[off:off + chunk])
                        self.wfile.flush()
                        time.sleep(chunk / rate)
                elif parts[0] in ("drop", "norange") and len(parts) >= 3:
                    n = max(1, int(parts[1]))
                    data = self._file("/".join(parts[2:]))
                    if data is None:
                        return self.send_error(404)
                    self._cut(data, start, n, parts[0] == "drop")
                else:
                    data = self._file("/".join(parts))
                    if data is None:
                        return self.send_error(404)
                    self._send(data)
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
                pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(a.dir, a.log))
    srv.daemon_threads = True
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
