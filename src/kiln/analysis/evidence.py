"""Time to evidence: how many canary requests a pass costs at a spec's margins, and how long a
step will take to gather them at a given request rate (docs/judge.md, "Quiet services").

The estimate asks the judge's own "pass" bound (`sequential.error_increase_upper`) at the
*expected* counts of a release as good as its baseline: both sides at error rate `error_rate`,
the baseline serving `baseline_ratio` times the canary's requests. At the expected counts the
bound is about at its median, so this is the median need; a real release needs more or fewer
by chance (tests/test_evidence.py checks it against simulated rollouts). Latency is decided
sooner in practice (~100 requests for lognormal latencies, docs/judge.md) and is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.analysis import sequential as seq
from kiln.spec.models import Analysis

LIMIT = 10**8


def requests_needed(analysis: Analysis, baseline_ratio: float = 9.0, error_rate: float = 0.0,
                    baseline_ahead: float = 0.0) -> int:
    """Canary requests until a release as good as its baseline passes (median), at least
    `min_requests`, times `design_effect`; LIMIT when it never would (a margin of 0).

    `baseline_ahead`: baseline requests beyond `baseline_ratio` times the canary's, already in
    (a live step: the judge sums the whole rollout, and the baseline served alone before the
    step, or at another ratio in an earlier one)."""
    margin = analysis.max_error_rate_increase
    tau = max(margin, seq.TAU_PASS_MIN)
    miss = 1.0 - analysis.confidence
    ratio = max(baseline_ratio, 1e-9)
    ahead = baseline_ahead / analysis.design_effect

    def fits(k: int) -> bool:
        nb = max(1, math.ceil(ratio * k + ahead))
        ub = seq.error_increase_upper(error_rate * k, float(k), error_rate * nb, float(nb),
                                      tau, miss)
        ok = bool(np.asarray(ub) < margin)
        if ok and analysis.max_error_rate is not None:
            top = seq.error_rate_upper(error_rate * k, float(k),
                                       max(analysis.max_error_rate, seq.TAU_PASS_MIN), miss)
            ok = bool(np.asarray(top) < analysis.max_error_rate)
        return ok

    if margin <= 0 or not fits(LIMIT):
        return LIMIT
    lo, hi = 1, LIMIT
    while lo < hi:  # the bound shrinks as k grows: bisect
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    # The judge counts design_effect requests as one sample (sticky rollouts): k times as many.
    return max(math.ceil(lo * analysis.design_effect), analysis.min_requests)


@dataclass(frozen=True)
class Evidence:
    """A step's evidence: canary requests needed for a pass, gathered so far, seconds left at
    the current canary rate (None when there is no traffic to extrapolate)."""

    needed: int
    have: int
    eta_s: float | None

    def to_json(self) -> dict[str, int | float | None]:
        eta = None if self.eta_s is None else round(self.eta_s, 1)
        return {"needed": self.needed, "have": self.have, "eta_s": eta}


def eta(needed: int, have: int, rate: float, warmup_left: float = 0.0) -> float | None:
    """Seconds until `needed` canary requests at `rate` per second (after what is left of a
    warm-up); 0 when enough are in; None at no traffic."""
    if have >= needed:
        return 0.0
    if rate <= 0 or needed >= LIMIT:
        return None
    return max(0.0, warmup_left) + (needed - have) / rate


def live(analysis: Analysis, have: int, baseline_ratio: float, baseline_error_rate: float,
         rate: float, warmup_left: float = 0.0, baseline_have: int | None = None) -> Evidence:
    """A step's evidence as the judge sees it at a look: `have` judged canary requests and
    `baseline_have` baseline ones, the baseline growing at `baseline_ratio` times the canary's
    traffic with its observed error rate, canary requests arriving at `rate` per second."""
    ahead = 0.0 if baseline_have is None else baseline_have - baseline_ratio * have
    needed = requests_needed(analysis, baseline_ratio, baseline_error_rate, ahead)
    return Evidence(needed, have, eta(needed, have, rate, warmup_left))


def step_seconds(analysis: Analysis, total_rate: float, weight: int) -> float | None:
    """Seconds a canary step at `weight` % of `total_rate` req/s needs to pass from nothing
    (warm-up included); None when it never would."""
    if weight <= 0 or total_rate <= 0:
        return None
    ratio = (100 - weight) / weight
    need = requests_needed(analysis, ratio)
    if need >= LIMIT:
        return None
    return analysis.warmup + need / (total_rate * weight / 100)
