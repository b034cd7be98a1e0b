"""The controller's passes against the in-memory fake platform: it replaces a dead instance from
the same release (taken out of the router first, routed only once healthy), restarts a dead
router, drives a rollout another call started, and ends a blue-green standby when it is due."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import NotFound
from kiln.platforms.base import Image
from kiln.platforms.fake.builder import FakeBuilder
from kiln.platforms.fake.compute import FakeCompute
from kiln.platforms.fake.router import FakeRouter
from kiln.project import Project
from kiln.rollout.executor import instances_of
from kiln.serve.board import Board
from kiln.serve.controller import Controller
from kiln.serve.metrics import ServeMetrics
from kiln.serve.pages import fragments
from kiln.spec.models import Spec
from kiln.state.store import Store


@dataclass
class FakePlatform:
    compute: FakeCompute
    builder: FakeBuilder = field(default_factory=FakeBuilder)
    router: FakeRouter = field(default_factory=FakeRouter)
    metrics: Any = None

    def image(self, digest: str) -> Image:
        for name, d in self.builder.built:
            if d == digest:
                return Image(name=name, digest=d, ref=f"fake://{name}")
        raise NotFound(f"image {digest} not found")

    def verify_image(self, digest: str) -> str | None:
        return None


def spec(rollout: dict[str, Any], version: str = "1") -> Spec:
    return Spec.model_validate({
        "project": "ctl",
        "images": {"web": {"base": "python", "steps": [{"env": {"VERSION": version}}]}},
        "services": {"web": {"image": "web", "command": "python -m app", "listen": "127.0.0.1:9",
                             "replicas": 2, "rollout": rollout,
                             "health": {"interval": "1s", "deadline": "5s"}}}})


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / ".kiln"


def project(tmp_path: Path, sp: Spec, platform: FakePlatform) -> Project:
    return Project(sp, tmp_path / "kiln.yaml", tmp_path, tmp_path / ".kiln",
                   platform=platform)  # type: ignore[arg-type]


def deployed(tmp_path: Path, rollout: dict[str, Any]) -> tuple[Project, FakePlatform]:
    """v1 of the service live on the fake platform."""
    platform = FakePlatform(FakeCompute())
    proj = project(tmp_path, spec(rollout), platform)
    platform.compute.store = proj.store
    assert proj.deploy().services[0].outcome == "promoted"
    return proj, platform


def controller(proj: Project) -> Controller:
    return Controller(proj, ServeMetrics(lambda: Store.open(proj.home)), tick=0.01)


def passes(ctl: Controller, until: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ctl._next_heal_check = 0.0  # observe every pass: the test does not wait for the clock
        ctl.reconcile_once()
        if until():
            return
        time.sleep(0.01)
    raise AssertionError("the controller did not get there")


def kinds(proj: Project) -> list[str]:
    return [str(r["kind"]) for r in proj.store.query("SELECT kind FROM events ORDER BY id")]


CANARY = {"strategy": "canary", "steps": [{"weight": 50, "pause": 0}], "drain_timeout": "0s"}


def test_dead_instance_is_replaced_from_the_same_release(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    ctl = controller(proj)
    ctl.reconcile_once()
    assert "instance.died" not in kinds(proj)  # nothing to do: nothing done
    platform.compute.die(first[0])
    platform.compute.unhealthy_releases.add("web-r1")  # the replacement starts unhealthy
    ctl._next_heal_check = 0.0
    ctl.reconcile_once()
    ctl.reconcile_once()
    # The dead one is out of the router at once; its replacement is not in before it is healthy.
    assert platform.router.servers("web", "web-r1") == [first[1].address]
    (new,) = instances_of(proj.store, "web-r1", ("starting",))
    platform.compute.set_healthy(new, True)
    passes(ctl, lambda: len(platform.router.servers("web", "web-r1")) == 2)
    now = instances_of(proj.store, "web-r1", ("running",))
    assert first[1] in now and first[0] not in now and len(now) == 2
    assert proj.store.one("SELECT COUNT(*) AS n FROM releases")["n"] == 1  # type: ignore[index]
    assert [k for k in kinds(proj) if k.startswith("instance.") and k != "instance.launch"] == [
        "instance.died", "instance.replaced", "instance.in_rotation"]
    proj.close()


def test_replacement_that_keeps_dying_is_retried_with_a_delay(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    ctl = controller(proj)
    platform.compute.exit_releases.add("web-r1")  # from now on, new instances exit at once
    platform.compute.die(instances_of(proj.store, "web-r1")[0])
    for _ in range(20):
        ctl._next_heal_check = 0.0
        ctl.reconcile_once()
    launches = [c for c in platform.compute.calls if c[0] == "launch"]
    assert 2 <= len(launches) - 1 <= 3, launches  # 1 s, then 2 s between tries: not a busy loop
    proj.close()


def test_a_replacement_not_healthy_in_time_is_stopped_and_retried(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    ctl = controller(proj)
    platform.compute.unhealthy_releases.add("web-r1")  # replacements run, never healthy
    platform.compute.die(instances_of(proj.store, "web-r1")[0])
    ctl._next_heal_check = 0.0
    ctl.reconcile_once()
    (late,) = instances_of(proj.store, "web-r1", ("starting",))
    ctl.healing["web"].gate_from -= 6.0  # the 5 s health deadline has passed
    ctl.reconcile_once()
    assert platform.compute.stop_signal(late) == "sigterm"
    assert any("not healthy within 5s" in str(r["message"]) for r in proj.store.query(
        "SELECT message FROM events WHERE kind = 'instance.unhealthy'"))
    platform.compute.unhealthy_releases.clear()
    passes(ctl, lambda: len(platform.router.servers("web", "web-r1")) == 2)
    assert late not in instances_of(proj.store, "web-r1", ("running",))
    assert "web" not in ctl.healing
    proj.close()


def _probe_now(ctl: Controller) -> None:
    ctl._next_heal_check = 0.0
    ctl._next_probe.clear()  # one health check per pass: the test does not wait for the clock
    ctl.reconcile_once()


def test_an_instance_alive_but_unhealthy_is_replaced_after_the_threshold(tmp_path: Path) -> None:
    """Alive but failing the router's health check (hung, lost its database): after
    `unhealthy_threshold` (3) DOWN verdicts in a row it leaves the router, is stopped, and a
    replacement of the same release joins once healthy. Two DOWNs and an UP reset it."""
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    ctl = controller(proj)
    platform.router.down.add(first[0].address)
    _probe_now(ctl)
    _probe_now(ctl)
    assert ctl.failing[first[0].id] == 2
    platform.router.down.clear()
    _probe_now(ctl)
    assert ctl.failing[first[0].id] == 0 and "instance.unhealthy" not in kinds(proj)
    platform.router.down.add(first[0].address)
    for _ in range(3):
        _probe_now(ctl)
    assert "instance.unhealthy" in kinds(proj)
    assert platform.compute.stop_signal(first[0]) == "sigterm"  # stopped, gracefully
    assert first[0].address not in platform.router.servers("web", "web-r1")
    passes(ctl, lambda: len(platform.router.servers("web", "web-r1")) == 2)
    now = instances_of(proj.store, "web-r1", ("running",))
    assert first[1] in now and first[0] not in now and len(now) == 2
    assert proj.store.one("SELECT COUNT(*) AS n FROM releases")["n"] == 1  # type: ignore[index]
    proj.close()


def test_when_every_instance_is_unhealthy_one_is_replaced_at_a_time(tmp_path: Path) -> None:
    """A shared dependency down makes every instance fail: the controller does not stop them
    all at once; it replaces one and waits for that replacement before the next."""
    proj, platform = deployed(tmp_path, CANARY)
    first = instances_of(proj.store, "web-r1")
    ctl = controller(proj)
    platform.compute.unhealthy_releases.add("web-r1")  # replacements fail too
    platform.router.down.update(i.address for i in first)
    for _ in range(8):
        _probe_now(ctl)
    stopped = [i for i in first if platform.compute.stop_signal(i)]
    assert len(stopped) == 1, stopped
    assert len(platform.router.servers("web", "web-r1")) == 1  # the other one still routed
    proj.close()


def test_dead_router_is_restarted(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    platform.router.running = False
    platform.router.is_running = lambda: platform.router.running  # type: ignore[attr-defined]
    ctl = controller(proj)
    ctl.reconcile_once()
    assert platform.router.running and "router.restarted" in kinds(proj)
    proj.close()


def test_controller_drives_a_handed_rollout_and_ends_the_standby_on_time(tmp_path: Path) -> None:
    blue_green = {"strategy": "blue-green", "scale_down_delay": "1s", "drain_timeout": "0s"}
    proj, platform = deployed(tmp_path, blue_green)
    # The dashboard's deploy: it only starts the rollout; the controller drives it.
    starter = project(tmp_path, spec(blue_green, version="2"), platform)
    starter.detach = True
    started = starter.deploy().services[0]
    assert started.outcome == "started" and started.release == "web-r2"
    ctl = controller(proj)
    board = Board(proj, fragments)
    passes(ctl, lambda: proj.store.one("SELECT phase FROM rollouts WHERE id = 2")["phase"]  # type: ignore[index]
           == "standby")
    board.refresh(True)
    _, state, frags = board.snapshot()
    ro = state["services"][0]["rollout"]
    assert ro["phase"] == "standby" and ro["outcome"] == "promoted" and "standby ends" in frags["board"]
    assert instances_of(proj.store, "web-r1")  # the old set waits at weight 0
    until = float(ro["standby_until"])
    passes(ctl, lambda: time.time() >= until and "standby.ended" in kinds(proj))
    ended = proj.store.one("SELECT time FROM events WHERE kind = 'standby.ended'")
    assert ended is not None and until <= float(ended["time"]) <= until + 1.0
    assert instances_of(proj.store, "web-r1") == []
    assert "controller.rollout_settled" in kinds(proj)
    assert (tmp_path / ".kiln" / "reports" / "rollout-2.html").exists()
    proj.close()
    starter.close()


def test_dashboard_deploy_of_a_baked_image_and_rollback_only_start_rollouts(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    v2 = project(tmp_path, spec(CANARY, version="2"), platform)
    v2.deploy()  # web-r2 live, web-r1 retained
    ui = project(tmp_path, spec(CANARY, version="2"), platform)
    ui.detach = True
    res = ui.rollback("web", "web-r1")
    assert res.outcome == "started" and res.release == "web-r1"
    with pytest.raises(Exception, match="in progress"):
        ui.rollback("web", "web-r1")
    ctl = controller(proj)
    passes(ctl, lambda: proj.current_release("web").id == "web-r1")  # type: ignore[union-attr]
    v1_digest = platform.builder.built[0][1]
    v2_digest = next(d for _, d in platform.builder.built if d != v1_digest)
    res = ui.deploy_image("web", v2_digest)
    assert res.outcome == "started"
    passes(ctl, lambda: proj.current_release("web").image_digest == v2_digest)  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        ui.deploy_image("web", "sha256:" + "0" * 64)
    for p in (proj, v2, ui):
        p.close()


def test_one_router_reading_per_pass_for_every_service(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's verdicts on every service due are read in one call (20 services: one admin
    API call, not 20), and a DOWN server is still told apart per service, also when one service's
    name starts with another's (`web`, `web-api`)."""
    two = spec(CANARY).model_dump(mode="json", exclude_unset=True)
    two["services"]["web-api"] = {**two["services"]["web"], "listen": "127.0.0.1:10"}
    platform = FakePlatform(FakeCompute())
    proj = project(tmp_path, Spec.model_validate(two), platform)
    platform.compute.store = proj.store
    assert {s.outcome for s in proj.deploy().services} == {"promoted"}
    reads: list[list[str]] = []
    real = platform.router.server_statuses

    def spy(release_ids: list[str]) -> dict[str, dict[str, str]]:
        reads.append(list(release_ids))
        return real(release_ids)

    monkeypatch.setattr(platform.router, "server_statuses", spy)
    ctl = controller(proj)
    api = instances_of(proj.store, "web-api-r1")
    platform.router.down.add(api[0].address)
    _probe_now(ctl)
    _probe_now(ctl)
    assert reads == [["web-api-r1", "web-r1"]] * 2
    assert {i: n for i, n in ctl.failing.items() if n} == {api[0].id: 2}
    _probe_now(ctl)
    assert [r["service"] for r in proj.store.query(
        "SELECT service FROM events WHERE kind = 'instance.unhealthy'")] == ["web-api"]
    proj.close()


