"""Ansible and Puppet steps without containers: models, cache inputs, exit codes, output parsing.

The output tests read what the real tools printed (tests/data/ansible, tests/data/puppet: recorded
from ansible-core 2.19 with the jsonl callback and from puppet 7 on Debian bookworm).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from kiln.bake import provisioners
from kiln.bake.hashing import step_key
from kiln.bake.provisioners import ansible, puppet
from kiln.errors import BakeError, SpecError
from kiln.spec.loader import load_spec
from kiln.spec.models import AnsibleStep, PuppetStep, Step

DATA = Path(__file__).parent / "data"
STEP: TypeAdapter[Step] = TypeAdapter(Step)


def step(data: dict[str, Any]) -> Any:
    return STEP.validate_python(data)


# ---------------------------------------------------------------- models


def test_step_models_parse_both_provisioners() -> None:
    a = step({"ansible": {"playbook": "bake/site.yml", "extra_vars": {"port": 8000},
                          "roles_path": "bake/roles:shared/roles"}})
    assert isinstance(a, AnsibleStep)
    assert a.ansible.roles_path == ["bake/roles", "shared/roles"]
    assert a.ansible.extra_vars == {"port": 8000}
    p = step({"puppet": {"manifest": "bake/site.pp", "modulepath": ["bake/modules"]}})
    assert isinstance(p, PuppetStep)
    assert p.puppet.modulepath == ["bake/modules"]


@pytest.mark.parametrize("data", [
    {"ansible": {"playbook": "/etc/site.yml"}},
    {"ansible": {"playbook": "../site.yml"}},
    {"ansible": {"playbook": "bake/site.yml", "roles_path": "bake/../../roles"}},
    {"ansible": {"playbook": ""}},
    {"ansible": {"extra_vars": {}}},
    {"ansible": {"playbook": "site.yml", "varz": {}}},
    {"puppet": {"manifest": "../site.pp"}},
    {"puppet": {"manifest": "site.pp", "modulepath": ["/opt/modules"]}},
])
def test_step_models_refuse_paths_outside_the_project_and_unknown_fields(data: Any) -> None:
    with pytest.raises(ValidationError):
        step(data)


def _spec(tmp_path: Path, platform: str) -> Path:
    path = tmp_path / "kiln.yaml"
    path.write_text(f"project: demo\nplatform: {platform}\nimages:\n  web:\n    steps:\n"
                    "      - run: echo hi\n      - ansible: {playbook: bake/site.yml}\n"
                    "      - puppet: {manifest: bake/site.pp}\n")
    return path


def test_provisioner_steps_need_the_podman_platform(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, "local"))
    assert [p.replace(str(tmp_path) + "/", "") for p in err.value.problems] == [
        "kiln.yaml:7:9: images.web.steps[1]: ansible steps run on platform podman "
        "or aws (this project uses local)",
        "kiln.yaml:8:9: images.web.steps[2]: puppet steps run on platform podman "
        "or aws (this project uses local)",
    ]
    assert len(load_spec(_spec(tmp_path, "podman")).spec.images["web"].steps) == 3


# ---------------------------------------------------------------- cache inputs


def _ansible_project(root: Path) -> AnsibleStep:
    (root / "bake/roles/web/tasks").mkdir(parents=True)
    (root / "bake/roles/web/templates").mkdir(parents=True)
    (root / "bake/site.yml").write_text("- hosts: all\n  roles: [web]\n")
    (root / "bake/roles/web/tasks/main.yml").write_text("- debug: msg=hi\n")
    (root / "bake/roles/web/templates/app.conf.j2").write_text("port = {{ port }}\n")
    (root / "shared/roles/base/tasks").mkdir(parents=True)
    (root / "shared/roles/base/tasks/main.yml").write_text("- debug: msg=base\n")
    (root / "app.py").write_text("print('app')\n")
    return AnsibleStep.model_validate({"ansible": {"playbook": "bake/site.yml",
                                                   "roles_path": "shared/roles",
                                                   "extra_vars": {"port": 8000}}})


def _key(s: provisioners.ProvisionerStep, root: Path, parent: str = "p") -> str:
    prepared = provisioners.prepare(s, root, "step 2/3")
    return step_key(parent, {"base": "debian"}, provisioners.definition(s), prepared.inputs)


def test_ansible_key_follows_the_playbook_tree_roles_and_variables(tmp_path: Path) -> None:
    s = _ansible_project(tmp_path)
    first = _key(s, tmp_path)
    assert _key(s, tmp_path) == first  # unchanged tree: same key, the layer is reused
    (tmp_path / "app.py").write_text("print('changed app')\n")
    assert _key(s, tmp_path) == first  # files outside the playbook's folder do not count
    (tmp_path / "bake/roles/web/templates/app.conf.j2").write_text("port={{ port }}\n")
    second = _key(s, tmp_path)
    assert second != first  # one role file changed: this step reruns
    (tmp_path / "shared/roles/base/tasks/main.yml").write_text("- debug: msg=changed\n")
    third = _key(s, tmp_path)
    assert third != second  # an extra roles_path folder counts too
    other_vars = s.model_copy(update={"ansible": s.ansible.model_copy(
        update={"extra_vars": {"port": 9000}})})
    assert _key(other_vars, tmp_path) != third
    slower = s.model_copy(update={"ansible": s.ansible.model_copy(update={"timeout": 5.0})})
    assert _key(slower, tmp_path) == third  # a timeout does not shape the image
    assert _key(s, tmp_path, parent="q") != third  # an earlier step changed: rerun


def test_puppet_key_follows_the_manifest_folder_and_modules(tmp_path: Path) -> None:
    (tmp_path / "bake/modules/greeter/manifests").mkdir(parents=True)
    (tmp_path / "bake/site.pp").write_text("include greeter\n")
    init = tmp_path / "bake/modules/greeter/manifests/init.pp"
    init.write_text("class greeter {}\n")
    s = PuppetStep.model_validate({"puppet": {"manifest": "bake/site.pp",
                                              "modulepath": "bake/modules"}})
    first = _key(s, tmp_path)
    assert _key(s, tmp_path) == first
    init.write_text("class greeter { notify { 'hi': } }\n")
    assert _key(s, tmp_path) != first
    plan = provisioners.prepare(s, tmp_path, "step 1/1").plan
    assert isinstance(plan, puppet.Plan)
    assert plan.manifest_in_container == "/kiln/puppet/manifests/site.pp"
    assert plan.modulepath == "/kiln/puppet/modules0"


@pytest.mark.parametrize(("data", "message"), [
    ({"ansible": {"playbook": "bake/missing.yml"}},
     "step 2/3: playbook 'bake/missing.yml' not found"),
    ({"ansible": {"playbook": "bake"}}, "step 2/3: playbook 'bake' is not a file"),
    ({"ansible": {"playbook": "bake/site.yml", "roles_path": "nowhere"}},
     "step 2/3: roles_path 'nowhere' not found"),
    ({"ansible": {"playbook": "escape/site.yml"}}, "step 2/3: playbook 'escape/site.yml' is outside"),
    ({"puppet": {"manifest": "bake/missing.pp"}}, "step 2/3: manifest 'bake/missing.pp' not found"),
    ({"puppet": {"manifest": "bake/site.yml", "modulepath": "bake/site.yml"}},
     "step 2/3: modulepath 'bake/site.yml' is not a folder"),
])
def test_missing_or_escaping_files_are_one_line(tmp_path: Path, data: Any, message: str) -> None:
    (tmp_path / "bake").mkdir()
    (tmp_path / "bake/site.yml").write_text("- hosts: all\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "site.yml").write_text("- hosts: all\n")
    (tmp_path / "escape").symlink_to(outside)
    with pytest.raises(BakeError) as err:
        provisioners.prepare(step(data), tmp_path, "step 2/3")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_ansible_missing_from_the_environment_is_one_line(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = _ansible_project(tmp_path)

    def absent(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ansible.metadata, "version", absent)
    with pytest.raises(BakeError) as err:
        provisioners.prepare(s, tmp_path, "step 2/3 (ansible bake/site.yml)")
    assert str(err.value) == (
        "step 2/3 (ansible bake/site.yml): ansible steps need ansible-core, which is not "
        f"installed ({ansible.INSTALL_HINT})")


def test_definition_names_the_kind_and_drops_the_timeout() -> None:
    s = step({"puppet": {"manifest": "bake/site.pp", "timeout": "5m"}})
    assert provisioners.definition(s) == {
        "puppet": {"manifest": "bake/site.pp", "modulepath": []}, "kind": "PuppetStep"}
    assert provisioners.describe(s) == "puppet bake/site.pp"


# ---------------------------------------------------------------- puppet exit codes and output


@pytest.mark.parametrize(("code", "expected"), [
    (0, "unchanged"), (2, "changed"), (4, "failed"), (6, "failed"), (1, "failed"),
    (3, "failed"), (137, "failed"),
])
def test_puppet_detailed_exit_codes(code: int, expected: str) -> None:
    assert puppet.outcome(code) == expected


MOUNTS = [(Path("/p/bake"), "/kiln/puppet/manifests", "bake"),
          (Path("/p/bake/modules"), "/kiln/puppet/modules0", "bake/modules")]


@pytest.mark.parametrize(("name", "expected"), [
    ("syntax.txt", "Could not parse for environment production: Syntax error at end of input "
                   "(file: bake/bad.pp)"),
    ("failed_resource.txt", "Could not set 'file' on ensure: No such file or directory @ "
                            "rb_sysopen - /nonexist/a (file: bake/fail.pp, line: 1)"),
    ("module_error.txt", "Evaluation Error: Error while evaluating a Resource Statement, Unknown "
                         "resource type: 'fiel' (file: bake/modules/greeter/manifests/init.pp, "
                         "line: 3, column: 3)"),
])
def test_puppet_first_error_in_project_paths(name: str, expected: str) -> None:
    lines = (DATA / "puppet" / name).read_text().splitlines()
    assert puppet.first_error(lines, MOUNTS) == expected


def test_puppet_error_absent_when_only_the_runtime_says_so() -> None:
    assert puppet.first_error(["Notice: x", "Error: while running runtime: exit status 4"],
                              MOUNTS) is None
    assert puppet.describe_failure(4) == "some resources failed"


# ---------------------------------------------------------------- ansible output


def _events(name: str) -> list[dict[str, Any]]:
    lines = (DATA / "ansible" / name).read_text().splitlines()
    events = [ansible.parse_event(line) for line in lines]
    assert all(e is not None for e in events)
    return [e for e in events if e is not None]


BASE = Path("/project")


def test_ansible_progress_lines_from_a_good_run() -> None:
    lines = [ansible.render(e, BASE) for e in _events("site.jsonl")]
    assert [x for x in lines if x] == [
        "PLAY all",
        "changed: web : write the greeting config",
        "ok: web : a command",
        "recap: ok=2 changed=1 failures=0 skipped=0 unreachable=0 ignored=0",
    ]
    assert not [f for e in _events("site.jsonl") if (f := ansible.Failure.from_event(e, BASE))]


def test_ansible_failed_task_names_itself_where_it_is_and_why() -> None:
    events = _events("failed_task.jsonl")
    failures = [f for e in events if (f := ansible.Failure.from_event(e, BASE))]
    assert [f.task for f in failures] == ["ignored failure", "install a package that does not exist"]
    assert ansible.explain(2, failures, [], BASE) == (
        "task 'install a package that does not exist' (bake/fail_apt.yml:9): "
        "E: Unable to locate package python3-apt")
    rendered = [x for e in events if (x := ansible.render(e, BASE))]
    assert rendered[2] == "failed: ignored failure: non-zero return code: false (rc 1)"


def test_ansible_parse_error_comes_with_file_and_line() -> None:
    stderr = (DATA / "ansible" / "syntax.stderr").read_text().splitlines()
    assert ansible.explain(4, [], stderr, BASE) == (
        "YAML parsing failed: While parsing a flow sequence did not find expected ',' or ']'. "
        "(bake/syn.yml:5:1)")
    assert ansible.explain(1, [], ["[ERROR]: the playbook: /project/x.yml could not be found"],
                           BASE) == "the playbook: x.yml could not be found"
    assert ansible.explain(250, [], ["boom"], BASE) == "ansible-playbook exited with code 250: boom"


@pytest.mark.parametrize("line", ["", "[WARNING]: x", "{not json", '{"no_event": 1}', "[1, 2]"])
def test_ansible_other_lines_are_not_events(line: str) -> None:
    assert ansible.parse_event(line) is None


# ---------------------------------------------------------------- podman: runs between provisioners


def test_a_run_after_a_provisioner_starts_in_the_workdir_the_steps_before_set() -> None:
    from kiln.platforms.podman import containerfile

    before = [step({"workdir": "srv"}), step({"run": "true"}), step({"workdir": "/opt/x"}),
              step({"ansible": {"playbook": "bake/site.yml"}})]
    assert containerfile.workdir_after([]) == containerfile.ROOT
    assert containerfile.workdir_after(before[:2]) == "/app/srv"
    assert containerfile.workdir_after(before) == "/opt/x"
    text = containerfile.render("sha256:abc", [step({"run": "pwd"})], {}, {}, "web", [5],
                                containerfile.workdir_after(before))
    assert text.splitlines()[:2] == ["FROM sha256:abc", "WORKDIR /opt/x"]


class _Image:
    """Stands in for a working container whose shell answers with fixed exit codes."""

    name = "kiln-provision-test"

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.ran: list[list[str]] = []

    def run(self, argv: list[str], **_: Any) -> Any:
        from kiln.bake.provisioners.process import Finished

        self.ran.append(argv)
        return Finished(self.codes.pop(0), ["E: Unable to locate package puppet-agent"], [])

    def shell(self, script: str, **_: Any) -> Any:
        return self.run(["/bin/sh", "-c", script])


@pytest.mark.parametrize(("codes", "message"), [
    ([10], "step 2/3 (puppet bake/site.pp): puppet is not in the image and the image has no "
           "apt-get to install it (add puppet to the base's packages)"),
    ([12], "step 2/3 (puppet bake/site.pp): cannot install puppet from the Debian archive: "
           "E: Unable to locate package puppet-agent (add puppet to the base's packages)"),
    ([0, 4, 0], "step 2/3 (puppet bake/site.pp) failed: some resources failed "
                "(puppet apply exit code 4)"),
])
def test_puppet_missing_or_failing_is_one_line(tmp_path: Path, codes: list[int],
                                               message: str) -> None:
    (tmp_path / "bake").mkdir()
    (tmp_path / "bake/site.pp").write_text("notify { 'hi': }\n")
    plan = puppet.prepare(step({"puppet": {"manifest": "bake/site.pp"}}), tmp_path, "step 2/3")
    with pytest.raises(BakeError) as err:
        puppet.apply(plan, _Image(codes), on_line=lambda _l: None,  # type: ignore[arg-type]
                     where="step 2/3 (puppet bake/site.pp)")
    assert str(err.value) == message


def test_ansible_needs_python_in_the_image(tmp_path: Path) -> None:
    s = _ansible_project(tmp_path)
    plan = ansible.prepare(s, tmp_path, "step 2/3")
    with pytest.raises(BakeError) as err:
        ansible.apply(plan, _Image([1]), on_line=lambda _l: None,  # type: ignore[arg-type]
                      where="step 2/3 (ansible bake/site.yml)")
    assert str(err.value).startswith("step 2/3 (ansible bake/site.yml): ansible needs "
                                      "/usr/bin/python3 in the image, which it lacks")
