"""ansible and puppet steps on an AWS bake: the trees travel inside the step's SSM command, run
on the builder (`ansible-playbook -c local`, `puppet apply --detailed-exitcodes`), are removed,
and are cached by the trees' hash. The builder is a local stand-in (tests/aws_standin.py) whose
`ansible-playbook` and `puppet` are small scripts: they check the command line kiln built and
run the `# shim:` lines of the playbook/manifest, so the step really changes the baked files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aws_helpers import aws as make_aws
from aws_standin import StandIns
from kiln.errors import BakeError
from kiln.platforms.aws.bake import AmiBuilder
from kiln.platforms.aws.inventory import tagged
from kiln.platforms.base import StepEvent
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.moto import MotoServer

TOOL = """#!/bin/sh
# stand-in {name}: checks its command line, runs the file's "# shim:" lines, exits as told
echo "{name} $*"
case "$*" in *"{needs}"*) ;; *) echo "{name}: missing {needs}" >&2; exit 64 ;; esac
for last; do :; done
[ -f "$last" ] || {{ echo "{name}: no file $last" >&2; exit 66; }}
sed -n 's/^# shim: //p' "$last" | sed "s#/opt/kiln#{{root}}/opt/kiln#g" > "$last.sh"
sh -e "$last.sh" || exit 4
code=$(sed -n 's/^# exit: //p' "$last")
exit "${{code:-0}}"
"""

SPEC = ImageSpec.model_validate({"steps": [
    {"copy": "app/", "to": "app/"},
    {"ansible": {"playbook": "bake/ansible/site.yml", "extra_vars": {"colour": "blue"}}},
    {"puppet": {"manifest": "bake/puppet/site.pp", "modulepath": ["bake/modules"]}}]})


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    ansible = tmp_path / "bake" / "ansible"
    ansible.mkdir(parents=True)
    (ansible / "site.yml").write_text(
        "- hosts: all\n  tasks: []\n"
        "# shim: test -f extra-vars.json || test -f ../extra-vars.json\n"
        "# shim: echo ansible-was-here > /opt/kiln/root/ansible.txt\n")
    puppet = tmp_path / "bake" / "puppet"
    puppet.mkdir(parents=True)
    (puppet / "site.pp").write_text("file { '/opt/kiln/root/puppet.txt': }\n"
                                    "# shim: echo puppet-was-here > /opt/kiln/root/puppet.txt\n"
                                    "# exit: 2\n")
    (tmp_path / "bake" / "modules" / "shop").mkdir(parents=True)
    (tmp_path / "bake" / "modules" / "shop" / "init.pp").write_text("class shop {}\n")
    return tmp_path


@pytest.fixture
def standins(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[StandIns]:
    tools = {"ansible-playbook": TOOL.format(name="ansible-playbook", needs="-c local"),
             "puppet": TOOL.format(name="puppet", needs="--detailed-exitcodes")}
    s = StandIns(tmp_path / "instances", moto, tools)
    s.install(monkeypatch)
    try:
        yield s
    finally:
        s.stop_all()


def builder(folder: Path, moto: MotoServer) -> AmiBuilder:
    return AmiBuilder(make_aws(moto), Store.open(folder / ".kiln"), "shop", poll=0.05)


def test_ansible_and_puppet_run_on_the_builder_and_are_cached(
        moto: MotoServer, standins: StandIns, project_dir: Path) -> None:
    events: list[StepEvent] = []
    b = builder(project_dir, moto)
    image = b.build("web", SPEC, base_dir=project_dir, progress=events.append)
    # They ran on the builder: the baked disk has what they wrote.
    (builder_id,) = standins.keys.values()
    disk = standins.roots[builder_id] / "opt" / "kiln" / "root"
    assert (disk / "ansible.txt").read_text() == "ansible-was-here\n"
    assert (disk / "puppet.txt").read_text() == "puppet-was-here\n"  # exit 2: changes applied
    # Their command lines, and their output streamed as step lines.
    lines = [e.output for e in events if e.output]
    assert any(line.startswith("ansible-playbook -i localhost, -c local") for line in lines)
    assert any("puppet apply --detailed-exitcodes" in line and "--modulepath" in line
               for line in lines)
    # The trees were removed from the builder after each step.
    assert not list((standins.roots[builder_id] / "tmp").glob("kiln-prov-*"))
    inv = tagged(b.aws, "shop")
    assert inv["instance"] == [] and inv["security-group"] == []

    # Unchanged trees: the AMI is reused. A changed module file bakes again.
    again = builder(project_dir, moto)
    assert again.build("web", SPEC, base_dir=project_dir).ref == image.ref
    assert again.aws.calls["ec2:RunInstances"] == 0
    (project_dir / "bake" / "modules" / "shop" / "init.pp").write_text("class shop { }\n")
    changed = builder(project_dir, moto).build("web", SPEC, base_dir=project_dir)
    assert changed.digest != image.digest


def test_a_failing_puppet_run_fails_the_step_and_cleans_up(
        moto: MotoServer, standins: StandIns, project_dir: Path) -> None:
    manifest = project_dir / "bake" / "puppet" / "site.pp"
    manifest.write_text(manifest.read_text().replace("# exit: 2", "# exit: 6"))
    b = builder(project_dir, moto)
    with pytest.raises(BakeError) as info:
        b.build("web", SPEC, base_dir=project_dir)
    assert "step 3/3 (puppet bake/puppet/site.pp) failed" in str(info.value)
    assert "detailed exit code 6" in str(info.value)
    inv = tagged(b.aws, "shop")
    assert inv["instance"] == [] and inv["security-group"] == [] and inv["image"] == []


def test_a_builder_without_the_tool_says_so(moto: MotoServer, project_dir: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    bare = StandIns(tmp_path / "bare", moto)  # no ansible-playbook on this builder
    bare.install(monkeypatch)
    with pytest.raises(BakeError, match="ansible-playbook is not installed on the builder"):
        builder(project_dir, moto).build("web", SPEC, base_dir=project_dir)
