"""Throwaway test instances: one EC2 instance from the candidate AMI, in the project's first
subnet, in a security group of its own with no inbound rule (checks arrive over SSM), with the
same user data a release's instances get. Why an instance of the AMI rather than checks inside
the builder: docs/decisions/aws-image-tests.md.

Both are tagged `kiln:role=test` and removed when the suite ends (try/finally in the runner,
also on ^C); a kiln killed outright leaves them to the next test launch of the project, which
sweeps them first (the project lock says none belongs to a live run), and to `kiln destroy`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from kiln.platforms.aws import tags as t
from kiln.platforms.aws.bake import delete_groups, sweep_role, terminate_and_wait
from kiln.platforms.aws.boot import user_data
from kiln.platforms.aws.client import Aws, translated
from kiln.platforms.aws.preflight import network
from kiln.platforms.base import Image, Release
from kiln.spec.models import ServiceSpec

ROLE = "test"


def launch(aws: Aws, project: str, service_name: str, service: ServiceSpec, release: Release,
           image: Image, env: Mapping[str, str], poll: float) -> tuple[str, str, str]:
    """(instance id, security group id, private address); leftovers of a killed run go first.
    `env` is not written anywhere: on aws, secrets are references the instance resolves."""
    sweep_role(aws, project, ROLE, poll)
    net = network(aws)
    attempt = uuid.uuid4().hex[:12]
    kiln_tags = t.tags(project, ROLE, aws.settings.tags, service=service_name,
                       release=release.id, test=attempt)
    s = aws.settings
    with translated("creating the test instance's security group"):
        group = str(aws.ec2.create_security_group(
            GroupName=f"kiln-{project}-test-{attempt}", VpcId=net.vpc_id,
            Description="kiln image test instance (temporary; no inbound rules: checks run "
                        "over SSM)",
            TagSpecifications=[t.spec("security-group", kiln_tags)])["GroupId"])
    args: dict[str, Any] = {
        "ImageId": image.ref, "InstanceType": s.instance_type, "MinCount": 1, "MaxCount": 1,
        "SubnetId": net.subnets[0], "SecurityGroupIds": [group, *s.security_groups],
        "UserData": user_data(service_name, service, {**image.env, **service.env},
                              image.workdir, s.region),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [
            t.spec("instance", kiln_tags | {"Name": f"kiln-{project}-test-{attempt}"}),
            t.spec("volume", kiln_tags)],
    }
    if s.instance_profile:
        args["IamInstanceProfile"] = {"Name": s.instance_profile}
    if s.key_name:
        args["KeyName"] = s.key_name
    try:
        with translated(f"launching a test instance of {image.ref}"):
            out = aws.ec2.run_instances(**args)["Instances"][0]
    except BaseException:
        delete_groups(aws, [group], poll)
        raise
    return str(out["InstanceId"]), group, str(out.get("PrivateIpAddress") or "0.0.0.0")


def remove(aws: Aws, instance_id: str, group: str | None, poll: float) -> list[str]:
    """Terminate the instance, wait until it is gone, delete its group; problems, if any."""
    problems = terminate_and_wait(aws, [instance_id], poll)
    if group:
        problems += delete_groups(aws, [group], poll)
    return problems


def sweep(aws: Aws, project: str, poll: float) -> list[str]:
    return sweep_role(aws, project, ROLE, poll)
