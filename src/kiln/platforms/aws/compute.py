"""Compute on AWS: a release's instances are the members of its Auto Scaling group.

`launch` raises the group's desired capacity and records the members in `instances`; members a
killed kiln had asked for but never recorded are adopted first, so a rerun never launches twice.
`healthy` is the target health of the instance in its release's target group (the ALB's own
check). `terminate` goes through the group (decrementing it), so the group deregisters the
instance from the target group and waits out the deregistration delay (the drain) before it
terminates it; the last instance of a release takes the release's ASG, target group and launch
template with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from kiln.errors import PlatformError
from kiln.platforms.aws.client import Aws, is_missing, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release
from kiln.platforms.instance_rows import from_row, insert, set_state
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store

GONE_LIFECYCLE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated",
                  "Detaching", "Detached")


class AwsCompute:
    def __init__(self, aws: Aws, store: Store, home: Path, fleet: Fleet) -> None:
        self.aws, self.store, self.home, self.fleet = aws, store, home, fleet

    def launch(self, service_name: str, service: ServiceSpec, release: Release, image: Image,
               count: int, *, env: Mapping[str, str],
               kind: Literal["service", "test", "dev"] = "service") -> list[Instance]:
        if kind != "service":
            raise PlatformError(f"aws: {kind} instances are not supported on platform aws yet "
                                "(run image tests on platform local or podman, or deploy with "
                                "--skip-tests)")
        if service.secrets:
            raise PlatformError(f"services.{service_name}.secrets: not supported on platform aws "
                                "yet (user data is stored by AWS; use an instance profile and "
                                "SSM Parameter Store)")
        group = self.fleet.ensure_asg(service_name, service, release, image)
        name = group["AutoScalingGroupName"]
        tracked = {r["id"] for r in self.store.query(
            "SELECT id FROM instances WHERE release_id = ?", (release.id,))}
        members = self._members(group)
        adopt = [m for m in members if m not in tracked]
        pending = max(0, int(group["DesiredCapacity"]) - len(members))
        need = count - len(adopt) - pending
        if need > 0:
            with translated(f"scaling {name} to {int(group['DesiredCapacity']) + need}"):
                self.aws.autoscaling.set_desired_capacity(
                    AutoScalingGroupName=name, HonorCooldown=False,
                    DesiredCapacity=int(group["DesiredCapacity"]) + need)
            group = self.fleet.asg(release.id) or group
        fresh = [m for m in self._members(group) if m not in tracked]
        return self._record(service_name, service, release, fresh)

    @staticmethod
    def _members(group: Mapping[str, Any]) -> list[str]:
        return [str(i["InstanceId"]) for i in group.get("Instances", [])
                if i.get("LifecycleState") not in GONE_LIFECYCLE]

    def _record(self, service_name: str, service: ServiceSpec, release: Release,
                ids: Sequence[str]) -> list[Instance]:
        if not ids:
            return []
        described = self._describe(ids)
        out = []
        with self.store.tx() as c:
            for iid in ids:
                host = str(described.get(iid, {}).get("PrivateIpAddress", "0.0.0.0"))
                inst = Instance(iid, service_name, release.id, host, service.port,
                                handle={"instance": iid,
                                        "asg": self.fleet.names.asg(release.id)})
                insert(c, inst, kind="service")
                c.event("instance.launch", f"launching {iid} ({host}:{service.port}) in "
                        f"{self.fleet.names.asg(release.id)}", service=service_name,
                        data={"instance": iid, "release": release.id})
                out.append(inst)
        return out

    def _describe(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 200):
            with translated("describing instances"):
                res = self.aws.ec2.describe_instances(
                    Filters=[{"Name": "instance-id", "Values": list(ids[i:i + 200])}])
            for r in res["Reservations"]:
                for inst in r["Instances"]:
                    out[inst["InstanceId"]] = inst
        return out

    def healthy(self, instance: Instance, health: Health) -> bool:
        tg = self.fleet.target_group(instance.release_id)
        if tg is None:
            return False
        from botocore.exceptions import ClientError

        with translated(f"target health of {instance.id}"):
            try:
                desc = self.aws.elbv2.describe_target_health(
                    TargetGroupArn=tg, Targets=[{"Id": instance.id, "Port": instance.port}])
            except ClientError:
                return False
        states = [d["TargetHealth"]["State"] for d in desc["TargetHealthDescriptions"]]
        return states == ["healthy"]

    def terminate(self, instance: Instance, timeout: float) -> None:
        from botocore.exceptions import ClientError

        with translated(f"terminating {instance.id}"):
            member = self.aws.autoscaling.describe_auto_scaling_instances(
                InstanceIds=[instance.id]).get("AutoScalingInstances", [])
            if member and member[0].get("LifecycleState") not in GONE_LIFECYCLE:
                self.aws.autoscaling.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance.id, ShouldDecrementDesiredCapacity=True)
            elif not member:  # no longer in its group (someone removed it): terminate directly
                try:
                    self.aws.ec2.terminate_instances(InstanceIds=[instance.id])
                except ClientError as exc:
                    if not is_missing(exc):
                        raise
        set_state(self.store, instance.id, "stopped")
        left = self.store.one(
            "SELECT COUNT(*) AS n FROM instances WHERE release_id = ? AND state IN "
            "('starting','running','draining')", (instance.release_id,))
        group = self.fleet.asg(instance.release_id)
        if (left is None or left["n"] == 0) and (group is None or not self._members(group)):
            self.fleet.dispose(instance.release_id)

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        described = self._describe([i.id for i in instances]) if instances else {}
        return [Observed(i.id, described.get(i.id, {}).get("State", {}).get("Name")
                         in ("pending", "running")) for i in instances]

    def exec(self, instance: Instance, command: str, *, timeout: float) -> ExecResult:
        raise PlatformError("aws: exec in an instance is not supported yet (use SSM Session "
                            "Manager)")

    def log_path(self, instance: Instance) -> Path:
        return self.home / "instances" / instance.id / "log"

    def instances(self, release_id: str) -> list[Instance]:
        rows = self.store.query("SELECT * FROM instances WHERE release_id = ? AND state IN "
                                "('starting','running','draining')", (release_id,))
        return [from_row(r) for r in rows]
