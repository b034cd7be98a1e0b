"""Judge benchmark: kiln's sequential judge vs two reference judges on identical synthetic streams.

Simulated time (no sleeping), fixed seeds, lognormal latencies (median 50 ms, sigma 0.5), one
look per second. A judge stops a rollout at its first "fail"; kiln also says "pass" when its
confidence bounds put the canary inside the margins (the step may then advance).

J1-J4, J3b: canary 20 req/s, baseline 180 req/s, 5-minute rollouts, default analysis. Exposure =
canary requests served up to and including the second the judge failed the canary.
References (each as generous as we could make it):
- flagger: every 60 s, fail if the interval's canary error rate > baseline rate + 1 point, or the
  canary p99 > 1.25 x baseline p99 (Flagger checks absolute thresholds once per interval; we
  use failure threshold 1 = roll back on the first failed check, the most aggressive setting).
  It passes at the end of an interval that did not fail.
- kayenta: at the end of every 60 s interval, one-sided Mann-Whitney at alpha 0.05 on the
  interval's per-request latencies (with the same 25% effect gate on the medians) and on the
  per-request error indicators (with the 1-point gate on the rates).
- kiln: `kiln.analysis.judge` (the very functions the judge calls) on everything since the
  rollout began, looked at every second: fail at alpha 0.01 for the whole rollout, pass at 95%.
J5 (bad canaries must not pass a step): baseline 0% 5xx, canary 15 req/s (baseline 135), allowed
+2 points, min_requests 50, a 3 s step that advances on the first "pass" after its pause; the
canary is 3x the allowed error increase (6%) or 2x the allowed latency increase (+50%).
"kiln before" is the old rule: no rejection yet and min_requests reached = pass.
For J1 an "oracle SPRT" row: Wald's test knowing both true error rates, at kiln's error budget
(alpha/2): a floor no valid test beats by much.
J6 (the price of evidence): A/A, 1% 5xx on both sides, allowed +1 point, canary 20 req/s:
canary requests until a step passes, against the references' 1,200 (the end of their interval).
J8 (warm-up): default analysis, canary 20 req/s (baseline 180), 1% 5xx on both sides; the canary
is 1.6x slower for its first 30 s then equal, or for its whole life, judged with and without
`warmup: 30s` (the canary's requests of its first 30 s are not judged; the baseline's are).
Judging goes on for the whole 5 minutes after a pass: "rollbacks" is any fail in that time.

J7 (a business counter, `analysis.metrics`): each canary request is a checkout, the counter
counts failed checkouts; baseline 1%, canary 4% (3x the allowed +1 point) while 5xx (1% both
sides) and latency are unchanged. "J7 5xx" is the anchor: the same effect on 5xx with no metric
(the 5xx test at alpha/2 instead of the metric's alpha/3), same rates and seed.
J3m/J3bm: J3 and J3b with a third test, one business counter at 1% on both sides (J3m) or at the
gate (2% vs 1%, J3bm): false rollbacks must stay <= alpha with the budget split three ways.

`--alpha A` reruns the scenarios that use the default analysis with `alpha: A` (the false-alarm
budget): how exposure trades against rollbacks at the limits (docs/decisions/judge-exposure-floor.md).

Run: .venv/bin/python bench/judge.py [--runs 1000] [--alpha 0.01] [--only J1 J3b]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from kiln.analysis.judge import Budget, error_fail_p, error_upper, latency_tests
from kiln.analysis.metrics import count_fail_p, count_upper
from kiln.analysis.summary import N_BINS, bin_index
from kiln.spec.models import Analysis, Metric

RATE_C, RATE_B = 20, 180
DURATION = 300  # seconds per rollout
INTERVAL = 60
MEDIAN, SIGMA = 0.050, 0.5
NEVER = DURATION + 1


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    err_c: float
    err_b: float
    lat_scale_c: float
    rate_c: int = RATE_C
    rate_b: int = RATE_B
    analysis: Analysis = field(default_factory=Analysis)
    pause: int = 0
    """Seconds before a "pass" may advance the step."""
    references: bool = True
    slow_for: int = DURATION
    """Seconds from the start during which the canary's latency is scaled by `lat_scale_c`."""
    whole: bool = False
    """Judge for the whole rollout even after a first pass (J8: a later fail is a rollback)."""
    bus_c: float | None = None
    """Failure rate of a business counter (one checkout per canary request), if judged."""
    bus_b: float = 0.0
    seed: int | None = None
    """Offset of this scenario's seed; default its place in SCENARIOS (J7-J3bm keep the one
    they were measured with before J8 was added)."""


