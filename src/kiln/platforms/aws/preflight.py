"""Checks that run before kiln creates anything on AWS, so bad input leaves nothing behind:
the region exists, the subnets exist in one VPC, the base AMI resolves, credentials work."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import PlatformError
from kiln.platforms.aws.client import Aws, error_code, translated
from kiln.spec.aws import AmiFilter


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnets: tuple[str, ...]


def check_region(aws: Aws) -> None:
    """Against botocore's own partition data: no call (an unknown region has no endpoint)."""
    import boto3

    region = aws.settings.region
    session = boto3.session.Session()
    known: set[str] = set()
    for partition in session.get_available_partitions():
        known.update(session.get_available_regions("ec2", partition_name=partition))
    if known and region not in known:
        near = sorted(r for r in known if r.split("-")[0] == region.split("-")[0]) or sorted(known)
        raise PlatformError(f"aws.region: {region!r} is not an AWS region "
                            f"(expected one like {', '.join(near[:4])})")


def network(aws: Aws) -> Network:
    """The VPC of the configured subnets; every subnet must exist and share it."""
    known: Network | None = aws.memo.get("network")
    if known is not None:
        return known
    check_region(aws)
    wanted = list(aws.settings.subnets)
    from botocore.exceptions import ClientError

    with translated("looking up aws.subnets"):
        try:
            found = aws.ec2.describe_subnets(SubnetIds=wanted).get("Subnets", [])
        except ClientError as exc:
            if error_code(exc).startswith("InvalidSubnetID"):
                raise PlatformError(f"aws.subnets: {exc.response['Error'].get('Message', exc)} "
                                    f"in {aws.settings.region}") from exc
            raise
    ids = {s["SubnetId"] for s in found}
    missing = [s for s in wanted if s not in ids]
    if missing:
        raise PlatformError(f"aws.subnets: {', '.join(missing)} not found in {aws.settings.region}")
    vpcs = {s["VpcId"] for s in found}
    if len(vpcs) != 1:
        raise PlatformError(f"aws.subnets: expected subnets of one VPC, got {sorted(vpcs)}")
    aws.memo["network"] = Network(vpcs.pop(), tuple(wanted))
    return aws.memo["network"]  # type: ignore[no-any-return]


def base_ami(aws: Aws) -> str:
    """The base AMI id: the given id (checked to exist) or the newest match of the filter."""
    if "base_ami" in aws.memo:
        return str(aws.memo["base_ami"])
    aws.memo["base_ami"] = _base_ami(aws)
    return str(aws.memo["base_ami"])


def _base_ami(aws: Aws) -> str:
    base = aws.settings.base_ami
    if isinstance(base, str):
        from botocore.exceptions import ClientError

        with translated(f"looking up aws.base_ami {base}"):
            try:
                images = aws.ec2.describe_images(ImageIds=[base]).get("Images", [])
            except ClientError as exc:
                if error_code(exc).startswith("InvalidAMIID"):
                    images = []
                else:
                    raise
        if not images:
            raise PlatformError(f"aws.base_ami: {base} not found in {aws.settings.region}")
        return base
    assert isinstance(base, AmiFilter)
    with translated("looking up aws.base_ami"):
        images = aws.ec2.describe_images(
            Owners=[base.owner], Filters=[{"Name": "name", "Values": [base.name]},
                                          {"Name": "state", "Values": ["available"]}],
        ).get("Images", [])
    if not images:
        raise PlatformError(f"aws.base_ami: no available AMI owned by {base.owner} matches "
                            f"name {base.name!r} in {aws.settings.region}")
    newest = max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))
    return str(newest["ImageId"])
