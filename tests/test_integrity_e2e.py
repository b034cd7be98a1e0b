"""Image integrity at every use, through the real `kiln` command: after a file under
.kiln/images/<digest>/root/ is rewritten (also with its size kept, its mtime put back and a seal
file beside it rewritten), rollback, heal and a deploy of a stored image refuse (one line naming
the file, an event), drift reports it, plan no longer calls the service unchanged, and test, bake
and a deploy rebuild the image first; a poisoned step-cache entry is rebuilt with one warning."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from kiln.testing.project import Proj, kill_and_settle

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


def tamper_quietly(p: Proj, digest: str) -> Path:
    """Same size, mtime put back (touch -r), and a seal file beside the image rewritten: nothing
    a metadata check or a file next to the image could tell."""
    target = behaviour(p, digest)
    before = target.stat()
    text = target.read_text()
    evil = re.sub(r'("version": ")([^"]*)', lambda m: m.group(1) + "X" * len(m.group(2)), text)
    assert len(evil.encode()) == before.st_size and evil != text
    target.chmod(before.st_mode | stat.S_IWUSR)
    target.write_text(evil)
    target.chmod(stat.S_IMODE(before.st_mode))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    (target.parents[2] / "seal.json").write_text('{"format": 1, "entries": {}}')
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
    assert "modified after baking" in res.stderr and "refused to roll web back" in res.stderr
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


def test_a_quiet_in_place_edit_is_refused_at_every_launch_and_drift_reports_it(
        proj: Proj) -> None:
    from kiln.errors import ImageTampered
    from kiln.project import Project
    from kiln.rollout.heal import heal

    ok(proj, "deploy")
    first = current_digest(proj)
    proj.behave(version="2")
    ok(proj, "deploy")
    second = current_digest(proj)

    tamper_quietly(proj, first)
    res = proj.kiln("rollback", "web")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "app/behaviour.json: content differs" in lines[0], lines
    assert "kiln bake --no-cache web" in lines[0], lines
    assert proj.weights() == {"web-r2": 100}

    tamper_quietly(proj, second)
    res = proj.kiln("drift", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    tampered = [i for i in json.loads(res.stdout) if i["kind"] == "tampered-image"]
    assert len(tampered) == 1 and "app/behaviour.json: content differs" in \
        tampered[0]["detail"], tampered

    # A heal (what `kiln serve` does when an instance dies) and a deploy of the stored image
    # (the dashboard's) launch without a bake: both refuse.
    kill_and_settle(proj.live_pids()[0])
    project = Project.open(proj.dir / "kiln.yaml")
    try:
        current = project.current_release("web")
        assert current is not None
        with pytest.raises(ImageTampered, match=r"app/behaviour\.json: content differs"):
            heal(project.rollout_env("web", current.spec), "web", current)
        with pytest.raises(ImageTampered, match=r"app/behaviour\.json: content differs"):
            project.deploy_image("web", second, force=True)
    finally:
        project.close()
    assert len(events(proj, "image.tampered")) >= 3


def test_a_poisoned_step_cache_entry_is_rebuilt_with_one_warning(proj: Proj) -> None:
    ok(proj, "bake")
    with sqlite3.connect(proj.dir / ".kiln" / "state.db") as conn:
        snapshots = [r[0] for r in conn.execute("SELECT snapshot FROM steps")]
    for snapshot in set(snapshots):  # every entry: whichever the next bake restores
        folder = proj.dir / ".kiln" / snapshot
        folder.chmod(folder.stat().st_mode | stat.S_IWUSR)
        (folder / "sitecustomize.py").write_text("print('pwned')\n")
    (proj.dir / "app" / "extra.txt").write_text("a new file: the copy step and after rerun\n")
    res = proj.kiln("bake")
    assert res.returncode == 0, res.stdout + res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "sitecustomize.py: added" in warnings[0], res.stderr
    digest = current_digest(proj)
    root = proj.dir / ".kiln" / "images" / digest.removeprefix("sha256:") / "root"
    assert (root / "app" / "extra.txt").exists() and not (root / "sitecustomize.py").exists()
    assert proj.kiln("drift").returncode == 0


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
