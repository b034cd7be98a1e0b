"""Router overhead: requests/s and p50/p99 through Traefik vs direct to one instance, same run.

The backend is the demo shop app (stdlib ThreadingHTTPServer) in a subprocess on loopback; the
router is kiln's TraefikRouter with that one instance at weight 100. Load is wrk (2 threads,
32 connections, bounded duration), direct first (the anchor), then through Traefik, for each
round. Prints a markdown table and the ratios against the direct anchor, and writes the figures
to bench/results/router-<time>.json.

    .venv/bin/python bench/router.py [--duration 5] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln.platforms.base import Backend
from kiln.platforms.local.router import TraefikRouter
from kiln.platforms.local.traefik_process import free_port, http_get
from kiln.spec.models import ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "shop"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Result:
    target: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(target: str, rnd: int, out: str) -> Result:
    """wrk --latency output -> Result (errors: non-2xx/3xx plus socket errors)."""
    def find(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if not m:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return m.group(1)

    rps = float(find(r"Requests/sec:\s+([\d.]+)"))
    total = int(find(r"(\d+) requests in"))
    p50 = _seconds(find(r"^\s+50%\s+(\S+)"))
    p99 = _seconds(find(r"^\s+99%\s+(\S+)"))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return Result(target, rnd, total, rps, p50 * 1000, p99 * 1000, errors)


def wrk(url: str, duration: float, threads: int, connections: int) -> str:
    res = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True, text=True, timeout=duration + 30, check=True)
    return res.stdout


def start_app(address: str) -> subprocess.Popen[bytes]:
    host, _, port = address.rpartition(":")
    env = dict(os.environ, HOST=host, PORT=port, KILN_INSTANCE="bench")
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=APP_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while http_get(f"http://{address}/healthz", timeout=0.5)[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the bench app did not get healthy on {address}")
        time.sleep(0.05)
    return proc


def stop_app(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def table(results: list[Result]) -> str:
    lines = ["| target | round | requests | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.target} | {r.round} | {r.requests} | {r.rps:.0f} | {r.p50_ms:.2f} "
                     f"| {r.p99_ms:.2f} | {r.errors} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    backend = f"127.0.0.2:{free_port('127.0.0.2')}"
    listen = f"127.0.0.1:{free_port()}"
    home = Path(tempfile.mkdtemp(prefix="kiln-bench-router-"))
    router = TraefikRouter(home, "bench")
    app = start_app(backend)
    results: list[Result] = []
    try:
        svc = ServiceSpec(image="app", command="python -m app", listen=listen)
        router.set_backends("web", svc, [Backend("web-r1", 100, [backend])])
        for url in (f"http://{backend}/", f"http://{listen}/"):  # warm both paths up
            wrk(url, 1, args.threads, args.connections)
        for rnd in range(1, args.rounds + 1):
            for target, addr in (("direct", backend), ("traefik", listen)):
                out = wrk(f"http://{addr}/", args.duration, args.threads, args.connections)
                results.append(parse_wrk(target, rnd, out))
    finally:
        router.stop()
        stop_app(app)
        shutil.rmtree(home, ignore_errors=True)

    def mean(target: str, field: str) -> float:
        vals: list[float] = [getattr(r, field) for r in results if r.target == target]
        return float(sum(vals)) / len(vals)

    ratios = {f: mean("traefik", f) / mean("direct", f) for f in ("rps", "p50_ms", "p99_ms")}
    print(f"Router overhead: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
          f"demo shop app (1 instance), Traefik {router_version()}, {os.cpu_count()} CPUs\n")
    print(table(results))
    print()
    print("| ratio traefik/direct | req/s | p50 | p99 |\n|---|---|---|---|")
    print(f"| | {ratios['rps']:.2f}x | {ratios['p50_ms']:.2f}x | {ratios['p99_ms']:.2f}x |")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"router-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": [asdict(r) for r in results],
                                "ratios": ratios}, indent=2))
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 1 if any(r.errors for r in results) else 0


def router_version() -> str:
    from kiln.platforms.local.traefik_process import traefik_binary

    res = subprocess.run([traefik_binary(), "version"], capture_output=True, text=True,
                         timeout=10)
    m = re.search(r"Version:\s+(\S+)", res.stdout)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
