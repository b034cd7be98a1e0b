"""One owner of the state file: only SQLite opens state.db (and its -wal/-shm), through
`kiln.state.store.connect`. A raw open + close of the file in a process that holds a connection
drops that process's POSIX locks, and the next process to close its connection then deletes the
WAL under it (issue #19): its later writes go to a deleted file."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.state.store import Store

SRC = Path(__file__).resolve().parents[1] / "src"
OPENER = SRC / "kiln" / "state" / "store.py"
RAW_OPENS = {"open", "fdopen", "read_bytes", "write_bytes", "read_text", "write_text", "copy",
             "copy2", "copyfile", "copyfileobj", "truncate", "mmap"}


def deleted_state_fds(home: Path, pid: int | str = "self") -> list[str]:
    """Descriptors of `pid` on a state.db file in `home` that was deleted under it (other tests
    of this process may hold their own)."""
    found = []
    folder = Path(f"/proc/{pid}/fd")
    for fd in folder.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(f"{home}/state.db") and target.endswith("(deleted)"):
            found.append(target)
    return found


def offenders(tree: ast.AST, text: str) -> list[str]:
    """sqlite3.connect calls, and raw opens whose arguments or receiver name state.db."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "connect" and isinstance(func, ast.Attribute) and \
                getattr(func.value, "id", "") == "sqlite3":
            found.append(f"line {node.lineno}: sqlite3.connect")
        elif name in RAW_OPENS and "state.db" in (ast.get_source_segment(text, node) or ""):
            found.append(f"line {node.lineno}: {name}")
    return found


def test_only_the_store_opens_a_database() -> None:
    bad = {}
    for path in sorted(SRC.rglob("*.py")):
        if path == OPENER:
            continue
        text = path.read_text(encoding="utf-8")
        hits = offenders(ast.parse(text), text)
        if hits:
            bad[str(path.relative_to(SRC))] = hits
    assert bad == {}, "open the state through kiln.state.store.connect / Store.open only"


@pytest.mark.parametrize("code", [
    "import sqlite3\nsqlite3.connect(db)\n",
    "import os\nos.close(os.open(home / 'state.db', os.O_RDWR))\n",
    "(home / 'state.db-wal').read_bytes()\n",
])
def test_the_rule_sees_an_offender(code: str) -> None:
    assert offenders(ast.parse(code), code)


HOLDER = """
import sys
from pathlib import Path
from kiln.state.store import Store
s = Store.open(Path(sys.argv[1]))
s.event("holder", "open")
print("open", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"""


def test_opening_and_closing_the_state_keeps_another_connections_wal(tmp_path: Path) -> None:
    """The issue's scenario in one process (the controller) and one other (a command)."""
    home = tmp_path / ".kiln"
    Store.open(home).close()
    mine = Store.open(home)  # the controller's long-lived connection
    mine.event("mine", "before")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "open"
        for _ in range(5):  # commands served in the controller's process open and close it
            Store.open(home).close()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert deleted_state_fds(home) == []
    mine.event("mine", "after")  # still written to the file everyone reads
    mine.close()
    again = Store.open(home)
    try:
        assert {r["message"] for r in again.events()} >= {"before", "open", "after"}
    finally:
        again.close()
