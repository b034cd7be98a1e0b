"""The project lock: one mutating command at a time; a dead (or reused) owner is taken over."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.errors import KilnError, LockHeld
from kiln.state.lock import pid_alive, pid_start_time, project_lock
from kiln.state.store import Store
from kiln.testing.project import wait_for

HOLDER = """
import sys
from pathlib import Path
from kiln.state.lock import project_lock
from kiln.state.store import Store

store = Store.open(Path(sys.argv[1]))
with project_lock(store, sys.argv[2]):
    sys.stdin.read()  # hold until the test closes our stdin
"""


def lock_row(home: Path) -> sqlite3.Row | None:
    conn = sqlite3.connect(home / "state.db", isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM lock WHERE id = 1").fetchone()
        return row
    finally:
        conn.close()


def start_holder(home: Path, command: str) -> subprocess.Popen[bytes]:
    """A live process of our own that takes the project lock through the library and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), command],
                            stdin=subprocess.PIPE)

    def held() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"lock holder exited early with {proc.returncode}")
        if not (home / "state.db").exists():
            return False
        row = lock_row(home)
        return row is not None and row["pid"] == proc.pid

    wait_for(held, 15.0, 0.02, what="the helper to take the lock")
    return proc


def stop_holder(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(command: str) -> subprocess.Popen[bytes]:
        Store.open(tmp_path / "home").close()  # create the db before the race to read it
        proc = start_holder(tmp_path / "home", command)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_holder(proc)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    try:
        yield s
    finally:
        s.close()


def dead_pid() -> int:
    """The pid of a process we started and reaped: certainly not running (barring reuse)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_row(store: Store, pid: int, pid_start: str | None, *, host: str | None = None,
              command: str = "deploy web") -> None:
    with store.tx() as c:
        c.execute("INSERT OR REPLACE INTO lock(id, pid, pid_start, host, command, started_at) "
                  "VALUES (1, ?, ?, ?, ?, ?)",
                  (pid, pid_start, host or socket.gethostname(), command, time.time() - 5))


def test_lock_row_names_this_process_while_held(store: Store) -> None:
    with project_lock(store, "bake web") as me:
        row = store.one("SELECT * FROM lock")
        assert row is not None
        assert (row["pid"], row["command"], row["host"]) == (os.getpid(), "bake web",
                                                             socket.gethostname())
        assert row["pid_start"] == pid_start_time(os.getpid())
        assert me.pid == os.getpid() and me.command == "bake web"
    assert store.one("SELECT * FROM lock") is None


def test_lock_row_removed_on_exception(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), project_lock(store, "deploy web"):
        raise RuntimeError("boom")
    assert store.one("SELECT * FROM lock") is None
    with project_lock(store, "deploy web"):  # and it can be taken again
        pass


def test_lock_held_by_another_live_process_exits_4_naming_it(
        tmp_path: Path, store: Store, holder: Callable[[str], subprocess.Popen[bytes]]) -> None:
    proc = holder("deploy web")
    warnings: list[str] = []
    with pytest.raises(LockHeld) as info, project_lock(store, "bake web", warnings.append):
        pytest.fail("must not get the lock")
    err = info.value
    assert err.exit_code == 4 and isinstance(err, KilnError)
    assert "deploy web" in str(err) and f"pid {proc.pid}" in str(err)
    assert "\n" not in str(err)
    assert warnings == []
    row = lock_row(tmp_path / "home")  # the holder keeps it
    assert row is not None and row["pid"] == proc.pid
    stop_holder(proc)
    assert proc.returncode == 0
    assert lock_row(tmp_path / "home") is None
    with project_lock(store, "bake web"):
        pass


def test_dead_owner_is_taken_over_with_a_warning(store: Store) -> None:
    pid = dead_pid()
    write_row(store, pid, "12345", command="deploy web")
    warnings: list[str] = []
    with project_lock(store, "bake web", warnings.append):
        row = store.one("SELECT * FROM lock")
        assert row is not None and row["pid"] == os.getpid() and row["command"] == "bake web"
    assert len(warnings) == 1
    assert f"pid {pid}" in warnings[0] and "deploy web" in warnings[0]
    events = [e for e in store.events() if e["kind"] == "lock.takeover"]
    assert len(events) == 1 and f"pid {pid}" in events[0]["message"]
    assert store.one("SELECT * FROM lock") is None


def test_dead_owner_takeover_works_without_a_warn_callback(store: Store) -> None:
    write_row(store, dead_pid(), None)
    with project_lock(store, "bake web"):
        pass
    assert [e["kind"] for e in store.events()] == ["lock.takeover"]


def test_reused_pid_with_another_start_time_counts_as_dead(
        store: Store, holder: Callable[[str], subprocess.Popen[bytes]]) -> None:
    # A live process that is not the recorded owner: same pid, different start time.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        real = pid_start_time(proc.pid)
        assert real is not None
        assert pid_alive(proc.pid, real)
        assert not pid_alive(proc.pid, str(int(real) + 1))
        write_row(store, proc.pid, str(int(real) + 1))
        warnings: list[str] = []
        with project_lock(store, "bake web", warnings.append):
            pass
        assert len(warnings) == 1
        # ... while the same pid with its true start time is a live holder.
        write_row(store, proc.pid, real)
        with pytest.raises(LockHeld), project_lock(store, "bake web"):
            pass
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_lock_of_another_host_is_never_taken_over(store: Store) -> None:
    write_row(store, dead_pid(), None, host="some-other-host")
    with pytest.raises(LockHeld, match="some-other-host"), project_lock(store, "bake web"):
        pass
    row = store.one("SELECT * FROM lock")
    assert row is not None and row["host"] == "some-other-host"


def test_nested_lock_in_the_same_process_keeps_the_outer_hold(store: Store) -> None:
    with project_lock(store, "deploy web"):
        with project_lock(store, "bake web"):
            pass
        row = store.one("SELECT * FROM lock")
        assert row is not None and row["command"] == "deploy web"
    assert store.one("SELECT * FROM lock") is None


def test_pid_alive() -> None:
    me = os.getpid()
    assert pid_alive(me, pid_start_time(me))
    assert pid_alive(me, None)
    assert not pid_alive(me, "0")
    assert not pid_alive(0, None)
    assert not pid_alive(-1, None)
    assert not pid_alive(dead_pid(), None)


def test_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen(["true"])
    try:
        def zombie() -> bool:
            with open(f"/proc/{proc.pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"

        wait_for(zombie, 15.0, 0.02, what="the child to exit")
        assert not pid_alive(proc.pid, None)
    finally:
        proc.wait()


RACER = """
import sys
from pathlib import Path
from kiln.errors import LockHeld
from kiln.state.lock import project_lock
from kiln.state.store import Store

store = Store.open(Path(sys.argv[1]))
sys.stdin.readline()  # start together
try:
    with project_lock(store, "racer"):
        print("got", flush=True)
        sys.stdin.read()
except LockHeld:
    print("held", flush=True)
    sys.exit(4)
"""


def test_concurrent_takers_exactly_one_wins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store.open(home).close()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(home)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = []
        for p in procs:
            assert p.stdout is not None
            answers.append(p.stdout.readline().strip())
        assert sorted(answers) == ["got", "held", "held", "held"]
        winner = procs[answers.index("got")]
        row = lock_row(home)
        assert row is not None and row["pid"] == winner.pid
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert sorted(p.returncode for p in procs) == [0, 4, 4, 4]
    assert lock_row(home) is None