def _ctl_lines(ctl: Controller) -> list[str]:
    lines: list[str] = []
    ctl.say = lines.append
    return lines


def test_a_failing_service_backs_off_and_never_stops_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`api`'s secret cannot be read any more: its heal fails, is retried after 1, 2, 4 s with
    one event and one line for the whole time it fails, and `web` (after it in the pass) has its
    dead instance replaced as if nothing happened; once the secret is back, `api` recovers."""
    base = spec(CANARY).model_dump(mode="json", exclude_unset=True)
    web = base["services"]["web"]
    api = {**web, "listen": "127.0.0.1:10", "secrets": {"TOKEN": "env:KILN_CTL_TEST_TOKEN"}}
    base["services"] = {"api": api, "web": web}  # the failing one comes first in each pass
    monkeypatch.setenv("KILN_CTL_TEST_TOKEN", "s3cret")
    platform = FakePlatform(FakeCompute())
    proj = project(tmp_path, Spec.model_validate(base), platform)
    platform.compute.store = proj.store
    assert {s.outcome for s in proj.deploy().services} == {"promoted"}
    monkeypatch.delenv("KILN_CTL_TEST_TOKEN")
    deployed_api = platform.compute.calls.count(("launch", "api-r1"))
    platform.compute.die(instances_of(proj.store, "api-r1")[0])
    platform.compute.die(instances_of(proj.store, "web-r1")[0])
    ctl = controller(proj)
    lines = _ctl_lines(ctl)
    t0 = time.monotonic()
    passes(ctl, lambda: len(platform.router.servers("web", "web-r1")) == 2)
    assert time.monotonic() - t0 < 3.0
    # ~3.5 s of passes every 10 ms: api is tried about 3 times (0, 1, 3 s), logged once.
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        ctl._next_heal_check = 0.0
        ctl.reconcile_once()
        time.sleep(0.01)
    failing = [k for k in kinds(proj) if k.startswith("controller.")]
    assert failing == ["controller.failing"], failing
    assert 2 <= ctl.broken["api"].attempts <= 4, ctl.broken["api"]
    assert "KILN_CTL_TEST_TOKEN" in ctl.broken["api"].error
    assert len(lines) == 1 and lines[0].startswith("kiln serve: api: ") and "retrying" in lines[0]
    launched = [c for c in platform.compute.calls if c[0] == "launch"]
    assert launched.count(("launch", "api-r1")) == deployed_api  # none without its secret
    monkeypatch.setenv("KILN_CTL_TEST_TOKEN", "s3cret")
    ctl.broken["api"].next_try = 0.0  # the test does not wait out the backoff
    passes(ctl, lambda: "controller.recovered" in kinds(proj)
           and len(platform.router.servers("api", "api-r1")) == 2)
    assert len([c for c in platform.compute.calls if c[0] == "launch"]) == len(launched) + 1
    assert "controller.recovered" in kinds(proj) and "api" not in ctl.broken
    assert [k for k in kinds(proj) if k.startswith("controller.")] == [
        "controller.failing", "controller.recovered"]
    proj.close()


def test_failure_backoff_is_exponential_and_capped() -> None:
    from kiln.serve.controller import BACKOFF_CAP, backoff

    assert [backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(100) == BACKOFF_CAP


YAML = """\
project: ctl
images:
  web:
    base: python
    steps:
      - env: {{VERSION: "{version}"}}
