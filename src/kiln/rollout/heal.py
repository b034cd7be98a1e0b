"""Healing: replace dead instances of the release that is live, with the same image.

Nothing about the release changes, so there is nothing to canary: the missing instances are
launched, each must pass the health check before the router is given it (the same gate as a
rollout), and then the router serves every running instance of the release again. Running it
again after a kill converges: alive-but-unrouted instances count toward the replicas and are
health-checked and routed like new ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kiln.platforms.base import Instance, Release
from kiln.rollout.executor import Env, Reconciler, instances_of
from kiln.spec.models import ServiceSpec


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
    routed = sum(1 for i in alive if _state(env, i.id) == "running")
    return len(alive), routed


def _state(env: Env, instance_id: str) -> str | None:
    row = env.store.one("SELECT state FROM instances WHERE id = ?", (instance_id,))
    return str(row["state"]) if row else None


def heal(env: Env, name: str, service: ServiceSpec, release: Release,
         progress: Callable[[str], None] | None = None, tick: float = 0.1) -> HealResult:
    """Bring `release` back to `service.replicas` healthy, routed instances."""
    say = progress or (lambda line: None)
    existing = instances_of(env.store, release.id, ("starting", "running"))
    alive = [i for i, o in zip(existing, env.compute.observe(existing), strict=True) if o.alive]
    missing = max(service.replicas - len(alive), 0)
    launched: list[Instance] = []
    if missing:
        launched = env.compute.launch(name, service, release, env.images(release.image_digest),
                                      missing, env=env.secrets)
    pending = [i for i in alive + launched if _state(env, i.id) != "running"]
    t0 = time.monotonic()
    deadline = t0 + service.health.deadline
    last = ""
    while pending:
        for inst, seen in zip(list(pending), env.compute.observe(pending), strict=True):
            if not seen.alive:
                return _give_up(env, service, launched, inst,
                                f"replacement instance {inst.id} exited before becoming healthy")
            if env.compute.healthy(inst, service.health):
                with env.store.tx() as c:
                    c.execute("UPDATE instances SET state = 'running' WHERE id = ? "
                              "AND state = 'starting'", (inst.id,))
                pending.remove(inst)
        now = time.monotonic()
        if pending and now > deadline:
            return _give_up(env, service, launched, pending[0],
                            f"health gate: {pending[0].id} not healthy within "
                            f"{service.health.deadline:g}s")
        line = (f"health: {service.replicas - len(pending)}/{service.replicas} healthy "
                f"({now - t0:.0f}s of {service.health.deadline:g}s)")
        if pending and line != last:
            say(line)
            last = line
        if pending:
            time.sleep(tick)
    weights = {r["release_id"]: int(r["weight"]) for r in env.store.query(
        "SELECT release_id, weight FROM routes WHERE service = ?", (name,))}
    if weights.get(release.id, 0) == 0:
        weights = {release.id: 100}
    Reconciler(env, name, service, 0).route(weights)
    ids = [i.id for i in launched]
    reason = (f"replaced {len(ids)} dead instance(s) of {release.id} with the same image"
              if ids else f"{release.id}: instances put back into rotation")
    env.store.event("release.healed", reason, service=name,
                    data={"release": release.id, "launched": ids})
    return HealResult(True, ids, reason)


def _give_up(env: Env, service: ServiceSpec, launched: list[Instance], culprit: Instance,
             reason: str) -> HealResult:
    """Stop what this heal started; the instances already serving are left as they are."""
    for inst in launched:
        env.compute.terminate(inst, service.stop_timeout)
    env.store.event("release.heal_failed", reason, service=culprit.service,
                    data={"release": culprit.release_id, "instance": culprit.id})
    return HealResult(False, [i.id for i in launched], reason, culprit)
