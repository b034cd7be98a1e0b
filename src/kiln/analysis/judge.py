"""The canary judge: is the canary worse than the baseline, with a bounded false-alarm rate?

`judge()` is pure: samples in, `Verdict` out. `Judge` is the convenience the rollout executor
feeds incrementally and asks at every look; it keeps O(1)-per-sample summaries, the running
always-valid p-values and latches the first failure (the sequential guarantee is about the first
crossing). The method, hypotheses and guarantee are in docs/judge.md.

Outcomes:
- "fail": the evidence says the canary is worse than allowed. Possible at any look, even before
  `min_requests` (a canary failing 40 of its first 50 requests is not kept for 50 more).
- "inconclusive": fewer than `min_requests` canary (or baseline) requests so far; the caller
  keeps collecting while the step lasts and applies `on_no_data` if the step ends like this.
- "pass": enough requests and no test has rejected: there is no evidence of harm at the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.analysis import sequential as seq
from kiln.analysis.summary import Summary
from kiln.analysis.verdict import Figure, Verdict
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis


@dataclass(frozen=True)
class Budget:
    """How the false-alarm budget is split between the tests (Bonferroni)."""

    error: float
    ceiling: float
    latency: float

    @classmethod
    def of(cls, analysis: Analysis, segments: int = 1) -> Budget:
        a = analysis.alpha / max(1, segments)
        if analysis.max_error_rate is None:
            return cls(error=a / 2, ceiling=0.0, latency=a / 2)
        return cls(error=a / 4, ceiling=a / 4, latency=a / 2)


def judge(
    canary: Sequence[Sample],
    baseline: Sequence[Sample],
    analysis: Analysis,
    *,
    segments: int = 1,
) -> Verdict:
    """Judge all samples since the test began (one look).

    Pass the samples since the rollout began for a single test over the whole rollout
    (`segments=1`); if you restart the test at every step, pass `segments=len(steps)` so the
    budget `analysis.alpha` is split between them. Looks may be as frequent as you like.
    """
    return judge_summaries(Summary.of(canary), Summary.of(baseline), analysis, segments=segments)


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


#: A latency increase smaller than this (p50; twice this at p95) never fails a release: at
#: millisecond latencies a fresh instance's warm-up is "+25%" and real, but harmless.
LATENCY_FLOOR_S = 0.005


def _noticeable(figs: dict[str, Figure]) -> bool:
    def diff(q: str) -> float:
        c, b = figs[f"canary_{q}"], figs[f"baseline_{q}"]
        return c - b if isinstance(c, float) and isinstance(b, float) else float("inf")

    return diff("p50") > LATENCY_FLOOR_S or diff("p95") > 2 * LATENCY_FLOOR_S


def _fmt_ms(x: Figure) -> str:
    return "-" if not isinstance(x, float) else f"{1000 * x:.0f} ms"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def judge_summaries(
    canary: Summary,
    baseline: Summary,
    analysis: Analysis,
    *,
    segments: int = 1,
    best_p: dict[str, float] | None = None,
) -> Verdict:
    """Judge from summaries. `best_p` holds the running minimum p-value of each test over
    earlier looks (always-valid p-values); it is updated in place when given."""
    budget = Budget.of(analysis, segments)
    nc, nb = canary.requests, baseline.requests
    figs: dict[str, Figure] = {
        "canary_requests": nc,
        "canary_errors": canary.errors,
        "baseline_requests": nb,
        "baseline_errors": baseline.errors,
        "canary_error_rate": canary.error_rate,
        "baseline_error_rate": baseline.error_rate,
        "canary_p50": canary.quantile(0.5),
        "canary_p95": canary.quantile(0.95),
        "baseline_p50": baseline.quantile(0.5),
        "baseline_p95": baseline.quantile(0.95),
        "alpha": analysis.alpha / max(1, segments),
        "alpha_error": budget.error,
        "alpha_latency": budget.latency,
    }
    running = best_p if best_p is not None else {}

    def record(name: str, delta: float, v: float, tau: float) -> float:
        p = float(seq.always_valid_p(seq.log_mixture_lr(delta, v, tau)))
        running[name] = min(running.get(name, 1.0), p)
        figs[f"{name}_p"] = running[name]
        figs[f"{name}_z"] = float(delta / np.sqrt(v)) if np.isfinite(v) and v > 0 else None
        return running[name]

    after = f"after {nc} canary requests"
    rates = f"5xx {_fmt_pct(canary.error_rate)} vs {_fmt_pct(baseline.error_rate)}"
    fails: list[str] = []

    if nc > 0 and nb > 0:
        d, v = seq.error_increase(canary.errors, nc, baseline.errors, nb,
                                  analysis.max_error_rate_increase)
        p = record("error", float(d), float(v), max(seq.TAU_ERROR, analysis.max_error_rate_increase))
        if p <= budget.error:
            fails.append(f"{rates} (allowed +{_fmt_pct(analysis.max_error_rate_increase)}), "
                         f"p={_fmt_p(p)}")
    if analysis.max_error_rate is not None and nc > 0:
        d, v = seq.error_ceiling(canary.errors, nc, analysis.max_error_rate)
        p = record("ceiling", float(d), float(v), max(seq.TAU_ERROR, analysis.max_error_rate))
        if p <= budget.ceiling:
            fails.append(f"5xx {_fmt_pct(canary.error_rate)} above the "
                         f"{_fmt_pct(analysis.max_error_rate)} ceiling, p={_fmt_p(p)}")
    if canary.ok > 0 and baseline.ok > 0:
        d, v, theta = seq.latency_increase(canary.hist, baseline.hist,
                                           analysis.max_latency_increase)
        figs["latency_theta"] = float(theta)
        p = record("latency", float(d), float(v), seq.TAU_LATENCY)
        if p <= budget.latency and _noticeable(figs):
            fails.append(
                f"latency p50 {_fmt_ms(figs['canary_p50'])} vs {_fmt_ms(figs['baseline_p50'])}, "
                f"p95 {_fmt_ms(figs['canary_p95'])} vs {_fmt_ms(figs['baseline_p95'])} "
                f"(allowed +{100 * analysis.max_latency_increase:.0f}%), p={_fmt_p(p)}")

    if fails:
        return Verdict("fail", "; ".join(fails) + f"; {after}", figs)
    need = max(1, analysis.min_requests)
    if nc < need or nb < need:
        return Verdict(
            "inconclusive",
            f"too little data: {nc} canary and {nb} baseline requests, need {need} each",
            figs,
        )
    return Verdict(
        "pass",
        f"{rates}, p50 {_fmt_ms(figs['canary_p50'])} vs {_fmt_ms(figs['baseline_p50'])}; "
        f"no evidence of harm {after}",
        figs,
    )


class Judge:
    """Incremental judge for one canary against one baseline; feed samples, ask at every look.

    Samples of other releases are ignored. The first "fail" is final: a later look that would
    pass does not undo it (the guarantee is about the first crossing of the threshold).
    """

    def __init__(self, analysis: Analysis, canary: str, baseline: str, *,
                 segments: int = 1) -> None:
        self.analysis = analysis
        self.canary_release = canary
        self.baseline_release = baseline
        self.segments = segments
        self.canary = Summary()
        self.baseline = Summary()
        self.looks = 0
        self._best_p: dict[str, float] = {}
        self._failed: Verdict | None = None

    def add(self, samples: Iterable[Sample]) -> None:
        mine = list(samples)
        self.canary.add(s for s in mine if s.release_id == self.canary_release)
        self.baseline.add(s for s in mine if s.release_id == self.baseline_release)

    def verdict(self, now: float | None = None) -> Verdict:
        if self._failed is not None:
            return self._failed
        self.looks += 1
        v = judge_summaries(self.canary, self.baseline, self.analysis,
                            segments=self.segments, best_p=self._best_p)
        v.figures["looks"] = self.looks
        if now is not None:
            v.figures["time"] = now
        if v.outcome == "fail":
            self._failed = v
        return v
