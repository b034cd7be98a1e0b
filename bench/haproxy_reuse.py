"""The connection-reuse caveat of HAProxy's dynamic servers, measured.

HAProxy refuses `del server` while the server holds any connection, in flight or idle in its
reuse pool. kiln takes a removed server out at once (maintenance: no new request reaches it) and
deletes it when HAProxy lets it. This measures, under keep-alive load (wrk), how long a replaced
server lingers before the delete succeeds, for HAProxy's default `pool-purge-delay` (5 s) and
kiln's 500 ms, and checks that no request reaches it after the switch.

    .venv/bin/python bench/haproxy_reuse.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln.platforms.base import Backend
from kiln.platforms.local import haproxy_config
from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.traefik_process import free_port
from kiln.spec.models import ServiceSpec
from router import start_fast  # bench/router.py


def one(purge: str, home: Path, a: str, b: str) -> tuple[float, int]:
    haproxy_config.POOL_PURGE_DELAY = purge
    router = HAProxyRouter(home, "bench")
    svc = ServiceSpec(image="x", command="x", listen=f"127.0.0.1:{free_port()}",
                      health={"path": "/", "interval": "1s"})
    try:
        router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
        load = subprocess.Popen(["wrk", "-t1", "-c8", "-d4s", f"http://{svc.listen}/"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # load time: let the pool fill with idle keep-alive connections
        be = haproxy_config.backend_name("web")
        old = haproxy_config.server_name("web-r1", a)
        before = _served_by(router, be, old)
        t0 = time.perf_counter()
        router.set_backends("web", svc, [Backend("web-r2", 100, [b])])
        after_switch = _served_by(router, be, old)
        deadline = time.monotonic() + 30
        while router.collect("web") and time.monotonic() < deadline:
            time.sleep(0.01)
        lingered = time.perf_counter() - t0
        late = (after_switch or 0) - (before or 0)
        load.wait(timeout=30)
        return lingered, max(0, late)
    finally:
        router.stop()


def _served_by(router: HAProxyRouter, backend: str, server: str) -> int | None:
    """Total requests HAProxy sent to `server` (stot), None once it is deleted."""
    text = router.api.run(f"show stat {backend} 4 -1")
    for line in text.splitlines():
        cells = line.split(",")
        if len(cells) > 7 and cells[1] == server:
            return int(cells[7] or 0)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = f"127.0.0.2:{free_port('127.0.0.2')}", f"127.0.0.3:{free_port('127.0.0.3')}"
        servers = [start_fast(a, Path(tmp)), start_fast(b, Path(tmp))]
        try:
            for i in range(args.runs):
                for purge in ("5s", "500ms", "100ms"):
                    lingered, late = one(purge, Path(tmp) / f"h{i}{purge}", a, b)
                    rows.setdefault(purge, []).append(lingered)
                    if late:
                        print(f"  {purge}: {late} request(s) reached the removed server")
        finally:
            for p in servers:
                p.kill()
                p.wait()
    print(f"Replaced server under keep-alive load (wrk -c8): seconds until `del server` "
          f"succeeds, min / median / max of {args.runs}\n")
    print("| pool-purge-delay | lingers (s) |\n|---|---|")
    for purge, vals in rows.items():
        print(f"| {purge} | {min(vals):.2f} / {statistics.median(vals):.2f} / {max(vals):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
