"""Shared pieces of the AWS tests: settings pointing at moto, and an inventory of what kiln tagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from kiln.platforms.aws.client import Aws
from kiln.project import Project
from kiln.spec.aws import AwsSettings
from kiln.testing.moto import REGION, MotoServer

UBUNTU = {"owner": "099720109477", "name": "ubuntu/images/hvm-ssd/ubuntu-*"}


def subnets(moto: MotoServer) -> list[str]:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    return sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]
                  if s.get("DefaultForAz"))[:2]


def settings(moto: MotoServer, **over: Any) -> AwsSettings:
    data: dict[str, Any] = {"region": REGION, "subnets": subnets(moto), "base_ami": UBUNTU,
                            "instance_type": "t3.micro", "tags": {"team": "shop"}}
    data.update(over)
    return AwsSettings.model_validate(data)


def aws(moto: MotoServer, **over: Any) -> Aws:
    return Aws(settings(moto, **over))


SPEC = """\
project: shop
platform: aws
aws:
  region: {region}
  subnets: [{subnets}]
  instance_type: t3.micro
  base_ami: {{owner: "099720109477", name: "ubuntu/images/hvm-ssd/ubuntu-*"}}
  tags: {{team: shop}}
  metrics_period: 1
images:
  web:
    steps:
      - copy: app/
        to: app/
{tests}services:
  web:
    image: web
    command: python3 -m app
    listen: 80
    replicas: 3
    health: {{path: /healthz, deadline: {deadline}}}
    rollout:
      strategy: {strategy}
      steps: [{{weight: 10, pause: {pause}}}, {{weight: 50, pause: {pause}}}]
      drain_timeout: {drain}
{analysis}"""

TESTS = """\
    tests:
      - http: {path: /healthz, status: 200}
"""

ANALYSIS = """\
      analysis: {min_requests: 200, max_error_rate_increase: 1%, on_no_data: pause}
"""


def write_project(folder: Path, moto: MotoServer, *, strategy: str = "canary",
                  pause: str = "0s", analysis: bool = False, version: str = "1",
                  deadline: str = "30s", listen: int = 80, drain: str = "0s",
                  tests: bool = False) -> Path:
    (folder / "app").mkdir(parents=True, exist_ok=True)
    (folder / "app" / "__main__.py").write_text(f"VERSION = {version!r}\n")
    (folder / "kiln.yaml").write_text(SPEC.format(
        region=REGION, subnets=", ".join(subnets(moto)), strategy=strategy, pause=pause,
        analysis=ANALYSIS if analysis else "", deadline=deadline, drain=drain,
        tests=TESTS if tests else "").replace(
            "listen: 80", f"listen: {listen}"))
    return folder / "kiln.yaml"


def open_project(path: Path) -> Project:
    from kiln.spec.loader import load_spec

    loaded = load_spec(path)
    return Project(loaded.spec, loaded.path, loaded.base_dir, loaded.base_dir / ".kiln")


def listener_weights(moto: MotoServer) -> dict[str, int]:
    """release -> weight read straight from the ALB listener (not through kiln)."""
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=moto.url)
    out: dict[str, int] = {}
    for lb in elbv2.describe_load_balancers()["LoadBalancers"]:
        for listener in elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
            for action in listener["DefaultActions"]:
                for g in action.get("ForwardConfig", {}).get("TargetGroups", []):
                    tags = elbv2.describe_tags(ResourceArns=[g["TargetGroupArn"]])
                    release = {x["Key"]: x["Value"] for x in
                               tags["TagDescriptions"][0]["Tags"]}["kiln:release"]
                    out[release] = int(g["Weight"])
    return out
