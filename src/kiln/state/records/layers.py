"""Rows of `layer_manifests`: the content manifest of each podman layer kiln baked, by diff id."""

from __future__ import annotations

from kiln.state.store import Store, Tx


def manifest_of(store: Store, diff_id: str) -> bytes | None:
    row = store.one("SELECT manifest FROM layer_manifests WHERE diff_id = ?", (diff_id,))
    return None if row is None else bytes(row["manifest"])


def insert_new(tx: Tx, diff_id: str, blob: bytes, created_at: float) -> None:
    """The layer's manifest, unless one is recorded already (the first record is the one)."""
    tx.execute("INSERT OR IGNORE INTO layer_manifests(diff_id, manifest, created_at) "
               "VALUES (?,?,?)", (diff_id, blob, created_at))
