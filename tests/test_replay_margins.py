"""`kiln judge replay`'s per-metric margins and its words for a metric without data, on
recordings shaped like the demo's: a canary rolled back on a business count metric replays as
that fail under the recorded settings and passes when every failure rate is allowed 50 points;
`--max-error-rate-increase` moves the 5xx margin only; a metric the rollout ended before
Prometheus answered for says so; bad `--max-increase` input is one line, exit 2."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from json_contract import conforms
from kiln.analysis.explain import Explained
from kiln.analysis.judge import Judge
from kiln.analysis.recording import Recording
from kiln.analysis.replay import no_data_words, replay
from kiln.analysis.summary import aggregate
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis, Metric
from kiln.usecases.replay import BadSetting, replay_json, settings

T0 = 1_700_000_000.0
CHECKOUT = Metric(name="checkout_failures", kind="count",
                  failures='sum(increase(checkout_failures_total{release="$release"}[$window]))',
                  total='sum(increase(checkout_total{release="$release"}[$window]))',
                  max_increase=0.02)
# The demo's analysis (examples/shop/kiln.yaml).
DEMO = Analysis(max_error_rate_increase=0.02, max_latency_increase=0.5, min_requests=50,
                metrics=[CHECKOUT])


def second(rng: random.Random, sec: int, error_rate: float) -> list[Sample]:
    """One second of the demo's traffic at 20 %: 30 canary and 120 baseline requests, every
    page fast (the canary's pages fail at `error_rate`)."""
    out = []
    for rel, n in (("web-r4", 30), ("web-r2", 120)):
        for i in range(n):
            bad = rel == "web-r4" and rng.random() < error_rate
            out.append(Sample(rel, T0 + sec + i / n, 500 if bad else 200,
                              rng.lognormvariate(-6.5, 0.4), bad))
    return out


def rollout(checkout_failure_rate: float, *, scraped_after: int, seed: int = 3,
            analysis: Analysis = DEMO, error_rate: float = 0.0
            ) -> tuple[Recording, list[dict[str, Any]]]:
    """Judge second by second as the live judge does, recording what it is given. Every
    request is a checkout; Prometheus answers for the canary only from `scraped_after` s (its
    discovery tick), with the checkouts since then. The first fail is step 1's decision."""
    rng = random.Random(seed)
    judge = Judge(analysis, "web-r4", "web-r2")
    rec = Recording("web-r4", "web-r2", "access-log")
    failed = {"web-r4": 0, "web-r2": 0}
    total = {"web-r4": 0, "web-r2": 0}
    for sec in range(60):
        samples = second(rng, sec, error_rate)
        windows = aggregate(samples)
        judge.add_windows(windows)
        rec.add_windows(windows)
        now = T0 + sec + 1.2
        for s in samples:
            total[s.release_id] += 1
            if s.release_id == "web-r4" and rng.random() < checkout_failure_rate:
                failed[s.release_id] += 1
        for rel in ("web-r4", "web-r2"):
            if rel == "web-r2" or sec >= scraped_after:
                base = 0 if rel == "web-r2" else 30 * scraped_after  # unseen before the scrape
                f = failed[rel] if rel == "web-r2" else round(
                    failed[rel] * (total[rel] - base) / total[rel])
                judge.set_metric_counts(CHECKOUT.name, rel, f, total[rel] - base)
                rec.add_counts(now, CHECKOUT.name, rel, f, total[rel] - base)
        v = judge.verdict(now)
        if v.outcome == "fail":
            return rec, [{"time": now, "step": 0, "weight": 20, "outcome": "fail",
                          "reason": v.reason}]
    raise AssertionError("the live judge never failed the canary")


def test_a_business_metric_rollback_reproduces_and_passes_50_points_on_every_failure_rate(
        ) -> None:
    rec, decisions = rollout(0.07, scraped_after=5)
    assert decisions[0]["reason"].startswith("checkout_failures: rate")
    same = replay(rec, settings(DEMO, {}), decisions)
    assert [s.replayed for s in same.steps] == ["fail"]
    assert same.steps[0].reason == decisions[0]["reason"], "the recorded verdict, reproduced"

    # The 5xx margin alone leaves the business metric at its own +2 points: still rolled back.
    errors_only = settings(DEMO, {"max_error_rate_increase": "50%"})
    assert errors_only.metrics[0].max_increase == 0.02
    assert replay(rec, errors_only, decisions).steps[0].reason.startswith("checkout_failures")

    loose = settings(DEMO, {"max_error_rate_increase": "50%",
                            "max_increase": ["checkout_failures=50%"]})
    got = replay(rec, loose, decisions)
    assert [s.replayed for s in got.steps] == ["pass"], got.steps[0].reason
    words = {e.metric: e for e in got.steps[0].explained}
    assert words["checkout_failures"].outcome == "pass"
    assert "allowed +50.0 points: passed" in words["checkout_failures"].line()
    assert words["errors"].outcome == "pass" and words["latency"].outcome == "pass"

    data = replay_json(4, "web", rec, {"outcome": "rolled_back", "reason": "x",
                                       "decisions": decisions}, DEMO, loose)
    conforms("replay", json.dumps(data))
    assert data["outcome"] == "pass"
    assert data["settings"]["metrics"] == [{"name": "checkout_failures", "max_increase": 0.5}]
    assert data["recorded_settings"]["metrics"] == [
        {"name": "checkout_failures", "max_increase": 0.02}]


def test_a_fast_rollback_on_a_large_fault_has_too_little_evidence_for_50_points() -> None:
    # 30 % of checkouts fail: the live judge fails it within a few dozen checkouts, too few
    # to show "at most +50 points" at 95 % confidence: undecided, honestly, not pass.
    rec, decisions = rollout(0.30, scraped_after=5)
    loose = settings(DEMO, {"max_error_rate_increase": "50%",
                            "max_increase": ["checkout_failures=50%"]})
    step = replay(rec, loose, decisions).steps[0]
    assert step.replayed == "undecided"
    assert {e.metric: e.outcome for e in step.explained}["checkout_failures"] == "undecided"


def test_a_metric_the_rollout_ended_before_prometheus_answered_for_says_so() -> None:
    # The demo's v3: 20 % 5xx, rolled back on errors before Prometheus answered for it.
    rec, decisions = rollout(0.0, scraped_after=99, error_rate=0.2)
    assert decisions[0]["reason"].startswith("5xx")
    got = replay(rec, settings(DEMO, {"max_error_rate_increase": "50%"}), decisions)
    assert got.outcome == "undecided"
    words = {e.metric: e for e in got.steps[0].explained}
    line = words["checkout_failures"].line()
    took = decisions[0]["time"] - T0
    assert line == (
        "checkout_failures: no data for the canary, allowed +2.0 points: not decided yet — "
        f"the rollout ended {took:.1f} s after the canary took traffic, before the metric's "
        "query had any answer for the canary (Prometheus needs two scrapes of a new "
        "instance)"), line
    assert got.summary() == ("undecided at step(s) 1: no checkout_failures data for the "
                             "canary")
    assert "checkout_failures: no data for the canary" in got.steps[0].reason
    assert "no data yet" not in got.steps[0].reason


NO = Explained("queue", "undecided", "no data yet", "allowed +2.0 points", "no data yet")


@pytest.mark.parametrize(("figures", "what", "since", "measured", "why"), [
    ({"kind": "count", "canary_n": 0, "baseline_n": 40}, "the rollout ended", T0,
     "no data for the canary", "the rollout ended 3.5 s after the canary took traffic, before "
     "the metric's query had any answer for the canary (Prometheus needs two scrapes of a new "
     "instance)"),
    ({"kind": "count", "canary_n": 12, "baseline_n": 0}, "step 2 was decided", T0,
     "no data for the baseline", "step 2 was decided 3.5 s after the canary took traffic, before "
     "the metric's query had any answer for the baseline"),
    ({"kind": "value", "canary_n": 0, "baseline_n": 0}, "the rollout ended", None,
     "no values for either release", "the rollout ended, before the metric's query had any "
     "answer for either release (Prometheus needs two scrapes of a new instance)"),
])
def test_no_data_words(figures: dict[str, Any], what: str, since: float | None,
                       measured: str, why: str) -> None:
    figs = {f"metric:queue:{k}": v for k, v in figures.items()}
    got = no_data_words(NO, figs, T0 + 3.5, since, what)
    assert (got.measured, got.why) == (measured, why)


def test_a_metric_with_data_or_decided_keeps_its_words() -> None:
    figs = {"metric:queue:kind": "count", "metric:queue:canary_n": 5,
            "metric:queue:baseline_n": 9}
    assert no_data_words(NO, figs, T0 + 1, T0, "the rollout ended") is NO
    failed = Explained("queue", "fail", "rate", "allowed", "why")
    assert no_data_words(failed, {**figs, "metric:queue:canary_n": 0}, T0 + 1, T0,
                         "the rollout ended") is failed


@pytest.mark.parametrize(("given", "line"), [
    (["50%"], "--max-increase: expected NAME=X like checkout_failures=50%, got '50%'"),
    (["=50%"], "--max-increase: expected NAME=X like checkout_failures=50%, got '=50%'"),
    (["nope=50%"], "--max-increase: no metric 'nope' in this rollout's analysis.metrics (it "
                   "has: checkout_failures); 5xx and latency take --max-error-rate-increase "
                   "and --max-latency-increase"),
    (["checkout_failures=lots"], "--max-increase checkout_failures: expected a percentage "
                                 "like 25% or a fraction like 0.25, got 'lots'"),
    (["checkout_failures=2000%"], "--max-increase checkout_failures: expected an increase "
                                  "like 1% or 25%, got 20"),
    (["checkout_failures=5%", "checkout_failures=6%"],
     "--max-increase: checkout_failures given twice"),
])
def test_bad_metric_margins_are_one_line_exit_2(given: list[str], line: str) -> None:
    with pytest.raises(BadSetting) as exc:
        settings(DEMO, {"max_increase": given})
    assert str(exc.value) == line
    assert exc.value.exit_code == 2


def test_a_rollout_without_metrics_names_none() -> None:
    with pytest.raises(BadSetting, match=r"analysis.metrics \(it has: none\)"):
        settings(Analysis(), {"max_increase": ["checkout_failures=50%"]})
