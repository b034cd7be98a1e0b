"""The local Router on HAProxy (`router: haproxy`): one process per project, changed live through
its runtime API (the admin socket), never reloaded for a weight or server change.

Layout under `<home>/haproxy/`: `haproxy.cfg` (rendered from `router.json` at every start, so a
restarted HAProxy serves the recorded routing), `router.json` (each service's listen address,
releases, weights, servers and health), `health.map` (release -> health path), `admin.sock`,
`haproxy.pid`, `haproxy.log` (its own messages), `access.log` (its stdout: one JSON line per
request, see haproxy_config.LOG_FORMAT) and `counts.json` (the last request counts of servers
deleted by the live process, so a release's count survives its servers: `request_counts`).

How a change is applied (set_backends): new servers are added (`add server`, then `enable
health` and `enable server`), weights set (`set server ... weight`), then servers that left are
put in maintenance and deleted. HAProxy refuses to delete a server that still holds a connection,
in flight or idle in its reuse pool (`pool-purge-delay` closes idle ones after 500 ms), so a
refused delete is retried at the next change; a server in maintenance serves nothing meanwhile.
A new listen address needs a new frontend, which only a restart gives (the old process stops
accepting and finishes what it serves: SIGUSR1).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from kiln.errors import PlatformError
from kiln.platforms.base import Backend, RequestCounts
from kiln.platforms.capabilities import HealthVerdicts, OpenRequests, RouterMetrics, ServersReadBack
from kiln.platforms.local import haproxy_config as hc
from kiln.platforms.local import tcp_table
from kiln.platforms.local import traefik_process as proc
from kiln.platforms.local.router_files import RouterFiles
from kiln.platforms.local.traefik_process import Running
from kiln.spec.models import Health, ServiceSpec
from kiln.state.lock import pid_start_time

PREVIEW_SUFFIX = "@preview"
"""counts.json key suffix of a deleted preview-backend server (its name is its release's)."""
START_DEADLINE = 15.0
APPLY_DEADLINE = 10.0
METRICS_USER = "kiln"
"""Basic-auth user of the exporter: the name kiln's Prometheus sends to every router."""


def haproxy_binary() -> str:
    import shutil

    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)
    if not found:
        raise PlatformError("haproxy not found", hint="apt-get install haproxy (scripts/setup)")
    return found


