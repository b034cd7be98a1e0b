"""Rows of `attestations`: a test suite's signed-off result for one image."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def insert(tx: Tx, image_digest: str, suite_digest: str, passed: bool, document: str,
           path: str, created_at: float) -> None:
    tx.execute(
        "INSERT INTO attestations(image_digest, suite_digest, passed, document, path,"
        " created_at) VALUES (?,?,?,?,?,?)",
        (image_digest, suite_digest, int(passed), document, path, created_at),
    )


def newest(store: Store, image_digest: str, suite_digest: str | None = None
           ) -> sqlite3.Row | None:
    """The image's newest attestation (for this suite, if given)."""
    if suite_digest is None:
        return store.one("SELECT * FROM attestations WHERE image_digest = ? ORDER BY id DESC "
                         "LIMIT 1", (image_digest,))
    return store.one("SELECT * FROM attestations WHERE image_digest = ? AND suite_digest = ? "
                     "ORDER BY id DESC LIMIT 1", (image_digest, suite_digest))
