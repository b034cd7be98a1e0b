"""Read-only commands are read-only: `status`, `history`, `plan`, `drift`, `images`, `logs` and
`judge replay` start and stop no process and write nothing (no state commit, no file under
.kiln), over a healthy project and over damaged ones (router dead, an instance dead, both)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.testing.project import Proj, kill_and_settle

pytestmark = pytest.mark.e2e

COMMANDS = [["status"], ["status", "--json"], ["history"], ["history", "--json"], ["plan"],
            ["plan", "--json"], ["drift"], ["drift", "--json"], ["images"], ["logs"],
            # unjudged rollouts here: its one-line error path (tests/test_judge_replay_e2e.py
            # checks a real replay writes nothing)
            ["judge", "replay", "1"], ["judge", "replay", "1", "--json"]]


def _processes(folder: Path) -> set[int]:
    """Processes of this project: its instances (cwd under it) and its router (its config
    under it on the command line)."""
    mine = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            mine.add(int(entry.name))
    return mine


def _files(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under .kiln but the ones running processes write (instance and router logs)
    and the database (compared by its commits: `PRAGMA data_version`)."""
    out = {}
    for path in home.rglob("*"):
        rel = path.relative_to(home)
        if (not path.is_file() or rel.parts[0] == "instances" or path.name.startswith("state.db")
                or path.suffix == ".log" or "access" in path.name):
            continue
        st = path.stat()
        out[str(rel)] = (st.st_mtime_ns, st.st_size)
    return out


def _router_pid(proj: Proj) -> int:
    return int(json.loads((proj.dir / ".kiln" / "router" / "traefik.pid").read_text())["pid"])


def _check_read_only(proj: Proj, state: str) -> None:
    home = proj.dir / ".kiln"
    conn = sqlite3.connect(home / "state.db")
    try:
        for args in COMMANDS:
            procs, files = _processes(proj.dir), _files(home)
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            changes = conn.execute("SELECT (SELECT COUNT(*) FROM events), "
                                   "(SELECT COUNT(*) FROM instances WHERE state = 'dead')"
                                   ).fetchone()
            res = proj.kiln(*args, timeout=60)
            what = f"`kiln {' '.join(args)}` ({state})"
            assert res.returncode in (0, 1, 2), f"{what}: {res.stdout}{res.stderr}"
            assert "Traceback" not in res.stderr, what
            assert _processes(proj.dir) == procs, f"{what} started or stopped a process"
            assert conn.execute("PRAGMA data_version").fetchone()[0] == version, \
                f"{what} wrote to the state"
            assert conn.execute("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM "
                                "instances WHERE state = 'dead')").fetchone() == changes, what
            assert _files(home) == files, f"{what} wrote files"
    finally:
        conn.close()


def _deployed(proj: Proj) -> None:
    proj.write(replicas=2)
    res = proj.kiln("deploy", "--skip-tests")
    assert res.returncode == 0, res.stdout + res.stderr


DAMAGE: dict[str, Callable[[Proj], None]] = {
    "healthy": lambda proj: None,
    "router dead": lambda proj: kill_and_settle(_router_pid(proj)),
    "an instance dead": lambda proj: kill_and_settle(proj.live_pids()[0]),
    "router and every instance dead": lambda proj: [
        kill_and_settle(pid) for pid in [_router_pid(proj), *proj.live_pids()]] and None,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_read_only_commands_start_stop_and_write_nothing(proj: Proj, damage: str) -> None:
    _deployed(proj)
    DAMAGE[damage](proj)
    _check_read_only(proj, damage)
    if damage != "healthy":
        # What they report: the damage, and that a writing command repairs it.
        res = proj.kiln("drift")
        assert res.returncode == 1 and "no drift" not in res.stdout, res.stdout
        plan = json.loads(proj.kiln("plan", "--json").stdout)
        if "instance" in damage:
            assert plan[0]["action"] == "heal", plan
        res = proj.kiln("deploy")
        assert res.returncode == 0, res.stdout + res.stderr
        assert proj.alive_instances() == 2
        assert json.loads(proj.kiln("plan", "--json").stdout)[0]["action"] == "unchanged"
        assert proj.kiln("drift").stdout.strip() == "no drift"
