"""`notify:` webhooks: a receiver on loopback gets every event of a whole rollout, signed
(HMAC-SHA256 of the body); a failing receiver is retried with backoff; a slow one never holds
the sender; a delivery that never succeeds is kept for status."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import SpecError
from kiln.notify import Notifier, sign
from kiln.platforms.fake.compute import FakeCompute
from kiln.project import Project
from kiln.spec.models import Hook, Spec
from kiln.testing.project import wait_for

SECRET = "s3cret-for-tests"


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[dict[str, Any], str, bytes]] = []
        self.fail_first = 0
        self.delay = 0.0
        self.lock = threading.Lock()


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(rec.delay)
            with rec.lock:
                if rec.fail_first > 0:
                    rec.fail_first -= 1
                    code = 500
                else:
                    rec.got.append((json.loads(body), self.headers.get("X-Kiln-Signature", ""),
                                    body))
                    code = 204
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def verified(rec: Receiver) -> list[dict[str, Any]]:
    """The events whose signature checks out (all of them, or the test fails)."""
    out = []
    for event, signature, body in rec.got:
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, want), (signature, event)
        out.append(event)
    return out


def test_events_are_signed_retried_and_filtered(receiver: tuple[str, Receiver],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, rec = receiver
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    rec.fail_first = 2  # two 500s, then accepted: the third attempt delivers
    n = Notifier([Hook(url=url, secret="env:HOOK_SECRET", events=["rollout.*"])], "shop",
                 backoff=(0.05, 0.1, 0.2))
    try:
        n.send("rollout.rolled_back", "checkout_failures: rate 5.00% vs 1.00%", "web", {"step": 1})
        n.send("instance.replaced", "not wanted by this hook", "web")
        wait_for(lambda: len(rec.got) == 1, timeout=10)
    finally:
        n.close()
    (event,) = verified(rec)
    assert event["event"] == "rollout.rolled_back" and event["service"] == "web"
    assert event["data"] == {"step": 1} and event["project"] == "shop"
    assert event["text"] == ("kiln shop/web: rollout.rolled_back: checkout_failures: rate 5.00% "
                             "vs 1.00%")
    assert n.delivered == 1 and not n.failed


def test_a_slow_receiver_never_holds_the_sender(receiver: tuple[str, Receiver]) -> None:
    url, rec = receiver
    rec.delay = 0.3  # inline, five sends would take 1.5 s: far over the 0.2 s allowed
    n = Notifier([Hook(url=url)], "shop")
    try:
        began = time.monotonic()
        for i in range(5):
            n.send("rollout.step", f"step {i}", "web")
        assert time.monotonic() - began < 0.2  # queued, not sent inline
        wait_for(lambda: len(rec.got) == 5, timeout=20)
    finally:
        n.close()
    assert [e["message"] for e, _, _ in rec.got] == [f"step {i}" for i in range(5)]  # in order
    assert all(sig == "" for _, sig, _ in rec.got)  # no secret: no signature header


def test_a_delivery_that_never_succeeds_is_kept_for_status() -> None:
    n = Notifier([Hook(url="http://127.0.0.1:9/hook")], "shop", backoff=(0.01, 0.01))
    try:
        n.send("rollout.promoted", "web-r2 is live", "web")
        wait_for(lambda: len(n.failed) == 1, timeout=10)
    finally:
        n.close()
    failed = n.failed[0]
    assert (failed.url, failed.event) == ("http://127.0.0.1:9/hook", "rollout.promoted")
    assert "refused" in failed.error.lower(), failed.error


def test_a_missing_secret_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_NO_SUCH_SECRET", raising=False)
    with pytest.raises(SpecError, match=r"^notify: secret env:KILN_NO_SUCH_SECRET is not set"):
        Notifier([Hook(url="http://127.0.0.1:9/", secret="env:KILN_NO_SUCH_SECRET")], "shop")


def test_sign_is_hmac_sha256_of_the_body() -> None:
    assert sign(b"key", b"body") == (
        "sha256=" + hmac.new(b"key", b"body", hashlib.sha256).hexdigest())


def test_a_receiver_gets_signed_events_for_a_whole_rollout(
        tmp_path: Path, receiver: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch) -> None:
    from test_serve_controller import FakePlatform  # the fake platform the controller tests use

    url, rec = receiver
    monkeypatch.setenv("HOOK_SECRET", SECRET)

    def spec(version: str) -> Spec:
        return Spec.model_validate({
            "project": "hooks",
            "notify": [{"url": url, "secret": "env:HOOK_SECRET"}],
            "images": {"web": {"base": "python", "steps": [{"env": {"VERSION": version}}]}},
            "services": {"web": {
                "image": "web", "command": "python -m app", "listen": "127.0.0.1:9",
                "replicas": 2, "health": {"interval": "1s", "deadline": "5s"},
                "rollout": {"strategy": "canary", "drain_timeout": "0s",
                            "steps": [{"weight": 10, "pause": 0}, {"weight": 50, "pause": 0}]}}}})

    platform = FakePlatform(FakeCompute())
    v1 = Project(spec("1"), tmp_path / "kiln.yaml", tmp_path, tmp_path / ".kiln",
                 platform=platform)  # type: ignore[arg-type]
    v2 = Project(spec("2"), tmp_path / "kiln.yaml", tmp_path, tmp_path / ".kiln",
                 platform=platform)  # type: ignore[arg-type]
    try:
        platform.compute.store = v1.store
        assert v1.deploy().services[0].outcome == "promoted"
        assert v2.deploy().services[0].outcome == "promoted"
    finally:
        v1.close()  # close delivers what is queued
        v2.close()
    events = verified(rec)
    recorded = [str(r["kind"]) for r in Project(spec("2"), tmp_path / "kiln.yaml", tmp_path,
                                                tmp_path / ".kiln").store.query(
        "SELECT kind FROM events WHERE kind LIKE 'rollout.%' ORDER BY id")]
    # Every rollout event recorded in the state was POSTed, in order, signed.
    assert [e["event"] for e in events if e["event"].startswith("rollout.")] == recorded
    assert "rollout.step" in recorded and recorded[-1] == "rollout.promoted"
    assert all(e["service"] == "web" and e["project"] == "hooks" for e in events)
