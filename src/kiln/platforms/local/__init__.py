"""The local platform: images in a folder store, instances as sandboxed processes on loopback
addresses, Traefik as the router, its JSON access log as the metric source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kiln.state.store import Store

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Compute, MetricSource, Router


def local_platform(store: Store, home: Path, project: str
                   ) -> tuple[Builder, Compute, Router, MetricSource | None]:
    from kiln.analysis.accesslog import AccessLogSource
    from kiln.bake.local import LocalBuilder
    from kiln.platforms.local.compute import LocalCompute
    from kiln.platforms.local.router import TraefikRouter

    router = TraefikRouter(home, project)

    def release_of(address: str) -> str | None:
        host, _, port = address.rpartition(":")
        row = store.one("SELECT release_id FROM instances WHERE host = ? AND port = ? "
                        "ORDER BY created_at DESC LIMIT 1", (host, int(port) if port else 0))
        return str(row["release_id"]) if row else None

    metrics = AccessLogSource(router.access_log_path, release_of)
    return LocalBuilder(store, home), LocalCompute(store, home, project), router, metrics
