"""Rows of `releases`: one immutable release per service, image and recorded config."""

from __future__ import annotations

from kiln.state.store import Store


def config_json(store: Store, release_id: str) -> str | None:
    """The service config recorded with the release (JSON)."""
    row = store.one("SELECT config_json FROM releases WHERE id = ?", (release_id,))
    return None if row is None else str(row["config_json"])
