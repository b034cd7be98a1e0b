"""Rows of `routes`: the router's weight per service and release."""

from __future__ import annotations

from kiln.state.store import Store, Tx


def any_weighted(store: Store) -> bool:
    """Some release of some service gets traffic."""
    return store.one("SELECT 1 FROM routes WHERE weight > 0 LIMIT 1") is not None


def delete_service(tx: Tx, service: str) -> None:
    tx.execute("DELETE FROM routes WHERE service = ?", (service,))
