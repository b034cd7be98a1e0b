"""The `instances` table: rows in and out. Shared by the local Compute and the fake."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection

from kiln.platforms.base import Instance
from kiln.state.store import Store

LIVE_STATES: tuple[str, ...] = ("starting", "running", "draining")
KINDS: tuple[str, ...] = ("service", "test", "dev")


def from_row(row: sqlite3.Row) -> Instance:
    return Instance(id=row["id"], service=row["service"], release_id=row["release_id"],
                    host=row["host"], port=row["port"], pid=row["pid"],
                    pid_start=row["pid_start"], workdir=row["workdir"])


def list_rows(store: Store, service: str | None, kinds: Collection[str],
              states: Collection[str] | None) -> list[sqlite3.Row]:
    sql = "SELECT * FROM instances WHERE kind IN ({})".format(",".join("?" * len(kinds)))
    params: list[object] = list(kinds)
    if service is not None:
        sql += " AND service = ?"
        params.append(service)
    if states is not None:
        sql += " AND state IN ({})".format(",".join("?" * len(states)))
        params.extend(states)
    return store.query(sql + " ORDER BY created_at, id", tuple(params))


def get_row(store: Store, instance_id: str) -> sqlite3.Row | None:
    return store.one("SELECT * FROM instances WHERE id = ?", (instance_id,))


def set_state(store: Store, instance_id: str, state: str) -> None:
    stopped = time.time() if state in ("stopped", "dead") else None
    with store.tx() as c:
        c.execute("UPDATE instances SET state = ?, stopped_at = COALESCE(?, stopped_at) "
                  "WHERE id = ?", (state, stopped, instance_id))
