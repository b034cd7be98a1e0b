"""The bundled example: its spec validates, its app serves and drains, its image tests pass."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.spec.loader import load_spec
from kiln.testing.project import free_port

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"


def test_example_spec_is_valid() -> None:
    spec = load_spec(SHOP / "kiln.yaml").spec
    assert spec.project == "shop"
    svc = spec.services["web"]
    assert (svc.replicas, svc.port, svc.listen) == (3, 8000, "127.0.0.1:8080")
    assert svc.health.interval == 0.5
    assert [s.weight for s in svc.rollout.steps] == [20, 50]
    assert svc.rollout.analysis is not None
    # The demo's load (150 req/s) brings a faultless canary the evidence for a pass within the
    # first step's pause (the reasoning in the spec's comments).
    from kiln.analysis.judge import requests_to_pass

    first = svc.rollout.steps[0]
    need = requests_to_pass(svc.rollout.analysis, baseline_ratio=(100 - first.weight) / first.weight)
    assert need / (150 * first.weight / 100) < (first.pause or 0)
    behaviour = json.loads((SHOP / "app" / "behaviour.json").read_text())
    assert behaviour == {"version": "1", "error_rate": 0.0, "extra_latency_ms": 0}


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def image_root(tmp_path: Path, behaviour: dict[str, object]) -> Path:
    """What the bake steps produce: app/ copied into a fresh root, behaviour.json edited."""
    root = tmp_path / "image"
    (root / "app").mkdir(parents=True)
    for src in (SHOP / "app").iterdir():
        if src.is_file():
            (root / "app" / src.name).write_bytes(src.read_bytes())
    (root / "app" / "behaviour.json").write_text(json.dumps(behaviour))
    return root


class App:
    def __init__(self, root: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "GREETING": "hej",
               "KILN_INSTANCE": "web-1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=root, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if get(self.url + "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"app did not start: {self.proc.communicate()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[object]:
    apps: list[App] = []

    def start(behaviour: dict[str, object]) -> App:
        app = App(image_root(tmp_path / str(len(apps)), behaviour), free_port())
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.mark.e2e
def test_app_endpoints_and_faults(start_app) -> None:  # type: ignore[no-untyped-def]
    good = start_app({"version": "2", "error_rate": 0.0, "extra_latency_ms": 0})
    assert get(good.url + "/healthz") == (200, "ok\n")
    assert get(good.url + "/") == (200, "hej from shop version 2 (instance web-1)\n")
    assert json.loads(get(good.url + "/version")[1]) == {"version": "2", "instance": "web-1"}
    assert get(good.url + "/nope")[0] == 404

    bad = start_app({"version": "3", "error_rate": 1.0, "extra_latency_ms": 200})
    assert get(bad.url + "/healthz") == (200, "ok\n")  # faults never hit health checks
    began = time.monotonic()
    assert get(bad.url + "/")[0] == 500
    assert time.monotonic() - began >= 0.2


@pytest.mark.e2e
def test_checkout_counters_in_prometheus_text_format(start_app) -> None:  # type: ignore[no-untyped-def]
    """Every `/` answered 200 is a checkout; failing ones still answer 200 (only the counter
    tells), and /metrics parses as Prometheus' text format."""
    from prometheus_client.parser import text_string_to_metric_families

    def counters(app: App) -> dict[str, float]:
        status, text = get(app.url + "/metrics")
        assert status == 200
        return {s.name: s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples}

    good = start_app({"version": "2"})
    assert counters(good) == {"checkout_total": 0.0, "checkout_failures_total": 0.0}
    for _ in range(5):
        get(good.url + "/")
    get(good.url + "/healthz")  # not a checkout
    assert counters(good) == {"checkout_total": 5.0, "checkout_failures_total": 0.0}

    bad = start_app({"version": "3", "checkout_failure_rate": 1.0})
    for _ in range(4):
        assert get(bad.url + "/") == (200, "hej from shop version 3 (instance web-1): order "
                                           "not placed, sorry\n")
    assert counters(bad) == {"checkout_total": 4.0, "checkout_failures_total": 4.0}


@pytest.mark.e2e
def test_sigterm_finishes_in_flight_requests(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app({"version": "1", "error_rate": 0.0, "extra_latency_ms": 800})
    port = int(app.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        # Connections are accepted in order: once this later one is answered, the slow one
        # has been accepted too (and is counted as in flight).
        assert get(app.url + "/healthz")[0] == 200
        app.proc.send_signal(signal.SIGTERM)
        response = b""
        while chunk := slow.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert response.endswith(b"hej from shop version 1 (instance web-1)\n")
    assert app.proc.wait(timeout=10) == 0
    with pytest.raises(OSError):
        get(app.url + "/healthz", timeout=1)


@pytest.mark.e2e
def test_image_tests_pass_on_the_example(tmp_path: Path) -> None:
    root = image_root(tmp_path, {"version": "1", "error_rate": 0.0, "extra_latency_ms": 0})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(SHOP / "tests" / "image")], cwd=root, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
