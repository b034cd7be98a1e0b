"""Rows of `events`: the append-only log (written through `Store.event` / `Tx.event`)."""

from __future__ import annotations

import json
import sqlite3

from kiln.state.store import Store


def last_time(store: Store, service: str, kind: str) -> float | None:
    """When the service last had an event of this kind."""
    row = store.one("SELECT MAX(time) AS t FROM events WHERE service = ? AND kind = ?",
                    (service, kind))
    return None if row is None or row["t"] is None else float(row["t"])


def rollout_events_between(store: Store, service: str, start: float, end: float
                           ) -> list[sqlite3.Row]:
    """time, kind, message and data_json of the service's `rollout.*` events in [start, end],
    in the order they were written."""
    return store.query(
        "SELECT time, kind, message, data_json FROM events WHERE service = ? AND time >= ? "
        "AND time <= ? AND kind LIKE 'rollout.%' ORDER BY id", (service, start, end))


def instance_death(store: Store, instance_id: str) -> str | None:
    """How the instance ended, as the rollout recorded when it found it dead."""
    row = store.one("SELECT data_json FROM events WHERE kind = 'instance.died' AND "
                    "json_extract(data_json, '$.instance') = ? ORDER BY id DESC LIMIT 1",
                    (instance_id,))
    if row is None:
        return None
    how = json.loads(row["data_json"]).get("how")
    return str(how) if how else None


def of_kind_since(store: Store, kind: str, since: float) -> list[sqlite3.Row]:
    """Events of one kind since a time, oldest first (e.g. `notify.failed` for status)."""
    return store.query("SELECT time, service, message, data_json FROM events WHERE kind = ? "
                       "AND time >= ? ORDER BY id", (kind, since))
