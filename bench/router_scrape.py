"""What scraping HAProxy's built-in exporter every second costs (kiln's own Prometheus, as
`metrics: {path}` runs it behind the default router).

A real HAProxy (kiln's driver) routes one service to `--servers` backend servers; a real
`EmbeddedPrometheus` (1 s interval) scrapes its exporter frontend. The CPU of HAProxy and of
Prometheus (utime+stime of their pids) is read over alternating windows: with the router's
file_sd target (scraping) and without it (the anchor: the same processes, idle), several runs.
Reported: the exporter's series per scrape, and each process's CPU in % of one core, both ways.

Run: .venv/bin/python bench/router_scrape.py [--runs 3] [--window 20] [--servers 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kiln.platforms.base import Backend
from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.traefik_process import free_port, read_pidfile
from kiln.prometheus_server import EmbeddedPrometheus
from kiln.spec.models import ServiceSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prometheus import proc_cpu


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def exporter_series(endpoint: dict[str, str]) -> int:
    """Samples in one scrape of the exporter (lines that are not comments)."""
    host, _, port = endpoint["address"].rpartition(":")
    auth = base64.b64encode(f"{endpoint['username']}:{endpoint['password']}".encode())
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", endpoint["path"], headers={"Authorization": b"Basic " + auth})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def window(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU of each pid over `seconds`, in % of one core."""
    before = {name: proc_cpu(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: 100 * (proc_cpu(pid) - before[name]) / seconds for name, pid in pids.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per window")
    ap.add_argument("--servers", type=int, default=3)
    args = ap.parse_args()
    servers = [ThreadingHTTPServer((f"127.0.0.{2 + i}", 0), _Ok) for i in range(args.servers)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        router = HAProxyRouter(home, "bench")
        prom = EmbeddedPrometheus(home)
        try:
            spec = ServiceSpec(image="web", command="x", listen=f"127.0.0.1:{free_port()}",
                               health={"path": "/healthz", "interval": "1s", "timeout": "1s"})
            addresses = [f"{h}:{p}" for h, p in (s.server_address[:2] for s in servers)]
            router.set_backends("web", spec, [Backend("web-r1", 100, addresses)])
            endpoint = router.metrics_endpoint()
            assert endpoint is not None
            prom.ensure_running()
            running = read_pidfile(router.pid_path)
            prom_running = prom.running()
            assert running is not None and prom_running is not None
            pids = {"haproxy": running.pid, "prometheus": prom_running.pid}
            series = exporter_series(endpoint)
            rows: dict[str, list[float]] = {}
            for _ in range(args.runs):
                for scraped in (True, False):
                    prom.write_targets([], endpoint if scraped else None)
                    time.sleep(6.0)  # file_sd's refresh (5 s) picks the change up
                    for name, pct in window(pids, args.window).items():
                        rows.setdefault(f"{name} {'scraping' if scraped else 'idle'}",
                                        []).append(pct)
        finally:
            prom.stop()
            router.stop()
            for srv in servers:
                srv.shutdown()
                srv.server_close()
    print(f"## Scraping HAProxy's exporter every second ({args.servers} servers, {series} "
          f"series per scrape; {args.window:g} s windows, min / median / max of {args.runs})")
    print("| process | scraping | idle (anchor) | cost |\n|---|---|---|---|")
    for name in ("haproxy", "prometheus"):
        on, off = rows[f"{name} scraping"], rows[f"{name} idle"]
        print(f"| {name} | {min(on):.2f} / {statistics.median(on):.2f} / {max(on):.2f} % | "
              f"{min(off):.2f} / {statistics.median(off):.2f} / {max(off):.2f} % | "
              f"{statistics.median(on) - statistics.median(off):+.2f} % of one core |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
