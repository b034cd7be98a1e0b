"""Healing: replace dead instances of the release that is live, with the same image.

Nothing about the release changes, so there is nothing to canary: the missing instances are
launched as the release was made (its recorded spec, never today's kiln.yaml), each must pass
the health check before the router is given it (the same gate as a rollout), and then the
router serves every running instance of the release again.

One mechanism, two drivers: `heal_step` does one non-blocking pass (observe; take the dead and
the unhealthy out of rotation; launch what is missing; admit the healthy; stop what is not
healthy within `health.deadline`). `kiln serve`'s controller calls it once per pass with its own
liveness inputs and retry policy; `heal` (for `kiln deploy`) calls it in a loop until the release
is whole, or gives up. Running it again after a kill converges: alive-but-unrouted instances count
toward the replicas and are health-checked and routed like new ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kiln.errors import StateError
from kiln.platforms.base import Instance, Release
from kiln.rollout.decide import Status, mirrored, previewed
from kiln.rollout.executor import Env, Reconciler, instances_of, launch_release, load_release
from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records


@dataclass
class HealState:
    """One heal in progress (kept by its driver between passes)."""

    release: str
    since: float
    """When the heal began (the driver's clock)."""
    gate_from: float = 0.0
    """The health deadline runs from the last launch (or from `since`)."""
    launched: list[str] = field(default_factory=list)
    """Ids of the instances this heal launched."""

    def __post_init__(self) -> None:
        self.gate_from = self.gate_from or self.since


@dataclass
class HealPass:
    """What one `heal_step` did."""

    died: list[Instance] = field(default_factory=list)
    """Were in rotation, found dead: marked dead and taken out of the router."""
    lost: list[Instance] = field(default_factory=list)
    """Were waiting for their health check and died."""
    retired: list[Instance] = field(default_factory=list)
    """Alive but unhealthy (the driver's verdict): taken out of the router, then stopped."""
    launched: list[Instance] = field(default_factory=list)
    admitted: list[Instance] = field(default_factory=list)
    """Passed their health check: running and in rotation."""
    expired: list[Instance] = field(default_factory=list)
    """Not healthy within the deadline: stopped."""
    pending: int = 0
    """Alive, still waiting for their health check."""
    running: int = 0
    """Alive and in rotation."""
    done: bool = False
    """`replicas` instances in rotation and none pending: the heal is over."""

    @property
    def acted(self) -> bool:
        return bool(self.died or self.lost or self.retired or self.launched or self.admitted
                    or self.expired)


@dataclass
class HealResult:
    ok: bool
    launched: list[str]
    reason: str
    failed: Instance | None = None
    """The instance that died or never became healthy (for its log tail)."""


def needs_heal(env: Env, release: Release, replicas: int) -> tuple[int, int]:
    """(alive instances, of which in rotation) for the release."""
    insts = instances_of(env.store, release.id, ("starting", "running"))
    alive = [i for i, o in zip(insts, env.compute.observe(insts), strict=True) if o.alive]
    return len(alive), sum(1 for i in alive if i.id in _running(env, release.id))


def _running(env: Env, release_id: str) -> set[str]:
    return {i.id for i in instances_of(env.store, release_id, ("running",))}


def heal_step(env: Env, name: str, release: Release, state: HealState, now: float, *,
              sick: Sequence[Instance] = (), launch: bool = True,
              on_out: Callable[[HealPass], None] | None = None) -> HealPass:
    """One pass; never waits; the release's own spec says how many, how and how healthy.
    `sick`: alive instances to replace (the driver's health verdict); `launch`: whether to
    launch what is missing now (the driver's retry policy); `on_out` is told what left the
    rotation before anything new is launched (its events come first)."""
    spec = release.spec
    out = HealPass()
    insts = instances_of(env.store, release.id, ("starting", "running"))
    running = _running(env, release.id)
    alive: list[Instance] = []
    for inst, seen in zip(insts, env.compute.observe(insts), strict=True):
        if seen.alive:
            alive.append(inst)
        else:
            (out.died if inst.id in running else out.lost).append(inst)
    sick_ids = {i.id for i in sick}
    out.retired = [i for i in alive if i.id in sick_ids]
    alive = [i for i in alive if i.id not in sick_ids]
    if out.died or out.lost:
        with env.store.tx() as c:
            for inst in out.died + out.lost:
                instance_records.mark_dead(c, inst.id, time.time())
    if out.died or out.retired:
        retire(env, name, release, out.retired)  # out of the router at once
    if on_out is not None and (out.died or out.lost or out.retired):
        on_out(out)
    missing = spec.replicas - len(alive)
    if missing > 0 and launch:
        out.launched = launch_release(env, release, missing)
        env.fault("launched")
        state.launched += [i.id for i in out.launched]
        state.gate_from = now
    for inst in [i for i in alive if i.id not in running] + out.launched:
        if now - state.gate_from > spec.health.deadline:
            env.compute.terminate(inst, spec.stop_timeout)
            out.expired.append(inst)
        elif env.compute.healthy(inst, spec.health):
            with env.store.tx() as c:
                instance_records.mark_running(c, inst.id)
            out.admitted.append(inst)
        else:
            out.pending += 1
    if out.admitted:
        route(env, name, release)
    out.running = sum(1 for i in alive if i.id in running) + len(out.admitted)
    out.done = out.pending == 0 and out.running >= spec.replicas
    return out


def route(env: Env, name: str, release: Release) -> None:
    """Give the router the release's running instances at the service's recorded weights (all
    of the traffic when the release has none), keeping what an open rollout routes besides
    weights: a release in preview, a mirror step's copies."""
    weights = route_records.weights_of(env.store, name)
    preview, mirror = _rollout_extras(env, name)
    if weights.get(release.id, 0) == 0 and release.id not in preview and release.id not in mirror:
        weights = {release.id: 100}
    Reconciler(env, name, release.spec, 0).route(weights, preview, mirror)


def _rollout_extras(env: Env, name: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """(previewed releases, mirrored release -> percent) of the service's open rollout."""
    rid = rollout_records.open_id(env.store, name)
    raw = rollout_records.status_json(env.store, rid) if rid is not None else None
    if not raw:
        return (), {}
    status = Status.from_json(json.loads(raw))
    try:
        rollout = load_release(env.store, status.new).spec.rollout
    except StateError:
        return previewed(status), {}
    return previewed(status), dict(mirrored(status, rollout))


def retire(env: Env, name: str, release: Release, insts: Sequence[Instance]) -> None:
    """Take instances out of the router first, then stop them (gracefully)."""
    with env.store.tx() as c:
        for inst in insts:
            instance_records.mark_draining(c, inst.id)
    route(env, name, release)
    for inst in insts:
        env.compute.terminate(inst, release.spec.stop_timeout)


def heal(env: Env, name: str, release: Release,
         progress: Callable[[str], None] | None = None, tick: float = 0.1) -> HealResult:
    """Bring `release` back to its replicas of healthy, routed instances; give up (stopping
    what this heal launched) when a replacement dies or is not healthy within the deadline."""
    service = release.spec
    say = progress or (lambda line: None)
    state = HealState(release.id, time.monotonic())
    deadline = service.health.deadline
    last = ""
    while True:
        now = time.monotonic()
        res = heal_step(env, name, release, state, now)
        if res.lost:
            return _give_up(env, name, release, state, res.lost[0],
                            f"replacement instance {res.lost[0].id} exited before becoming "
                            f"healthy")
        if res.expired:
            return _give_up(env, name, release, state, res.expired[0],
                            f"health gate: {res.expired[0].id} not healthy within {deadline:g}s")
        if res.done:
            break
        line = (f"health: {max(service.replicas - res.pending, 0)}/{service.replicas} healthy "
                f"({now - state.gate_from:.0f}s of {deadline:g}s)")
        if line != last:
            say(line)
            last = line
        time.sleep(tick)
    route(env, name, release)
    ids = state.launched
    reason = (f"replaced {len(ids)} dead instance(s) of {release.id} with the same image"
              if ids else f"{release.id}: instances put back into rotation")
    env.store.event("release.healed", reason, service=name,
                    data={"release": release.id, "launched": ids})
    return HealResult(True, ids, reason)


def _give_up(env: Env, name: str, release: Release, state: HealState,
             culprit: Instance, reason: str) -> HealResult:
    """Stop what this heal started and is not serving yet (out of the router first); the
    instances serving (from before, or replacements already admitted) are left as they are:
    fewer than `replicas` serve, but no fewer than before the give-up."""
    ours = [i for i in instances_of(env.store, release.id, ("starting",))
            if i.id in state.launched]
    if ours:
        retire(env, name, release, ours)
    env.store.event("release.heal_failed", reason, service=culprit.service,
                    data={"release": culprit.release_id, "instance": culprit.id})
    return HealResult(False, list(state.launched), reason, culprit)
