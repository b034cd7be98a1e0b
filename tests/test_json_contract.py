"""Every command's --json output (and its errors) against the schemas in docs/json/, through the
real console script. The commands that need a deploy are checked by the e2e tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from json_contract import SCHEMAS, conforms
from kiln.spec.init import init_project

KILN = Path(sys.executable).parent / "kiln"
DOC = (SCHEMAS.parent / "json.md").read_text()


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KILN_HOME"}
    return subprocess.run([str(KILN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("contract") / "shop"
    init_project(folder)
    return folder


@pytest.mark.parametrize(("schema", "args", "code"), [
    ("validate", ["validate", "--json"], 0),
    ("images", ["images", "--json"], 0),
    ("plan", ["plan", "--json", "--detailed-exitcode"], 2),
    ("status", ["status", "--json"], 0),
    ("history", ["history", "--json"], 0),
    ("drift", ["drift", "--json"], 0),
    ("gc", ["gc", "--json"], 0),
    ("logs", ["logs", "--json"], 0),
    ("destroy", ["destroy", "--yes", "--json"], 0),
    ("down", ["down", "--json"], 0),
])
def test_reporting_commands_match_their_schema(project: Path, schema: str, args: list[str],
                                               code: int) -> None:
    res = kiln(*args, cwd=project)
    assert res.returncode == code, res.stdout + res.stderr
    conforms(schema, res.stdout)


@pytest.mark.parametrize(("args", "kind", "code"), [
    (["history", "nosuch", "--json"], "NotFound", 1),
    (["rollback", "web", "--json"], "KilnError", 1),
    (["promote", "web", "--json"], "KilnError", 1),
    (["logs", "web", "--instance", "zzz", "--json"], "NotFound", 1),
])
def test_errors_are_json_on_stdout_with_the_exit_code(project: Path, args: list[str], kind: str,
                                                      code: int) -> None:
    res = kiln(*args, cwd=project)
    assert res.returncode == code, res.stdout + res.stderr
    doc = conforms("error", res.stdout)
    assert doc["error"]["kind"] == kind and doc["error"]["exit_code"] == code
    assert res.stderr.startswith("kiln: error: "), "the one line stays on stderr"
    assert "Traceback" not in res.stdout + res.stderr


def test_a_spec_error_lists_its_problems_as_json(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text("project: x\nservices:\n  web: {image: nope, port: 0}\n")
    res = kiln("validate", "--json", cwd=tmp_path)
    assert res.returncode == 1
    doc = conforms("error", res.stdout)
    assert doc["error"]["kind"] == "SpecError" and len(doc["error"]["problems"]) >= 1
    assert all(re.match(r".*kiln\.yaml:\d+:\d+: ", p) for p in doc["error"]["problems"])


def test_every_schema_is_documented_and_every_command_with_json_has_one() -> None:
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    for name in names:
        assert f"{name}.schema.json" in DOC, f"docs/json.md does not list {name}.schema.json"
    res = subprocess.run([str(KILN), "--help"], capture_output=True, text=True, check=True)
    commands = re.findall(r"^│?\s{1,3}([a-z]+)\s{2,}", res.stdout, re.M)
    assert {"deploy", "status", "history", "logs", "up", "down", "validate"} <= set(commands)
    for command in commands:
        help_text = subprocess.run([str(KILN), command, "--help"], capture_output=True,
                                   text=True, check=False).stdout
        if "--json" in help_text:
            schema = {"promote": "result", "abort": "result", "rollback": "result"}.get(
                command, command)
            assert schema in names, f"kiln {command} --json has no schema in docs/json/"
