"""Pure parts of verify: labels, JSON paths, file checks, command outcomes, junit parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.base import ExecResult
from kiln.spec.models import CommandCheck, FileCheck, ImageSpec
from kiln.verify import checks as ck
from kiln.verify.testinfra_run import parse_junit, summarize

DOC = {"a": {"b": [10, {"c": "x"}]}, "n": None, "flag": False}


@pytest.mark.parametrize(("path", "found", "value"), [
    ("a.b.0", True, 10),
    ("a.b.1.c", True, "x"),
    ("a.b.-1.c", True, "x"),
    ("a.b.2", False, None),
    ("a.x", False, None),
    ("n", True, None),
    ("flag", True, False),
    ("a.b.c", False, None),
])
def test_json_lookup(path: str, found: bool, value: Any) -> None:
    assert ck.json_lookup(DOC, path) == (found, value)


@pytest.mark.parametrize(("check", "label", "kind", "app"), [
    ({"http": {"path": "/h"}}, "http GET /h -> 200", "http", True),
    ({"command": "true"}, "command `true`", "command", False),
    ({"command": {"run": "false", "exit_code": 1}}, "command `false` exits 1", "command", False),
    ({"port": 80}, "port 80 listening", "port", True),
    ({"file": {"path": "/x", "mode": "0644"}}, "file /x exists mode 0644", "file", False),
    ({"file": {"path": "/x", "exists": False}}, "file /x absent", "file", False),
    ({"testinfra": "t/"}, "testinfra t/", "testinfra", True),
])
def test_describe_kind_needs_app(check: dict[str, Any], label: str, kind: str,
                                 app: bool) -> None:
    (c,) = ImageSpec.model_validate({"tests": [check]}).tests
    assert (ck.describe(c), ck.kind_of(c), ck.needs_app(c)) == (label, kind, app)


@pytest.mark.parametrize(("path", "rel"), [
    ("/etc/x", "etc/x"), ("etc/x", "etc/x"), ("../../etc/x", "etc/x"), ("/a/../b", "b"),
    ("//a", "a"),
])
def test_image_path_stays_in_root(path: str, rel: str) -> None:
    assert ck.image_path(Path("/img/root"), path) == Path("/img/root") / rel


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "app.conf").write_text("port = 80\n")
    (tmp_path / "etc" / "app.conf").chmod(0o640)
    return tmp_path


@pytest.mark.parametrize(("spec", "passed", "detail"), [
    ({"path": "/etc/app.conf"}, True, "/etc/app.conf ok (0640, 10 bytes)"),
    ({"path": "/etc/app.conf", "mode": "640", "contains": "port"}, True, ""),
    ({"path": "/etc/app.conf", "mode": "0644"}, False, "/etc/app.conf: mode 0640, expected 0644"),
    ({"path": "/etc/app.conf", "contains": "8080"}, False, "does not contain '8080'"),
    ({"path": "/etc", "contains": "x"}, False, "is not a regular file"),
    ({"path": "/etc/none", "exists": False}, True, "/etc/none is absent"),
    ({"path": "/etc/none"}, False, "/etc/none does not exist in the image"),
])
def test_file_check(root: Path, spec: dict[str, Any], passed: bool, detail: str) -> None:
    out = ck.check_file(FileCheck.Spec.model_validate(spec), root)
    assert out.passed is passed and detail in out.detail


def test_file_check_without_image_tree(tmp_path: Path) -> None:
    out = ck.check_file(FileCheck.Spec(path="/x"), tmp_path / "nope")
    assert not out.passed and "image tree" in out.detail


def _exec(code: int, out: str = "", err: str = "") -> ck.ExecFn:
    return lambda command, timeout: ExecResult(code, out, err)


@pytest.mark.parametrize(("spec", "result", "passed", "detail"), [
    ({"run": "x"}, _exec(0), True, "exit code 0"),
    ({"run": "x"}, _exec(1, "", "Traceback\n  boom\nValueError: bad\n"), False,
     "exit code 1, expected 0: Traceback boom ValueError: bad"),
    ({"run": "x", "exit_code": 2}, _exec(2), True, "exit code 2"),
    ({"run": "x", "stdout_contains": "ok"}, _exec(0, "all ok"), True, ""),
    ({"run": "x", "stdout_contains": "ok"}, _exec(0, "nope"), False, "stdout does not contain"),
    ({"run": "x", "stderr_contains": "warn"}, _exec(0, "", "warn: y"), True, ""),
    ({"run": "x", "stderr_contains": "warn"}, _exec(0, "warn", ""), False, "stderr does not"),
])
def test_command_check(spec: dict[str, Any], result: ck.ExecFn, passed: bool,
                       detail: str) -> None:
    out = ck.check_command(CommandCheck.Spec.model_validate(spec), result)
    assert out.passed is passed and detail in out.detail


def test_port_check_refused() -> None:
    out = ck.check_port("127.0.0.1", 1, 1.0)
    assert not out.passed and "127.0.0.1:1" in out.detail


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="test_a" name="test_ok[kiln://web-1]" time="0.10"/>
<testcase classname="test_a" name="test_bad[kiln://web-1]" time="0.20">
  <failure message="AssertionError: assert False">long text</failure></testcase>
<testcase classname="test_a" name="test_skip" time="0.0">
  <skipped message="not here"/></testcase>
<testcase classname="" name="test_err" time="0.0"><error message="collection failed"/></testcase>
</testsuite></testsuites>
"""


def test_parse_junit_and_summarize(tmp_path: Path) -> None:
    (tmp_path / "j.xml").write_text(JUNIT)
    cases = parse_junit(tmp_path / "j.xml")
    assert [(c.name, c.passed, c.skipped) for c in cases] == [
        ("test_a::test_ok[kiln://web-1]", True, False),
        ("test_a::test_bad[kiln://web-1]", False, False),
        ("test_a::test_skip", True, True),
        ("test_err", False, False),
    ]
    out = summarize(1, cases, "")
    assert not out.passed
    assert out.detail == ("1 passed, 2 failed, 1 skipped; test_a::test_bad[kiln://web-1]: "
                          "AssertionError: assert False")


@pytest.mark.parametrize(("code", "output", "detail"), [
    (5, "no tests ran in 0.01s\n", "no tests collected: no tests ran in 0.01s"),
    (4, "ERROR: usage\n", "pytest usage error: ERROR: usage"),
    (0, "", "no tests collected"),
    (-9, "", "pytest exited -9"),
])
def test_summarize_without_cases(code: int, output: str, detail: str) -> None:
    out = summarize(code, (), output)
    assert not out.passed and out.detail == detail
