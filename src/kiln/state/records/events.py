"""Rows of `events`: the append-only log (written through `Store.event` / `Tx.event`)."""

from __future__ import annotations

from kiln.state.store import Store


def last_time(store: Store, service: str, kind: str) -> float | None:
    """When the service last had an event of this kind."""
    row = store.one("SELECT MAX(time) AS t FROM events WHERE service = ? AND kind = ?",
                    (service, kind))
    return None if row is None or row["t"] is None else float(row["t"])
