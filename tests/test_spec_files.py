"""Files a spec names must exist: `kiln validate` and bakes say which, where, and a guess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import SpecError
from kiln.spec.files import check_files, missing_files
from kiln.spec.loader import load_spec

SPEC = """\
project: shop
platform: podman
images:
  web:
    base: debian:bookworm
    steps:
      - copy: {copy}
        to: app/
      - puppet: {{manifest: {manifest}}}
    tests:
      - testinfra: {testinfra}
services:
  web:
    image: web
    command: python -m app
    port: 8000
    listen: 127.0.0.1:8080
"""


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **paths: str) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "site.pp").write_text("notice('hi')\n")
    (tmp_path / "tests").mkdir()
    values = {"copy": "app/", "manifest": "manifests/site.pp", "testinfra": "tests/", **paths}
    (tmp_path / "kiln.yaml").write_text(SPEC.format(**values))
    return tmp_path / "kiln.yaml"


@pytest.mark.parametrize(("paths", "expected"), [
    ({}, []),
    ({"copy": "ap/"}, ["kiln.yaml:7:15: images.web.steps[0].copy: copy source 'ap/' does not exist "
                       "in {base} (did you mean 'app/'?)"]),
    ({"manifest": "manifests/sit.pp"},
     ["kiln.yaml:9:28: images.web.steps[1].puppet.manifest: manifest 'manifests/sit.pp' does not "
      "exist in {base} (did you mean 'manifests/site.pp'?)"]),
    ({"testinfra": "nothing/", "copy": "zzz"},
     ["kiln.yaml:7:15: images.web.steps[0].copy: copy source 'zzz' does not exist in {base}",
      "kiln.yaml:11:20: images.web.tests[0].testinfra: testinfra path 'nothing/' does not exist "
      "in {base}"]),
])
def test_missing_files_are_named_with_their_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paths: dict[str, str],
        expected: list[str]) -> None:
    _project(tmp_path, monkeypatch, **paths)
    loaded = load_spec(Path("kiln.yaml"))
    base = str(tmp_path.resolve())
    assert missing_files(loaded) == [line.format(base=base) for line in expected]
    if expected:
        with pytest.raises(SpecError):
            check_files(loaded)
    else:
        check_files(loaded)
    assert missing_files(loaded, images=[]) == []  # only the images asked about


def test_validate_and_bake_refuse_a_missing_source_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path, monkeypatch, copy="ap/")
    for args in (["validate"], ["bake"]):
        out = subprocess.run([str(Path(sys.executable).with_name("kiln")), *args], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path,
                             env={"PATH": "/usr/bin:/bin", "KILN_HOME": str(tmp_path / ".k")})
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
        lines = [line for line in out.stderr.splitlines() if "copy source" in line]
        assert lines == [f"kiln.yaml:7:15: images.web.steps[0].copy: copy source 'ap/' does not "
                         f"exist in {tmp_path.resolve()} (did you mean 'app/'?)"], out.stderr
