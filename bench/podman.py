"""Bench: the podman platform, each number against an anchor measured in the same run.

1. No-op bake of a cached 10-step image (5 copies, 5 runs) on the Debian base: `kiln bake`
   (console script) vs plain `podman build` of the very Containerfile kiln generates, with the
   same staged context, all layers cached. Interleaved, N runs, min/median/max; target <= 1.1x.
2. Canary of 3 containers (the podman-shop example, judged canary) under 150 req/s through
   Traefik: failed requests of all sent (target 0 of >= 5,000).
3. Launch-to-healthy of one instance of the same app (the shop): a podman container vs a local
   sandboxed process, interleaved, N runs; the ratio of the medians.

    .venv/bin/python bench/podman.py [--runs 7] [--skip-canary]

Results: bench/results/podman-<time>.json and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bake import timed, write_part  # bench/bake.py: a timed subprocess; the bench's files
from kiln.platforms.base import Image, Release, ReleaseImage
from kiln.platforms.local.builder import LocalBuilder
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.podman import containerfile
from kiln.platforms.podman.builder import PodmanBuilder, stage
from kiln.platforms.podman.compute import PodmanCompute
from kiln.spec.loader import parse_spec
from kiln.spec.models import Health, ImageSpec, ServiceSpec
from kiln.state.store import Store
from kiln.testing.load import Load
from kiln.testing.podman import BASE, ensure_base, make_project, teardown_project, unusable
from kiln.testing.project import judged_canary, wait_for

REPO = Path(__file__).resolve().parent.parent
KILN = REPO / ".venv" / "bin" / "kiln"
RESULTS = REPO / "bench" / "results"
SHOP_APP = REPO / "examples" / "shop" / "app"
STEPS = 10


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def fmt(xs: list[float]) -> str:
    s = spread(xs)
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


# ---------------------------------------------------------------------- 1. no-op bake

def bake_project(folder: Path) -> None:
    base = json.dumps(BASE.model_dump())
    yaml = ["project: benchpodman", "platform: podman", "images:", "  bench:",
            f"    base: {base}", "    steps:"]
    for i in range(STEPS // 2):
        write_part(folder, i)
        yaml += [f"      - copy: part{i}/", f"        to: part{i}/",
                 f"      - run: echo step{i} > /tmp/step{i}.txt && cp /tmp/step{i}.txt ."]
    (folder / "kiln.yaml").write_text("\n".join(yaml) + "\n")


def plain_podman_context(folder: Path, base_id: str, context: Path) -> list[str]:
    """The Containerfile kiln generates for the bench image, and its staged context; the
    `podman build` command that builds it (the anchor)."""
    spec = parse_spec((folder / "kiln.yaml").read_text()).images["bench"]
    numbers = list(range(1, len(spec.steps) + 1))
    staged = stage(spec, folder, context, numbers)
    store = Store.open(folder / ".kiln")
    try:
        key = PodmanBuilder(store, folder / ".kiln", "benchpodman").keys(spec, folder, base_id)[-1]
    finally:
        store.close()
    text = containerfile.render(base_id, spec.steps, staged,
                                {"kiln.image": "bench", "kiln.key": key}, "bench")
    (context / "Containerfile").write_text(text)
    return ["podman", "build", "--layers", "--pull=never", "--format", "oci", "-q",
            "-t", f"localhost/kiln/benchpodman-bench:{key[:16]}", "-f",
            str(context / "Containerfile"), str(context)]


def bench_noop_bake(work: Path, runs: int) -> dict[str, object]:
    folder = work / "bake"
    folder.mkdir()
    bake_project(folder)
    env = {**os.environ, "KILN_HOME": str(folder / ".kiln")}
    timed([str(KILN), "bake"], folder, env)  # builds (or finds every layer cached)
    context = work / "bake-context"
    context.mkdir()
    podman_cmd = plain_podman_context(folder, ensure_base(work / "base"), context)
    timed(podman_cmd, context)  # warm: all layers cached
    kiln_t, podman_t = [], []
    for _ in range(runs):
        kiln_t.append(timed([str(KILN), "bake"], folder, env))
        podman_t.append(timed(podman_cmd, context))
    ratio = statistics.median(kiln_t) / statistics.median(podman_t)
    print(f"\n| no-op bake, {STEPS} cached steps ({runs} runs) | median s (min-max) |")
    print("|---|---|")
    print(f"| `kiln bake` (platform podman, console script) | {fmt(kiln_t)} |")
    print(f"| `podman build` of the same Containerfile | {fmt(podman_t)} |")
    print(f"| ratio kiln / podman build | {ratio:.2f}x (target <= 1.1x) |")
    return {"kiln_bake_s": spread(kiln_t), "podman_build_s": spread(podman_t),
            "ratio_kiln_over_podman": ratio, "samples": {"kiln": kiln_t, "podman": podman_t}}


# ---------------------------------------------------------------------- 2. canary under load

CANARY = judged_canary([(10, "15s"), (50, "15s")])


def bench_canary(work: Path, rate: float, minimum: int) -> dict[str, object]:
    p = make_project(work / "canary", rollout=CANARY, replicas=3)
    try:
        first = p.kiln("deploy", timeout=900)
        if first.returncode != 0:
            raise RuntimeError(first.stdout + first.stderr)
        p.behave(version="2")
        with Load(p.listen, rate=rate, max_seconds=300, keep_body=40) as load:
            wait_for(lambda: load.stats.sent > 50, timeout=30)
            t = time.monotonic()
            res = p.kiln("deploy", timeout=300)
            took = time.monotonic() - t
            wait_for(lambda: load.stats.sent >= minimum, timeout=300, interval=0.5)
        stats = load.stats
        ok = res.returncode == 0 and p.weights() == {"web-r2": 100}
        print(f"\n| canary of 3 containers under {rate:.0f} req/s | value |")
        print("|---|---|")
        print(f"| outcome | {'promoted' if ok else 'NOT promoted: ' + res.stdout[-300:]} |")
        print(f"| rollout time | {took:.1f} s |")
        print(f"| requests sent / failed | {stats.sent} / {stats.failed} |")
        print(f"| load | {stats.summary()} |")
        return {"promoted": ok, "rollout_s": took, "sent": stats.sent, "failed": stats.failed,
                "conn_errors": stats.conn_errors, "statuses": dict(stats.statuses),
                "rate": stats.rate, "summary": stats.summary()}
    finally:
        teardown_project(p)


# ---------------------------------------------------------------------- 3. launch to healthy

def launch_to_healthy(compute: LocalCompute, service: ServiceSpec, image: Image) -> float:
    release = Release.of("web-b1", "web", 1, ReleaseImage.of(image), service, "c")
    start = time.perf_counter()
    (inst,) = compute.launch("web", service, release, image, 1, env={})
    try:
        ok, _ = compute.wait_healthy([inst], service.health, deadline=60.0)
        elapsed = time.perf_counter() - start
        if not ok:
            raise RuntimeError(compute.failure_reason(inst))
        return elapsed
    finally:
        compute.terminate(inst, timeout=5.0)


def bench_launch(work: Path, runs: int) -> dict[str, object]:
    app = work / "launch"
    shutil.copytree(SHOP_APP, app / "app")
    home = app / ".kiln"
    store = Store.open(home)
    try:
        steps = [{"copy": "app/", "to": "app/"}]
        local_img = LocalBuilder(store, home).build(
            "web", ImageSpec.model_validate({"base": "python", "steps": steps}), base_dir=app)
        podman_img = PodmanBuilder(store, home, "benchlaunch").build(
            "web", ImageSpec.model_validate({"base": BASE.model_dump(), "steps": steps}),
            base_dir=app)
        service = ServiceSpec.model_validate({
            "image": "web", "command": "python -m app", "port": 8000,
            "listen": "127.0.0.1:9", "health": Health(path="/healthz", timeout=1.0)})
        local = LocalCompute(store, home, "benchlaunch")
        podman = PodmanCompute(store, home, "benchlaunch")
        runners: dict[str, Callable[[], float]] = {
            "local": lambda: launch_to_healthy(local, service, local_img),
            "podman": lambda: launch_to_healthy(podman, service, podman_img)}
        for run in runners.values():
            run()  # warm
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(runs):
            for name, run in runners.items():
                times[name].append(run())
    finally:
        store.close()
    ratio = statistics.median(times["podman"]) / statistics.median(times["local"])
    print(f"\n| launch to healthy, one shop instance ({runs} runs) | median s (min-max) |")
    print("|---|---|")
    print(f"| local sandboxed process | {fmt(times['local'])} |")
    print(f"| podman container | {fmt(times['podman'])} |")
    print(f"| ratio container / process | {ratio:.1f}x |")
    return {"local_s": spread(times["local"]), "podman_s": spread(times["podman"]),
            "ratio_podman_over_local": ratio, "samples": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--min-requests", type=int, default=5000)
    ap.add_argument("--skip-canary", action="store_true")
    args = ap.parse_args()
    reason = unusable()
    if reason is not None:
        print(f"podman bench: {reason}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-podman-"))
    result: dict[str, object] = {"runs": args.runs, "time": time.time()}
    try:
        ensure_base(work / "base")
        result["noop_bake"] = bench_noop_bake(work, args.runs)
        result["launch"] = bench_launch(work, args.runs)
        if not args.skip_canary:
            result["canary"] = bench_canary(work, args.rate, args.min_requests)
        result["load_avg"] = os.getloadavg()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"podman-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nload average {os.getloadavg()[0]:.1f}; written to {out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
