"""End to end (issue #19): `kiln serve` driven through its API while commands open and close the
state again and again keeps its WAL (no `(deleted)` state file in /proc/<pid>/fd, ever) and
records every API action in the events table."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from kiln.state.store import Store
from kiln.testing.project import KILN, Proj, wait_for
from kiln.testing.serve import ServeProc

pytestmark = pytest.mark.e2e

ROUNDS = 12
COMMANDS = [("status", "--json"), ("history",), ("drift",), ("plan",), ("images",)]


def deleted_state_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if "state.db" in target and target.endswith("(deleted)"):
            found.append(target)
    return found


def test_commands_beside_serve_never_delete_its_wal_and_every_action_is_recorded(
        proj: Proj) -> None:
    proj.write(replicas=1)
    assert proj.kiln("deploy").returncode == 0
    proj.behave(version="2")
    assert proj.kiln("deploy").returncode == 0  # r2: something to roll back from
    home = proj.dir / ".kiln"
    deleted: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    with ServeProc(proj.dir) as srv:
        pid = srv.proc.pid

        def watch() -> None:  # the WAL must never be deleted, not only at the end
            while not stop.wait(0.02):
                deleted.extend(deleted_state_files(pid))

        def commands() -> None:  # CLI processes and this process open and close the state
            n = 0
            while not stop.is_set() and n < 200:  # bounded
                args = COMMANDS[n % len(COMMANDS)]
                res = subprocess.run([KILN, *args], cwd=proj.dir, capture_output=True,
                                     text=True, timeout=120, check=False)
                if "Traceback" in res.stderr or res.returncode not in (0, 1, 2):
                    failures.append(f"kiln {' '.join(args)}: {res.returncode} {res.stderr}")
                for _ in range(5):
                    Store.open(home).close()
                n += 1

        watcher = threading.Thread(target=watch, daemon=True)
        worker = threading.Thread(target=commands, daemon=True)
        watcher.start()
        worker.start()
        posted = 0
        try:
            for n in range(ROUNDS):
                for action in ["promote", "abort"] + (["rollback"] if n == 3 else []):
                    code, answer = srv.post(f"/api/services/web/{action}", {}, srv.token)
                    posted += 1
                    assert code in (200, 400, 404, 409), (action, code, answer)
                    if action == "rollback":  # a real one, r2 -> r1, through the controller
                        assert code == 200, answer
                        wait_for(lambda: srv.status()["services"][0]["current"] == "web-r1",
                                 timeout=120, what="the rollback to web-r1")
                assert deleted_state_files(pid) == []
        finally:
            stop.set()
            worker.join(150)
            watcher.join(5)
        assert srv.proc.poll() is None, "\n".join(srv.output)
        assert deleted == [], deleted
        assert failures == [], failures[:3]
        assert srv.stop() == 0
    store = Store.open(home)
    try:
        recorded = store.query("SELECT * FROM events WHERE kind = 'serve.request'")
        last = store.one("SELECT * FROM rollouts WHERE service = 'web' ORDER BY id DESC")
    finally:
        store.close()
    assert len(recorded) == posted  # every API action, also those refused
    assert [r["message"].split()[0] for r in recorded].count("rollback") == 1
    assert last is not None and last["to_release"] == "web-r1"  # the rollback's own record
