"""Where a canary's rollout overhead goes, phase by phase (issue 23), beside the anchor.

The bench's canary (zero pauses, 3 replicas, HAProxy by default) is deployed `--runs` times by
`kiln deploy --skip-tests` run in a child interpreter whose key functions are wrapped with a
wall clock (kiln's own code is unchanged): from the parent's clock before the child starts to
the start of the CLI's imports, kiln's project open, the bake's cache check, the launch, the
health gate and each verified weight change. The anchor (3 instances launched and healthy
through LocalCompute, in-process) is measured in the same runs, split into launch and health.

    .venv/bin/python bench/rollout_phases.py [--runs 5] [--router haproxy] [--settle 1.1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln.testing.project import make_project, teardown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import CANARY0, VersionWatch

SETTLE_HELP = ("seconds to wait between the bake and the deploy (default 0): a file stamped in "
               "the second an integrity check runs in is re-hashed by every check (the fast "
               "path trusts keys only of files older than that second); 1.1 takes the "
               "image's check out of the rollout")

CHILD = r"""
import functools, importlib, json, os, sys, time
T0 = float(os.environ["PHASES_T0"])
marks = [("interpreter up", time.time() - T0)]

def wrap(module, qual, label):
    obj = importlib.import_module(module)
    *path, name = qual.split(".")
    for part in path:
        obj = getattr(obj, part)
    fn = getattr(obj, name)
    @functools.wraps(fn)
    def timed(*a, **k):
        marks.append((label + " start", time.time() - T0))
        try:
            return fn(*a, **k)
        finally:
            marks.append((label + " end", time.time() - T0))
    setattr(obj, name, timed)

import kiln_cli.main
marks.append(("kiln_cli.main imported", time.time() - T0))
for module, qual, label in json.loads(os.environ["PHASES_WRAP"]):
    wrap(module, qual, label)
marks.append(("deploy path imported", time.time() - T0))
sys.argv = ["kiln", "deploy", "--skip-tests"]
try:
    kiln_cli.main.run()
except SystemExit as exc:
    marks.append(("exit " + str(exc.code), time.time() - T0))
print("PHASES " + json.dumps(marks))
"""

WRAP = [
    ("kiln.project", "Project.open", "open"),
    ("kiln.usecases.deploy", "_deploy_one", "deploy_one"),
    ("kiln.platforms.local.builder", "LocalBuilder.build", "bake check"),
    ("kiln.platforms.local.compute", "LocalCompute.launch", "launch"),
    ("kiln.platforms.local.haproxy_router", "HAProxyRouter.set_backends", "weights"),
    ("kiln.platforms.local.router", "TraefikRouter.set_backends", "weights"),
    ("kiln.usecases.rollouts", "write_report", "report"),
]


def anchor(proj_dir: Path) -> tuple[float, float]:
    """(launch, launch -> all healthy) of 3 instances of the current image, in-process."""
    from kiln.platforms.base import Release, ReleaseImage
    from kiln.platforms.local.compute import LocalCompute
    from kiln.project import Project

    project = Project.open(proj_dir / "kiln.yaml")
    try:
        spec = project.service("web")
        image = project.builder.build("web", project.spec.images["web"],
                                      base_dir=project.base_dir)
        compute = project.compute
        assert isinstance(compute, LocalCompute)
        t = time.perf_counter()
        rel = Release.of(f"web-anchor{time.time_ns()}", "web", 0, ReleaseImage.of(image), spec,
                         "x")
        insts = compute.launch("web", spec, rel, image, 3, env={}, kind="test")
        t1 = time.perf_counter()
        _, failed = compute.wait_healthy(insts, spec.health, 30)
        t2 = time.perf_counter()
        for i in insts:
            compute.terminate(i, 5)
        assert not failed
        return t1 - t, t2 - t1
    finally:
        project.close()


def phases(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Durations between the marks (the first of each label: one service, one rollout)."""
    at: dict[str, float] = {}
    weights: list[float] = []
    for label, t in marks:
        if label == "weights end":
            weights.append(t)
        at.setdefault(label, t)
    out = {
        "interpreter start": at["interpreter up"],
        "imports (CLI, typer, pydantic models, rich, kiln)": at["open start"] - at["interpreter up"],
        "open the project (spec, state)": at["open end"] - at["open start"],
        "deploy preflight (lock, backup, sweep, router)": at["deploy_one start"] - at["open end"],
        "bake: the cached image's check": at["bake check end"] - at["bake check start"],
        "plan, release record": at["launch start"] - at["bake check end"],
        "launch 3 instances": at["launch end"] - at["launch start"],
        "health gate (launch end -> first weight change)": at["weights start"] - at["launch end"],
    }
    if len(weights) >= 4:  # set_backends: 10 %, 50 %, 100 %, then the old release's removal
        out["3 verified weight changes (10 %, 50 %, 100 %)"] = weights[2] - at["weights start"]
    out["deploy start -> 100 % (kiln's side)"] = weights[2] if len(weights) >= 3 else float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--router", default="haproxy", choices=["haproxy", "traefik"])
    ap.add_argument("--settle", type=float, default=0.0, help=SETTLE_HELP)
    args = ap.parse_args()
    settle = args.settle
    rows: dict[str, list[float]] = {}
    kiln_py = Path(sys.executable)
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            proj = make_project(Path(tmp), router=args.router)
            proj.write(rollout=CANARY0)
            try:
                assert proj.kiln("deploy").returncode == 0
                launch, healthy = anchor(proj.dir)
                proj.behave(version=f"v{i + 2}")
                assert proj.kiln("bake").returncode == 0
                if settle:  # the image's files leave the integrity check's racy second
                    time.sleep(settle)
                watch = VersionWatch(proj.listen, f"v{i + 2}")
                watch.thread.start()
                p0 = time.perf_counter()
                env = {**os.environ, "PHASES_T0": repr(time.time()),
                       "PHASES_WRAP": json.dumps(WRAP)}
                res = subprocess.run([str(kiln_py), "-c", CHILD], cwd=proj.dir, env=env,
                                     capture_output=True, text=True, timeout=180, check=False)
                watch.stop.set()
                watch.thread.join()
                line = next(ln for ln in res.stdout.splitlines() if ln.startswith("PHASES "))
                found = phases([(str(a), float(b)) for a, b in json.loads(line[7:])])
                if watch.first_new:
                    found["poller: first answer from the new release"] = watch.first_new - p0
                found["poller: last answer from the old release (100 % seen)"] = (
                    watch.last_old - p0)
                found["anchor: launch 3 instances"] = launch
                found["anchor: launch end -> all healthy"] = healthy
                found["anchor: total"] = launch + healthy
                for k, v in found.items():
                    rows.setdefault(k, []).append(v)
            finally:
                teardown(proj)
    print(f"## Where the rollout overhead goes ({args.router}, canary, zero pauses, 3 replicas, "
          f"deploy {settle:g} s after the bake; min / median / max of {args.runs}, seconds)")
    print("| phase | seconds |\n|---|---|")
    for k, vs in rows.items():
        print(f"| {k} | {min(vs):.3f} / {statistics.median(vs):.3f} / {max(vs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
