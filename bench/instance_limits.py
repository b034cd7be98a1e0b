"""What an instance's limits cost at launch (issue 20): `LocalCompute.launch` of one sandboxed
instance with its cgroup (made, limited, joined before exec) against the same launch without one,
interleaved in one run; and the rotating log pump's own start against a bare exec of the command.

    .venv/bin/python bench/instance_limits.py --runs 15

Needs root (cgroups) and bubblewrap. Prints a markdown table (min / median / max) and writes
the raw numbers to bench/results/instance_limits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln import logpump
from kiln.platforms.base import Image, Release, ReleaseImage
from kiln.platforms.local import cgroups
from kiln.platforms.local.compute import LocalCompute
from kiln.spec.models import ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register


def launch_seconds(compute: LocalCompute, image: Image, svc: ServiceSpec, n: int) -> float:
    release = Release.of(f"web-r{n}", "web", n, ReleaseImage.of(image), svc, "c")
    t0 = time.perf_counter()
    (inst,) = compute.launch("web", svc, release, image, 1, env={})
    took = time.perf_counter() - t0
    compute.terminate(inst, timeout=2.0)
    return took


def pump_seconds(folder: Path, with_pump: bool) -> float:
    argv = ["/bin/true"]
    if with_pump:
        argv = [sys.executable, "-I", "-S", logpump.__file__, str(folder / "log"),
                str(10 << 20), "2", "-", "--", *argv]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def row(name: str, values: list[float], anchor: list[float] | None = None) -> str:
    ms = [v * 1000 for v in values]
    cells = f"{min(ms):.1f} / {statistics.median(ms):.1f} / {max(ms):.1f} ms"
    if anchor:
        ratio = statistics.median(values) / statistics.median(anchor)
        return f"| {name} | {cells} | {ratio:.2f}x |"
    return f"| {name} | {cells} | 1.00x (anchor) |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if cgroups.host_hierarchy() is None:
        sys.exit("no cgroup hierarchy with memory and pids here")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-limits-") as tmp:
        base = Path(tmp)
        root = base / "image" / "root"
        root.mkdir(parents=True)
        image = Image("web", "sha256:" + "b" * 64, str(root.parent))
        svc = ServiceSpec(image="web", command="sleep 600", port=8000, listen="127.0.0.1:9")
        store = Store.open(base / "home")
        image = register(store, image)  # as a bake would: launches verify it
        limited = LocalCompute(store, base / "home", "bench-limits")
        bare = LocalCompute(store, base / "home", "bench-limits")
        bare._make_cgroup = lambda instance_id, service: (None, "none")  # type: ignore[method-assign]
        with_cg: list[float] = []
        without: list[float] = []
        pumped: list[float] = []
        direct: list[float] = []
        for i in range(args.runs + 1):  # the first round warms caches and is dropped
            a = launch_seconds(limited, image, svc, 2 * i + 1)
            b = launch_seconds(bare, image, svc, 2 * i + 2)
            c, d = pump_seconds(base, True), pump_seconds(base, False)
            if i:
                with_cg.append(a)
                without.append(b)
                pumped.append(c)
                direct.append(d)
        store.close()
    print("| launch of one sandboxed instance (min / median / max) | time | vs anchor |")
    print("|---|---|---|")
    print(row("`launch()` without a cgroup", without))
    print(row("`launch()` with its cgroup (v1: memory, pids, cpu)", with_cg, without))
    print(row("`/bin/true` exec'd directly", direct))
    print(row("`/bin/true` under the log pump", pumped, direct))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "instance_limits.json").write_text(json.dumps(
        {"launch_with_cgroup": with_cg, "launch_without": without, "pump": pumped,
         "direct": direct}, indent=1))


if __name__ == "__main__":
    main()
