"""A MetricSource fed by the test: `feed()` samples, the code under test reads `samples()`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from kiln.platforms.base import Sample


class FakeMetricSource:
    """In-memory MetricSource. A release belongs to service S when its id is `S-r<number>`."""

    def __init__(self, samples: Iterable[Sample] = ()) -> None:
        self._samples: list[Sample] = list(samples)
        self.calls: list[tuple[str, float]] = []

    def feed(self, samples: Iterable[Sample]) -> None:
        self._samples.extend(samples)

    def samples(self, service_name: str, since: float) -> list[Sample]:
        self.calls.append((service_name, since))
        mine = re.compile(rf"^{re.escape(service_name)}-r\d+$")
        return sorted((s for s in self._samples if s.time > since and mine.match(s.release_id)),
                      key=lambda s: s.time)

    def position(self) -> int:
        """Cursor after the samples fed so far (the order they were fed in)."""
        return len(self._samples)

    def read(self, service_name: str, cursor: int | None) -> tuple[list[Sample], int]:
        """The service's samples fed after `cursor`, in the order fed (like a log)."""
        mine = re.compile(rf"^{re.escape(service_name)}-r\d+$")
        start = cursor if isinstance(cursor, int) and 0 <= cursor <= len(self._samples) else 0
        return [s for s in self._samples[start:] if mine.match(s.release_id)], len(self._samples)
