"""The judge wired to a running rollout: feed it the router's samples at every pass, record the
series the HTML report plots, and write the report when the rollout settles."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.analysis.judge import Judge
from kiln.platforms.base import MetricSource, Sample
from kiln.rollout.decide import Status, Verdict
from kiln.spec.models import Analysis

if TYPE_CHECKING:
    from kiln.project import Project


class Series:
    """Per-second buckets of both releases' requests, weights and decisions, for the report."""

    def __init__(self) -> None:
        self.buckets: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.errors: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.weights: list[tuple[float, dict[str, int]]] = []
        self.phases: list[tuple[float, str]] = []

    def add(self, samples: list[Sample]) -> None:
        for s in samples:
            sec = int(s.time)
            self.buckets[sec][s.release_id].append(s.duration)
            if s.error:
                self.errors[sec][s.release_id] += 1

    def note(self, now: float, status: Status) -> None:
        if not self.weights or self.weights[-1][1] != status.weights:
            self.weights.append((now, dict(status.weights)))
        if not self.phases or self.phases[-1][1] != status.phase:
            self.phases.append((now, status.phase))

    def to_json(self) -> dict[str, Any]:
        seconds = []
        for sec in sorted(self.buckets):
            per: dict[str, Any] = {}
            for rel, durs in self.buckets[sec].items():
                durs.sort()
                per[rel] = {"n": len(durs), "errors": self.errors[sec].get(rel, 0),
                            "p50": durs[len(durs) // 2],
                            "p95": durs[min(len(durs) - 1, math.ceil(0.95 * len(durs)) - 1)]}
            seconds.append({"t": sec, "releases": per})
        return {"seconds": seconds, "weights": self.weights, "phases": self.phases}


def prometheus_counts(text: str) -> dict[str, int]:
    """release_id -> requests, from Traefik's `traefik_service_requests_total` per leaf service."""
    counts: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        if not line.startswith("traefik_service_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        marker = 'service="kiln-'
        at = labels.find(marker)
        if at < 0:
            continue
        name = labels[at + len(marker):].split('"', 1)[0].removesuffix("@file")
        try:
            counts[name] += int(float(value))
        except ValueError:
            continue
    return dict(counts)


class LiveJudge:
    """Called by the reconciler every pass: reads new samples, returns the judge's verdict."""

    def __init__(self, metrics: MetricSource, service: str, analysis: Analysis,
                 counter: Callable[[], dict[str, int]] | None = None) -> None:
        self.metrics = metrics
        self.service = service
        self.analysis = analysis
        self.counter = counter
        self.counts_at_start = self._count()
        self.seen: dict[str, int] = defaultdict(int)
        self.series = Series()
        self._judge: Judge | None = None
        self._key: tuple[str, str] | None = None
        self._since = time.time()
        self.canary_requests = 0

    def __call__(self, status: Status, now: float) -> Verdict | None:
        samples = self.metrics.samples(self.service, self._since)
        if samples:
            self._since = max(s.time for s in samples)
        for sample in samples:
            self.seen[sample.release_id] += 1
        self.series.add(samples)
        self.series.note(now, status)
        if status.old is None or status.phase != "step":
            return None
        key = (status.new, status.old)
        if self._judge is None or self._key != key:
            self._judge = Judge(self.analysis, status.new, status.old)
            self._key = key
        self._judge.add(samples)
        self.canary_requests = self._judge.canary.n if hasattr(self._judge.canary, "n") else 0
        return self._judge.verdict(now)


    def _count(self) -> dict[str, int] | None:
        if self.counter is None:
            return None
        try:
            return self.counter()
        except Exception:  # metrics are a cross-check, never a reason to stop a rollout
            return None

    def crosscheck(self) -> dict[str, Any] | None:
        """Access-log samples vs the router's Prometheus counters over the rollout, per release.

        The judge reads the access log; if the two disagree, its inputs are incomplete.
        """
        end = self._count()
        if end is None or self.counts_at_start is None:
            return None
        out: dict[str, Any] = {"releases": {}, "agree": True}
        for release in sorted(set(end) | set(self.seen)):
            counted = end.get(release, 0) - self.counts_at_start.get(release, 0)
            logged = self.seen.get(release, 0)
            out["releases"][release] = {"prometheus": counted, "access_log": logged}
            # Requests in flight at either end may land on one side only.
            if abs(counted - logged) > max(5, 0.02 * max(counted, logged)):
                out["agree"] = False
        return out


def make_judge(metrics: MetricSource, service: str, analysis: Analysis,
               counter: Callable[[], dict[str, int]] | None = None) -> LiveJudge:
    return LiveJudge(metrics, service, analysis, counter)


def save_series(home: Path, rollout_id: int, judge: LiveJudge) -> Path:
    folder = home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{rollout_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(judge.series.to_json()))
    tmp.replace(path)
    return path


def report_for_rollout(project: Project, service: str, rollout_id: int) -> Path | None:
    """Write the HTML report of a rollout from its saved series and status."""
    from kiln.analysis.report import report_for_rollout as build

    path: Path | None = build(project.store, project.home, service, rollout_id)
    return path
