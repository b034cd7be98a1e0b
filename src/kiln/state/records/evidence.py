"""Rows of `rollout_evidence`: what a rollout's judge was given (kiln.analysis.recording), one
compressed blob per rollout, for `kiln judge replay`; gc drops it with the rollout's retention."""

from __future__ import annotations

from kiln.state.store import Store


def save(store: Store, rollout_id: int, data: bytes, now: float) -> None:
    with store.tx() as c:
        c.execute("INSERT OR REPLACE INTO rollout_evidence(rollout_id, data, saved_at) "
                  "VALUES (?,?,?)", (rollout_id, data, now))


def load(store: Store, rollout_id: int) -> bytes | None:
    row = store.one("SELECT data FROM rollout_evidence WHERE rollout_id = ?", (rollout_id,))
    return None if row is None else bytes(row["data"])


def rollout_ids(store: Store) -> list[int]:
    return [int(r["rollout_id"]) for r in store.query(
        "SELECT rollout_id FROM rollout_evidence ORDER BY rollout_id")]


def drop_all_but(store: Store, keep: set[int]) -> list[int]:
    """Remove the evidence of every rollout not in `keep`; the rollouts it was removed from."""
    gone = [rid for rid in rollout_ids(store) if rid not in keep]
    if gone:
        with store.tx() as c:
            for rid in gone:
                c.execute("DELETE FROM rollout_evidence WHERE rollout_id = ?", (rid,))
    return gone


def newest_rollouts(store: Store, keep: int) -> set[int]:
    """The ids of each service's newest `keep` rollouts and of every unfinished one: the
    rollouts whose evidence gc keeps."""
    rows = store.query("SELECT id, service, phase FROM rollouts ORDER BY id DESC")
    seen: dict[str, int] = {}
    out: set[int] = set()
    for r in rows:
        n = seen.get(str(r["service"]), 0)
        if n < keep or r["phase"] != "done":
            out.add(int(r["id"]))
        seen[str(r["service"])] = n + 1
    return out
