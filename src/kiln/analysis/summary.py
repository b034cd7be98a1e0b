"""Sufficient statistics of one side (canary or baseline): counts and a log-latency histogram.

The judge needs only these, so the stateful `Judge` can add samples (or a metric source's
windows, the same counts and histogram per window) as they arrive and evaluate in O(bins)
however long the rollout runs, and the benchmark can run thousands of rollouts as numpy arrays
through the very same math. `aggregate` turns per-request samples into those windows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kiln.platforms.base import Sample, Window

# Log-spaced latency bins: 10 µs .. 1000 s, each 1% wider than the last. Resolution 1% is far
# below any latency gate anyone sets (the gate is a relative increase like 25%).
LOG_MIN = math.log(1e-5)
LOG_MAX = math.log(1e3)
BIN_WIDTH = math.log(1.01)
N_BINS = math.ceil((LOG_MAX - LOG_MIN) / BIN_WIDTH)

FloatArray = npt.NDArray[np.float64]


def bin_index(durations: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Histogram bin of each latency (seconds); out-of-range values go to the end bins."""
    d = np.maximum(np.asarray(durations, dtype=np.float64), 1e-9)
    idx = np.floor((np.log(d) - LOG_MIN) / BIN_WIDTH).astype(np.intp)
    return np.clip(idx, 0, N_BINS - 1)


def bin_center(idx: npt.ArrayLike) -> FloatArray:
    """Latency (seconds) in the geometric middle of a bin."""
    return np.exp(LOG_MIN + (np.asarray(idx, dtype=np.float64) + 0.5) * BIN_WIDTH)


@dataclass
class Summary:
    """Requests, errors and the latency histogram of successful requests for one release.

    Latency is compared on successful requests only: a fast 500 must not make a release look fast.
    """

    requests: int = 0
    errors: int = 0
    hist: FloatArray = field(default_factory=lambda: np.zeros(N_BINS))

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> Summary:
        s = cls()
        s.add(samples)
        return s

    def add(self, samples: Iterable[Sample]) -> None:
        ok: list[float] = []
        for x in samples:
            self.requests += 1
            if x.error:
                self.errors += 1
            else:
                ok.append(x.duration)
        if ok:
            np.add.at(self.hist, bin_index(ok), 1.0)

    def add_window(self, w: Window) -> None:
        """Add one window's aggregate: the same sums `add` makes of its requests (the counts
        are whole numbers, so the order of addition does not change a bit of the result)."""
        self.requests += w.requests
        self.errors += w.errors
        if w.latency:
            idx = np.fromiter(w.latency.keys(), dtype=np.intp, count=len(w.latency))
            np.add.at(self.hist, idx, np.fromiter(w.latency.values(), dtype=np.float64,
                                                  count=len(w.latency)))

    @property
    def n(self) -> int:
        """Alias of `requests`."""
        return self.requests

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Latency quantile (seconds) of successful requests, to 1% resolution; None if none."""
        total = float(self.hist.sum())
        if total <= 0:
            return None
        cum = np.cumsum(self.hist)
        k = int(np.searchsorted(cum, q * total, side="left"))
        return float(bin_center(min(k, N_BINS - 1)))


def aggregate(samples: Iterable[Sample], length: float = 1.0) -> list[Window]:
    """Per-request samples -> one Window per release, instance and `length`-second slot of
    completion time (slots aligned to the epoch), oldest first. Per instance so that a judge
    with a warm-up can leave out what a young instance served (kiln.analysis.warmup)."""
    counts: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    ok_keys: list[tuple[str, str, int]] = []
    ok_durations: list[float] = []
    for s in samples:
        key = (s.release_id, s.instance, math.floor(s.time / length))
        c = counts[key]
        c[0] += 1
        if s.error:
            c[1] += 1
        else:
            ok_keys.append(key)
            ok_durations.append(s.duration)
    hists: dict[tuple[str, str, int], Counter[int]] = defaultdict(Counter)
    if ok_durations:  # one vectorised binning for all windows
        for key, b in zip(ok_keys, bin_index(ok_durations).tolist(), strict=True):
            hists[key][b] += 1
    return [Window(key[0], key[2] * length, length, counts[key][0], counts[key][1],
                   dict(hists.get(key, {})), instance=key[1])
            for key in sorted(counts, key=lambda k: (k[2], k[0], k[1]))]
