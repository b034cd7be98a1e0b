"""Bake on platform aws against moto's server: the API sequence, the tags, reuse by input key,
and that nothing temporary is left behind on success, failure or Ctrl-C."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from aws_helpers import aws as make_aws
from kiln.errors import BakeError, PlatformError
from kiln.platforms.aws import tags as t
from kiln.platforms.aws.bake import AmiBuilder, SsmRunner, deregister
from kiln.platforms.aws.client import Aws
from kiln.platforms.aws.inventory import tagged
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.moto import MotoServer

SPEC = ImageSpec.model_validate({"steps": [
    {"copy": "app/", "to": "app/"}, {"env": {"MODE": "prod"}},
    {"run": "apt-get install -y python3"}]})


class Failing(SsmRunner):
    """Runs steps through moto's SSM (which always succeeds), then fails step `at`."""

    def __init__(self, at: int, exc: BaseException | None = None) -> None:
        self.at, self.exc, self.n = at, exc, 0

    def run(self, aws: Aws, instance_id: str, lines: Sequence[str], timeout: float
            ) -> tuple[bool, str]:
        self.n += 1
        if self.n == self.at:
            if self.exc is not None:
                raise self.exc
            return False, "Failed: E: Unable to locate package python3"
        return super().run(aws, instance_id, lines, timeout)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    return tmp_path


def builder(tmp_path: Path, aws: Aws, runner: SsmRunner | None = None) -> AmiBuilder:
    store = Store.open(tmp_path / ".kiln")
    return AmiBuilder(aws, store, "shop", runner=runner, poll=0.05)


def temporary(aws: Aws) -> list[str]:
    inv = tagged(aws, "shop")
    return inv["instance"] + inv["security-group"] + inv["key-pair"]


def test_bake_tags_reuse_and_cleanup(moto: MotoServer, project_dir: Path) -> None:
    aws = make_aws(moto)
    b = builder(project_dir, aws)
    image = b.build("web", SPEC, base_dir=project_dir)
    assert image.ref.startswith("ami-") and image.env == {"MODE": "prod"}
    ami = aws.ec2.describe_images(ImageIds=[image.ref])["Images"][0]
    tags = t.from_list(ami["Tags"])
    assert tags[t.INPUT_KEY] == image.digest.removeprefix("sha256:")
    assert tags[t.PROJECT] == "shop" and tags[t.ROLE] == "image" and tags["team"] == "shop"
    snaps = [m["Ebs"]["SnapshotId"] for m in ami["BlockDeviceMappings"]]
    assert tagged(aws, "shop")["snapshot"] == sorted(snaps)
    # The builder ran one SSM command per step, then became the AMI, then went away.
    assert aws.calls["ssm:SendCommand"] == 3
    assert aws.calls["ec2:RunInstances"] == 1 and aws.calls["ec2:CreateImage"] == 1
    assert aws.calls["ec2:TerminateInstances"] == 1 and aws.calls["ec2:DeleteSecurityGroup"] == 1
    assert temporary(aws) == []

    # Same inputs: the tagged AMI is reused, no builder is launched (and plan sees it).
    again = builder(project_dir, make_aws(moto))
    resolved = again.resolve("web", SPEC, base_dir=project_dir)
    assert resolved is not None and resolved.ref == image.ref
    assert again.build("web", SPEC, base_dir=project_dir).ref == image.ref
    assert again.aws.calls["ec2:RunInstances"] == 0
    # A changed input bakes a new AMI.
    (project_dir / "app" / "main.py").write_text("print('bye')\n")
    other = builder(project_dir, make_aws(moto)).build("web", SPEC, base_dir=project_dir)
    assert other.ref != image.ref and other.digest != image.digest
    assert temporary(aws) == []


@pytest.mark.parametrize("at", [1, 3])
def test_failed_step_leaves_nothing(moto: MotoServer, project_dir: Path, at: int) -> None:
    aws = make_aws(moto)
    with pytest.raises(BakeError, match=f"step {at}/3 .* failed on the builder i-"):
        builder(project_dir, aws, Failing(at)).build("web", SPEC, base_dir=project_dir)
    inv = tagged(aws, "shop")
    assert temporary(aws) == [] and inv["image"] == [] and inv["snapshot"] == []
    assert aws.calls["ec2:CreateImage"] == 0


def test_ctrl_c_cleans_up(moto: MotoServer, project_dir: Path) -> None:
    aws = make_aws(moto)
    with pytest.raises(KeyboardInterrupt):
        builder(project_dir, aws, Failing(2, KeyboardInterrupt())).build(
            "web", SPEC, base_dir=project_dir)
    assert temporary(aws) == [] and tagged(aws, "shop")["image"] == []


def test_killed_bake_is_swept_by_the_next(moto: MotoServer, project_dir: Path) -> None:
    """SIGKILL runs no finally: the next bake of the project removes the orphaned builder."""
    aws = make_aws(moto)
    b = builder(project_dir, aws)
    group = b._group("dead0001")
    b._launch(b_plan(b, project_dir), group, "dead0001")
    assert len(temporary(aws)) == 2
    b.build("web", SPEC, base_dir=project_dir)
    assert temporary(aws) == []


def b_plan(b: AmiBuilder, base_dir: Path):  # type: ignore[no-untyped-def]
    from kiln.platforms.aws.bake import plan
    from kiln.platforms.aws.preflight import base_ami

    return plan(SPEC, base_dir, base_ami(b.aws), "t3.micro")


def test_deregister_deletes_snapshots(moto: MotoServer, project_dir: Path) -> None:
    aws = make_aws(moto)
    image = builder(project_dir, aws).build("web", SPEC, base_dir=project_dir)
    assert deregister(aws, [image.ref]) == []
    inv = tagged(aws, "shop")
    assert inv["image"] == [] and inv["snapshot"] == []


@pytest.mark.parametrize(("over", "message"), [
    ({"base_ami": {"owner": "099720109477", "name": "no-such-*"}},
     "aws.base_ami: no available AMI owned by 099720109477 matches name 'no-such-*'"),
    ({"base_ami": "ami-0123456789abcdef0"}, "aws.base_ami: ami-0123456789abcdef0 not found"),
    ({"subnets": ["subnet-0123456789abcdef0"]}, "aws.subnets: "),
    ({"region": "xx-nowhere-1"}, "aws.region: 'xx-nowhere-1' is not an AWS region"),
])
def test_bad_input_one_line_nothing_created(moto: MotoServer, project_dir: Path,
                                            over: dict[str, object], message: str) -> None:
    aws = make_aws(moto, **over)
    with pytest.raises(PlatformError) as info:
        builder(project_dir, aws).build("web", SPEC, base_dir=project_dir)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert sum(len(v) for v in tagged(make_aws(moto), "shop").values()) == 0


def test_missing_credentials(moto: MotoServer, project_dir: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    with pytest.raises(PlatformError, match=r"^aws: .*no AWS credentials found"):
        builder(project_dir, make_aws(moto)).build("web", SPEC, base_dir=project_dir)
