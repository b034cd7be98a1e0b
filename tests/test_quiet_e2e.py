"""End to end: a quiet service (1 req/s of real traffic) with `rollout.load` gathers its evidence
from kiln's synthetic GETs through the router: a good canary passes, a bad one is rolled back,
both within the progress deadline; without `load:` `kiln plan` warns in one line; the load
stops when `kiln deploy` is interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, default_sigint, wait_for

pytestmark = pytest.mark.e2e

PAUSE_S, DEADLINE_S = 5, 60


def rollout(load: str | None) -> str:
    return ("      strategy: canary\n      steps:\n        - {weight: 50, pause: 5s}\n"
            "      analysis: {max_error_rate_increase: 0.02, max_latency_increase: 50%, "
            "min_requests: 50, on_no_data: pause}\n"
            f"      progress_deadline: {DEADLINE_S}s\n      drain_timeout: 3s\n"
            + (f"      load: {load}\n" if load else ""))


LOAD = "{path: /, rate: 40/s}"


def first_release(p: Proj, load: str | None) -> None:
    p.write(rollout=rollout(load), replicas=1)
    res = p.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr


def last_rollout(p: Proj) -> dict[str, object]:
    hist = json.loads(p.kiln("history", "web", "--json").stdout)["rollouts"]
    return dict(hist[-1])


def test_plan_warns_without_load_and_counts_it_with(proj: Proj) -> None:
    first_release(proj, None)
    proj.behave(version="2")
    with Load(proj.listen, rate=1, max_seconds=60, workers=1):
        res = proj.kiln("plan")
        assert res.returncode in (0, 2), res.stdout + res.stderr
        warnings = [line for line in res.stdout.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, res.stdout
        assert "time to evidence at " in res.stdout and "50% step ~" in res.stdout, res.stdout
        assert "the 50% step needs ~" in warnings[0] and "progress_deadline" in warnings[0]
        assert "synthetic load (rollout.load)" in warnings[0]
        proj.write(rollout=rollout(LOAD), replicas=1)
        res = proj.kiln("plan", "--json")
        plan = json.loads(res.stdout)
        evidence = next(it["evidence"] for it in plan if it.get("evidence"))
    assert evidence["synthetic_rate"] == 40 and evidence["warning"] is None, evidence


def deploy_quiet(p: Proj, **behaviour: object) -> tuple[subprocess.CompletedProcess[str], float]:
    """v1, then v2 under 1 req/s of real traffic; the result and how long the rollout took."""
    first_release(p, LOAD)
    p.behave(version="2", **behaviour)
    with Load(p.listen, rate=1, max_seconds=150, workers=1):
        res = p.kiln("deploy", timeout=150)
    ro = last_rollout(p)
    return res, float(ro["finished_at"]) - float(ro["started_at"])  # type: ignore[arg-type]


def test_quiet_service_with_load_passes_a_good_canary(proj: Proj) -> None:
    res, took = deploy_quiet(proj)
    assert res.returncode == 0, res.stdout + res.stderr
    ro = last_rollout(proj)
    assert (ro["outcome"], ro["reason"]) == ("promoted", "all steps passed"), ro
    assert proj.weights() == {"web-r2": 100}
    status = proj.status()["services"][0]["rollout"]
    synthetic = status["synthetic"]
    # 40/s for at least the pause; stopped once the step ended
    assert synthetic["sent"] >= 40 * PAUSE_S and synthetic["running"] is False, synthetic
    assert synthetic["errors"] == 0 and synthetic["paths"] == ["/"]
    assert "synthetic load:" in proj.kiln("status").stdout
    report = (proj.dir / ".kiln" / "reports" / f"rollout-{status['rollout_id']}.html")
    assert "Synthetic traffic." in report.read_text()
    assert took < PAUSE_S + DEADLINE_S, took  # passed, not timed out


def test_quiet_service_with_load_rolls_back_a_bad_canary(proj: Proj) -> None:
    res, took = deploy_quiet(proj, error_rate=0.3)
    assert res.returncode == 3, res.stdout + res.stderr
    ro = last_rollout(proj)
    assert ro["outcome"] == "rolled_back" and "5xx" in str(ro["reason"]), ro
    assert "progress deadline" not in str(ro["reason"])  # failed by evidence, not by time
    assert took < PAUSE_S + DEADLINE_S, took
    assert proj.weights() == {"web-r1": 100}


def test_the_load_stops_when_deploy_is_interrupted(proj: Proj) -> None:
    first_release(proj, LOAD)
    proj.write(rollout=rollout(LOAD).replace("pause: 5s", "pause: 60s"), replicas=1)
    proj.behave(version="2")
    log = proj.dir / ".kiln" / "router" / "access.log"
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        def sending() -> bool:
            ro = proj.status()["services"][0]["rollout"] or {}
            return bool((ro.get("synthetic") or {}).get("sent", 0) > 40)

        wait_for(sending, timeout=90, interval=0.3, what="the synthetic load to run")
        deploy.send_signal(signal.SIGINT)
        out, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 130, out + err
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    # Nothing sends any more: the access log stays put over a second (at 40/s it would grow
    # by ~40 lines). A bounded observation window, not a wait for a result.
    size = log.stat().st_size
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        assert log.stat().st_size == size, "requests still reach the router after ^C"
        time.sleep(0.1)
    res = proj.kiln("abort", "web")
    assert res.returncode == 0, res.stdout + res.stderr
