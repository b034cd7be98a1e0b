"""Router throughput: requests/s and p50/p99 through Traefik, kiln's HAProxy driver and a raw
HAProxy on the same config, against the backend direct, same run.

The backend is a tiny C server (bench/fastserver.c, built with gcc; `--backend app` for the demo
shop app instead), so the router is the bottleneck. kiln's TraefikRouter and HAProxyRouter each
route one service to it at weight 100; the raw HAProxy runs the very config file the driver
rendered, started by hand (the driver's anchor: it must reach >= 0.9x of it). Load is wrk
(2 threads, 32 connections, bounded duration), the targets interleaved in each round. Prints
min / median / max and the ratios, and writes bench/results/router-<time>.json.

    .venv/bin/python bench/router.py [--duration 5] [--rounds 3] [--backend fast|app]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln.platforms.base import Backend
from kiln.platforms.local.haproxy_router import HAProxyRouter
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


FAST_SERVER = ROOT / "bench" / "fastserver.c"


def start_fast(address: str, build_dir: Path) -> subprocess.Popen[bytes]:
    """The tiny C backend (bench/fastserver.c), compiled with gcc into `build_dir`."""
    binary = build_dir / "fastserver"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(FAST_SERVER)], check=True)
    host, _, port = address.rpartition(":")
    proc = subprocess.Popen([str(binary), host, port], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while http_get(f"http://{address}/", timeout=0.5)[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the fast backend did not answer on {address}")
        time.sleep(0.02)
    return proc


def start_raw_haproxy(router: HAProxyRouter, listen: str, home: Path) -> subprocess.Popen[bytes]:
    """HAProxy on the config kiln's driver rendered (same frontend, backend, servers, log
    format), started by hand on another port and admin socket: the driver's anchor."""
    text = router.config_path.read_text()
    bound = re.search(r"^\s+bind (\S+)$", text, re.M)
    assert bound is not None
    text = text.replace(f"bind {bound.group(1)}", f"bind {listen}")
    text = text.replace(str(router.socket_path), str(home / "raw.sock"))
    cfg = home / "raw.cfg"
    cfg.write_text(text)
    with open(home / "raw-access.log", "ab") as log:
        proc = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=log,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while http_get(f"http://{listen}/", timeout=0.5)[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("raw haproxy did not start")
        time.sleep(0.02)
    return proc


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """min / median / max."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", choices=["fast", "app"], default="fast",
                    help="fast: bench/fastserver.c (gcc); app: the demo shop app (Python)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    backend = f"127.0.0.2:{free_port('127.0.0.2')}"
    listens = {t: f"127.0.0.1:{free_port()}" for t in ("traefik", "haproxy", "haproxy-raw")}
    home = Path(tempfile.mkdtemp(prefix="kiln-bench-router-"))
    traefik = TraefikRouter(home / "t", "bench")
    haproxy = HAProxyRouter(home / "h", "bench")
    app = start_fast(backend, home) if args.backend == "fast" else start_app(backend)
    raw: subprocess.Popen[bytes] | None = None
    results: list[Result] = []
    try:
        for name, router in (("traefik", traefik), ("haproxy", haproxy)):
            svc = ServiceSpec(image="app", command="x", listen=listens[name],
                              health={"path": "/", "interval": "1s"})
            router.set_backends("web", svc, [Backend("web-r1", 100, [backend])])
        raw = start_raw_haproxy(haproxy, listens["haproxy-raw"], home)
        targets = {"direct": backend, **listens}
        for addr in targets.values():  # warm every path up
            wrk(f"http://{addr}/", 1, args.threads, args.connections)
        for rnd in range(1, args.rounds + 1):  # interleaved, so drift hits all alike
            for target, addr in targets.items():
                out = wrk(f"http://{addr}/", args.duration, args.threads, args.connections)
                results.append(parse_wrk(target, rnd, out))
    finally:
        traefik.stop()
        haproxy.stop()
        if raw is not None:
            os.killpg(raw.pid, signal.SIGKILL)
            raw.wait()
        stop_app(app)
        shutil.rmtree(home, ignore_errors=True)

    def vals(target: str, field: str) -> list[float]:
        return [float(getattr(r, field)) for r in results if r.target == target]

    def med(target: str, field: str) -> float:
        return statistics.median(vals(target, field))

    print(f"Router throughput: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
          f"{args.rounds} interleaved rounds, backend {args.backend}, Traefik {router_version()}, "
          f"{haproxy_version()}, {os.cpu_count()} CPUs\n")
    print(table(results))
    print("\n| target | req/s min / median / max | p99 ms min / median / max | errors |")
    print("|---|---|---|---|")
    for t in targets:
        print(f"| {t} | {spread(vals(t, 'rps'))} | {spread(vals(t, 'p99_ms'), '{:.2f}')} | "
              f"{int(sum(vals(t, 'errors')))} |")
    ratios = {
        "haproxy driver / raw haproxy (req/s)": med("haproxy", "rps") / med("haproxy-raw", "rps"),
        "traefik / raw haproxy (req/s)": med("traefik", "rps") / med("haproxy-raw", "rps"),
        "traefik / haproxy driver (req/s)": med("traefik", "rps") / med("haproxy", "rps"),
        "traefik / direct (req/s)": med("traefik", "rps") / med("direct", "rps"),
        "haproxy driver / direct (req/s)": med("haproxy", "rps") / med("direct", "rps"),
        "traefik / haproxy driver (p99)": med("traefik", "p99_ms") / med("haproxy", "p99_ms"),
        "traefik / raw haproxy (p99)": med("traefik", "p99_ms") / med("haproxy-raw", "p99_ms"),
    }
    print("\n| ratio (medians) | value |\n|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f}x |")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"router-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "results": [asdict(r) for r in results],
                                "ratios": ratios}, indent=2))
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 1 if any(r.errors for r in results) else 0


def haproxy_version() -> str:
    res = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"version (\S+)", res.stdout)
    return f"HAProxy {m.group(1) if m else '?'}"


def router_version() -> str:
    from kiln.platforms.local.traefik_process import traefik_binary

    res = subprocess.run([traefik_binary(), "version"], capture_output=True, text=True,
                         timeout=10)
    m = re.search(r"Version:\s+(\S+)", res.stdout)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
