"""Rows of `images`: every baked image, its digest, name, cache key and platform reference."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store


def by_key(store: Store, key: str) -> list[sqlite3.Row]:
    """Images recorded under a build cache key, newest first."""
    return store.query("SELECT * FROM images WHERE key = ? ORDER BY created_at DESC", (key,))
