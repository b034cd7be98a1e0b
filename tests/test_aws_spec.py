"""The `aws:` block of kiln.yaml: shapes validated with file:line:col and the field path."""

from __future__ import annotations

import pytest

from kiln.errors import SpecError
from kiln.spec.aws import AmiFilter
from kiln.spec.loader import parse_spec

GOOD = """\
project: shop
platform: aws
aws:
  region: eu-west-1
  subnets: [subnet-0abc1234, subnet-0def5678]
  instance_type: t3.micro
  base_ami: {owner: "136693071363", name: "debian-12-amd64-*"}
  tags: {team: web}
images:
  web: {steps: [{run: "true"}]}
services:
  web: {image: web, command: python -m app, listen: 80}
"""


def test_good_spec() -> None:
    spec = parse_spec(GOOD)
    assert spec.aws is not None and spec.aws.region == "eu-west-1"
    assert spec.aws.base_ami == AmiFilter(owner="136693071363", name="debian-12-amd64-*")
    assert spec.services["web"].listen.endswith(":80")
    fixed = parse_spec(GOOD.replace('{owner: "136693071363", name: "debian-12-amd64-*"}',
                                    "ami-0123456789abcdef0"))
    assert fixed.aws is not None and fixed.aws.base_ami == "ami-0123456789abcdef0"


@pytest.mark.parametrize(("old", "new", "where", "message"), [
    ("region: eu-west-1", "region: Europe", "4:", "aws.region: expected an AWS region"),
    ("subnets: [subnet-0abc1234, subnet-0def5678]", "subnets: [net-1]", "5:",
     "expected subnet ids like subnet-0abc1234"),
    ("subnets: [subnet-0abc1234, subnet-0def5678]", "subnets: []", "5:", "aws.subnets"),
    ('base_ami: {owner: "136693071363", name: "debian-12-amd64-*"}', "base_ami: debian",
     "7:", "expected an AMI id like ami-0123456789abcdef0"),
    ("tags: {team: web}", "tags: {kiln:project: x}", "8:", "prefixes are reserved"),
    ("  instance_type: t3.micro\n", "  instance_type: t3.micro\n  colour: red\n", "7:",
     "aws.colour"),
])
def test_bad_settings_name_the_line(old: str, new: str, where: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(GOOD.replace(old, new))
    text = str(info.value)
    assert message in text and f"kiln.yaml:{where}" in text, text


def test_platform_aws_needs_its_block() -> None:
    text = "\n".join(line for line in GOOD.splitlines()
                     if not line.startswith(("aws:", "  region", "  subnets", "  instance_type",
                                             "  base_ami", "  tags")))
    with pytest.raises(SpecError, match="platform aws needs an aws: block"):
        parse_spec(text)


@pytest.mark.parametrize(("platform", "ref", "message"), [
    ("aws", "env:DB_PASSWORD", "services.web.secrets.DB_PASSWORD: env: secrets are not supported "
     "on platform aws (they would be stored in user data); use ssm:/parameter/name or "
     "secretsmanager:ARN"),
    ("aws", "file:secret.txt", "services.web.secrets.DB_PASSWORD: file: secrets are not supported"),
    ("local", "ssm:/shop/db", "services.web.secrets.DB_PASSWORD: ssm: references are resolved by "
     "an AWS instance profile (platform aws); on local use env:NAME or file:PATH"),
    ("aws", "vault:x", "expected env:NAME, file:PATH, ssm:/parameter/name or secretsmanager:ARN"),
])
def test_secret_references_fit_the_platform(platform: str, ref: str, message: str) -> None:
    text = GOOD.replace("command: python -m app, listen: 80}",
                        f'command: python -m app, listen: 80, secrets: {{DB_PASSWORD: "{ref}"}}}}')
    if platform != "aws":
        text = (f"project: shop\nplatform: {platform}\nimages:\n  web: {{steps: [{{run: x}}]}}\n"
                "services:\n  web: {image: web, command: python -m app, listen: 80, "
                f'secrets: {{DB_PASSWORD: "{ref}"}}}}\n')
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value), str(info.value)


def test_ssm_and_secretsmanager_references_load_on_aws() -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/db-AbCdEf"
    text = GOOD.replace("command: python -m app, listen: 80}",
                        "command: python -m app, listen: 80, secrets: "
                        f'{{DB: "ssm:/shop/db", API: "secretsmanager:{arn}"}}}}')
    spec = parse_spec(text)
    assert spec.services["web"].secrets == {"DB": "ssm:/shop/db", "API": f"secretsmanager:{arn}"}
