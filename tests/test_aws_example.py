"""examples/aws-shop from a fresh copy, on moto: bake (with its Puppet step), image tests on a
throwaway instance, a canary to a changed greeting, destroy, nothing left but the AMIs.

SSM runs on local stand-ins of the instances (tests/aws_standin.py). The builder's `puppet` is a
stand-in too (no Puppet on this machine): it applies the manifests' `file` resources, the one
resource type the example uses, with class parameters substituted, and exits as
`--detailed-exitcodes` says (2: changes applied)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from aws_helpers import listener_weights, open_project, subnets
from aws_standin import StandIns
from kiln.platforms.aws.compute import AwsCompute
from kiln.platforms.aws.inventory import tagged
from kiln.platforms.aws.router import AlbRouter
from kiln.testing.moto import REGION, MotoServer
from kiln.testing.project import free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "aws-shop"

PUPPET = """#!{python}
# stand-in puppet apply: `file` resources (directory, or content with ${{var}}) and exit 2
import re, sys, pathlib
args = sys.argv[1:]
assert args[:2] == ["apply", "--detailed-exitcodes"], args
paths = [pathlib.Path(args[-1])]
if "--modulepath" in args:
    paths += [pathlib.Path(p) for p in args[args.index("--modulepath") + 1].split(":")]
text = "\\n".join(f.read_text() for p in paths
                 for f in ([p] if p.is_file() else sorted(p.rglob("*.pp"))))
params = dict(re.findall(r"(\\w+)\\s*=>\\s*'([^']*)'", text))
for path, body in re.findall(r"file\\s*\\{{\\s*\\[?'([^']+)'\\]?:(.*?)\\n\\s*\\}}", text,
                             re.S):
    target = pathlib.Path("{{root}}" + path)
    if "directory" in body:
        target.mkdir(parents=True, exist_ok=True)
        continue
    content = re.search(r'content\\s*=>\\s*"([^"]*)"', body).group(1)
    content = re.sub(r"\\$\\{{(\\w+)\\}}", lambda m: params[m.group(1)], content)
    target.write_text(content.replace("\\\\n", "\\n"))
    mode = re.search(r"mode\\s*=>\\s*'(\\d+)'", body)
    if mode:
        target.chmod(int(mode.group(1), 8))
    print(f"Notice: /Stage[main]/File[{{path}}]/content: content changed")
sys.exit(2)
"""


@pytest.fixture
def shop(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[Path, StandIns]]:
    import sys

    folder = tmp_path / "aws-shop"
    shutil.copytree(EXAMPLE, folder)
    port = free_port()  # the stand-ins share this machine's ports
    text = (folder / "kiln.yaml").read_text()
    text = text.replace("subnet-0abc1234, subnet-0def5678", ", ".join(subnets(moto)))
    text = text.replace("port: 8000", f"port: {port}").replace("pause: 1m", "pause: 0s")
    (folder / "kiln.yaml").write_text(text.replace("drain_timeout: 30s", "drain_timeout: 0s"))
    # What a real account has before kiln runs: the instance profile and the parameter.
    boto3.client("iam", region_name=REGION, endpoint_url=moto.url).create_instance_profile(
        InstanceProfileName="kiln-instance")
    boto3.client("ssm", region_name=REGION, endpoint_url=moto.url).put_parameter(
        Name="/shop/db-password", Value="hunter2-but-longer", Type="SecureString")
    standins = StandIns(tmp_path / "instances", moto,
                        {"puppet": PUPPET.format(python=sys.executable)})
    standins.install(monkeypatch)
    monkeypatch.setattr(AwsCompute, "poll", 0.05)
    monkeypatch.setattr(AlbRouter, "poll", 0.05)
    try:
        yield folder, standins
    finally:
        standins.stop_all()


@pytest.mark.e2e
def test_aws_shop_bakes_tests_canaries_and_destroys(shop: tuple[Path, StandIns],
                                                    moto: MotoServer) -> None:
    folder, standins = shop
    project = open_project(folder / "kiln.yaml")
    try:
        first = project.deploy()  # no --skip-tests: the image is tested first
        assert [s.outcome for s in first.services] == ["promoted"], first.services
        checks = project.store.query("SELECT passed FROM attestations")
        assert [c["passed"] for c in checks] == [1]
        assert listener_weights(moto) == {"web-r1": 100}

        site = folder / "bake" / "site.pp"
        site.write_text(site.read_text().replace("hello from puppet", "hello from puppet, again"))
        second = open_project(folder / "kiln.yaml").deploy()
        assert [s.outcome for s in second.services] == ["promoted"], second.services
        assert listener_weights(moto) == {"web-r2": 100}
        assert len(project.store.query("SELECT id FROM attestations WHERE passed = 1")) == 2
    finally:
        project.destroy()
        project.close()
    standins.reap()
    assert not any(standins.alive(i) for i in standins.roots)
    left = tagged(project.platform.aws, "aws-shop")
    assert {k: v for k, v in left.items() if v and k not in ("image", "snapshot")} == {}
    assert len(left["image"]) == 2  # the AMIs stay: the bake cache and rollback targets
