"""Failed webhook deliveries are handed back once, summed per hook and said in one line."""

from __future__ import annotations

import time

from kiln.notify import Notifier, failure_line, failure_summary
from kiln.spec.models import Hook
from kiln.testing.project import free_port, wait_for


def test_a_delivery_given_up_on_is_handed_back_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    n = Notifier([Hook(url=url)], "shop", backoff=(0.01,), timeout=1.0)
    try:
        n.send("rollout.step", "step 1/2", "web")
        n.send("rollout.promoted", "done", "web")
        got: list = []
        wait_for(lambda: got.extend(n.take_failed()) or len(got) == 2, timeout=20,
                 what="both deliveries to fail")
    finally:
        n.close()
    assert [f.event for f in got] == ["rollout.step", "rollout.promoted"]
    assert all(f.url == url and "refused" in f.error.lower() for f in got), got
    assert n.take_failed() == []  # handed back once: recorded once


def test_failures_per_hook_in_one_line() -> None:
    at = time.mktime((2026, 12, 4, 21, 40, 0, 0, 0, -1))
    rows = [{"url": "http://a/h", "event": "rollout.started", "error": "HTTP 500", "time": at - 60},
            {"url": "http://b/h", "event": "rollout.step", "error": "timed out", "time": at - 30},
            {"url": "http://a/h", "event": "rollout.step", "error": "connection refused",
             "time": at}]
    summary = failure_summary(rows)
    assert summary == [
        {"url": "http://a/h", "failed": 2, "last_error": "connection refused",
         "last_event": "rollout.step", "last_time": at},
        {"url": "http://b/h", "failed": 1, "last_error": "timed out",
         "last_event": "rollout.step", "last_time": at - 30}]
    assert failure_line(summary[0]) == ("notify: 2 deliveries to http://a/h failed, last: "
                                        "rollout.step: connection refused at 21:40")
    assert failure_line(summary[1]).startswith("notify: 1 delivery to http://b/h failed")
