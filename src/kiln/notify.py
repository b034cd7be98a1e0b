"""Webhooks (`notify:`): each rollout event POSTed as JSON, signed, retried, never in the way.

The body is `{"event", "service", "message", "data", "time", "project", "text"}` (`text` is
Slack-compatible: an incoming webhook shows it as is); the `X-Kiln-Signature` header is
`sha256=<hex HMAC-SHA256 of the body>` with the hook's secret (read once from the environment:
`secret: env:NAME`). Delivery runs on one background thread per Notifier: `send` only queues,
so a slow or dead receiver never holds a rollout; a failed POST (no answer, or a non-2xx) is
retried with exponential backoff, and one that never succeeds is kept in `failed` (newest last)
and handed to `take_failed`, whose caller records it as a `notify.failed` event for `status`
and the dashboard (the delivery thread never touches the state: one connection per process).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiln.errors import SpecError
from kiln.spec.models import Hook

BACKOFF = (0.5, 1.0, 2.0, 4.0)
"""Seconds before each retry: 5 attempts over ~7.5 s, then the delivery is given up."""


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def secret_of(hook: Hook) -> bytes | None:
    """The hook's secret from `env:NAME`; a missing variable is a clear error, not no signature."""
    if hook.secret is None:
        return None
    name = hook.secret.removeprefix("env:")
    value = os.environ.get(name)
    if value is None:
        raise SpecError([f"notify: secret env:{name} is not set in the environment"])
    return value.encode()


@dataclass(frozen=True)
class Failed:
    url: str
    event: str
    error: str
    time: float


class Notifier:
    """Queues events and delivers them to every hook that wants them, in order, off-thread."""

    def __init__(self, hooks: Sequence[Hook], project: str, *,
                 backoff: Sequence[float] = BACKOFF, timeout: float = 2.0) -> None:
        self.hooks = [(h, secret_of(h)) for h in hooks]
        self.project = project
        self.backoff = tuple(backoff)
        self.timeout = timeout
        self.failed: deque[Failed] = deque(maxlen=50)
        self._unrecorded: deque[Failed] = deque(maxlen=1000)
        """Failures not yet taken by `take_failed` (the caller records them in the state)."""
        self.delivered = 0
        self._queue: queue.Queue[tuple[Hook, bytes | None, str, bytes] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: str, message: str, service: str | None = None,
             data: dict[str, Any] | None = None) -> None:
        """Queue one event for the hooks that want it; returns at once."""
        wanted = [(h, s) for h, s in self.hooks
                  if not h.events or any(fnmatch.fnmatchcase(event, e) for e in h.events)]
        if not wanted:
            return
        where = f"{self.project}/{service}" if service else self.project
        body = json.dumps({"event": event, "project": self.project, "service": service,
                           "message": message, "data": data or {}, "time": time.time(),
                           "text": f"kiln {where}: {event}: {message}"},
                          sort_keys=True, default=str).encode()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kiln-notify",
                                                daemon=True)
                self._thread.start()
        for hook, secret in wanted:
            self._queue.put((hook, secret, event, body))

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by `timeout`), then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, hook: Hook, secret: bytes | None, event: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "kiln"}
        if secret is not None:
            headers["X-Kiln-Signature"] = sign(secret, body)
        error = ""
        for wait in (0.0, *self.backoff):
            time.sleep(wait)
            req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.delivered += 1
                return
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
            except OSError as e:
                error = str(e.reason if isinstance(e, urllib.error.URLError) else e)
        failed = Failed(hook.url, event, error, time.time())
        with self._lock:
            self.failed.append(failed)
            self._unrecorded.append(failed)

    def take_failed(self) -> list[Failed]:
        """The deliveries given up on since the last call (thread-safe): the caller, on its
        own thread, records them where `status` reads them."""
        with self._lock:
            out = list(self._unrecorded)
            self._unrecorded.clear()
        return out


FAILED_WINDOW = 24 * 3600.0
"""`status` and the dashboard show the deliveries that failed over this many seconds."""


def failure_summary(failed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`notify.failed` events' data (oldest first) -> per hook URL: how many failed, and the
    last one's error, event and time (the `notify` of `kiln status --json`)."""
    out: dict[str, dict[str, Any]] = {}
    for f in failed:
        url = str(f.get("url") or "")
        entry = out.setdefault(url, {"url": url, "failed": 0})
        entry.update(failed=entry["failed"] + 1, last_error=str(f.get("error") or ""),
                     last_event=str(f.get("event") or ""), last_time=float(f.get("time") or 0))
    return list(out.values())


def failure_line(entry: dict[str, Any]) -> str:
    """'notify: 3 deliveries to http://... failed, last: connection refused at 21:40'."""
    n = entry["failed"]
    at = time.strftime("%H:%M", time.localtime(entry["last_time"]))
    return (f"notify: {n} deliver{'y' if n == 1 else 'ies'} to {entry['url']} failed, last: "
            f"{entry['last_event']}: {entry['last_error']} at {at}")
