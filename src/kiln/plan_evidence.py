"""`kiln plan`'s time to evidence: from the service's recent request rate (two readings of the
router's counters), how long each canary step needs to gather what a pass costs, and one line
of warning when a step cannot get it within its pause plus the progress deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from kiln.platforms.base import RequestCounts
from kiln.spec.models import ServiceSpec

RATE_WINDOW = 1.0
"""Seconds between the two counter readings (plan waits this long once per judged service)."""
LEVERS = ("a larger max_error_rate_increase, a lower confidence, a higher first weight, "
          "longer pauses or progress_deadline, a shorter warmup, synthetic load (rollout.load)")


def recent_rate(counts: Callable[[], RequestCounts | None], releases: Collection[str],
                window: float = RATE_WINDOW, sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> float | None:
    """Requests per second the router ended on `releases` over `window` seconds; None when it
    keeps no counters (not running) or restarted in between."""
    try:
        first, t0 = counts(), clock()
        if first is None:
            return None
        sleep(window)
        second, t1 = counts(), clock()
    except Exception:  # an estimate, never a reason for plan to fail
        return None
    if second is None or second.epoch != first.epoch or t1 <= t0:
        return None
    n = sum(max(0, second.releases.get(r, 0) - first.releases.get(r, 0)) for r in releases)
    return n / (t1 - t0)


def _share(weight: int, mirror: int | None) -> str:
    """'10%', or 'mirror 100%' for a mirror step (weight 0: it serves no one)."""
    return f"mirror {mirror}%" if mirror else f"{weight}%"


def _clock(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def estimate(service: str, spec: ServiceSpec, rate: float) -> dict[str, Any] | None:
    """Per canary step: canary requests a pass needs there, and the seconds the step takes to
    reach it (the evidence of earlier steps counts: the judge sums the whole rollout; a
    synthetic load adds its rate to the service's during the steps). None when the rollout is
    not a judged canary."""
    analysis, ro = spec.rollout.analysis, spec.rollout
    if analysis is None or ro.strategy != "canary":
        return None
    # numpy and scipy (~0.15 s to import) only for a judged canary: `kiln deploy` imports
    # kiln.plan for every service, and the time counts in its rollout overhead.
    from kiln.analysis.evidence import LIMIT, requests_needed

    synthetic = ro.load.rate if ro.load is not None else 0.0
    judged = rate + synthetic
    steps: list[dict[str, Any]] = []
    warning: str | None = None
    gathered = 0.0
    for i, step in enumerate(ro.steps):
        # A mirror step copies `mirror`% of the requests to the canary while the baseline still
        # answers all of them: the canary sees that share, against the whole.
        share = step.mirror or step.weight
        if share <= 0 or (share >= 100 and not step.mirror):
            continue
        need = requests_needed(analysis, 100 / share if step.mirror else
                               (100 - share) / share)
        canary_rate = judged * share / 100
        left = max(0.0, need - gathered)
        warm = analysis.warmup if i == 0 else 0.0
        seconds = None if left > 0 and (canary_rate <= 0 or need >= LIMIT) else \
            warm + (left / canary_rate if left > 0 else 0.0)
        budget = None if step.pause is None else step.pause + ro.progress_deadline
        steps.append({"weight": step.weight, "mirror": step.mirror or 0, "needed": need,
                      "seconds": None if seconds is None else round(seconds, 1)})
        if warning is None and budget is not None and (seconds is None or seconds > budget):
            took = "never (no traffic)" if seconds is None else f"~{_clock(seconds)}"
            extra = f" (+{synthetic:g} synthetic)" if synthetic else ""
            warning = (f"{service}: the {_share(step.weight, step.mirror)} step needs ~{need} "
                       f"canary requests, "
                       f"{took} at {rate:.1f} req/s{extra}, more than its pause plus progress_deadline "
                       f"({_clock(budget)}): it would be rolled back or promoted without "
                       f"evidence; levers: {LEVERS}")
        gathered += canary_rate * max(seconds or 0.0, step.pause or 0.0)
    return {"rate": round(rate, 2), "synthetic_rate": synthetic, "steps": steps,
            "warning": warning}


def estimate_words(ev: dict[str, Any]) -> str:
    """'time to evidence at 2.0 req/s: 10% step ~481 canary requests, ~40m; 50% step ...'."""
    extra = f" (+{ev['synthetic_rate']:g} synthetic)" if ev.get("synthetic_rate") else ""
    steps = "; ".join(
        f"{_share(st['weight'], st.get('mirror'))} step ~{st['needed']} canary requests, "
        + ("never (no traffic)" if st["seconds"] is None else f"~{_clock(st['seconds'])}")
        for st in ev.get("steps", []))
    return f"time to evidence at {ev['rate']:.1f} req/s{extra}: {steps}"
