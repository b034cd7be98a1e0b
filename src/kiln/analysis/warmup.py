"""The warm-up: what an instance serves while it is younger than `analysis.warmup` is recorded
and shown but not judged (docs/decisions/judge-warmup.md).

Per instance: a window (a release's requests in one second, per instance when the source knows
which served them) is warming when it starts before its instance's launch plus the warm-up. A
source that knows only the release (CloudWatch: instance "") is held to the release's youngest
instance: a window that may hold a warming instance's requests is not judged. A fault that
persists past the warm-up is judged as usual, on the requests served after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from kiln.platforms.base import Window

Starts = Callable[[Sequence[str]], Mapping[tuple[str, str], float]]
"""Releases -> {(release, instance address): launch time (unix s)} of their instances."""


def warming(window: Window, starts: Mapping[tuple[str, str], float], seconds: float) -> bool:
    """Whether `window` holds requests served inside an instance's warm-up (pure)."""
    if seconds <= 0:
        return False
    if window.instance:
        born = starts.get((window.release_id, window.instance))
    else:
        born = max((t for (r, _), t in starts.items() if r == window.release_id), default=None)
    return born is not None and window.start < born + seconds


class Warmup:
    """Splits windows into judged and warming, looking up the instances' launch times once per
    read (an address reused by a later instance then gets the later one's time)."""

    def __init__(self, seconds: float, starts: Starts) -> None:
        self.seconds = seconds
        self.starts = starts
        self.requests: dict[str, int] = {}
        """Per release, the requests recorded but not judged (shown in the verdict)."""

    def left(self, release: str, now: float) -> float:
        """Seconds until the release's youngest instance is out of its warm-up (0: none is)."""
        if self.seconds <= 0:
            return 0.0
        born = [t for (r, _), t in self.starts([release]).items() if r == release]
        return max(0.0, max(born) + self.seconds - now) if born else 0.0

    def split(self, windows: Iterable[Window], releases: Sequence[str]
              ) -> tuple[list[Window], list[Window]]:
        """(judged, warming)."""
        ws = list(windows)
        if self.seconds <= 0 or not ws:
            return ws, []
        starts = self.starts([r for r in releases if r])
        judged: list[Window] = []
        warm: list[Window] = []
        for w in ws:
            (warm if warming(w, starts, self.seconds) else judged).append(w)
        for w in warm:
            self.requests[w.release_id] = self.requests.get(w.release_id, 0) + w.requests
        return judged, warm
