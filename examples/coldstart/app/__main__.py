"""`python -m app`: a web service that is slow while cold. For its first COLD_S seconds
(default 20) after it starts, every `/` takes COLD_MS (default 40) milliseconds more, as a
JVM's JIT or an empty cache would; after that it is fast. /healthz is always fast. Serves on
$HOST:$PORT until SIGTERM/SIGINT; says its version (app/version.txt)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

BORN = time.monotonic()
COLD_S = float(os.environ.get("COLD_S", "20"))
COLD_MS = float(os.environ.get("COLD_MS", "40"))
VERSION = (Path(__file__).with_name("version.txt").read_text().strip() or "1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(b"ok\n")
            return
        if time.monotonic() - BORN < COLD_S:
            time.sleep(COLD_MS / 1000.0)  # cold: the first requests pay for the warm-up
        self._send(f"coldstart version {VERSION}\n".encode())

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up is not the app's error: HAProxy ends every health check with
        # a TCP reset (by design), which would otherwise print a traceback now and then.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def main() -> int:
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    server = Server((host, port), Handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"coldstart version {VERSION} on {host}:{port}, cold for {COLD_S:g}s", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
