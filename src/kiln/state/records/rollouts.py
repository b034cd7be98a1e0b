"""Rows of `rollouts`: one per rollout of a service, its status as JSON, its operator signal."""

from __future__ import annotations

import sqlite3

from kiln.state.store import Store, Tx


def last_settled(store: Store, service: str) -> sqlite3.Row | None:
    """The service's newest rollout that has an outcome (to_release, from_release, outcome)."""
    return store.one(
        "SELECT to_release, from_release, outcome, phase FROM rollouts WHERE service = ? "
        "AND outcome IS NOT NULL ORDER BY id DESC LIMIT 1", (service,))


def last_started_at(store: Store, service: str) -> float | None:
    last = store.one("SELECT MAX(started_at) AS t FROM rollouts WHERE service = ?", (service,))
    return None if last is None or last["t"] is None else float(last["t"])


def open_id(store: Store, service: str) -> int | None:
    """The service's rollout that is not done, if any."""
    row = store.one(
        "SELECT id FROM rollouts WHERE service = ? AND phase != 'done' ORDER BY id DESC LIMIT 1",
        (service,))
    return int(row["id"]) if row else None


def insert(tx: Tx, service: str, old: str | None, new: str, strategy: str, phase: str,
           status_json: str, now: float) -> int:
    cur = tx.execute(
        "INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
        "status_json, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
        (service, old, new, strategy, phase, status_json, now, now))
    assert cur.lastrowid is not None
    return int(cur.lastrowid)


def set_signal(store: Store, rollout_id: int, signal: str) -> None:
    with store.tx() as c:
        c.execute("UPDATE rollouts SET signal = ? WHERE id = ?", (signal, rollout_id))


def pending_signal(store: Store, rollout_id: int) -> str | None:
    """The signal not yet taken (None also when the rollout is gone)."""
    row = store.one("SELECT signal FROM rollouts WHERE id = ?", (rollout_id,))
    return None if row is None or row["signal"] is None else str(row["signal"])


def to_release(store: Store, rollout_id: int) -> str | None:
    row = store.one("SELECT to_release FROM rollouts WHERE id = ?", (rollout_id,))
    return str(row["to_release"]) if row else None


def status_json(store: Store, rollout_id: int) -> str | None:
    row = store.one("SELECT status_json FROM rollouts WHERE id = ?", (rollout_id,))
    return None if row is None else str(row["status_json"])


def end_open(tx: Tx, service: str, now: float) -> None:
    """Every unfinished rollout of the service ends (aborted unless it had an outcome)."""
    tx.execute("UPDATE rollouts SET phase = 'done', outcome = COALESCE(outcome, "
               "'aborted'), finished_at = ? WHERE service = ? AND phase != 'done'",
               (now, service))


def service_of(store: Store, rollout_id: int) -> str | None:
    row = store.one("SELECT service FROM rollouts WHERE id = ?", (rollout_id,))
    return None if row is None else str(row["service"])


def last_settled_with_release(store: Store, service: str) -> sqlite3.Row | None:
    """The service's newest settled rollout with its target's image and config digests."""
    return store.one(
        "SELECT ro.id, ro.to_release, ro.outcome, ro.reason, r.image_digest, r.config_digest "
        "FROM rollouts ro JOIN releases r ON r.id = ro.to_release WHERE ro.service = ? "
        "AND ro.outcome IS NOT NULL ORDER BY ro.id DESC LIMIT 1", (service,))


def promoted_targets(store: Store, service: str) -> list[str]:
    """Targets of the service's promoted rollouts, newest first (repeats kept)."""
    return [str(r["to_release"]) for r in store.query(
        "SELECT to_release FROM rollouts WHERE service = ? AND outcome = 'promoted' "
        "ORDER BY id DESC", (service,))]


def open_releases(store: Store, service: str) -> list[str]:
    """Both ends of the service's unfinished rollouts."""
    out: list[str] = []
    for r in store.query("SELECT from_release, to_release FROM rollouts WHERE service = ? "
                         "AND phase != 'done'", (service,)):
        out.extend(str(rid) for rid in (r["from_release"], r["to_release"]) if rid)
    return out


def all_summaries(store: Store) -> list[sqlite3.Row]:
    """service, phase, outcome and status_json of every rollout (the /metrics counters)."""
    return store.query("SELECT service, phase, outcome, status_json FROM rollouts")


def latest_per_service(store: Store) -> dict[str, sqlite3.Row]:
    """Each service's newest rollout (id, service, phase, status_json)."""
    return {str(r["service"]): r for r in store.query(
        "SELECT id, service, phase, status_json FROM rollouts WHERE id IN "
        "(SELECT MAX(id) FROM rollouts GROUP BY service)")}


def settled_per_service(store: Store) -> list[sqlite3.Row]:
    """Each service's newest rollout with an outcome (to_release, from_release, outcome)."""
    return store.query(
        "SELECT service, to_release, from_release, outcome FROM rollouts WHERE id IN "
        "(SELECT MAX(id) FROM rollouts WHERE outcome IS NOT NULL GROUP BY service)")


def newest(store: Store, service: str) -> sqlite3.Row | None:
    """The service's newest rollout, settled or not."""
    return store.one("SELECT * FROM rollouts WHERE service = ? ORDER BY id DESC LIMIT 1",
                     (service,))


def last_of_service(store: Store, service: str, limit: int | None = None) -> list[sqlite3.Row]:
    """The service's last `limit` rollouts (all when None), oldest first."""
    return store.query(
        "SELECT * FROM (SELECT * FROM rollouts WHERE service = ? ORDER BY id DESC "
        "LIMIT ?) ORDER BY id", (service, -1 if limit is None else limit))


def take_signal(tx: Tx, rollout_id: int) -> str | None:
    """The operator's pending signal, cleared in the same transaction."""
    row = tx.execute("SELECT signal FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    signal = row["signal"] if row else None
    if signal:
        tx.execute("UPDATE rollouts SET signal = NULL WHERE id = ?", (rollout_id,))
    return str(signal) if signal else None


def save_status(tx: Tx, rollout_id: int, phase: str, status_json: str, outcome: str | None,
                reason: str | None, now: float, finished: float | None) -> None:
    """A reconcile pass's status; `finished_at` is set once."""
    tx.execute(
        "UPDATE rollouts SET phase = ?, status_json = ?, outcome = ?, reason = ?, "
        "updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ?",
        (phase, status_json, outcome, reason, now, finished, rollout_id))


def row(store: Store, rollout_id: int) -> sqlite3.Row | None:
    return store.one("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
