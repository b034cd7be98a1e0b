"""The judge wired to a running rollout: feed it the metric source's windows at every pass,
record the series the HTML report plots, and write the report when the rollout settles.

One judge for every source (docs/decisions/one-judge.md): a source that replays its records
with a cursor (`MetricReplay`: the router's access log) is read from the cursor taken at the
rollout's start and each read adds; one asked by time only (CloudWatch) is asked again for the
whole rollout and its newest answer for each window replaces the one before. Either way the
judge adds the same sums to the same `Summary` and `judge_summaries` decides.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kiln.analysis import evidence
from kiln.analysis.judge import Judge
from kiln.analysis.prometheus import MetricQuery, ask
from kiln.analysis.recording import Recording
from kiln.analysis.summary import bin_center
from kiln.analysis.warmup import Warmup
from kiln.platforms.base import MetricSource, RequestCounts, Window
from kiln.platforms.capabilities import MetricReplay
from kiln.rollout.decide import Status, Verdict
from kiln.spec.models import Analysis


def _rank(hist: Counter[int], k: int) -> float | None:
    """The latency (bin centre, 1% resolution) of the k-th (0-based) smallest request."""
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > k:
            return float(bin_center(b))
    return None


class Series:
    """Per-second buckets of both releases' requests, weights and decisions, for the report."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[str, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0]))
        self.latency: dict[int, dict[str, Counter[int]]] = defaultdict(
            lambda: defaultdict(Counter))
        self.weights: list[tuple[float, dict[str, int]]] = []
        self.phases: list[tuple[float, str]] = []

    def add(self, windows: Iterable[Window]) -> None:
        """Add windows (or the change of a window answered again) at their start second."""
        for w in windows:
            sec = int(w.start)
            c = self.counts[sec][w.release_id]
            c[0] += w.requests
            c[1] += w.errors
            self.latency[sec][w.release_id].update(w.latency)

    def note(self, now: float, status: Status) -> None:
        if not self.weights or self.weights[-1][1] != status.weights:
            self.weights.append((now, dict(status.weights)))
        if not self.phases or self.phases[-1][1] != status.phase:
            self.phases.append((now, status.phase))

    def to_json(self) -> dict[str, Any]:
        seconds = []
        for sec in sorted(self.counts):
            per: dict[str, Any] = {}
            for rel, (n, errors) in self.counts[sec].items():
                if n <= 0:
                    continue
                hist = +self.latency[sec][rel]  # drops bins a revision emptied
                ok = sum(hist.values())
                per[rel] = {"n": n, "errors": errors,
                            "p50": _rank(hist, ok // 2) if ok else None,
                            "p95": _rank(hist, max(0, math.ceil(0.95 * ok) - 1)) if ok else None}
            if per:
                seconds.append({"t": sec, "releases": per})
        return {"seconds": seconds, "weights": self.weights, "phases": self.phases}


class Answers:
    """A source asked by time answers a window again while it fills: keep the newest answer
    of each (release, start) and pass on only what changed, so adding the changes gives the
    newest totals."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str, float], Window] = {}

    def update(self, windows: Iterable[Window]) -> list[Window]:
        out: list[Window] = []
        for w in windows:
            key = (w.release_id, w.instance, w.start)
            earlier = self.latest.get(key)
            if earlier != w:
                out.append(change(w, earlier))
                self.latest[key] = w
        return out


def change(new: Window, old: Window | None) -> Window:
    """What a window answered again adds to its earlier answer (counts may go down if the
    source revised them; the sums stay exact, they are whole numbers)."""
    if old is None:
        return new
    hist = Counter(new.latency)
    hist.subtract(old.latency)
    return Window(new.release_id, new.start, new.length, new.requests - old.requests,
                  new.errors - old.errors, {b: n for b, n in hist.items() if n}, new.instance)


EVIDENCE_RATE_S = 10.0
"""The canary's request rate for the evidence's time left is measured over this long."""
QUERY_EVERY = 1.0
"""Seconds between two rounds of `analysis.metrics` queries (a look in between reuses them)."""
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
    """Called by the reconciler every pass: reads the source's new aggregates, returns the
    judge's verdict.

    It judges every request since the rollout began: `start_info()` (taken when the rollout is
    created, persisted in its status as `judge`) holds the time, the source's cursor if it has
    one and the router's counters at that moment; a judge started later (kiln was killed and
    run again) replays the source from there. A replayable source is read in the order it was
    written (a cursor), never by timestamp; one asked by time is asked for the whole rollout
    at each look in a step (its answers replace the earlier ones), so the evidence is rebuilt,
    not lost, after a crash.
    """

    def __init__(self, metrics: MetricSource, service: str, analysis: Analysis,
                 counter: Callable[[], RequestCounts | None] | None = None,
                 warmup: Warmup | None = None,
                 queries: MetricQuery | None = None) -> None:
        self.metrics = metrics
        self.warmup = warmup
        """Leaves out of the judge (not of the series) what young instances served."""
        self.queries = queries
        """Where `analysis.metrics` are read (Prometheus); None: they stay without data."""
        self._asked_at: float | None = None
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
        self._answers = Answers()
        """A source asked by time: its newest answer for each window."""
        self._counts: CounterTrack | None = None
        self._counted_at = 0.0
        self.canary_requests = 0
        self.recording: Recording | None = None
        """What the judge was given, kept with the rollout for `kiln judge replay`."""

    def start_info(self) -> dict[str, Any]:
        """Where the rollout's evidence begins: log cursor first, then the counters (a request
        finishing in between is then logged but not counted: never a false 'loss')."""
        info: dict[str, Any] = {"time": time.time(), "source": self.metrics.name}
        if isinstance(self.metrics, MetricReplay):
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
        self._cursor = info.get("cursor")
        if self.counter is not None:
            now = self._count()
            self._counts = CounterTrack(_start_counts(info, now))
            if now is not None:
                self._counts.observe(now)
            self._counted_at = time.monotonic()

    def _read(self, status: Status, now: float) -> list[Window]:
        """What the source added since the last read, as windows to add."""
        if isinstance(self.metrics, MetricReplay):
            # Without a cursor from the rollout's start the source is read from the top: only
            # this rollout's requests count.
            since = None if self._cursor is not None else self._since
            windows, self._cursor = self.metrics.read(self.service, self._cursor, since)
            return windows
        releases = [r for r in (status.new, status.old) if r]
        if status.phase != "step" or status.old is None:
            return []  # asked by time: the look in a step asks for the whole rollout anyway
        return self._answers.update(self.metrics.windows(releases, self._since, now))

    def _add(self, windows: list[Window]) -> None:
        for w in windows:
            self.seen[w.release_id] += w.requests
        self.series.add(windows)

    def __call__(self, status: Status, now: float) -> Verdict | None:
        if not self._started:
            self._begin(status)
        windows = self._read(status, now)
        self._add(windows)
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
            self.recording = Recording(status.new, status.old, self.metrics.name)
            self._key = key
            if not isinstance(self.metrics, MetricReplay):
                windows = list(self._answers.latest.values())  # all the new pair's answers so far
        if self.warmup is not None:
            windows, _ = self.warmup.split(windows, (status.new, status.old))
        self._judge.add_windows(windows)
        assert self.recording is not None
        self.recording.add_windows(windows)
        self.canary_requests = self._judge.canary.n
        if status.phase != "step":
            return None
        self._ask_metrics(self._judge, now)
        verdict = self._judge.verdict(now)
        verdict.figures["source"] = self.metrics.name
        if self.warmup is not None:
            verdict.figures["warmup_s"] = self.warmup.seconds
            verdict.figures["warmup_requests"] = self.warmup.requests.get(status.new, 0)
        self._evidence(verdict.figures, status, now)
        return verdict

    def _evidence(self, figures: dict[str, Any], status: Status, now: float) -> None:
        """Canary requests a pass needs, judged so far and the seconds left, into the verdict's
        figures (status shows them).

        The canary's rate is the service's rate over the last EVIDENCE_RATE_S seconds times
        the canary's share of the weights: the service's traffic does not change when a step
        begins, the canary's own count does only once the router has applied the weights (a
        rate from the step's first seconds read low and the time left long, by 30 % at 100
        req/s in bench/evidence_e2e.py). By the requests' own seconds, not when they were
        read (the log lags); the two newest seconds, still filling, and the rollout's first,
        partial one are left out."""
        assert self._judge is not None
        counts = self.series.counts
        w_new = status.weights.get(status.new, 0)
        w_old = status.weights.get(status.old or "", 0)
        rate = 0.0
        if counts and w_new > 0:
            last = max(counts) - 1  # the newest second may still miss lines of the one before
            first = max(min(counts) + 1, last - int(EVIDENCE_RATE_S))
            if last > first:
                total = sum(n for sec in range(first, last)
                            for n, _ in counts.get(sec, {}).values())
                rate = total / (last - first) * w_new / (w_new + w_old)
        ratio = w_old / w_new if w_new > 0 else 9.0
        left = self.warmup.left(status.new, now) if self.warmup is not None else 0.0
        ev = evidence.live(self.analysis, self._judge.canary.n, ratio,
                           self._judge.baseline.error_rate, rate, left, self._judge.baseline.n)
        figures.update({f"evidence_{k}": v for k, v in ev.to_json().items()})
        figures["evidence_at"] = now  # status counts eta_s down from here (Status.evidence_at)

    def _ask_metrics(self, judge: Judge, now: float) -> None:
        """Counts for the whole rollout so far; values for the time since the last look."""
        if self.queries is None or not self.analysis.metrics:
            return
        if self._asked_at is not None and now - self._asked_at < QUERY_EVERY:
            return  # the reconciler looks ~10x a second; Prometheus changes once a scrape
        last, self._asked_at = self._asked_at, now
        for metric in self.analysis.metrics:
            for release in (judge.canary_release, judge.baseline_release):
                if metric.kind == "count":
                    got = ask(self.queries, metric, release, now - self._since, now)
                    if isinstance(got, tuple):
                        judge.set_metric_counts(metric.name, release, *got)
                        if self.recording is not None:
                            self.recording.add_counts(now, metric.name, release, *got)
                elif last is not None:
                    got = ask(self.queries, metric, release, now - last, now)
                    if isinstance(got, float):
                        judge.add_metric_values(metric.name, release, [got])
                        if self.recording is not None:
                            self.recording.add_value(now, metric.name, release, got)

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
            if self._started and isinstance(self.metrics, MetricReplay):
                windows, self._cursor = self.metrics.read(self.service, self._cursor)
                self._add(windows)
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
               counter: Callable[[], RequestCounts | None] | None = None,
               warmup: Warmup | None = None,
               queries: MetricQuery | None = None) -> LiveJudge:
    return LiveJudge(metrics, service, analysis, counter, warmup, queries)


def save_series(home: Path, rollout_id: int, judge: LiveJudge) -> Path:
    folder = home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{rollout_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(judge.series.to_json()))
    tmp.replace(path)
    return path
