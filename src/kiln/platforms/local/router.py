"""The local Router: one real Traefik per project, started and kept alive by kiln.

Layout under `<home>/router/`: `traefik.yml` (static config), `dynamic/` (one `<service>.yml` per
service, watched by Traefik's file provider), `staging/` (where files are written before an
`os.replace` into `dynamic/` — a temp file inside the watched folder would be loaded),
`traefik.pid` (pid, start time, admin address and the entrypoints the live process serves),
`router.json` (desired entrypoints and each service's releases and servers), `traefik.log` and
`access.log`.

Facts the rest of kiln relies on (measured with Traefik v3.7 on this machine):

- Access log (`access.log`, JSON, one line per request, written when it ends): for a weighted
  service, `ServiceName` is the LEAF release service, `kiln-<release_id>@file` (e.g.
  `kiln-web-r3@file`), never the weighted parent; `RouterName` is `kiln-<service>@file`;
  `ServiceURL` is the instance (`http://127.0.0.5:8000`); also `DownstreamStatus`, `Duration`
  (nanoseconds), `StartUTC`, `entryPointName` (`kiln-<service>`). A request Traefik could not
  route anywhere (no healthy release) has no ServiceName/ServiceURL.
- Prometheus metrics at `http://<admin>/metrics` carry `service="kiln-<release_id>@file"`.
  Traefik v3 has no per-service open-connections gauge, so `open_requests()` counts Traefik's own
  established TCP connections to the release's servers (from /proc): every proxied request in
  flight holds one, and idle keep-alive connections close after 1 s (the static
  `serversTransport.forwardingTimeouts.idleConnTimeout`), so the count is an upper bound on
  requests in flight that reaches 0 about 1 s after the last one ended.
- Weight 0 takes a release out: it is left out of the weighted list (so Traefik neither routes to
  it nor health-checks it) but stays defined, and `verify()` reports it at 0.
- Entrypoints are static config: a service with a new `listen` address rewrites traefik.yml and
  restarts Traefik (a brief refusal of connections on every entrypoint); weight changes never do.
- A server listed is used before its first health check passed, and a killed backend gets 502s
  until the next check: callers health-check instances before adding them and drain before
  removing them. Traefik's active checks are the safety net.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any, ClassVar

from kiln.errors import PlatformError
from kiln.platforms.base import Backend, RequestCounts
from kiln.platforms.capabilities import (
    HealthVerdicts,
    Mirroring,
    OpenRequests,
    RouterMetrics,
    ServersReadBack,
)
from kiln.platforms.local import tcp_table, traefik_config, traefik_process
from kiln.platforms.local.mirror_ports import (
    MirrorPortTaken,
    collision_message,
    listen_collisions,
    mirror_entrypoints,
)
from kiln.platforms.local.router_files import RouterFiles
from kiln.platforms.local.traefik_process import Running
from kiln.spec.models import ServiceSpec

START_DEADLINE = 15.0
APPLY_DEADLINE = 10.0


def _yaml_text(data: dict[str, Any]) -> str:
    from ruamel.yaml import YAML  # only when the config changes: not on every kiln start

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


class TraefikRouter(RouterFiles, HealthVerdicts, OpenRequests, ServersReadBack, RouterMetrics,
                    Mirroring):
    """Router seam on the local platform. Every method is safe to call again after a crash."""

    state_defaults: ClassVar[Mapping[str, Any]] = {"admin": ""}
    kind: ClassVar[str] = "traefik"
    status_page: int = 200
    """Services per page of /api/http/services read by `server_statuses`."""

    def __init__(self, home: Path, project: str, *, apply_deadline: float = APPLY_DEADLINE,
                 start_deadline: float = START_DEADLINE, admin: str | None = None) -> None:
        self.home = Path(home)
        self.admin = admin
        """The spec's `router_admin`; None: a free port, picked once and kept in router.json."""
        self.project = project
        self.dir = self.home / "router"
        self.dynamic_dir = self.dir / "dynamic"
        self.staging_dir = self.dir / "staging"
        self.static_path = self.dir / "traefik.yml"
        self.pid_path = self.dir / "traefik.pid"
        self.state_path = self.dir / "router.json"
        self.log_path = self.dir / "traefik.log"
        self.access_log_path = self.dir / "access.log"
        self.apply_deadline = apply_deadline
        self.start_deadline = start_deadline

    # ------------------------------------------------------------------ process

    def check_listen(self, service_name: str, listen: str) -> None:
        """Also refuse a listen on a mirror entrypoint's port: Traefik would get two entrypoints
        of one address (kiln validate says the same, with the spec's line)."""
        found = listen_collisions({service_name: listen}, mirror_entrypoints(self._load_state()))
        if found:
            raise MirrorPortTaken([f"services.{service_name}.listen: "
                                   + collision_message(*found[0])])
        super().check_listen(service_name, listen)

    def ensure_running(self) -> None:
        """Start Traefik with the recorded routing if it is not running (or lacks an entrypoint).

        After a (re)start, returns once Traefik serves every service's recorded weights.
        """
        with self._locked():
            state = self._load_state()
            before = self._running()
            running = self._ensure_running(state)
        if before is None or before.pid != running.pid:
            for name, svc in state["services"].items():
                self._wait_applied(name, self._recorded(svc), running)

    @staticmethod
    def _recorded(svc: dict[str, Any]) -> list[Backend]:
        return [Backend(rid, int(r["weight"]), list(r["servers"]),
                        preview=bool(r.get("preview")), mirror=int(r.get("mirror", 0)))
                for rid, r in svc.get("releases", {}).items()]

    def _entrypoints(self, state: dict[str, Any]) -> dict[str, str]:
        """The services' listen addresses and their mirror entrypoints (loopback, kiln's)."""
        out = self._listens(state)
        for name, svc in state["services"].items():
            if svc.get("mirror_listen"):
                out[traefik_config.mirror_entrypoint(name)] = str(svc["mirror_listen"])
        return out

    def _ensure_running(self, state: dict[str, Any]) -> Running:
        listens = self._entrypoints(state)
        if self.admin:
            state["admin"] = self.admin  # a changed address restarts Traefik on it
        running = self._running()
        if running is not None and running.admin == state["admin"] and all(
                running.listens.get(name) == addr for name, addr in listens.items()):
            return running
        self._stop_replaced()
        ours = set(running.listens.values()) if running else set()
        for name, addr in sorted(listens.items()):
            if addr not in ours and not traefik_process.port_free_soon(addr):
                field = (f"services.{name}.listen" if name in state["services"] else
                         f"the mirror entrypoint kiln picked for {name.partition('_')[2]}")
                raise PlatformError(tcp_table.in_use_message(addr, field))
        admin = state["admin"]
        if not admin or (admin != (running.admin if running else None)
                         and not traefik_process.port_free(admin)):
            if self.admin:
                raise PlatformError(tcp_table.in_use_message(self.admin, "router_admin"))
            state["admin"] = f"127.0.0.1:{traefik_process.free_port()}"
        if not state.get("admin_password"):
            state["admin_password"] = secrets.token_urlsafe(24)
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        self._save_state(state)
        self._write_atomic(self.dynamic_dir / traefik_config.ADMIN_FILE,
                           _yaml_text(traefik_config.admin_config(state["admin_password"])))
        static = traefik_config.static_config(admin=state["admin"], listens=listens,
                                              dynamic_dir=self.dynamic_dir,
                                              access_log=self.access_log_path)
        self._write_atomic(self.static_path, _yaml_text(static))
        if running is not None:
            traefik_process.stop_pid(running.pid, running.start, timeout=12.0)
        return traefik_process.start(config=self.static_path, log=self.log_path,
                                     pidfile=self.pid_path, admin=state["admin"],
                                     listens=listens, deadline=self.start_deadline)

    def stop(self) -> None:
        """Stop Traefik (in-flight requests finish first), and a router it replaces. Routing
        files stay for a restart."""
        self._stop_replaced()
        with self._locked():
            running = traefik_process.read_pidfile(self.pid_path)
            if running is not None:
                traefik_process.stop_pid(running.pid, running.start, timeout=12.0)
            self.pid_path.unlink(missing_ok=True)

    @property
    def admin_url(self) -> str:
        """Base URL of the internal entrypoint: /ping, /api, /metrics (the last two need
        `admin_headers`)."""
        return f"http://{self._load_state()['admin']}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Basic auth for /api and /metrics (the password lives in the 0700 state folder)."""
        return traefik_config.admin_auth_header(str(self._load_state().get("admin_password")
                                                    or ""))

    def metrics_endpoint(self) -> dict[str, str] | None:
        state = self._load_state()
        if not state.get("admin") or not state.get("admin_password"):
            return None
        return {"address": str(state["admin"]), "path": "/metrics",
                "username": traefik_config.ADMIN_USER, "password": str(state["admin_password"])}

    # ------------------------------------------------------------------ routing

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        """Replace the service's routing atomically, then wait until Traefik really serves it."""
        ids = [b.release_id for b in backends]
        if len(set(ids)) != len(ids):
            raise PlatformError(f"service {service_name}: a release is listed twice in {ids}")
        with self._locked():
            state = self._load_state()
            others = {traefik_config.service_key(n) for n in state["services"]
                      if n != service_name}
            clash = [rid for rid in ids if traefik_config.release_key(rid) in others]
            if clash:
                raise PlatformError(f"release {clash[0]} of service {service_name} would share "
                                    "a Traefik name with the service of that name; rename one")
            running = self._running()
            served = self._held(running)
            current = self._listens(state).get(service_name)
            if service.listen != current and service.listen not in served \
                    and not traefik_process.port_free_soon(service.listen):
                raise PlatformError(tcp_table.in_use_message(
                    service.listen, f"services.{service_name}.listen"))
            before = state["services"].get(service_name) or {}
            mirror_listen = before.get("mirror_listen")
            if mirror_listen is None and (not before or any(b.mirror for b in backends)):
                # Picked with the service's own entrypoint (that start restarts Traefik
                # anyway); a service routed by an older kiln gets it at its first mirror step.
                mirror_listen = f"127.0.0.1:{traefik_process.free_port()}"
            try:
                dynamic = traefik_config.dynamic_config(service_name, service.health, backends,
                                                        sticky=service.rollout.sticky,
                                                        mirror_listen=mirror_listen)
            except ValueError as exc:
                raise PlatformError(f"service {service_name}: {exc}") from exc
            state["services"][service_name] = {
                "listen": service.listen,
                "mirror_listen": mirror_listen,
                "releases": {b.release_id: {"weight": b.weight, "servers": list(b.servers),
                                            "preview": b.preview, "mirror": b.mirror}
                             for b in backends},
            }
            self.dynamic_dir.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.dynamic_dir / f"{service_name}.yml", _yaml_text(dynamic))
            self._save_state(state)
            running = self._ensure_running(state)
        self._wait_applied(service_name, backends, running)

    def _wait_applied(self, service_name: str, backends: Sequence[Backend],
                      running: Running) -> None:
        want = traefik_config.expected_weights(backends)
        want_servers = {b.release_id: {f"http://{s}" for s in b.servers} for b in backends}
        give_up = time.monotonic() + self.apply_deadline
        seen: dict[str, int] = {}
        previews = {b.release_id: b.preview for b in backends}
        mirrors = {b.release_id: b.mirror for b in backends if b.mirror}
        while True:
            seen, servers = self._read_back(service_name, list(want), running.admin)
            if seen == want and all(servers.get(rid) == urls for rid, urls in
                                    want_servers.items()) \
                    and self._previews(running.admin, previews) == previews \
                    and self._mirrors(service_name, running.admin) == mirrors:
                return
            if time.monotonic() > give_up:
                tail = traefik_process.log_tail(self.log_path, lines=5)
                raise PlatformError(
                    f"Traefik did not apply the routing of service {service_name} within "
                    f"{self.apply_deadline:.0f}s: wanted {want}, it serves {seen}"
                    + (f"\n{tail}" if tail else ""))
            time.sleep(0.01)

    def _api(self, admin: str, path: str) -> dict[str, Any] | None:
        status, body = traefik_process.http_get(f"http://{admin}{path}", timeout=2.0,
                                                headers=self.admin_headers)
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _read_back(self, service_name: str, release_ids: Sequence[str],
                   admin: str) -> tuple[dict[str, int], dict[str, set[str]]]:
        weighted = self._api(admin, f"/api/http/services/"
                                    f"{traefik_config.service_key(service_name)}@file")
        present: list[str] = []
        servers: dict[str, set[str]] = {}
        for rid in release_ids:
            leaf = self._api(admin, f"/api/http/services/{traefik_config.release_key(rid)}@file")
            if leaf is not None:
                present.append(rid)
                lb = leaf.get("loadBalancer") or {}
                servers[rid] = {str(s.get("url")) for s in lb.get("servers") or []}
        weights = traefik_config.weights_from_api(weighted, release_ids, present)
        return weights, servers

    def _previews(self, admin: str, release_ids: Mapping[str, bool]) -> dict[str, bool]:
        """release_id -> whether Traefik runs its preview router (enabled)."""
        out: dict[str, bool] = {}
        for rid in release_ids:
            found = self._api(admin, f"/api/http/routers/{traefik_config.preview_key(rid)}@file")
            out[rid] = found is not None and found.get("status") == "enabled"
        return out

    def _mirrors(self, service_name: str, admin: str) -> dict[str, int]:
        key = traefik_config.service_key(service_name)
        router = self._api(admin, f"/api/http/routers/{key}@file")
        name = str((router or {}).get("service", ""))
        if not name.startswith(traefik_config.mirror_key(service_name)):
            return {}
        mkey = traefik_config.mirror_key(service_name)
        return traefik_config.mirrors_from_api(
            router, self._api(admin, f"/api/http/services/{mkey}@file"),
            self._api(admin, f"/api/http/routers/{mkey}@file"))

    def mirrors(self, service_name: str) -> dict[str, int]:
        """release_id -> percent of the service's requests Traefik really copies to it."""
        running = self._running()
        return {} if running is None else self._mirrors(service_name, running.admin)

    def previews(self, service_name: str) -> set[str]:
        """Releases of the service Traefik really routes `X-Kiln-Release` requests to."""
        running = self._running()
        if running is None:
            return set()
        known = (self._load_state()["services"].get(service_name) or {}).get("releases", {})
        return {rid for rid, on in self._previews(running.admin, dict.fromkeys(known, True)
                                                  ).items() if on}

    def verify(self, service_name: str) -> dict[str, int]:
        """release_id -> weight Traefik really serves for the service ({} when it runs none)."""
        running = self._running()
        if running is None:
            return {}
        state = self._load_state()
        known = list((state["services"].get(service_name) or {}).get("releases", {}))
        weights, _ = self._read_back(service_name, known, running.admin)
        return weights

    def served_servers(self, service_name: str) -> dict[str, set[str]]:
        """release_id -> servers Traefik routes to (releases in the weighted list only)."""
        running = self._running()
        if running is None:
            return {}
        known = list((self._load_state()["services"].get(service_name) or {}).get("releases", {}))
        weights, servers = self._read_back(service_name, known, running.admin)
        return {rid: {u.removeprefix("http://") for u in servers.get(rid, set())}
                for rid, w in weights.items() if w > 0}

    def server_status(self, release_id: str) -> dict[str, str]:
        """Traefik's own health verdict per server URL ('UP'/'DOWN'; {} while out of rotation)."""
        running = self._running()
        if running is None:
            return {}
        leaf = self._api(running.admin,
                         f"/api/http/services/{traefik_config.release_key(release_id)}@file")
        status = (leaf or {}).get("serverStatus") or {}
        return {str(k): str(v) for k, v in status.items()}

    def server_statuses(self, release_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """`server_status` of many releases in one admin call (`/api/http/services` lists every
        service with its verdicts; a further page only past `status_page` kiln services): what
        `kiln serve` reads once per pass for all its services. Each asked release has an entry."""
        out: dict[str, dict[str, str]] = {rid: {} for rid in release_ids}
        running = self._running()
        if running is None:
            return out
        for page in range(1, 1000):
            status, body = traefik_process.http_get(
                f"http://{running.admin}/api/http/services?search=kiln-&per_page="
                f"{self.status_page}&page={page}", timeout=2.0, headers=self.admin_headers)
            try:
                services = json.loads(body) if status == 200 else []
            except ValueError:
                services = []
            if not isinstance(services, list):
                break
            out.update(traefik_config.statuses_from_api(
                [s for s in services if isinstance(s, dict)], release_ids))
            if len(services) < self.status_page:
                break
        return out

    def remove_service(self, service_name: str) -> None:
        """Drop the service's routing. Its entrypoint is released at the next restart."""
        with self._locked():
            state = self._load_state()
            state["services"].pop(service_name, None)
            (self.dynamic_dir / f"{service_name}.yml").unlink(missing_ok=True)
            self._save_state(state)
            if self.static_path.exists() and state["admin"]:
                static = traefik_config.static_config(
                    admin=state["admin"], listens=self._entrypoints(state),
                    dynamic_dir=self.dynamic_dir, access_log=self.access_log_path)
                self._write_atomic(self.static_path, _yaml_text(static))
            running = self._running()
        if running is None:
            return
        key = traefik_config.service_key(service_name)
        give_up = time.monotonic() + self.apply_deadline
        while self._api(running.admin, f"/api/http/routers/{key}@file") is not None:
            if time.monotonic() > give_up:
                raise PlatformError(f"Traefik still routes service {service_name} "
                                    f"{self.apply_deadline:.0f}s after its config was removed")
            time.sleep(0.03)

    def request_counts(self) -> RequestCounts | None:
        """Traefik's Prometheus `traefik_service_requests_total` per release; the epoch is the
        process (pid and start time), so a restart (counters back at 0) is told from a drop.
        A removed release's series stays until a later configuration change drops it."""
        running = self._running()
        if running is None:
            return None
        status, body = traefik_process.http_get(f"http://{running.admin}/metrics", timeout=2.0,
                                                headers=self.admin_headers)
        after = self._running()
        if status != 200 or after is None or after.pid != running.pid:
            return None  # not answering, or restarted while asked: no reading this time
        return RequestCounts(f"{running.pid}:{running.start}",
                             traefik_config.prometheus_counts(body.decode("utf-8", "replace")),
                             "traefik")

    # ------------------------------------------------------------------ draining

    def open_requests(self, release_id: str) -> int:
        """Connections Traefik holds open to the release's servers.

        An upper bound on the release's requests in flight: each proxied request holds one, and
        an idle keep-alive connection closes 1 s after its last use. 0 means drained. Only
        meaningful once the release is at weight 0 (verify() says so).
        """
        running = self._running()
        if running is None:
            return 0
        servers: set[str] = set()
        for svc in self._load_state()["services"].values():
            servers.update((svc.get("releases", {}).get(release_id) or {}).get("servers", []))
        return tcp_table.connections_to(running.pid, servers)

    def wait_drained(self, release_id: str, timeout: float) -> bool:
        """Poll open_requests() until 0; False when `timeout` passed first."""
        give_up = time.monotonic() + timeout
        while self.open_requests(release_id) > 0:
            if time.monotonic() > give_up:
                return False
            time.sleep(0.05)
        return True
