"""The local router against a real Traefik on loopback, with tiny stdlib backends in threads."""

from __future__ import annotations

import builtins
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import PlatformError
from kiln.platforms.base import Backend
from kiln.platforms.local import router_files as router_module  # where router.json and configs are written
from kiln.platforms.local import traefik_config
from kiln.platforms.local.router import TraefikRouter
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.spec.models import ServiceSpec
from kiln.state.lock import pid_alive
from kiln.testing.project import free_port, wait_for

pytestmark = pytest.mark.e2e


def _handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stalls

        def do_GET(self) -> None:
            if self.path.startswith("/slow"):
                time.sleep(float(self.path.rpartition("/")[2] or 0.5))
            body = name.encode()
            # /status/500: that status (a release's 5xx is still a request it served)
            code = int(self.path.rpartition("/")[2]) if self.path.startswith("/status/") else 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # Traefik resets idle keep-alive connections; nothing to report


@pytest.fixture
def backend() -> Iterator[Callable[[str, str], str]]:
    """backend(name, host) -> 'host:port' of a server answering its name; stopped after."""
    servers: list[_Server] = []

    def start(name: str, host: str = "127.0.0.2") -> str:
        srv = _Server((host, 0), _handler(name))
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return f"{host}:{srv.server_address[1]}"

    yield start
    for srv in servers:
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
        finally:  # never leave a Traefik behind, even if stop() failed
            running = read_pidfile(r.pid_path)
            if running is not None and pid_alive(running.pid, running.start):
                os.kill(running.pid, signal.SIGKILL)


def spec(port: int, host: str = "127.0.0.1") -> ServiceSpec:
    return ServiceSpec(image="web", command="x", listen=f"{host}:{port}",
                       health={"path": "/healthz", "interval": "500ms", "timeout": "500ms"})


