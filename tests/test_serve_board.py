"""What the dashboard offers and lists for a rollout in each phase (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.rollout.decide import Decision, Status
from kiln.serve.board import actions_for, step_list
from kiln.spec.models import RolloutStep

PLAN = [RolloutStep(weight=10, pause=None), RolloutStep(weight=50, pause=30.0),
        RolloutStep(weight=80, pause=0.0)]


def status(phase: str, step: int = 0, outcome: Any = None, weights: bool = True,
           decisions: tuple[tuple[int, str], ...] = (), strategy: str = "canary") -> Status:
    return Status(phase=phase, strategy=strategy, new="web-r2", old="web-r1",  # type: ignore[arg-type]
                  replicas=1, step=step, outcome=outcome,
                  weights={"web-r2": 10, "web-r1": 90} if weights else {},
                  decisions=[Decision(1.0, s, 10, o, "why") for s, o in decisions])


@pytest.mark.parametrize(("st", "expected"), [
    (status("launch"), ["abort"]),
    (status("health"), ["abort"]),
    (status("step"), ["promote", "abort"]),
    (status("roll", strategy="rolling"), ["abort"]),
    (status("step", strategy="blue-green"), ["abort"]),
    (status("drain_old", step=3), ["abort"]),
    # A rolled-back canary draining: neither promote nor abort can apply.
    (status("drain_new", outcome="rolled_back"), []),
    (status("rollback", outcome="aborted"), []),
    (status("restore", outcome="rolled_back", strategy="rolling"), []),
    (status("done", outcome="promoted"), []),
    (status("standby", outcome="promoted", strategy="blue-green"), []),
])
def test_actions_offered(st: Status, expected: list[str]) -> None:
    assert actions_for(st) == expected


def states(st: Status) -> list[str]:
    return [s["state"] for s in step_list(st, PLAN)]


@pytest.mark.parametrize(("st", "expected"), [
    (status("health", weights=False), ["pending", "pending", "pending"]),
    (status("step", step=0), ["current", "pending", "pending"]),
    (status("step", step=1, decisions=((0, "promote"),)), ["done", "current", "pending"]),
    (status("drain_new", step=1, outcome="rolled_back", decisions=((0, "pass"), (1, "fail"))),
     ["done", "failed", "pending"]),
    (status("done", step=3, outcome="promoted", decisions=((0, "pass"), (1, "pass"))),
     ["done", "done", "done"]),
    (status("done", step=0, outcome="promoted", decisions=((0, "promote"),)),
     ["done", "skipped", "skipped"]),
    (status("done", step=0, outcome="failed", weights=False), ["pending", "pending", "pending"]),
    (status("roll", strategy="rolling"), []),
])
def test_step_states(st: Status, expected: list[str]) -> None:
    assert states(st) == expected


def test_steps_say_how_long_they_hold_and_what_the_judge_said() -> None:
    rows = step_list(status("step", step=1, decisions=((0, "pass"),)), PLAN)
    assert [(r["weight"], r["hold"], r["judge"]) for r in rows] == [
        (10, "until promoted", "pass"), (50, "30s", None), (80, "no pause", None)]
