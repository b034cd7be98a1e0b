"""A tiny web app configured by a file: GET / answers the configured greeting, /healthz says ok.

It reads /etc/greeter/greeter.conf (an INI file that the image's provisioner writes) once at
start, serves on $HOST:$PORT and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG = os.environ.get("GREETER_CONFIG", "/etc/greeter/greeter.conf")


def load(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise SystemExit(f"greeter: cannot read {path}")
    return dict(parser["greeter"])


class Handler(BaseHTTPRequestHandler):
    settings: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/healthz":
            body, kind = b"ok\n", "text/plain"
        else:
            body = json.dumps({"greeting": self.settings["greeting"],
                               "provisioner": self.settings.get("provisioner", "")}).encode()
            kind = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up is not the app's error: HAProxy ends every health check with
        # a TCP reset (by design), which would otherwise print a traceback now and then.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def main() -> int:
    Handler.settings = load(CONFIG)
    server = Server((os.environ.get("HOST", "127.0.0.1"),
                    int(os.environ.get("PORT", "8000"))), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