def get(address: str, path: str = "/") -> tuple[int, str]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def hits(address: str, n: int) -> Counter[str]:
    """n requests on one keep-alive connection: body -> count."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    out: Counter[str] = Counter()
    try:
        for _ in range(n):
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode()
            out[body if resp.status == 200 else f"status {resp.status}"] += 1
    finally:
        conn.close()
    return out


def test_ensure_running_restarts_a_killed_traefik_with_same_routing(
        router: TraefikRouter, backend: Callable[[str, str], str]) -> None:
    a, b = backend("a", "127.0.0.2"), backend("b", "127.0.0.3")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b])])
    first = read_pidfile(router.pid_path)
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not router.is_running())
    assert router.verify("web") == {}
    router.ensure_running()
    second = read_pidfile(router.pid_path)
    assert second is not None and second.pid != first.pid
    assert router.verify("web") == {"web-r1": 0, "web-r2": 100}
    assert hits(svc.listen, 10) == Counter({"b": 10})
    router.ensure_running()  # alive: nothing to do
    again = read_pidfile(router.pid_path)
    assert again is not None and again.pid == second.pid


def test_listen_in_use_is_a_platform_error(router: TraefikRouter,
                                           backend: Callable[[str, str], str]) -> None:
    a = backend("a", "127.0.0.2")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PlatformError) as err:
            router.set_backends("web", spec(port), [Backend("web-r1", 100, [a])])
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert str(err.value) == (f"127.0.0.1:{port} (services.web.listen) is already in use by "
                              f"pid {os.getpid()} ({comm}); choose another port there or stop it")
    assert not (router.dynamic_dir / "web.yml").exists()
    assert not router.is_running()


def test_a_new_service_adds_an_entrypoint_and_keeps_routing(
        router: TraefikRouter, backend: Callable[[str, str], str]) -> None:
    a, b = backend("a", "127.0.0.2"), backend("b", "127.0.0.3")
    web, api = spec(free_port()), spec(free_port(), "127.0.0.4")
    router.set_backends("web", web, [Backend("web-r1", 100, [a])])
    router.set_backends("api", api, [Backend("api-r1", 100, [b])])
    assert router.verify("web") == {"web-r1": 100}
    assert router.verify("api") == {"api-r1": 100}
    assert hits(web.listen, 5) == Counter({"a": 5})
    assert hits(api.listen, 5) == Counter({"b": 5})
    router.remove_service("api")
    assert router.verify("api") == {}
    assert get(api.listen)[0] == 404  # entrypoint kept until the next restart, no route
    assert hits(web.listen, 5) == Counter({"a": 5})


def test_access_log_names_the_release_service(router: TraefikRouter,
                                              backend: Callable[[str, str], str]) -> None:
    a = backend("a", "127.0.0.2")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    hits(svc.listen, 3)

    def lines() -> list[dict[str, Any]]:
        if not router.access_log_path.exists():
            return []
        rows = [json.loads(x) for x in router.access_log_path.read_text().splitlines() if x]
        return rows if len(rows) >= 3 else []

    rows = wait_for(lines)
    for row in rows:
        # The leaf release service, not the weighted parent: the judge relies on this.
        assert row["ServiceName"] == "kiln-web-r1@file"
        assert row["ServiceURL"] == f"http://{a}"
        assert row["RouterName"] == "kiln-web@file"
        assert row["DownstreamStatus"] == 200
        assert isinstance(row["Duration"], int) and row["Duration"] > 0
        assert row["StartUTC"].endswith("Z")


def test_open_requests_follow_a_slow_request_out(router: TraefikRouter,
                                                 backend: Callable[[str, str], str]) -> None:
    a, b = backend("a", "127.0.0.2"), backend("b", "127.0.0.3")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(svc.listen, "/slow/1.0")))
    slow.start()
    try:
        wait_for(lambda: router.open_requests("web-r1") >= 1)
        router.set_backends("web", svc, [Backend("web-r1", 0, [a]), Backend("web-r2", 100, [b])])
        assert router.open_requests("web-r1") >= 1  # the slow request is still in flight
        assert hits(svc.listen, 5) == Counter({"b": 5})
        assert router.wait_drained("web-r1", timeout=10)
    finally:
        slow.join(timeout=10)
    assert result == [(200, "a")]


def test_config_files_are_replaced_atomically(router: TraefikRouter,
                                              backend: Callable[[str, str], str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = backend("a", "127.0.0.2"), backend("b", "127.0.0.3")
    svc = spec(free_port())
    written: list[Path] = []
    real_open = builtins.open

    def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            written.append(Path(file).resolve())
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(router_module, "open", spy_open, raising=False)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:  # black-box: what Traefik's watcher could see in the folder
        while not stop.is_set():
            with contextlib.suppress(OSError):
                seen.update(os.listdir(router.dynamic_dir))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(10):
            router.set_backends("web", svc, [Backend("web-r1", 100 - 10 * i, [a]),
                                             Backend("web-r2", 10 * i, [b])])
    finally:
        stop.set()
        watcher.join(timeout=5)
    dynamic = router.dynamic_dir.resolve()
    assert written and not [p for p in written if p.parent == dynamic]
    assert seen == {"web.yml", "_admin.yml"}  # never a temporary file
    assert router.verify("web") == {"web-r1": 10, "web-r2": 90}


def test_all_weights_zero_serves_nothing(router: TraefikRouter,
                                         backend: Callable[[str, str], str]) -> None:
    a = backend("a", "127.0.0.2")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 0, [a])])
    assert router.verify("web") == {"web-r1": 0}
    assert get(svc.listen)[0] >= 500


def test_traefik_dying_at_start_reports_its_log(router: TraefikRouter,
                                                backend: Callable[[str, str], str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a = backend("a", "127.0.0.2")
    real = traefik_config.static_config

    def broken(**kwargs: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = real(**kwargs)
        cfg["entryPoints"]["kiln-web"]["address"] = "127.0.0.1:notaport"
        return cfg

    monkeypatch.setattr(traefik_config, "static_config", broken)
    with pytest.raises(PlatformError, match=r"(?s)traefik exited at start.*notaport"):
        router.set_backends("web", spec(free_port()), [Backend("web-r1", 100, [a])])
    assert not router.is_running()


def test_the_admin_api_and_metrics_need_the_projects_password(
        router: TraefikRouter, backend: Callable[[str, str], str]) -> None:
    a = backend("a", "127.0.0.2")
    svc = spec(free_port())
    router.set_backends("web", svc, [Backend("web-r1", 100, [a])])
    from kiln.platforms.local.traefik_process import http_get

    for path in ("/api/rawdata", "/api/http/services", "/metrics"):
        assert http_get(router.admin_url + path)[0] == 401, path
        assert http_get(router.admin_url + path,
                        headers={"Authorization": "Basic a2lsbjp3cm9uZw=="})[0] == 401
        assert http_get(router.admin_url + path, headers=router.admin_headers)[0] == 200
    assert http_get(router.admin_url + "/ping")[0] == 200  # liveness stays open
    assert router.verify("web") == {"web-r1": 100}
