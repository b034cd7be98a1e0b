"""The judge wired to a running rollout: feed it the router's samples at every pass, record the
series the HTML report plots, and write the report when the rollout settles."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kiln.analysis.judge import Judge
from kiln.platforms.base import MetricSource, RequestCounts, Sample
from kiln.rollout.decide import Status, Verdict
from kiln.spec.models import Analysis


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


@runtime_checkable
class LogSource(Protocol):
    """A metric source read like a log: a JSON-able cursor, every record exactly once."""

    def position(self) -> Any: ...

    def read(self, service_name: str, cursor: Any) -> tuple[list[Sample], Any]: ...


LATENESS = 120.0
"""Sources without a cursor are re-asked this many seconds behind their newest sample (the
watermark) and de-duplicated, so a sample that shows up late is still counted."""
CATCH_UP = 5.0
"""At the end, how long to wait for the access log to catch up with the router's counters."""
COUNTER_EVERY = 2.0


class CounterTrack:
    """Increase of the router's per-release request counters over a rollout.

    Per router process (`RequestCounts.epoch`): the last reading minus the first (the rollout's
    start, or 0 for a process started since). A restarted router (a new epoch, counters back at
    0) adds what the new process counts to what the old one had counted; a release missing from
    a reading (its counter went with its servers) keeps its last count; a dip within one process
    (HAProxy redispatching a failed request) is not mistaken for a restart.
    """

    def __init__(self, start: RequestCounts | None) -> None:
        self.epoch: str | None = (start.epoch or None) if start is not None else None
        self.base: dict[str, int] = dict(start.releases) if start is not None else {}
        self.last: dict[str, int] = dict(self.base)
        self.before: dict[str, int] = defaultdict(int)
        """What earlier router processes counted since the start."""
        self.resets = 0

    def observe(self, counts: RequestCounts) -> None:
        if self.epoch is not None and counts.epoch != self.epoch:
            for release, n in self.last.items():
                self.before[release] += n - self.base.get(release, 0)
            self.base, self.last = {}, {}
            self.resets += 1
        self.epoch = counts.epoch
        self.last.update(counts.releases)

    @property
    def total(self) -> dict[str, int]:
        releases = set(self.before) | set(self.last)
        return {r: max(0, self.before.get(r, 0) + self.last.get(r, 0) - self.base.get(r, 0))
                for r in releases}


