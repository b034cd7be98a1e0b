"""Render HAProxy's configuration and read its runtime answers. Pure: no I/O.

Shape: one frontend `kiln-<service>` bound to the service's listen address, one backend of the
same name holding the servers of every release. A server is named `<release_id>.<host>:<port>`
(release ids hold no dot), so the release of a server is its name's first dot-field. That is
how the access log names the release (`"ServiceName": "kiln-<release>@haproxy"`, the same shape
Traefik logs, so the judge's access-log reader works unchanged) and how health checks find the
release's own path (a map file, release -> path, read by `http-check send uri-lf`).

A release's weight is spread over its servers: HAProxy's round robin weighs servers (1..256),
so each server gets `weight / servers` scaled so that the heaviest server gets 256.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.platforms.base import PREVIEW_HEADER, Backend
from kiln.spec.models import Health

MAX_WEIGHT = 256
POOL_PURGE_DELAY = "500ms"
"""Idle server connections close this soon: a server cannot be deleted while it has any."""
HARD_STOP_AFTER = "10s"

# One JSON object per request, written when it ends, in the shape of Traefik's access log:
# StartUTC is when HAProxy had the request (a variable set by the first http-request rule),
# Duration (ns) runs from then to the log line, i.e. to the end of the response.
LOG_FORMAT = (
    '{"ServiceName":"kiln-%[srv_name,field(1,.)]@haproxy",'
    '"ServiceURL":"http://%si:%sp",'
    '"DownstreamStatus":%ST,'
    '"Duration":"%[date(0,us),sub(txn.start),mul(1000)]",'
    '"StartUTC":"%[var(txn.start),div(1000000),utime(%Y-%m-%dT%H:%M:%S)].'
    '%[var(txn.start),mod(1000000),add(1000000),regsub(^1,)]Z",'
    '"entryPointName":"%f"}'
)


METRICS_PROXY = "kiln.metrics"
"""Name of the exporter's frontend and userlist: service names hold no dot, so never a
service's frontend."""


@dataclass(frozen=True)
class MetricsFrontend:
    """HAProxy's built-in Prometheus exporter on a loopback port of its own, behind basic auth
    (the password is Prometheus' router password): never on a service's listen address, so no
    client of a service reaches it, and not logged (no `log` line: the access log stays the
    judge's requests only)."""

    address: str
    username: str
    password: str


def metrics_lines(m: MetricsFrontend) -> list[str]:
    if not m.address.startswith("127."):
        raise ValueError(f"metrics frontend {m.address} is not on loopback")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", m.username + m.password):
        raise ValueError("metrics credentials must be letters, digits, '-' or '_'")
    return [
        f"userlist {METRICS_PROXY}",
        f"  user {m.username} insecure-password {m.password}",
        "",
        f"frontend {METRICS_PROXY}",
        f"  bind {m.address}",
        f"  http-request auth realm kiln unless {{ http_auth({METRICS_PROXY}) }}",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  http-request deny",
        "",
    ]


def frontend_name(service_name: str) -> str:
    return f"kiln-{service_name}"


def backend_name(service_name: str) -> str:
    return f"kiln-{service_name}"


def preview_backend_name(service_name: str) -> str:
    """Backend holding the servers of the service's releases in preview (service names hold no
    dot, so it never clashes with another service's backend)."""
    return f"kiln-{service_name}.preview"


def preview_servers(backends: Sequence[Backend], health: Health) -> list[Server]:
    """Servers of the releases in preview, equal weights: they get only the requests naming
    their release (`X-Kiln-Release`), which the frontend sends to the preview backend."""
    return [Server(server_name(b.release_id, s), s, 1, ms((b.health or health).interval))
            for b in backends if b.preview for s in b.servers]


def preview_entries(service_name: str, backends: Sequence[Backend]) -> dict[str, str]:
    """preview.map lines of one service: release_id -> service name."""
    return {b.release_id: service_name for b in backends if b.preview}


def server_name(release_id: str, address: str) -> str:
    return f"{release_id}.{address}"


def release_of_server(name: str) -> str:
    return name.partition(".")[0]


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class Server:
    """One server line as HAProxy should hold it."""

    name: str
    address: str
    weight: int
    inter_ms: int


