"""Shared pieces of the AWS tests: settings pointing at moto, and an inventory of what kiln tagged."""

from __future__ import annotations

from typing import Any

import boto3

from kiln.platforms.aws.client import Aws
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
