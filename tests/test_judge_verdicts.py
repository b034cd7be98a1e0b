"""Known streams in, expected verdicts out; the judge looked at many times over a rollout."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from kiln.analysis.judge import Judge, judge
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis


def stream(rng: np.random.Generator, release: str, n: int, err: float, median: float = 0.05,
           sigma: float = 0.5, t0: float = 0.0, rate: float = 20.0) -> list[Sample]:
    errs = rng.random(n) < err
    lat = median * np.exp(sigma * rng.standard_normal(n))
    return [Sample(release, t0 + i / rate, 500 if e else 200, float(d), bool(e))
            for i, (e, d) in enumerate(zip(errs, lat, strict=True))]


CASES = [
    # name, canary (n, err, median), baseline (n, err, median), analysis kwargs, outcome
    ("bad error rate", (400, 0.08, 0.05), (3600, 0.01, 0.05), {}, "fail"),
    ("latency +50%", (400, 0.0, 0.075), (3600, 0.0, 0.05), {}, "fail"),
    ("latency +5% at large n", (20_000, 0.0, 0.0525), (60_000, 0.0, 0.05), {}, "pass"),
    ("A/A", (2000, 0.01, 0.05), (18_000, 0.01, 0.05), {}, "pass"),
    ("error +0.5% within the 1% margin", (20_000, 0.015, 0.05), (60_000, 0.01, 0.05), {}, "pass"),
    ("too few canary requests", (50, 0.0, 0.05), (3600, 0.0, 0.05), {}, "undecided"),
    ("no canary data", (0, 0.0, 0.05), (3600, 0.0, 0.05), {}, "undecided"),
    ("no data at all", (0, 0.0, 0.05), (0, 0.0, 0.05), {}, "undecided"),
    ("no baseline data", (500, 0.0, 0.05), (0, 0.0, 0.05), {}, "undecided"),
    ("above the absolute ceiling", (600, 0.04, 0.05), (3600, 0.04, 0.05),
     {"max_error_rate": 0.01}, "fail"),
    ("all canary requests fail fast", (30, 1.0, 0.05), (300, 0.0, 0.05), {}, "fail"),
]


@pytest.mark.parametrize(("name", "c", "b", "kw", "outcome"), CASES, ids=[c[0] for c in CASES])
def test_table(name: str, c: tuple[int, float, float], b: tuple[int, float, float],
               kw: dict[str, float], outcome: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    v = judge(stream(rng, "c", c[0], c[1], c[2]), stream(rng, "b", b[0], b[1], b[2]),
              Analysis(**kw))
    assert v.outcome == outcome, v.reason
    assert v.figures["canary_requests"] == c[0]


def test_fail_reason_names_rates_p_and_count() -> None:
    rng = np.random.default_rng(1)
    v = judge(stream(rng, "c", 400, 0.10), stream(rng, "b", 3600, 0.01), Analysis())
    assert v.outcome == "fail"
    assert v.reason.startswith("5xx ") and " vs " in v.reason and "p=" in v.reason
    assert v.reason.endswith("after 400 canary requests")


def test_undecided_reason_has_counts() -> None:
    v = judge([], [], Analysis(min_requests=100))
    assert v.outcome == "undecided"
    assert "0 canary and 0 baseline requests, need 100" in v.reason


def _rollout(seed: int, err_c: float, med_c: float, seconds: int = 300) -> tuple[str, int]:
    """Feed a Judge second by second like the executor does; return (final outcome, looks)."""
    rng = np.random.default_rng(seed)
    j = Judge(Analysis(), canary="web-r2", baseline="web-r1")
    for t in range(seconds):
        j.add(stream(rng, "web-r2", 20, err_c, med_c, t0=t))
        j.add(stream(rng, "web-r1", 180, 0.01, t0=t, rate=180))
        j.add([Sample("other-r9", t, 500, 9.0, True)])  # other services are ignored
        v = j.verdict(now=float(t))
        if v.outcome == "fail":
            return "fail", j.looks
    return v.outcome, j.looks


@pytest.mark.parametrize("seed", range(8))
def test_aa_never_fails_over_300_looks(seed: int) -> None:
    assert _rollout(seed, 0.01, 0.05) == ("pass", 300)


def test_bad_release_fails_early_and_stays_failed() -> None:
    outcome, looks = _rollout(5, 0.06, 0.05)
    assert outcome == "fail" and looks < 60
    rng = np.random.default_rng(0)
    j = Judge(Analysis(), canary="c", baseline="b")
    j.add(stream(rng, "c", 200, 0.5))
    j.add(stream(rng, "b", 2000, 0.0))
    first = j.verdict()
    assert first.outcome == "fail"
    j.add(stream(rng, "c", 100_000, 0.0))  # a later recovery does not undo the first crossing
    assert j.verdict() is first


# ---------------------------------------------------------------- sticky canaries (issue 23)


def test_design_effect_costs_requests_in_proportion() -> None:
    """A perfect canary that passes on n requests is still undecided on n when each sample is
    worth 1/5 of one (sticky, design_effect 5), and passes on 5n."""
    from kiln.analysis.clustered import deflate
    from kiln.analysis.summary import Summary

    rng = np.random.default_rng(23)
    c, b = stream(rng, "c", 2000, 0.0), stream(rng, "b", 18_000, 0.0)
    independent = Judge(Analysis(), "c", "b")
    independent.add(c + b)
    assert independent.verdict().outcome == "pass"
    sticky = Judge(Analysis(design_effect=5), "c", "b")
    sticky.add(c + b)
    v = sticky.verdict()
    assert v.outcome == "undecided" and v.figures["design_effect"] == 5
    sticky.add(stream(rng, "c", 8000, 0.0) + stream(rng, "b", 72_000, 0.0))
    assert sticky.verdict().outcome == "pass"
    s = Summary.of(stream(rng, "c", 1000, 0.1))
    d = deflate(s, 4)
    assert (d.requests, d.errors) == (250, s.errors // 4) and d.hist.sum() == s.hist.sum() / 4
    assert deflate(s, 1.0) is s


def test_correlated_errors_of_a_few_clients_need_more_to_fail() -> None:
    """24 errors in 400 canary requests (6 %, e.g. 4 clients of 6 requests each) against 1 %
    fails a judge that takes them as independent, not one that counts clients (k = 6)."""
    rng = np.random.default_rng(5)
    c = stream(rng, "c", 376, 0.0) + [Sample("c", 0.0, 500, 0.05, True)] * 24
    b = stream(rng, "b", 3600, 0.01)
    outcomes = []
    for k in (1.0, 6.0):
        j = Judge(Analysis(design_effect=k), "c", "b")
        j.add(c + b)
        outcomes.append(j.verdict().outcome)
    assert outcomes[0] == "fail" and outcomes[1] != "fail", outcomes


@pytest.mark.parametrize(("rollout", "k"), [
    ({"sticky": True, "analysis": {}}, 5.0),
    ({"sticky": True, "analysis": {"design_effect": 2}}, 2.0),
    ({"sticky": False, "analysis": {}}, 1.0),
])
def test_sticky_rollouts_get_the_conservative_default(rollout: dict[str, object],
                                                      k: float) -> None:
    from kiln.spec.models import Rollout

    analysis = Rollout.model_validate(rollout).analysis
    assert analysis is not None and analysis.design_effect == k
