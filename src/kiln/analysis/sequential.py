"""Always-valid sequential tests (mixture SPRT, Johari et al. 2017/2022), vectorised with numpy.

Each test reduces the data seen so far to an estimate `delta` of (effect - margin) and the variance
`v` that estimate has under the null hypothesis at its boundary. The normal-mixture likelihood
ratio

    Lambda = sqrt(v / (v + tau2)) * exp(tau2 * delta**2 / (2 * v * (v + tau2)))

is (asymptotically) a non-negative martingale under the null, so by Ville's inequality
P(Lambda ever reaches 1/alpha) <= alpha however often it is looked at. We reject only when
delta > 0 (one-sided), which keeps the bound. Every function takes arrays so the benchmark can run
thousands of rollouts at once through the very same code the judge uses.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from kiln.analysis.summary import BIN_WIDTH, N_BINS

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

TAU_ERROR = 0.05
"""Mixture scale for error-rate differences: tuned for effects of a few percentage points."""
TAU_LATENCY = 0.10
"""Mixture scale for P(canary slower than scaled baseline) - 1/2."""
MIN_NULL_COUNT = 2.0
"""Small-count guard: the null variance of the canary's error count is at least that of 2 errors,
so one or two stray errors against an error-free baseline never look like 'infinite evidence'."""


def log_mixture_lr(delta: ArrayLike, v: ArrayLike, tau: float) -> FloatArray:
    """One-sided log mSPRT statistic; -inf where delta <= 0 or there is no data (v not finite)."""
    d = np.asarray(delta, dtype=np.float64)
    var = np.asarray(v, dtype=np.float64)
    tau2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        llr = 0.5 * np.log(var / (var + tau2)) + tau2 * d * d / (2.0 * var * (var + tau2))
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


def latency_increase(
    hist_c: ArrayLike, hist_b: ArrayLike, max_increase: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """H0: canary latency is at most (1 + max_increase) x baseline latency (stochastically).

    The statistic is the Mann-Whitney probability theta = P(C > (1+m) B), estimated from the two
    log-latency histograms (ties count one half). Under H0, theta <= 1/2; at the boundary
    C ~ (1+m) B its estimate has variance (1/n_c + 1/n_b) / 12. Returns (theta - 1/2, variance,
    theta). Histograms have shape (..., N_BINS).
    """
    hc = np.asarray(hist_c, dtype=np.float64)
    hb = np.asarray(hist_b, dtype=np.float64)
    nc = hc.sum(axis=-1)
    nb = hb.sum(axis=-1)
    # Baseline CDF (counts) at bin edges 0..N, then read at each canary bin's centre scaled down
    # by (1+m): that centre sits at fractional edge position k + 0.5 - shift.
    shift = math.log1p(max_increase) / BIN_WIDTH
    pos0 = 0.5 - shift
    i0 = math.floor(pos0)
    frac = pos0 - i0
    zeros = np.zeros((*hb.shape[:-1], 1))
    edges = np.concatenate([zeros, np.cumsum(hb, axis=-1)], axis=-1)  # (..., N+1)
    pad = -i0 if i0 < 0 else 0
    if pad:
        edges = np.concatenate([np.zeros((*hb.shape[:-1], pad)), edges], axis=-1)
    lo = edges[..., i0 + pad: i0 + pad + N_BINS]
    hi = edges[..., i0 + pad + 1: i0 + pad + 1 + N_BINS]
    cdf = (1.0 - frac) * lo + frac * hi  # (..., N): scaled-baseline count below each canary bin
    with np.errstate(divide="ignore", invalid="ignore"):
        f = cdf / nb[..., None]
        theta = (hc * f).sum(axis=-1) / nc
        second = (hc * f * f).sum(axis=-1) / nc
        var_c = np.maximum(1.0 / 12.0, second - theta * theta)
        v = var_c / nc + 1.0 / (12.0 * nb)
    ok = (nc > 0) & (nb > 0)
    return np.where(ok, theta - 0.5, np.nan), np.where(ok, v, np.nan), np.where(ok, theta, np.nan)
