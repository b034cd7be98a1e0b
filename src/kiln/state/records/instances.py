"""Rows of `instances`: every process or machine kiln launched, with its state."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence

from kiln.state.store import Store, Tx

LIVE_STATES: tuple[str, ...] = ("starting", "running", "draining")


def live_release_ids(store: Store, service: str) -> list[str]:
    """Releases of the service with an instance that is starting, running or draining."""
    rows = store.query(
        "SELECT DISTINCT release_id FROM instances WHERE service = ? AND state IN "
        "('starting','running','draining')", (service,))
    return [str(r["release_id"]) for r in rows]


def live_service_count(store: Store) -> int:
    """Service instances (not dev or test ones) of any service still alive."""
    row = store.one("SELECT COUNT(*) AS n FROM instances WHERE kind = 'service' "
                    "AND state IN ('starting','running','draining')")
    return 0 if row is None else int(row["n"])


def of_service(store: Store, service: str) -> list[sqlite3.Row]:
    """All of the service's instances, newest first."""
    return store.query(
        "SELECT * FROM instances WHERE service = ? ORDER BY created_at DESC", (service,))


def telling_of_release(store: Store, release_id: str) -> sqlite3.Row | None:
    """The release's service instance whose log says most: a dead one, else the newest."""
    return store.one(
        "SELECT * FROM instances WHERE release_id = ? AND kind = 'service' "
        "ORDER BY state = 'dead' DESC, created_at DESC LIMIT 1", (release_id,))


def dev_alive(store: Store) -> list[sqlite3.Row]:
    """`kiln dev` instances that are starting or running."""
    return store.query(
        "SELECT * FROM instances WHERE kind = 'dev' AND state IN ('starting','running')")


def release_at(store: Store, host: str, port: int) -> str | None:
    """The release of the newest instance that listened on host:port."""
    row = store.one("SELECT release_id FROM instances WHERE host = ? AND port = ? "
                    "ORDER BY created_at DESC LIMIT 1", (host, port))
    return str(row["release_id"]) if row else None


def live_image_digests(store: Store) -> list[str]:
    """Image digests of the releases that have a live instance."""
    rows = store.query(
        "SELECT DISTINCT r.image_digest FROM instances i JOIN releases r ON r.id = i.release_id "
        "WHERE i.state IN ('starting','running','draining')")
    return [str(r["image_digest"]) for r in rows]


def handles_json(conn: sqlite3.Connection) -> list[str]:
    """Every instance's platform handle (JSON), read over a bare connection (kiln.testing)."""
    return [str(text) for (text,) in conn.execute("SELECT handle_json FROM instances")]


def ended_ids(store: Store) -> list[str]:
    """Instances that stopped or died (their folders may go)."""
    return [str(r["id"]) for r in
            store.query("SELECT id FROM instances WHERE state IN ('stopped','dead')")]


def live_counts(store: Store) -> list[sqlite3.Row]:
    """service, release_id, state and count n of the live service instances."""
    return store.query("SELECT service, release_id, state, COUNT(*) AS n FROM instances WHERE "
                       "kind = 'service' AND state IN ('starting','running','draining') "
                       "GROUP BY service, release_id, state")


def up_service_instances(store: Store) -> list[sqlite3.Row]:
    """Service instances that are starting or running, oldest first."""
    return store.query("SELECT * FROM instances WHERE kind = 'service' AND state IN "
                       "('starting','running') ORDER BY created_at, id")


def mark_dead(tx: Tx, instance_id: str, now: float) -> None:
    """A starting or running instance whose process is gone."""
    tx.execute("UPDATE instances SET state = 'dead', stopped_at = ? WHERE id = ? "
               "AND state IN ('starting','running')", (now, instance_id))


def mark_running(tx: Tx, instance_id: str) -> None:
    """A starting instance that passed its health check."""
    tx.execute("UPDATE instances SET state = 'running' WHERE id = ? "
               "AND state = 'starting'", (instance_id,))


def mark_draining(tx: Tx, instance_id: str) -> None:
    tx.execute("UPDATE instances SET state = 'draining' WHERE id = ? AND state IN "
               "('starting','running')", (instance_id,))


