"""FakeRouter keeps the Router contract the core relies on."""

from __future__ import annotations

import pytest

from kiln.errors import PlatformError
from kiln.platforms.base import Backend, Router
from kiln.platforms.fake.router import FakeRouter
from kiln.spec.models import ServiceSpec

SVC = ServiceSpec(image="web", command="python -m app", listen="127.0.0.1:8080")


def test_is_a_router() -> None:
    router: Router = FakeRouter()
    router.ensure_running()


def test_weights_round_trip_and_crash() -> None:
    r = FakeRouter()
    r.set_backends("web", SVC, [Backend("web-r1", 90, ["127.0.0.2:8000"]),
                                Backend("web-r2", 10, ["127.0.0.3:8000"])])
    assert r.verify("web") == {"web-r1": 90, "web-r2": 10}
    r.crash()
    assert r.verify("web") == {}
    r.ensure_running()
    assert r.verify("web") == {"web-r1": 90, "web-r2": 10}
    assert r.starts == 2
    r.remove_service("web")
    assert r.verify("web") == {}
    assert r.calls == ["set web {'web-r1': 90, 'web-r2': 10}", "remove web"]


def test_taken_listen_is_refused_with_the_field() -> None:
    r = FakeRouter()
    r.taken.add("127.0.0.1:8080")
    with pytest.raises(PlatformError, match=r"^127\.0\.0\.1:8080 \(services\.web\.listen\) is "
                                            r"already in use by another process$"):
        r.set_backends("web", SVC, [Backend("web-r1", 100, ["127.0.0.2:8000"])])
    assert r.verify("web") == {}


def test_fail_next_changes_nothing() -> None:
    r = FakeRouter()
    r.set_backends("web", SVC, [Backend("web-r1", 100, ["127.0.0.2:8000"])])
    r.fail_next = 1
    with pytest.raises(PlatformError):
        r.set_backends("web", SVC, [Backend("web-r2", 100, ["127.0.0.3:8000"])])
    assert r.verify("web") == {"web-r1": 100}


def test_drain_counts_down_only_out_of_rotation() -> None:
    r = FakeRouter()
    r.set_backends("web", SVC, [Backend("web-r1", 100, ["127.0.0.2:8000"])])
    r.inflight["web-r1"] = 3
    assert [r.open_requests("web-r1") for _ in range(2)] == [3, 3]  # still in rotation
    r.set_backends("web", SVC, [Backend("web-r1", 0, ["127.0.0.2:8000"]),
                                Backend("web-r2", 100, ["127.0.0.3:8000"])])
    assert r.wait_drained("web-r1", timeout=1) is True
    r.inflight["web-r1"] = 2
    r.stuck.add("web-r1")
    assert r.wait_drained("web-r1", timeout=1) is False
