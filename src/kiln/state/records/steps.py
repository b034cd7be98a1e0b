"""Rows of `steps`: the local builder's step cache (a snapshot folder per step key)."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def snapshots(store: Store, keys: list[str]) -> list[sqlite3.Row]:
    """key and snapshot of the cached steps among `keys`."""
    marks = ",".join("?" * len(keys))
    return store.query(f"SELECT key, snapshot FROM steps WHERE key IN ({marks})", tuple(keys))


def snapshot_and_manifest(store: Store, key: str) -> sqlite3.Row | None:
    return store.one("SELECT snapshot, manifest FROM steps WHERE key = ?", (key,))


def put(tx: Tx, key: str, parent_key: str | None, image_name: str, description: str,
        snapshot: str, now: float, manifest: bytes | str | None) -> None:
    tx.execute("INSERT OR REPLACE INTO steps(key, parent_key, image_name, description, "
               "snapshot, created_at, used_at, manifest) VALUES (?,?,?,?,?,?,?,?)",
               (key, parent_key, image_name, description, snapshot, now, now, manifest))


def touch(tx: Tx, keys: list[str], now: float) -> None:
    marks = ",".join("?" * len(keys))
    tx.execute(f"UPDATE steps SET used_at = ? WHERE key IN ({marks})", (now, *keys))


def manifest_of(store: Store, key: str) -> bytes | None:
    """The step's recorded content manifest (None: no such step, or made before manifests)."""
    row = store.one("SELECT manifest FROM steps WHERE key = ?", (key,))
    return None if row is None or row["manifest"] is None else bytes(row["manifest"])


def parents(store: Store) -> dict[str, str | None]:
    """Every step's parent key."""
    return {str(r["key"]): r["parent_key"] for r in store.query(
        "SELECT key, parent_key FROM steps")}


def all_oldest_first(store: Store) -> list[sqlite3.Row]:
    return store.query("SELECT * FROM steps ORDER BY created_at")


def delete(tx: Tx, key: str) -> None:
    tx.execute("DELETE FROM steps WHERE key = ?", (key,))


def snapshot_paths(store: Store) -> set[str]:
    """The snapshot folders the cached steps name (relative to the home)."""
    return {str(r["snapshot"]) for r in store.query("SELECT snapshot FROM steps")}
