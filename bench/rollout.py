"""Rollout overhead and zero-failure rollouts, measured through the real router.

1. Overhead: canary with zero pauses, 3 replicas. Time from `kiln deploy` start until the router
   sends 100 % to the new release (seen by a poller on the listen address), minus the app's own
   start-to-healthy time for 3 instances measured in the same run (the anchor), and their ratio.
   Split as the poller sees it (first answer from the new release: the 10 % step) and the cost
   of the deploy path's imports in a fresh interpreter (part of the start-up before kiln's
   clock). Target (issue 23) <= 0.3 s on the default router.
2. Zero failures: canary deploy, promote, abort, rollback, blue-green switch and rolling replace
   under steady load (>= 100 req/s) on the listen address; every request counted (target: 0
   failed, >= 20,000 requests in all).
Both parts run behind each router (`--router traefik|haproxy`, repeatable; default both), and
report min / median / max, the peak RSS of `kiln deploy` and the router's RSS. Where kiln's side
of the overhead goes, phase by phase: bench/rollout_phases.py (kiln's progress clock prints
tenths of a second, too coarse for phases of a few milliseconds).

    .venv/bin/python bench/rollout.py [--quick] [--runs N] [--router haproxy] [--overhead-only]
        [--settle 1.1]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, make_project, teardown, wait_for

CANARY0 = """\
      strategy: canary
      steps:
        - {weight: 10, pause: 0s}
        - {weight: 50, pause: 0s}
      drain_timeout: 2s
