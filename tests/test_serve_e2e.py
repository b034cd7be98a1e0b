"""End to end: `kiln serve` keeps the desired state with nobody typing. A killed instance comes
back by itself under load (no new release), a blue-green standby ends on time, a deploy typed
beside it is handed over to it, and SIGTERM leaves everything serving."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, wait_for
from kiln.testing.serve import ServeProc

pytestmark = pytest.mark.e2e

INTERVAL = 1.0  # the service's health interval in these tests


def slow_health(proj: Proj) -> None:
    spec = proj.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace("interval: 200ms", f"interval: {INTERVAL:g}s"))


def event_time(srv: ServeProc, kind: str, after: float) -> float | None:
    times = [e["time"] for e in srv.events(kind) if e["time"] >= after]
    return min(times) if times else None


def test_killed_instance_comes_back_under_load_and_sigterm_leaves_it_serving(proj: Proj) -> None:
    proj.write(replicas=2)
    slow_health(proj)
    assert proj.kiln("deploy").returncode == 0
    with ServeProc(proj.dir) as srv, Load(proj.listen, rate=100, max_seconds=90) as load:
        wait_for(lambda: load.stats.sent > 100, timeout=20)
        victim = proj.live_pids()[0]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: event_time(srv, "instance.in_rotation", killed_at), timeout=30,
                 what="a replacement in rotation")
        back = event_time(srv, "instance.in_rotation", killed_at)
        launched = event_time(srv, "instance.launch", killed_at)
        assert back is not None and launched is not None
        start_time = back - launched  # launch to healthy and routed
        gap = back - killed_at
        sent_at_back, failed_at_back = load.stats.sent, load.stats.failed
        wait_for(lambda: load.stats.sent > sent_at_back + 100, timeout=20)
        load.stop()
        print(f"\nreplaced in {gap:.2f}s (start time {start_time:.2f}s, detection and launch "
              f"{gap - start_time:.2f}s); {load.stats.summary()}")
        assert gap <= 2 * INTERVAL + start_time, (gap, start_time)
        status = srv.status()["services"][0]
        assert [r["release"] for r in status["releases"]] == ["web-r1"]  # no new release
        assert len([i for i in status["releases"][0]["instances"] if i["alive"]]) == 2
        # Requests that failed in the gap are counted (the router had the dead one until the
        # controller took it out): at most the gap's share; after that, none fail.
        assert failed_at_back <= 100 * gap, load.stats.summary()
        assert load.stats.failed - failed_at_back <= 1, load.stats.summary()  # one in flight
        assert srv.stop() == 0
    assert proj.alive_instances() == 2
    assert proj.weights() == {"web-r1": 100}
    with Load(proj.listen, rate=50, max_requests=50, max_seconds=20) as after:
        wait_for(lambda: after.stats.sent >= 50, timeout=20)
    assert after.stats.failed == 0, after.stats.summary()


def test_standby_ends_on_time_and_a_typed_deploy_is_handed_over(proj: Proj) -> None:
    delay = 4.0
    proj.write(rollout=f"      strategy: blue-green\n      scale_down_delay: {delay:g}s\n"
                       "      drain_timeout: 2s\n", replicas=1)
    assert proj.kiln("deploy").returncode == 0
    with ServeProc(proj.dir) as srv:
        proj.behave(version="2")
        res = proj.kiln("deploy", timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        handed = srv.events("rollout.handed_over")
        assert handed and "kiln serve" in handed[0]["message"]
        standby = srv.status()["services"][0]["rollout"]
        assert standby["phase"] == "standby" and standby["outcome"] == "promoted"
        until = float(standby["standby_until"])
        assert proj.alive_instances() == 2  # the old set waits at weight 0
        # Nobody types anything: the controller ends the standby when it is due.
        ended = wait_for(lambda: event_time(srv, "standby.ended", 0), timeout=delay + 20,
                         what="standby ended")
        print(f"\nstandby ended {ended - until:+.2f}s after its deadline")
        assert until <= ended <= until + 2.0
        wait_for(lambda: proj.alive_instances() == 1, timeout=10)
        assert srv.status()["services"][0]["rollout"]["phase"] == "done"
    assert proj.weights() == {"web-r2": 100}


def test_controller_resumes_a_rollout_whose_deploy_was_killed(proj: Proj) -> None:
    proj.write(rollout="      strategy: canary\n      steps:\n        - {weight: 30}\n"
                       "      drain_timeout: 2s\n", replicas=1)
    assert proj.kiln("deploy").returncode == 0
    proj.behave(version="2")
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=90,
                 what="the canary waiting for promote")
        deploy.kill()  # the terminal that drove the rollout is gone
        deploy.wait(10)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    with ServeProc(proj.dir) as srv:
        code, body = srv.post("/api/services/web/promote", token=srv.token)
        assert code == 200 and body["outcome"] == "signalled", body
        wait_for(lambda: srv.events("controller.rollout_settled"), timeout=60,
                 what="the resumed rollout settled")
        assert srv.status()["services"][0]["current"] == "web-r2"
        assert srv.events("lock.takeover")  # the killed deploy's lock
    assert proj.weights() == {"web-r2": 100}


def test_serve_reloads_an_edited_spec_and_refuses_an_invalid_one(proj: Proj) -> None:
    """Issue 19: edit kiln.yaml, `kiln validate` says ok, `kiln deploy` hands the rollout over:
    the controller drives it with the edited rollout settings (here a blue-green standby the
    start-up spec did not have), and an invalid edit is refused with one line, once."""
    proj.write(replicas=1)
    assert proj.kiln("deploy").returncode == 0
    with ServeProc(proj.dir) as srv:
        spec = proj.dir / "kiln.yaml"
        good = spec.read_text()
        spec.write_text(good.replace("replicas: 1", "replicas: -1"))
        wait_for(lambda: any("invalid, kept the last good one" in ln for ln in srv.output),
                 timeout=20, what="the invalid spec refused")
        proj.write(rollout="      strategy: blue-green\n      scale_down_delay: 60s\n"
                           "      drain_timeout: 1s\n", replicas=1)
        proj.behave(version="2")
        assert proj.kiln("validate").stdout.strip() == "ok"
        res = proj.kiln("deploy", timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert srv.events("rollout.handed_over")
        ro = srv.status()["services"][0]["rollout"]
        assert ro["phase"] == "standby" and ro["outcome"] == "promoted", ro
        refused = [ln for ln in srv.output if "invalid, kept the last good one" in ln]
        assert len(refused) == 1 and "replicas" in refused[0], srv.output
        assert any("changed: reloaded" in ln for ln in srv.output), srv.output
        assert len(srv.events("controller.spec_refused")) == 1
    assert proj.weights()["web-r2"] == 100
