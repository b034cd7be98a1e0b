"""`kiln deploy`'s heal (kiln.rollout.heal.heal, which drives the same heal_step `kiln serve`
runs once per pass) on the in-memory fake platform: the same release comes back whole, or the
heal gives up, stopping what it launched and leaving what served before it serving."""

from __future__ import annotations

from pathlib import Path

from kiln.platforms.base import Release
from kiln.project import DeployEvent, Project
from kiln.rollout.executor import instances_of, load_release
from kiln.rollout.heal import HealState, heal, heal_step
from kiln.spec.models import ServiceSpec
from test_serve_controller import CANARY, deployed, kinds


def test_deploy_heals_a_dead_instance_with_the_same_release(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    platform.compute.die(first[0])
    seen: list[DeployEvent] = []
    (res,) = proj.deploy(on_event=seen.append).services
    assert res.outcome == "healed" and res.release == "web-r1", res
    assert any(e.kind == "heal" and "1/2 instances alive" in e.message for e in seen), seen
    running = instances_of(proj.store, "web-r1", ("running",))
    assert len(running) == 2 and first[1] in running and first[0] not in running
    assert sorted(platform.router.servers("web", "web-r1")) == sorted(i.address for i in running)
    assert proj.store.one("SELECT COUNT(*) AS n FROM releases")["n"] == 1  # type: ignore[index]
    assert "release.healed" in kinds(proj) and "release.heal_failed" not in kinds(proj)
    proj.close()


def test_a_replacement_that_exits_fails_the_heal_and_is_cleaned_up(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    platform.compute.die(first[0])
    platform.compute.exit_releases.add("web-r1")
    (res,) = proj.deploy().services
    assert res.outcome == "failed" and "exited before becoming healthy" in res.reason, res
    assert "release.heal_failed" in kinds(proj)
    # The instance that served before the heal still serves, alone.
    assert instances_of(proj.store, "web-r1", ("starting", "running")) == [first[1]]
    assert platform.router.servers("web", "web-r1") == [first[1].address]
    proj.close()


def _recorded_as(proj: Project, release_id: str, spec: ServiceSpec) -> Release:
    """The release as if it had been made with `spec` (heal runs a release's recorded spec)."""
    r = load_release(proj.store, release_id)
    return Release.of(r.id, r.service, r.number, r.image, spec, r.config_digest)


def test_heal_gives_up_on_the_deadline_and_stops_what_it_launched(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    platform.compute.die(first[0])
    platform.compute.unhealthy_releases.add("web-r1")  # replacements run, never healthy
    spec = proj.service("web")
    spec = spec.model_copy(update={"health": spec.health.model_copy(update={"deadline": 0.3})})
    lines: list[str] = []
    res = heal(proj.rollout_env("web", spec), "web", _recorded_as(proj, "web-r1", spec),
               progress=lines.append, tick=0.02)
    assert not res.ok and "not healthy within 0.3s" in res.reason, res
    assert res.failed is not None and res.failed.id in res.launched
    assert lines and lines[0].startswith("health: 1/2 healthy"), lines
    assert [platform.compute.stop_signal(platform.compute.procs[i].instance)
            for i in res.launched] == ["sigterm"]
    assert platform.router.servers("web", "web-r1") == [first[1].address]
    proj.close()


def test_one_step_takes_the_dead_out_and_admits_only_the_healthy(tmp_path: Path) -> None:
    """The non-blocking step both drivers share: dead out of the router at once; a replacement
    launched but routed only once its health check passes."""
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    platform.compute.die(first[0])
    platform.compute.unhealthy_releases.add("web-r1")
    spec, release = proj.service("web"), load_release(proj.store, "web-r1")
    env, state = proj.rollout_env("web", spec), HealState("web-r1", 0.0)
    res = heal_step(env, "web", release, state, 0.0)
    assert res.died == [first[0]] and len(res.launched) == 1 and res.pending == 1
    assert not res.done and res.running == 1
    assert platform.router.servers("web", "web-r1") == [first[1].address]
    platform.compute.set_healthy(res.launched[0], True)
    res2 = heal_step(env, "web", release, state, 1.0, launch=False)
    assert res2.admitted == res.launched and res2.done and not res2.launched
    assert len(platform.router.servers("web", "web-r1")) == 2
    assert heal_step(env, "web", release, state, 2.0).acted is False
    proj.close()


def test_a_heal_that_gives_up_keeps_the_replacements_already_serving(tmp_path: Path) -> None:
    """Two dead; one replacement becomes healthy and joins, the other never does: the heal
    fails on the deadline, stops the late one, and keeps the one that serves."""
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    for inst in first:
        platform.compute.die(inst)
    platform.compute.unhealthy_releases.add("web-r1")
    spec = proj.service("web")
    spec = spec.model_copy(update={"health": spec.health.model_copy(update={"deadline": 0.5})})

    def first_replacement_recovers(_line: str) -> None:
        new = [p.instance for p in platform.compute.procs.values()
               if p.instance.release_id == "web-r1" and p.instance not in first]
        if new:
            platform.compute.set_healthy(new[0], True)

    res = heal(proj.rollout_env("web", spec), "web", _recorded_as(proj, "web-r1", spec),
               progress=first_replacement_recovers, tick=0.02)
    assert not res.ok and "not healthy within 0.5s" in res.reason, res
    serving = instances_of(proj.store, "web-r1", ("running",))
    assert len(serving) == 1 and serving[0].id == res.launched[0], (serving, res.launched)
    assert platform.router.servers("web", "web-r1") == [serving[0].address]
    assert platform.compute.stop_signal(res.failed) == "sigterm"  # type: ignore[arg-type]
    assert not platform.compute.stop_signal(serving[0])
    proj.close()
