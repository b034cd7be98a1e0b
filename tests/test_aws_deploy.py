"""Deploy on platform aws against moto's server: fleets per release behind the ALB, canary
weights read back from the listener, health gate from target health, disposal, destroy."""

from __future__ import annotations

from pathlib import Path

from aws_helpers import listener_weights, open_project, write_project
from kiln.platforms.aws.inventory import tagged
from kiln.project import DeployEvent
from kiln.testing.moto import MotoServer


def test_canary_weights_on_the_listener_then_destroy(moto: MotoServer, tmp_path: Path) -> None:
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        first = project.deploy()
        assert [s.outcome for s in first.services] == ["promoted"]
        assert listener_weights(moto) == {"web-r1": 100}
        aws = project.platform.aws
        inv = tagged(aws, "shop")
        assert len(inv["instance"]) == 3 and len(inv["auto-scaling-group"]) == 1
        assert len(inv["target-group"]) == 1 and len(inv["launch-template"]) == 1

        write_project(tmp_path, moto, version="2")
        seen: list[dict[str, int]] = []

        def watch(ev: DeployEvent) -> None:
            if ev.kind == "status":
                w = listener_weights(moto)
                if not seen or seen[-1] != w:
                    seen.append(w)

        second = open_project(path).deploy(on_event=watch)
        assert [s.outcome for s in second.services] == ["promoted"], second.services
        # The rollout's steps, as the ALB itself reports them.
        assert {"web-r2": 10, "web-r1": 90} in seen and {"web-r2": 50, "web-r1": 50} in seen
        assert listener_weights(moto) == {"web-r2": 100}
        inv = tagged(aws, "shop")
        # r1 is disposed of: its ASG, target group and launch template are gone; its AMI stays.
        assert inv["auto-scaling-group"] == ["kiln-shop-web-r2"]
        assert len(inv["target-group"]) == 1 and inv["launch-template"] == ["kiln-shop-web-r2"]
        assert len(inv["instance"]) == 3 and len(inv["image"]) == 2
    finally:
        project.destroy()
        project.close()
    left = tagged(project.platform.aws, "shop")
    assert {k: v for k, v in left.items() if k not in ("image", "snapshot") and v} == {}
