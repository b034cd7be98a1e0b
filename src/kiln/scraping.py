"""When kiln runs its own Prometheus for a project, and what it scrapes.

It runs when some service has `metrics: {path}` and the spec names no Prometheus of the user's
(`prometheus: {url}`), on the platforms whose instances this machine reaches (local, podman).
It scrapes every live service instance whose release was made with `metrics:` (the release's
recorded path, labelled release/service/instance) and the router's own metrics. The targets
come from the state's instance rows, rewritten after every pass that launched, routed or
stopped instances (the reconciler's `Env.instances_changed`), so a canary is scraped from
before it takes traffic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.analysis.prometheus import PrometheusQuery, QueryError
from kiln.errors import KilnError
from kiln.platforms.base import Router
from kiln.platforms.capabilities import RouterMetrics
from kiln.prometheus_config import Target
from kiln.prometheus_server import EmbeddedPrometheus
from kiln.spec.models import Spec
from kiln.state.records import instances as instance_records
from kiln.state.store import Store


def wanted(spec: Spec) -> bool:
    """Whether this spec has kiln run a Prometheus of its own."""
    return spec.prometheus is None and spec.platform in ("local", "podman") and any(
        svc.metrics is not None for svc in spec.services.values())


def targets(store: Store) -> list[Target]:
    """Live service instances whose release's recorded config has `metrics: {path}`."""
    out = []
    for row in instance_records.scrape_candidates(store):
        try:
            metrics = json.loads(str(row["config_json"] or "{}")).get("metrics")
        except (ValueError, AttributeError):
            continue
        if isinstance(metrics, dict) and str(metrics.get("path", "")).startswith("/"):
            out.append(Target(str(row["id"]), str(row["service"]), str(row["release_id"]),
                              f"{row['host']}:{row['port']}", str(metrics["path"])))
    return out


class Scraping:
    """The project's embedded Prometheus, driven by its spec and state."""

    def __init__(self, spec: Spec, store: Callable[[], Store], home: Path,
                 router: Callable[[], Router]) -> None:
        self.spec = spec
        self._store, self._router = store, router
        self.server = EmbeddedPrometheus(home)

    @property
    def wanted(self) -> bool:
        return wanted(self.spec)

    def ensure(self) -> None:
        """Start it (targets first) when the spec wants it; stop one a spec without `metrics:`
        left running."""
        if not self.wanted:
            if self.server.is_running():
                self.server.stop()
            return
        self.sync()
        self.server.ensure_running()

    def sync(self) -> bool:
        """Rewrite the targets from the state; whether they changed. Nothing when kiln runs no
        Prometheus for this spec."""
        if not self.wanted:
            return False
        router = self._router()
        endpoint = router.metrics_endpoint() if isinstance(router, RouterMetrics) else None
        return self.server.write_targets(targets(self._store()), endpoint)

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str | None:
        """Where the judge asks its queries (None: kiln runs none for this spec)."""
        return self.server.url if self.wanted else None

    def queries(self) -> KeptQuery:
        """The judge's queries to it, restarting it if it died (like the reconciler's router)."""
        return KeptQuery(self)

    def view(self) -> dict[str, Any] | None:
        """`status --json`'s `prometheus`: None when kiln runs none for this spec."""
        if not self.wanted:
            return None
        return {"running": self.server.is_running(), "url": self.server.url,
                "targets": len(self.server.targets())}


RESTART_EVERY = 5.0
"""Seconds between two attempts to restart a dead Prometheus from the judge's queries."""


class KeptQuery:
    """`MetricQuery` on kiln's own Prometheus: a query that fails because the process is gone
    (killed, OOM) restarts it, at most once per RESTART_EVERY, and is asked again; the judge
    never sees more than one look without data for it. What was scraped before stays in
    `data/`; the seconds it was down are missing from `increase()` on both sides alike."""

    def __init__(self, scraping: Scraping) -> None:
        self.scraping = scraping
        self._tried = 0.0
        self.restarts = 0

    def query(self, expr: str, at: float) -> float | None:
        url = self.scraping.server.url
        try:
            if url is None:
                raise QueryError("kiln's Prometheus has not started")
            return PrometheusQuery(url).query(expr, at)
        except QueryError:
            if self.scraping.server.is_running() or time.monotonic() - self._tried < RESTART_EVERY:
                raise
            self._tried = time.monotonic()
            try:
                self.scraping.ensure()
            except KilnError as exc:  # no data for this look, never a crash of the rollout
                raise QueryError(f"restarting kiln's Prometheus failed: "
                                 f"{exc.message.splitlines()[0]}") from None
            self.restarts += 1
            url = self.scraping.server.url
            assert url is not None
            return PrometheusQuery(url).query(expr, at)
