"""`kiln status --watch` as a pure loop over status documents: it waits for a rollout just
requested, writes a line per change piped, redraws in place on a terminal, JSON lines with --json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln_cli.detach import watch


def _doc(rollout_id: int, phase: str, outcome: str | None = None,
         driven_by: str | None = "'deploy web' (pid 1 on h, running for 1s)") -> dict[str, Any]:
    return {"project": "shop", "services": [{"service": "web", "rollout": {
        "rollout_id": rollout_id, "strategy": "canary", "from": "web-r1", "to": f"web-r{rollout_id}",
        "phase": phase, "step": 1, "steps": 2, "outcome": outcome, "reason": None, "waiting": None,
        "judge": None, "until": None, "driven_by": None if phase == "done" else driven_by}}]}


def _script(*docs: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Each call returns the next document; the last one repeats."""
    queue = list(docs)

    def status() -> dict[str, Any]:
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return status


OLD = _doc(3, "done", "promoted")


def test_waits_for_the_rollout_a_running_deploy_will_open() -> None:
    """`kiln deploy &` then `kiln status --watch`: the deploy bakes while holding the lock; the
    previous rollout must not be reported as the one watched."""
    docs = [OLD, OLD, OLD, OLD, _doc(4, "step"), _doc(4, "step"), _doc(4, "done", "promoted")]
    holders = iter(["'deploy web'"] * 4 + [None] * 10)
    lines: list[str] = []
    code = watch(_script(*docs), lines.append, poll=0, busy=lambda: next(holders), grace=0)
    assert code == 0
    assert any("rollout #4" in line for line in lines), lines
    assert lines[-1] == "web: settled: promoted", lines


def test_nothing_open_and_nothing_requested_returns_at_once_after_the_grace() -> None:
    lines: list[str] = []
    assert watch(_script(OLD), lines.append, poll=0, busy=lambda: None, grace=0) == 0
    assert lines == ["web: rollout #3 canary web-r1 -> web-r3: promoted"]


def test_a_rolled_back_rollout_exits_3_and_an_undriven_one_1() -> None:
    lines: list[str] = []
    code = watch(_script(_doc(4, "step"), _doc(4, "done", "rolled_back")), lines.append, poll=0,
                 grace=0)
    assert code == 3 and lines[-1] == "web: settled: rolled back"
    lines.clear()
    assert watch(_script(_doc(4, "step", driven_by=None)), lines.append, poll=0, grace=0) == 1
    assert "`kiln deploy` resumes it" in lines[-1]


def test_terminal_redraws_in_place_and_prints_only_the_outcome() -> None:
    frames: list[list[str]] = []
    lines: list[str] = []
    docs = [_doc(4, "step"), _doc(4, "step"), _doc(4, "step"), _doc(4, "done", "promoted")]
    assert watch(_script(*docs), lines.append, poll=0, grace=0, redraw=frames.append) == 0
    assert len(frames) == 3 and all(len(frame) == 1 for frame in frames)  # one line per service
    assert lines == ["web: settled: promoted"]


def test_json_lines_only_on_change_and_no_words() -> None:
    docs: list[dict[str, Any]] = []
    lines: list[str] = []
    script = _script(_doc(4, "step"), _doc(4, "step"), _doc(4, "done", "promoted"))
    assert watch(script, lines.append, poll=0, grace=0, documents=docs.append) == 0
    assert [d["services"][0]["rollout"]["phase"] for d in docs] == ["step", "done"]
    assert lines == []
