"""Time to evidence: the estimate against the judge's own bound on simulated rollouts, the
plan's per-step arithmetic and its one-line warning."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.analysis.evidence import LIMIT, eta, requests_needed, step_seconds
from kiln.analysis.judge import error_upper, requests_to_pass
from kiln.plan_evidence import estimate, recent_rate
from kiln.platforms.base import RequestCounts
from kiln.spec.models import Analysis, ServiceSpec


def simulated_median(analysis: Analysis, ratio: float, p: float, runs: int = 400,
                     seed: int = 7) -> float:
    """Median canary requests until the judge's error bound first fits the margin, looking
    every 10 canary requests, both sides at error rate p."""
    rng = np.random.default_rng(seed)
    xc, xb = np.zeros(runs), np.zeros(runs)
    first = np.full(runs, np.inf)
    for k in range(10, 20_000, 10):
        xc += rng.binomial(10, p, runs)
        xb += rng.binomial(int(10 * ratio), p, runs)
        ub = error_upper(xc, float(k), xb, float(k * ratio), analysis)
        first = np.where(np.isinf(first) & (ub < analysis.max_error_rate_increase), k, first)
        if np.isfinite(first).all():
            break
    return float(np.median(first))


@pytest.mark.parametrize(("analysis", "ratio"), [
    (Analysis(), 9.0), (Analysis(max_error_rate_increase=0.02), 9.0),
    (Analysis(confidence=0.9), 1.0), (Analysis(max_error_rate_increase=0.005), 3.0),
])
def test_error_free_estimate_is_the_judges_bound(analysis: Analysis, ratio: float) -> None:
    need = requests_needed(analysis, ratio)
    assert need == requests_to_pass(analysis, ratio)
    assert abs(simulated_median(analysis, ratio, 0.0) - need) <= 10  # one look


@pytest.mark.parametrize("p", [0.005, 0.01, 0.02])
def test_with_errors_the_estimate_is_a_conservative_median(p: float) -> None:
    """At the expected counts the bound crosses later than a typical run first does (a run's
    first crossing is its luckiest look): the estimate errs long, by at most ~35 %."""
    need = requests_needed(Analysis(), 9.0, p)
    sim = simulated_median(Analysis(), 9.0, p)
    assert 0.65 * need <= sim <= 1.05 * need, (need, sim)


def test_edges() -> None:
    assert requests_needed(Analysis(max_error_rate_increase=0.0)) == LIMIT
    assert requests_needed(Analysis(min_requests=5000)) == 5000
    assert eta(480, 480, 0.0) == 0.0
    assert eta(480, 100, 0.0) is None
    assert eta(480, 80, 20.0) == pytest.approx(20.0)
    assert eta(480, 80, 20.0, warmup_left=10.0) == pytest.approx(30.0)
    assert step_seconds(Analysis(), 0.0, 10) is None
    # 200 req/s at 10 %: 20 canary req/s, 481 requests, + a 30 s warm-up.
    assert step_seconds(Analysis(warmup=30.0), 200.0, 10) == pytest.approx(30 + 481 / 20)


def spec(rate_pause: str = "10s", deadline: str = "10m", **analysis: object) -> ServiceSpec:
    return ServiceSpec.model_validate({
        "image": "app", "command": "x", "listen": "127.0.0.1:8080",
        "rollout": {"steps": [{"weight": 10, "pause": rate_pause}, {"weight": 50, "pause": "10s"}],
                    "progress_deadline": deadline, "analysis": dict(analysis)}})


def test_plan_estimate_busy_service_no_warning() -> None:
    est = estimate("web", spec(), 200.0)
    assert est is not None and est["warning"] is None
    first, second = est["steps"]
    assert (first["weight"], first["needed"]) == (10, 481)
    assert first["seconds"] == pytest.approx(481 / 20, abs=0.1)
    assert second["seconds"] < 5  # most of its evidence was gathered in the first step


def test_plan_estimate_quiet_service_warns_in_one_line() -> None:
    est = estimate("web", spec(), 2.0)  # 0.2 canary req/s at 10 %: ~40 minutes
    assert est is not None
    warning = est["warning"]
    assert isinstance(warning, str) and "\n" not in warning
    assert "10% step needs ~481 canary requests" in warning and "40m" in warning
    for lever in ("max_error_rate_increase", "confidence", "first weight", "longer pauses",
                  "warmup"):
        assert lever in warning
    assert estimate("web", spec(), 0.0)["warning"] is not None  # type: ignore[index]


def test_plan_estimate_only_for_a_judged_canary() -> None:
    s = spec()
    assert estimate("web", s.model_copy(update={"rollout": s.rollout.model_copy(
        update={"analysis": None})}), 2.0) is None


def test_recent_rate_from_two_counter_readings() -> None:
    readings = iter([RequestCounts("e1", {"web-r1": 100, "web-r0": 5}, "t"),
                     RequestCounts("e1", {"web-r1": 150, "web-r0": 9}, "t")])
    times = iter([10.0, 12.0])
    rate = recent_rate(lambda: next(readings), ["web-r1"], sleep=lambda _: None,
                       clock=lambda: next(times))
    assert rate == pytest.approx(25.0)
    restarted = iter([RequestCounts("e1", {"web-r1": 100}, "t"),
                      RequestCounts("e2", {"web-r1": 3}, "t")])
    assert recent_rate(lambda: next(restarted), ["web-r1"], sleep=lambda _: None) is None
    assert recent_rate(lambda: None, ["web-r1"], sleep=lambda _: None) is None


def test_live_judge_reports_evidence_needed_have_and_time_left() -> None:
    import time

    from kiln.analysis.live import LiveJudge
    from kiln.platforms.base import Sample
    from kiln.platforms.fake.metrics import FakeMetricSource
    from kiln.rollout.decide import start

    source = FakeMetricSource()
    judge = LiveJudge(source, "web", Analysis())
    t0 = float(int(time.time()) - 60)
    status = start("canary", "web-r2", "web-r1", 1, t0, judge.start_info())
    status.phase, status.weights = "step", {"web-r2": 10, "web-r1": 90}
    figures: dict[str, object] = {}
    for sec in range(12):
        source.feed([Sample("web-r2", t0 + sec + i / 20, 200, 0.05, False) for i in range(20)]
                    + [Sample("web-r1", t0 + sec + i / 180, 200, 0.05, False)
                       for i in range(180)])
        verdict = judge(status, t0 + sec + 1)
        assert verdict is not None
        figures = verdict.figures
    assert figures["evidence_needed"] == requests_needed(Analysis(), 9.0) == 481
    assert figures["evidence_have"] == 240
    assert figures["evidence_eta_s"] == pytest.approx((481 - 240) / 20, abs=0.5)


def test_evidence_in_words() -> None:
    from kiln_cli.progress import evidence_words

    assert evidence_words(None) == ""
    assert evidence_words({"needed": 481, "have": 240, "eta_s": 12.0}) == \
        "evidence 240/481 canary requests, ~12s left"
    assert "no canary traffic" in evidence_words({"needed": 481, "have": 0, "eta_s": None})
    assert evidence_words({"needed": 481, "have": 500, "eta_s": 0.0}).endswith("enough")


def test_dashboard_card_shows_the_evidence() -> None:
    from kiln.serve.pages import service_card

    svc = {"service": "web", "listen": "127.0.0.1:8080", "strategy": "canary", "replicas": 1,
           "current": "web-r1", "retained": [], "images": [], "history": [],
           "releases": [{"release": "web-r1", "weight": 90, "instances": []},
                        {"release": "web-r2", "weight": 10, "instances": []}],
           "rollout": {"rollout_id": 2, "release": "web-r2", "from": "web-r1",
                       "strategy": "canary", "phase": "step", "outcome": None, "reason": None,
                       "step": 0, "steps": 2, "weights": {"web-r1": 90, "web-r2": 10},
                       "waiting": None, "open": True, "standby_until": None,
                       "phase_label": "canary step 1 (10%)", "decisions": [], "chart": None,
                       "evidence": {"needed": 481, "have": 120, "eta_s": 18.2}}}
    assert "evidence 120/481 canary requests, ~18s left" in service_card(svc)
    svc["rollout"]["evidence"] = None  # type: ignore[index]
    assert "evidence" not in service_card(svc)


def test_a_design_effect_multiplies_the_need() -> None:
    assert requests_needed(Analysis(design_effect=5.0)) == 5 * requests_needed(Analysis())


def test_a_baseline_ahead_lowers_the_need() -> None:
    """Live, the judge sums the whole rollout: baseline requests served before the step (at
    another ratio, or alone) count; with a huge head start the need is that of a huge ratio."""
    at_1 = requests_needed(Analysis(), 1.0)
    assert requests_needed(Analysis(), 1.0, baseline_ahead=0.0) == at_1 == 656
    ahead = requests_needed(Analysis(), 1.0, baseline_ahead=2000.0)
    assert requests_needed(Analysis(), 99.0) <= ahead < at_1
    # the bound at the estimate fits, one request less does not
    assert ahead == min(k for k in range(ahead - 1, ahead + 1)
                        if float(error_upper(0.0, float(k), 0.0, float(k + 2000),
                                             Analysis())) < 0.01)


def test_live_evidence_counts_the_baseline_served_before_the_step() -> None:
    import time

    from kiln.analysis.live import LiveJudge
    from kiln.platforms.base import Sample
    from kiln.platforms.fake.metrics import FakeMetricSource
    from kiln.rollout.decide import start

    source = FakeMetricSource()
    judge = LiveJudge(source, "web", Analysis())
    t0 = float(int(time.time()) - 60)
    status = start("canary", "web-r2", "web-r1", 1, t0, judge.start_info())
    # 200 req/s: 10 s on the baseline alone (launch, health gate), then a 50 % step, the
    # router applying the weights half-way through the step's first second
    source.feed([Sample("web-r1", t0 + i / 200, 200, 0.05, False) for i in range(2100)])
    status.phase, status.weights, status.step_started = "step", {"web-r2": 50, "web-r1": 50}, \
        t0 + 10
    figures: dict[str, object] = {}
    source.feed([Sample(r, t0 + 10.5 + i / 100, 200, 0.05, False)
                 for i in range(50) for r in ("web-r2", "web-r1")])
    for sec in range(11, 14):
        source.feed([Sample(r, t0 + sec + i / 100, 200, 0.05, False)
                     for i in range(100) for r in ("web-r2", "web-r1")])
        verdict = judge(status, t0 + sec + 1)
        assert verdict is not None
        figures = verdict.figures
    need = requests_needed(Analysis(), 1.0, baseline_ahead=2450.0 - 350.0)
    assert need < 656
    assert figures["evidence_needed"] == need
    assert figures["evidence_have"] == 350
    # the canary's rate is the service's (200/s) times its share, not its own ramp's count
    assert figures["evidence_eta_s"] == pytest.approx((need - 350) / 100, abs=0.05)


def test_status_counts_the_time_left_down() -> None:
    from kiln.rollout.decide import start

    st = start("canary", "web-r2", "web-r1", 1, 0.0)
    assert st.evidence_at(10.0) is None
    st.evidence = {"needed": 481, "have": 240, "eta_s": 12.0, "at": 100.0}
    assert st.evidence_at(100.4) == {"needed": 481, "have": 240, "eta_s": 11.6}
    assert st.evidence_at(130.0) == {"needed": 481, "have": 240, "eta_s": 0.0}
    st.evidence = {"needed": 481, "have": 0, "eta_s": None, "at": 100.0}
    assert st.evidence_at(101.0) == {"needed": 481, "have": 0, "eta_s": None}
