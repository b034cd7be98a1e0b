"""Reliability under faults: what a SIGKILL or a swapped state costs, measured through the router.

Each fault is injected while a canary rollout (3 replicas, steps 10 % / 50 %, 1 s pauses) runs
under a steady load of 100 req/s on the listen address, `--runs` times (default 5):

  deploy@launched   SIGKILL of `kiln deploy` right after it launched the canary (KILN_FAULT)
  deploy@routed     ... right after a weight change (a step boundary)
  deploy@after:step ... right after the rollout entered its first judged step
  deploy@mid-step   ... from outside, half-way through a step's pause
  canary-instance   SIGKILL of one canary instance during a step
  baseline-instance SIGKILL of one baseline instance during a step
  router            SIGKILL of Traefik during a step
  state-swap        state.db replaced by the backup taken before the deploy, mid-rollout

Recovery is what an operator does: run `kiln deploy` again (a killed deploy) or let the running
one go on, then run it once more until it settles. Reported per fault: failed requests (non-2xx
and connection errors), serving again after (fault -> the last failed probe of a 20 ms prober on
the listen address; 0 when it never stopped), settled after (fault -> the rollout settled and the
address serves), orphans (instance processes or a router that the state does not record;
must be 0) and wrong state rows (`kiln drift` items: live rows without a process, routes the
router does not serve...; must be 0). min / median / max over the runs.

    .venv/bin/python bench/faults.py [--runs 5] [--faults router,state-swap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kiln.bake.imagestore import force_rmtree
from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.state.lock import pid_alive
from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, make_project, teardown, wait_for

ROLLOUT = """\
      strategy: canary
      steps:
        - {weight: 10, pause: 1s}
        - {weight: 50, pause: 1s}
      drain_timeout: 2s
