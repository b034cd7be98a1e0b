"""No silent fallback (issue 20): with `sandbox: none` in kiln.yaml every command warns exactly
once, on one line, and `status` (text and --json) and the dashboard (`kiln serve`'s page and
/api/status) show it; without it none of them mention it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.testing.project import make_project, teardown, wait_for
from kiln.testing.serve import ServeProc

pytestmark = pytest.mark.e2e

COMMANDS = (["validate"], ["plan"], ["images"], ["status"], ["status", "--json"], ["drift"],
            ["history", "web"], ["destroy"])


def board(serve: ServeProc) -> str:
    """The dashboard page once its board (project line, cards) is filled in, else ''."""
    page = str(serve.get("/"))
    return page if "router <b>" in page else ""


@pytest.mark.parametrize("opted_out", [True, False])
def test_sandbox_none_warns_once_per_command_and_is_shown(tmp_path: Path,
                                                          opted_out: bool) -> None:
    proj = make_project(tmp_path)
    if opted_out:
        spec = proj.dir / "kiln.yaml"
        spec.write_text("sandbox: none\n" + spec.read_text())
    try:
        for args in COMMANDS:
            res = proj.kiln(*args)
            assert res.returncode == 0, (args, res.stdout + res.stderr)
            lines = [ln for ln in res.stderr.splitlines() if "sandbox: none" in ln]
            assert len(lines) == (1 if opted_out else 0), (args, res.stderr)
            if opted_out:
                assert "unsandboxed" in lines[0] and "Traceback" not in res.stderr, lines
        res = proj.kiln("status")
        assert ("sandbox: none" in res.stdout) is opted_out, res.stdout
        res = proj.kiln("status", "--json")
        assert json.loads(res.stdout)["sandbox"] == ("none" if opted_out else "bwrap")
        with ServeProc(proj.dir) as serve:
            assert serve.status()["sandbox"] == ("none" if opted_out else "bwrap")
            page = wait_for(lambda: board(serve), timeout=30.0, what="the dashboard's board")
            assert ("sandbox: none" in page) is opted_out
            assert ("unsandboxed" in page) is opted_out
            said = [ln for ln in serve.output if "sandbox: none" in ln]
            assert len(said) == (1 if opted_out else 0), serve.output
    finally:
        teardown(proj)
