"""Table tests of the pure rollout step machine."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.rollout.decide import (
    EnsureInstances,
    Observation,
    Record,
    Retire,
    SetWeights,
    Status,
    TerminateRelease,
    TerminateRetiring,
    Verdict,
    decide,
    start,
)
from kiln.spec.models import Analysis, Rollout, RolloutStep


def obs(now: float = 0.0, **kw: Any) -> Observation:
    base: dict[str, Any] = dict(new_alive=3, new_healthy=3, new_dead=0, old_alive=3)
    base.update(kw)
    return Observation(now=now, **base)


def canary(*steps: tuple[int, float | None], **kw: Any) -> Rollout:
    return Rollout(strategy="canary", steps=[RolloutStep(weight=w, pause=p) for w, p in steps], **kw)


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def run(s: Status, r: Rollout, *observations: Observation) -> tuple[Status, list[list[Any]]]:
    trail = []
    for o in observations:
        s, actions = decide(s, o, r, 30.0)
        trail.append(actions)
    return s, trail


def test_first_release_goes_live_when_healthy() -> None:
    r = canary((10, 0))
    s = start("canary", "web-r1", None, 3, 0.0)
    s, (a1, a2, a3) = run(s, r, obs(0), obs(1, new_healthy=1), obs(2))
    assert a1 == [EnsureInstances("web-r1", 3)]
    assert a2 == []
    assert s.phase == "done" and s.outcome == "promoted"
    assert SetWeights({"web-r1": 100}) in a3


def test_canary_walks_steps_then_drains_old() -> None:
    r = canary((10, 5), (50, 5))
    s = start("canary", "web-r2", "web-r1", 3, 0.0)
    s, trail = run(s, r, obs(0), obs(1))
    assert s.phase == "step" and s.weights == {"web-r2": 10, "web-r1": 90}
    s, trail = run(s, r, obs(3))          # pause not over
    assert trail == [[]]
    s, trail = run(s, r, obs(6.5))        # pause over, no analysis -> next step
    assert s.weights == {"web-r2": 50, "web-r1": 50}
    s, trail = run(s, r, obs(12))
    assert s.phase == "drain_old" and s.weights == {"web-r2": 100, "web-r1": 0}
    s, trail = run(s, r, obs(12.1, old_inflight=2))
    assert s.phase == "drain_old"
    s, trail = run(s, r, obs(12.2, old_inflight=0))
    assert s.phase == "done" and s.outcome == "promoted"
    assert TerminateRelease("web-r1") in trail[0]


def test_drain_is_bounded_by_timeout() -> None:
    r = canary((100, 0), drain_timeout=2)
    s = start("canary", "b", "a", 1, 0.0)
    s, _ = run(s, r, obs(0, new_alive=1, new_healthy=1), obs(0, new_alive=1, new_healthy=1))
    s, _ = run(s, r, obs(0.1, new_alive=1, new_healthy=1))
    assert s.phase == "drain_old"
    s, trail = run(s, r, obs(1.0, new_alive=1, new_healthy=1, old_inflight=5),
                   obs(2.5, new_alive=1, new_healthy=1, old_inflight=5))
    assert s.phase == "done" and TerminateRelease("a") in trail[1]


@pytest.mark.parametrize(
    ("observation", "outcome", "reason_part"),
    [
        (obs(1, new_dead=1, new_alive=2, new_healthy=2), "failed", "exited"),
        (obs(31, new_healthy=2), "failed", "health gate: 2/3"),
    ],
)
def test_health_gate_rolls_back_and_keeps_traffic(observation: Observation, outcome: str,
                                                  reason_part: str) -> None:
    r = canary((10, 0))
    s = start("canary", "web-r2", "web-r1", 3, 0.0)
    s, _ = run(s, r, obs(0))
    s, (actions,) = run(s, r, observation)
    assert s.outcome == outcome and reason_part in (s.reason or "")
    assert SetWeights({"web-r2": 0, "web-r1": 100}) in actions
    s, (actions,) = run(s, r, obs(40))
    assert s.phase == "done" and TerminateRelease("web-r2") in actions


def test_judge_fail_rolls_back_at_once() -> None:
    r = canary((10, 60), analysis=Analysis())
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    bad = Verdict("fail", "5xx 6.1% vs 1.0%, p=0.0003; after 212 canary requests")
    s, (actions,) = run(s, r, obs(5, verdict=bad))
    assert s.outcome == "rolled_back" and s.phase == "drain_new"
    assert actions[0] == SetWeights({"b": 0, "a": 100})
    assert any(isinstance(a, Record) and "5xx" in a.message for a in actions)
    assert s.decisions[-1].outcome == "fail"


@pytest.mark.parametrize(
    ("on_no_data", "phase", "outcome"),
    [("pause", "step", None), ("rollback", "drain_new", "rolled_back"), ("promote", "step", None)],
)
def test_undecided_is_never_a_silent_pass(on_no_data: Any, phase: str, outcome: str | None
                                             ) -> None:
    r = canary((10, 5), (50, 5), analysis=Analysis(on_no_data=on_no_data, min_requests=100))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    few = Verdict("undecided", "12 canary requests < min_requests 100")
    s, _ = run(s, r, obs(7, verdict=few))
    assert s.phase == phase and s.outcome == outcome
    if on_no_data == "pause":
        assert s.step == 0 and "undecided" in (s.waiting or "")
    if on_no_data == "promote":
        assert s.step == 1


def test_undecided_step_keeps_judging_then_passes_on_evidence() -> None:
    r = canary((10, 5), (50, 5), analysis=Analysis(on_no_data="pause"), progress_deadline=60)
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    judging = Verdict("undecided", "too little data")
    s, _ = run(s, r, obs(3, verdict=judging))
    assert s.step == 0 and "judging; the pause ends in 3s" in (s.waiting or "")
    s, (actions,) = run(s, r, obs(7, verdict=judging))
    assert s.step == 0 and s.phase == "step"
    # The words say what happens: it goes on by itself, with a deadline counting down.
    assert "still judging" in (s.waiting or "") and "rolls back in 59s" in (s.waiting or "")
    assert "paused" not in (s.waiting or "")
    assert [a.kind for a in actions if isinstance(a, Record)] == ["rollout.undecided"]
    s, (again,) = run(s, r, obs(8, verdict=judging))
    assert again == [] and "rolls back in 58s" in (s.waiting or "")
    s, _ = run(s, r, obs(30, verdict=Verdict("pass", "within the margins")))
    assert s.step == 1 and s.weights == {"b": 50, "a": 50}
    assert s.decisions[-1].outcome == "pass"


def test_progress_deadline_rolls_back_an_undecided_step() -> None:
    r = canary((10, 5), analysis=Analysis(on_no_data="pause"), progress_deadline=60)
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    judging = Verdict("undecided", "0 canary requests")
    s, _ = run(s, r, obs(10, verdict=judging), obs(65.9, verdict=judging))
    assert s.phase == "step"
    s, (actions,) = run(s, r, obs(66, verdict=judging))
    assert s.phase == "drain_new" and s.outcome == "rolled_back"
    assert "progress deadline" in (s.reason or "")
    assert actions[0] == SetWeights({"b": 0, "a": 100})


def test_pass_before_the_pause_ends_waits_for_the_pause() -> None:
    r = canary((10, 5), (50, 5), analysis=Analysis())
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(2, verdict=Verdict("pass", "ok")))
    assert s.step == 0
    s, _ = run(s, r, obs(6, verdict=Verdict("pass", "ok")))
    assert s.step == 1


def test_pause_none_waits_for_promote_and_abort_rolls_back() -> None:
    r = canary((10, None), (50, None))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(100))
    assert s.step == 0 and "kiln promote" in (s.waiting or "")
    s.promote_requested = True
    s, _ = run(s, r, obs(101))
    assert s.step == 1 and s.weights["b"] == 50
    s.abort_requested = True
    s, (actions,) = run(s, r, obs(102))
    assert s.outcome == "aborted" and actions[0] == SetWeights({"b": 0, "a": 100})


def test_promote_full_skips_remaining_steps() -> None:
    r = canary((10, None), (50, None))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    s.promote_full = True
    s, _ = run(s, r, obs(2))
    assert s.phase == "drain_old" and s.weights == {"b": 100, "a": 0}


def test_blue_green_switches_at_once_and_keeps_standby() -> None:
    r = Rollout(strategy="blue-green", scale_down_delay=30)
    s = start("blue-green", "b", "a", 3, 0.0)
    s, trail = run(s, r, obs(0), obs(1))
    assert s.phase == "standby" and s.weights == {"b": 100, "a": 0} and s.outcome == "promoted"
    s, trail = run(s, r, obs(20))
    assert trail == [[]]
    s, trail = run(s, r, obs(32))
    assert s.phase == "done" and TerminateRelease("a") in trail[0]


def test_rolling_replaces_in_batches() -> None:
    r = Rollout(strategy="rolling", max_surge=1, max_unavailable=0)
    s = start("rolling", "b", "a", 2, 0.0)
    s, (a,) = run(s, r, obs(0, new_alive=0, new_healthy=0, old_alive=2))
    assert a == [EnsureInstances("b", 1)] and s.phase == "roll"
    s, (a,) = run(s, r, obs(1, new_alive=1, new_healthy=1, old_alive=2))
    assert a == [SetWeights({"b": 1, "a": 1}), Retire("a", 1)]
    s, (a,) = run(s, r, obs(2, new_alive=1, new_healthy=1, old_alive=2, retiring_inflight=0))
    assert a == [TerminateRetiring("a")] and s.rolled == 1
    s, (a,) = run(s, r, obs(3, new_alive=1, new_healthy=1, old_alive=1))
    assert a == [EnsureInstances("b", 2)]
    s, (a,) = run(s, r, obs(4, new_alive=2, new_healthy=2, old_alive=1))
    assert kinds(a) == ["SetWeights", "Retire"]
    s, _ = run(s, r, obs(5, new_alive=2, new_healthy=2, old_alive=1))
    s, (a,) = run(s, r, obs(6, new_alive=2, new_healthy=2, old_alive=0))
    assert s.phase == "drain_old" and s.weights == {"b": 100, "a": 0}


def test_status_round_trips_through_json() -> None:
    r = canary((10, 60), analysis=Analysis())
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(2, verdict=Verdict("fail", "bad")))
    again = Status.from_json(s.to_json())
    assert again == s


def test_decide_is_idempotent_when_replayed() -> None:
    """A pass killed after acting but before persisting is replayed from the old status."""
    r = canary((10, 0), (50, 0))
    s0 = start("canary", "b", "a", 3, 0.0)
    s1, a1 = decide(s0, obs(0), r, 30.0)
    s1b, a1b = decide(s0, obs(0), r, 30.0)
    assert (s1, a1) == (s1b, a1b)


def test_rolling_without_surge_retires_first() -> None:
    r = Rollout(strategy="rolling", max_surge=0, max_unavailable=1)
    s = start("rolling", "b", "a", 2, 0.0)
    s, (a,) = run(s, r, obs(0, new_alive=0, new_healthy=0, old_alive=2))
    assert a == [] and s.phase == "roll"          # nothing launched up front
    s, (a,) = run(s, r, obs(1, new_alive=0, new_healthy=0, old_alive=2))
    assert a == [SetWeights({"b": 0, "a": 1}), Retire("a", 1)]
    s, (a,) = run(s, r, obs(2, new_alive=0, new_healthy=0, old_alive=2))
    assert a == [TerminateRetiring("a")] and s.rolled == 1
    s, (a,) = run(s, r, obs(3, new_alive=0, new_healthy=0, old_alive=1))
    assert a == [EnsureInstances("b", 1)]         # the replacement, never above 2 in all
    s, (a,) = run(s, r, obs(4, new_alive=1, new_healthy=0, old_alive=1))
    assert a == []                                # waits for it to be healthy
    s, (a,) = run(s, r, obs(5, new_alive=1, new_healthy=1, old_alive=1))
    assert a == [SetWeights({"b": 1, "a": 0}), Retire("a", 1)]


def test_rolling_without_surge_never_leaves_nothing_serving() -> None:
    r = Rollout(strategy="rolling", max_surge=0, max_unavailable=1)
    s = start("rolling", "b", "a", 1, 0.0)
    s, (_, a) = run(s, r, obs(0, new_alive=0, new_healthy=0, old_alive=1),
                    obs(1, new_alive=0, new_healthy=0, old_alive=1))
    assert a == [EnsureInstances("b", 1)]         # one instance: surge one instead
    s, (a,) = run(s, r, obs(2, new_alive=1, new_healthy=1, old_alive=1))
    assert a == [SetWeights({"b": 1, "a": 0}), Retire("a", 1)]


def test_rolling_rollback_restores_the_old_release_first() -> None:
    r = Rollout(strategy="rolling", max_surge=1)
    s = start("rolling", "b", "a", 2, 0.0)
    s, _ = run(s, r, obs(0, new_alive=0, new_healthy=0, old_alive=2),
               obs(1, new_alive=1, new_healthy=1, old_alive=2),
               obs(2, new_alive=1, new_healthy=1, old_alive=2))
    assert s.rolled == 1
    # The second new instance dies: one old instance is gone already.
    s, (a,) = run(s, r, obs(3, new_alive=1, new_healthy=1, new_dead=1, old_alive=1))
    assert s.phase == "restore" and a[:2] == [SetWeights({"b": 1, "a": 1}), EnsureInstances("a", 2)]
    s, (a,) = run(s, r, obs(4, new_alive=1, new_healthy=1, old_alive=2, old_healthy=1))
    assert a == [] and "restoring" in (s.waiting or "")
    s, (a,) = run(s, r, obs(5, new_alive=1, new_healthy=1, old_alive=2, old_healthy=2))
    assert s.phase == "drain_new" and a == [SetWeights({"b": 0, "a": 100})]
    s, (a,) = run(s, r, obs(6, new_alive=1, new_healthy=1, old_alive=2, old_healthy=2))
    assert s.phase == "done" and TerminateRelease("b") in a and s.outcome == "failed"


def test_steps_promoted_without_evidence_are_not_called_passed() -> None:
    r = canary((10, 5), (50, 5), analysis=Analysis(on_no_data="promote"))
    s = start("canary", "b", "a", 3, 0.0)
    judging = Verdict("undecided", "0 canary requests")
    s, trail = run(s, r, obs(0), obs(1), obs(7, verdict=judging), obs(13, verdict=judging))
    assert any(isinstance(a, Record) and "on_no_data promote" in a.message for a in trail[2])
    assert s.phase == "drain_old" and s.outcome == "promoted"
    assert s.reason == "promoted without evidence: 2 step(s) undecided (on_no_data promote)"
    s2 = start("canary", "b", "a", 3, 0.0)
    ok = Verdict("pass", "within the margins")
    s2, _ = run(s2, r, obs(0), obs(1), obs(7, verdict=ok), obs(13, verdict=ok))
    assert s2.reason == "all steps passed"


# ---------------------------------------------------------------- preview


def preview_canary(*steps: tuple[int, float | None], first: float | None = None) -> Rollout:
    return Rollout(strategy="canary", steps=[RolloutStep(preview=True, pause=first),
                                             *(RolloutStep(weight=w, pause=p) for w, p in steps)])


@pytest.mark.parametrize(("rollout", "flag"), [
    (preview_canary((10, 5), (50, 5)), False),   # a `preview: true` first step
    (canary((10, 5), (50, 5)), True),            # `kiln deploy --preview`
])
def test_preview_holds_at_zero_until_promote_then_walks_the_steps(rollout: Rollout,
                                                                   flag: bool) -> None:
    s = start("canary", "web-r2", "web-r1", 3, 0.0, preview=flag)
    s, (_, a2) = run(s, rollout, obs(0), obs(1))
    assert s.phase == "preview" and s.weights == {"web-r2": 0, "web-r1": 100}
    assert a2[0] == SetWeights({"web-r2": 0, "web-r1": 100}, ("web-r2",))
    assert "X-Kiln-Release: web-r2" in (s.waiting or "")
    s, trail = run(s, rollout, obs(100), obs(1000))    # no pause: waits for the user
    assert trail == [[], []] and s.phase == "preview"
    s.promote_requested = True
    s, (a,) = run(s, rollout, obs(1001))
    assert s.phase == "step" and s.weights == {"web-r2": 10, "web-r1": 90}
    assert a[0] == SetWeights({"web-r2": 10, "web-r1": 90})   # the preview route is gone
    s, _ = run(s, rollout, obs(1007), obs(1013))
    assert s.phase == "drain_old"
    assert s.reason == "all steps passed"   # the preview is not a step the user promoted


def test_preview_step_with_a_pause_goes_on_by_itself() -> None:
    r = preview_canary((10, 5), first=30)
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(20))
    assert s.phase == "preview"
    s, _ = run(s, r, obs(31.5))
    assert s.phase == "step" and s.weights == {"b": 10, "a": 90}


@pytest.mark.parametrize(("signal", "phase", "outcome", "weights"), [
    ("abort_requested", "drain_new", "aborted", {"b": 0, "a": 100}),
    ("promote_full", "drain_old", "promoted", {"b": 100, "a": 0}),
])
def test_preview_abort_disposes_and_promote_full_switches(signal: str, phase: str, outcome: str,
                                                          weights: dict[str, int]) -> None:
    r = preview_canary((10, 5))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    setattr(s, signal, True)
    s, (a,) = run(s, r, obs(2))
    assert (s.phase, s.outcome, s.weights) == (phase, outcome, weights)
    assert a[0] == SetWeights(weights)


def test_preview_replaces_a_dead_instance_and_keeps_the_preview_route() -> None:
    r = preview_canary((10, 5))
    s = start("canary", "b", "a", 3, 0.0)
    s, (_, _, died) = run(s, r, obs(0), obs(1), obs(2, new_alive=2, new_healthy=2, new_dead=1))
    assert s.phase == "preview"
    assert died == [SetWeights({"b": 0, "a": 100}, ("b",)), EnsureInstances("b", 3)]
    s, (starting,) = run(s, r, obs(3, new_alive=3, new_healthy=2, new_dead=1))
    assert starting == [] and s.phase == "preview"
    s, (back,) = run(s, r, obs(4, new_alive=3, new_healthy=3, new_dead=1))
    assert back[0] == SetWeights({"b": 0, "a": 100}, ("b",))   # the replacement is routed
    assert "X-Kiln-Release: b" in (s.waiting or "")
    s, (calm,) = run(s, r, obs(5, new_dead=1))
    assert calm == []


@pytest.mark.parametrize("later", [
    obs(40, new_alive=3, new_healthy=2, new_dead=1),   # the replacement never got healthy
    obs(3, new_alive=2, new_healthy=2, new_dead=4),    # more deaths than a set of replicas
])
def test_preview_rolls_back_when_replacing_fails(later: Observation) -> None:
    r = preview_canary((10, 5))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(2, new_alive=2, new_healthy=2, new_dead=1), later)
    assert (s.phase, s.outcome) == ("drain_new", "failed")


# ---------------------------------------------------------------- mirror


def test_mirror_step_copies_requests_at_weight_0_then_the_weights_start() -> None:
    r = Rollout(strategy="canary", steps=[RolloutStep(mirror=100, pause=5),
                                          RolloutStep(weight=50, pause=5)])
    s = start("canary", "b", "a", 3, 0.0)
    s, (_, a) = run(s, r, obs(0), obs(1))
    assert s.phase == "step" and s.weights == {"b": 0, "a": 100}
    assert s.mirror_share() == 100  # what status and the progress line show for b
    assert a[0] == SetWeights({"b": 0, "a": 100}, mirror=(("b", 100),))
    assert "100% of requests copied to b" in a[1].message
    s, _ = run(s, r, obs(2, verdict=Verdict("undecided", "more requests needed")))
    assert s.waiting == "step 1: 100% mirrored — judging; the pause ends in 4s"
    s, (a,) = run(s, r, obs(7, verdict=Verdict("pass", "within the margins")))
    assert a[0] == SetWeights({"b": 50, "a": 50})   # copies end with the mirror step
    assert s.mirror_share() == 0


def test_mirror_step_fails_back_before_any_user_was_served() -> None:
    r = Rollout(strategy="canary", steps=[RolloutStep(mirror=100, pause=60),
                                          RolloutStep(weight=50, pause=5)])
    s = start("canary", "b", "a", 3, 0.0)
    s, (_, _, a) = run(s, r, obs(0), obs(1), obs(2, verdict=Verdict("fail", "5xx 20%")))
    assert (s.phase, s.outcome) == ("drain_new", "rolled_back")
    assert a[0] == SetWeights({"b": 0, "a": 100})
    assert all(d.weight == 0 for d in s.decisions)
    assert s.mirror_share() == 0  # out of the step: nothing is copied any more


def test_blue_green_preview_switches_on_promote() -> None:
    r = Rollout(strategy="blue-green", scale_down_delay=0)
    s = start("blue-green", "b", "a", 3, 0.0, preview=True)
    s, _ = run(s, r, obs(0), obs(1), obs(50))
    assert s.phase == "preview" and s.weights == {"b": 0, "a": 100}
    s.promote_requested = True
    s, _ = run(s, r, obs(51))
    assert s.phase == "drain_old" and s.weights == {"b": 100, "a": 0}


def test_first_release_has_nothing_to_preview_against() -> None:
    s = start("canary", "b", None, 3, 0.0, preview=True)
    s, _ = run(s, preview_canary((10, 5)), obs(0), obs(1))
    assert s.phase == "done" and s.weights == {"b": 100}


@pytest.mark.parametrize(("steps", "message"), [
    ([{"weight": 10}, {"preview": True}], "only for the first step"),
    ([{"preview": True, "weight": 10}], "remove weight"),
    ([{"pause": 5}], "needs a weight"),
])
def test_preview_step_rules(steps: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rollout.model_validate({"steps": steps})


@pytest.mark.parametrize("on_no_data", ["pause", "rollback"])
def test_dry_run_records_what_it_would_have_done_and_goes_on(on_no_data: Any) -> None:
    """analysis.dry_run: a fail is recorded once ("would have rolled back at step 1: ..."),
    an undecided step end is not held, and the rollout is promoted as if every step passed."""
    r = canary((10, 5), (50, 5), analysis=Analysis(dry_run=True, on_no_data=on_no_data))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1))
    bad = Verdict("fail", "5xx 6.1% vs 1.0%, p=0.0003; after 212 canary requests")
    s, (first, again) = run(s, r, obs(2, verdict=bad), obs(3, verdict=bad))
    assert s.phase == "step" and s.outcome is None and s.step == 0
    notes = [a for a in first if isinstance(a, Record)]
    assert [n.kind for n in notes] == ["rollout.dry_run"]
    assert notes[0].message == ("dry run: would have rolled back at step 1: 5xx 6.1% vs 1.0%, "
                                "p=0.0003; after 212 canary requests")
    assert not any(isinstance(a, SetWeights) for a in first + again)
    assert "dry run: not acted on" in (s.judge_line or "")
    s, _ = run(s, r, obs(7, verdict=bad))  # the pause is over: on to step 2 as if it passed
    assert s.step == 1 and s.weights == {"b": 50, "a": 50}
    few = Verdict("undecided", "too little data")
    s, _ = run(s, r, obs(13, verdict=few), obs(14, verdict=few))
    assert s.outcome == "promoted"
    assert [d.outcome for d in s.decisions] == ["would_fail", "dry_run", "dry_run"]
    assert s.reason == ("dry run: would have rolled back at step 1: 5xx 6.1% vs 1.0%, "
                        "p=0.0003; after 212 canary requests; went on as if every step passed")


def test_dry_run_off_still_rolls_back() -> None:
    r = canary((10, 5), analysis=Analysis(dry_run=False))
    s = start("canary", "b", "a", 3, 0.0)
    s, _ = run(s, r, obs(0), obs(1), obs(2, verdict=Verdict("fail", "bad")))
    assert s.outcome == "rolled_back"
