"""Pre-warming: the GETs a new instance gets before it enters rotation, bounded in count and
time, failures counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kiln.rollout.prewarm import prewarm
from kiln.spec.models import Rollout


class App:
    def __init__(self, slow: float = 0.0, status: int = 200) -> None:
        self.paths: list[str] = []
        self.slow, self.status = slow, status


@pytest.fixture
def app() -> Iterator[tuple[App, str]]:
    state = App()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path)
            if state.slow:
                time.sleep(state.slow)
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_sends_count_gets_to_the_path(app: tuple[App, str]) -> None:
    state, url = app
    done = prewarm(url, "/warm?x=1", 25, 10.0)
    assert (done.sent, done.errors, done.complete) == (25, 0, True)
    assert state.paths == ["/warm?x=1"] * 25
    assert "25/25 warm-up GETs to /warm?x=1" in done.describe(25, "/warm?x=1")


def test_bounded_in_time(app: tuple[App, str]) -> None:
    state, url = app
    state.slow = 0.2
    done = prewarm(url, "/", 1000, 1.0)
    assert not done.complete and 1 <= done.sent <= 8 and done.seconds < 3.0
    assert "stopped at the time bound" in done.describe(1000, "/")


def test_failures_are_counted_not_raised(app: tuple[App, str]) -> None:
    state, url = app
    state.status = 503
    assert prewarm(url, "/", 5, 10.0).errors == 5
    state.status = 404  # not a failure of the instance: a warm-up path may 404
    assert prewarm(url, "/", 5, 10.0).errors == 0
    # Nothing listening: every GET fails fast, the bound still holds.
    done = prewarm("http://127.0.0.1:9", "/", 3, 5.0)
    assert (done.sent, done.errors) == (3, 3)


def test_spec() -> None:
    r = Rollout.model_validate({"warmup_requests": {"path": "/health", "count": 50}})
    assert r.warmup_requests is not None and r.warmup_requests.timeout == 30.0
    assert Rollout().warmup_requests is None
    with pytest.raises(ValueError, match="starting with /"):
        Rollout.model_validate({"warmup_requests": {"path": "health"}})
    with pytest.raises(ValueError):
        Rollout.model_validate({"warmup_requests": {"count": 0}})


def test_progress_is_reported_after_each_get(app: tuple[App, str]) -> None:
    from kiln.rollout.prewarm import words

    _, url = app
    seen: list[int] = []
    done = prewarm(url, "/", 5, 10.0, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5] and done.sent == 5
    assert words("web-r2-1a2b", 120, 200, "/") == "pre-warming web-r2-1a2b (120/200 GETs to /)"
