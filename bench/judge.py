"""Judge benchmark: kiln's sequential judge vs two reference judges on identical synthetic streams.

Canary 20 req/s, baseline 180 req/s, lognormal latencies (median 50 ms, sigma 0.5), simulated
time (no sleeping), fixed seeds. Each run is a 5-minute rollout; a judge stops it at its first
"fail". Exposure = canary requests served up to and including the second the judge decided.

References (each as generous as we could make it):
- flagger: every 60 s, fail if the interval's canary error rate > baseline rate + 1 point, or the
  canary p99 > 1.25 x baseline p99 (Flagger checks absolute thresholds once per interval; we
  use failure threshold 1 = roll back on the first failed check, the most aggressive setting).
- kayenta: at the end of every 60 s interval, one-sided Mann-Whitney at alpha 0.05 on the
  interval's per-request latencies (with the same 25% effect gate on the medians) and on the
  per-request error indicators (with the 1-point gate on the rates).
- kiln: `kiln.analysis` mSPRT on everything since the rollout began, looked at every second,
  alpha 0.01 for the whole rollout.

Run: .venv/bin/python bench/judge.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kiln.analysis import sequential as seq
from kiln.analysis.judge import Budget
from kiln.analysis.summary import N_BINS, bin_index
from kiln.spec.models import Analysis

RATE_C, RATE_B = 20, 180
DURATION = 300  # seconds per rollout
INTERVAL = 60
MEDIAN, SIGMA = 0.050, 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    err_c: float
    err_b: float
    lat_scale_c: float
    rate_c: int = RATE_C
    rate_b: int = RATE_B


SCENARIOS = [
    Scenario("J1", "errors 1% -> 6%", 0.06, 0.01, 1.0),
    Scenario("J2", "p50 latency +50%", 0.01, 0.01, 1.5),
    Scenario("J3", "A/A (good release)", 0.01, 0.01, 1.0),
    Scenario("J4", "no canary traffic", 0.01, 0.01, 1.0, rate_c=0),
    Scenario("J3b", "at the gates (2% vs 1%, latency x1.25)", 0.02, 0.01, 1.25),
]
"""J3b is the worst case for false alarms: the canary sits exactly on the null boundary of both
tests, so kiln's rate of rollbacks there must stay at or below alpha (0.01)."""


def _hist_add(hist: np.ndarray, lat: np.ndarray, ok: np.ndarray) -> None:
    runs = lat.shape[0]
    flat = (np.arange(runs)[:, None] * N_BINS + bin_index(lat))[ok]
    hist += np.bincount(flat, minlength=runs * N_BINS).reshape(runs, N_BINS)


def simulate(sc: Scenario, runs: int, seed: int) -> dict[str, np.ndarray]:
    """Returns per judge the decision second (DURATION+1 = never failed) and, for kiln, the
    end-of-rollout verdict 'passed' flags."""
    rng = np.random.default_rng(seed)
    a = Analysis()
    budget = Budget.of(a)
    m = a.max_latency_increase
    margin = a.max_error_rate_increase
    never = DURATION + 1
    kiln_t = np.full(runs, never)
    flagger_t = np.full(runs, never)
    kayenta_t = np.full(runs, never)
    hist_c = np.zeros((runs, N_BINS))
    hist_b = np.zeros((runs, N_BINS))
    xc = np.zeros(runs)
    xb = np.zeros(runs)
    best_e = np.ones(runs)
    best_l = np.ones(runs)
    iv_c: list[tuple[np.ndarray, np.ndarray]] = []
    iv_b: list[tuple[np.ndarray, np.ndarray]] = []
    for t in range(1, DURATION + 1):
        lat_c = MEDIAN * sc.lat_scale_c * np.exp(SIGMA * rng.standard_normal((runs, sc.rate_c)))
        err_c = rng.random((runs, sc.rate_c)) < sc.err_c
        lat_b = MEDIAN * np.exp(SIGMA * rng.standard_normal((runs, sc.rate_b)))
        err_b = rng.random((runs, sc.rate_b)) < sc.err_b
        _hist_add(hist_c, lat_c, ~err_c)
        _hist_add(hist_b, lat_b, ~err_b)
        xc += err_c.sum(axis=1)
        xb += err_b.sum(axis=1)
        iv_c.append((lat_c, err_c))
        iv_b.append((lat_b, err_b))
        # kiln: one look per second on everything since the start.
        nc, nb = sc.rate_c * t, sc.rate_b * t
        d, v = seq.error_increase(xc, nc, xb, nb, margin)
        best_e = np.minimum(best_e, seq.always_valid_p(
            seq.log_mixture_lr(d, v, max(seq.TAU_ERROR, margin))))
        d, v, _ = seq.latency_increase(hist_c, hist_b, m)
        best_l = np.minimum(best_l, seq.always_valid_p(seq.log_mixture_lr(d, v, seq.TAU_LATENCY)))
        failed = (best_e <= budget.error) | (best_l <= budget.latency)
        kiln_t = np.where((kiln_t == never) & failed, t, kiln_t)
        if t % INTERVAL == 0:
            lc = np.concatenate([x for x, _ in iv_c], axis=1)
            ec = np.concatenate([e for _, e in iv_c], axis=1)
            lb = np.concatenate([x for x, _ in iv_b], axis=1)
            eb = np.concatenate([e for _, e in iv_b], axis=1)
            iv_c.clear()
            iv_b.clear()
            f_fail, k_fail = _references(lc, ec, lb, eb, m, margin)
            flagger_t = np.where((flagger_t == never) & f_fail, t, flagger_t)
            kayenta_t = np.where((kayenta_t == never) & k_fail, t, kayenta_t)
        if sc.rate_c and (kiln_t < never).all() and t % INTERVAL == 0 and \
                (flagger_t < never).all() and (kayenta_t < never).all():
            break
    # End-of-rollout verdict of kiln for runs that never failed: pass needs min_requests.
    n_end = sc.rate_c * DURATION
    kiln_pass = (kiln_t == never) & (n_end >= max(1, a.min_requests))
    return {"kiln": kiln_t, "flagger": flagger_t, "kayenta": kayenta_t, "kiln_pass": kiln_pass}