J5_ANALYSIS = Analysis(max_error_rate_increase=0.02, min_requests=50)
J6_ANALYSIS = Analysis(max_error_rate_increase=0.01)
WARM = Analysis(warmup=30.0)
J7_ANALYSIS = Analysis(metrics=[Metric(
    name="checkout_failures", kind="count", max_increase=0.01,
    failures='sum(increase(checkout_failures_total{release="$release"}[$window]))',
    total='sum(increase(checkout_total{release="$release"}[$window]))')])

SCENARIOS = [
    Scenario("J1", "errors 1% -> 6%", 0.06, 0.01, 1.0),
    Scenario("J2", "p50 latency +50%", 0.01, 0.01, 1.5),
    Scenario("J3", "A/A (good release)", 0.01, 0.01, 1.0),
    Scenario("J4", "no canary traffic", 0.01, 0.01, 1.0, rate_c=0),
    Scenario("J3b", "at the gates (2% vs 1%, latency x1.25)", 0.02, 0.01, 1.25),
    Scenario("J5", "errors 0% -> 6% (3x allowed), 15 req/s, 3 s step", 0.06, 0.0, 1.0, 15, 135,
             J5_ANALYSIS, pause=3, references=False),
    Scenario("J5b", "latency +50% (2x allowed), 15 req/s, 3 s step", 0.0, 0.0, 1.5, 15, 135,
             J5_ANALYSIS, pause=3, references=False),
    Scenario("J6", "A/A 1% 5xx, allowed +1 point", 0.01, 0.01, 1.0, 20, 180, J6_ANALYSIS,
             references=False),
    Scenario("J8a", "1.6x for its first 30 s, no warm-up", 0.01, 0.01, 1.6, slow_for=30,
             references=False, whole=True),
    Scenario("J8b", "1.6x for its first 30 s, warmup 30s", 0.01, 0.01, 1.6, analysis=WARM,
             slow_for=30, references=False, whole=True),
    Scenario("J8c", "1.6x for its whole life, no warm-up", 0.01, 0.01, 1.6, references=False,
             whole=True),
    Scenario("J8d", "1.6x for its whole life, warmup 30s", 0.01, 0.01, 1.6, analysis=WARM,
             references=False, whole=True),
    Scenario("J7", "business counter 1% -> 4% (3x allowed), 5xx and latency fine", 0.01, 0.01,
             1.0, analysis=J7_ANALYSIS, references=False, bus_c=0.04, bus_b=0.01, seed=8),
    Scenario("J7 5xx", "errors 1% -> 4% (the same effect on 5xx, no metric)", 0.04, 0.01, 1.0,
             references=False, seed=8),
    Scenario("J3m", "A/A with a business counter (3 tests)", 0.01, 0.01, 1.0,
             analysis=J7_ANALYSIS, references=False, bus_c=0.01, bus_b=0.01, seed=10),
    Scenario("J3bm", "at the gates, 3 tests (5xx 2% vs 1%, latency x1.25, counter 2% vs 1%)",
             0.02, 0.01, 1.25, analysis=J7_ANALYSIS, references=False, bus_c=0.02, bus_b=0.01, seed=11),
]
"""J3b is the worst case for false alarms: the canary sits exactly on the null boundary of both
tests, so kiln's rate of rollbacks there must stay at or below alpha (0.01)."""


def _hist_add(hist: np.ndarray, lat: np.ndarray, ok: np.ndarray) -> None:
    runs = lat.shape[0]
    flat = (np.arange(runs)[:, None] * N_BINS + bin_index(lat))[ok]
    hist += np.bincount(flat, minlength=runs * N_BINS).reshape(runs, N_BINS)


