"""Prometheus metrics of kiln itself (GET /metrics), with the official client library.

The controller's own activity is counted as it happens; rollouts, verdicts, instances and weights
are read from the state at scrape time, so they are right whichever process changed them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records
from kiln.state.store import Store


class ServeMetrics:
    def __init__(self, store_factory: Callable[[], Store]) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "kiln_reconcile_duration_seconds", "Duration of one controller reconcile pass",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.actions = Counter("kiln_controller_actions", "What the controller did, by action",
                               ["action"], registry=self.registry)
        self.busy = Counter("kiln_controller_lock_busy_passes",
                            "Passes skipped because a command held the project lock",
                            registry=self.registry)
        self.requests = Counter("kiln_serve_mutating_requests",
                                "Mutating dashboard/API requests by action and answer",
                                ["action", "code"], registry=self.registry)
        self.registry.register(_StateCollector(store_factory))

    def expose(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _StateCollector(Collector):
    def __init__(self, store_factory: Callable[[], Store]) -> None:
        self.store_factory = store_factory

    def collect(self) -> Iterator[Metric]:
        store = self.store_factory()
        try:
            yield from _state_metrics(store)
        finally:
            store.close()


def _state_metrics(store: Store) -> Iterator[Metric]:
    finished = CounterMetricFamily("kiln_rollouts", "Settled rollouts by service and outcome",
                                   labels=["service", "outcome"])
    open_ = GaugeMetricFamily("kiln_rollouts_open", "Rollouts in progress by service and phase",
                              labels=["service", "phase"])
    verdicts = CounterMetricFamily("kiln_judge_verdicts",
                                   "The judge's decisions recorded by rollouts",
                                   labels=["service", "outcome"])
    counts: dict[tuple[str, str], int] = {}
    vcounts: dict[tuple[str, str], int] = {}
    for r in rollout_records.all_summaries(store):
        if r["outcome"] is not None and r["phase"] in ("done", "standby"):
            key = (str(r["service"]), str(r["outcome"]))
            counts[key] = counts.get(key, 0) + 1
        else:
            open_.add_metric([str(r["service"]), str(r["phase"])], 1)
        status: dict[str, Any] = json.loads(r["status_json"] or "{}")
        for d in status.get("decisions") or []:
            vkey = (str(r["service"]), str(d.get("outcome")))
            vcounts[vkey] = vcounts.get(vkey, 0) + 1
    for (svc, outcome), n in sorted(counts.items()):
        finished.add_metric([svc, outcome], n)
    for (svc, outcome), n in sorted(vcounts.items()):
        verdicts.add_metric([svc, outcome], n)
    instances = GaugeMetricFamily("kiln_instances", "Instances by service, release and state",
                                  labels=["service", "release", "state"])
    for r in instance_records.live_counts(store):
        instances.add_metric([str(r["service"]), str(r["release_id"]), str(r["state"])], r["n"])
    weights = GaugeMetricFamily("kiln_route_weight", "Router weight per release",
                                labels=["service", "release"])
    for r in route_records.all_weights(store):
        weights.add_metric([str(r["service"]), str(r["release_id"])], r["weight"])
    yield from (finished, open_, verdicts, instances, weights)
