"""Reading the event journal incrementally (for `kiln serve`'s log: one line per event)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.state.store import Store


@dataclass(frozen=True)
class EventLine:
    id: int
    time: float
    service: str | None
    kind: str
    message: str


def last_event_id(store: Store) -> int:
    row = store.one("SELECT COALESCE(MAX(id), 0) FROM events")
    return int(row[0]) if row is not None else 0


def events_after(store: Store, after: int, limit: int = 500) -> list[EventLine]:
    """The events appended after id `after`, oldest first (at most `limit`)."""
    return [EventLine(int(r["id"]), float(r["time"]), r["service"], str(r["kind"]),
                      str(r["message"]))
            for r in store.query("SELECT id, time, service, kind, message FROM events "
                                 "WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]


def data_version(store: Store) -> int:
    """SQLite's `data_version`: moves when another connection commits (the dashboard's cheap
    "did anything change" check)."""
    row = store.one("PRAGMA data_version")
    assert row is not None
    return int(row[0])
