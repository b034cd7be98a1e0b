"""The warm-up: what a young instance serves is recorded and shown but not judged; a fault that
persists past the warm-up is judged as usual."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kiln.analysis.live import LiveJudge
from kiln.analysis.summary import aggregate
from kiln.analysis.warmup import Warmup, warming
from kiln.platforms.base import Sample, Window
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.platforms.local.accesslog import parse_line
from kiln.rollout.decide import Status, start
from kiln.spec.models import Analysis

A, B = "127.0.0.1:9001", "127.0.0.1:9002"
STARTS = {("web-r2", A): 100.0, ("web-r2", B): 160.0, ("web-r1", "127.0.0.1:9000"): 0.0}


def w(start: float, instance: str = A, release: str = "web-r2") -> Window:
    return Window(release, start, 1.0, 1, 0, {}, instance)


@pytest.mark.parametrize(("window", "seconds", "expected"), [
    (w(100.0), 30.0, True),            # the instance's first second
    (w(129.0), 30.0, True),            # its last second of warm-up
    (w(130.0), 30.0, False),           # warmed up: judged
    (w(129.0), 0.0, False),            # no warm-up: everything judged
    (w(140.0, B), 30.0, True),         # per instance: B was launched later
    (w(140.0, "127.0.0.1:9"), 30.0, False),  # an instance kiln does not know: judged
    (w(10.0, "127.0.0.1:9000", "web-r1"), 30.0, True),
    (w(40.0, "127.0.0.1:9000", "web-r1"), 30.0, False),
    (w(150.0, ""), 30.0, True),        # a source without instances: the release's youngest
    (w(190.0, ""), 30.0, False),
])
def test_warming(window: Window, seconds: float, expected: bool) -> None:
    assert warming(window, STARTS, seconds) is expected


def test_the_access_log_names_the_instance_and_windows_keep_it() -> None:
    line = ('{"ServiceName": "kiln-web-r2@file", "ServiceURL": "http://127.0.0.1:9001", '
            '"StartUTC": "2026-01-01T00:00:00Z", "Duration": 1000000, "DownstreamStatus": 200}')
    s = parse_line(line, lambda _: None)
    assert s is not None and s.instance == A
    other = Sample("web-r2", s.time, 200, 0.002, False, B)
    windows = aggregate([s, other, s])
    assert [(x.instance, x.requests) for x in windows] == [(A, 2), (B, 1)]


def slow_canary(slow_for: float, *, rate: int = 20, seconds: int = 90, seed: int = 1
                ) -> tuple[list[Sample], float]:
    """A canary (one instance, launched at t0) at 1.6x the baseline's latency for its first
    `slow_for` seconds; the baseline at 9x its traffic."""
    rng = np.random.default_rng(seed)
    t0 = float(int(time.time()) - seconds)  # whole seconds: windows are epoch-aligned
    out: list[Sample] = []
    for sec in range(seconds):
        for rel, n, scale, inst in (("web-r2", rate, 1.6 if sec < slow_for else 1.0, A),
                                    ("web-r1", 9 * rate, 1.0, "127.0.0.1:9000")):
            lat = 0.05 * scale * np.exp(0.5 * rng.standard_normal(n))
            out += [Sample(rel, t0 + sec + (i + 0.5) / n, 200, float(d), False, inst)
                    for i, d in enumerate(lat)]
    return out, t0


def run(samples: list[Sample], t0: float, warmup: float) -> tuple[str, LiveJudge]:
    source = FakeMetricSource()
    starts = {("web-r2", A): t0, ("web-r1", "127.0.0.1:9000"): t0 - 3600}
    judge = LiveJudge(source, "web", Analysis(warmup=warmup),
                      warmup=Warmup(warmup, lambda rels: {k: v for k, v in starts.items()
                                                          if k[0] in rels}))
    status: Status = start("canary", "web-r2", "web-r1", 1, t0, judge.start_info())
    status.phase = "step"
    outcome = "undecided"
    for sec in range(int(samples[-1].time - t0) + 1):
        source.feed(s for s in samples if t0 + sec <= s.time < t0 + sec + 1)
        verdict = judge(status, t0 + sec + 1)
        assert verdict is not None
        outcome = verdict.outcome
        if outcome == "fail":
            break
    return outcome, judge


def test_a_cold_start_is_not_judged_with_a_warmup_and_is_without() -> None:
    samples, t0 = slow_canary(30)
    assert run(samples, t0, 0.0)[0] == "fail"
    outcome, judge = run(samples, t0, 30.0)
    assert outcome != "fail"
    assert judge.warmup is not None and judge.warmup.requests["web-r2"] == 30 * 20
    # Recorded and shown: the series has every request, the judge only those after the warm-up.
    shown = sum(r["releases"]["web-r2"]["n"] for r in judge.series.to_json()["seconds"]
                if "web-r2" in r["releases"])
    assert shown == 90 * 20
    assert judge._judge is not None and judge._judge.canary.n == 60 * 20


def test_a_fault_that_outlasts_the_warmup_is_judged() -> None:
    samples, t0 = slow_canary(90)
    outcome, judge = run(samples, t0, 30.0)
    assert outcome == "fail"
    assert judge.warmup is not None and judge.warmup.requests["web-r2"] == 30 * 20


def test_warmup_is_a_duration() -> None:
    assert Analysis.model_validate({"warmup": "30s"}).warmup == 30.0
    assert Analysis().warmup == 0.0
    with pytest.raises(ValueError, match="duration"):
        Analysis.model_validate({"warmup": "soon"})