def _references(lc: np.ndarray, ec: np.ndarray, lb: np.ndarray, eb: np.ndarray, m: float,
                margin: float) -> tuple[np.ndarray, np.ndarray]:
    runs = lc.shape[0]
    if lc.shape[1] == 0:  # no canary traffic: nothing to compare; naive checks see no errors
        none = np.zeros(runs, dtype=bool)
        return none, none
    rate_c, rate_b = ec.mean(axis=1), eb.mean(axis=1)
    okc, okb = np.where(ec, np.nan, lc), np.where(eb, np.nan, lb)
    p99c, p99b = np.nanpercentile(okc, 99, axis=1), np.nanpercentile(okb, 99, axis=1)
    flagger = (rate_c > rate_b + margin) | (p99c > (1 + m) * p99b)
    # Kayenta-style: fixed-horizon Mann-Whitney per interval, alpha 0.05, with effect gates.
    lat_p = stats.mannwhitneyu(lc, lb, axis=1, alternative="greater", method="asymptotic").pvalue
    med_ratio = np.nanmedian(okc, axis=1) / np.nanmedian(okb, axis=1)
    err_p = stats.mannwhitneyu(ec.astype(float), eb.astype(float), axis=1,
                               alternative="greater", method="asymptotic").pvalue
    kayenta = ((lat_p < 0.05) & (med_ratio > 1 + m)) | ((err_p < 0.05) & (rate_c - rate_b > margin))
    return flagger, kayenta


def _dist(t: np.ndarray, rate: int) -> tuple[float, float, float]:
    """Median and p90 exposure (canary requests) and the share of runs that failed."""
    exposure = np.minimum(t, DURATION) * rate
    return float(np.median(exposure)), float(np.percentile(exposure, 90)), float(
        (t <= DURATION).mean())


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20240501)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows = ["| scenario | judge | rollbacks | passes | exposure median | exposure p90 "
            "| median vs better ref |", "|---|---|---|---|---|---|---|"]
    for i, sc in enumerate(SCENARIOS):
        res = simulate(sc, args.runs, args.seed + i)
        d = {k: _dist(res[k], sc.rate_c) for k in ("flagger", "kayenta", "kiln")}
        better = min(d["flagger"][0], d["kayenta"][0])
        for k, (med, p90, share) in d.items():
            ratio = f"{med / better:.2f}x" if sc.name in ("J1", "J2") and better > 0 else ""
            passed = res["kiln_pass"].mean() if k == "kiln" else 1.0 - share
            rows.append(f"| {sc.name} {sc.what} | {k} | {100 * share:.1f}% | "
                        f"{100 * passed:.1f}% | {med:.0f} | {p90:.0f} | {ratio} |")
    table = "\n".join(rows)
    out(f"runs per scenario: {args.runs}, seed {args.seed}, 5-min rollouts, canary {RATE_C} req/s,"
        f" baseline {RATE_B} req/s, lognormal latency median {MEDIAN * 1000:.0f} ms sigma {SIGMA}")
    out(table)
    out(f"elapsed {time.perf_counter() - start:.1f} s")
    return table


if __name__ == "__main__":
    main()
