"""Rows of `routes`: the router's weight per service and release."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from kiln.state.store import Store, Tx


def any_weighted(store: Store) -> bool:
    """Some release of some service gets traffic."""
    return store.one("SELECT 1 FROM routes WHERE weight > 0 LIMIT 1") is not None


def delete_service(tx: Tx, service: str) -> None:
    tx.execute("DELETE FROM routes WHERE service = ?", (service,))


def all_weights(store: Store) -> list[sqlite3.Row]:
    """service, release_id and weight of every route."""
    return store.query("SELECT service, release_id, weight FROM routes")


def weights_of(store: Store, service: str) -> dict[str, int]:
    """The service's router weight per release."""
    return {str(r["release_id"]): int(r["weight"]) for r in store.query(
        "SELECT release_id, weight FROM routes WHERE service = ?", (service,))}


def replace_service(tx: Tx, service: str, weights: Mapping[str, int]) -> None:
    """The service's routes become exactly `weights` (release -> weight)."""
    tx.execute("DELETE FROM routes WHERE service = ?", (service,))
    for release, weight in weights.items():
        tx.execute("INSERT INTO routes(service, release_id, weight) VALUES (?,?,?)",
                   (service, release, weight))
