"""The project lock: one mutating command at a time, stale owners taken over with a warning."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kiln.errors import LockHeld
from kiln.state.store import Store


def pid_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start: str | None) -> bool:
    """True when `pid` runs and is the same process (same start time) we recorded."""
    if pid <= 0:
        return False
    now = pid_start_time(pid)
    if now is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        return False
    return start is None or start == now


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    command: str
    started_at: float

    def describe(self) -> str:
        age = time.time() - self.started_at
        return f"'{self.command}' (pid {self.pid} on {self.host}, running for {age:.0f}s)"


@contextmanager
def project_lock(store: Store, command: str,
                 warn: Callable[[str], None] | None = None) -> Iterator[LockInfo]:
    """Hold the project lock for the duration of a mutating command.

    Raises LockHeld (exit 4) naming the holder when a live process owns it.
    """
    me = LockInfo(os.getpid(), socket.gethostname(), command, time.time())
    my_start = pid_start_time(me.pid)
    nested = False  # this process already holds it: the outermost holder releases it
    with store.tx() as c:
        row = c.execute("SELECT * FROM lock WHERE id = 1").fetchone()
        if row is not None:
            holder = LockInfo(row["pid"], row["host"], row["command"], row["started_at"])
            nested = (row["pid"] == me.pid and row["pid_start"] == my_start
                      and row["host"] == me.host)
            if not nested:
                if row["host"] == me.host and not pid_alive(row["pid"], row["pid_start"]):
                    msg = f"took over a stale lock from {holder.describe()}: its process is gone"
                    if warn:
                        warn(msg)
                    c.event("lock.takeover", msg)
                else:
                    raise LockHeld(f"another kiln command holds the project lock: "
                                   f"{holder.describe()}",
                                   hint="wait for it to finish, or kill it")
        if not nested:
            c.execute(
                "INSERT OR REPLACE INTO lock(id, pid, pid_start, host, command, started_at) "
                "VALUES (1, ?, ?, ?, ?, ?)",
                (me.pid, my_start, me.host, command, me.started_at),
            )
    try:
        yield me
    finally:
        if not nested:
            with store.tx() as c:
                c.execute("DELETE FROM lock WHERE id = 1 AND pid = ?", (me.pid,))
