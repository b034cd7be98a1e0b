"""Rows of `images`: every baked image, its digest, name, cache key and platform reference."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


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


def upsert(tx: Tx, digest: str, name: str, ref: str, key: str, env_json: str, workdir: str,
           size: int, created_at: float, manifest: bytes | None) -> None:
    """The row of a sealed image; a rebake of the same digest refreshes it (and keeps a
    manifest it already had when this one has none)."""
    tx.execute(
        "INSERT INTO images(digest, name, ref, key, env_json, workdir, size, created_at, "
        "manifest) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(digest) DO UPDATE SET "
        "name = excluded.name, ref = excluded.ref, key = excluded.key, "
        "env_json = excluded.env_json, workdir = excluded.workdir, size = excluded.size, "
        "created_at = excluded.created_at, "  # the newest bake of a name is the cache's
        "manifest = COALESCE(excluded.manifest, images.manifest)",
        (digest, name, ref, key, env_json, workdir, size, created_at, manifest),
    )


def all_newest_first(store: Store) -> list[sqlite3.Row]:
    return store.query("SELECT * FROM images ORDER BY created_at DESC, name")


def row(store: Store, digest: str) -> sqlite3.Row | None:
    return store.one("SELECT * FROM images WHERE digest = ?", (digest,))


def digests(store: Store) -> list[str]:
    return [str(r["digest"]) for r in store.query("SELECT digest FROM images")]


def delete(tx: Tx, digest: str) -> None:
    tx.execute("DELETE FROM images WHERE digest = ?", (digest,))


def manifest_row(store: Store, digest: str) -> sqlite3.Row | None:
    """The image's `manifest` column (None: no such image; a row with NULL: baked before
    manifests)."""
    return store.one("SELECT manifest FROM images WHERE digest = ?", (digest,))


def set_manifest(tx: Tx, digest: str, blob: bytes) -> None:
    tx.execute("UPDATE images SET manifest = ? WHERE digest = ?", (blob, digest))


def keys(store: Store) -> list[str]:
    """The cache key of every image's last step."""
    return [str(r["key"]) for r in store.query("SELECT key FROM images")]


def newest_time_per_name(store: Store) -> dict[str, float]:
    """When each image name was last baked."""
    return {str(r["name"]): float(r["t"]) for r in store.query(
        "SELECT name, MAX(created_at) AS t FROM images GROUP BY name")}
