"""Time to evidence, end to end: kiln's estimate of how long a canary step needs to pass vs the
time it actually took, through Traefik with real instances, at 20 and 100 canary req/s.

One step at 50 % (the baseline serves as much as the canary), default margins (1 % more errors,
+25 % latency), min_requests 100, a good release. Per run:
- actual: the pass decision's time minus the step's start (from the rollout's status);
- planned: `requests_needed` at the step's ratio / the canary rate the load offers (what
  `kiln plan` computes from the router's counters);
- live: at the first reading of the step's evidence 3 s or more into it (what `kiln status
  --json` shows, `Status.evidence_at`, read from the state 5x a second), the time already
  spent in the step plus its `eta_s`;
- live worst: of every such reading 3 s or more into the step (until the pass), the one
  farthest from the actual time.
Each error is (estimate - actual) / actual; min/median/max over the runs of each rate.

Run: .venv/bin/python bench/evidence_e2e.py [--rates 20 100] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from kiln.analysis.evidence import requests_needed
from kiln.rollout.decide import Status
from kiln.spec.models import Analysis
from kiln.state.store import connect
from kiln.testing.load import Load
from kiln.testing.project import KILN, make_project, teardown, wait_for

ROLLOUT = ("      strategy: canary\n      steps:\n        - {weight: 50, pause: 0s}\n"
           "      analysis: {max_error_rate_increase: 1%, max_latency_increase: 25%, "
           "min_requests: 100, on_no_data: pause}\n"
           "      progress_deadline: 180s\n      drain_timeout: 3s\n")


VERBOSE = False


def step_status(db: Path) -> Status | None:
    """The newest rollout's status while it is in a canary step, read through kiln's opener."""
    if not db.exists():
        return None
    conn = connect(db)
    try:
        row = conn.execute("SELECT status_json FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    st = Status.from_json(json.loads(row[0]))
    return st if st.phase == "step" else None


def one_run(canary_rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="warmup-ev-") as tmp:
        p = make_project(Path(tmp))
        try:
            p.write(rollout=ROLLOUT, replicas=1)
            res = p.kiln("deploy")
            assert res.returncode == 0, res.stdout + res.stderr
            p.behave(version="2")
            seen: list[tuple[float, dict[str, Any]]] = []
            with Load(p.listen, rate=2 * canary_rate, max_seconds=240, workers=16) as load:
                wait_for(lambda: load.stats.sent > 20)
                deploy = subprocess.Popen([KILN, "deploy"], cwd=p.dir, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
                try:
                    while deploy.poll() is None:
                        # What `kiln status --json` shows (Status.evidence_at), read from the
                        # state 5x a second: a `kiln status` process takes seconds under load.
                        now_st = step_status(p.dir / ".kiln" / "state.db")
                        ev = now_st.evidence_at(time.time()) if now_st is not None else None
                        if ev:
                            seen.append((time.time(), ev))
                        time.sleep(0.2)  # a poll interval, not a wait for a result
                    out, err = deploy.communicate(timeout=30)
                finally:
                    if deploy.poll() is None:
                        deploy.kill()
                        deploy.wait()
            assert deploy.returncode == 0, out + err
            conn = connect(p.dir / ".kiln" / "state.db")
            try:
                (text,) = conn.execute("SELECT status_json FROM rollouts ORDER BY id DESC "
                                       "LIMIT 1").fetchone()
            finally:
                conn.close()
            status = json.loads(text)
            passed = next(d for d in status["decisions"] if d["outcome"] == "pass")
            started = float(status["step_started"])
            actual = float(passed["time"]) - started
            planned = requests_needed(Analysis(), 1.0) / canary_rate
            lives = [(t - started) + float(ev["eta_s"]) for t, ev in seen
                     if 3.0 <= t - started <= actual and ev.get("eta_s") is not None]
            live = lives[0] if lives else float("nan")
            worst = max(lives, key=lambda x: abs(x - actual)) if lives else float("nan")
            if VERBOSE:
                for t, ev in seen:
                    print(f"   t={t - started:5.2f} needed={ev['needed']} have={ev['have']} "
                          f"eta={ev['eta_s']} live={(t - started) + float(ev['eta_s'] or 0):.2f}",
                          flush=True)
                f = passed.get("figures") or {}
                print(f"   pass: {f.get('canary_requests')} canary, {f.get('baseline_requests')} "
                      f"baseline, needed {f.get('evidence_needed')}", flush=True)
            return {"actual": actual, "planned": planned, "live": live, "worst": worst}
        finally:
            teardown(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rates", type=float, nargs="*", default=[20.0, 100.0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--verbose", action="store_true", help="print every evidence seen")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    print("| canary req/s | run | actual s | planned s (error) | live at 3 s (error) "
          "| live worst (error) |")
    print("|---|---|---|---|---|---|")
    for rate in args.rates:
        errs: dict[str, list[float]] = {"planned": [], "live": [], "worst": []}
        for i in range(args.runs):
            r = one_run(rate)
            cells = []
            for k in ("planned", "live", "worst"):
                e = (r[k] - r["actual"]) / r["actual"]
                errs[k].append(e)
                cells.append(f"{r[k]:.1f} ({100 * e:+.0f}%)")
            print(f"| {rate:g} | {i + 1} | {r['actual']:.1f} | {' | '.join(cells)} |", flush=True)
        for k, es in errs.items():
            print(f"<!-- {rate:g} req/s {k}: error min {100 * min(es):+.0f}% median "
                  f"{100 * statistics.median(es):+.0f}% max {100 * max(es):+.0f}% -->",
                  flush=True)


if __name__ == "__main__":
    main()
