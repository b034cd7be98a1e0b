"""The `aws:` block of kiln.yaml (platform: aws). Pure: shapes only; whether a region or subnet
exists is asked of AWS before anything is created (`kiln.platforms.aws.preflight`)."""

# No `from __future__ import annotations`: pydantic would compile and evaluate every annotation
# string at start-up (part of every command's, so every rollout's, overhead); names that
# exist only later are quoted.
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AmiFilter(_Model):
    """The newest AMI owned by `owner` whose name matches `name` (a glob, like Packer's
    source_ami_filter with most_recent)."""

    owner: str = Field(min_length=1)
    name: str = Field(min_length=1)


def _ami(value: Any) -> Any:
    """`base_ami: ami-0123...` is shorthand for a fixed id."""
    if isinstance(value, str) and not re.match(r"^ami-[0-9a-f]{8,17}$", value):
        raise ValueError(f"expected an AMI id like ami-0123456789abcdef0 or "
                         f"{{owner, name}}, got {value!r}")
    return value


BaseAmi = Annotated[str | AmiFilter, BeforeValidator(_ami)]


class AwsSettings(_Model):
    region: str
    subnets: list[str] = Field(min_length=1)
    """Subnets of one VPC for the ALB and the instances (an ALB needs two zones on real AWS)."""
    instance_type: str = Field("t3.micro", min_length=1)
    base_ami: BaseAmi
    security_groups: list[str] = Field(default_factory=list)
    """Given to instances; the ALB gets its own group that kiln creates and tags."""
    instance_profile: str | None = None
    """IAM instance profile (name) of builders and instances; the builder needs SSM with it."""
    key_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    """Added to every resource kiln creates (kiln's own `kiln:*` tags win)."""
    endpoint_url: str | None = None
    """Any AWS-compatible endpoint (moto in the tests); AWS_ENDPOINT_URL works too."""
    metrics_period: int = Field(60, ge=1, le=3600)
    """Seconds per CloudWatch datapoint the judge reads. ALB metrics come per minute; a smaller
    period only makes sense for high-resolution metrics (and for moto in the tests)."""
    builder_timeout: float = Field(1800.0, gt=0)
    """Seconds a bake may take on the builder before it is abandoned and cleaned up."""

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION_RE.match(v):
            raise ValueError(f"expected an AWS region like eu-west-1, got {v!r}")
        return v

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        for s in v:
            if not re.match(r"^subnet-[0-9a-f]{8,17}$", s):
                raise ValueError(f"expected subnet ids like subnet-0abc1234, got {s!r}")
        if len(set(v)) != len(v):
            raise ValueError("subnets are listed twice")
        return v

    @field_validator("security_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for s in v:
            if not re.match(r"^sg-[0-9a-f]{8,17}$", s):
                raise ValueError(f"expected security group ids like sg-0abc1234, got {s!r}")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if k.lower().startswith(("kiln:", "aws:")):
                raise ValueError(f"tag {k!r}: the kiln: and aws: prefixes are reserved")
        if len(v) > 40:
            raise ValueError("at most 40 tags (AWS allows 50 and kiln uses up to 10)")
        return v
