"""End to end: the judge under real load through Traefik rolls bad releases back and promotes a
good one; every request of the load is counted, and the ones that hit the bad release too."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from kiln.testing.load import Load, LoadStats
from kiln.testing.project import KILN, Proj, judged_canary, wait_for

pytestmark = pytest.mark.e2e

JUDGED = judged_canary([(20, "20s"), (50, "10s")], max_latency_increase="25%")
PAUSES = 30.0  # seconds of pauses in JUDGED: a sequential judge decides well before


def first_release(p: Proj) -> None:
    p.write(rollout=JUDGED)
    res = p.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert p.weights() == {"web-r1": 100}


def hit_v2(stats: LoadStats) -> int:
    return sum(n for body, n in stats.bodies.items() if "version 2" in body)


def deploy_under_load(p: Proj) -> tuple[subprocess.CompletedProcess[str], LoadStats, float]:
    with Load(p.listen, rate=120, max_seconds=90, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 50)
        t = time.monotonic()
        res = p.kiln("deploy", timeout=120)
        took = time.monotonic() - t
    return res, load.stats, took


def assert_rolled_back(p: Proj, res: subprocess.CompletedProcess[str], stats: LoadStats,
                       took: float, pids_before: list[int]) -> dict[str, object]:
    assert res.returncode == 3, res.stdout + res.stderr
    assert took < PAUSES, f"deploy took {took:.1f}s: the judge waited for the pauses"
    assert stats.conn_errors == 0, stats.summary() + str(stats.error_samples)
    assert p.weights() == {"web-r1": 100}
    assert sorted(p.live_pids()) == pids_before, "instances of the bad release left running"
    hist = json.loads(p.kiln("history", "web", "--json").stdout)
    last = hist["rollouts"][-1]
    assert last["release"] == "web-r2" and last["outcome"] == "rolled_back", last
    # The console may wrap the path; paths here hold no spaces.
    match = re.search(r"report:(/\S+?\.kiln/reports/rollout-\d+\.html)", "".join(res.stdout.split()))
    assert match, res.stdout
    report = Path(match.group(1))
    assert report.is_file() and report.parent == p.dir / ".kiln" / "reports"
    assert "<html" in report.read_text().lower()
    rollout: dict[str, object] = last
    return rollout


def test_errors_are_rolled_back_fast(proj: Proj) -> None:
    first_release(proj)
    pids = sorted(proj.live_pids())
    proj.behave(version="2", error_rate=0.2)
    res, stats, took = deploy_under_load(proj)
    last = assert_rolled_back(proj, res, stats, took, pids)
    reason = str(last["reason"])
    assert "5xx" in reason and re.search(r"\d", reason), reason
    exposed = hit_v2(stats)
    print(f"\n5xx canary: rolled back after {took:.1f}s; {exposed} requests hit web-r2 "
          f"({stats.statuses[500]} of them 500); reason: {reason}; load: {stats.summary()}")
    assert exposed > 0, "the canary never got traffic"
    assert exposed < 400, exposed
    # Every 500 came from the bad release; the old one answered everything else.
    assert all("version 2" in b for b in stats.bodies if "error" in b), stats.bodies


def test_latency_is_rolled_back(proj: Proj) -> None:
    first_release(proj)
    pids = sorted(proj.live_pids())
    proj.behave(version="2", extra_latency_ms=60)
    res, stats, took = deploy_under_load(proj)
    last = assert_rolled_back(proj, res, stats, took, pids)
    assert stats.failed == 0, stats.summary()
    print(f"\nlatency canary: rolled back after {took:.1f}s; {hit_v2(stats)} requests hit "
          f"web-r2; reason: {last['reason']}")
    assert "latency" in str(last["reason"]).lower() or "p50" in str(last["reason"]), last


def test_good_release_is_promoted(proj: Proj) -> None:
    first_release(proj)
    proj.behave(version="2")
    res, stats, took = deploy_under_load(proj)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stats.failed == 0, stats.summary() + str(stats.error_samples)
    assert proj.weights() == {"web-r2": 100}
    assert proj.alive_instances() == 3
    print(f"\ngood canary: promoted after {took:.1f}s; {hit_v2(stats)} requests on web-r2")


def test_no_traffic_is_never_a_pass(proj: Proj) -> None:
    first_release(proj)
    proj.behave(version="2")
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        status = wait_for(lambda: (s := proj.kiln("status")).returncode == 0
                          and "undecided" in s.stdout and s.stdout, timeout=60)
        assert "web-r2" in status
        assert proj.weights().get("web-r2", 0) < 100
        assert deploy.poll() is None, "deploy settled without data"
        assert proj.kiln("abort", "web").returncode == 0
        out, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 3, out + err
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert proj.weights() == {"web-r1": 100}
    assert json.loads(proj.kiln("history", "web", "--json").stdout)["rollouts"][-1][
        "outcome"] == "aborted"
