"""The canary judge: is the canary worse than the baseline, with a bounded false-alarm rate?

`judge()` is pure: samples in, `Verdict` out. `Judge` is the convenience the rollout executor
feeds incrementally and asks at every look; it keeps O(1)-per-sample summaries, the running
always-valid p-values and latches the first failure (the sequential guarantee is about the first
crossing). The method, hypotheses and guarantee are in docs/judge.md.

Outcomes:
- "fail": evidence that the canary is worse than allowed (an always-valid test rejected at
  `alpha`). Possible at any look, even before `min_requests`.
- "pass": evidence that it is within the allowed margins: at least `min_requests` on each side
  and the upper bound of every confidence sequence (error increase, error ceiling, latency) at
  `confidence` lies inside its margin.
- "undecided": anything else; the caller keeps collecting while the step lasts and applies
  `on_no_data` if the step ends like this. "No test has rejected yet" is not a pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.analysis import sequential as seq
from kiln.analysis.clustered import deflate
from kiln.analysis.metrics import MetricSummary, MetricVerdict, judge_metric
from kiln.analysis.summary import Summary
from kiln.analysis.verdict import Figure, Outcome, Verdict
from kiln.platforms.base import Sample, Window
from kiln.spec.models import Analysis


@dataclass(frozen=True)
class Budget:
    """How the false-alarm budget is split between the tests (Bonferroni): 5xx, latency and
    each of the k metrics of `analysis.metrics` get alpha / (2 + k); the ceiling, when set,
    shares the 5xx part. Dry-run metrics count too (docs/judge.md)."""

    error: float
    ceiling: float
    latency: float
    metric: float = 0.0

    @classmethod
    def of(cls, analysis: Analysis, segments: int = 1) -> Budget:
        share = analysis.alpha / max(1, segments) / (2 + len(analysis.metrics))
        metric = share if analysis.metrics else 0.0
        if analysis.max_error_rate is None:
            return cls(error=share, ceiling=0.0, latency=share, metric=metric)
        return cls(error=share / 2, ceiling=share / 2, latency=share, metric=metric)


# ---------------------------------------------------------------- the tests, on arrays
# One place for the math: the judge calls these with scalars, bench/judge.py with thousands of
# simulated rollouts at once.


def error_fail_p(x_c: seq.ArrayLike, n_c: seq.ArrayLike, x_b: seq.ArrayLike, n_b: seq.ArrayLike,
                 analysis: Analysis) -> seq.FloatArray:
    """Always-valid p-value (this look) of 'the error rate rose by more than allowed'."""
    margin = analysis.max_error_rate_increase
    d, v = seq.error_increase(x_c, n_c, x_b, n_b, margin)
    return seq.always_valid_p(seq.log_mixture_lr(d, v, max(seq.TAU_ERROR, margin)))


def error_upper(x_c: seq.ArrayLike, n_c: seq.ArrayLike, x_b: seq.ArrayLike, n_b: seq.ArrayLike,
                analysis: Analysis) -> seq.FloatArray:
    """Upper bound (at `confidence`, any look) of the error-rate increase: "pass" needs it below
    `max_error_rate_increase`."""
    margin = analysis.max_error_rate_increase
    return seq.error_increase_upper(x_c, n_c, x_b, n_b, max(margin, seq.TAU_PASS_MIN),
                                    1.0 - analysis.confidence)


def latency_tests(hist_c: seq.ArrayLike, hist_b: seq.ArrayLike, analysis: Analysis
                  ) -> tuple[seq.FloatArray, seq.FloatArray, seq.FloatArray]:
    """(always-valid p-value of 'slower than allowed', theta, upper bound of theta at
    `confidence`). "pass" needs the bound below 1/2."""
    d, v, theta = seq.latency_increase(hist_c, hist_b, analysis.max_latency_increase,
                                       LATENCY_FLOOR_S)
    p = seq.always_valid_p(seq.log_mixture_lr(d, v, seq.TAU_LATENCY))
    upper = theta + seq.bound(v, seq.TAU_LATENCY, 1.0 - analysis.confidence)
    return p, theta, np.where(np.isfinite(theta), upper, np.inf)


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


#: The allowed latency increase is never less than this many seconds per request: at
#: millisecond latencies a fresh instance's warm-up is "+25%" and real, but harmless.
LATENCY_FLOOR_S = 0.005


def _fmt_signed_pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if np.isfinite(x) else "unknown"


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
    metrics: Mapping[str, tuple[MetricSummary, MetricSummary]] | None = None,
) -> Verdict:
    """Judge from summaries. `best_p` holds the running minimum p-value of each test over
    earlier looks (always-valid p-values); it is updated in place when given. `metrics`: the
    (canary, baseline) evidence of each of `analysis.metrics` by name (missing: no data)."""
    budget = Budget.of(analysis, segments)
    nc, nb = canary.requests, baseline.requests
    margin = analysis.max_error_rate_increase
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
        "confidence": analysis.confidence,
        # The margins, so a recorded verdict explains itself (kiln.analysis.explain).
        "max_error_rate_increase": margin,
        "max_error_rate": analysis.max_error_rate,
        "max_latency_increase": analysis.max_latency_increase,
    }
    running = best_p if best_p is not None else {}
    miss = 1.0 - analysis.confidence  # error rate of the confidence sequences behind "pass"

    def record(name: str, p_now: float) -> float:
        running[name] = min(running.get(name, 1.0), float(p_now))
        figs[f"{name}_p"] = running[name]
        return running[name]

    after = f"after {nc} canary requests"
    rates = f"5xx {_fmt_pct(canary.error_rate)} vs {_fmt_pct(baseline.error_rate)}"
    fails: list[str] = []
    # Each entry: (inside its margin?, what the upper bound says) for the "pass" side.
    within: list[tuple[bool, str]] = []

    if nc > 0 and nb > 0:
        args = (canary.errors, nc, baseline.errors, nb)
        p = record("error", float(error_fail_p(*args, analysis)))
        if p <= budget.error:
            fails.append(f"{rates} (allowed +{_fmt_pct(margin)}), p={_fmt_p(p)}")
        ub = float(error_upper(*args, analysis))
        figs["error_increase_upper"] = ub
        # The same confidence sequence's lower side (it is symmetric about the estimate).
        figs["error_increase_lower"] = 2 * (canary.error_rate - baseline.error_rate) - ub
        figs["error_outcome"] = _test_outcome(p <= budget.error, ub < margin, nc, nb, analysis)
        within.append((ub < margin, f"5xx increase at most {_fmt_signed_pct(ub)} "
                                    f"(allowed +{_fmt_pct(margin)})"))
    if analysis.max_error_rate is not None and nc > 0:
        d, v = seq.error_ceiling(canary.errors, nc, analysis.max_error_rate)
        p = record("ceiling", float(seq.always_valid_p(seq.log_mixture_lr(
            d, v, max(seq.TAU_ERROR, analysis.max_error_rate)))))
        if p <= budget.ceiling:
            fails.append(f"5xx {_fmt_pct(canary.error_rate)} above the "
                         f"{_fmt_pct(analysis.max_error_rate)} ceiling, p={_fmt_p(p)}")
        ub = float(seq.error_rate_upper(canary.errors, nc,
                                        max(analysis.max_error_rate, seq.TAU_PASS_MIN), miss))
        figs["error_rate_upper"] = ub
        figs["error_rate_lower"] = 2 * canary.error_rate - ub
        figs["ceiling_outcome"] = _test_outcome(p <= budget.ceiling,
                                                ub < analysis.max_error_rate, nc, nc, analysis)
        within.append((ub < analysis.max_error_rate,
                       f"5xx at most {_fmt_pct(ub)} (ceiling {_fmt_pct(analysis.max_error_rate)})"))
    allowed = (f"allowed +{100 * analysis.max_latency_increase:.0f}% "
               f"or +{1000 * LATENCY_FLOOR_S:.0f} ms")
    if canary.ok > 0 and baseline.ok > 0:
        p_now, theta, upper = latency_tests(canary.hist, baseline.hist, analysis)
        figs["latency_theta"] = float(theta)
        p = record("latency", float(p_now))
        if p <= budget.latency:
            fails.append(
                f"latency p50 {_fmt_ms(figs['canary_p50'])} vs {_fmt_ms(figs['baseline_p50'])}, "
                f"p95 {_fmt_ms(figs['canary_p95'])} vs {_fmt_ms(figs['baseline_p95'])} "
                f"({allowed}), p={_fmt_p(p)}")
        ub = float(upper)
        figs["latency_theta_upper"] = ub
        figs["latency_theta_lower"] = 2 * float(theta) - ub
        figs["latency_outcome"] = _test_outcome(p <= budget.latency, ub < 0.5, nc, nb, analysis)
        within.append((ub < 0.5, f"P(slower than allowed) at most {ub:.2f} (needs < 0.50)"))
    else:
        within.append((False, "no successful requests to compare latency"))

    dry_fails: list[str] = []
    for mv in _judge_metrics(analysis, metrics or {}, budget.metric, running):
        for k, val in mv.figures.items():
            figs[f"metric:{mv.name}:{k}"] = val
        figs[f"metric:{mv.name}:outcome"] = mv.outcome
        figs[f"metric:{mv.name}:reason"] = mv.reason
        if mv.outcome == "fail":
            (dry_fails if mv.dry_run else fails).append(mv.reason)
        elif not mv.dry_run:
            within.append((mv.outcome == "pass", mv.reason))
    dry = ""
    if dry_fails:
        figs["would_fail"] = "would have rolled back: " + "; ".join(dry_fails)
        dry = f"; dry run: {figs['would_fail']}"

    def verdict(outcome: Outcome, reason: str) -> Verdict:
        return Verdict(outcome, reason + dry, figs)

    if fails:
        return verdict("fail", "; ".join(fails) + f"; {after}")
    need = max(1, analysis.min_requests)
    if nc < need or nb < need:
        return verdict(
            "undecided",
            f"too little data: {nc} canary and {nb} baseline requests, need {need} each",
        )
    conf = f"{100 * analysis.confidence:g}%"
    if all(ok for ok, _ in within):
        return verdict(
            "pass",
            f"{rates}, p50 {_fmt_ms(figs['canary_p50'])} vs {_fmt_ms(figs['baseline_p50'])}; "
            f"within the margins at {conf} confidence {after}",
        )
    open_ = [why for ok, why in within if not ok]
    return verdict(
        "undecided",
        f"{rates}; not yet shown within the margins at {conf}: {'; '.join(open_)}; {after}",
    )


def _test_outcome(failed: bool, within: bool, nc: int, nb: int, analysis: Analysis) -> Outcome:
    """One test's own outcome (the verdict combines them): for the words per metric."""
    need = max(1, analysis.min_requests)
    return "fail" if failed else "pass" if within and nc >= need and nb >= need else "undecided"


