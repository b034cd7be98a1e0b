"""A new operator's walk through kiln, scripted (issue #24's "done when"): init, validate with a
typo, deploy, a bad canary, a good canary followed by `status --watch` in a pty at 80 columns,
rollback, gc, destroy. Every screen keeps within the terminal's width (also each in-place
redraw), every --json stdout is only JSON that matches its schema, and every failure says what
was seen (the typo and where it is, the error rates the judge compared)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from json_contract import conforms
from kiln.testing.load import Load
from kiln.testing.project import Proj, judged_canary, wait_for
from test_cli_output import on_terminal

pytestmark = pytest.mark.e2e

COLS = 80
JUDGED = judged_canary([(20, "3s"), (50, "2s")], max_latency_increase="100%")


def fits(text: str, what: str, cols: int = COLS) -> None:
    """No line (nor any in-place redraw of one) is wider than the terminal."""
    for line in text.split("\n"):
        for shown in line.split("\r"):
            assert len(shown) <= cols, f"{what}: {len(shown)} columns: {shown!r}"


def term(proj: Proj, *args: str, code: int | None = 0, timeout: float = 120) -> str:
    got, text = on_terminal(*args, cwd=proj.dir, cols=COLS, timeout=timeout)
    assert code is None or got == code, f"kiln {' '.join(args)} exited {got}:\n{text}"
    fits(text, "kiln " + " ".join(args))
    return text


def as_json(proj: Proj, schema: str, *args: str, code: int = 0) -> Any:
    res = proj.kiln(*args, "--json", timeout=180)
    assert res.returncode == code, res.stdout + res.stderr
    return conforms(schema, res.stdout)  # the whole stdout is one JSON document


def test_an_operators_walkthrough(proj: Proj, tmp_path: Path) -> None:
    # init: a starter project, on a terminal.
    fresh = tmp_path / "fresh"
    code, text = on_terminal("init", str(fresh), cwd=tmp_path, cols=COLS)
    assert code == 0 and (fresh / "kiln.yaml").exists(), text
    fits(text, "kiln init")

    # validate with a typo: one line with file:line, what was seen and what was expected.
    proj.write(rollout=JUDGED, replicas=2)
    spec = proj.dir / "kiln.yaml"
    good = spec.read_text()
    spec.write_text(good.replace("- copy: app/", "- copy: ap/"))
    text = term(proj, "validate", code=1)
    line = next(ln for ln in text.splitlines() if "ap/" in ln)
    assert re.search(r"kiln\.yaml:\d+", line), text
    err = as_json(proj, "error", "validate", code=1)
    assert any("ap/" in p for p in err["error"]["problems"]), err
    spec.write_text(good)
    as_json(proj, "validate", "validate")

    # deploy: the first release, on a terminal.
    text = term(proj, "deploy", timeout=180)
    assert "web-r1" in text, text

    with Load(proj.listen, rate=100, max_seconds=240) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=20)
        # A bad canary: rolled back, saying what the judge saw (both error rates).
        proj.behave(version="2", error_rate=0.3)
        text = term(proj, "deploy", code=3, timeout=180)
        assert "rolled back" in text and re.search(r"5xx \d+(\.\d+)?% vs \d+(\.\d+)?%",
                                                   " ".join(text.split())), text
        # A good canary, started detached (JSON only), followed by `status --watch` at 80 columns.
        proj.behave(version="3", error_rate=0.0)
        started = as_json(proj, "deploy", "deploy", "--detach")
        assert [s["outcome"] for s in started] == ["started"], started
        text = term(proj, "status", "--watch", timeout=180)
        assert "promoted" in text, text
        watch = proj.kiln("status", "--watch", "--json")  # settled: one document, then exit
        assert watch.returncode == 0, watch.stderr
        for doc in watch.stdout.splitlines():
            conforms("status", doc)
        assert proj.weights() == {"web-r3": 100}

        # rollback: to the previous live release, on a terminal and the history as JSON.
        text = term(proj, "rollback", "web", timeout=180)
        assert "web-r1" in text, text
        wait_for(lambda: proj.weights() == {"web-r1": 100}, timeout=30)
        history = as_json(proj, "history", "history", "web")
        outcomes = [r["outcome"] for r in history["rollouts"]]
        assert outcomes[-3:] == ["rolled_back", "promoted", "promoted"], outcomes
    assert load.stats.conn_errors == 0, load.stats.summary()

    # gc and destroy: on a terminal, then as JSON.
    term(proj, "gc")
    as_json(proj, "gc", "gc")
    as_json(proj, "status", "status")
    text = term(proj, "destroy", "--yes")
    as_json(proj, "destroy", "destroy", "--yes")
    assert proj.alive_instances() == 0, text
