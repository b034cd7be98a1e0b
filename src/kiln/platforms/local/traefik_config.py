"""Render Traefik's static and dynamic configuration from kiln's model. Pure: no I/O.

Names are kiln's contract with everything that reads Traefik's output (the judge reads the access
log and the metrics): a service `web` gets the entrypoint, router and weighted service
`kiln-web`; a release `web-r3` gets the load-balancer service `kiln-web-r3` (seen by Traefik as
`kiln-web-r3@file`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.platforms.base import PREVIEW_HEADER, Backend
from kiln.spec.models import Health

ADMIN_ENTRYPOINT = "traefik"
"""Internal entrypoint (loopback) serving ping, the API and the Prometheus metrics."""

THROTTLE = "100ms"
"""providers.providersThrottleDuration: Traefik's default (2 s) delays a change that follows
another one; rollouts change weights several times in a row."""

IDLE_CONN_TIMEOUT = "1s"
"""Idle keep-alive connections to backends close after this long, so that Traefik's open
connections to a release that left rotation fall to zero soon after its last request ended
(that is what `open_requests` counts)."""


def entrypoint_name(service_name: str) -> str:
    return f"kiln-{service_name}"


def service_key(service_name: str) -> str:
    """Router and weighted service of a kiln service."""
    return f"kiln-{service_name}"


def release_key(release_id: str) -> str:
    """Load-balancer service of one release (the access log's ServiceName, minus '@file')."""
    return f"kiln-{release_id}"


PREVIEW_PRIORITY = 10_000
"""Preview routers win over the service's catch-all `PathPrefix(`/`)` (whose priority is its
rule's length, 14)."""


def preview_key(release_id: str) -> str:
    """Router that sends a previewed release its `X-Kiln-Release` requests."""
    return f"kiln-preview-{release_id}"


def preview_rule(release_id: str) -> str:
    """The header, or a cookie of the same name, naming the release exactly."""
    name = PREVIEW_HEADER
    return (f"Header(`{name}`, `{release_id}`) || "
            f"HeaderRegexp(`Cookie`, `(?:^|;\\s*){name}={release_id}(?:;|$)`)")


MIRROR_BODY_LIMIT = 1 << 20
"""A request with a larger body is not copied: Traefik holds a mirrored body in memory."""


def mirror_entrypoint(service_name: str) -> str:
    """Key in the static listens of the loopback entrypoint that receives a service's mirrored
    copies (`kiln-mirror_<service>`; `_` is not in service names, so no service clashes).

    Traefik does not write a mirrored request in its access log, where the judge reads its
    evidence; sent back through an entrypoint of its own, each copy is a logged request of the
    mirrored release (`ServiceName: kiln-<release>@file`) like any other."""
    return f"mirror_{service_name}"


def mirror_key(service_name: str) -> str:
    """The mirroring service over the weighted one, and the router of the mirror entrypoint.
    Not `kiln-`: the judge's log and counter parsers take `kiln-<x>` for a release."""
    return f"kilnmirror-{service_name}"


def mirror_loop_key(service_name: str) -> str:
    """Load balancer of the copies: Traefik's own mirror entrypoint."""
    return f"kilnmirror-{service_name}-loop"


def go_duration(seconds: float) -> str:
    """Seconds -> a Go duration string ('1s', '500ms')."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def static_config(*, admin: str, listens: Mapping[str, str], dynamic_dir: Path,
                  access_log: Path) -> dict[str, Any]:
    """traefik.yml: loopback entrypoints only, no phoning home, file provider on a folder."""
    # kiln's own admin calls (even a 404 before _admin.yml loads) stay out of the access log
    # and the metrics the judge counts.
    entrypoints: dict[str, Any] = {ADMIN_ENTRYPOINT: {"address": admin, "observability": {
        "accessLogs": False, "metrics": False, "tracing": False}}}
    for service_name, address in sorted(listens.items()):
        if not address.startswith("127.") and not address.startswith("localhost:"):
            raise ValueError(f"entrypoint {address} is not on loopback")
        entrypoints[entrypoint_name(service_name)] = {"address": address}
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": entrypoints,
        "providers": {
            "providersThrottleDuration": THROTTLE,
            "file": {"directory": str(dynamic_dir), "watch": True},
        },
        # /api and /metrics are only reachable through admin_config's routers, which demand
        # basic auth: instances share the loopback network with the admin entrypoint.
        "api": {"insecure": False, "dashboard": False},
        "ping": {"entryPoint": ADMIN_ENTRYPOINT},
        "metrics": {"prometheus": {
            "entryPoint": ADMIN_ENTRYPOINT,
            "manualRouting": True,
            "addServicesLabels": True,
            "addEntryPointsLabels": True,
        }},
        "serversTransport": {"forwardingTimeouts": {"idleConnTimeout": IDLE_CONN_TIMEOUT}},
        "log": {"level": "INFO"},
        "accessLog": {
            "filePath": str(access_log),
            "format": "json",
            "bufferingSize": 0,  # each line is written when its request ends
            "fields": {"defaultMode": "keep", "headers": {"defaultMode": "drop"}},
        },
    }


ADMIN_USER = "kiln"
ADMIN_FILE = "_admin.yml"
"""Its own file in the dynamic folder; `_` keeps it apart from `<service>.yml` (names are a-z)."""


def admin_auth_header(password: str) -> dict[str, str]:
    token = base64.b64encode(f"{ADMIN_USER}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def admin_config(password: str) -> dict[str, Any]:
    """dynamic/_admin.yml: /api (read-only) and /metrics on the admin entrypoint, behind basic
    auth with a per-project random password ({SHA} form, as htpasswd -s writes it)."""
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    auth = ["kiln-admin-auth"]
    # kiln's own reads stay out of the access log and the metrics the judge counts.
    quiet = {"accessLogs": False, "metrics": False, "tracing": False}
    return {"http": {
        "middlewares": {"kiln-admin-auth": {"basicAuth": {
            "users": [f"{ADMIN_USER}:{{SHA}}{digest}"], "removeHeader": True}}},
        "routers": {
            "kiln-admin-api": {"entryPoints": [ADMIN_ENTRYPOINT], "rule": "PathPrefix(`/api`)",
                               "service": "api@internal", "middlewares": auth,
                               "observability": quiet},
            "kiln-admin-metrics": {"entryPoints": [ADMIN_ENTRYPOINT], "rule": "Path(`/metrics`)",
                                   "service": "prometheus@internal", "middlewares": auth,
                                   "observability": quiet},
        },
    }}


def sticky_cookie(service_name: str) -> str:
    """The cookie that pins a client to a release (`rollout.sticky`), on both routers."""
    return f"kiln-{service_name}"


def dynamic_config(service_name: str, health: Health, backends: Sequence[Backend],
                   sticky: bool = False, mirror_listen: str | None = None) -> dict[str, Any]:
    """dynamic/<service>.yml: one router and weighted service over one service per release.

    A release at weight 0 is left out of the weighted list (Traefik then never builds it: no
    traffic and no health checks, so its connections can drain to zero) but its service stays
    defined, so verify() still sees it. With no positive weight at all, every release is listed at
    weight 0 and Traefik answers 503.
    """
    key = service_key(service_name)
    services: dict[str, Any] = {}
    for b in backends:
        if not b.servers:
            raise ValueError(f"release {b.release_id} has no servers")
        # Each release is checked the way it was released: a new release's health settings
        # must never mark the old release's servers down.
        check = b.health or health
        services[release_key(b.release_id)] = {"loadBalancer": {
            "servers": [{"url": f"http://{s}"} for s in b.servers],
            "healthCheck": {
                "path": check.path,
                "interval": go_duration(check.interval),
                "timeout": go_duration(check.timeout),
            },
        }}
    live = [b for b in backends if b.weight > 0] or list(backends)
    http: dict[str, Any] = {"services": services}
    if live:
        services[key] = {"weighted": {
            # Propagates "all servers of a release are down" up, so the parent skips that release.
            "healthCheck": {},
            "services": [{"name": release_key(b.release_id), "weight": b.weight} for b in live],
        }}
        if sticky:
            # The cookie names the release's service: a release that leaves the weighted list
            # (weight 0) no longer matches and its clients are balanced again.
            services[key]["weighted"]["sticky"] = {"cookie": {
                "name": sticky_cookie(service_name), "httpOnly": True, "path": "/"}}
        http["routers"] = {key: {
            "rule": "PathPrefix(`/`)",
            "entryPoints": [entrypoint_name(service_name)],
            "service": key,
        }}
        mirrored = [b for b in backends if b.mirror > 0]
        if len(mirrored) > 1:
            raise ValueError(f"one release at a time is mirrored, not {len(mirrored)}")
        if mirrored:
            if mirror_listen is None:
                raise ValueError("mirroring needs the service's mirror entrypoint")
            m = mirrored[0]
            services[mirror_key(service_name)] = {"mirroring": {
                "service": key, "maxBodySize": MIRROR_BODY_LIMIT,
                "mirrors": [{"name": mirror_loop_key(service_name), "percent": m.mirror}]}}
            services[mirror_loop_key(service_name)] = {"loadBalancer": {
                "servers": [{"url": f"http://{mirror_listen}"}]}}
            http["routers"][key]["service"] = mirror_key(service_name)
            http["routers"][mirror_key(service_name)] = {
                "rule": "PathPrefix(`/`)",
                "entryPoints": [entrypoint_name(mirror_entrypoint(service_name))],
                "service": release_key(m.release_id),
            }
        for b in backends:
            if b.preview:
                http["routers"][preview_key(b.release_id)] = {
                    "rule": preview_rule(b.release_id),
                    "priority": PREVIEW_PRIORITY,
                    "entryPoints": [entrypoint_name(service_name)],
                    "service": release_key(b.release_id),
                }
    return {"http": http}


def mirrors_from_api(router: Mapping[str, Any] | None, mirroring: Mapping[str, Any] | None,
                     loop: Mapping[str, Any] | None) -> dict[str, int]:
    """release_id -> percent copied, from Traefik's API: the service's router points at the
    mirroring service, whose mirror is the loop, and the mirror entrypoint's router (`loop`)
    is enabled towards the release. {} when nothing is mirrored."""
    if not router or not mirroring or not loop or loop.get("status") != "enabled":
        return {}
    if str(router.get("service", "")).removesuffix("@file") != \
            str(mirroring.get("name", "")).removesuffix("@file"):
        return {}
    mirrors = (mirroring.get("mirroring") or {}).get("mirrors") or []
    target = str(loop.get("service", "")).removesuffix("@file")
    if len(mirrors) != 1 or not target.startswith("kiln-"):
        return {}
    return {target.removeprefix("kiln-"): int(mirrors[0].get("percent", 0))}


def expected_weights(backends: Sequence[Backend]) -> dict[str, int]:
    """release_id -> weight, as verify() reads it back once the config applied."""
    return {b.release_id: b.weight for b in backends}


def weights_from_api(weighted: Mapping[str, Any] | None, leaves: Sequence[str],
                     present: Sequence[str]) -> dict[str, int]:
    """Read back release weights from Traefik's API answers.

    `weighted` is /api/http/services/kiln-<service>@file (None when absent); `leaves` are the
    release ids kiln wrote; `present` those whose service the API knows. A release present but
    not in the weighted list serves at weight 0.
    """
    out: dict[str, int] = {}
    for rid in leaves:
        if rid in present:
            out[rid] = 0
    entries = ((weighted or {}).get("weighted") or {}).get("services") or []
    by_key = {release_key(rid): rid for rid in leaves}
    for entry in entries:
        name = str(entry.get("name", "")).removesuffix("@file")
        rid = by_key.get(name, name.removeprefix("kiln-"))
        out[rid] = int(entry.get("weight", 1))
    return out


def statuses_from_api(services: Sequence[Mapping[str, Any]],
                      release_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """release_id -> {server URL: verdict} from a page of /api/http/services (every service
    with its `serverStatus`); asked releases the page does not hold are left out."""
    by_name = {f"{release_key(rid)}@file": rid for rid in release_ids}
    out: dict[str, dict[str, str]] = {}
    for svc in services:
        rid = by_name.get(str(svc.get("name", "")))
        if rid is not None:
            status = svc.get("serverStatus") or {}
            out[rid] = {str(k): str(v) for k, v in status.items()}
    return out


def prometheus_counts(text: str) -> dict[str, int]:
    """release_id -> requests, from `traefik_service_requests_total` per leaf service (Traefik
    counts a request when it ends, whatever its status: one per access-log line)."""
    counts: dict[str, int] = {}
    marker = 'service="kiln-'
    for line in text.splitlines():
        if not line.startswith("traefik_service_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        at = labels.find(marker)
        if at < 0:
            continue
        name = labels[at + len(marker):].split('"', 1)[0].removesuffix("@file")
        try:
            counts[name] = counts.get(name, 0) + int(float(value))
        except ValueError:
            continue
    return counts
