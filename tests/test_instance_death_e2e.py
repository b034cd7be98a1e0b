"""A new instance that dies during a canary step fails the rollout, and the failure says how it
ended (its exit, asked of the platform when the rollout found it dead: a drain that removes it
would take that answer with it), in the output and in the event log."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess

import pytest

from kiln.testing.project import KILN, Proj, judged_canary, wait_for

pytestmark = pytest.mark.e2e


def test_a_killed_canary_instance_fails_the_rollout_and_says_how_it_ended(proj: Proj) -> None:
    proj.write(replicas=1, rollout=judged_canary([(50, "60s")]))
    first = proj.kiln("deploy", "--skip-tests")
    assert first.returncode == 0, first.stdout + first.stderr
    old = set(proj.live_pids())
    proj.behave(version="2")
    deploy = subprocess.Popen([KILN, "deploy", "--skip-tests"], cwd=proj.dir, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        new = wait_for(lambda: [p for p in proj.live_pids() if p not in old] or None,
                       timeout=60, what="the canary's instance")
        wait_for(lambda: proj.weights().get("web-r2", 0) > 0, timeout=60,
                 what="the canary to get weight")
        os.kill(new[0], signal.SIGKILL)
        out, _ = deploy.communicate(timeout=120)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert deploy.returncode == 3, out
    assert "1 new instance(s) died during step 1" in out, out
    db = sqlite3.connect(f"file:{proj.dir / '.kiln' / 'state.db'}?mode=ro", uri=True)
    try:
        (message,) = db.execute("SELECT message FROM events WHERE kind = 'instance.died' "
                                "ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    assert message.startswith("web-r2-") and "SIGKILL" in message, message
    assert f"(dead: {message.split(' ', 1)[1]})" in out, (message, out)
    assert proj.weights() == {"web-r1": 100}
