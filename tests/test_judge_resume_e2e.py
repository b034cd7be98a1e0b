"""End to end: the judge's evidence survives `kiln deploy` being killed, and every request is
counted — slow ones included — against Traefik's own counters."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest

from kiln.testing.load import Load, LoadStats
from kiln.testing.project import KILN, Proj, wait_for

pytestmark = pytest.mark.e2e

# One judged step of 50% with a pause long enough to kill kiln in the middle of it;
# on_no_data rollback: a resumed judge that forgot the evidence would roll the good release back.
RESUMABLE = """\
      strategy: canary
      steps:
        - {weight: 50, pause: 14s}
      analysis: {max_error_rate_increase: 0.02, min_requests: 50, on_no_data: rollback}
      drain_timeout: 3s
"""
SLOW = {"slow_share": 0.03, "slow_ms": 1500}  # 1.5 s requests in both releases


def hit_v2(stats: LoadStats) -> int:
    return sum(n for body, n in stats.bodies.items() if "version 2" in body)


def rollout_row(p: Proj) -> dict[str, Any]:
    with sqlite3.connect(p.dir / ".kiln" / "state.db") as conn:
        row = conn.execute("SELECT status_json FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()
    status: dict[str, Any] = json.loads(row[0])
    return status


def crosschecks(p: Proj) -> list[dict[str, Any]]:
    with sqlite3.connect(p.dir / ".kiln" / "state.db") as conn:
        rows = conn.execute("SELECT data_json FROM events WHERE kind = 'judge.crosscheck' "
                            "ORDER BY id").fetchall()
    return [json.loads(r[0]) for r in rows]


def test_killed_mid_step_resumes_with_all_the_evidence(proj: Proj) -> None:
    proj.write(rollout=RESUMABLE)
    proj.behave(**SLOW)
    first = proj.kiln("deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    proj.behave(version="2")
    with Load(proj.listen, rate=100, workers=16, max_seconds=120, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 50)
        deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            # Mid-step, late enough that what is left of the pause after a restart is too short
            # for the evidence collected after it alone.
            def late_in_step() -> bool:
                st = rollout_row(proj)
                return st["phase"] == "step" and (
                    hit_v2(load.stats) >= 450 or time.time() - st["step_started"] > 9)

            wait_for(late_in_step, timeout=60, what="canary traffic")
            assert rollout_row(proj)["phase"] == "step"
            deploy.send_signal(signal.SIGKILL)
            deploy.communicate(timeout=30)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        before_restart = hit_v2(load.stats)
        # Nobody drives the rollout now, and status says so instead of a frozen countdown.
        shown = proj.kiln("status")
        assert "nothing is driving this rollout" in shown.stdout, shown.stdout
        watched = proj.kiln("status", "--watch", timeout=30)
        assert watched.returncode == 1 and "`kiln deploy` resumes it" in watched.stdout
        again = proj.kiln("deploy", timeout=120)
        stats = load.stop()
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "resuming rollout" in out
    assert proj.weights() == {"web-r2": 100}
    assert stats.conn_errors == 0, stats.summary()
    status = rollout_row(proj)
    passed = [d for d in status["decisions"] if d["outcome"] == "pass"]
    assert passed, status["decisions"]
    counted = passed[0]["figures"]["canary_requests"]
    # The verdict of the resumed process counts the requests served before the kill.
    assert counted >= before_restart - 20, (counted, before_restart)
    # Every request since the rollout began, slow ones included, is in the judge's count.
    check = crosschecks(proj)[-1]
    assert check["agree"], check
    canary = check["releases"]["web-r2"]
    # Equal but for requests that ended while the counters were being read (load goes on).
    assert canary["router"] > 0, check
    assert canary["router"] <= canary["access_log"] <= canary["router"] + 50, check
    assert "missing requests" not in out and "DISAGREE" not in out
    print(f"\nresumed verdict counted {counted} canary requests ({before_restart} before the "
          f"kill); crosscheck {check['releases']}")


def test_killed_at_the_step_boundary_resumes_and_promotes(proj: Proj) -> None:
    proj.write(rollout=RESUMABLE)
    assert proj.kiln("deploy").returncode == 0
    proj.behave(version="2")
    with Load(proj.listen, rate=100, max_seconds=90) as load:
        wait_for(lambda: load.stats.sent > 50)
        killed = proj.kiln("deploy", env={"KILN_FAULT": "after:step"})
        assert killed.returncode == -9, killed.stdout + killed.stderr
        again = proj.kiln("deploy", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert proj.weights() == {"web-r2": 100}
    assert load.stats.conn_errors == 0 and load.stats.failed == 0, load.stats.summary()
    check = crosschecks(proj)[-1]
    assert check["agree"], check
