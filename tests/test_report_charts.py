"""The report's and the dashboard's chart data draw what the judge used and nothing else (pure)."""

from __future__ import annotations

import pytest

from kiln.analysis.judge import LATENCY_FLOOR_S
from kiln.analysis.report import Bucket, ReportData, chart_payload, thresholds_text

ANALYSIS = {"max_error_rate_increase": 0.01, "max_error_rate": None,
            "max_latency_increase": 0.25, "min_requests": 100, "on_no_data": "pause"}


def data(base_p50: float, weights: list[tuple[float, int]], canary_secs: range) -> ReportData:
    buckets = [Bucket(float(t), "web-r1", 50, 1, base_p50, 2 * base_p50) for t in range(30)]
    buckets += [Bucket(float(t), "web-r2", 10, 2, base_p50, 2 * base_p50) for t in canary_secs]
    d = ReportData("web", "web-r2", "web-r1", 1.7e9, weights, sorted(buckets, key=lambda b: b.t))
    d.analysis = dict(ANALYSIS)
    return d


def test_latency_limit_includes_the_judges_floor() -> None:
    fast = chart_payload(data(0.004, [(0, 10)], range(30)))  # 4 ms: +25% is 1 ms < the floor
    pairs = list(zip(fast["lat"]["baseline_p50"], fast["lat"]["limit"], strict=True))
    assert sum(base is not None for base, _ in pairs) == 30
    for base, limit in pairs:
        assert (base is None) == (limit is None)
        assert base is None or abs(limit - (base + 1000 * LATENCY_FLOOR_S)) < 0.02
    slow = chart_payload(data(0.100, [(0, 10)], range(30)))  # 100 ms: +25% is 25 ms > the floor
    for base, limit in zip(slow["lat"]["baseline_p50"], slow["lat"]["limit"], strict=True):
        assert base is None or abs(limit - 1.25 * base) < 0.02
    assert "or +5 ms" in thresholds_text(ANALYSIS)


def test_canary_series_only_while_it_has_weight() -> None:
    # Canary requests from t=0 (health checks through the router), weight from t=5, rolled
    # back (weight 0) at t=20 while it still drains requests until t=25.
    # Weights are noted once a second: the second either side of a change is kept.
    p = chart_payload(data(0.05, [(5, 10), (20, 0)], range(0, 25)))
    for key in ("canary_p50", "canary_p95"):
        assert all(v is None for v in p["lat"][key][:4] + p["lat"][key][21:])
        assert all(v is not None for v in p["lat"][key][4:21])
    err = p["err"]["canary"]
    assert all(v is None for v in err[:4] + err[21:]) and all(v is not None for v in err[4:21])
    assert all(v is not None for v in p["err"]["baseline"][:30])


def test_a_rollback_after_one_look_keeps_its_single_point() -> None:
    p = chart_payload(data(0.05, [(3, 10), (4, 0)], range(3, 4)))  # one second of canary
    assert [i for i, v in enumerate(p["lat"]["canary_p50"]) if v is not None] == [3]
    assert [i for i, v in enumerate(p["err"]["canary"]) if v is not None] == [3]
    assert p["lat"]["limit"][3] is not None


def test_without_recorded_weights_nothing_is_hidden() -> None:
    p = chart_payload(data(0.05, [], range(0, 10)))
    assert all(v is not None for v in p["lat"]["canary_p50"][:10])


@pytest.mark.parametrize(("weights", "drawn"), [
    ([(0.3, 20), (0.9, 0)], [20, 0, 0]),             # a step ended in under a second is drawn
    ([(0.3, 20), (1.5, 0)], [20, 20, 0]),
    ([(0.2, 20), (8.3, 50)], [20] * 8 + [20, 50]),   # the weight judged at 8.3 s was 20
    ([(0.0, 20), (2.0, 50), (2.4, 0)], [20, 20, 50]),
    ([], [None, None, None]),
])
def test_the_weight_drawn_per_second(weights: list[tuple[float, int]],
                                     drawn: list[int | None]) -> None:
    from kiln.analysis.report import _weight_in_second
    assert [_weight_in_second(weights, t) for t in range(len(drawn))] == drawn