"""


def app_start_to_healthy(proj: Proj) -> float:
    """Anchor: 3 instances of the baked image from launch to all healthy (LocalCompute)."""
    from kiln.platforms.base import Release, ReleaseImage
    from kiln.platforms.local.compute import LocalCompute
    from kiln.project import Project

    project = Project.open(proj.dir / "kiln.yaml")
    spec = project.service("web")
    image = project.builder.build("web", project.spec.images["web"], base_dir=project.base_dir)
    compute = project.compute
    assert isinstance(compute, LocalCompute)
    t = time.perf_counter()
    anchor = Release.of("web-anchor", "web", 0, ReleaseImage.of(image), spec, "x")
    insts = compute.launch("web", spec, anchor, image, 3, env={}, kind="test")
    _, failed = compute.wait_healthy(insts, spec.health, 30)
    took = time.perf_counter() - t
    for i in insts:
        compute.terminate(i, 5)
    project.close()
    assert not failed
    return took


class VersionWatch:
    """Polls the listen address; records when the last answer from an old version was seen."""

    def __init__(self, listen: str, new: str) -> None:
        self.host, port = listen.split(":")
        self.port = int(port)
        self.new = new.encode()
        self.last_old = 0.0
        self.first_new = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", "/")
                body = conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                continue
            now = time.perf_counter()
            if b"version " + self.new in body:
                self.first_new = self.first_new or now
            else:
                self.last_old = now
            time.sleep(0.002)
        conn.close()


DEPLOY_IMPORTS = ("kiln_cli.main", "kiln_cli.progress", "kiln.project", "kiln.usecases.deploy",
                  "kiln.rollout.executor", "kiln.platforms.local.compute",
                  "kiln.platforms.local.builder", "kiln.platforms.local.haproxy_router",
                  "kiln.plan", "kiln.readmodel")


def import_seconds() -> tuple[float, float]:
    """(bare interpreter, interpreter + what `kiln deploy` imports before it launches), wall
    seconds of one fresh process each: the start-up a rollout pays before kiln's clock."""
    def run(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t
    return run("pass"), run("import " + ", ".join(DEPLOY_IMPORTS))


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _router_pid(proj: Proj) -> int | None:
    import json

    for pidfile in (proj.dir / ".kiln" / "router" / "traefik.pid",
                    proj.dir / ".kiln" / "haproxy" / "haproxy.pid"):
        try:
            return int(json.loads(pidfile.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return None


class PeakRSS:
    """Samples a process's RSS every 20 ms until it exits; keeps the peak (kB)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
            self.peak = max(self.peak, _rss_kb(self.pid))
            time.sleep(0.02)


def overhead(runs: int, router: str = "traefik", settle: float = 0.0) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in (
        "anchor_healthy_s", "deploy_wall_s", "to_100_s", "overhead_s", "deploy_rss_mb",
        "router_rss_mb", "ratio",
        "to_first_new_s", "first_new_to_100_s", "python_s", "imports_s")}
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            proj = make_project(Path(tmp), router=router)
            proj.write(rollout=CANARY0)
            try:
                assert proj.kiln("deploy").returncode == 0
                anchor = app_start_to_healthy(proj)
                proj.behave(version=f"v{i + 2}")
                assert proj.kiln("bake").returncode == 0  # bake is not rollout overhead
                if settle:  # the image's files leave the integrity check's racy second
                    time.sleep(settle)
                watch = VersionWatch(proj.listen, f"v{i + 2}")
                watch.thread.start()
                t0 = time.perf_counter()
                deploy = subprocess.Popen([KILN, "deploy", "--skip-tests"], cwd=proj.dir,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True)
                peak = PeakRSS(deploy.pid)
                text, _ = deploy.communicate(timeout=180)
                t1 = time.perf_counter()
                watch.stop.set()
                watch.thread.join()
                peak.thread.join(timeout=5)
                assert deploy.returncode == 0, text
                rpid = _router_pid(proj)
                out["anchor_healthy_s"].append(anchor)
                out["deploy_wall_s"].append(t1 - t0)
                out["to_100_s"].append(watch.last_old - t0)
                out["overhead_s"].append(watch.last_old - t0 - anchor)
                out["ratio"].append((watch.last_old - t0) / anchor)
                if watch.first_new:
                    out["to_first_new_s"].append(watch.first_new - t0)
                    out["first_new_to_100_s"].append(max(0.0, watch.last_old - watch.first_new))
                bare, imports = import_seconds()
                out["python_s"].append(bare)
                out["imports_s"].append(imports - bare)
                out["deploy_rss_mb"].append(peak.peak / 1024)
                out["router_rss_mb"].append(_rss_kb(rpid) / 1024 if rpid else 0.0)
            finally:
                teardown(proj)
    return out


def spread(values: list[float], unit: str = "s") -> str:
    """min / median / max."""
    return (f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} {unit}"
            if values else "-")


SCENARIOS = ["canary deploy", "promote", "abort", "rollback", "blue-green switch",
             "rolling replace"]


def zero_failures(rate: float, per_scenario: float,
                  router: str = "traefik") -> list[tuple[str, str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proj = make_project(Path(tmp), router=router)
        try:
            proj.write(rollout=CANARY0)
            assert proj.kiln("deploy").returncode == 0
            version = 1

            def bump() -> None:
                nonlocal version
                version += 1
                proj.behave(version=str(version))

            def hold(load: Load) -> None:
                # keep each scenario's load going long enough to count
                end = time.monotonic() + per_scenario
                wait_for(lambda: time.monotonic() > end, timeout=per_scenario + 5, interval=0.2)
                _ = load

            def canary() -> None:
                bump()
                assert proj.kiln("deploy").returncode == 0

            def promote() -> None:
                proj.write(rollout="      strategy: canary\n      steps:\n        - {weight: 30}\n"
                                   "      drain_timeout: 2s\n")
                bump()
                p = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
                assert proj.kiln("promote", "web").returncode == 0
                assert p.wait(60) == 0

            def abort() -> None:
                bump()
                p = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
                assert proj.kiln("abort", "web").returncode == 0
                assert p.wait(60) == 3

            def rollback() -> None:
                assert proj.kiln("rollback", "web").returncode == 0

            def blue_green() -> None:
                proj.write(rollout="      strategy: blue-green\n      scale_down_delay: 0s\n"
                                   "      drain_timeout: 2s\n")
                bump()
                assert proj.kiln("deploy").returncode == 0

            def rolling() -> None:
                proj.write(rollout="      strategy: rolling\n      max_surge: 1\n"
                                   "      drain_timeout: 2s\n")
                bump()
                assert proj.kiln("deploy").returncode == 0

            for name, fn in zip(SCENARIOS, [canary, promote, abort, rollback, blue_green, rolling],
                                strict=True):
                with Load(proj.listen, rate=rate, max_seconds=per_scenario + 120) as load:
                    t = time.monotonic()
                    fn()
                    hold(load)
                rows.append((name, load.stats.summary(), time.monotonic() - t))
                print(f"  {name:<18} {load.stats.summary()}", flush=True)
                if load.stats.failed:
                    print(f"    errors: {load.stats.error_samples}", flush=True)
                rows[-1] = (name, f"{load.stats.sent}|{load.stats.failed}|{load.stats.rate:.0f}",
                            time.monotonic() - t)
        finally:
            teardown(proj)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer runs, shorter load")
    ap.add_argument("--runs", type=int, default=0, help="overhead runs (default 3; 1 with --quick)")
    ap.add_argument("--router", action="append", choices=["traefik", "haproxy"],
                    help="router(s) for the overhead part (default: both)")
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between the bake and the deploy (default 0): the first "
                         "integrity checks of files stamped in their own second re-hash every "
                         "file; 1.1 leaves that out of the rollout")
    args = ap.parse_args()
    args.router = args.router or ["traefik", "haproxy"]
    runs = args.runs or (1 if args.quick else 3)
    for router in args.router:
        print(f"## Rollout overhead on {router} (canary, zero pauses, 3 replicas, deploy "
              f"{args.settle:g} s after the bake; min / median / max of {runs})")
        o = overhead(runs, router, args.settle)
        print("| figure | value |\n|---|---|")
        print(f"| app start-to-healthy (anchor) | {spread(o['anchor_healthy_s'])} |")
        print(f"| deploy start -> 100% new | {spread(o['to_100_s'])} |")
        print(f"| overhead (difference, per run) | {spread(o['overhead_s'])} |")
        print(f"| deploy start -> 100% / anchor (ratio, per run) | "
              f"{spread(o['ratio'], 'x')} |")
        print(f"| poller: deploy start -> first answer from the new release (10 % step) | "
              f"{spread(o['to_first_new_s'])} |")
        print(f"| poller: first new answer -> 100 % (2 weight changes, verified) | "
              f"{spread(o['first_new_to_100_s'])} |")
        print(f"| fresh interpreter: bare start | {spread(o['python_s'])} |")
        print(f"| fresh interpreter: + the deploy path's imports | {spread(o['imports_s'])} |")
        print(f"| whole `kiln deploy` wall time (incl. drain, startup) | "
              f"{spread(o['deploy_wall_s'])} |")
        print(f"| peak RSS of `kiln deploy` | {spread(o['deploy_rss_mb'], 'MB')} |")
        print(f"| router RSS after the rollout | {spread(o['router_rss_mb'], 'MB')} |")
        print(flush=True)
    if args.overhead_only:
        return 0
    failed = 0
    for router in args.router:
        print(f"## Zero failed requests under load ({router})")
        rows = zero_failures(rate=150, per_scenario=5 if args.quick else 25, router=router)
        total = 0
        print("| scenario | requests | failed | req/s | seconds |")
        print("|---|---|---|---|---|")
        for name, cell, secs in rows:
            sent, bad, rate = cell.split("|")
            total += int(sent)
            failed += int(bad)
            print(f"| {name} | {sent} | {bad} | {rate} | {secs:.1f} |")
        print(f"| **all** | **{total}** | **{failed}** | | |\n", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
