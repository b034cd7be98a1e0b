"""A MetricSource fed by the test: `feed()` samples (requests), the code under test reads their
aggregates per release and second, by time (`windows`) or replayed from a cursor (`read`)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from kiln.analysis.summary import aggregate
from kiln.platforms.base import Sample, Window
from kiln.platforms.capabilities import MetricReplay


class FakeMetricSource(MetricReplay):
    """In-memory MetricSource. A release belongs to service S when its id is `S-r<number>`."""

    name = "fake"

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        self._samples: list[Sample] = list(samples)
        self.calls: list[tuple[Collection[str], float, float]] = []

    def feed(self, samples: Iterable[Sample]) -> None:
        self._samples.extend(samples)

    def samples(self, service_name: str, since: float) -> list[Sample]:
        """The service's requests completed after `since` (strictly), oldest first (for tests)."""
        mine = re.compile(rf"^{re.escape(service_name)}-r\d+$")
        return sorted((s for s in self._samples if s.time > since and mine.match(s.release_id)),
                      key=lambda s: s.time)

    def windows(self, releases: Collection[str], since: float, until: float) -> list[Window]:
        self.calls.append((releases, since, until))
        return aggregate(s for s in self._samples
                         if s.release_id in releases and since <= s.time <= until)

    def position(self) -> int:
        """Cursor after the samples fed so far (the order they were fed in)."""
        return len(self._samples)

    def read(self, service_name: str, cursor: int | None, since: float | None = None
             ) -> tuple[list[Window], int]:
        """Aggregates of the service's samples fed after `cursor`, in the order fed (like a
        log); with no usable cursor, from the first sample completed at or after `since`."""
        mine = re.compile(rf"^{re.escape(service_name)}-r\d+$")
        start = cursor if isinstance(cursor, int) and 0 <= cursor <= len(self._samples) else 0
        return aggregate(s for s in self._samples[start:] if mine.match(s.release_id)
                         and (since is None or s.time >= since)), len(self._samples)
