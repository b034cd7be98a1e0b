"""Synthetic load for quiet services (`rollout.load`): GETs through the router's listen address
during judged canary steps, so a service with little traffic gathers the evidence a pass costs
(docs/decisions/synthetic-load.md).

Through the router, so the requests split between the releases like real ones and the judge
reads them from the same access log. Bounded: a rate (at most `MAX_LOAD_RATE`), a time (the
step's pause plus progress_deadline, or `max_duration`, counted from the step's start so a
resumed rollout does not extend it), and a tick never sent late by more than `LATE` (a slow
service gets fewer requests, never a burst). It runs in daemon threads of the process that
drives the rollout: it stops when the step ends, when the driver stops (`close()`, also on
Ctrl-C), and with the process if it dies.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kiln.rollout.decide import Status
from kiln.spec.models import Rollout, SyntheticLoad

HEADER = "X-Kiln-Synthetic"
"""Sent with every synthetic request (value: the rollout id), so an app's own logs can tell."""
LATE = 1.0
"""A tick more than this late is skipped, not sent in a burst."""
TIMEOUT = 5.0
"""Per request."""


def target(listen: str) -> tuple[str, int]:
    """Where to send: the service's listen address (a wildcard host is reached on loopback)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return host, int(port)


def workers_for(rate: float) -> int:
    """Connections enough for `rate` at up to ~200 ms a request, at least 2, at most 64."""
    return max(2, min(64, int(rate * 0.2) + 1))


class Sender:
    """`rate` GETs a second to `paths` in turn on keep-alive connections, until `until`
    (monotonic) or `stop()`. Counts what it sent and what failed (5xx, connection errors)."""

    def __init__(self, host: str, port: int, paths: Sequence[str], rate: float, until: float,
                 tag: str = "1", clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port, self.paths = host, port, list(paths)
        self.rate, self.until, self.tag = rate, until, tag
        self.clock = clock
        self.sent = self.errors = self.skipped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._next = 0

    def start(self) -> None:
        self._t0 = self.clock()
        for i in range(workers_for(self.rate)):
            t = threading.Thread(target=self._work, name=f"kiln-load-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=TIMEOUT + 1)

    def _ticket(self) -> tuple[float, str] | None:
        """The next request's due time and path; None once the time bound is reached."""
        with self._lock:
            while True:
                due = self._t0 + self._next / self.rate
                path = self.paths[self._next % len(self.paths)]
                self._next += 1
                if due >= self.until:
                    return None
                if self.clock() - due <= LATE:
                    return due, path
                self.skipped += 1

    def _work(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                ticket = self._ticket()
                if ticket is None:
                    return
                due, path = ticket
                if self._stop.wait(max(0.0, due - self.clock())):
                    return
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
                failed = True
                try:
                    conn.request("GET", path, headers={HEADER: self.tag,
                                                       "User-Agent": "kiln-load"})
                    resp = conn.getresponse()
                    resp.read()
                    failed = resp.status >= 500
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                with self._lock:
                    self.sent += 1
                    self.errors += failed
        finally:
            if conn is not None:
                conn.close()


class StepLoad:
    """Starts a `Sender` when a judged canary step begins and stops it when the step ends;
    `sync()` once per reconcile pass returns what it did for the status (`synthetic`)."""

    def __init__(self, rollout: Rollout, listen: str, tag: str = "1",
                 make: Callable[..., Sender] = Sender) -> None:
        assert rollout.load is not None
        self.load: SyntheticLoad = rollout.load
        self.rollout = rollout
        self.host, self.port = target(listen)
        self.tag = tag
        self.make = make
        self.sender: Sender | None = None
        self._step: int | None = None
        self._before = (0, 0)
        """(sent, errors) of earlier steps and of an earlier process (a resumed rollout)."""
        self._resumed = False

    def budget(self, step: int) -> float:
        """Seconds the load may run in `step`, from the step's start."""
        if self.load.max_duration is not None:
            return self.load.max_duration
        pause = self.rollout.steps[step].pause if step < len(self.rollout.steps) else None
        return (pause or 0.0) + self.rollout.progress_deadline

    def sync(self, status: Status, now: float) -> dict[str, Any] | None:
        """Start or stop the sender for `status`; the figures for its `synthetic`."""
        if not self._resumed:
            self._resumed = True
            seen = status.synthetic or {}
            self._before = (int(seen.get("sent", 0)), int(seen.get("errors", 0)))
        judged = status.phase == "step" and status.weights.get(status.new, 0) > 0
        if self._step is not None and (not judged or status.step != self._step):
            self._close_step()
        if judged and self._step is None:
            self._step = status.step
            left = status.step_started + self.budget(status.step) - now
            if left > 0:
                self.sender = self.make(self.host, self.port, self.load.paths, self.load.rate,
                                        time.monotonic() + left, self.tag)
                self.sender.start()
        return self.figures(status if judged else None)

    def figures(self, status: Status | None = None) -> dict[str, Any] | None:
        """{paths, rate, sent, errors, running}: the synthetic requests of this rollout."""
        sent, errors = self._before
        s = self.sender
        if s is not None:
            sent, errors = sent + s.sent, errors + s.errors
        if s is None and not sent and status is None:
            return None
        return {"paths": self.load.paths, "rate": self.load.rate, "sent": sent,
                "errors": errors, "running": bool(s is not None and s.running)}

    def _close_step(self) -> None:
        if self.sender is not None:
            self.sender.stop()
            self._before = (self._before[0] + self.sender.sent,
                            self._before[1] + self.sender.errors)
            self.sender = None
        self._step = None

    def close(self) -> None:
        """Stop sending (the step ended, the driver stops, Ctrl-C)."""
        self._close_step()


def synthetic_words(seen: dict[str, Any] | None) -> str:
    """'synthetic load: 412 GETs to / at 20/s (3 failed), running' ('' without one): how status,
    the progress line, the dashboard and the report say that part of the traffic was kiln's."""
    if not seen:
        return ""
    paths = ", ".join(str(p) for p in seen.get("paths") or [])
    failed = f" ({seen['errors']} failed)" if seen.get("errors") else ""
    state = ", running" if seen.get("running") else ""
    return (f"synthetic load: {seen.get('sent', 0)} GETs to {paths} at "
            f"{float(seen.get('rate') or 0):g}/s{failed}{state}")
