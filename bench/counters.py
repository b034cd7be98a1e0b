"""The price of the judge's cross-check: one `request_counts()` reading per router, against the
router's own `verify()` read-back (what every rollout pass already pays), same run.

Each router (Traefik, HAProxy) routes one service of two releases with `--servers` servers each
(stdlib backends in threads), after `--requests` requests through it so its counters are not
empty. Per round, `--calls` readings of each, interleaved; prints min / median / max per call and
the ratio to verify(), and the share of time a reading every 2 s (COUNTER_EVERY) costs; writes
bench/results/counters-<time>.json.

    .venv/bin/python bench/counters.py [--rounds 5] [--calls 100] [--servers 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kiln.analysis.live import COUNTER_EVERY
from kiln.platforms.base import Backend
from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.router import TraefikRouter
from kiln.platforms.local.traefik_process import free_port, read_pidfile
from kiln.spec.models import ServiceSpec
from kiln.state.lock import pid_alive


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # routers reset idle keep-alive connections at the end


def backends(n: int, stack: contextlib.ExitStack) -> list[str]:
    out = []
    for i in range(n):
        srv = _Server((f"127.0.0.{2 + i}", 0), _Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        stack.callback(srv.server_close)
        stack.callback(srv.shutdown)
        out.append(f"127.0.0.{2 + i}:{srv.server_address[1]}")
    return out


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    print(f"{args.rounds} rounds x {args.calls} calls, 2 releases x {args.servers} servers",
          flush=True)
    rows: list[str] = []
    with contextlib.ExitStack() as stack:
        servers = backends(2 * args.servers, stack)
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-bench-")))
        routers: dict[str, TraefikRouter | HAProxyRouter] = {
            "traefik": TraefikRouter(home / "t", "bench"),
            "haproxy": HAProxyRouter(home / "h", "bench")}
        for router in routers.values():
            stack.callback(_stop, router)
            listen = f"127.0.0.1:{free_port()}"
            svc = ServiceSpec(image="web", command="x", listen=listen,
                              health={"path": "/", "interval": "1s", "timeout": "1s"})
            router.set_backends("web", svc, [
                Backend("web-r1", 90, servers[:args.servers]),
                Backend("web-r2", 10, servers[args.servers:])])
            host, _, port = listen.rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            for _ in range(args.requests):
                conn.request("GET", "/")
                conn.getresponse().read()
            conn.close()
            counts = router.request_counts()
            assert counts is not None and sum(counts.releases.values()) >= args.requests, counts
        results: dict[str, dict[str, list[float]]] = {
            n: {"request_counts": [], "verify": []} for n in routers}
        for _ in range(args.rounds):
            for name, router in routers.items():
                results[name]["request_counts"].append(
                    statistics.median(timed(router.request_counts, args.calls)))
                results[name]["verify"].append(
                    statistics.median(timed(partial(router.verify, "web"), args.calls)))
        for name, per in results.items():
            rc, vf = per["request_counts"], per["verify"]
            ratios = [a / b for a, b in zip(rc, vf, strict=True)]
            share = statistics.median(rc) / 1000 / COUNTER_EVERY
            rows.append(f"{name:8} request_counts {min(rc):6.2f} / {statistics.median(rc):6.2f} / "
                        f"{max(rc):6.2f} ms   verify {min(vf):6.2f} / {statistics.median(vf):6.2f}"
                        f" / {max(vf):6.2f} ms   ratio {min(ratios):.2f}x / "
                        f"{statistics.median(ratios):.2f}x / {max(ratios):.2f}x   "
                        f"every {COUNTER_EVERY:g}s: {share:.3%} of the time")
    print("per call, min / median / max of the rounds' medians:")
    print("\n".join(rows))
    out = Path(__file__).resolve().parent / "results" / f"counters-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "ms_per_call": results}, indent=2))
    print(f"raw numbers: {out}")
    return 0


def _stop(router: TraefikRouter | HAProxyRouter) -> None:
    try:
        router.stop()
    finally:
        running = read_pidfile(router.pid_path)
        if running is not None and pid_alive(running.pid, running.start):
            os.kill(running.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