def simulate(sc: Scenario, runs: int, seed: int) -> dict[str, np.ndarray]:
    """Per judge, the second of its first fail and of its first pass (NEVER if none)."""
    rng = np.random.default_rng(seed)
    a = sc.analysis
    budget = Budget.of(a)
    m, margin = a.max_latency_increase, a.max_error_rate_increase
    need = max(1, a.min_requests)
    out = {k: np.full(runs, NEVER) for k in (
        "kiln", "kiln_pass", "old_pass", "flagger", "kayenta", "flagger_pass", "kayenta_pass",
        "oracle")}
    # The oracle: Wald's SPRT of the true canary rate against the null boundary (baseline rate
    # + margin), both known exactly, at kiln's error budget: no valid test can be much faster.
    p0, p1 = sc.err_b + margin, sc.err_c
    oracle = p1 > p0
    hist_c, hist_b = np.zeros((runs, N_BINS)), np.zeros((runs, N_BINS))
    xc, xb = np.zeros(runs), np.zeros(runs)
    best_e, best_l, best_m = np.ones(runs), np.ones(runs), np.ones(runs)
    mc, mb = np.zeros(runs), np.zeros(runs)
    iv_c: list[tuple[np.ndarray, np.ndarray]] = []
    iv_b: list[tuple[np.ndarray, np.ndarray]] = []
    warm = int(a.warmup)
    for t in range(1, DURATION + 1):
        scale = sc.lat_scale_c if t <= sc.slow_for else 1.0
        lat_c = MEDIAN * scale * np.exp(SIGMA * rng.standard_normal((runs, sc.rate_c)))
        err_c = rng.random((runs, sc.rate_c)) < sc.err_c
        lat_b = MEDIAN * np.exp(SIGMA * rng.standard_normal((runs, sc.rate_b)))
        err_b = rng.random((runs, sc.rate_b)) < sc.err_b
        if t > warm:  # the canary's second t is served by an instance t seconds old
            _hist_add(hist_c, lat_c, ~err_c)
            xc += err_c.sum(axis=1)
        _hist_add(hist_b, lat_b, ~err_b)
        xb += err_b.sum(axis=1)
        nc, nb = sc.rate_c * max(0, t - warm), sc.rate_b * t
        if sc.bus_c is not None:  # drawn only here: the other scenarios' streams are unchanged
            mc += rng.binomial(sc.rate_c, sc.bus_c, runs)
            mb += rng.binomial(sc.rate_b, sc.bus_b, runs)
            best_m = np.minimum(best_m, count_fail_p(mc, sc.rate_c * t, mb, nb, a.metrics[0].max_increase))
        # kiln: one look per second on everything since the start, through the judge's code.
        best_e = np.minimum(best_e, error_fail_p(xc, nc, xb, nb, a))
        p_lat, _, lat_ub = latency_tests(hist_c, hist_b, a)
        best_l = np.minimum(best_l, np.where(np.isfinite(p_lat), p_lat, 1.0))
        if oracle:
            llr = xc * np.log(p1 / p0) + (nc - xc) * np.log((1 - p1) / (1 - p0))
            out["oracle"] = np.where((out["oracle"] == NEVER) & (llr >= -np.log(budget.error)),
                                     t, out["oracle"])
        failed = (best_e <= budget.error) | (best_l <= budget.latency) | (
            best_m <= budget.metric)
        # A pass advances a step but judging goes on: the first fail ends the rollout, the
        # first pass before it is when a step could first have advanced.
        out["kiln"] = np.where((out["kiln"] == NEVER) & failed, t, out["kiln"])
        enough = nc >= need and nb >= need
        if enough and t >= sc.pause:
            passing = (error_upper(xc, nc, xb, nb, a) < margin) & (lat_ub < 0.5) & ~failed
            if sc.bus_c is not None:
                m0 = a.metrics[0].max_increase
                passing &= count_upper(mc, sc.rate_c * t, mb, nb, m0, a.confidence) < m0
            out["kiln_pass"] = np.where((out["kiln_pass"] == NEVER) & passing, t,
                                        out["kiln_pass"])
            out["old_pass"] = np.where((out["old_pass"] == NEVER) & ~failed, t, out["old_pass"])
        if sc.references:
            iv_c.append((lat_c, err_c))
            iv_b.append((lat_b, err_b))
            if t % INTERVAL == 0:
                f_fail, k_fail = _references(*_interval(iv_c), *_interval(iv_b), m, margin)
                iv_c.clear()
                iv_b.clear()
                for k, fail in (("flagger", f_fail), ("kayenta", k_fail)):
                    alive = out[k] == NEVER
                    out[k] = np.where(alive & fail, t, out[k])
                    out[f"{k}_pass"] = np.where(alive & (out[f"{k}_pass"] == NEVER) & ~fail
                                                & (sc.rate_c > 0), t, out[f"{k}_pass"])
        if sc.rate_c and not sc.references and not sc.whole and (
                (out["kiln"] < NEVER) | (out["kiln_pass"] < NEVER)).all() and (
                (out["kiln"] < NEVER) | (out["old_pass"] < NEVER)).all():
            break  # J5/J6 ask only for the first decision
        if sc.rate_c and t % INTERVAL == 0 and all(
                (out[k] < NEVER).all() for k in ("kiln", "flagger", "kayenta")):
            break
    return out


def _interval(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([x for x, _ in parts], axis=1),
            np.concatenate([e for _, e in parts], axis=1))


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


def _share(t: np.ndarray) -> float:
    return float((t < NEVER).mean())


