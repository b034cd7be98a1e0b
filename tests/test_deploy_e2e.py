"""End to end: real instances behind the real Traefik, every request of a steady load counted."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, default_sigint, wait_for

pytestmark = pytest.mark.e2e

BOTH_ROUTERS = pytest.mark.parametrize("proj", ["traefik", "haproxy"], indirect=True)
"""The zero-failure tests run behind either router."""


def deploy_ok(p: Proj, *args: str) -> None:
    res = p.kiln("deploy", *args)
    assert res.returncode == 0, res.stdout + res.stderr


@BOTH_ROUTERS
def test_first_deploy_then_canary_to_100_under_load(proj: Proj) -> None:
    deploy_ok(proj)
    assert list(proj.weights().values()) == [100]
    with Load(proj.listen, rate=120, max_seconds=60, keep_body=30) as load:
        wait_for(lambda: load.stats.sent > 50)
        proj.behave(version="2")
        deploy_ok(proj)
        after = load.stats.sent
        wait_for(lambda: load.stats.sent > after + 50)  # keeps flowing on the new release
    stats = load.stats
    assert stats.sent > 100
    assert stats.failed == 0, stats.summary() + str(stats.error_samples)
    w = proj.weights()
    assert w == {"web-r2": 100}, w
    assert proj.alive_instances() == 3
    hist = proj.kiln("history", "web", "--json")
    assert hist.returncode == 0 and '"promoted"' in hist.stdout


def test_unchanged_deploy_does_nothing(proj: Proj) -> None:
    deploy_ok(proj)
    res = proj.kiln("deploy")
    assert res.returncode == 0 and "up to date" in res.stdout, res.stdout
    plan = proj.kiln("plan", "--json")
    assert '"unchanged"' in plan.stdout


@BOTH_ROUTERS
def test_health_gate_rolls_back_and_traffic_stays(proj: Proj) -> None:
    deploy_ok(proj)
    proj.write(health_path="/never-healthy", deadline="3s")
    with Load(proj.listen, rate=100, max_seconds=60) as load:
        res = proj.kiln("deploy")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "health gate" in (res.stdout + res.stderr)
    assert load.stats.failed == 0, load.stats.summary()
    assert proj.weights() == {"web-r1": 100}
    assert proj.alive_instances() == 3
    # The same image and config is not canaried again by accident...
    again = proj.kiln("deploy")
    assert again.returncode == 1 and "--force" in again.stderr, again.stderr
    # ...but can be, on purpose.
    forced = proj.kiln("deploy", "--force")
    assert forced.returncode == 3, forced.stdout + forced.stderr
    assert proj.weights() == {"web-r1": 100}


def test_app_that_exits_at_once_is_reported_fast(proj: Proj) -> None:
    deploy_ok(proj)
    (proj.dir / "app" / "__main__.py").write_text("raise SystemExit(7)\n")
    t = time.monotonic()
    res = proj.kiln("deploy", "--skip-tests")
    assert res.returncode == 3, res.stdout + res.stderr
    assert time.monotonic() - t < 15
    assert proj.weights() == {"web-r1": 100}
    assert proj.alive_instances() == 3


@contextlib.contextmanager
def paused_canary(proj: Proj, weight: int) -> Iterator[subprocess.Popen[str]]:
    """v1 live, then `kiln deploy` of v2 running in the background, its canary step waiting for
    `kiln promote`; the deploy process is killed on the way out if it is still running."""
    deploy_ok(proj)
    proj.write(rollout=f"      strategy: canary\n      steps:\n        - {{weight: {weight}}}\n")
    proj.behave(version="2")
    first = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        yield first
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_second_deploy_while_one_runs_exits_4(proj: Proj) -> None:
    with paused_canary(proj, 10) as first:
        wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
        second = proj.kiln("deploy")
        assert second.returncode == 4, second.stdout + second.stderr
        assert "deploy" in second.stderr and "pid" in second.stderr
        assert "kiln promote web" in second.stderr and "kiln abort web" in second.stderr
        # promote is a signal the running deploy picks up.
        assert proj.kiln("promote", "web").returncode == 0
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, out + err
    assert proj.weights() == {"web-r2": 100}


def test_ctrl_c_says_where_traffic_stands_and_how_to_go_on(proj: Proj) -> None:
    with paused_canary(proj, 10) as first:
        wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 130, out + err
    assert "Traceback" not in err
    assert "web: rollout #2 stopped in step; traffic: " in err, err
    assert "web-r2 10%" in err and "web-r1 90%" in err, err
    assert "`kiln deploy web` resumes it" in err and "`kiln abort web`" in err, err
    res = proj.kiln("abort", "web")
    assert res.returncode == 0, res.stdout + res.stderr
    assert proj.weights() == {"web-r1": 100}


def test_abort_rolls_back_paused_canary(proj: Proj) -> None:
    with paused_canary(proj, 25) as first:
        with Load(proj.listen, rate=100, max_seconds=60) as load:
            wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
            assert proj.kiln("abort", "web").returncode == 0
            first.communicate(timeout=60)
        assert first.returncode == 3
    assert load.stats.failed == 0, load.stats.summary()
    assert proj.weights() == {"web-r1": 100}


@pytest.mark.parametrize("strategy", [
    "      strategy: blue-green\n      scale_down_delay: 0s\n      drain_timeout: 3s\n",
    "      strategy: rolling\n      max_surge: 1\n      drain_timeout: 3s\n",
    "      strategy: rolling\n      max_surge: 0\n      max_unavailable: 1\n"
    "      drain_timeout: 3s\n",
])
@BOTH_ROUTERS
def test_blue_green_and_rolling_under_load(proj: Proj, strategy: str) -> None:
    proj.write(rollout=strategy)
    deploy_ok(proj)
    with Load(proj.listen, rate=120, max_seconds=60) as load:
        wait_for(lambda: load.stats.sent > 30)
        proj.behave(version="2")
        deploy_ok(proj)
    assert load.stats.failed == 0, load.stats.summary() + str(load.stats.error_samples)
    assert proj.weights() == {"web-r2": 100}
    assert proj.alive_instances() == 3


@BOTH_ROUTERS
def test_rollback_to_previous_release(proj: Proj) -> None:
    deploy_ok(proj)
    proj.behave(version="2")
    deploy_ok(proj)
    with Load(proj.listen, rate=100, max_seconds=60) as load:
        res = proj.kiln("rollback", "web")
        assert res.returncode == 0, res.stdout + res.stderr
    assert load.stats.failed == 0, load.stats.summary()
    # A rollback is a new rollout to the old image: same release id, live again.
    assert proj.weights() == {"web-r1": 100}


@pytest.mark.parametrize("fault", ["launched", "after:health", "routed", "after:step",
                                   "after:drain_old"])
def test_sigkill_at_each_boundary_converges(proj: Proj, fault: str) -> None:
    deploy_ok(proj)
    proj.behave(version="2")
    with Load(proj.listen, rate=80, max_seconds=90) as load:
        killed = proj.kiln("deploy", env={"KILN_FAULT": fault})
        assert killed.returncode == -9, killed.stdout + killed.stderr
        again = proj.kiln("deploy")
        assert again.returncode == 0, again.stdout + again.stderr
    assert proj.weights() == {"web-r2": 100}
    assert proj.alive_instances() == 3, "orphaned or missing instances"
    assert load.stats.conn_errors == 0 and load.stats.failed == 0, load.stats.summary()
    hist = proj.kiln("history", "web", "--json").stdout
    assert "web-r1" in hist and "web-r2" in hist


def test_rolling_rollback_restores_old_capacity_under_load(proj: Proj) -> None:
    import os
    import signal
    import sqlite3

    proj.write(rollout="      strategy: rolling\n      max_surge: 1\n      drain_timeout: 2s\n",
               deadline="20s")
    deploy_ok(proj)
    proj.behave(version="2")
    db = proj.dir / ".kiln" / "state.db"

    def replaced_one() -> int | None:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT json_extract(handle_json, '$.pid') FROM instances WHERE release_id = 'web-r2' "
                "AND state = 'running' AND json_extract(handle_json, '$.pid') IS NOT NULL").fetchall()
            gone = conn.execute("SELECT COUNT(*) FROM instances WHERE release_id = 'web-r1' "
                                "AND state = 'stopped'").fetchone()[0]
        return int(rows[0][0]) if rows and gone >= 1 else None

    with Load(proj.listen, rate=100, max_seconds=90) as load:
        deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            pid = wait_for(replaced_one, timeout=60)
            os.kill(pid, signal.SIGKILL)  # a new instance dies half-way through the update
            out, err = deploy.communicate(timeout=90)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
    assert deploy.returncode == 3, out + err
    assert proj.weights() == {"web-r1": 100}
    assert proj.alive_instances() == 3, "the old release is back at full strength"
    # Requests sent to the killed instance before kiln saw it die get 502s; nothing else fails.
    assert load.stats.conn_errors == 0
    assert load.stats.failed == load.stats.statuses[502] <= 10, load.stats.summary()
