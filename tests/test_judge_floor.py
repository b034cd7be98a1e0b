"""The latency floor: a relative increase that is tiny in absolute terms never fails a release."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.analysis.judge import judge
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis


def stream(release: str, n: int, median_s: float, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    durations = rng.lognormal(np.log(median_s), 0.3, n)
    return [Sample(release, float(i), 200, float(d), False) for i, d in enumerate(durations)]


@pytest.mark.parametrize(
    ("baseline_s", "canary_s", "outcome"),
    [
        (0.001, 0.0015, "pass"),   # +50 %, but half a millisecond: warm-up, not a regression
        (0.002, 0.004, "pass"),    # +100 %, 2 ms: still under the floor
        (0.050, 0.080, "fail"),    # +60 %, 30 ms: a real regression
        (0.010, 0.030, "fail"),    # +200 %, 20 ms
    ],
)
def test_latency_floor(baseline_s: float, canary_s: float, outcome: str) -> None:
    analysis = Analysis(max_latency_increase=0.25, min_requests=50)
    v = judge(stream("c", 2000, canary_s, 1), stream("b", 6000, baseline_s, 2), analysis)
    assert v.outcome == outcome, v.reason

