"""Image integrity at every use, through the real `kiln` command: after a file under
.kiln/images/<digest>/root/ is rewritten, rollback refuses (one line, an event), plan no longer
calls the service unchanged, and test, bake and a heal deploy rebuild the image first."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from kiln.testing.project import Proj

pytestmark = pytest.mark.e2e


def ok(p: Proj, *args: str) -> str:
    res = p.kiln(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def current_digest(p: Proj) -> str:
    items = json.loads(ok(p, "images", "--json"))
    return str(items[0]["digest"])


def behaviour(p: Proj, digest: str) -> Path:
    return (p.dir / ".kiln" / "images" / digest.removeprefix("sha256:") / "root" / "app"
            / "behaviour.json")


def tamper(p: Proj, digest: str) -> Path:
    target = behaviour(p, digest)
    target.chmod(target.stat().st_mode | stat.S_IWUSR)  # as root, read-only bits don't stop us
    target.write_text('{"version": "evil"}')
    return target


def events(p: Proj, kind: str) -> list[str]:
    with sqlite3.connect(p.dir / ".kiln" / "state.db") as conn:
        return [r[0] for r in conn.execute("SELECT message FROM events WHERE kind = ?", (kind,))]


def test_a_tampered_image_is_refused_or_rebuilt_by_every_command(proj: Proj) -> None:
    ok(proj, "deploy")
    first = current_digest(proj)
    proj.behave(version="2")
    ok(proj, "deploy")
    second = current_digest(proj)
    assert first != second

    tamper(proj, first)
    res = proj.kiln("rollback", "web")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "modified after sealing" in res.stderr and "refused to roll web back" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert any("refused to roll web back" in m for m in events(proj, "image.tampered"))

    target = tamper(proj, second)
    plan = json.loads(ok(proj, "plan", "--json"))
    assert plan[0]["action"] != "unchanged" and plan[0]["bake"] == "needed", plan
    ok(proj, "test")
    assert "evil" not in target.read_text()

    tamper(proj, second)
    ok(proj, "bake")
    assert "evil" not in target.read_text()

    tamper(proj, second)
    proj.kiln("destroy")  # nothing runs: the next deploy launches from the image again
    ok(proj, "deploy")
    assert "evil" not in target.read_text()
    assert sum("rebuilding" in m for m in events(proj, "image.tampered")) == 3


def test_drift_reports_processes_and_a_router_the_state_does_not_know(proj: Proj) -> None:
    ok(proj, "deploy")
    pids = proj.live_pids()
    with sqlite3.connect(proj.dir / ".kiln" / "state.db") as conn:  # as if the state was lost
        conn.execute("UPDATE instances SET state = 'stopped'")
        conn.execute("DELETE FROM routes")
    res = proj.kiln("drift", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    items = json.loads(res.stdout)
    unknown = [i for i in items if i["kind"] == "unknown-process"]
    assert len(unknown) == len(pids) == 3, items
    assert {i["kind"] for i in items} >= {"unknown-process", "unknown-router"}
    ok(proj, "destroy")
    assert proj.live_pids() == [], "destroy stops what the state forgot too"


def test_kiln_test_does_not_demand_the_services_secrets(proj: Proj) -> None:
    spec = proj.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace(
        "    replicas:", "    secrets: {DB_PASSWORD: env:KILN_E2E_UNSET_SECRET}\n    replicas:"))
    res = proj.kiln("test")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DB_PASSWORD left out of the test instance" in res.stderr
    assert "KILN_E2E_UNSET_SECRET is not set" in res.stderr


def test_a_taken_listen_address_is_refused_before_the_bake(proj: Proj) -> None:
    import socket
    import time

    from kiln.platforms.local.traefik_process import read_pidfile

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", proj.port))
        s.listen()
        began = time.monotonic()
        res = proj.kiln("deploy")
        took = time.monotonic() - began
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"127.0.0.1:{proj.port}" in res.stderr and "Traceback" not in res.stderr
    images = proj.dir / ".kiln" / "images"
    assert not images.exists() or not any(images.iterdir()), "refused before any bake"
    running = read_pidfile(proj.dir / ".kiln" / "router" / "traefik.pid")
    assert running is None or not running.alive(), "no router left behind"
    assert proj.alive_instances() == 0
    assert took < 30