"""
FAULTS = ("deploy@launched", "deploy@routed", "deploy@after:step", "deploy@mid-step",
          "canary-instance", "baseline-instance", "router", "state-swap")
RATE = 100.0


@dataclass
class Outcome:
    failed: int
    sent: int
    outage: float
    recover: float
    orphans: int
    wrong_rows: int
    notes: list[str] = field(default_factory=list)


def serves(proj: Proj) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{proj.listen}/", timeout=0.5) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class Prober:
    """GETs the listen address every 20 ms from the fault on; the last failure it saw is when
    the service served again (0 when it never stopped)."""

    def __init__(self, proj: Proj) -> None:
        self.proj = proj
        self.start = time.monotonic()
        self.last_failure: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not serves(self.proj):
                self.last_failure = time.monotonic()
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        return 0.0 if self.last_failure is None else self.last_failure - self.start


def db_rows(proj: Proj, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(proj.dir / ".kiln" / "state.db", timeout=30) as conn:
        return list(conn.execute(sql).fetchall())


def release_pids(proj: Proj, release: str) -> list[int]:
    pids = []
    for (text,) in db_rows(proj, "SELECT handle_json FROM instances WHERE release_id = "
                                 f"'{release}' AND state IN ('starting','running')"):
        h = LocalHandle.parse(json.loads(str(text)))
        if h.pid is not None and h.pid_start is not None and pid_alive(h.pid, h.pid_start):
            pids.append(h.pid)
    return pids


def current_step_phase(proj: Proj) -> str | None:
    rows = db_rows(proj, "SELECT phase FROM rollouts ORDER BY id DESC LIMIT 1")
    return str(rows[0][0]) if rows else None


def orphans(proj: Proj) -> int:
    """Instance processes alive without a live row, plus a router running with no routes."""
    home = proj.dir / ".kiln"
    live = {str(r[0]) for r in db_rows(
        proj, "SELECT id FROM instances WHERE state IN ('starting','running','draining')")}
    count = 0
    for folder in (home / "instances").iterdir() if (home / "instances").is_dir() else []:
        try:
            info = json.loads((folder / "pid").read_text())
        except (OSError, ValueError):
            continue
        if folder.name not in live and pid_alive(int(info["pid"]), str(info["pid_start"])):
            count += 1
    running = read_pidfile(home / "router" / "traefik.pid")
    if running is not None and running.alive() and not db_rows(
            proj, "SELECT 1 FROM routes WHERE weight > 0"):
        count += 1
    return count


def wrong_rows(proj: Proj) -> tuple[int, list[str]]:
    res = proj.kiln("drift", "--json")
    try:
        items = json.loads(res.stdout) if res.stdout.strip() else []
    except ValueError:
        return 1, [res.stderr.strip()[:200]]
    unknown = [i for i in items if i["kind"] in ("unknown-process", "unknown-router")]
    wrong = [i for i in items if i not in unknown]
    return len(wrong), [f"{i['kind']}: {i['detail']}" for i in wrong]


def settle(proj: Proj, deadline: float) -> subprocess.CompletedProcess[str]:
    """`kiln deploy` until it exits 0 or 3 (settled: promoted or rolled back)."""
    while True:
        res = proj.kiln("deploy", timeout=180)
        if res.returncode in (0, 3) or time.monotonic() > deadline:
            return res
        time.sleep(0.5)  # lock held by the deploy still running, say: try again


def deploy_result(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", "")


def one_run(proj: Proj, fault: str, version: int) -> Outcome:
    proj.behave(version=str(version))
    notes: list[str] = []
    with Load(proj.listen, rate=RATE, max_seconds=240) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=20)
        fault_at = time.monotonic()
        if fault.startswith("deploy@") and fault != "deploy@mid-step":
            point = fault.removeprefix("deploy@")
            killed = proj.kiln("deploy", env={"KILN_FAULT": point}, timeout=180)
            fault_at = time.monotonic()
            prober = Prober(proj)
            if killed.returncode != -9:
                notes.append(f"fault point {point} not reached (exit {killed.returncode})")
            final = settle(proj, time.monotonic() + 180)
        else:
            deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: current_step_phase(proj) == "step"
                         and bool(db_rows(proj, "SELECT 1 FROM rollouts WHERE phase = 'step' "
                                                "AND finished_at IS NULL")),
                         timeout=120, interval=0.05, what="a judged step")
                time.sleep(0.5)  # half-way through the 1 s pause
                new = str(db_rows(proj, "SELECT to_release FROM rollouts ORDER BY id DESC "
                                        "LIMIT 1")[0][0])
                old_rows = db_rows(proj, "SELECT from_release FROM rollouts ORDER BY id DESC "
                                         "LIMIT 1")
                old = str(old_rows[0][0])
                fault_at = time.monotonic()
                prober = Prober(proj)
                if fault == "deploy@mid-step":
                    deploy.send_signal(signal.SIGKILL)
                elif fault == "canary-instance":
                    os.kill(release_pids(proj, new)[0], signal.SIGKILL)
                elif fault == "baseline-instance":
                    os.kill(release_pids(proj, old)[0], signal.SIGKILL)
                elif fault == "router":
                    running = read_pidfile(proj.dir / ".kiln" / "router" / "traefik.pid")
                    assert running is not None
                    os.kill(running.pid, signal.SIGKILL)
                elif fault == "state-swap":
                    backups = sorted((proj.dir / ".kiln" / "backups").glob("state-*.db"))
                    db = proj.dir / ".kiln" / "state.db"
                    swap = db.with_name("state.db.swap")
                    shutil.copy2(backups[-1], swap)
                    os.replace(swap, db)
                    for side in ("state.db-wal", "state.db-shm"):
                        (proj.dir / ".kiln" / side).unlink(missing_ok=True)
                _out, err = deploy.communicate(timeout=180)
                if deploy.returncode not in (0, 3, -9):
                    first = next((line for line in err.splitlines() if "error" in line),
                                 err.strip()[-160:])
                    notes.append(f"deploy exit {deploy.returncode}: {first[:400]}")
            finally:
                if deploy.poll() is None:
                    deploy.kill()
                    deploy.wait()
            if deploy.returncode == 3:
                notes.append("rolled back")
            # A deploy that settled (promoted or rolled back) is the recovery; a killed or
            # failed one is run again.
            final = deploy_result(deploy) if deploy.returncode in (0, 3) else settle(
                proj, time.monotonic() + 180)
        if final.returncode not in (0, 3):
            notes.append(f"did not settle: {final.stderr.strip()[-200:]}")
        wait_for(lambda: serves(proj), timeout=30, interval=0.02, what="serving again")
        recover = time.monotonic() - fault_at
        outage = prober.stop()
        sent = load.stats.sent
        wait_for(lambda: load.stats.sent > sent + 50, timeout=20)
    wrong, why = wrong_rows(proj)
    notes += why
    return Outcome(load.stats.failed, load.stats.sent, outage, recover, orphans(proj), wrong,
                   notes)


def fmt(values: list[float], unit: str = "") -> str:
    return (f"{min(values):.2f}{unit} / {statistics.median(values):.2f}{unit} / "
            f"{max(values):.2f}{unit}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--faults", default=",".join(FAULTS))
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {', '.join(FAULTS)}")
    rows = []
    all_ok = True
    tmp = tempfile.mkdtemp(prefix="kiln-faults-")
    try:
        for fault in faults:
            outcomes: list[Outcome] = []
            proj = make_project(Path(tmp) / fault.replace("@", "-").replace(":", "-"))
            try:
                proj.write(rollout=ROLLOUT)
                first = proj.kiln("deploy", timeout=180)
                if first.returncode != 0:
                    print(first.stdout + first.stderr, file=sys.stderr)
                    return 1
                for run in range(args.runs):
                    out = one_run(proj, fault, version=run + 2)
                    outcomes.append(out)
                    print(f"{fault} run {run + 1}: {out.failed}/{out.sent} failed, serving "
                          f"again after {out.outage:.2f}s, settled after {out.recover:.2f}s, "
                          f"orphans {out.orphans}, wrong rows "
                          f"{out.wrong_rows} {'; '.join(out.notes)}", flush=True)
            finally:
                teardown(proj)
            failed = [float(o.failed) for o in outcomes]
            rows.append(f"| {fault} | {len(outcomes)} | {fmt(failed)} | "
                        f"{fmt([o.outage for o in outcomes], ' s')} | "
                        f"{fmt([o.recover for o in outcomes], ' s')} | "
                        f"{sum(o.orphans for o in outcomes)} | "
                        f"{sum(o.wrong_rows for o in outcomes)} |")
            all_ok &= all(o.orphans == 0 and o.wrong_rows == 0 for o in outcomes)
    finally:
        force_rmtree(Path(tmp))  # sealed images are read-only: tempfile's cleanup loops on them
    print(f"\nfaults under {RATE:.0f} req/s, canary 10%/50% with 1 s pauses, 3 replicas "
          "(failed requests and recovery: min / median / max)\n")
    print("| fault | runs | failed requests | serving again after | settled after | orphans | "
          "wrong rows |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
