"""The one decision `kiln plan` prints and `kiln deploy` acts on (kiln.plan.decide), as a table."""

from __future__ import annotations

import pytest

from kiln.plan import ACTIONS, Decision, Facts, decide

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
LIVE = Facts(current="web-r1", current_image=A, image=A, alive=2, routed=2, replicas=2,
             strategy="canary", steps=(10, 50))


def f(**kw: object) -> Facts:
    from dataclasses import replace

    return replace(LIVE, **kw)  # type: ignore[arg-type]


CASES: list[tuple[str, Facts, str, str]] = [
    ("nothing deployed", Facts(replicas=3), "create", "first release: 3 instance(s)"),
    ("destroyed earlier", Facts(destroyed=True, image=A), "create", "destroyed earlier"),
    ("first release rolled back before", Facts(image=A, known_bad="web: rolled back"),
     "refused", "web: rolled back"),
    ("an interrupted rollout comes first", f(resume=(4, "step"), image=B), "resume",
     "rollout #4 was interrupted in step"),
    ("same image, same config, all alive", LIVE, "unchanged", "web-r1 is up to date"),
    ("more alive than replicas", f(alive=3, routed=3), "unchanged", "up to date"),
    ("one instance dead", f(alive=1, routed=1), "heal", "1/2 instances of web-r1 alive"),
    ("all dead", f(alive=0, routed=0), "heal", "launch 2 of the same image"),
    ("alive but one out of rotation", f(routed=1), "heal", "(1 in rotation)"),
    ("heal beats known-bad: no new release", f(alive=1, routed=1, known_bad="x"), "heal",
     "no new release"),
    ("short during a blue-green standby: a new release ends it", f(alive=1, routed=1,
                                                                    standby=True),
     "replace", "standby"),
    ("new image", f(image=B), "replace", "image changed: canary web-r1 -> new release via "
                                         "10%, 50%"),
    ("image unknown before a bake", f(image=None), "replace", "bake needed"),
    ("config changed", f(same_config=False), "replace", "config changed"),
    ("rolling has no steps", f(image=B, strategy="rolling"), "replace",
     "rolling web-r1 -> new release"),
    ("the explanation given is used", f(image=B, why=("image changed (app/x.py)",)),
     "replace", "image changed (app/x.py): canary"),
    ("new image that was just rolled back", f(image=B, known_bad="web: web-r2 was rolled back"),
     "refused", "web-r2 was rolled back"),
]


@pytest.mark.parametrize(("case", "facts", "action", "detail"), CASES, ids=[c[0] for c in CASES])
def test_decide(case: str, facts: Facts, action: str, detail: str) -> None:
    got = decide(facts)
    assert got.action == action, (case, got)
    assert detail in got.detail, (case, got)
    assert got.action in ACTIONS


def test_only_unchanged_changes_nothing() -> None:
    assert not Decision("unchanged", "").changes
    assert all(Decision(a, "").changes for a in ACTIONS if a != "unchanged")
