"""The Router contract, one suite for every router: the fake, Traefik and HAProxy.

What the rollout relies on: weights read back as set (0 = out of rotation), refusals for bad
input and a taken listen address, a restart that brings the recorded routing back, drained
releases, and (real routers) traffic split by weight, no failed request across weight changes,
and an access log the judge's reader turns into samples of the right release. The judge's
cross-check relies on `request_counts`: per release, one count per access-log line, kept when
the release's servers are removed, starting again at 0 under a new epoch after a restart.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.errors import PlatformError
from kiln.platforms import capabilities as caps
from kiln.platforms.aws.router import AlbRouter
from kiln.platforms.base import PREVIEW_HEADER, Backend, RequestCounts, Router
from kiln.platforms.capabilities import ServersReadBack
from kiln.platforms.fake.router import FakeRouter
from kiln.platforms.local.accesslog import AccessLogSource
from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.router import TraefikRouter
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.spec.models import Rollout
from kiln.state.lock import pid_alive
from kiln.testing.load import Load
from kiln.testing.project import free_port, wait_for
from test_router_traefik import _handler, _Server, get, hits, spec

AnyRouter = FakeRouter | TraefikRouter | HAProxyRouter
REAL = [pytest.param("traefik", marks=pytest.mark.e2e), pytest.param("haproxy", marks=pytest.mark.e2e)]
ALL = [pytest.param("fake"), *REAL]


def _make(kind: str, home: Path) -> AnyRouter:
    if kind == "fake":
        return FakeRouter()
    if kind == "traefik":
        return TraefikRouter(home, "test")
    return HAProxyRouter(home, "test")


def _kill(router: AnyRouter) -> None:
    if isinstance(router, FakeRouter):
        router.crash()
        return
    running = read_pidfile(router.pid_path)
    if running is not None and pid_alive(running.pid, running.start):
        os.kill(running.pid, signal.SIGKILL)
    wait_for(lambda: not router.is_running(), what="router dead")


@pytest.fixture
def backend() -> Iterator[Callable[[str, str], str]]:
    """backend(name, host) -> 'host:port' of a server answering its name; stopped after."""
    started: list[_Server] = []

    def start(name: str, host: str = "127.0.0.2") -> str:
        srv = _Server((host, 0), _handler(name))
        started.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return f"{host}:{srv.server_address[1]}"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def router(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyRouter]:
    # A home as deep as a user's project can be: HAProxy refuses an admin socket path over 97
    # bytes, so every router here runs where an absolute socket path would not fit.
    home = tmp_path / "a-project-folder-as-deep-as-a-users-can-be" / "home"
    assert len(str(home / "haproxy" / "admin.sock")) > 108
    r = _make(request.param, home)
    try:
        yield r
    finally:
        if not isinstance(r, FakeRouter):
            try:
                r.stop()
            finally:
                running = read_pidfile(r.pid_path)
                if running is not None and pid_alive(running.pid, running.start):
                    os.kill(running.pid, signal.SIGKILL)


def servers(router: AnyRouter, backend: Callable[[str, str], str]) -> tuple[str, str]:
    if isinstance(router, FakeRouter):
        return "127.0.0.2:1", "127.0.0.3:1"
    return backend("a", "127.0.0.2"), backend("b", "127.0.0.3")


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_is_a_router(router: AnyRouter) -> None:
    typed: Router = router
    typed.ensure_running()


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_weights_read_back_as_set(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    for wa, wb in [(100, 0), (90, 10), (50, 50), (0, 100)]:
        router.set_backends("web", svc, [Backend("web-r1", wa, [a]), Backend("web-r2", wb, [b])])
        assert router.verify("web") == {"web-r1": wa, "web-r2": wb}
    router.set_backends("web", svc, [Backend("web-r2", 100, [b])])
    assert router.verify("web") == {"web-r2": 100}


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_bad_backends_are_refused(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, _ = servers(router, backend)
    svc = spec(free_port())
    with pytest.raises(PlatformError, match="listed twice"):
        router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r1", 50, [a])])
    with pytest.raises(PlatformError, match="no servers"):
        router.set_backends("web", svc, [Backend("web-r1", 100, [])])


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_taken_listen_address_is_refused(router: AnyRouter,
                                         backend: Callable[[str, str], str]) -> None:
    a, _ = servers(router, backend)
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        if isinstance(router, FakeRouter):
            router.taken.add(f"127.0.0.1:{port}")
        with pytest.raises(PlatformError, match=r"services\.web\.listen\) is already in use"):
            router.set_backends("web", spec(port), [Backend("web-r1", 100, [a])])


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_a_dead_router_comes_back_with_its_routing(router: AnyRouter,
                                                   backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 10, [a]), Backend("web-r2", 90, [b])])
    _kill(router)
    assert router.verify("web") == {}
    router.ensure_running()
    assert router.verify("web") == {"web-r1": 10, "web-r2": 90}
    if not isinstance(router, FakeRouter):
        got = hits(svc.listen, 50)
        assert set(got) <= {"a", "b"} and got["b"] > got["a"], got


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_removed_service_serves_nothing(router: AnyRouter,
                                        backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    web, api = spec(free_port()), spec(free_port())
    router.set_backends("web", web, [Backend("web-r1", 100, [a])])
    router.set_backends("api", api, [Backend("api-r1", 100, [b])])
    router.remove_service("api")
    assert router.verify("api") == {}
    assert router.verify("web") == {"web-r1": 100}
    if not isinstance(router, FakeRouter):
        assert hits(web.listen, 5) == Counter({"a": 5})
        try:
            status = get(api.listen)[0]
        except OSError:
            status = 0  # HAProxy stops accepting on a removed frontend
        assert status in (0, 404, 503)


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_out_of_rotation_drains(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    if isinstance(router, FakeRouter):
        router.inflight["web-r1"] = 2
    router.set_backends("web", svc, [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b])])
    assert router.wait_drained("web-r1", timeout=10)
    assert router.open_requests("web-r1") == 0


# ------------------------------------------------------------------ real routers only


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_server_status_is_the_routers_own_health_verdict(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    """What `kiln serve` replaces unhealthy instances by: UP for a server that answers its
    health check, DOWN once it stops answering (it is then out of the balancing too).
    `server_statuses` reads every release asked in one call (Traefik: through every page of
    its service list) and says the same as `server_status` of each."""
    a = servers(router, backend)[0]
    if isinstance(router, TraefikRouter):
        router.status_page = 1  # one service per page: the reading goes through every page
    if isinstance(router, FakeRouter):
        b = "127.0.0.3:1"

        def stop_b() -> None:
            router.down.add(b)
    else:
        srv = _Server(("127.0.0.3", 0), _handler("b"))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        b = f"127.0.0.3:{srv.server_address[1]}"

        def stop_b() -> None:
            srv.shutdown()
            srv.server_close()
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a, b])])
    router.set_backends("api", spec(free_port()), [Backend("api-r1", 100, [a])])
    up = {f"http://{a}": "UP", f"http://{b}": "UP"}
    wait_for(lambda: {k: v.split()[0] for k, v in router.server_status("web-r1").items()} == up,
             timeout=10, what="both servers UP")
    wait_for(lambda: bool(router.server_status("api-r1")), timeout=10, what="api-r1 checked")
    stop_b()
    wait_for(lambda: router.server_status("web-r1").get(f"http://{b}", "").startswith("DOWN"),
             timeout=10, what="the stopped server DOWN")
    assert router.server_status("web-r1")[f"http://{a}"].startswith("UP")
    assert router.server_status("web-r2") == {}

    def verdicts(by_url: dict[str, str]) -> dict[str, str]:
        return {url: v.split()[0] for url, v in by_url.items()}

    many = router.server_statuses(["web-r1", "api-r1", "web-r2"])
    assert {rid: verdicts(v) for rid, v in many.items()} == {
        "web-r1": {f"http://{a}": "UP", f"http://{b}": "DOWN"},
        "api-r1": {f"http://{a}": "UP"}, "web-r2": {}}
    assert {rid: verdicts(router.server_status(rid)) for rid in many} == {
        rid: verdicts(v) for rid, v in many.items()}
    assert router.server_statuses([]) == {}


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_traffic_follows_weights(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a]), Backend("web-r2", 0, [b])])
    assert hits(svc.listen, 30) == Counter({"a": 30})
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    got = hits(svc.listen, 200)
    assert 60 <= got["a"] <= 140 and got["a"] + got["b"] == 200, got
    router.set_backends("web", svc, [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b])])
    assert hits(svc.listen, 30) == Counter({"b": 30})


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_weight_changes_under_load_fail_no_request(router: AnyRouter,
                                                   backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    c = backend("c", "127.0.0.4")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    stop = threading.Event()
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def load() -> None:
        host, _, port = svc.listen.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        local: Counter[str] = Counter()
        for _ in range(20_000):  # bounded even if `stop` is never set
            if stop.is_set():
                break
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read().decode()
                local[body if resp.status == 200 else f"status {resp.status}"] += 1
            except (OSError, http.client.HTTPException) as exc:
                local[f"error {type(exc).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.close()
        with lock:
            results.update(local)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        steps: list[list[Backend]] = [
            [Backend("web-r1", 90, [a]), Backend("web-r2", 10, [b, c])],
            [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b, c])],
            [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b, c])],
            [Backend("web-r2", 100, [b, c])],
            [Backend("web-r2", 100, [b, c]), Backend("web-r3", 0, [a])],
            [Backend("web-r2", 0, [b, c]), Backend("web-r3", 100, [a])],
        ]
        for backends in steps:
            router.set_backends("web", svc, backends)
            assert router.verify("web") == {x.release_id: x.weight for x in backends}
            time.sleep(0.2)  # let the load see each split (load time, not a wait)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    failures = {k: v for k, v in results.items() if k not in ("a", "b", "c")}
    assert failures == {}, results
    assert results["a"] > 0 and results["b"] > 0 and results["c"] > 0
    assert sum(results.values()) > 100


def send(router: AnyRouter, listen: str, n: int) -> Counter[str]:
    """n requests through the router (one connection each); release -> requests, as the access
    log names them (the fake router reports its own split)."""
    if isinstance(router, FakeRouter):
        return Counter(router.serve("web", n))
    source = AccessLogSource(router.access_log_path, lambda addr: None)
    cursor = source.position()
    for _ in range(n):
        with contextlib.suppress(OSError, http.client.HTTPException):
            get(listen)
    return logged_after(source, cursor, n)


def logged_after(source: AccessLogSource, cursor: list[int], n: int) -> Counter[str]:
    """release -> lines after `cursor`, once there are `n` of them."""
    logged: Counter[str] = Counter()

    def all_logged() -> bool:
        nonlocal cursor
        samples, cursor = source.read_samples("web", cursor)
        logged.update(s.release_id for s in samples)
        return sum(logged.values()) >= n

    wait_for(all_logged, what=f"{n} access-log lines")
    return logged


def counts(router: AnyRouter) -> RequestCounts:
    got = router.request_counts()
    assert got is not None, "a running router has counters"
    return got


def increase(router: AnyRouter, since: RequestCounts, gone: frozenset[str]) -> Counter[str]:
    """How far the counters moved; a removed release (`gone`) may have left the reading."""
    now = counts(router)
    assert now.epoch == since.epoch
    return Counter({r: n - since.releases.get(r, 0) for r, n in now.releases.items()
                    if n != since.releases.get(r, 0) and r not in gone})


def counted(router: AnyRouter, since: RequestCounts, want: Counter[str],
            gone: frozenset[str] = frozenset()) -> None:
    """The router's counters move by exactly `want` (they may lag the log a moment)."""
    want = Counter({r: n for r, n in want.items() if r not in gone})
    seen: list[Counter[str]] = []
    try:
        wait_for(lambda: seen.append(increase(router, since, gone)) or seen[-1] == want,
                 timeout=5)
    except AssertionError:
        raise AssertionError(f"counters moved by {seen[-1]}, the access log has {want}") from None


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_request_counts_match_the_access_log_and_outlive_a_removed_release(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    start = counts(router)
    assert start.source and start.epoch
    sent = send(router, svc.listen, 30)
    assert set(sent) == {"web-r1", "web-r2"}, sent
    counted(router, start, sent)
    # web-r1 leaves rotation, drains, and is removed (HAProxy deletes its server).
    router.set_backends("web", svc, [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b])])
    assert router.wait_drained("web-r1", timeout=10)
    router.set_backends("web", svc, [Backend("web-r2", 100, [b])])
    if isinstance(router, HAProxyRouter):
        wait_for(lambda: router.collect("web") == 0, what="web-r1's server deleted")
        assert not router.server_status("web-r1")
    more = send(router, svc.listen, 10)
    assert more == Counter({"web-r2": 10})
    # The removed release's count stays, or leaves the reading (Traefik drops the series at a
    # later configuration change); never less.
    r1 = start.releases.get("web-r1", 0) + sent["web-r1"]
    for _ in range(3):
        assert counts(router).releases.get("web-r1", r1) == r1
    if isinstance(router, HAProxyRouter | FakeRouter):
        assert counts(router).releases.get("web-r1") == r1
    counted(router, start, sent + more, gone=frozenset({"web-r1"}))


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_request_counts_start_again_after_a_restart(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    before = counts(router)
    send(router, svc.listen, 10)
    _kill(router)
    assert router.request_counts() is None  # nothing to read from a dead router
    router.ensure_running()
    fresh = counts(router)
    assert fresh.epoch != before.epoch
    assert not any(fresh.releases.values()), fresh  # a new process counts from 0
    sent = send(router, svc.listen, 10)
    counted(router, fresh, sent)


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_request_counts_match_the_log_for_failures(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    """500s, a dead server (502 behind Traefik, redispatched behind HAProxy), client aborts:
    whatever the router did, its counters name the release its access log names."""
    assert not isinstance(router, FakeRouter)
    a = backend("a", "127.0.0.2")
    dead = f"127.0.0.3:{free_port()}"
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [dead])])
    start = counts(router)
    source = AccessLogSource(router.access_log_path, lambda addr: None)
    cursor = source.position()
    n = 20
    for i in range(n):
        with contextlib.suppress(OSError, http.client.HTTPException):
            get(svc.listen, "/status/500" if i % 4 == 0 else "/")
    host, _, port = svc.listen.rpartition(":")
    for _ in range(3):  # the client gives up before the answer
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /slow/0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
    counted(router, start, logged_after(source, cursor, n + 3))


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_access_log_gives_the_judge_samples_per_release(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    assert not isinstance(router, FakeRouter)
    a, b = servers(router, backend)
    svc = spec(free_port())
    t0 = time.time()
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    hits(svc.listen, 20)
    get(svc.listen, "/slow/0.3")
    source = AccessLogSource(router.access_log_path, lambda addr: None)
    samples = wait_for(lambda: got if len(got := source.samples("web", t0)) >= 21 else [])
    assert len(samples) == 21
    counts = Counter(s.release_id for s in samples)
    assert set(counts) == {"web-r1", "web-r2"} and min(counts.values()) >= 5, counts
    assert all(s.status == 200 and not s.error for s in samples)
    slow = [s for s in samples if s.duration >= 0.29]
    assert len(slow) == 1 and slow[0].duration < 1.0
    fast = [s for s in samples if s not in slow]
    assert all(0 < s.duration < 0.2 for s in fast)
    assert all(t0 - 1 < s.time < time.time() + 1 for s in samples)
    # Sample.time is the completion time: the slow request, sent last, ends last.
    assert slow[0].time == max(s.time for s in samples)


@pytest.mark.e2e
def test_switching_router_stops_the_other_when_it_starts(tmp_path: Path,
                                                         backend: Callable[[str, str], str]
                                                         ) -> None:
    from kiln.platforms.local.routers import make_router

    a = backend("a", "127.0.0.2")
    svc = spec(free_port())
    first = make_router("haproxy", tmp_path, "test")
    try:
        first.set_backends("web", svc, [Backend("web-r1", 100, [a])])
        assert first.is_running()
        second = make_router("traefik", tmp_path, "test")
        assert isinstance(second, TraefikRouter)
        # Made, read, asked: the old router still serves (a read never stops it).
        assert first.is_running() and not second.is_running()
        assert second.serving_instead() == f"haproxy (pid {read_pidfile(first.pid_path).pid})"
        second.check_listen("web", svc.listen)  # its address is the old router's, to take over
        assert hits(svc.listen, 3) == Counter({"a": 3})
        second.set_backends("web", svc, [Backend("web-r1", 100, [a])])
        assert not first.is_running()  # stopped when the new one started on its address
        assert second.serving_instead() is None
        assert hits(svc.listen, 3) == Counter({"a": 3})
        second.stop()
    finally:
        for r in (first, TraefikRouter(tmp_path, "test")):
            running = read_pidfile(r.pid_path)
            if running is not None and pid_alive(running.pid, running.start):
                os.kill(running.pid, signal.SIGKILL)


@pytest.mark.parametrize(("part", "capabilities"), [
    (FakeRouter, {"HealthVerdicts", "OpenRequests", "ServersReadBack"}),
    (TraefikRouter, {"RouterProcess", "RouterSwitch", "HealthVerdicts", "OpenRequests",
                     "ServersReadBack", "RouterMetrics", "Mirroring"}),
    (HAProxyRouter, {"RouterProcess", "RouterSwitch", "HealthVerdicts", "OpenRequests",
                     "ServersReadBack", "RouterMetrics"}),
    (AlbRouter, {"OpenRequests"}),  # targets still deregistering; its health checks are the ASG's
])
def test_declares_its_capabilities(part: type, capabilities: set[str]) -> None:
    """Each router names its optional capabilities, and the core's `isinstance` finds exactly
    those (no method matching one by chance, none declared but missing)."""
    assert caps.declared(part, caps.ROUTER) == capabilities
    assert caps.answered(part, caps.ROUTER) == capabilities
    assert caps.declared(part, caps.COMPUTE + caps.BUILDER + caps.PLATFORM) == set()


# ---------------------------------------------------------------- preview (issue 23)


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_preview_reads_back_and_goes_away(router: AnyRouter,
                                          backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a]),
                                     Backend("web-r2", 0, [b], preview=True)])
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}
    assert router.previews("web") == {"web-r2"}
    router.set_backends("web", svc, [Backend("web-r1", 90, [a]), Backend("web-r2", 10, [b])])
    assert router.previews("web") == set()
    assert router.verify("web") == {"web-r1": 90, "web-r2": 10}


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_preview_gets_only_requests_naming_it(router: AnyRouter,
                                             backend: Callable[[str, str], str]) -> None:
    """Issue 23's figure: 0 of 20,000 ordinary requests reach a release in preview, every
    request with the header (or the cookie) does; turning it on and off drops nothing."""
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    with Load(svc.listen, rate=1500, workers=6, max_requests=20_000, max_seconds=120,
              keep_body=1) as ordinary:
        wait_for(lambda: ordinary.stats.sent > 500, timeout=30, what="load running")
        router.set_backends("web", svc, [Backend("web-r1", 100, [a]),
                                         Backend("web-r2", 0, [b], preview=True)])
        named = {"header": {PREVIEW_HEADER: "web-r2"},
                 "cookie": {"Cookie": f"theme=dark; {PREVIEW_HEADER}=web-r2; x=1"},
                 "other release": {PREVIEW_HEADER: "web-r9"}}
        got = {}
        for what, headers in named.items():
            with Load(svc.listen, rate=400, workers=2, max_requests=1000, max_seconds=60,
                      keep_body=1, headers=headers) as load:
                got[what] = load.wait()
        wait_for(lambda: ordinary.stats.sent > 12_000, timeout=120, what="ordinary load")
        router.set_backends("web", svc, [Backend("web-r1", 100, [a]),
                                         Backend("web-r2", 0, [b])])
        assert router.previews("web") == set()
        stats = ordinary.wait()
    assert stats.sent == 20_000 and stats.failed == 0, stats.summary()
    assert stats.bodies == Counter({"a": 20_000})
    assert got["header"].bodies == Counter({"b": 1000}), got["header"].summary()
    assert got["cookie"].bodies == Counter({"b": 1000}), got["cookie"].summary()
    assert got["other release"].bodies == Counter({"a": 1000})


