"""The `lock` row (id 1): which process holds the project lock (kiln.state.lock decides)."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def holder(store: Store) -> sqlite3.Row | None:
    return store.one("SELECT * FROM lock WHERE id = 1")


def holder_in(tx: Tx) -> sqlite3.Row | None:
    """The holder, read inside the transaction that may take the lock."""
    found: sqlite3.Row | None = tx.execute("SELECT * FROM lock WHERE id = 1").fetchone()
    return found


def held_by(tx: Tx, pid: int) -> sqlite3.Row | None:
    """The lock row when this pid holds it."""
    found: sqlite3.Row | None = tx.execute("SELECT * FROM lock WHERE id = 1 AND pid = ?",
                                           (pid,)).fetchone()
    return found


def take(tx: Tx, pid: int, pid_start: str | None, host: str, command: str,
         started_at: float) -> None:
    tx.execute("INSERT OR REPLACE INTO lock(id, pid, pid_start, host, command, started_at) "
               "VALUES (1, ?, ?, ?, ?, ?)", (pid, pid_start, host, command, started_at))


def drop(tx: Tx, pid: int) -> None:
    """Release the lock if this pid holds it."""
    tx.execute("DELETE FROM lock WHERE id = 1 AND pid = ?", (pid,))
