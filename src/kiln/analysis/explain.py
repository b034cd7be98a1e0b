"""A verdict in words, per metric: what was measured, the bound, the margin and why it passed or
failed — "errors: canary 6.1 % vs baseline 1.0 %, allowed +2 points: failed — the canary's
error rate is higher by at least 3.2 points at 95 % confidence".

Pure: it reads only a verdict's figures (the live one, or one recorded in a decision), which
carry each test's own outcome, bounds and margin (kiln.analysis.judge). p-values are left out on
purpose: they are in `--json` and the report's details, the words are for people.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WORDS = {"pass": "passed", "fail": "failed", "undecided": "not decided yet"}


@dataclass(frozen=True)
class Explained:
    """One metric's part of a verdict."""

    metric: str
    outcome: str  # pass | fail | undecided
    measured: str
    allowed: str
    why: str
    dry_run: bool = False

    def line(self) -> str:
        word = WORDS.get(self.outcome, self.outcome)
        if self.dry_run and self.outcome == "fail":
            word = "would have failed (dry run)"
        elif self.dry_run:
            word += " (dry run)"
        return f"{self.metric}: {self.measured}, {self.allowed}: {word} — {self.why}"

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "outcome": self.outcome, "measured": self.measured,
                "allowed": self.allowed, "why": self.why, "dry_run": self.dry_run,
                "line": self.line()}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _pct(v: Any) -> str:
    x = _num(v)
    return "–" if x is None else f"{100 * x:.1f} %"


def _points(v: Any, sign: bool = False) -> str:
    x = _num(v)
    if x is None:
        return "unknown"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _ms(v: Any) -> str:
    x = _num(v)
    return "–" if x is None else f"{1000 * x:.0f} ms"


def _prob(v: Any) -> str:
    x = _num(v)
    return "unknown" if x is None else f"{min(max(x, 0.0), 1.0):.2f}"


def _rate_why(outcome: str, lower: Any, upper: Any, margin: float, conf: str,
              what: str, short: str) -> str:
    """Why a rate increase (5xx, a count metric) passed, failed or is open."""
    allowed = f"the allowed +{_points(margin)} points"
    if outcome == "fail":
        lo = _num(lower)
        if lo is not None and lo >= margin:
            return (f"the canary's {what} is higher by at least {_points(lo)} points at {conf} "
                    f"confidence, beyond {allowed}")
        # The sequential test crossed its boundary before the interval cleared the margin.
        return (f"the always-valid test showed the increase is beyond {allowed}"
                + (f" (at {conf} confidence it is at least {_points(lo, True)} points)"
                   if lo is not None and lo > 0 else ""))
    if outcome == "pass":
        return (f"the increase is at most {_points(upper, True)} points at {conf} confidence, "
                f"inside {allowed}")
    if _num(upper) is None:
        return short
    return (f"the increase could still be up to {_points(upper, True)} points at {conf} "
            f"confidence, more than {allowed}: it needs more evidence")


def _theta_why(outcome: str, lower: Any, upper: Any, conf: str, what: str) -> str:
    """Why a distribution test (latency, a value metric) passed, failed or is open."""
    if outcome == "fail":
        return (f"{what} with probability at least {_prob(lower)} at {conf} confidence "
                "(0.50 would be no worse than allowed)")
    if outcome == "pass":
        return (f"{what} with probability at most {_prob(upper)} at {conf} confidence, "
                "under 0.50")
    return (f"{what} with probability up to {_prob(upper)} at {conf} confidence; it must be "
            "shown under 0.50: it needs more evidence")


def explain(figures: Mapping[str, Any]) -> list[Explained]:
    """Every metric of a verdict's figures, in words (none for figures recorded before the
    judge wrote each test's outcome)."""
    f = figures
    conf_v = _num(f.get("confidence")) or 0.95
    conf = f"{100 * conf_v:g} %"
    nc, nb = f.get("canary_requests"), f.get("baseline_requests")
    few = f"only {nc} canary and {nb} baseline requests so far"
    out: list[Explained] = []
    if "error_outcome" in f:
        margin = _num(f.get("max_error_rate_increase")) or 0.0
        o = str(f["error_outcome"])
        out.append(Explained(
            "errors", o,
            f"canary {_pct(f.get('canary_error_rate'))} vs baseline "
            f"{_pct(f.get('baseline_error_rate'))}",
            f"allowed +{_points(margin)} points",
            _rate_why(o, f.get("error_increase_lower"), f.get("error_increase_upper"), margin,
                      conf, "error rate", few)))
    if "ceiling_outcome" in f:
        ceiling = _num(f.get("max_error_rate")) or 0.0
        o = str(f["ceiling_outcome"])
        if o == "fail":
            why = (f"the canary's error rate is at least {_pct(f.get('error_rate_lower'))} at "
                   f"{conf} confidence, above the ceiling")
        elif o == "pass":
            why = f"it is at most {_pct(f.get('error_rate_upper'))} at {conf} confidence"
        else:
            why = (f"it could still be up to {_pct(f.get('error_rate_upper'))} at {conf} "
                   "confidence: it needs more evidence")
        out.append(Explained("error ceiling", o, f"canary {_pct(f.get('canary_error_rate'))}",
                             f"at most {_pct(ceiling)}", why))
    if "latency_outcome" in f:
        m = _num(f.get("max_latency_increase")) or 0.0
        o = str(f["latency_outcome"])
        out.append(Explained(
            "latency", o,
            f"canary p50 {_ms(f.get('canary_p50'))} / p95 {_ms(f.get('canary_p95'))} vs "
            f"baseline p50 {_ms(f.get('baseline_p50'))} / p95 {_ms(f.get('baseline_p95'))}",
            f"allowed +{100 * m:.0f} % (or +5 ms)",
            _theta_why(o, f.get("latency_theta_lower"), f.get("latency_theta_upper"), conf,
                       "a canary request is slower than allowed")))
    for name in sorted({k.split(":")[1] for k in f if k.startswith("metric:")
                        and k.endswith(":outcome")}):
        out.append(_metric(name, {k.split(":", 2)[2]: v for k, v in f.items()
                                  if k.startswith(f"metric:{name}:")}, conf))
    return out


def _metric(name: str, g: Mapping[str, Any], conf: str) -> Explained:
    o = str(g.get("outcome"))
    dry = bool(g.get("dry_run"))
    m = _num(g.get("max_increase")) or 0.0
    lower = g.get("direction") == "lower"
    if g.get("kind") == "count":
        which = "shortfall" if lower else "rate"
        no_data = _num(g.get("canary_rate")) is None
        return Explained(
            name, o,
            "no data yet" if no_data else
            f"{which} canary {_pct(g.get('canary_rate'))} vs baseline "
            f"{_pct(g.get('baseline_rate'))}",
            f"allowed +{_points(m)} points",
            _rate_why(o, g.get("increase_lower"), g.get("increase_upper"), m, conf, which,
                      "no data yet"), dry)
    side = "below" if lower else "above"
    theta = _num(g.get("theta"))
    return Explained(
        name, o,
        "no values yet" if theta is None else
        f"P(a canary value is {side} the baseline's by more than {100 * m:.0f} %) {theta:.2f}",
        f"allowed {'-' if lower else '+'}{100 * m:.0f} %",
        "no values yet" if theta is None else
        _theta_why(o, g.get("theta_lower"), g.get("theta_upper"), conf,
                   f"a canary value is {side} an allowed baseline value"), dry)


def lines(figures: Mapping[str, Any]) -> list[str]:
    return [e.line() for e in explain(figures)]
