"""What a rollout's judge was given, kept with the rollout so `kiln judge replay` can judge it
again under other settings (docs/judge.md, "Replay").

The judge never reads requests, only sums: the windows of its metric source (per release and
second for the access log, per period for CloudWatch) after the warm-up left young instances
out, and the answers of `analysis.metrics` queries. A `Recording` keeps exactly those, added up
per (side, window): windows are additive (a source that answers a window again hands on only
the change, kiln.analysis.live.Answers), so the sums are the ones the judge held. Each window is
stamped with its end, when its requests had all happened; count metrics are running sums for
the whole rollout at the time they were asked, value metrics one value per look.

Stored as zlib-compressed JSON in the state (kiln.state.records.evidence): a 10-minute rollout
at 20 canary and 180 baseline requests a second is ~700 KB of JSON, ~160 KB compressed.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import StateError
from kiln.platforms.base import Window

VERSION = 1
SIDES = ("canary", "baseline")


@dataclass
class Recording:
    canary: str
    baseline: str
    source: str = ""
    windows: dict[tuple[int, float], list[Any]] = field(default_factory=dict)
    """(side, start) -> [end, requests, errors, {bin: count}]"""
    counts: list[tuple[float, str, int, float, float]] = field(default_factory=list)
    """(time, metric, side, failures, total): a count metric's sums for the rollout so far."""
    values: list[tuple[float, str, int, float]] = field(default_factory=list)
    """(time, metric, side, value): a value metric's answer at one look."""

    def side(self, release: str) -> int | None:
        return 0 if release == self.canary else 1 if release == self.baseline else None

    def add_windows(self, windows: Iterable[Window]) -> None:
        for w in windows:
            side = self.side(w.release_id)
            if side is None:
                continue
            got = self.windows.get((side, w.start))
            if got is None:
                self.windows[(side, w.start)] = [w.start + w.length, w.requests, w.errors,
                                                 {int(b): int(n) for b, n in w.latency.items()}]
                continue
            got[0] = max(got[0], w.start + w.length)
            got[1] += w.requests
            got[2] += w.errors
            hist: dict[int, int] = got[3]
            for b, n in w.latency.items():
                hist[int(b)] = hist.get(int(b), 0) + int(n)

    def add_counts(self, now: float, name: str, release: str, failures: float,
                   total: float) -> None:
        side = self.side(release)
        if side is not None:
            self.counts.append((now, name, side, float(failures), float(total)))

    def add_value(self, now: float, name: str, release: str, value: float) -> None:
        side = self.side(release)
        if side is not None:
            self.values.append((now, name, side, float(value)))

    @property
    def empty(self) -> bool:
        return not self.windows and not self.counts and not self.values

    def window_list(self) -> list[Window]:
        """The windows, oldest end first, as the judge adds them."""
        rel = (self.canary, self.baseline)
        out = [Window(rel[side], start, end - start, n, e, {b: c for b, c in hist.items() if c})
               for (side, start), (end, n, e, hist) in self.windows.items()]
        return sorted(out, key=lambda w: (w.start + w.length, w.release_id))

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "canary": self.canary, "baseline": self.baseline,
                "source": self.source,
                "windows": [[side, start, *rest[:3], {str(b): c for b, c in rest[3].items()}]
                            for (side, start), rest in sorted(self.windows.items())],
                "counts": [list(c) for c in self.counts],
                "values": [list(v) for v in self.values]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recording:
        if data.get("version") != VERSION:
            raise StateError(f"stored judge evidence has version {data.get('version')!r}, "
                             f"this kiln reads version {VERSION}")
        rec = cls(str(data["canary"]), str(data["baseline"]), str(data.get("source") or ""))
        for side, start, end, n, e, hist in data.get("windows", []):
            rec.windows[(int(side), float(start))] = [float(end), int(n), int(e),
                                                      {int(b): int(c) for b, c in hist.items()}]
        rec.counts = [(float(t), str(m), int(s), float(f), float(n))
                      for t, m, s, f, n in data.get("counts", [])]
        rec.values = [(float(t), str(m), int(s), float(v)) for t, m, s, v in
                      data.get("values", [])]
        return rec

    def to_blob(self) -> bytes:
        return zlib.compress(json.dumps(self.to_json(), separators=(",", ":")).encode(), 6)

    @classmethod
    def from_blob(cls, blob: bytes) -> Recording:
        try:
            data = json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as exc:
            raise StateError(f"stored judge evidence is damaged: {exc}") from None
        if not isinstance(data, dict):
            raise StateError("stored judge evidence is damaged: not a JSON object")
        return cls.from_json(data)


def by_time(rec: Recording) -> dict[float, tuple[list[Window], list[tuple[str, int, float, float]],
                                                 list[tuple[str, int, float]]]]:
    """Everything recorded, grouped by the moment it counts from (a look of the replay): a
    window from its start (the live judge reads a second's requests while it fills), a metric
    answer from when it was asked."""
    at: dict[float, tuple[list[Window], list[tuple[str, int, float, float]],
                          list[tuple[str, int, float]]]] = defaultdict(lambda: ([], [], []))
    for w in rec.window_list():
        at[w.start][0].append(w)
    for t, name, side, f, n in rec.counts:
        at[t][1].append((name, side, f, n))
    for t, name, side, v in rec.values:
        at[t][2].append((name, side, v))
    return dict(sorted(at.items()))
