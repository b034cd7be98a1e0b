"""The judge's cost of reading `analysis.metrics` over Prometheus' HTTP API, in CPU of the judging
process per look (target: <= 5% of one core at 1 look per second).

A loopback server in a child process answers /api/v1/query in Prometheus' format (no Prometheus
binary on this machine), so its CPU is not counted; the judging process runs `LiveJudge` looks
(router windows from the fake source plus the metric queries) and measures its own CPU time
(`time.process_time`). Anchor, same run: the same looks with no metrics (the router-only judge).

Run: .venv/bin/python bench/judge_queries.py [--looks 300] [--runs 3] [--metrics 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln.analysis.live import LiveJudge
from kiln.analysis.prometheus import PrometheusQuery
from kiln.platforms.base import Sample
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.rollout.decide import start
from kiln.spec.models import Analysis, Metric


def _serve(port: Any) -> None:
    answer = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [0, "1234"]}]}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    server.serve_forever()


def metric(i: int) -> Metric:
    return Metric(name=f"m{i}", kind="count", max_increase=0.01,
                  failures=f'sum(increase(f{i}{{release="$release"}}[$window]))',
                  total=f'sum(increase(t{i}{{release="$release"}}[$window]))')


def cpu_per_look(url: str | None, looks: int, k: int) -> float:
    """Seconds of this process's CPU per look: router windows (20 + 180 requests a second)
    and, with `url`, k count metrics asked over HTTP."""
    analysis = Analysis(metrics=[metric(i) for i in range(k)] if url else [])
    source = FakeMetricSource()
    judge = LiveJudge(source, "web", analysis, queries=PrometheusQuery(url) if url else None)
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    t0 = time.time()
    batches = [[Sample(rel, t0 + sec + i / n, 200, 0.05, False)
                for rel, n in (("web-r2", 20), ("web-r1", 180)) for i in range(n)]
               for sec in range(looks)]
    cpu = time.process_time()
    for sec, batch in enumerate(batches):
        source.feed(batch)
        judge(status, t0 + sec + 1)
    return (time.process_time() - cpu) / looks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--looks", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--metrics", type=int, default=1)
    args = ap.parse_args()
    port = multiprocessing.Value("i", 0)
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while port.value == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port.value}"
        router, with_metrics = [], []
        for _ in range(args.runs):  # alternating, so load swings hit both
            router.append(cpu_per_look(None, args.looks, 0))
            with_metrics.append(cpu_per_look(url, args.looks, args.metrics))
        extra = [m - r for m, r in zip(with_metrics, router, strict=True)]

        def row(name: str, xs: list[float]) -> str:
            return (f"| {name} | {' / '.join(f'{1000 * x:.2f}' for x in sorted(xs))} ms | "
                    f"{100 * statistics.median(xs):.2f}% |")

        print(f"{args.runs} runs x {args.looks} looks, {args.metrics} count metric(s) "
              f"({4 * args.metrics} queries per look)")
        print("| judge process CPU per look | min / median / max | % of one core at 1 look/s "
              "(median) |")
        print("|---|---|---|")
        print(row("router only (anchor)", router))
        print(row("router + metrics over HTTP", with_metrics))
        print(row("the metrics' share", extra))
    finally:
        server.terminate()
        server.join(timeout=5)


if __name__ == "__main__":
    main()
