"""Verified weights (issue 23): the rollout proceeds only on the router's read-back, so a router
that applies changes late never has a release disposed of while it still routes to it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.platforms.base import Backend, Instance
from kiln.platforms.fake.compute import FakeCompute
from kiln.platforms.fake.router import FakeRouter
from kiln.rollout import executor
from kiln.spec.models import ServiceSpec
from kiln.testing.project import wait_for
from test_serve_controller import FakePlatform, project, spec


class LaggingRouter(FakeRouter):
    """set_backends returns at once; the change takes effect `lag` seconds later (what a file
    provider or a slow API does). `verify` and the traffic follow the effective routing."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag
        self.pending: list[tuple[float, str, list[Backend]]] = []
        self.effective: dict[str, list[Backend]] = {}

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        super().set_backends(service_name, service, backends)
        self.pending.append((time.monotonic() + self.lag, service_name, list(backends)))

    def _settle(self) -> None:
        now = time.monotonic()
        for _due, name, backends in [p for p in self.pending if p[0] <= now]:
            self.effective[name] = backends
        self.pending = [p for p in self.pending if p[0] > now]

    def verify(self, service_name: str) -> dict[str, int]:
        self._settle()
        if not self.running:
            return {}
        return {b.release_id: b.weight for b in self.effective.get(service_name, [])}

    def served_servers(self, service_name: str) -> dict[str, set[str]]:
        self._settle()
        return {b.release_id: set(b.servers) for b in self.effective.get(service_name, [])
                if b.weight > 0} if self.running else {}

    def routed(self, address: str) -> bool:
        """Whether the effective routing still sends requests to this server."""
        self._settle()
        return any(b.weight > 0 and address in b.servers
                   for backends in self.effective.values() for b in backends)


class WatchedCompute(FakeCompute):
    """Counts the requests a lagging router would still send to an instance being disposed of."""

    router: LaggingRouter

    lost: list[str]

    def terminate(self, instance: Instance, timeout: float) -> None:
        if self.router.routed(instance.address):
            self.lost.append(f"{instance.id} terminated while the router still sends it requests")
        super().terminate(instance, timeout)


CANARY = {"strategy": "canary", "steps": [{"weight": 10, "pause": 0}, {"weight": 50, "pause": 0}],
          "drain_timeout": "0s"}


def deploy_twice(tmp_path: Path, rollout: dict[str, object]) -> tuple[list[str], list[str]]:
    compute = WatchedCompute()
    compute.lost = []
    compute.router = router = LaggingRouter(lag=0.3)
    platform = FakePlatform(compute, router=router)
    proj = project(tmp_path, spec(rollout), platform)
    compute.store = proj.store
    try:
        outcomes = [proj.deploy().services[0].outcome]
        wait_for(lambda: router.verify("web") == {"web-r1": 100}, what="v1 routed")
        proj.spec = spec(rollout, version="2")
        outcomes.append(proj.deploy().services[0].outcome)
    finally:
        proj.close()
    return outcomes, compute.lost


@pytest.mark.parametrize("rollout", [
    CANARY,
    {"strategy": "blue-green", "scale_down_delay": "0s", "drain_timeout": "0s"},
    {"strategy": "rolling", "max_surge": 1, "drain_timeout": "0s"},
], ids=["canary", "blue-green", "rolling"])
def test_a_lagging_router_loses_no_request(tmp_path: Path, rollout: dict[str, object]) -> None:
    outcomes, lost = deploy_twice(tmp_path, rollout)
    assert outcomes == ["promoted", "promoted"]
    assert lost == []


def test_without_the_read_back_the_lag_would_lose_requests(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: skip the executor's confirmation and the old release is
    terminated while the router still sends it traffic."""
    monkeypatch.setattr(executor.Reconciler, "_confirm", lambda self, *read_back: None)
    outcomes, lost = deploy_twice(tmp_path, CANARY)
    assert lost, outcomes


def test_a_router_that_never_applies_fails_the_pass(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "CONFIRM_DEADLINE", 0.3)
    compute = WatchedCompute()
    compute.lost = []
    compute.router = router = LaggingRouter(lag=3600)
    platform = FakePlatform(compute, router=router)
    proj = project(tmp_path, spec(CANARY), platform)
    compute.store = proj.store
    try:
        with pytest.raises(KilnError, match="did not confirm the routing of web"):
            proj.deploy()
    finally:
        proj.close()
