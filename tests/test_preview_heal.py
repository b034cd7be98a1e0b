"""Healing while a release is in preview (issue 23), on the fake platform through `kiln serve`'s
controller: a dead instance of the live release is healed without dropping the preview route,
and a dead preview instance is replaced while the preview route keeps reaching the release."""

from __future__ import annotations

from pathlib import Path

from kiln.rollout.executor import instances_of, load_release
from kiln.rollout.heal import heal
from test_serve_controller import CANARY, controller, deployed, passes, project, spec


def _phase(proj: object) -> str:
    row = proj.store.one("SELECT phase FROM rollouts ORDER BY id DESC LIMIT 1")  # type: ignore[attr-defined]
    return str(row["phase"]) if row else ""


def test_heals_during_a_preview_keep_the_preview_route(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    starter = project(tmp_path, spec(CANARY, version="2"), platform)
    starter.detach = True
    assert starter.deploy(preview=True).services[0].outcome == "started"
    ctl = controller(proj)
    router = platform.router
    passes(ctl, lambda: _phase(proj) == "preview" and router.previews("web") == {"web-r2"})
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}

    # The live release loses an instance: healed (the heal `kiln deploy` and `kiln serve` run),
    # and the previewers still reach web-r2; it used to re-route by weights alone.
    old = instances_of(proj.store, "web-r1", ("running",))
    platform.compute.die(old[0])
    live = load_release(proj.store, "web-r1")
    assert heal(proj.rollout_env("web", live.spec), "web", live, tick=0.01).ok
    assert len(router.servers("web", "web-r1")) == 2
    assert old[0].address not in router.servers("web", "web-r1")
    assert router.previews("web") == {"web-r2"}
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}

    # A preview instance dies: replaced, routed once healthy, the preview route kept.
    new = instances_of(proj.store, "web-r2", ("running",))
    platform.compute.die(new[0])
    passes(ctl, lambda: len(router.servers("web", "web-r2")) == 2
           and new[0].address not in router.servers("web", "web-r2"))
    assert _phase(proj) == "preview" and router.previews("web") == {"web-r2"}
    assert router.verify("web") == {"web-r1": 100, "web-r2": 0}
    kinds = [str(r["kind"]) for r in proj.store.query("SELECT kind FROM events")]
    assert "rollout.failed" not in kinds, kinds
    proj.close()
    starter.close()