class RuntimeAPI:
    """HAProxy's admin socket: one connection per batch of `;`-separated commands."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path, self.timeout = path, timeout

    def run(self, *commands: str) -> str:
        # Through the folder's descriptor (/proc/self/fd/N/admin.sock): a UNIX socket address
        # must fit in 107 bytes, a project's absolute path need not.
        try:
            folder = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise PlatformError(f"HAProxy's admin socket {self.path}: {exc}") from exc
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(f"/proc/self/fd/{folder}/{self.path.name}")
                s.sendall(("; ".join(commands) + "\n").encode())
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise PlatformError(f"HAProxy's admin socket {self.path}: {exc}") from exc
            finally:
                os.close(folder)
        return b"".join(chunks).decode("utf-8", "replace")

    def alive(self) -> bool:
        try:
            return "Name: HAProxy" in self.run("show info")
        except PlatformError:
            return False


class HAProxyRouter(RouterFiles, HealthVerdicts, OpenRequests, ServersReadBack, RouterMetrics):
    """Router seam on HAProxy. Every method is safe to call again after a crash."""

    kind: ClassVar[str] = "haproxy"

    def __init__(self, home: Path, project: str, *, apply_deadline: float = APPLY_DEADLINE,
                 start_deadline: float = START_DEADLINE) -> None:
        self.home = Path(home)
        self.project = project
        self.dir = self.home / "haproxy"
        self.config_path = self.dir / "haproxy.cfg"
        self.state_path = self.dir / "router.json"
        self.staging_dir = self.dir
        self.health_map = self.dir / "health.map"
        self.preview_map = self.dir / "preview.map"
        self.socket_path = self.dir / "admin.sock"
        self.pid_path = self.dir / "haproxy.pid"
        self.log_path = self.dir / "haproxy.log"
        self.access_log_path = self.dir / "access.log"
        self.counts_path = self.dir / "counts.json"
        self.apply_deadline = apply_deadline
        self.start_deadline = start_deadline
        self.api = RuntimeAPI(self.socket_path)

    @staticmethod
    def _backends(svc: dict[str, Any]) -> list[Backend]:
        return [Backend(rid, int(r["weight"]), list(r["servers"]),
                        Health.model_validate(r["health"]) if r.get("health") else None,
                        preview=bool(r.get("preview")))
                for rid, r in svc.get("releases", {}).items()]

    @staticmethod
    def _health(svc: dict[str, Any]) -> Health:
        return Health.model_validate(svc.get("health") or {})

    def _wanted(self, svc: dict[str, Any]) -> tuple[list[hc.Server], dict[str, str], int]:
        backends, health = self._backends(svc), self._health(svc)
        return (hc.servers(backends, health), hc.health_paths(backends, health),
                hc.check_timeout(backends, health))

    # ------------------------------------------------------------------ process

    def _render(self, state: dict[str, Any]) -> None:
        services: dict[str, hc.ServiceConfig] = {}
        paths: dict[str, str] = {}
        previews: dict[str, str] = {}
        for name, svc in state["services"].items():
            servers, health, timeout = self._wanted(svc)
            paths.update(health)
            backends = self._backends(svc)
            previews.update(hc.preview_entries(name, backends))
            services[name] = hc.ServiceConfig(
                str(svc["listen"]), servers, timeout,
                hc.preview_servers(backends, self._health(svc)),
                self._cookie_key(state) if svc.get("sticky") else "")
        self._write_atomic(self.health_map,
                           "".join(f"{rid} {path}\n" for rid, path in sorted(paths.items())))
        self._write_atomic(self.preview_map,
                           "".join(f"{rid} {svc}\n" for rid, svc in sorted(previews.items())))
        try:
            text = hc.render(socket=self.socket_path, health_map=self.health_map,
                             services=services, preview_map=self.preview_map,
                             metrics=self._metrics_frontend(state))
        except ValueError as exc:
            raise PlatformError(f"HAProxy config: {exc}") from exc
        self._write_atomic(self.config_path, text)

    @staticmethod
    def _cookie_key(state: dict[str, Any]) -> str:
        """Per project, kept for good: a sticky cookie survives restarts (it hashes this key
        with the server's address)."""
        if not state.get("cookie_key"):
            state["cookie_key"] = secrets.token_hex(12)
        return str(state["cookie_key"])

    def ensure_running(self) -> None:
        """Start HAProxy with the recorded routing if it is not running (or lacks a frontend)."""
        with self._locked():
            self._ensure_running(self._load_state())

    def _ensure_running(self, state: dict[str, Any]) -> Running:
        listens = self._listens(state)
        running = self._running()
        if running is not None and running.listens == listens and state.get("metrics"):
            return running  # (no metrics address: started by a kiln without the exporter)
        self._pick_metrics_address(state, running)
        self._stop_replaced()
        ours = set(running.listens.values()) if running else set()
        for name, addr in sorted(listens.items()):
            if addr not in ours and not proc.port_free_soon(addr):
                raise PlatformError(tcp_table.in_use_message(addr, f"services.{name}.listen"))
        self._render(state)
        if running is not None:
            self._soft_stop(running)
        try:
            started = self._start(listens)
        except PlatformError as exc:
            # The exporter's port was free when it was picked and another process bound it
            # before HAProxy did: pick another once (the services' own addresses are the
            # user's, and were checked above; their failure stands).
            if not _bind_failed(exc, str(state.get("metrics") or "")):
                raise
            state["metrics"] = f"127.0.0.1:{proc.free_port()}"
            self._render(state)
            started = self._start(listens)
        # What the live process's config says about cookies (changing it needs a restart).
        state["live_sticky"] = {n: bool(s.get("sticky")) for n, s in state["services"].items()}
        self._save_state(state)
        return started

    def _soft_stop(self, running: Running) -> None:
        """SIGUSR1: stop listening at once, finish what is in flight (hard-stop-after caps it)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.pid, signal.SIGUSR1)
        for addr in running.listens.values():
            proc.port_free_soon(addr, timeout=5.0)
        self.pid_path.unlink(missing_ok=True)

    def _start(self, listens: dict[str, str]) -> Running:
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-f", str(self.config_path)], cwd=str(self.dir),
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:  # the first alert (without -q: -q also hides the alerts)
            alerts = [ln for ln in (check.stderr + check.stdout).splitlines() if "ALERT" in ln]
            raise PlatformError("HAProxy refused its config: "
                                + " ".join((alerts[0] if alerts else check.stderr).split())[:400])
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.socket_path.unlink(missing_ok=True)
        with open(self.access_log_path, "ab") as out, open(self.log_path, "ab") as err:
            child = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True, cwd=str(self.dir))
        proc._children[child.pid] = child  # reaped in stop_pid
        running = Running(child.pid, pid_start_time(child.pid), str(self.socket_path),
                          dict(listens))
        proc.write_pidfile(self.pid_path, running)
        give_up = time.monotonic() + self.start_deadline
        while True:
            code = child.poll()
            if code is not None:
                tail = proc.log_tail(self.log_path, offset)
                raise PlatformError(f"haproxy exited at start with status {code}"
                                    + (f":\n{tail}" if tail else ""))
            if self.api.alive() and all(proc.accepts(a) for a in listens.values()):
                return running
            if time.monotonic() > give_up:
                proc.stop_pid(child.pid, running.start, timeout=2.0)
                tail = proc.log_tail(self.log_path, offset)
                raise PlatformError(f"haproxy did not become ready within "
                                    f"{self.start_deadline:.0f}s" + (f":\n{tail}" if tail else ""))
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop HAProxy (in-flight requests finish first), and a router it replaces. Routing
        files stay for a restart."""
        self._stop_replaced()
        with self._locked():
            running = proc.read_pidfile(self.pid_path)
            if running is not None:
                proc.stop_pid(running.pid, running.start, timeout=12.0, sig=signal.SIGUSR1)
            self.pid_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ metrics

    @staticmethod
    def _pick_metrics_address(state: dict[str, Any], running: Running | None) -> None:
        """The exporter's loopback port and password: picked at the first start, kept in
        router.json (a new port only when another process took it while HAProxy was down)."""
        if not state.get("metrics_password"):
            state["metrics_password"] = secrets.token_urlsafe(24)
        addr = state.get("metrics")
        if not addr or (running is None and not proc.port_free(str(addr))):
            state["metrics"] = f"127.0.0.1:{proc.free_port()}"

    @staticmethod
    def _metrics_frontend(state: dict[str, Any]) -> hc.MetricsFrontend | None:
        if not state.get("metrics") or not state.get("metrics_password"):
            return None
        return hc.MetricsFrontend(str(state["metrics"]), METRICS_USER,
                                  str(state["metrics_password"]))

    def metrics_endpoint(self) -> dict[str, str] | None:
        """HAProxy's Prometheus exporter (its own loopback frontend, basic auth)."""
        m = self._metrics_frontend(self._load_state())
        if m is None:
            return None
        return {"address": m.address, "path": "/metrics", "username": m.username,
                "password": m.password}

    # ------------------------------------------------------------------ routing

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        """Replace the service's routing, live; returns once HAProxy serves it."""
        ids = [b.release_id for b in backends]
        if len(set(ids)) != len(ids):
            raise PlatformError(f"service {service_name}: a release is listed twice in {ids}")
        try:
            hc.servers(backends, service.health)
        except ValueError as exc:
            raise PlatformError(f"service {service_name}: {exc}") from exc
        with self._locked():
            state = self._load_state()
            running = self._running()
            served = self._held(running)
            current = self._listens(state).get(service_name)
            if service.listen != current and service.listen not in served \
                    and not proc.port_free_soon(service.listen):
                raise PlatformError(tcp_table.in_use_message(
                    service.listen, f"services.{service_name}.listen"))
            svc = {
                "listen": service.listen,
                "health": service.health.model_dump(mode="json"),
                "releases": {b.release_id: {
                    "weight": b.weight, "servers": list(b.servers),
                    "health": b.health.model_dump(mode="json") if b.health else None,
                    "preview": b.preview}
                    for b in backends},
                "sticky": service.rollout.sticky,
            }
            state["services"][service_name] = svc
            if service.rollout.sticky:
                self._cookie_key(state)
            self._save_state(state)
            if running is not None and running.listens == self._listens(state) and (
                    hc.preview_backend_name(service_name) not in self.api.run("show backend")
                    or bool((state.get("live_sticky") or {}).get(service_name))
                    != service.rollout.sticky):
                # Started by a kiln without previews (its frontend lacks the preview rules), or
                # the service turned sticky on or off (the backend's cookie line): restart.
                self._soft_stop(running)
                running = None
            if running is None or running.listens != self._listens(state):
                self._ensure_running(state)  # renders the config with these servers
            else:
                # Live, over the socket; the config files are rendered by the next start (every
                # start renders them from router.json): 3 fsyncs less per weight change.
                self._apply(service_name, svc)
            self._wait_applied(service_name, svc)

    def _apply(self, service_name: str, svc: dict[str, Any]) -> None:
        servers, paths, _ = self._wanted(svc)  # the check timeout changes at the next start
        be = hc.backend_name(service_name)
        live = {st.name: st for st in self._stats() if st.backend == be}
        cmds = [f"enable frontend {hc.frontend_name(service_name)}"]
        maps = self.api.run(f"show map {self.health_map}")
        for rid, path in sorted(paths.items()):
            verb = "set" if f" {rid} " in maps else "add"
            cmds.append(f"{verb} map {self.health_map} {rid} {path}")
        added = [s.name for s in servers if s.name not in live]
        if added:
            self._fold_retired(added)
        for s in servers:
            if s.name not in live:
                cmds += [f"add server {be}/{s.name} {s.address} weight {s.weight} check "
                         f"inter {s.inter_ms} pool-purge-delay {hc.POOL_PURGE_DELAY}",
                         f"enable health {be}/{s.name}", f"enable server {be}/{s.name}"]
            else:
                cmds.append(f"set server {be}/{s.name} weight {s.weight}")
                if live[s.name].status.startswith("MAINT") and (
                        s.weight > 0 or not svc.get("sticky")):
                    cmds.append(f"set server {be}/{s.name} state ready")
        gone = [name for name in live if name not in {s.name for s in servers}]
        cmds += [f"set server {be}/{name} state maint" for name in gone]
        if svc.get("sticky"):
            # HAProxy honours a cookie naming a server at weight 0: out of rotation means out.
            cmds += [f"set server {be}/{s.name} state maint" for s in servers if s.weight == 0]
            if added:  # computes the new servers' cookies (same key: the others' stay)
                cmds.append(f"set dynamic-cookie-key backend {be} "
                            f"{self._cookie_key(self._load_state())}")
        out = self.api.run(*cmds)
        self._check_answer(out)
        self._apply_preview(service_name, svc)
        if gone:
            self._collect(service_name)

    def _apply_preview(self, service_name: str, svc: dict[str, Any]) -> None:
        """Servers first, then the map entry that sends requests to them; on the way out the
        entry goes first, so a request naming the release never meets an empty backend."""
        backends = self._backends(svc)
        want = hc.preview_servers(backends, self._health(svc))
        entries = hc.preview_entries(service_name, backends)
        be = hc.preview_backend_name(service_name)
        live = {st.name: st for st in self._stats() if st.backend == be}
        mapped = self._preview_map()
        cmds: list[str] = []
        self._fold_retired([f"{s.name}{PREVIEW_SUFFIX}" for s in want if s.name not in live])
        for s in want:
            if s.name not in live:
                cmds += [f"add server {be}/{s.name} {s.address} weight 1 check "
                         f"inter {s.inter_ms} pool-purge-delay {hc.POOL_PURGE_DELAY}",
                         f"enable health {be}/{s.name}", f"enable server {be}/{s.name}"]
            elif live[s.name].status.startswith("MAINT"):
                cmds.append(f"set server {be}/{s.name} state ready")
        cmds += [f"add map {self.preview_map} {rid} {name}" for rid, name in entries.items()
                 if mapped.get(rid) != name]
        cmds += [f"del map {self.preview_map} {rid}" for rid, name in mapped.items()
                 if name == service_name and rid not in entries]
        keep = {s.name for s in want}
        cmds += [f"set server {be}/{name} state maint" for name, st in live.items()
                 if name not in keep and not st.status.startswith("MAINT")]
        if cmds:
            self._check_answer(self.api.run(*cmds))

    def _preview_map(self) -> dict[str, str]:
        """The live preview.map: release_id -> service."""
        out: dict[str, str] = {}
        for line in self.api.run(f"show map {self.preview_map}").splitlines():
            parts = line.split()
            if len(parts) == 3:  # "<ref> <key> <value>"
                out[parts[1]] = parts[2]
        return out

    def previews(self, service_name: str) -> set[str]:
        """Releases of the service HAProxy really sends `X-Kiln-Release` requests to: in the
        live map, with a server in the preview backend that is not in maintenance."""
        if self._running() is None:
            return set()
        try:
            mapped = self._preview_map()
            be = hc.preview_backend_name(service_name)
            ready = {hc.release_of_server(st.name) for st in self._stats()
                     if st.backend == be and not st.status.startswith("MAINT")}
        except PlatformError:
            return set()
        return {rid for rid, name in mapped.items() if name == service_name and rid in ready}

    def collect(self, service_name: str) -> int:
        """Delete the service's servers that left the routing (in maintenance); HAProxy refuses
        while one still holds a connection, in flight or idle, so this is retried by later
        changes and by verify(). Returns how many are still waiting."""
        with self._locked():
            return self._collect(service_name)

    def _collect(self, service_name: str) -> int:
        svc = self._load_state()["services"].get(service_name) or {}
        keep = {s.name for s in self._wanted(svc)[0]} if svc else set()
        be = hc.backend_name(service_name)
        pbe = hc.preview_backend_name(service_name)
        keep_preview = {s.name for s in hc.preview_servers(self._backends(svc), self._health(svc))
                        } if svc else set()
        stats = self._stats()
        for st in stats:  # a preview server is only ever taken out after its map entry
            if st.backend == pbe and st.name not in keep_preview and \
                    st.status.startswith("MAINT"):
                # Same server name as in the main backend: its count is kept apart.
                self._retire({f"{st.name}{PREVIEW_SUFFIX}": st.ended})
                self.api.run(f"del server {pbe}/{st.name}")
        gone = [st for st in stats if st.backend == be and st.name not in keep
                and st.status.startswith("MAINT")]
        if not gone:
            return 0
        # A server in maintenance gets no new request: its count is final. Written down before
        # the delete, so a crash in between never loses it (a live server counts itself).
        self._retire({st.name: st.ended for st in gone})
        out = self.api.run(*[f"del server {be}/{st.name}" for st in gone])
        return len(gone) - out.count("Server deleted.")

    # ------------------------------------------------------------------ request counters

    def _epoch(self) -> str | None:
        running = self._running()
        return f"{running.pid}:{running.start}" if running is not None else None

    def _ledger(self, epoch: str) -> dict[str, dict[str, int]]:
        """counts.json of this HAProxy process (another process's counts are gone with it)."""
        try:
            data = json.loads(self.counts_path.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("epoch") != epoch:
            return {"retired": {}, "folded": {}}
        return {key: {str(k): int(v) for k, v in (data.get(key) or {}).items()}
                for key in ("retired", "folded")}

    def _save_ledger(self, epoch: str, ledger: dict[str, dict[str, int]]) -> None:
        self._write_atomic(self.counts_path, json.dumps({"epoch": epoch, **ledger},
                                                        sort_keys=True))

    def _retire(self, counts: dict[str, int]) -> None:
        epoch = self._epoch()
        if epoch is None:
            return
        ledger = self._ledger(epoch)
        ledger["retired"].update(counts)
        self._save_ledger(epoch, ledger)

    def _fold_retired(self, names: list[str]) -> None:
        """A deleted server added again starts at 0: its retired count moves to its release."""
        epoch = self._epoch()
        if epoch is None:
            return
        ledger = self._ledger(epoch)
        moved = [n for n in names if n in ledger["retired"]]
        if not moved:
            return
        for name in moved:
            rid = hc.release_of_server(name)
            ledger["folded"][rid] = ledger["folded"].get(rid, 0) + ledger["retired"].pop(name)
        self._save_ledger(epoch, ledger)

    def request_counts(self) -> RequestCounts | None:
        """Requests ended per release since this HAProxy started (`show stat`, see
        haproxy_config.ended_requests), including servers deleted since (counts.json).
        None when HAProxy is not running or the router is busy for more than 2 s."""
        try:
            with self._locked(timeout=2.0):  # never half a delete: stats and ledger agree
                epoch = self._epoch()
                if epoch is None:
                    return None
                stats = self._stats()
                ledger = self._ledger(epoch)
        except PlatformError:
            return None
        return RequestCounts(epoch, hc.release_counts(stats, ledger["retired"],
                                                      ledger["folded"]), "haproxy")

    @staticmethod
    def _check_answer(out: str) -> None:
        bad = [line for line in out.splitlines()
               if any(w in line for w in ("Unknown command", "No such", "not found",
                                          "invalid", "Invalid", "error", "Require"))]
        if bad:
            raise PlatformError("HAProxy's runtime API refused a change: " + bad[0].strip())

    def _stats(self) -> list[hc.ServerStat]:
        return hc.parse_stat(self.api.run("show stat -1 4 -1"))

    def _served(self, service_name: str, svc: dict[str, Any]) -> dict[str, int]:
        be = hc.backend_name(service_name)
        stats = [st for st in self._stats() if st.backend == be]
        servers, _, _ = self._wanted(svc)
        wanted = {rid: int(r["weight"]) for rid, r in svc.get("releases", {}).items()}
        return hc.served_weights(stats, wanted, servers)

    def _wait_applied(self, service_name: str, svc: dict[str, Any]) -> None:
        want = {rid: int(r["weight"]) for rid, r in svc.get("releases", {}).items()}
        want_previews = {rid for rid, r in svc.get("releases", {}).items() if r.get("preview")}
        give_up = time.monotonic() + self.apply_deadline
        while True:
            seen = self._served(service_name, svc)
            if seen == want and self.previews(service_name) == want_previews:
                return
            if time.monotonic() > give_up:
                raise PlatformError(f"HAProxy did not apply the routing of service {service_name} "
                                    f"within {self.apply_deadline:.0f}s: wanted {want}, it serves "
                                    f"{seen}")
            time.sleep(0.01)

    def verify(self, service_name: str) -> dict[str, int]:
        """release_id -> weight HAProxy really serves for the service ({} when it runs none)."""
        if self._running() is None:
            return {}
        svc = self._load_state()["services"].get(service_name)
        if svc is None:
            return {}
        try:
            # Not while another process changes the routing: the next change collects then.
            with contextlib.suppress(PlatformError), self._locked(timeout=0.2):
                self._collect(service_name)
            return self._served(service_name, svc)
        except PlatformError:
            return {}

    def served_servers(self, service_name: str) -> dict[str, set[str]]:
        """release_id -> servers of the main backend HAProxy sends requests to (weight > 0,
        not in maintenance)."""
        if self._running() is None:
            return {}
        be = hc.backend_name(service_name)
        out: dict[str, set[str]] = {}
        for st in self._stats():
            if st.backend == be and st.weight > 0 and not st.status.startswith("MAINT"):
                out.setdefault(hc.release_of_server(st.name), set()).add(
                    st.name.partition(".")[2])
        return out

    def server_status(self, release_id: str) -> dict[str, str]:
        """HAProxy's health verdict per server URL ('UP'/'DOWN'/'MAINT')."""
        return self.server_statuses([release_id])[release_id]

    def server_statuses(self, release_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """`server_status` of many releases from one `show stat` (each asked release has an
        entry): what `kiln serve` reads once per pass for every service."""
        out: dict[str, dict[str, str]] = {rid: {} for rid in release_ids}
        if self._running() is None:
            return out
        for st in self._stats():
            verdicts = out.get(hc.release_of_server(st.name))
            if verdicts is not None:
                verdicts[f"http://{st.name.partition('.')[2]}"] = st.status
        return out

    def remove_service(self, service_name: str) -> None:
        """Drop the service's routing; its frontend stops accepting now, goes at the next start."""
        with self._locked():
            state = self._load_state()
            svc = state["services"].pop(service_name, None)
            self._save_state(state)
            running = self._running()
            if running is None:
                return
            self._render(state)
            if svc is None or service_name not in running.listens:
                return
            be = hc.backend_name(service_name)
            names = [st.name for st in self._stats() if st.backend == be]
            self.api.run(f"disable frontend {hc.frontend_name(service_name)}",
                         *[f"set server {be}/{n} state maint" for n in names])

    # ------------------------------------------------------------------ draining

    def open_requests(self, release_id: str) -> int:
        """Requests in flight on the release's servers (HAProxy's scur). 0 means drained."""
        if self._running() is None:
            return 0
        try:
            stats = self._stats()
        except PlatformError:
            return 0
        return sum(st.current for st in stats if hc.release_of_server(st.name) == release_id)

    def wait_drained(self, release_id: str, timeout: float) -> bool:
        give_up = time.monotonic() + timeout
        while self.open_requests(release_id) > 0:
            if time.monotonic() > give_up:
                return False
            time.sleep(0.02)
        return True


def _bind_failed(exc: PlatformError, address: str) -> bool:
    """HAProxy exited at start because `address` could not be bound ("cannot bind socket
    (Address already in use) for [127.0.0.1:41234]")."""
    text = str(exc)
    return bool(address) and "cannot bind socket" in text and f"[{address}]" in text
