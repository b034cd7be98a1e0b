"""examples/aws-shop from a fresh copy, on moto: bake (with its Ansible and Puppet steps), image
tests on a throwaway instance over SSM, a canary to a changed greeting, a change whose checks
fail (kept out), destroy, nothing left but the AMIs.

SSM runs on local stand-ins of the instances (tests/aws_standin.py). The builder's
`ansible-playbook` is the real one from kiln's environment (`-c local` on this machine), told
that the image root is the stand-in's (`-e kiln_root=...`, the playbook's own variable). Its
`puppet` is a stand-in (no Puppet on this machine): it applies the manifests' `file` resources,
the one resource type the example uses, with class parameters substituted, and exits as
`--detailed-exitcodes` says (2: changes applied)."""

from __future__ import annotations

import json
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
from kiln.testing.project import free_port, wait_for

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


ANSIBLE = """#!/bin/sh
# the real ansible-playbook; the image root it writes is the stand-in builder's
exec {bin}/ansible-playbook "$@" -e kiln_root={{root}}/opt/kiln/root
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
                        {"puppet": PUPPET.format(python=sys.executable),
                         "ansible-playbook": ANSIBLE.format(bin=Path(sys.executable).parent)})
    standins.install(monkeypatch)
    monkeypatch.setattr(AwsCompute, "poll", 0.05)
    monkeypatch.setattr(AlbRouter, "poll", 0.05)
    try:
        yield folder, standins
    finally:
        standins.stop_all()


def _role(moto: MotoServer, iid: str) -> str:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("kiln:role", "")


@pytest.mark.e2e
def test_aws_shop_bakes_tests_canaries_and_destroys(shop: tuple[Path, StandIns],
                                                    moto: MotoServer) -> None:
    from kiln.dev import dev_exec
    from kiln.errors import VerifyError

    folder, standins = shop
    project = open_project(folder / "kiln.yaml")
    lines: list[str] = []
    try:
        first = project.deploy(on_event=lambda e: lines.append(
            e.step.output if e.step is not None and e.step.output else e.message))
        # No --skip-tests: the image was tested first.
        assert [s.outcome for s in first.services] == ["promoted"], first.services
        assert listener_weights(moto) == {"web-r1": 100}

        # The Ansible step ran on the builder (its output streamed as the step's lines) and
        # its file is in the AMI; so is Puppet's.
        builders = [i for i in standins.roots if _role(moto, i) == "builder"]
        assert len(builders) == 1
        sent = [script for iid, script in standins.commands if iid == builders[0]]
        assert any("ansible-playbook -i localhost, -c local" in x for x in sent)
        assert any("puppet apply --detailed-exitcodes" in x for x in sent)
        assert any("PLAY RECAP" in x for x in lines), lines
        disk = standins.roots[builders[0]] / "opt" / "kiln" / "root" / "conf"
        assert (disk / "features.conf").read_text() == "checkout=enabled\n"
        assert (disk / "shop.conf").read_text() == "greeting=hello from puppet\n"

        # Every check ran on the test instance, over SSM, and passed.
        (att,) = project.store.query("SELECT passed, document FROM attestations")
        checks = json.loads(att["document"])["predicate"]["checks"]
        assert att["passed"] == 1 and all(c["passed"] for c in checks), checks
        assert sorted(c["kind"] for c in checks) == [
            "command", "file", "file", "http", "http", "port", "testinfra"]
        testinfra = next(c for c in checks if c["kind"] == "testinfra")
        assert {c["name"].partition("[")[0].rpartition("::")[2] for c in testinfra["cases"]
                if c["passed"]} >= {
            "test_puppet_wrote_the_config", "test_ansible_wrote_the_features",
            "test_the_database_password_is_in_the_service_env"}, testinfra
        tested = [i for i in standins.roots if _role(moto, i) == "test"]
        assert len(tested) == 1
        to_test = "\n".join(script for iid, script in standins.commands if iid == tested[0])
        for piece in ("curl", "/features", 'test -n "$DB_PASSWORD"', "conf/features.conf",
                      "conf/shop.conf"):
            assert piece in to_test, piece

        # The ssm: secret reached the app: fetched by the instance, in the service's env.
        running = project.compute.instances("web-r1")
        assert len(running) == 3
        out = dev_exec(project, "web", "printenv DB_PASSWORD")
        assert out.exit_code == 0 and out.stdout.strip() == "hunter2-but-longer", out
        compute = project.compute
        assert isinstance(compute, AwsCompute)
        journal = wait_for(lambda: compute.read_log(running[0], lines=20)[0], timeout=30,
                           what="the service's journal")
        assert any("database password set: True" in x for x in journal), journal

        # A canary to a changed greeting (Puppet's step reruns; Ansible's is cached).
        site = folder / "bake" / "site.pp"
        site.write_text(site.read_text().replace("hello from puppet", "hello from puppet, again"))
        second = open_project(folder / "kiln.yaml").deploy()
        assert [s.outcome for s in second.services] == ["promoted"], second.services
        assert listener_weights(moto) == {"web-r2": 100}
        assert len(project.store.query("SELECT id FROM attestations WHERE passed = 1")) == 2

        # A greeting the http check does not accept: the checks fail, nothing is released.
        for iid in [i for i in standins.roots if standins.alive(i)]:  # (r1's and r2's): the
            standins.stop(iid)  # test instance's port is its own, as on AWS
        site.write_text(site.read_text().replace("hello from puppet, again", "goodbye"))
        with pytest.raises(VerifyError) as info:
            open_project(folder / "kiln.yaml").deploy()
        assert "failed 2 of 7 checks" in str(info.value), info.value
        failed = project.store.query("SELECT document FROM attestations WHERE passed = 0")
        assert len(failed) == 1
        bad = [(c["kind"], c["description"]) for c in
               json.loads(failed[0]["document"])["predicate"]["checks"] if not c["passed"]]
        assert [k for k, _ in bad] == ["http", "testinfra"], bad
        assert bad[0][1].startswith("http GET / ") and "hello from puppet" in bad[0][1], bad
        assert listener_weights(moto) == {"web-r2": 100}
        assert [r["id"] for r in project.store.query("SELECT id FROM releases ORDER BY id")] \
            == ["web-r1", "web-r2"]
    finally:
        project.destroy()
        project.close()
    standins.reap()
    assert not any(standins.alive(i) for i in standins.roots)
    left = tagged(project.platform.aws, "aws-shop")
    assert {k: v for k, v in left.items() if v and k not in ("image", "snapshot")} == {}
    assert len(left["image"]) == 3  # the AMIs stay: the bake cache and rollback targets