def scrape_candidates(store: Store) -> list[sqlite3.Row]:
    """Live service instances (id, service, release_id, host, port) with their release's
    recorded config_json: kiln's Prometheus scrapes those whose config has `metrics`."""
    return store.query(
        "SELECT i.id, i.service, i.release_id, i.host, i.port, r.config_json "
        "FROM instances i JOIN releases r ON r.id = i.release_id WHERE i.kind = 'service' "
        "AND i.state IN ('starting','running','draining') ORDER BY i.service, i.release_id, i.id")


def live_of_service(store: Store, service: str) -> list[sqlite3.Row]:
    """The service's service instances that are starting, running or draining, oldest first."""
    return store.query(
        "SELECT * FROM instances WHERE service = ? AND kind = 'service' AND state IN "
        "('starting','running','draining') ORDER BY created_at, id", (service,))


def dev_up_of_service(store: Store, service: str) -> list[sqlite3.Row]:
    """The service's `kiln dev` instances that are starting or running, oldest first."""
    return store.query(
        "SELECT * FROM instances WHERE service = ? AND kind = 'dev' AND state IN "
        "('starting','running') ORDER BY created_at", (service,))


def of_release(store: Store, release_id: str, states: Sequence[str],
               kind: str = "service") -> list[sqlite3.Row]:
    """The release's instances of a kind in one of `states`, oldest first."""
    marks = ",".join("?" * len(states))
    return store.query(
        f"SELECT * FROM instances WHERE release_id = ? AND kind = ? AND state IN ({marks}) "
        "ORDER BY created_at, id", (release_id, kind, *states))


def state_of(store: Store, instance_id: str) -> str | None:
    row = store.one("SELECT state FROM instances WHERE id = ?", (instance_id,))
    return str(row["state"]) if row else None


def created_at(store: Store, instance_id: str) -> float | None:
    row = store.one("SELECT created_at FROM instances WHERE id = ?", (instance_id,))
    return float(row["created_at"]) if row else None


def mark_dead_unstamped(tx: Tx, instance_id: str) -> None:
    """A starting or running instance the executor found gone (no stop time: it did not stop
    it)."""
    tx.execute("UPDATE instances SET state = 'dead' WHERE id = ? "
               "AND state IN ('starting', 'running')", (instance_id,))


def settle_starting(tx: Tx, instance_id: str, state: str) -> None:
    """A starting instance becomes `state` (running after its health check, or dead)."""
    tx.execute("UPDATE instances SET state = ? WHERE id = ? AND state = 'starting'",
               (state, instance_id))


def set_draining(tx: Tx, instance_id: str) -> None:
    """An instance the executor retires (whatever its state: it just read it live)."""
    tx.execute("UPDATE instances SET state = 'draining' WHERE id = ?", (instance_id,))


def insert(tx: Tx, instance_id: str, service: str, release_id: str, host: str, port: int,
           handle_json: str, state: str, kind: str, created_at: float) -> None:
    """The row of a new instance (inside the caller's transaction)."""
    tx.execute("INSERT INTO instances(id, service, release_id, host, port, handle_json, state, "
               "kind, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
               (instance_id, service, release_id, host, port, handle_json, state, kind,
                created_at))


def set_handle_json(tx: Tx, instance_id: str, handle_json: str) -> None:
    tx.execute("UPDATE instances SET handle_json = ? WHERE id = ?", (handle_json, instance_id))


