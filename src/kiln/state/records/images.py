"""Rows of `images`: every baked image, its digest, name, cache key and platform reference."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store


def by_key(store: Store, key: str) -> list[sqlite3.Row]:
    """Images recorded under a build cache key, newest first."""
    return store.query("SELECT * FROM images WHERE key = ? ORDER BY created_at DESC", (key,))


def newest_per_name(store: Store) -> list[str]:
    """The digest of the newest image of every name."""
    return [str(r["digest"]) for r in store.query(
        "SELECT name, digest FROM images i WHERE created_at = "
        "(SELECT MAX(created_at) FROM images WHERE name = i.name)")]


def newest_of_name(store: Store, name: str, limit: int = 10) -> list[sqlite3.Row]:
    """digest and created_at of the newest images of a name."""
    return store.query(
        "SELECT digest, created_at FROM images WHERE name = ? ORDER BY created_at DESC "
        "LIMIT ?", (name, limit))
