"""A steady, bounded HTTP load for demos, end-to-end tests and benchmarks.

It counts every request: status codes, connection errors and latency, so a test can assert that a
rollout dropped nothing. Always bounded in time and in count, and only ever aimed at loopback.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    conn_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        other = {k: v for k, v in self.statuses.items() if not 200 <= k < 300}
        return (f"{self.sent} requests in {self.seconds:.1f}s ({self.rate:.0f}/s): {self.ok} ok, "
                f"{sum(other.values())} non-2xx {dict(other) or ''}, {self.conn_errors} "
                f"connection errors; p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def _check_loopback(host: str) -> None:
    if not (host.startswith("127.") or host == "localhost"):
        raise ValueError(f"load is only ever sent to loopback addresses, not {host}")


class Load:
    """`rate` requests/s spread over `workers` keep-alive connections, in a background thread.

    Stops at `max_seconds`, at `max_requests`, or at `stop()`, whichever comes first.
    """

    def __init__(self, address: str, *, rate: float = 150.0, path: str = "/", workers: int = 8,
                 max_seconds: float = 120.0, max_requests: int = 200_000,
                 timeout: float = 5.0, keep_body: int = 0,
                 headers: dict[str, str] | None = None) -> None:
        host, _, port = address.rpartition(":")
        _check_loopback(host)
        self.host, self.port, self.path = host, int(port), path
        self.rate, self.workers = rate, workers
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.timeout = timeout
        self.keep_body = keep_body
        self.headers = dict(headers or {})
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._next = 0

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._t0 = time.monotonic()
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 2)
        self.stats.seconds = time.monotonic() - self._t0
        return self.stats

    def wait(self) -> LoadStats:
        """Block until the load ends by itself (time or count bound)."""
        for t in self._threads:
            t.join()
        self.stats.seconds = time.monotonic() - self._t0
        return self.stats

    def _ticket(self) -> float | None:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            due = self._t0 + self._next / self.rate
            self._next += 1
        if due - self._t0 > self.max_seconds:
            return None
        return due

    def _work(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            due = self._ticket()
            if due is None:
                break
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            t = time.perf_counter()
            try:
                conn.request("GET", self.path, headers=self.headers)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                with self._lock:
                    self.stats.sent += 1
                    self.stats.conn_errors += 1
                    if len(self.stats.error_samples) < 10:
                        self.stats.error_samples.append(f"{type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - t
            with self._lock:
                self.stats.sent += 1
                self.stats.statuses[status] += 1
                self.stats.latencies.append(took)
                if 200 <= status < 300:
                    self.stats.ok += 1
                if self.keep_body:
                    self.stats.bodies[body[: self.keep_body].decode(errors="replace")] += 1
        if conn is not None:
            conn.close()
