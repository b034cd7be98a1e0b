"""What kiln's own Prometheus is told (pure): its static config and its file_sd target groups.

The static config never names an instance or the router's address: both come from file_sd
files (`targets/instances.json`, `targets/router.json`) that kiln rewrites whenever they change,
so Prometheus is never restarted or reloaded for a rollout, and a new instance is scraped within
a scrape interval of the file's rename (Prometheus watches the folder).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRAPE_INTERVAL = 1.0
"""Seconds between two scrapes: the judge looks once a second, and a counter it reads is at most
one interval old (docs/judge.md, "kiln's own Prometheus")."""
INSTANCES_JOB = "kiln-instances"
ROUTER_JOB = "kiln-router"
RELEASE_FROM_SERVER = {"source_labels": ["server"], "regex": r"([^.]+)\..+",
                       "target_label": "release", "replacement": "$1"}
"""HAProxy names a server `<release_id>.<host>:<port>` (release ids hold no dot), so its
exporter's per-server series get the `release` label the instances' series carry. A series
without such a `server` label does not match and is left as it is (Traefik's)."""


@dataclass(frozen=True)
class Target:
    """One instance to scrape, with the labels the judge's queries select on."""

    instance: str
    service: str
    release: str
    address: str
    path: str


def target_groups(targets: Iterable[Target]) -> list[dict[str, Any]]:
    """file_sd groups, one per instance (its labels are its own), in a stable order so an
    unchanged set writes the same bytes."""
    return [{"targets": [t.address],
             "labels": {"release": t.release, "service": t.service, "instance": t.instance,
                        "__metrics_path__": t.path}}
            for t in sorted(targets, key=lambda t: (t.service, t.release, t.instance))]


def router_groups(endpoint: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """The router's metrics endpoint as a file_sd group (none: an empty list)."""
    if endpoint is None:
        return []
    return [{"targets": [endpoint["address"]],
             "labels": {"__metrics_path__": endpoint.get("path", "/metrics")}}]


def dump(groups: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(groups), indent=1, sort_keys=True) + "\n"


def static_config(*, targets_dir: Path, password_file: Path, username: str,
                  interval: float = SCRAPE_INTERVAL) -> dict[str, Any]:
    """prometheus.yml: two file_sd jobs; the router's behind basic auth (its password read from
    a 0600 file at each scrape, so a new password needs no reload)."""
    every = f"{max(1, round(interval * 1000))}ms"
    return {
        "global": {"scrape_interval": every, "scrape_timeout": every,
                   "evaluation_interval": every},
        "scrape_configs": [
            {"job_name": INSTANCES_JOB, "honor_labels": False,
             "file_sd_configs": [{"files": [str(targets_dir / "instances.json")],
                                  "refresh_interval": "5s"}]},
            {"job_name": ROUTER_JOB,
             "basic_auth": {"username": username, "password_file": str(password_file)},
             "file_sd_configs": [{"files": [str(targets_dir / "router.json")],
                                  "refresh_interval": "5s"}],
             "metric_relabel_configs": [RELEASE_FROM_SERVER]},
        ],
    }