def _requests(t: np.ndarray, rate: int) -> tuple[float, float]:
    """Median and p90 of the canary requests served up to the decision (NEVER: the whole run)."""
    n = np.minimum(t, DURATION) * rate
    return float(np.median(n)), float(np.percentile(n, 90))


def comparison(res: dict[str, np.ndarray], sc: Scenario) -> list[str]:
    rows = []
    fails = {k: _requests(res[k], sc.rate_c) for k in ("flagger", "kayenta", "kiln")}
    better = min(fails["flagger"][0], fails["kayenta"][0])
    for k in ("flagger", "kayenta", "kiln"):
        med, p90 = fails[k]
        ratio = f"{med / better:.2f}x" if sc.name in ("J1", "J2") and better > 0 else ""
        passes = res["kiln_pass" if k == "kiln" else f"{k}_pass"]
        first = _requests(passes, sc.rate_c)[0] if _share(passes) > 0.5 else None
        rows.append(f"| {sc.name} {sc.what} | {k} | {100 * _share(res[k]):.1f}% | "
                    f"{100 * _share(passes):.1f}% | {med:.0f} | {p90:.0f} | {ratio} | "
                    f"{'' if first is None else f'{first:.0f}'} |")
    if (res["oracle"] < NEVER).any():
        med, p90 = _requests(res["oracle"], sc.rate_c)
        rows.append(f"| {sc.name} {sc.what} | oracle SPRT | {100 * _share(res['oracle']):.1f}% | "
                    f"| {med:.0f} | {p90:.0f} | {med / better:.2f}x | |")
    return rows


def kiln_only(res: dict[str, np.ndarray], sc: Scenario, anchor: float | None = None
              ) -> list[str]:
    rows = []
    old = res["old_pass"]
    if sc.name.startswith("J5"):
        rows.append(f"| {sc.name} {sc.what} | kiln before | {100 * _share(res['kiln']):.1f}% | "
                    f"{100 * _share(old):.1f}% | | | | |")
    med, p90 = _requests(res["kiln"], sc.rate_c)
    passes = res["kiln_pass"]
    pmed, _ = _requests(passes, sc.rate_c)
    ratio = f"{pmed / (INTERVAL * sc.rate_c):.2f}x" if sc.name == "J6" else ""
    if sc.name == "J7" and anchor is not None:
        ratio = f"{med / anchor:.2f}x of J7 5xx"
    rows.append(f"| {sc.name} {sc.what} | kiln | {100 * _share(res['kiln']):.1f}% | "
                f"{100 * _share(passes):.1f}% | {med:.0f} | {p90:.0f} | {ratio} | "
                f"{pmed:.0f} |")
    return rows


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20240501)
    ap.add_argument("--only", nargs="*", help="scenario names, e.g. J5 J6")
    ap.add_argument("--alpha", type=float, default=None,
                    help="alpha of the scenarios on the default analysis (J1-J4, J3b)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows = ["| scenario | judge | rollbacks | passes | fail exposure median | fail exposure p90 "
            "| median vs better ref | pass after (median requests) |",
            "|---|---|---|---|---|---|---|---|"]
    anchor: float | None = None
    # The J7 anchor runs first so the J7 row can show its ratio; seeds stay per scenario.
    order = sorted(enumerate(SCENARIOS), key=lambda e: e[1].name != "J7 5xx")
    results: dict[str, list[str]] = {}
    for i, sc in order:
        if args.only and sc.name not in args.only and not (
                sc.name == "J7 5xx" and "J7" in args.only):
            continue
        if args.alpha is not None and sc.analysis == Analysis():
            sc = dataclasses.replace(sc, analysis=Analysis(alpha=args.alpha))
        # J7 and its anchor share the seed: the same streams, the effect on another counter.
        res = simulate(sc, args.runs, args.seed + (i if sc.seed is None else sc.seed))
        if sc.name == "J7 5xx":
            anchor = _requests(res["kiln"], sc.rate_c)[0]
        results[sc.name] = (comparison(res, sc) if sc.references
                            else kiln_only(res, sc, anchor))
    rows += [r for sc in SCENARIOS if sc.name in results for r in results[sc.name]]
    table = "\n".join(rows)
    alpha = "" if args.alpha is None else f", alpha {args.alpha:g} on J1-J4/J3b"
    out(f"runs per scenario: {args.runs}, seed {args.seed}{alpha}; lognormal latency median "
        f"{MEDIAN * 1000:.0f} ms sigma {SIGMA}; one look per second")
    out(table)
    out(f"elapsed {time.perf_counter() - start:.1f} s")
    return table


if __name__ == "__main__":
    main()
