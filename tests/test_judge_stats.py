"""The judge's statistics checked against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from kiln.analysis import sequential as seq
from kiln.analysis.summary import N_BINS, Summary, bin_index
from kiln.platforms.base import Sample


def _hist(x: np.ndarray) -> np.ndarray:
    return np.bincount(bin_index(x), minlength=N_BINS).astype(float)


@pytest.mark.parametrize(("delta", "v", "tau"), [(0.02, 1e-4, 0.05), (0.1, 7e-4, 0.1),
                                                 (0.001, 1e-3, 0.05)])
def test_mixture_lr_matches_numerical_integral(delta: float, v: float, tau: float) -> None:
    # Lambda = integral of N(delta; theta, v) / N(delta; 0, v) over the prior of theta:
    # half-normal 2 N(0, tau^2) on theta > 0 (fail side), N(0, tau^2) (pass side's bound).
    def ratio(theta: float) -> float:
        return float(stats.norm.pdf(delta, theta, math.sqrt(v))
                     / stats.norm.pdf(delta, 0, math.sqrt(v)))

    half, _ = integrate.quad(lambda t: ratio(t) * 2 * stats.norm.pdf(t, 0, tau), 0, 1,
                             points=[delta], limit=200)
    full, _ = integrate.quad(lambda t: ratio(t) * stats.norm.pdf(t, 0, tau), -1, 1,
                             points=[0.0, delta], limit=200)
    assert math.exp(float(seq.log_mixture_lr(delta, v, tau))) == pytest.approx(half, rel=1e-6)
    assert math.exp(float(seq.log_normal_mixture_lr(delta, v, tau))) == pytest.approx(full,
                                                                                      rel=1e-6)


def test_mixture_lr_is_one_sided() -> None:
    assert seq.log_mixture_lr(-0.5, 1e-4, 0.05) == -math.inf
    assert seq.always_valid_p(seq.log_mixture_lr(-0.5, 1e-4, 0.05)) == 1.0


@pytest.mark.parametrize("m", [0.0, 0.25, 0.5])
def test_latency_theta_matches_mann_whitney(m: float) -> None:
    rng = np.random.default_rng(7)
    c = 0.05 * 1.3 * np.exp(0.5 * rng.standard_normal(800))
    b = 0.05 * np.exp(0.5 * rng.standard_normal(3000))
    _, v, theta = seq.latency_increase(_hist(c), _hist(b), m)
    u = stats.mannwhitneyu(c, b * (1 + m), alternative="greater").statistic
    assert float(theta) == pytest.approx(u / (len(c) * len(b)), abs=0.005)
    # Null variance of U / (n1 n2) for continuous data: (n1 + n2 + 1) / (12 n1 n2).
    assert float(v) == pytest.approx((len(c) + len(b) + 1) / (12 * len(c) * len(b)), rel=0.01)


def test_error_increase_z_matches_two_proportion_test_at_zero_margin() -> None:
    # With margin 0 and a huge baseline, delta / sqrt(v) is the one-sample score z statistic.
    d, v = seq.error_increase(130, 1000, 100_000, 1_000_000, 0.0)
    z = float(d / np.sqrt(v))
    p0 = 100_000.5 / 1_000_001
    expected = (130 / 1000 - p0 - 0.5 / 1000) / math.sqrt(p0 * (1 - p0) / 1000)
    assert z == pytest.approx(expected, rel=0.01)
    assert stats.norm.sf(z) == pytest.approx(
        stats.binomtest(130, 1000, p0, alternative="greater").pvalue, rel=0.35)


def test_summary_quantiles_within_bin_resolution() -> None:
    rng = np.random.default_rng(3)
    d = 0.05 * np.exp(0.5 * rng.standard_normal(5000))
    s = Summary.of(Sample("r", 0.0, 200, float(x), False) for x in d)
    assert s.quantile(0.5) == pytest.approx(float(np.quantile(d, 0.5)), rel=0.02)
    assert s.quantile(0.95) == pytest.approx(float(np.quantile(d, 0.95)), rel=0.02)
    assert Summary().quantile(0.5) is None


def test_errors_are_left_out_of_latency() -> None:
    s = Summary.of([Sample("r", 0, 500, 0.001, True), Sample("r", 0, 200, 0.1, False)])
    assert (s.requests, s.errors, s.hist.sum()) == (2, 1, 1)
