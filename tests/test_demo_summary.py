"""scripts/demo.py's cross-check summary: no cross-check for a judged rollout is a failure."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kiln_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def started(rollout: int, judged: bool) -> dict[str, Any]:
    return {"kind": "rollout.started", "data": {"rollout": rollout, "judged": judged}}


def check(rollout: int, agree: bool, counter: str = "haproxy") -> dict[str, Any]:
    return {"kind": "judge.crosscheck", "data": {"rollout": rollout, "agree": agree,
                                                 "counter": counter}}


@pytest.mark.parametrize(("events", "ok", "said"), [
    ([started(1, False), started(2, True), check(2, True), started(3, True), check(3, True)],
     True, "haproxy's request counters: 2 cross-checks, 2 agree"),
    # judged rollouts that were never cross-checked: 0 cross-checks is not agreement
    ([started(1, False), started(2, True), started(3, True)], False, "FAIL: 2 of 2 judged"),
    ([started(2, True), check(2, True), started(3, True)], False, "rollouts #3"),
    ([started(2, True), check(2, False)], False, "1 cross-check, 0 agree, 1 DISAGREE"),
    ([started(1, False)], False, "haproxy's request counters: 0 cross-checks"),  # nothing judged
])
def test_crosscheck_summary(demo: ModuleType, capsys: pytest.CaptureFixture[str],
                            events: list[dict[str, Any]], ok: bool, said: str) -> None:
    assert demo.crosscheck_summary("haproxy", events) is ok
    assert said in capsys.readouterr().out
