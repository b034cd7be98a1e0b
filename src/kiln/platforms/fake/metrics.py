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
