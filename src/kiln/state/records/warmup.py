"""What the judge's warm-up reads of the instances table: when each instance was launched."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.state.store import Store


def instance_starts(store: Store, releases: Sequence[str]) -> dict[tuple[str, str], float]:
    """{(release, "host:port"): created_at} of every instance of `releases` (an address reused
    within a release keeps the newest instance's time)."""
    if not releases:
        return {}
    marks = ",".join("?" * len(releases))
    rows = store.query(f"SELECT release_id, host, port, created_at FROM instances "
                       f"WHERE release_id IN ({marks}) ORDER BY created_at", tuple(releases))
    return {(str(r["release_id"]), f"{r['host']}:{r['port']}"): float(r["created_at"])
            for r in rows}