def _judge_metrics(analysis: Analysis,
                   evidence: Mapping[str, tuple[MetricSummary, MetricSummary]],
                   alpha: float, best_p: dict[str, float]) -> list[MetricVerdict]:
    out = []
    for metric in analysis.metrics:
        c, b = evidence.get(metric.name) or (MetricSummary(), MetricSummary())
        # A count's total is requests-like; a value metric has one value per window.
        min_n = max(1, analysis.min_requests) if metric.kind == "count" else MIN_VALUES
        out.append(judge_metric(metric, c, b, alpha=alpha, confidence=analysis.confidence,
                                min_n=min_n, best_p=best_p))
    return out


MIN_VALUES = 5
"""Windows of a `value` metric each side needs before it may pass (its bound decides too)."""


class Judge:
    """Incremental judge for one canary against one baseline; feed samples or a metric source's
    windows, ask at every look.

    Samples and windows of other releases are ignored. The first "fail" is final: a later look
    that would pass does not undo it (the guarantee is about the first crossing of the
    threshold).
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
        self.metrics: dict[str, tuple[MetricSummary, MetricSummary]] = {
            m.name: (MetricSummary(), MetricSummary()) for m in analysis.metrics}
        self._directions = {m.name: m.direction for m in analysis.metrics}

    def add_metric_counts(self, name: str, release: str, failures: float, total: float) -> None:
        """One window of a `count` metric for one release (other releases are ignored)."""
        side = self._side(name, release)
        if side is not None:
            side.add_counts(failures, total, self._directions[name])

    def set_metric_counts(self, name: str, release: str, failures: float, total: float) -> None:
        """A `count` metric's running sums for the whole rollout so far (asked again at every
        look): they replace the earlier answer."""
        side = self._side(name, release)
        if side is not None:
            side.failures = side.total = 0.0
            side.add_counts(failures, total, self._directions[name])

    def add_metric_values(self, name: str, release: str, values: Iterable[float]) -> None:
        """Values (one per window) of a `value` metric for one release."""
        side = self._side(name, release)
        if side is not None:
            side.add_values(values, self._directions[name])

    def _side(self, name: str, release: str) -> MetricSummary | None:
        pair = self.metrics.get(name)
        if pair is None:
            return None
        return pair[0] if release == self.canary_release else (
            pair[1] if release == self.baseline_release else None)

    def add(self, samples: Iterable[Sample]) -> None:
        mine = list(samples)
        self.canary.add(s for s in mine if s.release_id == self.canary_release)
        self.baseline.add(s for s in mine if s.release_id == self.baseline_release)

    def add_windows(self, windows: Iterable[Window]) -> None:
        """A metric source's aggregates: the same sums `add` makes of the requests in them."""
        for w in windows:
            if w.release_id == self.canary_release:
                self.canary.add_window(w)
            elif w.release_id == self.baseline_release:
                self.baseline.add_window(w)

    def verdict(self, now: float | None = None) -> Verdict:
        if self._failed is not None:
            return self._failed
        self.looks += 1
        k = self.analysis.design_effect  # sticky canaries: correlated requests (clustered.py)
        v = judge_summaries(deflate(self.canary, k), deflate(self.baseline, k), self.analysis,
                            segments=self.segments, best_p=self._best_p, metrics=self.metrics)
        if k > 1.0:
            v.figures["design_effect"] = k
        v.figures["looks"] = self.looks
        if now is not None:
            v.figures["time"] = now
        if v.outcome == "fail":
            self._failed = v
        return v


def requests_to_pass(analysis: Analysis, baseline_ratio: float = 9.0, limit: int = 10**7) -> int:
    """Canary requests a perfect release (no errors on either side, the baseline serving
    `baseline_ratio` times as many requests) needs before the error bound fits the margin:
    the price of a "pass" at these settings (latency is usually decided sooner)."""
    margin = analysis.max_error_rate_increase
    tau = max(margin, seq.TAU_PASS_MIN)
    miss = 1.0 - analysis.confidence
    def fits(k: np.ndarray) -> np.ndarray:
        ub = seq.error_increase_upper(0.0, k, 0.0, np.ceil(baseline_ratio * k), tau, miss)
        return np.asarray(ub < margin)

    # The bound shrinks with n: bisect instead of scanning millions of sample sizes.
    lo, hi = 1, limit
    if margin <= 0 or not fits(np.array([float(hi)]))[0]:
        return limit
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(np.array([float(mid)]))[0]:
            hi = mid
        else:
            lo = mid + 1
    return max(lo, analysis.min_requests)
