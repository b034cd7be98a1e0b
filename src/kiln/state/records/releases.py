"""Rows of `releases`: one immutable release per service, image and recorded config."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def config_json(store: Store, release_id: str) -> str | None:
    """The service config recorded with the release (JSON)."""
    row = store.one("SELECT config_json FROM releases WHERE id = ?", (release_id,))
    return None if row is None else str(row["config_json"])


def row(store: Store, release_id: str) -> sqlite3.Row | None:
    return store.one("SELECT * FROM releases WHERE id = ?", (release_id,))


def rows_of_service(store: Store, service: str) -> list[sqlite3.Row]:
    """Every release of the service, oldest first."""
    return store.query("SELECT * FROM releases WHERE service = ? ORDER BY number", (service,))


def next_number(tx: Tx, service: str) -> int:
    """The number the service's next release gets (read inside the transaction that inserts)."""
    found = tx.execute("SELECT COALESCE(MAX(number), 0) AS n FROM releases WHERE service = ?",
                       (service,)).fetchone()
    return int(found["n"]) + 1


def insert(tx: Tx, release_id: str, service: str, number: int, image_digest: str,
           config_digest: str, config_json: str, created_at: float, skip_tests: bool,
           image_env_json: str, image_workdir: str | None) -> None:
    tx.execute(
        "INSERT INTO releases(id, service, number, image_digest, config_digest, "
        "config_json, created_at, skip_tests, image_env_json, image_workdir) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)",
        (release_id, service, number, image_digest, config_digest, config_json, created_at,
         int(skip_tests), image_env_json, image_workdir))


def services(store: Store) -> list[str]:
    """Services that have a release."""
    return [str(r["service"]) for r in store.query("SELECT DISTINCT service FROM releases")]


def image_digest(store: Store, release_id: str) -> str | None:
    found = store.one("SELECT image_digest FROM releases WHERE id = ?", (release_id,))
    return None if found is None else str(found["image_digest"])


def retained_live(store: Store, service: str) -> list[sqlite3.Row]:
    """id and image_digest of the service's releases that went live and whose image is kept,
    newest first."""
    return store.query(
        "SELECT r.id, r.image_digest FROM releases r JOIN images i ON i.digest = "
        "r.image_digest WHERE r.service = ? AND r.id IN (SELECT to_release FROM rollouts "
        "WHERE service = ? AND outcome = 'promoted') ORDER BY r.number DESC",
        (service, service))
