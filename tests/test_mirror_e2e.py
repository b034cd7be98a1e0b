"""End to end behind Traefik (issue 23): a mirror step copies every live request to the new
release, whose answers nobody sees; the judge reads the copies (the access log holds them) and
rolls a release answering 20 % 5xx back before any user was served by it."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from kiln.testing.load import Load
from kiln.testing.project import Proj, wait_for

pytestmark = pytest.mark.e2e

MIRRORED = """\
      strategy: canary
      steps:
        - {mirror: 100%, pause: 60s}
        - {weight: 50, pause: 0s}
      analysis: {max_error_rate_increase: 0.02, max_latency_increase: 50%, min_requests: 50,
                 on_no_data: pause}
      drain_timeout: 3s
"""


def test_a_failing_release_is_rolled_back_during_its_mirror_step(proj: Proj) -> None:
    proj.write(rollout=MIRRORED, replicas=2)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    proj.behave(version="2", error_rate=0.2)
    with Load(proj.listen, rate=150, workers=4, max_seconds=90, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=30, what="load running")
        t = time.monotonic()
        res = proj.kiln("deploy", timeout=120)
        took = time.monotonic() - t
        stats = load.stop()
    assert res.returncode == 3, res.stdout + res.stderr
    assert took < 60, f"rolled back after {took:.1f}s: the judge waited for the pause"
    # No user was served by the mirrored release: not one answer of version 2, not one error.
    assert stats.failed == 0, stats.summary() + str(stats.error_samples)
    assert not [b for b in stats.bodies if "version 2" in b], stats.bodies
    assert proj.weights() == {"web-r1": 100}
    last = json.loads(proj.kiln("history", "web", "--json").stdout)["rollouts"][-1]
    assert last["release"] == "web-r2" and last["outcome"] == "rolled_back", last
    assert "5xx" in str(last["reason"]), last
    with sqlite3.connect(proj.dir / ".kiln" / "state.db") as db:
        steps = [m for (m,) in db.execute("SELECT message FROM events WHERE kind = 'rollout.step'")]
    assert steps == ["step 1/2: 100% of requests copied to web-r2 (its answers discarded)"], steps
    # The report names the step by what it did (a copy of 100 %), not by its weight (0 %).
    report = (proj.dir / ".kiln" / "reports" / f"rollout-{last['rollout_id']}.html").read_text()
    assert "canary step 1 (mirror 100%)" in report and "judge: fail at mirror 100%" in report
    assert "canary step 1 (0%)" not in report
    print(f"\nmirror step: rolled back after {took:.1f}s; clients: {stats.summary()}")
