"""The user's own metrics (`analysis.metrics`), judged canary against baseline by the same
always-valid tests as 5xx and latency, each at its share of the rollout's one false-alarm budget.

- `count` (failures of a total): the 5xx test with the metric's `max_increase` as the margin.
- `value` (a distribution of the query's values per window): the latency test (Mann-Whitney
  P(C > (1+m) B) over the judge's log bins), with no absolute floor.
`direction: lower` judges the complement: successes of the total (count) or 1 / value (value).

Why each metric gets alpha / (2 + k) on the "fail" side and the full `confidence` on the "pass"
side: docs/judge.md ("One budget for every metric").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kiln.analysis import sequential as seq
from kiln.analysis.summary import N_BINS, bin_index
from kiln.analysis.verdict import Figure, Outcome
from kiln.spec.models import Metric


@dataclass
class MetricSummary:
    """One release's evidence for one metric: summed counts, or a histogram of values."""

    failures: float = 0.0
    total: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS))

    def add_counts(self, failures: float, total: float, direction: str = "higher") -> None:
        """Add one window's counts (failures of total); `lower` counts the successes."""
        f = max(0.0, min(failures, total))
        self.failures += f if direction == "higher" else total - f
        self.total += total

    def add_values(self, values: Iterable[float], direction: str = "higher") -> None:
        """Add one value per window (positive values only: they are binned on a log scale)."""
        vs = [v if direction == "higher" else 1.0 / v for v in values if v > 0]
        if vs:
            np.add.at(self.hist, bin_index(vs), 1.0)

    @property
    def n(self) -> float:
        return self.total if self.total else float(self.hist.sum())


def count_fail_p(x_c: seq.ArrayLike, n_c: seq.ArrayLike, x_b: seq.ArrayLike,
                 n_b: seq.ArrayLike, margin: float) -> seq.FloatArray:
    """Always-valid p-value (this look) of 'the rate rose by more than `margin`' (the 5xx
    test's math; arrays for the benchmark)."""
    d, v = seq.error_increase(x_c, n_c, x_b, n_b, margin)
    return seq.always_valid_p(seq.log_mixture_lr(d, v, max(seq.TAU_ERROR, margin)))


def count_upper(x_c: seq.ArrayLike, n_c: seq.ArrayLike, x_b: seq.ArrayLike,
                n_b: seq.ArrayLike, margin: float, confidence: float) -> seq.FloatArray:
    """Upper bound (at `confidence`, any look) of the rate's increase."""
    return seq.error_increase_upper(x_c, n_c, x_b, n_b, max(margin, seq.TAU_PASS_MIN),
                                    1.0 - confidence)


@dataclass(frozen=True)
class MetricVerdict:
    """One metric at one look, in words and figures."""

    name: str
    outcome: Outcome
    reason: str
    dry_run: bool
    figures: dict[str, Figure]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if np.isfinite(x) else "unknown"


def judge_metric(metric: Metric, canary: MetricSummary, baseline: MetricSummary, *,
                 alpha: float, confidence: float, min_n: float,
                 best_p: dict[str, float]) -> MetricVerdict:
    """One look at one metric. `alpha` is this metric's share of the budget; `best_p` keeps the
    running minimum of its always-valid p-value across looks (updated in place)."""
    miss = 1.0 - confidence
    m = metric.max_increase
    figs: dict[str, Figure] = {"kind": metric.kind, "alpha": alpha,
                               "canary_n": canary.n, "baseline_n": baseline.n,
                               "max_increase": m, "direction": metric.direction,
                               "dry_run": int(metric.dry_run)}
    if canary.n <= 0 or baseline.n <= 0:
        return MetricVerdict(metric.name, "undecided", f"{metric.name}: no data yet",
                             metric.dry_run, figs)
    if metric.kind == "count":
        rc, rb = canary.failures / canary.total, baseline.failures / baseline.total
        args = (canary.failures, canary.total, baseline.failures, baseline.total, m)
        p_now = float(count_fail_p(*args))
        upper = float(count_upper(*args, confidence))
        which = "rate" if metric.direction == "higher" else "shortfall (1 - rate)"
        measured = f"{which} {_pct(rc)} vs {_pct(rb)}"
        bound = f"increase at most {100 * upper:+.2f} points (allowed +{100 * m:.2f})"
        within = upper < m
        figs.update(canary_rate=rc, baseline_rate=rb, increase_upper=upper,
                    increase_lower=2 * (rc - rb) - upper)
    else:
        d, v, theta = seq.latency_increase(canary.hist, baseline.hist, m, 0.0)
        p_now = float(seq.always_valid_p(seq.log_mixture_lr(d, v, seq.TAU_LATENCY)))
        th = float(theta)
        upper = float(th + seq.bound(v, seq.TAU_LATENCY, miss)) if np.isfinite(th) else np.inf
        measured = (f"P(canary above baseline +{100 * m:.0f}%) {th:.2f}"
                    if np.isfinite(th) else "no values")
        bound = f"at most {upper:.2f} (needs < 0.50)"
        within = upper < 0.5
        figs.update(theta=th, theta_upper=upper,
                    theta_lower=2 * th - upper if np.isfinite(upper) else None)
    best_p["metric:" + metric.name] = p = min(best_p.get("metric:" + metric.name, 1.0), p_now)
    figs["p"] = p
    if p <= alpha:
        return MetricVerdict(metric.name, "fail",
                             f"{metric.name}: {measured}, worse than allowed "
                             f"(+{100 * m:.2f}{' points' if metric.kind == 'count' else '%'})",
                             metric.dry_run, figs)
    if within and canary.n >= min_n and baseline.n >= min_n:
        return MetricVerdict(metric.name, "pass", f"{metric.name}: {measured}, {bound}",
                             metric.dry_run, figs)
    return MetricVerdict(metric.name, "undecided",
                         f"{metric.name}: {measured}, not yet shown within: {bound}",
                         metric.dry_run, figs)
