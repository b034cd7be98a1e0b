"""kiln serve's HTTP side without a platform: who may read, who may change, what is recorded;
the token file, the listen address, the metrics, the lock and the controller role."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import KilnError, LockHeld
from kiln.serve import _write_token, load_token, parse_listen
from kiln.serve.metrics import ServeMetrics
from kiln.serve.pages import fragments
from kiln.serve.web import App, Server, csrf_for
from kiln.state.controller import claim, release, running
from kiln.state.lock import CONTROLLER_COMMAND, pid_start_time, project_lock
from kiln.state.store import Store

TOKEN = "t0ken-for-tests"

STATE: dict[str, Any] = {
    "project": "shop", "router": {"needed": True, "running": True}, "events": [],
    "drift": {"at": None, "items": []},
    "services": [{
        "service": "web", "listen": "127.0.0.1:8080", "strategy": "canary", "replicas": 2,
        "current": "web-r1", "retained": [], "images": [], "history": [],
        "releases": [{"release": "web-r1", "weight": 90, "image": "sha256:" + "a" * 64,
                      "instances": [{"id": "web-r1-x", "address": "127.0.0.2:8000",
                                     "state": "running", "alive": True, "healthy": True}]},
                     {"release": "web-r2", "weight": 10, "image": "sha256:" + "b" * 64,
                      "instances": []}],
        "rollout": {"rollout_id": 2, "release": "web-r2", "from": "web-r1", "strategy": "canary",
                    "phase": "step", "outcome": None, "reason": None, "step": 0, "steps": 2,
                    "weights": {"web-r1": 90, "web-r2": 10}, "waiting": "waiting for promote",
                    "open": True, "standby_until": None, "phase_label": "canary step 1 (10%)",
                    "decisions": [], "chart": None, "actions": ["promote", "abort"],
                    "judge_line": "undecided: 40 of 100 requests; run `kiln promote` to skip",
                    "step_list": [{"step": 1, "weight": 10, "hold": "until promoted",
                                   "state": "current", "judge": None},
                                  {"step": 2, "weight": 50, "hold": "30s", "state": "pending",
                                   "judge": None}]}}],
}


class StubBoard:
    """The Board's reading side, with a fixed state."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 1
        self.frags = fragments(STATE)

    def snapshot(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.version, STATE, self.frags

    def wait(self, after: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.version > after, timeout)
            return self.version


@dataclass
class Running:
    url: str
    host: str
    home: Path
    calls: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)

    def events(self, kind: str) -> list[Any]:
        st = Store.open(self.home)
        try:
            return [dict(r) for r in st.query("SELECT * FROM events WHERE kind = ?", (kind,))]
        finally:
            st.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    Store.open(tmp_path).close()
    srv = Server(("127.0.0.1", 0))
    port = srv.server_address[1]
    run = Running(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", tmp_path)

    def act(service: str, action: str, params: dict[str, str], who: str) -> dict[str, Any]:
        if service != "web":
            raise KilnError(f"no service named {service!r}")
        run.calls.append((service, action, params, who))
        return {"service": service, "outcome": "signalled", "reason": f"{action} taken"}

    srv.app = App(StubBoard(), ServeMetrics(lambda: Store.open(tmp_path)), TOKEN,  # type: ignore[arg-type]
                  act, lambda: Store.open(tmp_path), lambda rid: None, "127.0.0.1", port)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield run
    finally:
        srv.app.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def call(url: str, *, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_reading_needs_no_token_and_no_javascript(server: Running) -> None:
    code, _, page = call(server.url + "/")
    assert code == 200 and "Read-only" in page
    # Everything is in the HTML: weights, instances, the rollout's step and its buttons.
    assert 'data-weight="web-r2">10%' in page and "canary step 1 (10%)" in page
    assert "127.0.0.2:8000" in page
    # ... but no buttons without the token (they would only be refused).
    assert "<form" not in page and "<button" not in page
    # The steps as Argo lists them, and the judge's live view in words, backticks as code.
    assert 'data-step-state="current"' in page and "step 2: set weight 50% · hold 30s" in page
    assert "judge: <b>not decided yet</b> — 40 of 100 requests; run <code>kiln promote</code>" \
        in page and "`" not in page.split('id="board"')[1].split("</main>")[0]
    code, _, body = call(server.url + "/api/status")
    assert code == 200 and json.loads(body)["services"][0]["current"] == "web-r1"
    code, headers, js = call(server.url + "/static/uPlot.iife.min.js")
    assert code == 200 and "uPlot" in js and headers["Content-Type"].startswith("text/javascript")
    assert call(server.url + "/static/../state.db")[0] == 404


def test_foreign_host_header_is_refused(server: Running) -> None:
    """DNS rebinding: a page on another name that resolves to loopback gets nothing."""
    assert call(server.url + "/api/status", headers={"Host": "evil.example:80"})[0] == 421


def test_api_mutation_needs_the_bearer_token(server: Running) -> None:
    url = server.url + "/api/services/web/promote"
    code, _, body = call(url, method="POST", body=b"{}")
    assert code == 401 and "token" in json.loads(body)["error"]
    assert call(url, method="POST", body=b"{}",
                headers={"Authorization": "Bearer wrong"})[0] == 401
    assert server.calls == []
    refused = server.events("serve.refused")
    assert len(refused) == 2 and "promote web" in refused[0]["message"]
    code, _, body = call(url, method="POST", body=b"{}",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and json.loads(body)["reason"] == "promote taken"
    assert server.calls == [("web", "promote", {}, "api")]
    code, _, body = call(server.url + "/api/services/web/rollback", method="POST",
                         body=json.dumps({"to": "web-r1"}).encode(),
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and server.calls[-1] == ("web", "rollback", {"to": "web-r1"}, "api")
    code, _, body = call(server.url + "/api/services/nope/abort", method="POST",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 400 and "no service named" in json.loads(body)["error"]
    accepted = server.events("serve.request")
    assert len(accepted) == 3 and json.loads(accepted[0]["data_json"])["via"] == "api"


def test_forms_need_the_cookie_the_csrf_value_and_the_same_origin(server: Running) -> None:
    code, headers, _ = call(server.url + "/?token=wrong")
    assert code == 403
    code, headers, _ = call(server.url + f"/?token={TOKEN}")
    assert code == 303 and "HttpOnly" in headers["Set-Cookie"]
    assert "SameSite=Strict" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";")[0]
    code, _, page = call(server.url + "/", headers={"Cookie": cookie})
    csrf = csrf_for(TOKEN)
    assert "Read-only" not in page and csrf in page
    assert 'action="/services/web/promote"' in page
    assert 'action="/services/web/abort" class="inline" data-confirm="Abort rollout of web?' \
        in page
    url = server.url + "/services/web/promote"
    form = f"csrf={csrf}".encode()
    assert call(url, method="POST", body=form)[0] == 403  # no cookie
    assert call(url, method="POST", body=b"csrf=x", headers={"Cookie": cookie})[0] == 403
    assert call(url, method="POST", body=form, headers={
        "Cookie": cookie, "Origin": "http://evil.example"})[0] == 403
    assert call(url, method="POST", body=form, headers={
        "Cookie": cookie, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert server.calls == []
    code, headers, _ = call(url, method="POST", body=form, headers={
        "Cookie": cookie, "Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    assert code == 303 and headers["Location"] == "/"
    assert server.calls == [("web", "promote", {}, "dashboard")]
    assert len(server.events("serve.refused")) == 4


def test_destructive_forms_ask_first_without_javascript(server: Running) -> None:
    cookie = call(server.url + f"/?token={TOKEN}")[1]["Set-Cookie"].split(";")[0]
    csrf = csrf_for(TOKEN)
    headers = {"Cookie": cookie, "Origin": server.url}
    url = server.url + "/services/web/rollback"
    code, _, asked = call(url, method="POST", body=f"csrf={csrf}&to=web-r0".encode(),
                          headers=headers)
    assert code == 200 and "Roll back web?" in asked and server.calls == []
    assert 'name="to" value="web-r0"' in asked and 'name="confirmed" value="yes"' in asked
    code, hdrs, _ = call(url, method="POST", body=f"csrf={csrf}&to=web-r0&confirmed=yes"
                         .encode(), headers=headers)
    assert code == 303 and hdrs["Location"] == "/"
    assert server.calls == [("web", "rollback", {"to": "web-r0"}, "dashboard")]


def test_drift_before_any_check_says_so() -> None:
    never = fragments({**STATE, "drift": {"at": None, "items": []}})["board"]
    assert "not checked yet" in never and "no drift" not in never and "–" not in never
    clean = fragments({**STATE, "drift": {"at": 1.0e9, "items": []}})["board"]
    assert "last checked" in clean and "no drift" in clean
    found = fragments({**STATE, "drift": {"at": 1.0e9, "items": [
        {"kind": "replicas", "detail": "web-r1 runs 1 of `2`", "service": "web"}]}})["board"]
    assert "1 item(s)" in found and "runs 1 of <code>2</code>" in found


def test_events_stream_sends_the_board(server: Running) -> None:
    req = urllib.request.Request(server.url + "/events")
    with OPENER.open(req, timeout=5) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        lines = [resp.readline().decode().strip() for _ in range(3)]
    assert lines[0] == "id: 1" and lines[1] == "event: board"
    data = json.loads(lines[2].removeprefix("data: "))
    assert data["version"] == 1 and "web-r2" in data["board"]


def test_metrics_read_the_state(server: Running) -> None:
    st = Store.open(server.home)
    with st.tx() as c:
        c.execute("INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
                  "status_json, outcome, started_at, updated_at) VALUES ('web', 'web-r1', "
                  "'web-r2', 'canary', 'done', ?, 'rolled_back', 0, 0)",
                  (json.dumps({"decisions": [{"outcome": "fail"}, {"outcome": "inconclusive"}]}),))
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'web-r1', 100)")
    st.close()
    code, _, text = call(server.url + "/metrics")
    assert code == 200
    assert 'kiln_rollouts_total{outcome="rolled_back",service="web"} 1.0' in text
    assert 'kiln_judge_verdicts_total{outcome="fail",service="web"} 1.0' in text
    assert 'kiln_route_weight{release="web-r1",service="web"} 100.0' in text
    assert "kiln_reconcile_duration_seconds_bucket" in text


def test_token_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "serve.token"
    path.write_text("old")
    os.chmod(path, 0o644)
    _write_token(path, "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "secret\n"


def test_token_is_kept_until_rotated_and_replaced_when_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "serve.token"
    first, why = load_token(path)
    assert why == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(path) == (first, "kept")
    rotated, why = load_token(path, rotate=True)
    assert why == "rotated" and rotated != first and path.read_text() == rotated + "\n"
    os.chmod(path, 0o644)
    loose, why = load_token(path)
    assert loose != rotated and why == "new (the old file was mode 0644)"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("short\n")
    os.chmod(path, 0o600)
    assert load_token(path)[1] == "new (the old file held no token)"
    target = tmp_path / "elsewhere"
    target.write_text("x" * 40)
    os.chmod(target, 0o600)
    path.unlink()
    path.symlink_to(target)
    linked, why = load_token(path)
    assert why.startswith("new") and linked != "x" * 40
    assert not path.is_symlink() and target.read_text() == "x" * 40


@pytest.mark.parametrize("listen", ["0.0.0.0:8600", "192.168.1.4:80", "127.0.0.1", "x:y",
                                    "127.0.0.1:70000"])
def test_listen_must_be_loopback(listen: str) -> None:
    with pytest.raises(KilnError, match="--listen"):
        parse_listen(listen)


def test_listen_parses() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8600") == ("::1", 8600)
    assert parse_listen("localhost:8600") == ("localhost", 8600)


def _foreign_lock(store: Store, command: str) -> None:
    """Pretend another live process (pid 1) holds the lock."""
    with store.tx() as c:
        c.execute("INSERT OR REPLACE INTO lock(id, pid, pid_start, host, command, started_at) "
                  "VALUES (1, 1, ?, ?, ?, ?)",
                  (pid_start_time(1), socket.gethostname(), command, time.time()))


def test_commands_wait_for_a_controller_pass_but_not_for_other_commands(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    _foreign_lock(store, f"{CONTROLLER_COMMAND}: reconcile")

    def end_pass() -> None:
        time.sleep(0.3)
        other = Store.open(tmp_path)
        with other.tx() as c:
            c.execute("DELETE FROM lock")
        other.close()

    threading.Thread(target=end_pass).start()
    t0 = time.monotonic()
    with project_lock(store, "deploy web"):
        assert time.monotonic() - t0 >= 0.25
    _foreign_lock(store, "deploy web")
    with pytest.raises(LockHeld, match="deploy web"), project_lock(store, "deploy api"):
        pass
    _foreign_lock(store, f"{CONTROLLER_COMMAND}: reconcile")
    with pytest.raises(LockHeld, match="kiln serve"), project_lock(store, "deploy api",
                                                                   controller_wait=0.2):
        pass
    store.close()


def test_one_controller_per_project(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    me = claim(store, "127.0.0.1:1")
    assert me.pid == os.getpid() and running(store) is None  # our own role is not "another"
    release(store)
    with store.tx() as c:  # a live other process holds it
        c.execute("INSERT INTO controller(id, pid, pid_start, host, listen, started_at, heartbeat)"
                  " VALUES (1, 1, ?, ?, '127.0.0.1:2', ?, ?)",
                  (pid_start_time(1), socket.gethostname(), time.time(), time.time()))
    found = running(store)
    assert found is not None and found.pid == 1 and found.listen == "127.0.0.1:2"
    with pytest.raises(LockHeld, match="another controller"):
        claim(store, "127.0.0.1:3")
    with store.tx() as c:  # its process is gone: taken over
        c.execute("UPDATE controller SET pid = 999999999, pid_start = 'x'")
    assert running(store) is None
    claim(store, "127.0.0.1:3")
    kinds = [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")]
    assert kinds.count("controller.started") == 2 and "controller.takeover" in kinds
    release(store)
    store.close()
