"""The CLI's start-up is part of every rollout's overhead (bench/rollout.py): a plain command,
and everything `kiln deploy` imports before 100 % of an unjudged canary, must not load the heavy
libraries only some commands use (numpy and scipy: the judge; boto3: platform aws; jinja2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("numpy", "scipy", "boto3", "botocore", "jinja2", "moto")

SPEC = """\
project: imports
router: haproxy
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
services:
  web:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: 127.0.0.1:18761
    rollout:
      strategy: canary
      steps:
        - {weight: 10, pause: 0s}
"""

RUN = """
import json, sys
watch = set(json.loads(sys.argv[2]))
sys.argv = ["kiln", *json.loads(sys.argv[1])]
from kiln_cli.main import run
try:
    run()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & watch)
print("\\nIMPORTS " + json.dumps({"code": code, "heavy": heavy}))
"""

DEPLOY_PATH = """
import json, sys
import kiln_cli.main, kiln_cli.progress, kiln.project, kiln.usecases.deploy, kiln.plan
import kiln.rollout.executor, kiln.readmodel, kiln.analysis.report
import kiln.platforms.local.compute, kiln.platforms.local.builder
import kiln.platforms.local.haproxy_router, kiln.platforms.local.router
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))))
"""


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "KILN_HOME"}, "NO_COLOR": "1"}


@pytest.mark.parametrize("args", [["status"], ["validate"], ["history", "web"], ["plan"]])
def test_a_plain_command_loads_no_heavy_library(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello\n")
    (tmp_path / "kiln.yaml").write_text(SPEC)
    res = subprocess.run([sys.executable, "-c", RUN, json.dumps(args), json.dumps(HEAVY)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False, env=_env())
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("IMPORTS ")), None)
    assert line is not None, res.stdout + res.stderr
    seen = json.loads(line.removeprefix("IMPORTS "))
    assert seen["code"] == 0, res.stdout + res.stderr  # the command really ran
    assert seen["heavy"] == [], f"`kiln {' '.join(args)}` imported {seen['heavy']}"


def test_the_deploy_path_loads_no_heavy_library() -> None:
    """What `kiln deploy` imports up to its report, for an unjudged rollout (a judged one
    imports the judge, which needs numpy and scipy, when its first step is judged)."""
    res = subprocess.run([sys.executable, "-c", DEPLOY_PATH, json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=120, check=False, env=_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check itself can fail: a command whose module set includes numpy is reported."""
    res = subprocess.run([sys.executable, "-c", "import numpy\n" + DEPLOY_PATH,
                          json.dumps(HEAVY)], capture_output=True, text=True, timeout=120,
                         check=False, env=_env())
    assert json.loads(res.stdout) == ["numpy"]


def test_collection_is_off_only_for_the_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """run() turns the cyclic collector off for the imports; opening the project (a deploy, `kiln
    serve`: long runs) turns it back on, and so does the end of any command."""
    import gc

    from kiln_cli import main

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello\n")
    (tmp_path / "kiln.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILN_HOME", raising=False)
    seen: list[bool] = []
    monkeypatch.setattr(main, "OPTS", main._Opts())
    try:
        gc.disable()
        main.project()
        seen.append(gc.isenabled())
        main._close_opened()
        monkeypatch.setattr(sys, "argv", ["kiln", "validate"])
        monkeypatch.setattr(main, "app", lambda: seen.append(gc.isenabled()))
        main.run()
        seen.append(gc.isenabled())
    finally:
        gc.enable()
    assert seen == [True, False, True]