def servers(backends: Sequence[Backend], health: Health) -> list[Server]:
    """Every release's servers with their round-robin weights (weight 0: out of rotation)."""
    shares = {b.release_id: b.weight / len(b.servers) for b in backends
              if b.weight > 0 and b.servers}
    top = max(shares.values(), default=0.0)
    out: list[Server] = []
    for b in backends:
        if not b.servers:
            raise ValueError(f"release {b.release_id} has no servers")
        if "." in b.release_id:
            raise ValueError(f"release id {b.release_id!r} must not contain a dot")
        share = shares.get(b.release_id, 0.0)
        weight = 0 if share == 0 else max(1, round(share / top * MAX_WEIGHT))
        inter = ms((b.health or health).interval)
        out += [Server(server_name(b.release_id, s), s, weight, inter) for s in b.servers]
    return out


def health_paths(backends: Sequence[Backend], health: Health) -> dict[str, str]:
    """release_id -> health check path (each release is checked the way it was released)."""
    return {b.release_id: (b.health or health).path for b in backends}


def check_timeout(backends: Sequence[Backend], health: Health) -> int:
    """HAProxy's check timeout is per backend: the longest any release asks for."""
    return max([ms((b.health or health).timeout) for b in backends] + [ms(health.timeout)])


def server_line(s: Server) -> str:
    return (f"server {s.name} {s.address} weight {s.weight} check inter {s.inter_ms} "
            f"pool-purge-delay {POOL_PURGE_DELAY}")


@dataclass(frozen=True)
class ServiceConfig:
    listen: str
    servers: Sequence[Server]
    check_timeout_ms: int
    preview: Sequence[Server] = ()
    cookie_key: str = ""
    """Set: `rollout.sticky`. HAProxy inserts a cookie per server (a hash of this key and the
    server's address: runtime-added servers cannot be given a `cookie` value in 2.6)."""


def sticky_lines(service_name: str, cookie_key: str) -> list[str]:
    """Cookie persistence: a client keeps the server (so the release) it first got while that
    server is in rotation. kiln puts a server at weight 0 in maintenance when the service is
    sticky, because HAProxy still honours a cookie naming a server at weight 0."""
    return [f"  cookie kiln-{service_name} insert indirect nocache httponly dynamic",
            f"  dynamic-cookie-key {cookie_key}"]


def _backend_lines(name: str, health_map: Path, check_timeout_ms: int,
                   servers: Sequence[Server], extra: Sequence[str] = ()) -> list[str]:
    return [
        f"backend {name}",
        "  balance roundrobin",
        *extra,
        "  option httpchk",
        f"  http-check send meth GET uri-lf %[srv_name,field(1,.),map({health_map},/)]",
        f"  timeout check {check_timeout_ms}",
        *(f"  {server_line(s)}" for s in servers),
        "",
    ]


def render(*, socket: Path, health_map: Path, services: Mapping[str, ServiceConfig],
           preview_map: Path | None = None, metrics: MetricsFrontend | None = None) -> str:
    """haproxy.cfg: loopback frontends only, admin socket, JSON access log on stdout, and the
    Prometheus exporter's own frontend when `metrics` is given."""
    lines = [
        "global",
        # Relative to HAProxy's working directory (kiln starts it in the socket's folder):
        # HAProxy refuses a socket path over 97 bytes, which a project's absolute path reaches.
        f"  stats socket unix@{socket.name} mode 600 level admin",
        "  stats timeout 10s",
        "  log stdout format raw local0",
        f"  hard-stop-after {HARD_STOP_AFTER}",
        "",
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout http-keep-alive 10s",
        "  option redispatch",
        "  retries 2",
        "",
    ]
    if metrics is not None:
        lines += metrics_lines(metrics)
    for name, svc in sorted(services.items()):
        if not svc.listen.startswith("127.") and not svc.listen.startswith("localhost:"):
            raise ValueError(f"frontend {svc.listen} is not on loopback")
        lines += [
            f"frontend {frontend_name(name)}",
            f"  bind {svc.listen}",
            "  log global",
            "  http-request set-var(txn.start) date(0,us)",
            f"  log-format '{LOG_FORMAT}'",
        ]
        if preview_map is not None:
            # A request naming a release in preview (preview.map: release -> service, changed
            # live with add/del map) goes to the preview backend, whatever the weights.
            lines += [f"  use_backend {preview_backend_name(name)} if "
                      f"{{ {fetch},map({preview_map}) -m str {name} }}"
                      for fetch in (f"req.hdr({PREVIEW_HEADER})", f"req.cook({PREVIEW_HEADER})")]
        lines += [f"  default_backend {backend_name(name)}", ""]
        lines += _backend_lines(backend_name(name), health_map, svc.check_timeout_ms,
                                svc.servers, sticky_lines(name, svc.cookie_key)
                                if svc.cookie_key else ())
        if preview_map is not None:
            lines += _backend_lines(preview_backend_name(name), health_map,
                                    svc.check_timeout_ms, svc.preview)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerStat:
    backend: str
    name: str
    address: str
    weight: int
    status: str  # UP, DOWN, MAINT, "no check", ...
    current: int  # requests in flight (scur)
    ended: int = 0
    """Requests that ended on this server (`ended_requests`): one access-log line each."""


