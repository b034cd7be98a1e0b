"""`drift` reports a release running fewer replicas than it should, and `status` never calls a
gone process `running` (the in-memory fake platform: no processes)."""

from __future__ import annotations

from pathlib import Path

from kiln.drift import detect
from kiln.rollout.executor import instances_of
from test_serve_controller import CANARY, deployed


def test_drift_reports_missing_replicas(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    assert detect(proj) == []
    first = instances_of(proj.store, "web-r1")[0]
    platform.compute.die(first)
    # Not yet swept: the state still records it running; drift sees the dead process.
    assert [i["kind"] for i in detect(proj)] == ["dead-instance"]
    shown = proj.status()["services"][0]["releases"][0]["instances"]
    states = {i["id"]: (i["state"], i["alive"], i["healthy"]) for i in shown}
    assert states[first.id] == ("dead", False, False)  # never `running` and dead at once
    assert all(s == "running" for iid, (s, _, _) in states.items() if iid != first.id)
    # Swept (marked dead, as any command does) and not replaced: one replica short.
    platform.compute.sweep()
    items = detect(proj)
    assert [(i["kind"], i["service"]) for i in items] == [("missing-instances", "web")], items
    assert "1/2 instances of web-r1 alive" in items[0]["detail"]
    proj.close()


def test_a_rollout_in_progress_is_not_missing_replicas(tmp_path: Path) -> None:
    proj, platform = deployed(tmp_path, CANARY)
    platform.compute.die(instances_of(proj.store, "web-r1")[0])
    platform.compute.sweep()
    with proj.store.tx() as c:  # a rollout opened (its steps change the sizes on purpose)
        c.execute("UPDATE rollouts SET phase = 'step' WHERE id = (SELECT MAX(id) FROM rollouts)")
    assert [i["kind"] for i in detect(proj)] == []
    proj.close()