services:
  web:
    image: web
    command: python -m app
    listen: 127.0.0.1:9
    replicas: {replicas}
    health: {{interval: 1s, deadline: 5s}}
    rollout:
      strategy: canary
      steps:
        - {{weight: {weight}, pause: 0s}}
      drain_timeout: 0s
"""


def _write(path: Path, version: str = "1", weight: int = 50, replicas: str = "2") -> None:
    path.write_text(YAML.format(version=version, weight=weight, replicas=replicas))


def test_controller_reloads_a_changed_spec_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    """Edited steps are used by the next rollout the controller drives (also one a command
    hands over right after the edit); an invalid file is refused with one line, once, and the
    last good spec stays in force."""
    from kiln.spec.loader import load_spec

    path = tmp_path / "kiln.yaml"
    _write(path)
    platform = FakePlatform(FakeCompute())
    proj = Project(load_spec(path).spec, path, tmp_path, tmp_path / ".kiln",
                   platform=platform)  # type: ignore[arg-type]
    platform.compute.store = proj.store
    assert proj.deploy().services[0].outcome == "promoted"
    ctl = controller(proj)
    lines = _ctl_lines(ctl)
    ctl.reconcile_once()
    assert lines == []
    _write(path, replicas="-1")
    for _ in range(5):
        ctl.reconcile_once()
    assert len(lines) == 1 and "invalid, kept the last good one" in lines[0], lines
    assert "replicas" in lines[0] and "\n" not in lines[0]
    assert kinds(proj).count("controller.spec_refused") == 1
    assert proj.spec.services["web"].replicas == 2
    # The CLI edits the steps and hands a rollout over; the controller drives it with them.
    _write(path, version="2", weight=30)
    cli = Project(load_spec(path).spec, path, tmp_path, tmp_path / ".kiln",
                  platform=platform)  # type: ignore[arg-type]
    cli.detach = True
    assert cli.deploy().services[0].outcome == "started"
    passes(ctl, lambda: proj.store.one(  # type: ignore[index]
        "SELECT phase FROM rollouts WHERE id = 2")["phase"] == "done")
    assert "reloaded" in lines[1] and kinds(proj).count("controller.spec_reloaded") == 1
    assert proj.spec.services["web"].rollout.steps[0].weight == 30
    row = proj.store.one("SELECT status_json, outcome FROM rollouts WHERE id = 2")
    assert row is not None and row["outcome"] == "promoted"
    # The canary step the router was set to is the edited one (30 %), not the old 50 %.
    sets = [c for c in platform.router.calls if "web-r2" in c]
    assert any("'web-r2': 30" in c for c in sets), sets
    assert not any("'web-r2': 50" in c for c in sets), sets
    proj.close()
    cli.close()


def test_plan_deploy_status_and_drift_read_one_model_and_agree(tmp_path: Path) -> None:
    """A dead instance, recorded or already swept: `plan` says heal, `drift` reports it,
    `status` shows it, and `deploy` heals (no new release); then all say all is well."""
    from kiln.drift import detect
    from kiln.plan import plan

    proj, platform = deployed(tmp_path, CANARY)
    platform.builder.resolve = (  # type: ignore[attr-defined]
        lambda name, sp, base_dir: platform.builder.build(name, sp, base_dir=base_dir))
    assert [i["action"] for i in plan(proj)] == ["unchanged"] and detect(proj) == []
    for swept in (False, True):
        platform.compute.die(instances_of(proj.store, "web-r1")[0])
        if swept:
            platform.compute.sweep()  # the row says dead: only the count shows it
        item = plan(proj)[0]
        assert item["action"] == "heal" and "1/2 instances of web-r1 alive" in item["detail"]
        found = {i["kind"] for i in detect(proj)}
        assert found == ({"missing-instances"} if swept else {"dead-instance"}), found
        alive = [i["alive"] for r in proj.status()["services"][0]["releases"]
                 for i in r["instances"]]
        assert sorted(alive) == ([True] if swept else [False, True])
        res = proj.deploy().services[0]
        assert (res.outcome, res.release) == ("healed", "web-r1")
        assert [i["action"] for i in plan(proj)] == ["unchanged"] and detect(proj) == []
    assert proj.store.one("SELECT COUNT(*) AS n FROM releases")["n"] == 1  # type: ignore[index]
    proj.close()


def test_a_resumed_deploy_that_promoted_says_promoted_not_unchanged(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    starter = project(tmp_path, spec(CANARY, version="2"), platform)
    starter.detach = True  # starts the rollout and leaves it (as a killed deploy would)
    assert starter.deploy().services[0].outcome == "started"
    v2 = project(tmp_path, spec(CANARY, version="2"), platform)
    events: list[str] = []
    res = v2.deploy(on_event=lambda ev: events.append(f"{ev.kind}: {ev.message}")).services[0]
    assert (res.outcome, res.release, res.rollout_id) == ("promoted", "web-r2", 2), res
    assert res.report is not None
    assert "release: resuming rollout #2 (launch)" in events, events
    assert not any(e.startswith("uptodate") for e in events), events
    for p in (proj, starter, v2):
        p.close()
