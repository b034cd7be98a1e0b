"""Verdicts in words (kiln.analysis.explain): per metric, what was measured, the margin and why,
from a verdict's figures; the judge writes the figures the words need; no p-values in words."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kiln.analysis.explain import explain, lines
from kiln.analysis.judge import judge
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis

BASE: dict[str, Any] = {"confidence": 0.95, "canary_requests": 600, "baseline_requests": 5000,
                        "max_error_rate_increase": 0.02, "max_latency_increase": 0.25,
                        "canary_p50": 0.101, "canary_p95": 0.228, "baseline_p50": 0.1,
                        "baseline_p95": 0.228}


@pytest.mark.parametrize(("figures", "line"), [
    ({"error_outcome": "fail", "canary_error_rate": 0.061, "baseline_error_rate": 0.01,
      "error_increase_lower": 0.032, "error_increase_upper": 0.09, "error_p": 1e-5},
     "errors: canary 6.1 % vs baseline 1.0 %, allowed +2.0 points: failed — the canary's error "
     "rate is higher by at least 3.2 points at 95 % confidence, beyond the allowed +2.0 points"),
    ({"error_outcome": "fail", "canary_error_rate": 0.045, "baseline_error_rate": 0.01,
      "error_increase_lower": 0.015, "error_increase_upper": 0.06},
     "errors: canary 4.5 % vs baseline 1.0 %, allowed +2.0 points: failed — the always-valid "
     "test showed the increase is beyond the allowed +2.0 points (at 95 % confidence it is at "
     "least +1.5 points)"),
    ({"error_outcome": "pass", "canary_error_rate": 0.012, "baseline_error_rate": 0.011,
      "error_increase_lower": -0.015, "error_increase_upper": 0.017},
     "errors: canary 1.2 % vs baseline 1.1 %, allowed +2.0 points: passed — the increase is at "
     "most +1.7 points at 95 % confidence, inside the allowed +2.0 points"),
    ({"error_outcome": "undecided", "canary_error_rate": 0.02, "baseline_error_rate": 0.01,
      "error_increase_lower": -0.02, "error_increase_upper": 0.04},
     "errors: canary 2.0 % vs baseline 1.0 %, allowed +2.0 points: not decided yet — the "
     "increase could still be up to +4.0 points at 95 % confidence, more than the allowed +2.0 "
     "points: it needs more evidence"),
    ({"latency_outcome": "fail", "latency_theta_lower": 0.62, "latency_theta_upper": 0.7},
     "latency: canary p50 101 ms / p95 228 ms vs baseline p50 100 ms / p95 228 ms, allowed "
     "+25 % (or +5 ms): failed — a canary request is slower than allowed with probability at "
     "least 0.62 at 95 % confidence (0.50 would be no worse than allowed)"),
    ({"latency_outcome": "pass", "latency_theta_lower": 0.3, "latency_theta_upper": 0.42},
     "latency: canary p50 101 ms / p95 228 ms vs baseline p50 100 ms / p95 228 ms, allowed "
     "+25 % (or +5 ms): passed — a canary request is slower than allowed with probability at "
     "most 0.42 at 95 % confidence, under 0.50"),
    ({"metric:checkout:outcome": "fail", "metric:checkout:kind": "count",
      "metric:checkout:max_increase": 0.01, "metric:checkout:direction": "higher",
      "metric:checkout:dry_run": 1, "metric:checkout:canary_rate": 0.05,
      "metric:checkout:baseline_rate": 0.01, "metric:checkout:increase_lower": 0.02,
      "metric:checkout:increase_upper": 0.06, "metric:checkout:p": 1e-4},
     "checkout: rate canary 5.0 % vs baseline 1.0 %, allowed +1.0 points: would have failed "
     "(dry run) — the canary's rate is higher by at least 2.0 points at 95 % confidence, beyond "
     "the allowed +1.0 points"),
    ({"metric:queue:outcome": "undecided", "metric:queue:kind": "value",
      "metric:queue:max_increase": 0.25, "metric:queue:direction": "higher",
      "metric:queue:dry_run": 0, "metric:queue:theta": None},
     "queue: no values yet, allowed +25 %: not decided yet — no values yet"),
])
def test_each_metric_in_one_sentence(figures: dict[str, Any], line: str) -> None:
    assert lines({**BASE, **figures}) == [line]
    assert "p=" not in line and "p-value" not in line


def test_figures_from_before_the_words_say_nothing() -> None:
    assert explain({"canary_requests": 3, "error_p": 0.5}) == []


def test_the_judge_writes_what_the_words_need() -> None:
    rng = random.Random(3)

    def side(rel: str, n: int, err: float, mu: float) -> list[Sample]:
        out = []
        for i in range(n):
            bad = rng.random() < err
            out.append(Sample(rel, i * 0.01, 500 if bad else 200, rng.lognormvariate(mu, 0.5),
                              bad))
        return out

    v = judge(side("c", 800, 0.09, -1.8), side("b", 6000, 0.01, -2.3),
              Analysis(max_error_rate_increase=0.02))
    said = {e.metric: e for e in explain(v.figures)}
    assert v.outcome == "fail"
    assert said["errors"].outcome == "fail" and said["latency"].outcome == "fail"
    assert said["errors"].allowed == "allowed +2.0 points"
    assert "higher by at least" in said["errors"].why
    assert said["latency"].measured.startswith("canary p50 1")
