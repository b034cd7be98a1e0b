"""The `instances` table: rows in and out, shared by every platform's Compute and the core.

A row holds what every platform has (id, service, release, address, state, kind) plus the
platform's own handle as JSON (`handle_json`), which only that platform interprets.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from kiln.platforms.base import Instance
from kiln.state.records import instances as records
from kiln.state.store import Store, Tx

LIVE_STATES: tuple[str, ...] = records.LIVE_STATES
KINDS: tuple[str, ...] = ("service", "test", "dev")


def from_row(row: sqlite3.Row) -> Instance:
    return Instance(id=row["id"], service=row["service"], release_id=row["release_id"],
                    host=row["host"], port=row["port"], handle=handle_of(row))


def handle_of(row: sqlite3.Row) -> dict[str, str]:
    try:
        data = json.loads(row["handle_json"] or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if v is not None}


def insert(c: Tx, inst: Instance, *, kind: str, state: str = "starting") -> None:
    """The row of a new instance (inside the caller's transaction)."""
    records.insert(c, inst.id, inst.service, inst.release_id, inst.host, inst.port,
                   json.dumps(dict(inst.handle)), state, kind, time.time())


def set_handle(c: Tx, instance_id: str, handle: Mapping[str, str]) -> None:
    records.set_handle_json(c, instance_id, json.dumps(dict(handle)))


def live_instances(store: Store, *, release_id: str | None = None, service: str | None = None,
                   kind: str | None = "service") -> list[Instance]:
    """Instances in a live state, oldest first, filtered by release, service and kind."""
    return [from_row(r) for r in records.live_rows(store, release_id=release_id,
                                                   service=service, kind=kind)]


def list_rows(store: Store, service: str | None, kinds: Collection[str],
              states: Collection[str] | None) -> list[sqlite3.Row]:
    return records.filtered(store, service, kinds, states)


def get_row(store: Store, instance_id: str) -> sqlite3.Row | None:
    return records.row(store, instance_id)


def set_state(store: Store, instance_id: str, state: str) -> None:
    stopped = time.time() if state in ("stopped", "dead") else None
    with store.tx() as c:
        records.set_state(c, instance_id, state, stopped)


def gc_folders(store: Store, base: Path, in_use: Callable[[Path], bool] = lambda _: False) -> list[str]:
    """Remove the instance folders under `base` whose row is not live and that `in_use` does not
    claim (e.g. a process still running); call under the project lock. Returns the removed ids."""
    removed: list[str] = []
    if not base.is_dir():
        return removed
    for folder in sorted(base.iterdir()):
        row = get_row(store, folder.name)
        if (row is not None and row["state"] in LIVE_STATES) or in_use(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed
