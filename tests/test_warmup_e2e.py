"""End to end: a release slow for its first 20 s (a cold start) is rolled back without a
warm-up and canaries to 100 % with `analysis.warmup`; the live status shows the evidence."""

from __future__ import annotations

import json

import pytest

from kiln.testing.load import Load
from kiln.testing.project import Proj, wait_for

pytestmark = pytest.mark.e2e


def rollout(warmup: str) -> str:
    return ("      strategy: canary\n      steps:\n        - {weight: 50, pause: 5s}\n"
            "      analysis: {max_error_rate_increase: 0.02, max_latency_increase: 25%, "
            f"min_requests: 50,\n                 on_no_data: pause, warmup: {warmup}}}\n"
            "      progress_deadline: 60s\n      drain_timeout: 3s\n")


def deploy_cold_release(p: Proj, warmup: str) -> tuple[int, str, str]:
    p.write(rollout=rollout(warmup), replicas=1)
    res = p.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    p.behave(version="2", cold_s=20, cold_ms=40)  # 40 ms over a ~1 ms baseline while cold
    with Load(p.listen, rate=60, max_seconds=120) as load:
        wait_for(lambda: load.stats.sent > 30)
        res = p.kiln("deploy", timeout=150)
    hist = json.loads(p.kiln("history", "web", "--json").stdout)["rollouts"][-1]
    return res.returncode, str(hist["outcome"]), res.stdout + res.stderr


def test_cold_start_is_rolled_back_without_a_warmup(proj: Proj) -> None:
    code, outcome, out = deploy_cold_release(proj, "0s")
    assert (code, outcome) == (3, "rolled_back"), out
    assert proj.weights() == {"web-r1": 100}


def test_cold_start_canaries_to_100_with_a_warmup(proj: Proj) -> None:
    code, outcome, out = deploy_cold_release(proj, "25s")
    assert (code, outcome) == (0, "promoted"), out
    assert proj.weights() == {"web-r2": 100}
