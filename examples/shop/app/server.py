"""HTTP server for the demo shop (standard library only).

Endpoints: `/` greets (GREETING, version, KILN_INSTANCE), `/healthz` answers "ok", `/version`
returns JSON, `/metrics` serves the shop's business counters in Prometheus' text format:
every `/` answered 200 is a checkout (`checkout_total`), and `checkout_failures_total` counts
those whose order was not placed. behaviour.json beside this file sets the version and injects
faults for canary demos: `checkout_failure_rate` is the fraction of checkouts that fail quietly
(the page still answers 200 at the usual speed: only the business counter shows it),
`error_rate` is the fraction of `/` requests answered 500, `extra_latency_ms` delays
each `/` answer, and `slow_share` of them (at random) take `slow_ms` more (the slow tail a
judge must not lose); `cold_s`/`cold_ms`: for its first `cold_s` seconds the process adds
`cold_ms` to each `/` (a cold start: JIT, caches). Health checks never get the faults, so only
the judge can catch a bad release.
On SIGTERM the listener closes and in-flight requests finish before the process exits.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

BEHAVIOUR_FILE = Path(__file__).with_name("behaviour.json")


@dataclass(frozen=True)
class Behaviour:
    version: str = "1"
    error_rate: float = 0.0
    extra_latency_ms: float = 0.0
    slow_share: float = 0.0
    slow_ms: float = 0.0
    cold_s: float = 0.0
    cold_ms: float = 0.0
    checkout_failure_rate: float = 0.0

    @classmethod
    def load(cls, path: Path = BEHAVIOUR_FILE) -> Behaviour:
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(version=str(data.get("version", "1")),
                   error_rate=float(data.get("error_rate", 0.0)),
                   extra_latency_ms=float(data.get("extra_latency_ms", 0.0)),
                   slow_share=float(data.get("slow_share", 0.0)),
                   slow_ms=float(data.get("slow_ms", 0.0)),
                   cold_s=float(data.get("cold_s", 0.0)),
                   cold_ms=float(data.get("cold_ms", 0.0)),
                   checkout_failure_rate=float(data.get("checkout_failure_rate", 0.0)))


class Checkouts:
    """The shop's business counters (thread-safe), served at /metrics."""

    def __init__(self) -> None:
        self.total = 0
        self.failures = 0
        self._lock = threading.Lock()

    def count(self, failed: bool) -> None:
        with self._lock:
            self.total += 1
            self.failures += failed

    def exposition(self) -> str:
        """Prometheus' text format 0.0.4: HELP and TYPE before each sample, counters ending in
        _total, one newline after the last line."""
        with self._lock:
            total, failures = self.total, self.failures
        return ("# HELP checkout_total Checkouts attempted (every / answered 200).\n"
                "# TYPE checkout_total counter\n"
                f"checkout_total {total}\n"
                "# HELP checkout_failures_total Checkouts whose order was not placed.\n"
                "# TYPE checkout_failures_total counter\n"
                f"checkout_failures_total {failures}\n")


class ShopServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], behaviour: Behaviour) -> None:
        super().__init__(address, Handler)
        self.behaviour = behaviour
        self.greeting = os.environ.get("GREETING", "hello")
        self.instance = os.environ.get("KILN_INSTANCE", "-")
        self.stopping = False
        self.born = time.monotonic()
        self.checkouts = Checkouts()
        self._busy = 0
        self._idle = threading.Condition()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up is not the app's error: HAProxy ends every health check with
        # a TCP reset (by design), which would otherwise print a traceback now and then.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Count the connection as busy from accept() on (on the accepting thread), so a request
        # that is accepted but not yet parsed when SIGTERM lands is still waited for.
        self.begin()
        super().process_request(request, client_address)

    def begin(self) -> None:
        with self._idle:
            self._busy += 1

    def end(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    timeout = 30  # an idle keep-alive connection frees its thread eventually
    server: ShopServer

    def setup(self) -> None:
        super().setup()
        self._counted = True  # by ShopServer.process_request, until the first request ends

    def do_GET(self) -> None:
        if not self._counted:
            self.server.begin()
        self._counted = False
        try:
            self._route()
        finally:
            self.server.end()

    def finish(self) -> None:
        if self._counted:  # the connection closed without a complete GET
            self._counted = False
            self.server.end()
        super().finish()

    def _route(self) -> None:
        srv, path = self.server, self.path.split("?", 1)[0]
        b = srv.behaviour
        if path == "/healthz":
            self._send(200, "ok\n")
        elif path == "/version":
            body = json.dumps({"version": b.version, "instance": srv.instance})
            self._send(200, body + "\n", "application/json")
        elif path == "/metrics":
            self._send(200, srv.checkouts.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/":
            delay = b.extra_latency_ms
            if b.slow_share > 0 and random.random() < b.slow_share:
                delay += b.slow_ms
            if b.cold_s > 0 and time.monotonic() - srv.born < b.cold_s:
                delay += b.cold_ms
            if delay > 0:
                time.sleep(delay / 1000.0)
            if b.error_rate > 0 and random.random() < b.error_rate:
                self._send(500, f"injected error (version {b.version})\n")
            else:
                failed = b.checkout_failure_rate > 0 and random.random() < b.checkout_failure_rate
                srv.checkouts.count(failed)
                self._send(200, f"{srv.greeting} from shop version {b.version} "
                                f"(instance {srv.instance})"
                                + (": order not placed, sorry\n" if failed else "\n"))
        else:
            self._send(404, "not found\n")

    def _send(self, status: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # the router keeps the access log; per-request stderr lines only slow us down


def make_server(host: str = "127.0.0.1", port: int = 8000,
                behaviour: Behaviour | None = None) -> ShopServer:
    return ShopServer((host, port), behaviour or Behaviour.load())


def serve(grace: float = 10.0) -> int:
    server = make_server(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000")))

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stopping = True
        # shutdown() waits for serve_forever to return, so it cannot run on this (its) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"shop version {server.behaviour.version} listening on {host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    drained = server.wait_idle(grace)
    print("shop stopped" if drained else "shop stopped with requests still running", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