def live_rows(store: Store, *, release_id: str | None = None, service: str | None = None,
              kind: str | None = "service") -> list[sqlite3.Row]:
    """Instances in a live state, oldest first, filtered by release, service and kind."""
    sql = "SELECT * FROM instances WHERE state IN ({})".format(",".join("?" * len(LIVE_STATES)))
    params: list[object] = list(LIVE_STATES)
    for column, value in (("release_id", release_id), ("service", service), ("kind", kind)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    return store.query(sql + " ORDER BY created_at, id", tuple(params))


def filtered(store: Store, service: str | None, kinds: Collection[str],
             states: Collection[str] | None) -> list[sqlite3.Row]:
    """Instances of `kinds` (of one service, in `states`, when given), oldest first."""
    sql = "SELECT * FROM instances WHERE kind IN ({})".format(",".join("?" * len(kinds)))
    params: list[object] = list(kinds)
    if service is not None:
        sql += " AND service = ?"
        params.append(service)
    if states is not None:
        sql += " AND state IN ({})".format(",".join("?" * len(states)))
        params.extend(states)
    return store.query(sql + " ORDER BY created_at, id", tuple(params))


def row(store: Store, instance_id: str) -> sqlite3.Row | None:
    return store.one("SELECT * FROM instances WHERE id = ?", (instance_id,))


def set_state(tx: Tx, instance_id: str, state: str, stopped_at: float | None) -> None:
    """Any state change; `stopped_at` is kept when already set or None."""
    tx.execute("UPDATE instances SET state = ?, stopped_at = COALESCE(?, stopped_at) "
               "WHERE id = ?", (state, stopped_at, instance_id))


def count_all(tx: Tx) -> int:
    """Every instance ever recorded (local's address allocator counts with it)."""
    return int(tx.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def live_hosts(tx: Tx) -> set[str]:
    """Hosts of the live instances (read inside the transaction that allocates one)."""
    return {str(r[0]) for r in tx.execute(
        "SELECT host FROM instances WHERE state IN ({})".format(
            ",".join("?" * len(LIVE_STATES))), LIVE_STATES)}


def mark_stopped(tx: Tx, instance_id: str, now: float) -> None:
    """An instance the platform stopped."""
    tx.execute("UPDATE instances SET state = 'stopped', stopped_at = ? WHERE id = ?",
               (now, instance_id))


def set_host(tx: Tx, instance_id: str, host: str) -> None:
    """The address the platform gave the instance once it started."""
    tx.execute("UPDATE instances SET host = ? WHERE id = ?", (host, instance_id))


def live_count_except(store: Store, instance_id: str) -> int:
    """Live instances of any service and kind, besides this one."""
    row = store.one("SELECT COUNT(*) AS n FROM instances WHERE id != ? AND state IN "
                    "({})".format(",".join("?" * len(LIVE_STATES))),
                    (instance_id, *LIVE_STATES))
    return 0 if row is None else int(row["n"])


def ids_of_release(store: Store, release_id: str) -> list[str]:
    """Every instance recorded for the release, whatever its state."""
    return [str(r["id"]) for r in store.query(
        "SELECT id FROM instances WHERE release_id = ?", (release_id,))]


def live_count_of_release_except(store: Store, release_id: str, instance_id: str) -> int:
    """The release's live instances besides this one."""
    row = store.one(
        "SELECT COUNT(*) AS n FROM instances WHERE release_id = ? AND id != ? AND state IN "
        "('starting','running','draining')", (release_id, instance_id))
    return 0 if row is None else int(row["n"])


def live_service_ids(store: Store) -> list[str]:
    """Ids of the live service instances of every service."""
    return [str(r["id"]) for r in store.query(
        "SELECT id FROM instances WHERE kind = 'service' AND state "
        "IN ('starting','running','draining')")]


def set_host_if_unknown(tx: Tx, instance_id: str, host: str) -> None:
    """The address of an instance recorded before it had one (host 0.0.0.0)."""
    tx.execute("UPDATE instances SET host = ? WHERE id = ? AND host = '0.0.0.0'",
               (host, instance_id))


def live_service_image_refs(store: Store) -> list[sqlite3.Row]:
    """id, service, release_id and `ami` (its image's platform ref, None when the image row is
    gone) of every live service instance."""
    return store.query(
        "SELECT i.id, i.service, i.release_id, im.ref AS ami FROM instances i "
        "JOIN releases r ON r.id = i.release_id LEFT JOIN images im ON im.digest = r.image_digest "
        "WHERE i.kind = 'service' AND i.state IN ('starting','running','draining')")


def draining_of_release(store: Store, release_id: str) -> list[sqlite3.Row]:
    """id and port of the release's draining instances."""
    return store.query("SELECT id, port FROM instances WHERE release_id = ? AND "
                       "state = 'draining'", (release_id,))


def live_states_of_release(store: Store, release_id: str, excluding: str
                           ) -> tuple[str | None, dict[str, int]]:
    """The state of instance `excluding`, and state -> count of the release's other live
    (starting, running, draining) instances."""
    own = store.one("SELECT state FROM instances WHERE id = ?", (excluding,))
    rows = store.query(
        "SELECT state, COUNT(*) AS n FROM instances WHERE release_id = ? AND id != ? AND state "
        "IN ('starting','running','draining') GROUP BY state", (release_id, excluding))
    return (None if own is None else str(own["state"]),
            {str(r["state"]): int(r["n"]) for r in rows})
