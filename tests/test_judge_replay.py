"""`kiln judge replay`'s pure part: the recorded evidence judged again gives the live verdicts
under the same settings and other verdicts under other settings; the recording survives its
blob; bad settings are one line."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from kiln.analysis.judge import Judge
from kiln.analysis.live import LiveJudge
from kiln.analysis.recording import Recording
from kiln.analysis.replay import replay
from kiln.analysis.summary import aggregate
from kiln.errors import StateError
from kiln.platforms.base import Sample
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.rollout.decide import start
from kiln.spec.models import Analysis, Metric
from kiln.usecases.replay import BadSetting, settings

T0 = 1_700_000_000.0


def traffic(seconds: int, canary_err: float, seed: int = 7) -> list[Sample]:
    """20 canary and 180 baseline requests a second; the baseline fails 1 %."""
    rng = random.Random(seed)
    out = []
    for sec in range(seconds):
        for rel, n, err in (("web-r2", 20, canary_err), ("web-r1", 180, 0.01)):
            for i in range(n):
                bad = rng.random() < err
                out.append(Sample(rel, T0 + sec + i / n, 500 if bad else 200,
                                  rng.lognormvariate(-3.0, 0.4), bad))
    return out


def live(samples: list[Sample], analysis: Analysis) -> tuple[Recording, list[dict[str, object]]]:
    """Judge second by second as the live judge does; the first fail (or the end) is the
    recorded decision of step 1."""
    judge = Judge(analysis, "web-r2", "web-r1")
    rec = Recording("web-r2", "web-r1", "fake")
    windows = aggregate(samples)
    last = int(max(w.start for w in windows))
    for sec in range(int(T0), last + 1):
        now = [w for w in windows if int(w.start) == sec]
        judge.add_windows(now)
        rec.add_windows(now)
        v = judge.verdict(sec + 1.5)
        if v.outcome == "fail" or sec == last:
            return rec, [{"time": sec + 1.5, "step": 0, "weight": 10, "outcome": v.outcome,
                          "reason": v.reason, "figures": {}}]
    raise AssertionError("no traffic")


def test_a_rolled_back_canary_replays_as_fail_and_passes_with_a_50_point_margin() -> None:
    # 6 % against 1 %: rolled back after a few hundred canary requests (a canary failed
    # before `min_requests` has too little evidence to pass under any margin: "undecided").
    rec, decisions = live(traffic(60, 0.06), Analysis())
    assert decisions[0]["outcome"] == "fail"
    same = replay(rec, Analysis(), decisions)
    assert [s.replayed for s in same.steps] == ["fail"]
    assert same.summary().startswith("would have rolled back at step 1: 5xx")
    loose = replay(rec, Analysis(max_error_rate_increase=0.5), decisions)
    assert [s.replayed for s in loose.steps] == ["pass"], loose.steps[0].reason
    assert loose.outcome == "pass"
    words = {e.metric: e for e in loose.steps[0].explained}
    assert words["errors"].outcome == "pass"
    assert "allowed +50.0 points" in words["errors"].line()


def test_a_good_canary_replays_as_pass_and_undecided_when_asked_for_more() -> None:
    rec, decisions = live(traffic(60, 0.0), Analysis())
    assert decisions[0]["outcome"] == "pass"
    assert replay(rec, Analysis(), decisions).outcome == "pass"
    # More evidence asked for than there is: undecided, not pass.
    strict = replay(rec, Analysis(min_requests=5000), decisions)
    assert strict.outcome == "undecided"
    assert strict.steps[0].reason.startswith("too little data: 1200 canary")


def test_the_recording_survives_its_blob_and_refuses_damage() -> None:
    rec, decisions = live(traffic(20, 0.08), Analysis())
    rec.add_counts(T0 + 3, "checkout", "web-r2", 5, 100)
    rec.add_value(T0 + 4, "queue", "web-r1", 0.25)
    back = Recording.from_blob(rec.to_blob())
    assert back.to_json() == rec.to_json()
    assert replay(back, Analysis(), decisions).steps == replay(rec, Analysis(), decisions).steps
    with pytest.raises(StateError, match="damaged"):
        Recording.from_blob(b"not zlib")


def test_count_metrics_are_replayed_from_their_recorded_answers() -> None:
    metric = Metric(name="checkout", kind="count", failures="f{release=\"$release\"}",
                    total="t{release=\"$release\"}", max_increase=0.01)
    analysis = Analysis(metrics=[metric], min_requests=50)
    rec = Recording("web-r2", "web-r1", "fake")
    windows = aggregate(traffic(60, 0.0))
    rec.add_windows(windows)
    for sec in range(1, 61):  # the canary's checkouts fail 10 %, the baseline's 1 %
        rec.add_counts(T0 + sec, "checkout", "web-r2", 0.10 * 20 * sec, 20 * sec)
        rec.add_counts(T0 + sec, "checkout", "web-r1", 0.01 * 180 * sec, 180 * sec)
    decision = [{"time": T0 + 60.5, "step": 0, "weight": 10, "outcome": "fail", "reason": ""}]
    got = replay(rec, analysis, decision)
    assert got.steps[0].replayed == "fail"
    assert "checkout" in got.steps[0].reason
    loose = Analysis(metrics=[metric.model_copy(update={"max_increase": 0.5})], min_requests=50)
    assert replay(rec, loose, decision).steps[0].replayed == "pass"


def test_the_live_judge_records_what_it_was_given() -> None:
    t0 = time.time()
    source = FakeMetricSource()
    judge = LiveJudge(source, "web", Analysis())
    status = start("canary", "web-r2", "web-r1", 1, t0, judge.start_info())
    status.phase = "step"
    source.feed([Sample("web-r2", t0 + i * 0.01, 200, 0.01, False) for i in range(30)]
                + [Sample("web-r1", t0 + i * 0.01, 500, 0.01, True) for i in range(40)]
                + [Sample("other", t0, 200, 0.01, False)])
    judge(status, t0 + 1)
    assert judge.recording is not None
    sums = {rel: sum(w.requests for w in judge.recording.window_list() if w.release_id == rel)
            for rel in ("web-r2", "web-r1", "other")}
    assert sums == {"web-r2": 30, "web-r1": 40, "other": 0}
    assert sum(w.errors for w in judge.recording.window_list()) == 40


@pytest.mark.parametrize(("given", "line"), [
    ({"max_error_rate_increase": "lots"},
     "--max-error-rate-increase: expected a percentage like 25% or a fraction like 0.25, "
     "got 'lots'"),
    ({"max_error_rate_increase": "150%"},
     "--max-error-rate-increase: expected a rate between 0% and 100%, got 1.5"),
    ({"max_latency_increase": "-5%"},
     "--max-latency-increase: expected a non-negative relative increase like 25%, got -0.05"),
    ({"alpha": "0.7"}, "--alpha: expected a false-alarm rate between 0 and 0.5 (got '0.7')"),
    ({"confidence": "x"}, "--confidence: Input should be a valid number, unable to parse "
                          "string as a number (got 'x')"),
])
def test_bad_settings_are_one_line(given: dict[str, str], line: str) -> None:
    with pytest.raises(BadSetting) as exc:
        settings(Analysis(), given)
    assert str(exc.value) == line
    assert "\n" not in str(exc.value)


def test_settings_change_only_what_is_given() -> None:
    got = settings(Analysis(alpha=0.02, min_requests=7), {"max_error_rate_increase": "50%",
                                                          "alpha": None})
    assert got.max_error_rate_increase == 0.5 and got.alpha == 0.02 and got.min_requests == 7


def test_gc_keeps_the_evidence_of_each_services_last_rollouts_and_open_ones(
        tmp_path: Path) -> None:
    from kiln.state.records import evidence
    from kiln.state.records import rollouts as rollout_records
    from kiln.state.store import Store

    store = Store.open(tmp_path / "home")
    try:
        ids = {}
        with store.tx() as c:
            for name, service, phase in [("a1", "web", "done"), ("a2", "web", "done"),
                                         ("a3", "web", "done"), ("b1", "api", "done"),
                                         ("b2", "api", "step")]:
                ids[name] = rollout_records.insert(c, service, "x", name, "canary", phase,
                                                   "{}", T0)
        for rid in ids.values():
            evidence.save(store, rid, Recording("c", "b").to_blob(), T0)
        keep = evidence.newest_rollouts(store, 1)
        # keep=1: web's newest (a3); api's newest is open (b2), so b1 is not among the kept.
        assert keep == {ids["a3"], ids["b2"]}
        gone = evidence.drop_all_but(store, keep)
        assert sorted(gone) == sorted([ids["a1"], ids["a2"], ids["b1"]])
        assert evidence.load(store, ids["a1"]) is None
        assert evidence.load(store, ids["a3"]) is not None
        assert evidence.rollout_ids(store) == sorted([ids["a3"], ids["b2"]])
    finally:
        store.close()


def test_a_step_counts_windows_begun_before_it_and_answers_asked_by_it() -> None:
    metric = Metric(name="checkout", kind="count", failures="f{release=\"$release\"}",
                    total="t{release=\"$release\"}", max_increase=0.01)
    rec = Recording("web-r2", "web-r1", "fake")
    rec.add_windows(aggregate([s for s in traffic(2, 0.0) if s.time < T0 + 1]))
    rec.add_counts(T0 + 0.8, "checkout", "web-r2", 1, 10)  # asked after the decision
    rec.add_counts(T0 + 0.8, "checkout", "web-r1", 1, 90)
    got = replay(rec, Analysis(metrics=[metric]),
                 [{"time": T0 + 0.5, "step": 0, "outcome": "undecided"}]).steps[0]
    assert got.figures["canary_requests"] == 20  # the second begun before the decision
    assert got.figures["metric:checkout:canary_n"] == 0  # not yet asked
