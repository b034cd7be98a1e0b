"""A release is one value, loaded in one place (kiln.rollout.release_config): its image's digest,
env and workdir and the service config recorded when it was made. Launches of it (rollback, heal
under `kiln serve`) run that config whatever kiln.yaml says today; `rollback --to` accepts only
releases that went live, and gc keeps only such a release as "previous"."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kiln import gc
from kiln.errors import KilnError, StateError
from kiln.platforms.base import Backend, Image, Release, ReleaseImage
from kiln.project import Project
from kiln.rollout.executor import instances_of
from kiln.rollout.release_config import (
    find_release,
    load_release,
    previous_live,
    went_live,
)
from kiln.spec.models import ServiceSpec, Spec
from kiln.state.store import Store
from test_serve_controller import CANARY, FakePlatform, controller, passes, project, spec

SVC = ServiceSpec(image="web", command="python -m app one", listen="127.0.0.1:9",
                  env={"MODE": "one"}, health={"path": "/one"})


# ---------------------------------------------------------------- the value (pure)

@pytest.mark.parametrize(("recorded", "stored_env", "want_env", "want_workdir"), [
    (ReleaseImage("sha256:x", {"ROLE": "web"}, "srv"), {"ROLE": "worker"}, {"ROLE": "web"}, "srv"),
    (ReleaseImage("sha256:x", {}, ""), {"ROLE": "worker"}, {}, ""),
    (ReleaseImage("sha256:x"), {"ROLE": "worker"}, {"ROLE": "worker"}, "w"),  # made before kiln
])                                                                           # recorded it
def test_a_release_launches_its_recorded_image_env_and_workdir(
        recorded: ReleaseImage, stored_env: dict[str, str], want_env: dict[str, str],
        want_workdir: str) -> None:
    stored = Image("web", "sha256:x", "/store/x", env=stored_env, workdir="w")
    got = recorded.applied_to(stored)
    assert (dict(got.env), got.workdir, got.ref) == (want_env, want_workdir, "/store/x")


@pytest.mark.parametrize(("config", "spec_error", "health_path"), [
    (SVC.model_dump(mode="json", by_alias=True), None, "/one"),
    ({**SVC.model_dump(mode="json", by_alias=True), "replicas": -1}, "replicas: ", "/one"),
    ({**SVC.model_dump(mode="json", by_alias=True), "command": ""}, "command: ", "/one"),
])
def test_the_spec_loads_where_it_is_needed_and_names_the_release(
        config: dict[str, Any], spec_error: str | None, health_path: str) -> None:
    rel = Release("web-r1", "web", 1, ReleaseImage("sha256:x"), config, "c")
    assert rel.health.path == health_path  # routing needs only the health check
    if spec_error is None:
        assert rel.spec.env == {"MODE": "one"} and rel.spec.command == "python -m app one"
    else:
        with pytest.raises(StateError, match=f"release web-r1: .*does not load \\({spec_error}"):
            _ = rel.spec


def test_a_release_made_from_a_spec_is_the_release_loaded_back(tmp_path: Path) -> None:
    from kiln.rollout.release_config import record_release

    store = Store.open(tmp_path / ".kiln")
    image = Image("web", "sha256:" + "a" * 64, "/x", env={"V": "1"}, workdir="srv")
    made = record_release(store, "web", image, SVC, skip_tests=False)
    back = load_release(store, made.id)
    assert back == made and hash(back) == hash(made) and back.id == "web-r1"
    assert back.spec == SVC and back.image == ReleaseImage(image.digest, {"V": "1"}, "srv")
    assert find_release(store, "web-r9") is None
    store.close()


# ---------------------------------------------------------------- went live (pure over rows)

ROLLOUTS = [  # (to, from, outcome)
    ("web-r1", None, "promoted"),
    ("web-r2", "web-r1", "promoted"),
    ("web-r3", "web-r2", "rolled_back"),  # judged worse
    ("web-r4", "web-r2", "aborted"),      # kiln abort
    ("web-r5", "web-r2", "failed"),       # health gate
    ("web-r1", "web-r2", "promoted"),     # rollback to r1
]


@pytest.mark.parametrize(("rows", "live", "previous"), [
    (ROLLOUTS[:1], ["web-r1"], None),
    (ROLLOUTS[:2], ["web-r2", "web-r1"], "web-r1"),
    (ROLLOUTS[:5], ["web-r2", "web-r1"], "web-r1"),  # never-live ones are not "previous"
    (ROLLOUTS, ["web-r1", "web-r2"], "web-r2"),
])
def test_went_live_and_previous(tmp_path: Path, rows: list[tuple[str, str | None, str]],
                                live: list[str], previous: str | None) -> None:
    store = Store.open(tmp_path / ".kiln")
    with store.tx() as c:
        for to, frm, outcome in rows:
            c.execute("INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
                      "status_json, outcome, started_at, updated_at) VALUES "
                      "('web',?,?,'canary','done','{}',?,?,?)", (frm, to, outcome, time.time(),
                                                                time.time()))
    assert went_live(store, "web") == live
    assert previous_live(store, "web", live[0]) == previous
    store.close()


# ---------------------------------------------------------------- on the fake platform

def with_env(env: dict[str, str], secret: str | None = None) -> Spec:
    sp = spec(CANARY)
    # The fake's health answers at once: a 1 s deadline only shortens the never-live release's
    # failed gate.
    health = sp.services["web"].health.model_copy(update={"deadline": 1.0})
    svc = sp.services["web"].model_copy(update={"env": env, "health": health, **(
        {"secrets": {"TOKEN": secret}} if secret else {})})
    return sp.model_copy(update={"services": {"web": svc}})


def open_as(tmp_path: Path, sp: Spec, platform: FakePlatform) -> Project:
    proj = project(tmp_path, sp, platform)
    platform.compute.store = proj.store
    return proj


def envs(proj: Project, platform: FakePlatform, release: str) -> list[dict[str, str]]:
    return [platform.compute.env_of(i) for i in instances_of(proj.store, release)]


def test_rollback_to_runs_the_release_as_it_was_made(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.platforms.fake.compute import FakeCompute

    monkeypatch.setenv("T1", "one-secret")
    monkeypatch.setenv("T2", "two-secret")
    monkeypatch.setenv("T3", "three-secret")
    platform = FakePlatform(FakeCompute())
    opened: list[Project] = []
    for n, word in enumerate(("one", "two", "three"), 1):
        opened.append(open_as(tmp_path, with_env({"MODE": word}, f"env:T{n}"), platform))
        assert opened[-1].deploy().services[0].outcome == "promoted"
    *older, proj = opened
    for done in older:
        done.close()
    monkeypatch.delenv("T3")  # today's secret is gone: a rollback to r2 does not need it
    res = proj.rollback("web", "web-r2")
    assert res.outcome == "promoted", res
    got = envs(proj, platform, "web-r2")
    assert len(got) == 2
    assert {(e["MODE"], e["TOKEN"]) for e in got} == {("two", "two-secret")}
    proj.close()


def test_serve_heals_with_the_release_config_not_todays(tmp_path: Path) -> None:
    from kiln.platforms.fake.compute import FakeCompute

    platform = FakePlatform(FakeCompute())
    proj = open_as(tmp_path, with_env({"MODE": "one"}), platform)
    assert proj.deploy().services[0].outcome == "promoted"
    proj.close()
    today = open_as(tmp_path, with_env({"MODE": "edited, not deployed"}), platform)
    first = instances_of(today.store, "web-r1")
    platform.compute.die(first[0])
    ctl = controller(today)
    passes(ctl, lambda: len(instances_of(today.store, "web-r1", ("running",))) == 2)
    assert {e["MODE"] for e in envs(today, platform, "web-r1")} == {"one"}
    today.close()


def three_releases_one_never_live(tmp_path: Path) -> tuple[Project, FakePlatform]:
    """r1 and r2 went live; r3 failed its health gate (never live); r2 is current."""
    from kiln.platforms.fake.compute import FakeCompute

    platform = FakePlatform(FakeCompute())
    for word in ("one", "two", "three"):
        if word == "three":
            platform.compute.unhealthy_releases.add("web-r3")
        proj = open_as(tmp_path, with_env({"MODE": word}), platform)
        proj.deploy()
        proj.close()
    proj = open_as(tmp_path, with_env({"MODE": "three"}), platform)
    assert proj.current_release("web").id == "web-r2"  # type: ignore[union-attr]
    return proj, platform


def test_rollback_to_a_release_that_never_went_live_is_refused(tmp_path: Path) -> None:
    proj, _ = three_releases_one_never_live(tmp_path)
    with pytest.raises(KilnError) as info:
        proj.rollback("web", "web-r3")
    line = info.value.message
    assert "\n" not in line and "web-r3 never went live" in line
    assert line.endswith("releases it accepts: web-r1"), line
    assert "--force" in str(info.value.hint)
    with pytest.raises(KilnError, match="release web-r9 not found in state; releases it "
                                        "accepts: web-r1"):
        proj.rollback("web", "web-r9")
    # gc keeps the live release before the current one, never the failed canary's.
    ret = gc.retention(proj, "web", keep=0)
    assert ret.kept == {"web-r2": "current", "web-r1": "previous (rollback target)"}
    proj.close()


def test_forced_rollback_to_a_never_live_release_is_a_normal_rollout(tmp_path: Path) -> None:
    proj, platform = three_releases_one_never_live(tmp_path)
    platform.compute.unhealthy_releases.discard("web-r3")
    seen: list[dict[str, int]] = []
    set_backends = platform.router.set_backends

    def record(name: str, service: ServiceSpec, backends: Sequence[Backend]) -> None:
        seen.append({b.release_id: b.weight for b in backends})
        set_backends(name, service, backends)

    platform.router.set_backends = record  # type: ignore[method-assign]
    res = proj.rollback("web", "web-r3", force=True)
    assert res.outcome == "promoted", res
    row = proj.store.one("SELECT strategy FROM rollouts WHERE id = ?", (res.rollout_id,))
    assert row is not None and row["strategy"] == "canary"  # the spec's, not a blind switch
    assert {"web-r3": 50, "web-r2": 50} in seen, seen  # through the canary's step
    assert {e["MODE"] for e in envs(proj, platform, "web-r3")} == {"three"}
    proj.close()
