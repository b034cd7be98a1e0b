"""The router is part of the rollout: SIGKILL Traefik while `kiln deploy` drives a paused canary
under load, and the deploy's own next reconcile pass restarts it with its routing (issue 10).
The failed requests and the time to serve again are counted and printed (bench/faults.py
measures them properly; here the deadline is generous for a shared machine)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from kiln.platforms.local.traefik_process import read_pidfile
from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, wait_for

pytestmark = pytest.mark.e2e


def serves(proj: Proj) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{proj.listen}/", timeout=0.3) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def test_deploy_restarts_a_killed_router_under_load(proj: Proj) -> None:
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    proj.write(rollout="      strategy: canary\n      steps:\n        - {weight: 50}\n")
    proj.behave(version="2")
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    pidfile = proj.dir / ".kiln" / "router" / "traefik.pid"
    try:
        wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=90)
        with Load(proj.listen, rate=100, max_seconds=60) as load:
            wait_for(lambda: load.stats.sent > 100, timeout=20)
            before = read_pidfile(pidfile)
            assert before is not None
            killed_at = time.monotonic()
            os.kill(before.pid, signal.SIGKILL)
            wait_for(lambda: not serves(proj), timeout=5, interval=0.01, what="router gone")
            wait_for(lambda: serves(proj), timeout=10, interval=0.02,
                     what="the router to serve again")
            recovered = time.monotonic() - killed_at
            sent = load.stats.sent
            wait_for(lambda: load.stats.sent > sent + 100, timeout=20)
        print(f"router SIGKILL -> serving again in {recovered:.2f}s; "
              f"{load.stats.failed} of {load.stats.sent} requests failed")
        after = read_pidfile(pidfile)
        assert after is not None and after.pid != before.pid
        assert recovered < 6.0
        with sqlite3.connect(proj.dir / ".kiln" / "state.db") as conn:
            restarted = conn.execute("SELECT COUNT(*) FROM events WHERE kind = "
                                     "'router.restarted'").fetchone()[0]
        assert restarted == 1  # by the deploy's reconcile pass, not by a later command
        assert deploy.poll() is None  # the rollout goes on
        assert proj.kiln("promote", "web").returncode == 0
        out, err = deploy.communicate(timeout=90)
        assert deploy.returncode == 0, out + err
        assert proj.weights() == {"web-r2": 100}
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