class LiveJudge:
    """Called by the reconciler every pass: reads new samples, returns the judge's verdict.

    It judges every request since the rollout began: `start_info()` (taken when the rollout is
    created, persisted in its status as `judge`) holds the log cursor and the router's counters
    at that moment; a judge started later (kiln was killed and run again) replays the log from
    there. Samples are taken in the order the log was written (a cursor), never by timestamp.
    """

    def __init__(self, metrics: MetricSource, service: str, analysis: Analysis,
                 counter: Callable[[], RequestCounts | None] | None = None) -> None:
        self.metrics = metrics
        self.service = service
        self.analysis = analysis
        self.counter = counter
        self.seen: dict[str, int] = defaultdict(int)
        self.series = Series()
        self._judge: Judge | None = None
        self._key: tuple[str, str] | None = None
        self._started = False
        self._cursor: Any = None
        self._since = 0.0
        self._watermark = 0.0
        self._recent: dict[Sample, int] = {}
        self._counts: CounterTrack | None = None
        self._counted_at = 0.0
        self.canary_requests = 0

    def start_info(self) -> dict[str, Any]:
        """Where the rollout's evidence begins: log cursor first, then the counters (a request
        finishing in between is then logged but not counted: never a false 'loss')."""
        info: dict[str, Any] = {"time": time.time()}
        if isinstance(self.metrics, LogSource):
            info["cursor"] = self.metrics.position()
        counts = self._count()
        if counts is not None:
            info["counts"] = dict(counts.releases)
            info["counts_epoch"] = counts.epoch
        return info

    def _begin(self, status: Status) -> None:
        info = status.judge or {}
        self._started = True
        self._since = float(info.get("time", status.started))
        self._watermark = self._since
        self._cursor = info.get("cursor")
        if self.counter is not None:
            now = self._count()
            self._counts = CounterTrack(_start_counts(info, now))
            if now is not None:
                self._counts.observe(now)
            self._counted_at = time.monotonic()

    def _read(self) -> list[Sample]:
        if isinstance(self.metrics, LogSource):
            had_cursor = self._cursor is not None
            samples, self._cursor = self.metrics.read(self.service, self._cursor)
            # Without a cursor from the rollout's start we read from the top: keep only this
            # rollout's requests.
            return samples if had_cursor else [s for s in samples if s.time >= self._since]
        got = self.metrics.samples(self.service, self._watermark - LATENESS)
        new: list[Sample] = []
        batch: dict[Sample, int] = defaultdict(int)
        for s in got:
            if s.time < self._since:
                continue
            batch[s] += 1
            if batch[s] > self._recent.get(s, 0):
                new.append(s)
        for s, n in batch.items():
            self._recent[s] = max(n, self._recent.get(s, 0))
        if got:
            self._watermark = max(self._watermark, max(s.time for s in got))
        horizon = self._watermark - LATENESS
        self._recent = {s: n for s, n in self._recent.items() if s.time > horizon}
        return new

    def __call__(self, status: Status, now: float) -> Verdict | None:
        if not self._started:
            self._begin(status)
        samples = self._read()
        for sample in samples:
            self.seen[sample.release_id] += 1
        self.series.add(samples)
        self.series.note(now, status)
        if self._counts is not None and time.monotonic() - self._counted_at >= COUNTER_EVERY:
            counts = self._count()
            if counts is not None:
                self._counts.observe(counts)
            self._counted_at = time.monotonic()
        if status.old is None:
            return None
        key = (status.new, status.old)
        if self._judge is None or self._key != key:
            self._judge = Judge(self.analysis, status.new, status.old)
            self._key = key
        self._judge.add(samples)
        self.canary_requests = self._judge.canary.n
        if status.phase != "step":
            return None
        return self._judge.verdict(now)

    def _count(self) -> RequestCounts | None:
        if self.counter is None:
            return None
        try:
            return self.counter()
        except Exception:  # metrics are a cross-check, never a reason to stop a rollout
            return None

    def crosscheck(self, catch_up: float = CATCH_UP) -> dict[str, Any] | None:
        """Access-log samples vs the router's own counters over the rollout, per release.

        The counters are read first, then the log is read until it has caught up with them
        (bounded by `catch_up` seconds): a request that ends in between is logged but not yet
        counted, so only a line missing from the log shows as `lost`. Only loss disagrees.
        """
        if self._counts is None:
            return None
        end = self._count()
        if end is None:
            return None
        self._counts.observe(end)
        counted = self._counts.total
        deadline = time.monotonic() + catch_up

        def lost() -> dict[str, int]:
            return {r: n - self.seen.get(r, 0) for r, n in counted.items()
                    if n > self.seen.get(r, 0)}

        while True:
            if self._started:
                for sample in (new := self._read()):
                    self.seen[sample.release_id] += 1
                self.series.add(new)
            if not lost() or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        missing = lost()
        out: dict[str, Any] = {"releases": {}, "agree": not missing, "counter": end.source,
                               "resets": self._counts.resets}
        for release in sorted(set(counted) | set(self.seen)):
            if not counted.get(release) and not self.seen.get(release):
                continue  # e.g. a release removed before this rollout, still in the counters
            out["releases"][release] = {"router": counted.get(release, 0),
                                        "access_log": self.seen.get(release, 0),
                                        "lost": missing.get(release, 0)}
        return out


def _start_counts(info: dict[str, Any], now: RequestCounts | None) -> RequestCounts | None:
    """The counters persisted at the rollout's start; a status written before epochs were
    recorded is taken as the router process seen now."""
    start = info.get("counts")
    if not isinstance(start, dict):
        return now
    epoch = info.get("counts_epoch")
    if not isinstance(epoch, str):
        epoch = now.epoch if now is not None else ""
    return RequestCounts(epoch, {str(k): int(v) for k, v in start.items()},
                         now.source if now is not None else "")


def make_judge(metrics: MetricSource, service: str, analysis: Analysis,
               counter: Callable[[], RequestCounts | None] | None = None) -> LiveJudge:
    return LiveJudge(metrics, service, analysis, counter)


def save_series(home: Path, rollout_id: int, judge: LiveJudge) -> Path:
    folder = home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{rollout_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(judge.series.to_json()))
    tmp.replace(path)
    return path