# ---------------------------------------------------------------- sticky (issue 23)


def _sticky_request(address: str, jar: dict[str, str]) -> str:
    """One request with the client's cookies; keeps what the router sets. Returns the body."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        for value in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            jar[name.strip()] = rest.partition(";")[0]
        return body if resp.status == 200 else f"status {resp.status}"
    finally:
        conn.close()


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_sticky_clients_keep_their_release_until_it_leaves(
        router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    """Issue 23's figure: of 200 clients with cookies, 10 requests each over a canary that only
    goes forward, none sees two releases; on rollback every one is back on the old release."""
    a, b = servers(router, backend)
    a2, b2 = backend("a", "127.0.0.4"), backend("b", "127.0.0.5")   # two servers per release
    svc = spec(free_port()).model_copy(update={"rollout": Rollout(sticky=True)})
    jars: list[dict[str, str]] = [{} for _ in range(200)]
    seen: list[set[str]] = [set() for _ in range(200)]
    for rnd, new in enumerate([10, 10, 25, 25, 50, 50, 75, 75, 90, 90]):
        router.set_backends("web", svc, [Backend("web-r1", 100 - new, [a, a2]),
                                         Backend("web-r2", new, [b, b2])])
        for i in range(200):
            seen[i].add(_sticky_request(svc.listen, jars[i]))
        assert all(jars), f"round {rnd}: a client got no cookie"
    mixed = [i for i, s in enumerate(seen) if len(s) > 1]
    assert not mixed, f"{len(mixed)} clients saw two releases, e.g. {seen[mixed[0]]}"
    on_new = sum(1 for s in seen if s == {"b"})
    assert 0 < on_new < 200 and all(s <= {"a", "b"} for s in seen), on_new
    router.set_backends("web", svc, [Backend("web-r1", 100, [a, a2]),
                                     Backend("web-r2", 0, [b, b2])])
    back = Counter(_sticky_request(svc.listen, jar) for jar in jars)
    assert back == Counter({"a": 200}), back
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}


@pytest.mark.parametrize("router", REAL, indirect=True)
def test_not_sticky_sets_no_cookie(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    a, b = servers(router, backend)
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 50, [a]), Backend("web-r2", 50, [b])])
    jar: dict[str, str] = {}
    assert {_sticky_request(svc.listen, jar) for _ in range(20)} == {"a", "b"}
    assert jar == {}


@pytest.mark.parametrize("router", ALL, indirect=True)
def test_served_servers_read_back(router: AnyRouter, backend: Callable[[str, str], str]) -> None:
    """What the rollout confirms before it stops an instance (rolling retires servers of a
    release whose share does not change)."""
    a, b = servers(router, backend)
    typed: ServersReadBack = router
    svc = spec(free_port())
    c = "127.0.0.4:1" if isinstance(router, FakeRouter) else backend("c", "127.0.0.4")
    router.set_backends("web", svc, [Backend("web-r1", 50, [a, c]), Backend("web-r2", 50, [b])])
    assert typed.served_servers("web") == {"web-r1": {a, c}, "web-r2": {b}}
    router.set_backends("web", svc, [Backend("web-r1", 50, [c]), Backend("web-r2", 50, [b])])
    assert typed.served_servers("web") == {"web-r1": {c}, "web-r2": {b}}
    router.set_backends("web", svc, [Backend("web-r1", 0, [c]), Backend("web-r2", 100, [b])])
    assert typed.served_servers("web") == {"web-r2": {b}}


@pytest.mark.parametrize("router", [pytest.param("haproxy", marks=pytest.mark.e2e)],
                         indirect=True)
def test_haproxy_takes_another_exporter_port_when_its_own_was_taken_before_the_start(
        router: AnyRouter, backend: Callable[[str, str], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter's loopback port is picked free and bound by HAProxy a moment later; another
    process can bind it in between, and HAProxy then exits at start. kiln picks another port
    (once) instead of failing the deploy; the exporter answers there."""
    assert isinstance(router, HAProxyRouter)
    from kiln.platforms.local import traefik_process

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = int(taken.getsockname()[1])
    real = traefik_process.free_port
    picks = iter([port])
    monkeypatch.setattr(traefik_process, "free_port",
                        lambda host="127.0.0.1": next(picks, None) or real(host))
    try:
        a, _ = servers(router, backend)
        router.set_backends("web", spec(free_port()), [Backend("web-r1", 100, [a])])
        assert router.verify("web") == {"web-r1": 100}
        exporter = router.metrics_endpoint()
        assert exporter is not None and exporter["address"] != f"127.0.0.1:{port}"
        assert next(picks, None) is None  # the taken port was offered first
        auth = base64.b64encode(f"{exporter['username']}:{exporter['password']}".encode())
        host, _, exporter_port = exporter["address"].rpartition(":")
        conn = http.client.HTTPConnection(host, int(exporter_port), timeout=5)
        try:
            conn.request("GET", "/metrics", headers={"Authorization": b"Basic " + auth})
            answer = conn.getresponse()
            assert answer.status == 200 and b"haproxy_" in answer.read()
        finally:
            conn.close()
    finally:
        taken.close()
