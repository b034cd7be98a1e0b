"""Always-valid sequential tests and confidence sequences (mixture SPRT), vectorised with numpy.

Each test reduces the data seen so far to an estimate `delta` of (effect - margin) and the variance
`v` that estimate has under the null hypothesis at its boundary. The normal-mixture likelihood
ratio

    Lambda_N = sqrt(v / (v + tau2)) * exp(tau2 * delta**2 / (2 * v * (v + tau2)))

and its half-normal (one-sided) version 2 Lambda_N Phi(delta tau / sqrt(v (v + tau2))) are
(asymptotically) non-negative martingales under the null, so by Ville's inequality
P(Lambda ever reaches 1/alpha) <= alpha however often it is looked at. The "fail" tests use the
half-normal one and reject only when delta > 0. Every function takes arrays so the benchmark can run
thousands of rollouts at once through the very same code the judge uses.

Inverting the normal mixture gives a confidence sequence (Robbins 1970; Howard et al. 2021): with
`bound(v, tau, alpha)` below, P(there is a look where estimate - truth > bound) <= alpha. The
judge's "pass" is that upper confidence bound of the increase lying inside the allowed margin; the
variance there is the plug-in one (asymptotic confidence sequences, Waudby-Smith et al. 2021), with
pseudo-counts so a run of zero errors is not taken for zero variance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import special

from kiln.analysis.summary import BIN_WIDTH, LOG_MIN, N_BINS

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

TAU_ERROR = 0.05
"""Mixture scale for error-rate differences: tuned for effects of a few percentage points."""
TAU_LATENCY = 0.10
"""Mixture scale for P(canary slower than scaled baseline) - 1/2."""
TAU_PASS_MIN = 0.005
"""Smallest mixture scale of the "pass" confidence sequences; otherwise the margin itself, which
makes the bound tightest around the sample size where it can first fit inside the margin."""
PASS_PSEUDO_COUNT = 2.0
"""Errors and successes added to each side's plug-in variance in the "pass" bounds. With 1 the
bound undercovers slightly at the margin for rare errors (6.5% false passes at 95% over 15-min
simulated rollouts); with 2 it holds (3.7-4.7%), see tests/test_judge_bounds.py."""
MIN_NULL_COUNT = 2.0
"""Small-count guard: the null variance of the canary's error count is at least that of 2 errors,
so one or two stray errors against an error-free baseline never look like 'infinite evidence'."""


def log_mixture_lr(delta: ArrayLike, v: ArrayLike, tau: float) -> FloatArray:
    """One-sided log mSPRT statistic; -inf where delta <= 0 or there is no data (v not finite).

    The mixture is half-normal, 2 N(0, tau2) over effects > 0 only (the alternative is one-sided,
    so no prior weight is wasted on improvements): Lambda = 2 Lambda_N Phi(delta tau /
    sqrt(v (v + tau2))), with Lambda_N the normal-mixture ratio above.
    """
    d = np.asarray(delta, dtype=np.float64)
    var = np.asarray(v, dtype=np.float64)
    tau2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        llr = 0.5 * np.log(var / (var + tau2)) + tau2 * d * d / (2.0 * var * (var + tau2))
        llr = llr + math.log(2.0) + special.log_ndtr(d * tau / np.sqrt(var * (var + tau2)))
    ok = (d > 0) & np.isfinite(var) & (var > 0)
    return np.where(ok, llr, -np.inf)


def always_valid_p(llr: ArrayLike) -> FloatArray:
    """p-value at this look: min(1, 1/Lambda). Take the running minimum over looks."""
    return np.minimum(1.0, np.exp(-np.asarray(llr, dtype=np.float64)))


def error_increase(
    x_c: ArrayLike, n_c: ArrayLike, x_b: ArrayLike, n_b: ArrayLike, margin: float
) -> tuple[FloatArray, FloatArray]:
    """H0: p_canary - p_baseline <= margin. Returns (delta, null variance).

    delta = p_c - p_b - margin, with a continuity correction of half a canary request; the
    variance is taken at the null boundary p_c = p_b + margin (as in the Farrington-Manning
    non-inferiority test), which is what controls the false-alarm rate.
    """
    xc = np.asarray(x_c, dtype=np.float64)
    nc = np.asarray(n_c, dtype=np.float64)
    xb = np.asarray(x_b, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pb = (xb + 0.5) / (nb + 1.0)  # smoothed: never exactly 0 or 1
        pc = xc / nc
        delta = pc - pb - margin - 0.5 / nc
        p0 = np.clip(pb + margin, 0.0, 1.0 - 1e-9)
        vc = np.maximum(p0 * (1.0 - p0), MIN_NULL_COUNT / nc) / nc
        v = vc + pb * (1.0 - pb) / nb
    v = np.where((nc > 0) & (nb > 0), v, np.nan)
    return delta, v


def error_ceiling(x_c: ArrayLike, n_c: ArrayLike, ceiling: float) -> tuple[FloatArray, FloatArray]:
    """H0: p_canary <= ceiling (an absolute limit, no baseline needed)."""
    xc = np.asarray(x_c, dtype=np.float64)
    nc = np.asarray(n_c, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = xc / nc - ceiling - 0.5 / nc
        p0 = min(max(ceiling, 0.0), 1.0 - 1e-9)
        v = np.maximum(p0 * (1.0 - p0), MIN_NULL_COUNT / nc) / nc
    return delta, np.where(nc > 0, v, np.nan)


def log_normal_mixture_lr(delta: ArrayLike, v: ArrayLike, tau: float) -> FloatArray:
    """log of the normal-mixture ratio N(0, tau2) over effects of both signs (no cut-off)."""
    d = np.asarray(delta, dtype=np.float64)
    var = np.asarray(v, dtype=np.float64)
    tau2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = 0.5 * np.log(var / (var + tau2)) + tau2 * d * d / (
            2.0 * var * (var + tau2))
    return out


def bound(v: ArrayLike, tau: float, alpha: float) -> FloatArray:
    """Half-width of the one-sided normal-mixture confidence sequence (the "pass" side).

    The b with Lambda_N(b) = 1/alpha, b**2 = 2 v (v + tau2) / tau2 * log(sqrt((v + tau2) / v) /
    alpha): an estimate with variance v exceeds its true value by more than b at some look with
    probability <= alpha. The full normal mixture, not the tighter half-normal one the "fail"
    side uses: here v is estimated (plug-in), and the extra width absorbs that; simulated, the
    half-normal bound let 5.5-8% of canaries at the margin pass at 95%, this one 3.7-4.7%.
    inf where there is no data.
    """
    var = np.asarray(v, dtype=np.float64)
    tau2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        b2 = 2.0 * var * (var + tau2) / tau2 * (0.5 * np.log((var + tau2) / var) - math.log(alpha))
        b = np.sqrt(b2)
    return np.where(np.isfinite(var) & (var > 0), b, np.inf)


def error_increase_upper(x_c: ArrayLike, n_c: ArrayLike, x_b: ArrayLike, n_b: ArrayLike,
                         tau: float, alpha: float) -> FloatArray:
    """Upper confidence bound (sequence) of p_canary - p_baseline.

    Estimate: the raw difference plus a continuity correction of half a canary request. Variance:
    plug-in with `PASS_PSEUDO_COUNT` errors and successes added to each side (as Agresti-Caffo
    add one), which matters only while the counts are small. inf without data on both sides.
    """
    xc = np.asarray(x_c, dtype=np.float64)
    nc = np.asarray(n_c, dtype=np.float64)
    xb = np.asarray(x_b, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = PASS_PSEUDO_COUNT
        pc, pb = (xc + k) / (nc + 2 * k), (xb + k) / (nb + 2 * k)
        v = pc * (1.0 - pc) / nc + pb * (1.0 - pb) / nb
        est = xc / nc - xb / nb + 0.5 / nc
        ub = est + bound(v, tau, alpha)
    return np.where((nc > 0) & (nb > 0), ub, np.inf)


def error_rate_upper(x_c: ArrayLike, n_c: ArrayLike, tau: float, alpha: float) -> FloatArray:
    """Upper confidence bound (sequence) of p_canary alone (for the absolute ceiling)."""
    xc = np.asarray(x_c, dtype=np.float64)
    nc = np.asarray(n_c, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = PASS_PSEUDO_COUNT
        pc = (xc + k) / (nc + 2 * k)
        ub = xc / nc + 0.5 / nc + bound(pc * (1.0 - pc) / nc, tau, alpha)
    return np.where(nc > 0, ub, np.inf)


def latency_increase(
    hist_c: ArrayLike, hist_b: ArrayLike, max_increase: float, floor: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """H0: canary latency is at most g(baseline latency) (stochastically), g(b) = max((1+m) b, b + floor).

    The allowed increase is relative (`max_increase`) but never less than `floor` seconds: at
    millisecond latencies +25% is noise. The statistic is the Mann-Whitney probability
    theta = P(C > g(B)), estimated from the two log-latency histograms (ties count one half).
    Under H0, theta <= 1/2; at the boundary C ~ g(B) its estimate has variance
    (1/n_c + 1/n_b) / 12. Returns (theta - 1/2, variance, theta). Histograms: shape (..., N_BINS).
    """
    hc = np.asarray(hist_c, dtype=np.float64)
    hb = np.asarray(hist_b, dtype=np.float64)
    nc = hc.sum(axis=-1)
    nb = hb.sum(axis=-1)
    # Baseline CDF (counts) at bin edges 0..N, read at g^-1 of each canary bin's centre:
    # g^-1(c) = min(c / (1+m), c - floor), as a fractional edge position.
    centre = np.exp(LOG_MIN + (np.arange(N_BINS) + 0.5) * BIN_WIDTH)
    limit = np.minimum(centre / (1.0 + max_increase), centre - floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = np.where(limit > 0, (np.log(np.maximum(limit, 1e-300)) - LOG_MIN) / BIN_WIDTH, -1.0)
    pos = np.clip(pos, 0.0, float(N_BINS))
    j0 = np.minimum(np.floor(pos).astype(np.intp), N_BINS - 1)
    frac = pos - j0
    zeros = np.zeros((*hb.shape[:-1], 1))
    edges = np.concatenate([zeros, np.cumsum(hb, axis=-1)], axis=-1)  # (..., N+1)
    cdf = (1.0 - frac) * edges[..., j0] + frac * edges[..., j0 + 1]  # scaled-baseline count below
    with np.errstate(divide="ignore", invalid="ignore"):
        f = cdf / nb[..., None]
        theta = (hc * f).sum(axis=-1) / nc
        second = (hc * f * f).sum(axis=-1) / nc
        var_c = np.maximum(1.0 / 12.0, second - theta * theta)
        v = var_c / nc + 1.0 / (12.0 * nb)
    ok = (nc > 0) & (nb > 0)
    return np.where(ok, theta - 0.5, np.nan), np.where(ok, v, np.nan), np.where(ok, theta, np.nan)
