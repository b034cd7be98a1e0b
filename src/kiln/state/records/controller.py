"""The `controller` row (id 1): which `kiln serve` holds the controller role, and its heartbeat."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def holder(store: Store) -> sqlite3.Row | None:
    return store.one("SELECT * FROM controller WHERE id = 1")


def holder_in(tx: Tx) -> sqlite3.Row | None:
    """The holder, read inside the transaction that may claim the role."""
    found: sqlite3.Row | None = tx.execute("SELECT * FROM controller WHERE id = 1").fetchone()
    return found


def take(tx: Tx, pid: int, pid_start: str | None, host: str, listen: str, started_at: float,
         heartbeat: float) -> None:
    tx.execute("INSERT OR REPLACE INTO controller(id, pid, pid_start, host, listen, started_at, "
               "heartbeat) VALUES (1, ?, ?, ?, ?, ?, ?)",
               (pid, pid_start, host, listen, started_at, heartbeat))


def drop(tx: Tx, pid: int) -> bool:
    """Give the role up if this pid has it; whether it had."""
    return bool(tx.execute("DELETE FROM controller WHERE id = 1 AND pid = ?", (pid,)).rowcount)


def beat(tx: Tx, pid: int, now: float) -> None:
    tx.execute("UPDATE controller SET heartbeat = ? WHERE id = 1 AND pid = ?", (now, pid))
