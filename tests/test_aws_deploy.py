"""Deploy on platform aws against moto's server: fleets per release behind the ALB, canary
weights read back from the listener, health gate from target health, disposal, destroy."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from aws_helpers import listener_weights, open_project, write_project
from kiln import drift, gc
from kiln.errors import PlatformError
from kiln.platforms.aws.compute import AwsCompute
from kiln.platforms.aws.inventory import tagged
from kiln.platforms.base import Instance
from kiln.project import DeployEvent
from kiln.spec.models import Health
from kiln.testing.moto import REGION, MotoServer

UBUNTU_AMI = "ami-785db401"  # one of moto's bundled public AMIs, not the base filter's newest


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


def client(moto: MotoServer, service: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=moto.url)


def test_unhealthy_targets_fail_the_health_gate(moto: MotoServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On moto a registered, running instance is 'healthy' (moto runs no health checks); one
    that is not registered is 'unused'. Every health probe of an r2 instance first deregisters
    it (through moto's API), so r2 is never healthy: no race with the gate's first probe."""
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        write_project(tmp_path, moto, version="2", deadline="3s")
        elbv2 = client(moto, "elbv2")
        probe = AwsCompute.healthy

        def unhealthy_r2(self: AwsCompute, instance: Instance, health: Health) -> bool:
            tg = self.fleet.target_group(instance.release_id)
            if instance.release_id == "web-r2" and tg is not None:
                with contextlib.suppress(ClientError):  # already deregistered
                    elbv2.deregister_targets(TargetGroupArn=tg, Targets=[
                        {"Id": instance.id, "Port": instance.port}])
            return probe(self, instance, health)

        monkeypatch.setattr(AwsCompute, "healthy", unhealthy_r2)
        result = open_project(path).deploy().services[0]
        assert result.outcome == "failed" and "healthy" in (result.reason or ""), result
        assert listener_weights(moto) == {"web-r1": 100}
        assert tagged(project.platform.aws, "shop")["auto-scaling-group"] == ["kiln-shop-web-r1"]
    finally:
        monkeypatch.undo()
        project.destroy()
        project.close()


def test_rollback_to_retained_ami_drift_and_gc(moto: MotoServer, tmp_path: Path) -> None:
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        ami_r1 = project.image(project.current_release("web").image_digest).ref  # type: ignore[union-attr]
        write_project(tmp_path, moto, version="2")
        assert open_project(path).deploy().services[0].outcome == "promoted"
        # Rollback: r1's AMI was retained, so r1's fleet comes back from it.
        back = open_project(path).rollback("web")
        assert back.outcome == "promoted" and listener_weights(moto) == {"web-r1": 100}
        ec2 = client(moto, "ec2")
        aws = project.platform.aws
        running = ec2.describe_instances(InstanceIds=tagged(aws, "shop")["instance"])
        assert {i["ImageId"] for r in running["Reservations"] for i in r["Instances"]} == {ami_r1}

        # Drift: a hand-changed listener weight, an instance on another AMI, a missing ASG.
        assert [i for i in drift.detect(open_project(path))] == []
        elbv2 = client(moto, "elbv2")
        lb = elbv2.describe_load_balancers()["LoadBalancers"][0]
        listener = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"][0]
        action = listener["DefaultActions"][0]
        action["ForwardConfig"]["TargetGroups"][0]["Weight"] = 40
        elbv2.modify_listener(ListenerArn=listener["ListenerArn"], DefaultActions=[action])
        rogue = ec2.run_instances(ImageId=UBUNTU_AMI, MinCount=1, MaxCount=1)
        rogue_id = rogue["Instances"][0]["InstanceId"]
        client(moto, "autoscaling").attach_instances(InstanceIds=[rogue_id],
                                                     AutoScalingGroupName="kiln-shop-web-r1")
        kinds = {i["kind"]: i["detail"] for i in drift.detect(open_project(path))}
        assert "web-r1" in kinds["router"] and "40" in kinds["router"]
        assert rogue_id in kinds["ami"] and ami_r1 in kinds["ami"]
        client(moto, "autoscaling").delete_auto_scaling_group(
            AutoScalingGroupName="kiln-shop-web-r1", ForceDelete=True)
        kinds = {i["kind"]: i["detail"] for i in drift.detect(open_project(path))}
        assert "kiln-shop-web-r1 of web-r1 is missing" in kinds["asg"]
        ec2.terminate_instances(InstanceIds=[rogue_id])
        # Heal by deploying again: a new fleet for r1's image.
        write_project(tmp_path, moto, version="3")
        assert open_project(path).deploy().services[0].outcome == "promoted"

        # gc: r2 is beyond retention (keep 1; current r3 and its previous r1 stay).
        amis_before = tagged(aws, "shop")["image"]
        assert len(amis_before) == 3
        out = gc.collect(open_project(path), keep=1)
        assert len(out["images"]) == 1
        inv = tagged(aws, "shop")
        assert len(inv["image"]) == 2 and ami_r1 in inv["image"]
        assert len(inv["snapshot"]) == 2
    finally:
        project.destroy()
        project.close()


def test_listener_kiln_does_not_own_is_refused(moto: MotoServer, tmp_path: Path) -> None:
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        elbv2 = client(moto, "elbv2")
        lb = elbv2.describe_load_balancers()["LoadBalancers"][0]
        tg = elbv2.describe_target_groups()["TargetGroups"][0]
        elbv2.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=8081,
                              DefaultActions=[{"Type": "forward",
                                               "TargetGroupArn": tg["TargetGroupArn"]}])
        write_project(tmp_path, moto, version="2", listen=8081)
        before = tagged(project.platform.aws, "shop")
        with pytest.raises(PlatformError) as info:
            open_project(path).deploy()
        assert "listener on port 8081" in str(info.value) and "not kiln's" in str(info.value)
        assert "\n" not in str(info.value)
        after = tagged(project.platform.aws, "shop")
        # Nothing half-created: only the (cached, reusable) AMI of the new image is new.
        assert {k: v for k, v in after.items() if k not in ("image", "snapshot")} == {
            k: v for k, v in before.items() if k not in ("image", "snapshot")}
    finally:
        project.destroy()
        project.close()
