"""Mirroring on Traefik (issue 23): a share of the live requests is copied to a release whose
answers are discarded; every copy reaches the access log as a request of that release (Traefik
logs no mirrored request itself: the copies come back through the service's mirror entrypoint),
so the judge reads the mirror's errors and latency like any canary's, and the router's own
counters agree with the log."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.base import Backend
from kiln.platforms.local.accesslog import AccessLogSource
from kiln.platforms.local.router import TraefikRouter
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.state.lock import pid_alive
from kiln.testing.load import Load
from kiln.testing.project import free_port, wait_for
from test_router_traefik import _handler, _Server, spec

pytestmark = pytest.mark.e2e


def _counting(name: str, seen: Counter[str], code: int) -> type[BaseHTTPRequestHandler]:
    base = _handler(name)

    class Handler(base):  # type: ignore[misc,valid-type]
        def do_GET(self) -> None:
            if self.path != "/healthz":   # the health check passes: only requests fail
                seen[self.path] += 1
            if code != 200 and self.path != "/healthz":
                self.send_response(code)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"boom")
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def backends() -> Iterator[Callable[[str, str, int], tuple[str, Counter[str]]]]:
    started: list[_Server] = []

    def start(name: str, host: str, code: int = 200) -> tuple[str, Counter[str]]:
        seen: Counter[str] = Counter()
        srv = _Server((host, 0), _counting(name, seen, code))
        started.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return f"{host}:{srv.server_address[1]}", seen

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[TraefikRouter]:
    r = TraefikRouter(tmp_path / "home", "test")
    try:
        yield r
    finally:
        try:
            r.stop()
        finally:
            running = read_pidfile(r.pid_path)
            if running is not None and pid_alive(running.pid, running.start):
                os.kill(running.pid, signal.SIGKILL)


def test_mirror_copies_requests_whose_answers_nobody_sees(
        router: TraefikRouter,
        backends: Callable[[str, str, int], tuple[str, Counter[str]]]) -> None:
    a, _ = backends("a", "127.0.0.2", 200)
    b, b_seen = backends("b", "127.0.0.3", 500)   # a release answering only 5xx
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    source = AccessLogSource(router.access_log_path, lambda addr: None)
    source.poll()
    before = router.request_counts()
    router.set_backends("web", svc, [Backend("web-r1", 100, [a]),
                                     Backend("web-r2", 0, [b], mirror=100)])
    assert router.mirrors("web") == {"web-r2": 100}
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}
    with Load(svc.listen, rate=800, workers=4, max_requests=4000, max_seconds=60,
              keep_body=1) as load:
        stats = load.wait()
    assert stats.sent == 4000 and stats.failed == 0, stats.summary()
    assert stats.bodies == Counter({"a": 4000})            # no client saw the mirror's answers
    wait_for(lambda: sum(b_seen.values()) >= 4000, timeout=30, what="every copy reached b")
    assert sum(b_seen.values()) == 4000

    samples: list[Any] = []
    wait_for(lambda: samples.extend(source.poll()) or
             sum(1 for x in samples if x.release_id == "web-r2") >= 4000,
             timeout=30, what="the copies in the access log")
    per = Counter((x.release_id, x.status) for x in samples)
    assert per == Counter({("web-r1", 200): 4000, ("web-r2", 500): 4000})
    after = router.request_counts()
    assert before is not None and after is not None
    counted = {r: n - before.releases.get(r, 0) for r, n in after.releases.items()}
    assert counted == {"web-r1": 4000, "web-r2": 4000}      # the judge's cross-check agrees

    router.set_backends("web", svc, [Backend("web-r1", 100, [a]), Backend("web-r2", 0, [b])])
    assert router.mirrors("web") == {}
    copies = sum(b_seen.values())
    with Load(svc.listen, rate=500, workers=2, max_requests=500, max_seconds=30) as load:
        assert load.wait().failed == 0
    assert sum(b_seen.values()) == copies                   # mirroring ended


def test_mirror_share_copies_that_share(router: TraefikRouter,
                                        backends: Callable[[str, str, int],
                                                           tuple[str, Counter[str]]]) -> None:
    a, _ = backends("a", "127.0.0.2", 200)
    b, b_seen = backends("b", "127.0.0.3", 200)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a]),
                                     Backend("web-r2", 0, [b], mirror=10)])
    assert router.mirrors("web") == {"web-r2": 10}
    with Load(svc.listen, rate=800, workers=4, max_requests=2000, max_seconds=60,
              keep_body=1) as load:
        stats = load.wait()
    assert stats.failed == 0 and stats.bodies == Counter({"a": 2000}), stats.summary()
    wait_for(lambda: sum(b_seen.values()) >= 200, timeout=30, what="10% copied")
    assert 180 <= sum(b_seen.values()) <= 220, b_seen

