"""The project lock: one mutating command at a time, stale owners taken over with a warning."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kiln.errors import LockHeld
from kiln.state.records import lock as records
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


CONTROLLER_COMMAND = "kiln serve"
"""The lock command of `kiln serve`'s passes: held for a pass only, so others wait, not fail."""


def live_holder(store: Store) -> LockInfo | None:
    """Who holds the project lock now, if that process is still alive (status uses it to say
    whether an open rollout is being driven or waits for `kiln deploy` to resume it)."""
    row = records.holder(store)
    if row is None:
        return None
    if row["host"] == socket.gethostname() and not pid_alive(row["pid"], row["pid_start"]):
        return None
    return LockInfo(row["pid"], row["host"], row["command"], row["started_at"])


@contextmanager
def project_lock(store: Store, command: str,
                 warn: Callable[[str], None] | None = None,
                 controller_wait: float = 20.0) -> Iterator[LockInfo]:
    """Hold the project lock for the duration of a mutating command.

    Raises LockHeld (exit 4) naming the holder when a live process owns it. A pass of the
    controller (`kiln serve`) holds it briefly, so a command waits up to `controller_wait` for it.
    """
    me = LockInfo(os.getpid(), socket.gethostname(), command, time.time())
    my_start = pid_start_time(me.pid)
    deadline = time.monotonic() + controller_wait
    while True:
        try:
            nested = _acquire(store, me, my_start, warn)
            break
        except _HeldByController:
            if time.monotonic() > deadline:
                raise LockHeld("the project lock stayed with `kiln serve` for "
                               f"{controller_wait:.0f}s", hint="is the controller stuck? "
                               "`kiln status` shows it; stop it with SIGTERM") from None
            time.sleep(0.05)
    try:
        yield me
    finally:
        if not nested:
            with store.tx() as c:
                records.drop(c, me.pid)


def _lock_hint(command: str) -> str:
    """What to do about a held lock; a deploy is often just waiting in a canary step."""
    verb, _, names = command.partition(" ")
    if verb == "deploy":
        svc = names.split()[0] if names.split() else "SERVICE"
        return (f"it may be waiting in a canary step: `kiln promote {svc}` or `kiln abort "
                f"{svc}` decide it (the running deploy picks them up), `kiln status {svc}` "
                "shows where it is; or wait for it to finish")
    return "wait for it to finish, or stop it"


class _HeldByController(Exception):
    pass


def _acquire(store: Store, me: LockInfo, my_start: str | None,
             warn: Callable[[str], None] | None) -> bool:
    """Take the lock (True when this process already held it: nested)."""
    nested = False  # this process already holds it: the outermost holder releases it
    with store.tx() as c:
        row = records.holder_in(c)
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
                elif (holder.command.startswith(CONTROLLER_COMMAND)
                      and not me.command.startswith(CONTROLLER_COMMAND)):
                    raise _HeldByController()
                else:
                    raise LockHeld(f"another kiln command holds the project lock: "
                                   f"{holder.describe()}", hint=_lock_hint(holder.command))
        if not nested:
            records.take(c, me.pid, my_start, me.host, me.command, me.started_at)
    return nested


def try_lock(store: Store, command: str) -> bool:
    """Take the lock if nobody holds it (a stale holder is taken over); never waits.
    Release with `unlock`. The controller's passes use this."""
    try:
        return not _acquire(store, LockInfo(os.getpid(), socket.gethostname(), command,
                                            time.time()), pid_start_time(os.getpid()), None)
    except (LockHeld, _HeldByController):
        return False


def unlock(store: Store) -> None:
    with store.tx() as c:
        records.drop(c, os.getpid())


@contextmanager
def lock_released(store: Store, wait: float = 3600.0) -> Iterator[None]:
    """Give this process's lock up while it waits on another (the controller driving a rollout
    it handed over), then take it back as it was."""
    with store.tx() as c:
        row = records.held_by(c, os.getpid())
        records.drop(c, os.getpid())
    try:
        yield
    finally:
        if row is not None:
            deadline = time.monotonic() + wait
            while True:
                with store.tx() as c:
                    held = records.holder_in(c)
                    if held is None or (held["host"] == row["host"]
                                        and not pid_alive(held["pid"], held["pid_start"])):
                        records.take(c, row["pid"], row["pid_start"], row["host"],
                                     row["command"], row["started_at"])
                        break
                if time.monotonic() > deadline:
                    raise LockHeld("could not take the project lock back")
                time.sleep(0.05)
