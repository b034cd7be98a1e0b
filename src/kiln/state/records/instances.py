"""Rows of `instances`: every process or machine kiln launched, with its state."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store


def live_release_ids(store: Store, service: str) -> list[str]:
    """Releases of the service with an instance that is starting, running or draining."""
    rows = store.query(
        "SELECT DISTINCT release_id FROM instances WHERE service = ? AND state IN "
        "('starting','running','draining')", (service,))
    return [str(r["release_id"]) for r in rows]


def live_service_count(store: Store) -> int:
    """Service instances (not dev or test ones) of any service still alive."""
    row = store.one("SELECT COUNT(*) AS n FROM instances WHERE kind = 'service' "
                    "AND state IN ('starting','running','draining')")
    return 0 if row is None else int(row["n"])


def of_service(store: Store, service: str) -> list[sqlite3.Row]:
    """All of the service's instances, newest first."""
    return store.query(
        "SELECT * FROM instances WHERE service = ? ORDER BY created_at DESC", (service,))


def telling_of_release(store: Store, release_id: str) -> sqlite3.Row | None:
    """The release's service instance whose log says most: a dead one, else the newest."""
    return store.one(
        "SELECT * FROM instances WHERE release_id = ? AND kind = 'service' "
        "ORDER BY state = 'dead' DESC, created_at DESC LIMIT 1", (release_id,))
