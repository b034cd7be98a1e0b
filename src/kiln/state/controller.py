"""The controller role: at most one `kiln serve` per project, found by every other command.

A command that would drive a rollout hands it to a live controller instead (it creates the rollout
row and waits on it); `promote`/`abort` leave their signal for it. The row is claimed like the
lock: a holder whose process is gone is taken over.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from kiln.errors import LockHeld
from kiln.state.lock import pid_alive, pid_start_time
from kiln.state.records import controller as records
from kiln.state.store import Store


@dataclass(frozen=True)
class Controller:
    pid: int
    host: str
    listen: str
    started_at: float

    def describe(self) -> str:
        return f"kiln serve (pid {self.pid}, {self.listen})"


def claim(store: Store, listen: str) -> Controller:
    """Take the role for this process; LockHeld when a live controller has it."""
    me = Controller(os.getpid(), socket.gethostname(), listen, time.time())
    with store.tx() as c:
        row = records.holder_in(c)
        if row is not None and not (row["host"] == me.host and row["pid"] == me.pid):
            if row["host"] != me.host or pid_alive(row["pid"], row["pid_start"]):
                raise LockHeld(f"another controller runs for this project: kiln serve (pid "
                               f"{row['pid']} on {row['host']}, {row['listen']})",
                               hint="stop it first (SIGTERM), or use its dashboard")
            c.event("controller.takeover", f"took the controller role over from pid {row['pid']}: "
                    "its process is gone")
        records.take(c, me.pid, pid_start_time(me.pid), me.host, listen, me.started_at,
                     me.started_at)
        c.event("controller.started", f"kiln serve (pid {me.pid}) controls the project on {listen}",
                data={"pid": me.pid, "listen": listen})
    return me


def release(store: Store) -> None:
    with store.tx() as c:
        if records.drop(c, os.getpid()):
            c.event("controller.stopped", f"kiln serve (pid {os.getpid()}) stopped; everything "
                    "keeps serving")


def heartbeat(store: Store) -> None:
    with store.tx() as c:
        records.beat(c, os.getpid(), time.time())


def running(store: Store, stale_after: float = 30.0) -> Controller | None:
    """The live controller of another process, if any (a silent or dead one does not count)."""
    row = records.holder(store)
    if row is None or (row["pid"] == os.getpid() and row["host"] == socket.gethostname()):
        return None
    if row["host"] == socket.gethostname() and not pid_alive(row["pid"], row["pid_start"]):
        return None
    if time.time() - float(row["heartbeat"]) > stale_after:
        return None
    return Controller(int(row["pid"]), str(row["host"]), str(row["listen"]),
                      float(row["started_at"]))
