"""End to end: the judge's cross-check of its access-log counts against the router's own request
counters, behind HAProxy as behind Traefik: a judged rollout under load agrees (across a router
that died mid-step and the old release's servers deleted at the end), and a line removed from
the real access log is reported as lost."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import test_router_contract as contract
from kiln.analysis.live import LiveJudge
from kiln.platforms.base import Backend
from kiln.platforms.fake.router import FakeRouter
from kiln.platforms.local.accesslog import AccessLogSource
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.rollout.decide import Status, start
from kiln.spec.models import Analysis
from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, free_port, wait_for
from test_judge_resume_e2e import crosschecks
from test_router_contract import AnyRouter
from test_router_traefik import get, spec

pytestmark = pytest.mark.e2e

router = contract.router  # the router contract's fixtures: a real router, backends in threads
backend = contract.backend

JUDGED = """\
      strategy: canary
      steps:
        - {weight: 50, pause: 8s}
      analysis: {max_error_rate_increase: 0.02, min_requests: 50, on_no_data: rollback}
      drain_timeout: 3s
"""


def step_started(p: Proj) -> bool:
    with sqlite3.connect(p.dir / ".kiln" / "state.db") as conn:
        row = conn.execute("SELECT status_json FROM rollouts ORDER BY id DESC LIMIT 1").fetchone()
    return row is not None and json.loads(row[0])["phase"] == "step"


def kill_haproxy(p: Proj) -> int:
    running = read_pidfile(p.dir / ".kiln" / "haproxy" / "haproxy.pid")
    assert running is not None and running.alive()
    os.kill(running.pid, signal.SIGKILL)
    return running.pid


@pytest.mark.parametrize("proj", ["haproxy"], indirect=True)
def test_judged_rollout_behind_haproxy_counts_every_request(proj: Proj) -> None:
    proj.write(rollout=JUDGED)
    first = proj.kiln("deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    proj.behave(version="2")
    with Load(proj.listen, rate=100, workers=16, max_seconds=120, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 50)
        with contextlib.ExitStack() as stack:
            deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
            stack.callback(lambda: deploy.poll() is None and deploy.kill())
            wait_for(lambda: step_started(proj), timeout=90, what="the canary step")
            # Well into the step: the canary has served (and HAProxy counted) a good share.
            wait_for(lambda: sum(n for body, n in load.stats.bodies.items()
                                 if "version 2" in body) >= 150, timeout=30,
                     what="canary traffic")
            killed = kill_haproxy(proj)
            # The next reconcile pass starts HAProxy again; the rollout goes on.
            wait_for(lambda: (r := read_pidfile(proj.dir / ".kiln" / "haproxy" / "haproxy.pid"))
                     is not None and r.pid != killed and r.alive(), timeout=20,
                     what="HAProxy restarted")
            out, _ = deploy.communicate(timeout=120)
        stats = load.stop()
    assert deploy.returncode == 0, out
    assert proj.weights() == {"web-r2": 100}
    check = crosschecks(proj)[-1]
    assert check["agree"], check
    assert check["counter"] == "haproxy" and check["resets"] >= 1, check
    assert "DISAGREE" not in out and "missing requests" not in out
    for release in ("web-r1", "web-r2"):
        c = check["releases"][release]
        # The old release's servers were deleted at the end: its count stayed. The requests
        # the killed process served after the last reading are logged but not counted.
        assert c["router"] > 0 and c["lost"] == 0, check
        assert c["router"] <= c["access_log"] <= c["router"] + 300, check
    assert stats.sent > 500, stats.summary()
    print(f"\ncrosscheck behind HAProxy: {check['releases']}, resets {check['resets']}")


# ---------------------------------------------------------------- a line missing from the log

def judged(live: AnyRouter) -> tuple[LiveJudge, Status]:
    assert not isinstance(live, FakeRouter)
    judge = LiveJudge(AccessLogSource(live.access_log_path, lambda addr: None), "web",
                      Analysis(), counter=live.request_counts)
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    return judge, status


def requests(listen: str, n: int) -> None:
    for _ in range(n):
        with contextlib.suppress(OSError, http.client.HTTPException):
            get(listen)


def drop_line(log: Path, release: str, after: int) -> None:
    """Remove one line naming `release` written after byte `after`, in place (same file: the
    router appends to it), as if it never reached the log."""
    with open(log, "r+b") as f:
        f.seek(after)
        tail = f.read().splitlines(keepends=True)
        victim = next(i for i, line in enumerate(tail) if f"kiln-{release}@".encode() in line)
        f.seek(after)
        f.write(b"".join(tail[:victim] + tail[victim + 1:]))
        f.truncate()


@pytest.mark.parametrize("router", ["traefik", "haproxy"], indirect=True)
def test_a_line_removed_from_the_access_log_is_reported_lost(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    assert not isinstance(router, FakeRouter)
    a, b = backend("a", "127.0.0.2"), backend("b", "127.0.0.3")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    # Every request logged: the counts agree.
    judge, status = judged(router)
    requests(svc.listen, 30)
    judge(status, time.time())
    check = judge.crosscheck(catch_up=3.0)
    assert check is not None and check["agree"], check
    assert sum(c["router"] for c in check["releases"].values()) == 30, check
    # One line of the next 30 never reaches the log: reported, naming its release.
    judge, status = judged(router)
    at = os.stat(router.access_log_path).st_size
    requests(svc.listen, 30)
    source = AccessLogSource(router.access_log_path, lambda addr: None)
    wait_for(lambda: len(source.read_samples("web", [*source.position()[:2], at])[0]) >= 30)
    drop_line(router.access_log_path, "web-r2", at)
    judge(status, time.time())
    check = judge.crosscheck(catch_up=1.0)
    assert check is not None and not check["agree"], check
    assert check["releases"]["web-r2"]["lost"] == 1, check
    assert check["releases"]["web-r1"]["lost"] == 0, check
    assert check["releases"]["web-r2"]["router"] == \
        check["releases"]["web-r2"]["access_log"] + 1, check
