"""Synthetic load (`rollout.load`): the spec's bounds, the sender's rate and time bound, the
driver that runs it only during judged canary steps, and how it is shown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from kiln.plan_evidence import estimate
from kiln.rollout.decide import start
from kiln.rollout.synthetic import HEADER, Sender, StepLoad, synthetic_words, target
from kiln.spec.models import Rollout, ServiceSpec
from kiln.testing.project import wait_for


class App:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.status = 200


@pytest.fixture
def app() -> Iterator[tuple[App, int]]:
    state = App()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.seen.append(("GET", self.path, self.headers.get(HEADER)))
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("load", "where", "expected"), [
    ({"rate": "20"}, "load.rate", "expected a rate like 20/s, got '20'"),
    ({"rate": "fast"}, "load.rate", "expected a rate like 20/s"),
    ({"rate": "0/s"}, "load.rate", "above 0 and at most 1000/s"),
    ({"rate": "5000/s"}, "load.rate", "above 0 and at most 1000/s"),
    ({"rate": "20/s", "method": "POST"}, "load.method", "only GET is sent"),
    ({"rate": "20/s", "path": "search"}, "load.path", "expected a path starting with /"),
    ({"rate": "20/s", "path": ["/", "x y"]}, "load.path", "expected a path starting with /"),
    ({"path": "/"}, "load.rate", "Field required"),
])
def test_bad_load_is_refused(load: dict[str, object], where: str, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        Rollout.model_validate({"load": load, "analysis": {}})
    assert where in str(err.value) and expected in str(err.value)


def test_good_load() -> None:
    ro = Rollout.model_validate({"load": {"path": ["/", "/search?q=a"], "rate": "600/m"},
                                 "analysis": {}})
    assert ro.load is not None
    assert (ro.load.paths, ro.load.rate, ro.load.method) == (["/", "/search?q=a"], 10.0, "GET")
    assert Rollout().load is None  # off by default
    for unjudged in ({}, {"strategy": "blue-green", "analysis": {}}):
        with pytest.raises(ValidationError, match="needs strategy canary and an analysis"):
            Rollout.model_validate({**unjudged, "load": {"rate": "5/s"}})
    assert target("0.0.0.0:8080") == ("127.0.0.1", 8080)
    assert target("127.0.0.5:81") == ("127.0.0.5", 81)


def test_sender_keeps_its_rate_paths_and_time_bound(app: tuple[App, int]) -> None:
    state, port = app
    s = Sender("127.0.0.1", port, ["/a", "/b"], 50.0, time.monotonic() + 1.0, tag="7")
    s.start()
    wait_for(lambda: not s.running, timeout=10, what="the sender to stop at its time bound")
    assert 40 <= s.sent <= 50 and s.errors == 0, s.sent
    assert {p for _, p, _ in state.seen} == {"/a", "/b"}
    assert {m for m, _, _ in state.seen} == {"GET"} and {t for _, _, t in state.seen} == {"7"}


def test_sender_counts_failures_and_stops_when_asked(app: tuple[App, int]) -> None:
    state, port = app
    state.status = 503
    s = Sender("127.0.0.1", port, ["/"], 100.0, time.monotonic() + 60.0)
    s.start()
    wait_for(lambda: s.sent >= 10, what="10 requests")
    s.stop()
    assert not s.running and s.errors == s.sent
    sent = s.sent
    time.sleep(0.2)  # nothing may be sent after stop(): check that the count stays put
    assert s.sent == sent


class Recorder:
    """A Sender stand-in recording what the driver asked for."""

    made: ClassVar[list[Recorder]] = []

    def __init__(self, host: str, port: int, paths: list[str], rate: float, until: float,
                 tag: str = "1") -> None:
        self.args = (host, port, paths, rate)
        self.left = until - time.monotonic()
        self.sent, self.errors, self.running, self.stopped = 0, 0, False, False
        Recorder.made.append(self)

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running, self.stopped = False, True


def test_driver_runs_only_during_judged_steps() -> None:
    Recorder.made = []
    ro = Rollout.model_validate({"steps": [{"weight": 10, "pause": "30s"},
                                           {"weight": 50, "pause": "10s"}],
                                 "progress_deadline": "60s", "analysis": {},
                                 "load": {"path": "/", "rate": "20/s"}})
    drv = StepLoad(ro, "127.0.0.1:8080", make=Recorder)
    st = start("canary", "web-r2", "web-r1", 1, 1000.0)
    st.phase = "health"
    assert drv.sync(st, 1000.0) is None and not Recorder.made
    st.phase, st.step, st.step_started, st.weights = "step", 0, 1000.0, {"web-r2": 10,
                                                                          "web-r1": 90}
    seen = drv.sync(st, 1000.0)
    assert len(Recorder.made) == 1 and Recorder.made[0].args == ("127.0.0.1", 8080, ["/"], 20.0)
    assert Recorder.made[0].left == pytest.approx(90.0, abs=1.0)  # pause + progress_deadline
    assert seen == {"paths": ["/"], "rate": 20.0, "sent": 0, "errors": 0, "running": True}
    drv.sync(st, 1001.0)
    assert len(Recorder.made) == 1  # the same step: the same sender
    Recorder.made[0].sent = 40
    st.step, st.step_started, st.weights = 1, 1002.0, {"web-r2": 50, "web-r1": 50}
    seen = drv.sync(st, 1002.0)
    assert Recorder.made[0].stopped and len(Recorder.made) == 2
    assert Recorder.made[1].left == pytest.approx(70.0, abs=1.0)
    assert seen is not None and seen["sent"] == 40
    st.phase = "drain_old"
    seen = drv.sync(st, 1003.0)
    assert Recorder.made[1].stopped and seen is not None and seen["running"] is False


def test_a_resumed_driver_keeps_the_counts_and_the_steps_time_bound() -> None:
    Recorder.made = []
    ro = Rollout.model_validate({"steps": [{"weight": 10, "pause": "30s"}],
                                 "progress_deadline": "60s", "analysis": {},
                                 "load": {"path": "/", "rate": "20/s", "max_duration": "40s"}})
    st = start("canary", "web-r2", "web-r1", 1, 1000.0)
    st.phase, st.step_started, st.weights = "step", time.time() - 30, {"web-r2": 10, "web-r1": 90}
    st.synthetic = {"paths": ["/"], "rate": 20.0, "sent": 600, "errors": 2, "running": True}
    drv = StepLoad(ro, "127.0.0.1:8080", make=Recorder)
    seen = drv.sync(st, time.time())
    assert Recorder.made[0].left == pytest.approx(10.0, abs=1.0)  # 40 s from the step's start
    assert seen is not None and (seen["sent"], seen["errors"]) == (600, 2)
    drv.close()
    assert Recorder.made[0].stopped
    # past its bound: nothing is started again
    Recorder.made = []
    st.step_started = time.time() - 50
    drv2 = StepLoad(ro, "127.0.0.1:8080", make=Recorder)
    drv2.sync(st, time.time())
    assert not Recorder.made


def test_shown_in_words() -> None:
    assert synthetic_words(None) == ""
    assert synthetic_words({"paths": ["/"], "rate": 20.0, "sent": 412, "errors": 0,
                            "running": True}) == "synthetic load: 412 GETs to / at 20/s, running"
    assert "(3 failed)" in synthetic_words({"paths": ["/", "/a"], "rate": 5.0, "sent": 9,
                                            "errors": 3, "running": False})


def test_plan_counts_the_synthetic_rate() -> None:
    base = {"image": "web", "command": "x", "listen": "127.0.0.1:8080",
            "rollout": {"steps": [{"weight": 10, "pause": "30s"}], "analysis": {}}}
    quiet = estimate("web", ServiceSpec.model_validate(base), 1.0)
    assert quiet is not None and quiet["warning"] is not None
    assert "synthetic load (rollout.load)" in quiet["warning"]
    loaded = ServiceSpec.model_validate({**base, "rollout": {**base["rollout"],  # type: ignore[dict-item]
                                                             "load": {"rate": "20/s"}}})
    est = estimate("web", loaded, 1.0)
    assert est is not None and est["warning"] is None and est["synthetic_rate"] == 20.0
    assert est["steps"][0]["seconds"] == pytest.approx(481 / 2.1, rel=0.01)
    from kiln.plan_evidence import estimate_words

    assert estimate_words(est) == ("time to evidence at 1.0 req/s (+20 synthetic): "
                                   "10% step ~481 canary requests, ~4m")
    assert estimate_words(quiet).endswith("10% step ~481 canary requests, ~1.3h")


def test_bad_load_in_kiln_yaml_is_one_line_each(tmp_path: Path) -> None:
    from kiln.errors import SpecError
    from kiln.spec.loader import load_spec

    spec = tmp_path / "kiln.yaml"
    spec.write_text("project: shop\nimages:\n  web:\n    steps: []\nservices:\n  web:\n"
                    "    image: web\n    command: python -m app\n    listen: 127.0.0.1:8080\n"
                    "    rollout:\n      analysis: {}\n"
                    "      load: {path: search, rate: 20, method: POST}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    lines = str(err.value).splitlines()
    assert any(line.startswith(f"{spec}:12:") and "rollout.load.rate: expected a rate like "
               "20/s, got 20" in line for line in lines), lines
    assert any("rollout.load.path: expected a path starting with /" in line for line in lines)
    assert any("rollout.load.method: only GET is sent" in line for line in lines)


def test_dashboard_and_report_say_it_was_synthetic() -> None:
    from kiln.analysis.report import ReportData, render
    from kiln.serve.pages import service_card

    seen = {"paths": ["/"], "rate": 20.0, "sent": 412, "errors": 0, "running": True}
    svc = {"service": "web", "listen": "127.0.0.1:8080", "strategy": "canary", "replicas": 1,
           "current": "web-r1", "retained": [], "images": [], "history": [],
           "releases": [{"release": "web-r1", "weight": 90, "instances": []},
                        {"release": "web-r2", "weight": 10, "instances": []}],
           "rollout": {"rollout_id": 2, "release": "web-r2", "from": "web-r1",
                       "strategy": "canary", "phase": "step", "outcome": None, "reason": None,
                       "step": 0, "steps": 2, "weights": {"web-r1": 90, "web-r2": 10},
                       "waiting": None, "open": True, "standby_until": None,
                       "phase_label": "canary step 1 (10%)", "decisions": [], "chart": None,
                       "evidence": None, "synthetic": seen}}
    assert "synthetic load: 412 GETs to / at 20/s, running" in service_card(svc)
    svc["rollout"]["synthetic"] = None  # type: ignore[index]
    assert "synthetic load" not in service_card(svc)
    data = ReportData("web", "web-r2", "web-r1", 0.0, synthetic="synthetic load: 412 GETs")
    assert "Synthetic traffic." in render(data)
    assert "Synthetic traffic." not in render(ReportData("web", "web-r2", "web-r1", 0.0))
