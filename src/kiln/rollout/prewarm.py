"""Pre-warming: GETs sent straight to a new instance after its health check passed and before
the router is given it (`rollout.warmup_requests`), so its first users do not pay for its
cold start. Bounded by a count and a time; failures are counted, not fatal (warming is not a
test: the judge and the health check decide)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

SHOW_EVERY = 0.5
"""Seconds between two progress notes of a running pre-warm (status, the live line)."""
PER_REQUEST = 5.0
"""At most this long for one GET (less when the bound is nearer)."""


def words(instance: str, sent: int, count: int, path: str) -> str:
    """'pre-warming web-r2-1a2b (120/200 GETs to /)': the rollout's `waiting` meanwhile."""
    return f"pre-warming {instance} ({sent}/{count} GETs to {path})"


@dataclass(frozen=True)
class Prewarmed:
    sent: int
    errors: int
    """Connection failures and 5xx, of `sent`."""
    seconds: float
    complete: bool
    """False when the time bound stopped it before `count`."""

    def describe(self, count: int, path: str) -> str:
        cut = "" if self.complete else f", stopped at the time bound after {self.sent}"
        return (f"{self.sent}/{count} warm-up GETs to {path} in {self.seconds:.1f}s, "
                f"{self.errors} failed{cut}")


def prewarm(url: str, path: str, count: int, timeout: float,
            clock: Callable[[], float] = time.monotonic,
            progress: Callable[[int], None] = lambda sent: None) -> Prewarmed:
    """GET `url + path` up to `count` times, one after another, within `timeout` seconds;
    `progress(sent)` after each (the live line shows it)."""
    t0 = clock()
    deadline = t0 + timeout
    sent = errors = 0
    while sent < count:
        left = deadline - clock()
        if left <= 0:
            break
        sent += 1
        try:
            with urllib.request.urlopen(url + path, timeout=min(PER_REQUEST, left)) as r:
                r.read()
        except urllib.error.HTTPError as e:
            errors += e.code >= 500
        except (OSError, ValueError):
            errors += 1
        progress(sent)
    return Prewarmed(sent, errors, clock() - t0, sent >= count)
