"""Traffic is verified before anything is terminated: after each weight change kiln reads the
ALB listener back until it serves the new weights, and the old fleet goes only after its
targets finished deregistering. moto applies both at once, so the tests patch the client (in
the test, never in the product): a listener whose update lags, targets that stay draining."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aws_helpers import listener_weights, open_project, write_project
from kiln.errors import PlatformError
from kiln.platforms.aws.client import Aws
from kiln.platforms.aws.router import AlbRouter
from kiln.platforms.base import Backend
from kiln.spec.models import ServiceSpec
from kiln.testing.moto import MotoServer


class Patched:
    """Wraps the elbv2 (and autoscaling) clients of every `Aws` in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, lag: int = 0, draining: int = 0
                 ) -> None:
        self.lag, self.draining = lag, draining
        self.pending: list[dict[str, Any]] = []  # modify_listener calls not applied yet
        self.lagged_reads = 0
        self.drained: dict[str, int] = {}  # target group -> draining reports left
        self.log: list[str] = []
        original = Aws.client
        patched = self

        def client(aws: Aws, service: str) -> Any:
            c = original(aws, service)
            if getattr(c, "_patched", False):
                return c
            c._patched = True
            if service == "elbv2":
                patched.wrap_elbv2(c)
            if service == "autoscaling":
                real = c.delete_auto_scaling_group

                def delete(**kw: Any) -> Any:
                    patched.log.append(f"delete {kw['AutoScalingGroupName']}")
                    return real(**kw)

                c.delete_auto_scaling_group = delete
            return c

        monkeypatch.setattr(Aws, "client", client)

    def wrap_elbv2(self, c: Any) -> None:
        modify, describe = c.modify_listener, c.describe_listeners
        health, deregister = c.describe_target_health, c.deregister_targets

        def modify_listener(**kw: Any) -> Any:
            if self.lag:
                self.pending.append({"kw": kw, "reads": self.lag})
                return {"Listeners": []}
            return modify(**kw)

        def describe_listeners(**kw: Any) -> Any:
            for p in list(self.pending):
                p["reads"] -= 1
                if p["reads"] < 0:
                    modify(**p["kw"])
                    self.pending.remove(p)
                else:
                    self.lagged_reads += 1
            return describe(**kw)

        def deregister_targets(**kw: Any) -> Any:
            self.drained[kw["TargetGroupArn"]] = self.draining
            self.log.append(f"deregister {len(kw['Targets'])}")
            return deregister(**kw)

        def describe_target_health(**kw: Any) -> Any:
            out = health(**kw)
            left = self.drained.get(kw["TargetGroupArn"], 0)
            if left > 0:  # the ALB still finishes in-flight requests on these targets
                self.drained[kw["TargetGroupArn"]] = left - 1
                self.log.append("draining")
                out["TargetHealthDescriptions"] = [
                    {"Target": {"Id": f"i-draining{n}", "Port": 8000},
                     "TargetHealth": {"State": "draining"}} for n in range(3)]
            return out

        c.modify_listener = modify_listener
        c.describe_listeners = describe_listeners
        c.deregister_targets = deregister_targets
        c.describe_target_health = describe_target_health


def test_each_weight_change_waits_for_the_listener(moto: MotoServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AlbRouter, "poll", 0.01)
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        patched = Patched(monkeypatch, lag=3)
        served: list[dict[str, int]] = []
        original = AlbRouter.set_backends

        def set_backends(self: AlbRouter, name: str, service: ServiceSpec,
                         backends: Sequence[Backend]) -> None:
            original(self, name, service, backends)
            # When kiln goes on, the ALB itself serves what kiln asked for.
            served.append(listener_weights(moto))
            assert served[-1] == {b.release_id: b.weight for b in backends if b.weight}

        monkeypatch.setattr(AlbRouter, "set_backends", set_backends)
        write_project(tmp_path, moto, version="2")
        result = open_project(path).deploy()
        assert result.services[0].outcome == "promoted", result.services
        assert {"web-r2": 10, "web-r1": 90} in served and {"web-r2": 50, "web-r1": 50} in served
        assert served[-1] == {"web-r2": 100}
        assert patched.lagged_reads >= 3 * 3  # every change was read back until it applied
    finally:
        monkeypatch.undo()
        project.destroy()
        project.close()


def test_a_listener_that_never_applies_fails_the_change(moto: MotoServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AlbRouter, "poll", 0.01)
    monkeypatch.setattr(AlbRouter, "settle_timeout", 0.3)
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        Patched(monkeypatch, lag=10**9)
        write_project(tmp_path, moto, version="2")
        with pytest.raises(PlatformError) as info:
            open_project(path).deploy()
        message = str(info.value)
        assert "the listener of web still serves web-r1=100" in message, message
        assert "web-r2=10" in message and "\n" not in message
    finally:
        monkeypatch.undo()
        project.destroy()
        project.close()


def test_old_fleet_goes_only_after_its_targets_drained(moto: MotoServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_project(tmp_path, moto, drain="30s")
    project = open_project(path)
    try:
        project.deploy()
        patched = Patched(monkeypatch, draining=4)
        write_project(tmp_path, moto, version="2", drain="30s")
        second = open_project(path)
        result = second.deploy()
        assert result.services[0].outcome == "promoted", result.services
        log = patched.log
        delete = log.index("delete kiln-shop-web-r1")
        assert log[:delete].count("draining") == 4, log  # waited out every draining report
        assert log.index("deregister 3") < log.index("draining") < delete, log
        # The deregistration delay is the spec's drain_timeout.
        elbv2 = second.platform.aws.elbv2
        tg = second.platform.fleet.target_group("web-r2")
        attrs = {a["Key"]: a["Value"] for a in elbv2.describe_target_group_attributes(
            TargetGroupArn=tg)["Attributes"]}
        assert attrs["deregistration_delay.timeout_seconds"] == "30"
    finally:
        monkeypatch.undo()
        project.destroy()
        project.close()