def parse_stat(text: str) -> list[ServerStat]:
    """`show stat -1 4 -1` (servers only, CSV) -> one ServerStat per server."""
    body = text.lstrip()
    if body.startswith("# "):
        body = body[2:]
    out: list[ServerStat] = []
    for row in csv.DictReader(io.StringIO(body)):
        if row.get("svname") in (None, "FRONTEND", "BACKEND"):
            continue
        out.append(ServerStat(
            backend=row.get("pxname") or "", name=row.get("svname") or "",
            address=row.get("addr") or "", weight=_int(row.get("weight")),
            status=(row.get("status") or "").split(" ")[0], current=_int(row.get("scur")),
            ended=ended_requests(row)))
    return out


def ended_requests(row: Mapping[str, str | None]) -> int:
    """Requests whose stream ended on this server: the ones its access-log lines name.

    `stot` counts a stream at every connection attempt to the server (HAProxy's
    srv_inc_sess_ctr), whatever comes of it: a 5xx, a 502 from a server that closed, a client
    that aborted. An attempt that was retried on the same server (`wretr`) or redispatched to
    another one (`wredis`, counted on the server switched away from) is not where the request
    ended; one still in flight (`scur`) has no log line yet. `req_tot` and the `hrsp_*` counters
    only count responses the server sent, so they miss the 502s and aborts (measured with
    HAProxy 2.6; docs/decisions/router-request-counters.md).
    """
    return max(0, _int(row.get("stot")) - _int(row.get("wretr")) - _int(row.get("wredis"))
               - _int(row.get("scur")))


def release_counts(stats: Sequence[ServerStat], retired: Mapping[str, int],
                   folded: Mapping[str, int]) -> dict[str, int]:
    """release_id -> requests ended on its servers: live servers' counters, plus the last
    counts of servers deleted since (`retired`, by server name; a live server of the same name
    is newer and counts itself), plus `folded` (retired counts of servers added again)."""
    out: dict[str, int] = dict(folded)
    live = {st.name for st in stats}
    for st in stats:
        rid = release_of_server(st.name)
        out[rid] = out.get(rid, 0) + st.ended
    for name, n in retired.items():
        if name not in live:
            rid = release_of_server(name)
            out[rid] = out.get(rid, 0) + n
    return out


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def served_weights(stats: Sequence[ServerStat], wanted: Mapping[str, int],
                   expected: Sequence[Server]) -> dict[str, int]:
    """release_id -> weight HAProxy really serves for one backend.

    When every server holds exactly the weight `servers()` gives for the wanted release weights,
    those are reported as they were asked; otherwise each release's share of the total server
    weight, in percent. A server in maintenance serves at 0.
    """
    names = {s.name for s in expected}
    by_release: dict[str, list[tuple[str, int]]] = {}
    for st in stats:
        maint = st.status.startswith("MAINT")
        if maint and st.name not in names:
            continue  # taken out earlier, deleted once its idle connections are gone
        weight = 0 if maint else st.weight
        by_release.setdefault(release_of_server(st.name), []).append((st.name, weight))
    actual = {name: w for pairs in by_release.values() for name, w in pairs}
    if all(actual.get(s.name) == s.weight for s in expected) and \
            set(by_release) <= set(wanted) and \
            all(actual[n] == 0 for n in actual if n not in names):
        return {rid: wanted[rid] for rid in by_release}
    total = sum(actual.values())
    return {rid: (math.floor(100 * sum(w for _, w in pairs) / total + 0.5) if total else 0)
            for rid, pairs in by_release.items()}
