"""The user's own metrics in the judge: one budget split across them, every metric must be shown
within its margin before a step passes, a dry-run metric records what it would have done."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from kiln.analysis.judge import Budget, Judge
from kiln.platforms.base import Sample
from kiln.spec.loader import load_spec
from kiln.spec.models import Analysis, Metric

CANARY, BASELINE = "web-r2", "web-r1"


def count(name: str = "checkout", **kw: object) -> Metric:
    return Metric.model_validate({
        "name": name, "kind": "count", "failures": 'f{release="$release"}',
        "total": 't{release="$release"}', "max_increase": "1%", **kw})


def value(name: str = "queue", **kw: object) -> Metric:
    return Metric.model_validate({"name": name, "kind": "value",
                                  "query": 'q{release="$release"}', "max_increase": "25%", **kw})


@pytest.mark.parametrize(("analysis", "error", "ceiling", "latency", "metric"), [
    (Analysis(alpha=0.01), 0.005, 0.0, 0.005, 0.0),
    (Analysis(alpha=0.01, max_error_rate=0.05), 0.0025, 0.0025, 0.005, 0.0),
    (Analysis(alpha=0.012, metrics=[count()]), 0.004, 0.0, 0.004, 0.004),
    (Analysis(alpha=0.01, metrics=[count(), value(), count("c2", dry_run=True)]),
     0.002, 0.0, 0.002, 0.002),
    (Analysis(alpha=0.012, max_error_rate=0.05, metrics=[count()]), 0.002, 0.002, 0.004, 0.004),
])
def test_one_budget_split_across_every_test(analysis: Analysis, error: float, ceiling: float,
                                             latency: float, metric: float) -> None:
    b = Budget.of(analysis)
    assert (b.error, b.ceiling, b.latency, b.metric) == pytest.approx(
        (error, ceiling, latency, metric))
    # Bonferroni: the shares add up to the rollout's budget, never more.
    assert b.error + b.ceiling + b.latency + b.metric * len(analysis.metrics) == pytest.approx(
        analysis.alpha)


def _router(judge: Judge, rng: np.random.Generator, n_c: int, n_b: int) -> None:
    """Healthy router traffic on both sides: 1% 5xx, the same latency."""
    for rel, n in ((CANARY, n_c), (BASELINE, n_b)):
        err = rng.random(n) < 0.01
        lat = 0.05 * np.exp(0.5 * rng.standard_normal(n))
        judge.add(Sample(rel, i * 0.05, 500 if e else 200, float(d), bool(e))
                  for i, (e, d) in enumerate(zip(err, lat, strict=True)))


def _counts(judge: Judge, rng: np.random.Generator, name: str, rate_c: float, rate_b: float,
            n_c: int, n_b: int, windows: int = 20) -> None:
    for _ in range(windows):
        judge.add_metric_counts(name, CANARY, float(rng.binomial(n_c, rate_c)), n_c)
        judge.add_metric_counts(name, BASELINE, float(rng.binomial(n_b, rate_b)), n_b)
        judge.add_metric_counts(name, "web-r9", 10.0, 10)  # another release: ignored


def test_a_business_counter_fails_the_canary_while_5xx_and_latency_look_fine() -> None:
    rng = np.random.default_rng(1)
    j = Judge(Analysis(metrics=[count()]), CANARY, BASELINE)
    _router(j, rng, 2000, 18000)
    _counts(j, rng, "checkout", 0.04, 0.01, 100, 900)  # +3 points, 3x the allowed 1
    v = j.verdict()
    assert v.outcome == "fail", v.reason
    assert re.match(r"checkout: rate [34]\.\d\d% vs 1\.\d\d%, worse than allowed "
                    r"\(\+1\.00 points\); after 2000 canary requests$", v.reason), v.reason
    assert "5xx" not in v.reason and "latency" not in v.reason
    assert v.figures["metric:checkout:outcome"] == "fail"
    p = v.figures["metric:checkout:p"]
    assert isinstance(p, float) and p <= Budget.of(j.analysis).metric


def test_a_step_passes_only_when_every_metric_is_shown_within_its_margin() -> None:
    rng = np.random.default_rng(2)
    j = Judge(Analysis(metrics=[count(), value()]), CANARY, BASELINE)
    _router(j, rng, 4000, 36000)
    _counts(j, rng, "checkout", 0.01, 0.01, 1000, 9000)
    v = j.verdict()
    assert v.outcome == "undecided", v.reason  # the queue metric has no data yet
    assert "queue: no data yet" in v.reason
    for _ in range(60):
        j.add_metric_values("queue", CANARY, 0.2 * np.exp(0.1 * rng.standard_normal(1)))
        j.add_metric_values("queue", BASELINE, 0.2 * np.exp(0.1 * rng.standard_normal(3)))
    v = j.verdict()
    assert v.outcome == "pass", v.reason
    assert v.figures["metric:checkout:outcome"] == "pass"
    assert v.figures["metric:queue:outcome"] == "pass"


def test_a_value_metric_is_judged_like_latency_and_lower_can_be_worse() -> None:
    rng = np.random.default_rng(3)
    up = Judge(Analysis(metrics=[value()]), CANARY, BASELINE)
    down = Judge(Analysis(metrics=[value(direction="lower")]), CANARY, BASELINE)
    for _ in range(80):
        c, b = 0.3 * np.exp(0.1 * rng.standard_normal(1)), 0.2 * np.exp(0.1 * rng.standard_normal(3))
        up.add_metric_values("queue", CANARY, c)  # +50%, twice the allowed 25%
        up.add_metric_values("queue", BASELINE, b)
        down.add_metric_values("queue", CANARY, 0.2 * c / 0.3 * 0.6)  # -40%: 1/v is +67%
        down.add_metric_values("queue", BASELINE, b)
    assert up.verdict().figures["metric:queue:outcome"] == "fail"
    assert down.verdict().figures["metric:queue:outcome"] == "fail"


def test_lower_is_worse_for_a_count_judges_the_shortfall() -> None:
    rng = np.random.default_rng(4)
    j = Judge(Analysis(metrics=[count("conversion", direction="lower")]), CANARY, BASELINE)
    _counts(j, rng, "conversion", 0.90, 0.95, 200, 1800)  # conversions drop 5 points
    v = j.verdict()
    assert v.figures["metric:conversion:outcome"] == "fail", v.figures
    assert "shortfall (1 - rate) 10." in str(v.figures["metric:conversion:reason"])


def test_a_dry_run_metric_records_what_it_would_have_done_and_never_fails_the_canary() -> None:
    rng = np.random.default_rng(5)
    j = Judge(Analysis(metrics=[count(dry_run=True)]), CANARY, BASELINE)
    _router(j, rng, 4000, 36000)
    _counts(j, rng, "checkout", 0.05, 0.01, 200, 1800)
    v = j.verdict()
    assert v.outcome == "pass", v.reason  # 5xx and latency are fine; the dry-run metric not
    assert v.figures["metric:checkout:outcome"] == "fail"
    assert re.match(r"would have rolled back: checkout: rate [45]\.\d\d% vs 1\.\d\d%, "
                    r"worse than allowed", str(v.figures["would_fail"]))
    # In the reason too: what status, history, the report and the dashboard show.
    assert "; dry run: would have rolled back: checkout: rate " in v.reason, v.reason


def test_the_first_metric_failure_is_latched() -> None:
    rng = np.random.default_rng(6)
    j = Judge(Analysis(metrics=[count()]), CANARY, BASELINE)
    _counts(j, rng, "checkout", 0.10, 0.01, 100, 900)
    assert j.verdict().outcome == "fail"
    _counts(j, rng, "checkout", 0.01, 0.01, 100_000, 900_000)
    assert j.verdict().outcome == "fail"


def test_the_issue_shape_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("kiln.yaml").write_text("""\
project: shop
images:
  web: {steps: [{run: "true"}]}
prometheus: {url: "http://127.0.0.1:9090"}
services:
  web:
    image: web
    command: python -m app
    listen: 127.0.0.1:8080
    rollout:
      analysis:
        metrics:
          - name: checkout_failures
            kind: count
            failures: sum(increase(checkout_failures_total{release="$release"}[$window]))
            total: sum(increase(checkout_total{release="$release"}[$window]))
            max_increase: 1%
            dry_run: false
          - {name: queue, kind: value, query: 'avg(q{release="$release"})',
             max_increase: 25%, direction: lower, dry_run: true}
""")
    analysis = load_spec(Path("kiln.yaml")).spec.services["web"].rollout.analysis
    assert analysis is not None
    checkout, queue = analysis.metrics
    assert (checkout.kind, checkout.max_increase, checkout.direction, checkout.dry_run) == (
        "count", 0.01, "higher", False)
    assert checkout.total == 'sum(increase(checkout_total{release="$release"}[$window]))'
    assert (queue.kind, queue.max_increase, queue.direction, queue.dry_run) == (
        "value", 0.25, "lower", True)
