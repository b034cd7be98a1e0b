"""Everything a project has on AWS, found by kiln's tags: for destroy, drift and leak checks."""

from __future__ import annotations

from typing import Any

from kiln.platforms.aws import tags as t
from kiln.platforms.aws.client import Aws, translated

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def _pages(client: Any, op: str, key: str, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.get_paginator(op).paginate(**kw):
        out.extend(page.get(key, []))
    return out


def _elbv2_tags(aws: Aws, arns: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for i in range(0, len(arns), 20):
        for d in aws.elbv2.describe_tags(ResourceArns=arns[i:i + 20])["TagDescriptions"]:
            out[d["ResourceArn"]] = t.from_list(d.get("Tags"))
    return out


def tagged(aws: Aws, project: str) -> dict[str, list[str]]:
    """kind -> ids of the project's resources that exist (terminated instances excluded)."""
    f = t.filters(project)
    ec2 = aws.ec2
    with translated("listing the project's resources"):
        reservations = _pages(ec2, "describe_instances", "Reservations", Filters=[
            *f, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
        out: dict[str, list[str]] = {
            "instance": sorted(i["InstanceId"] for r in reservations for i in r["Instances"]),
            "security-group": sorted(g["GroupId"] for g in _pages(
                ec2, "describe_security_groups", "SecurityGroups", Filters=f)),
            "image": sorted(i["ImageId"] for i in ec2.describe_images(
                Owners=["self"], Filters=f)["Images"]),
            "snapshot": sorted(s["SnapshotId"] for s in _pages(
                ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=f)),
            "launch-template": sorted(lt["LaunchTemplateName"] for lt in _pages(
                ec2, "describe_launch_templates", "LaunchTemplates", Filters=f)),
            "key-pair": sorted(k["KeyName"] for k in ec2.describe_key_pairs(
                Filters=f).get("KeyPairs", [])),
        }
        groups = _pages(aws.autoscaling, "describe_auto_scaling_groups", "AutoScalingGroups")
        out["auto-scaling-group"] = sorted(
            g["AutoScalingGroupName"] for g in groups
            if t.from_list(g.get("Tags")).get(t.PROJECT) == project)
        tgs = [g["TargetGroupArn"] for g in _pages(aws.elbv2, "describe_target_groups",
                                                   "TargetGroups")]
        lbs = [b["LoadBalancerArn"] for b in _pages(aws.elbv2, "describe_load_balancers",
                                                    "LoadBalancers")]
        tag_of = _elbv2_tags(aws, tgs + lbs)
    out["target-group"] = sorted(a for a in tgs if tag_of.get(a, {}).get(t.PROJECT) == project)
    out["load-balancer"] = sorted(a for a in lbs if tag_of.get(a, {}).get(t.PROJECT) == project)
    return out


def count(inventory: dict[str, list[str]]) -> int:
    return sum(len(v) for v in inventory.values())
