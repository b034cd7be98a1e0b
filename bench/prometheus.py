"""kiln's own Prometheus (Debian's binary, as `metrics: {path}` runs it): scrape-to-verdict delay
and the CPU cost of the judge's queries.

Two exporters in this process stand for a baseline (web-r1, 180 checkouts/s) and a canary
(web-r2, 20/s), scraped by a real `EmbeddedPrometheus` (1 s interval, file_sd targets).

Delay: a `LiveJudge` looks 10x a second (the reconciler's tick) with count metrics on
checkout_failures_total; at a random moment the canary's counter jumps by 10,000 failures, and
the delay is the time until a look returns `fail`. Anchor, same run, same judge: queries
answered from the exporters' own counters (no Prometheus), so what is left is the judge's query
cadence (`QUERY_EVERY`, 1 s); the difference is what scraping adds.

CPU: Prometheus' own CPU (utime+stime of its pid) plus this process's CPU inside the queries,
over a window where the judge asks k count metrics at 1 look/s, minus Prometheus' CPU over an
equal window with no queries (scraping only: the anchor), alternating, several runs.

Run: .venv/bin/python bench/prometheus.py [--trials 10] [--runs 3] [--window 20] [--metrics 3]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kiln.analysis.live import LiveJudge
from kiln.analysis.prometheus import MetricQuery, PrometheusQuery
from kiln.platforms.base import Sample
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.prometheus_config import SCRAPE_INTERVAL, Target
from kiln.prometheus_server import EmbeddedPrometheus
from kiln.rollout.decide import start
from kiln.spec.models import Analysis, Metric

RATES = {"web-r1": 180, "web-r2": 20}
TICK = 0.05


class Counters:
    """checkout_total / checkout_failures_total per release, grown by a ticker thread, with
    their history (for the anchor's direct answers)."""

    def __init__(self) -> None:
        self.values = {(name, rel): 0.0 for rel in RATES
                       for name in ("checkout_total", "checkout_failures_total")}
        self.history: list[tuple[float, dict[tuple[str, str], float]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def tick(self) -> None:
        while not self.stop.wait(TICK):
            with self.lock:
                for rel, rate in RATES.items():
                    self.values[("checkout_total", rel)] += rate * TICK
                self.history.append((time.time(), dict(self.values)))
                del self.history[:-4000]

    def jump(self, release: str, n: float) -> None:
        with self.lock:
            self.values[("checkout_total", release)] += n
            self.values[("checkout_failures_total", release)] += n

    def text(self, release: str) -> str:
        with self.lock:
            return "".join(f"# TYPE {name} counter\n{name} {self.values[(name, release)]}\n"
                           for name in ("checkout_total", "checkout_failures_total"))

    def increase(self, name: str, release: str, window: float) -> float | None:
        """What `increase(name[window])` would say if scraped continuously."""
        with self.lock:
            now = self.values[(name, release)]
            old = next((v for t, v in self.history if t >= time.time() - window), None)
        return None if old is None else now - old[(name, release)]


class DirectQuery:
    """The anchor: the judge's queries answered from the exporters' counters at once."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def query(self, expr: str, at: float) -> float | None:
        m = re.fullmatch(r'sum\(increase\((\w+)\{release="([\w-]+)"\}\[(\d+)s\]\)\)', expr)
        assert m, expr
        return self.counters.increase(m.group(1), m.group(2), float(m.group(3)))


class TimedQuery:
    """A MetricQuery that adds up this process's CPU inside the queries."""

    def __init__(self, inner: PrometheusQuery) -> None:
        self.inner, self.cpu = inner, 0.0

    def query(self, expr: str, at: float) -> float | None:
        c = time.process_time()
        try:
            return self.inner.query(expr, at)
        finally:
            self.cpu += time.process_time() - c


def exporter(counters: Counters, release: str, host: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = counters.text(release).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def metric(i: int) -> Metric:
    # Every metric asks the same counters (what k metrics cost is k times their queries).
    return Metric(name=f"checkout_failures_{i}", kind="count", max_increase=0.01,
                  failures='sum(increase(checkout_failures_total{release="$release"}[$window]))',
                  total='sum(increase(checkout_total{release="$release"}[$window]))')


def new_judge(queries: MetricQuery, k: int) -> tuple[LiveJudge, Any, FakeMetricSource]:
    source = FakeMetricSource()
    judge = LiveJudge(source, "web", Analysis(metrics=[metric(i) for i in range(k)]),
                      queries=queries)
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    return judge, status, source


def look(judge: LiveJudge, status: Any, source: FakeMetricSource, now: float) -> str:
    """One reconciler look: healthy router traffic on both sides, then the verdict."""
    source.feed([Sample(rel, now - 0.05 + i / (1000 * n), 200, 0.05, False)
                 for rel, n in (("web-r2", 2), ("web-r1", 18)) for i in range(n)])
    verdict = judge(status, now)
    return verdict.outcome if verdict is not None else "none"


def delay(counters: Counters, queries: MetricQuery, rng: random.Random) -> float:
    """Seconds from the canary's failure jump to the first look that fails it."""
    time.sleep(2.5)  # the last trial's jump out of the new judge's first window
    judge, status, source = new_judge(queries, 1)
    warm = time.monotonic() + 2.0 + rng.uniform(0, 1.0)  # a random phase against the scrapes
    while time.monotonic() < warm:
        assert look(judge, status, source, time.time()) != "fail"
        time.sleep(0.1)
    t_fault = time.monotonic()
    counters.jump("web-r2", 10_000)
    give_up = t_fault + 15.0
    while time.monotonic() < give_up:
        if look(judge, status, source, time.time()) == "fail":
            return time.monotonic() - t_fault
        time.sleep(0.1)
    raise SystemExit("bench: the judge never failed the canary within 15 s")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_window(prom_pid: int, seconds: float, url: str | None, k: int) -> tuple[float, float]:
    """(Prometheus CPU s, this process's query CPU s) over `seconds`, the judge looking 10x a
    second when `url` is given (it asks once a second), idle otherwise."""
    timed = TimedQuery(PrometheusQuery(url)) if url else None
    judge = new_judge(timed, k) if timed else None
    c0 = proc_cpu(prom_pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if judge is not None:
            look(*judge, time.time())
        time.sleep(0.1)
    return proc_cpu(prom_pid) - c0, timed.cpu if timed else 0.0


def spread(xs: list[float], fmt: Callable[[float], str]) -> str:
    return " / ".join(fmt(x) for x in (min(xs), statistics.median(xs), max(xs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--metrics", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counters = Counters()
    threading.Thread(target=counters.tick, daemon=True).start()
    servers = {rel: exporter(counters, rel, f"127.0.0.{2 + i}") for i, rel in enumerate(RATES)}
    home = Path(tempfile.mkdtemp(prefix="kiln-bench-prom-"))
    prom = EmbeddedPrometheus(home)
    try:
        url = prom.ensure_running()
        prom.write_targets([Target(f"{rel}-1", "web", rel,
                                   f"{s.server_address[0]}:{s.server_address[1]}", "/metrics")
                            for rel, s in servers.items()], None)
        probe = PrometheusQuery(url)
        give_up = time.monotonic() + 30
        while (probe.query('count(up{job="kiln-instances"} == 1)', time.time()) or 0) < 2:
            if time.monotonic() > give_up:
                raise SystemExit("bench: Prometheus never scraped both exporters")
            time.sleep(0.2)
        time.sleep(3 * SCRAPE_INTERVAL)  # a few samples per series before the first trial
        running = prom.running()
        assert running is not None
        load1 = os.getloadavg()[0]
        via, direct = [], []
        for _ in range(args.trials):  # alternating, so load swings hit both
            via.append(delay(counters, probe, rng))
            direct.append(delay(counters, DirectQuery(counters), rng))
        # The interval Prometheus really kept: scrapes per second of the canary's target.
        scrapes = probe.query('count_over_time(up{release="web-r2"}[20s])', time.time()) or 0
        interval = 20.0 / scrapes if scrapes else float("nan")
        costs, idle_cpu, busy_cpu, client_cpu = [], [], [], []
        for _ in range(args.runs):
            idle, _ = cpu_window(running.pid, args.window, None, 0)
            busy, client = cpu_window(running.pid, args.window, url, args.metrics)
            idle_cpu.append(idle / args.window)
            busy_cpu.append(busy / args.window)
            client_cpu.append(client / args.window)
            costs.append((busy - idle + client) / args.window)
        load2 = os.getloadavg()[0]
    finally:
        prom.stop()
        counters.stop.set()
        for s in servers.values():
            s.shutdown()
            s.server_close()

    ms = lambda x: f"{1000 * x:.0f} ms"  # noqa: E731
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    added = [v - d for v, d in zip(via, direct, strict=True)]
    print(f"scrape interval {SCRAPE_INTERVAL:.1f} s configured, {interval:.2f} s kept; "
          f"{args.trials} trials each; load average {load1:.2f} at the start, {load2:.2f} at "
          "the end (2 cores, shared)")
    print("| failure jump -> `fail` verdict | min / median / max | in scrape intervals (max) |")
    print("|---|---|---|")
    print(f"| judge over kiln's Prometheus | {spread(via, ms)} | "
          f"{max(via) / SCRAPE_INTERVAL:.2f} |")
    print(f"| judge over the counters directly (anchor) | {spread(direct, ms)} | "
          f"{max(direct) / SCRAPE_INTERVAL:.2f} |")
    print(f"| what scraping adds (paired) | {spread(added, ms)} | "
          f"{max(added) / SCRAPE_INTERVAL:.2f} |")
    print()
    print(f"{args.runs} runs x {args.window:.0f} s windows, {args.metrics} count metric(s) "
          f"({4 * args.metrics} queries a look, 1 look/s)")
    print("| CPU, share of one core | min / median / max |")
    print("|---|---|")
    print(f"| Prometheus scraping only (anchor) | {spread(idle_cpu, pct)} |")
    print(f"| Prometheus while the judge asks | {spread(busy_cpu, pct)} |")
    print(f"| judge process inside the queries | {spread(client_cpu, pct)} |")
    print(f"| the queries' cost (Prometheus' extra + judge's) | {spread(costs, pct)} |")


if __name__ == "__main__":
    main()
