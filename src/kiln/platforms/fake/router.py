"""An in-memory Router for the pure core's tests, with knobs for the router's failure modes.

It keeps the same contract as the Traefik router: weights per release per service, weight 0 means
out of rotation, a listen address held by someone else is refused, and `open_requests` tells when a
release that left rotation has finished its requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kiln.errors import PlatformError
from kiln.platforms.base import Backend, RequestCounts
from kiln.platforms.capabilities import HealthVerdicts, OpenRequests, ServersReadBack
from kiln.spec.models import ServiceSpec


@dataclass
class FakeRoute:
    listen: str
    backends: dict[str, Backend] = field(default_factory=dict)


class FakeRouter(HealthVerdicts, OpenRequests, ServersReadBack):
    """Deterministic in-memory Router. Knobs:

    - `taken`: listen addresses "in use by another process" (set_backends/ensure_running refuse)
    - `fail_next`: how many coming set_backends calls raise PlatformError (nothing changes)
    - `inflight[release_id]`: requests in flight reported by open_requests; each call after the
      release left rotation counts one down (so a drain loop converges), unless `stuck` holds it
    - `crash()`: the router process dies; verify() serves nothing until ensure_running()
    - `calls`: every mutating call, for assertions ("set web {'web-r1': 100}")
    - `down`: server addresses ("host:port") the router's own health check finds failing
      (`server_status` says DOWN for them, UP for the others)
    - `serve(service, n)`: n requests through the router, split by weight, counted per release
      (`request_counts`) like a real router's counters: they survive a release's removal and
      start again at 0 (a new epoch) when the router restarts
    """

    def __init__(self) -> None:
        self.routes: dict[str, FakeRoute] = {}
        self.running = False
        self.starts = 0
        self.taken: set[str] = set()
        self.fail_next = 0
        self.inflight: dict[str, int] = {}
        self.stuck: set[str] = set()
        self.calls: list[str] = []
        self.counts: dict[str, int] = {}
        self.down: set[str] = set()

    # ------------------------------------------------------------------ knobs

    def crash(self) -> None:
        self.running = False

    # ------------------------------------------------------------------ Router

    def _check_listens(self, listens: dict[str, str]) -> None:
        for name, addr in sorted(listens.items()):
            if addr in self.taken:
                raise PlatformError(f"{addr} (services.{name}.listen) is already in use by "
                                    "another process")

    def check_listen(self, service_name: str, listen: str) -> None:
        if listen in self.taken:
            raise PlatformError(f"{listen} (services.{service_name}.listen) is already in use by "
                                "another process")

    def serve(self, service_name: str, n: int) -> dict[str, int]:
        """n requests to the service, spread over its releases by weight (largest remainder);
        returns how many each release got."""
        weights = self.verify(service_name)
        total = sum(weights.values())
        if n <= 0 or total == 0:
            return {}
        exact = {rid: n * w / total for rid, w in weights.items()}
        got = {rid: int(x) for rid, x in exact.items()}
        for rid in sorted(exact, key=lambda r: got[r] - exact[r])[:n - sum(got.values())]:
            got[rid] += 1
        for rid, k in got.items():
            self.counts[rid] = self.counts.get(rid, 0) + k
        return {rid: k for rid, k in got.items() if k}

    def request_counts(self) -> RequestCounts | None:
        if not self.running:
            return None
        return RequestCounts(f"fake-{self.starts}", dict(self.counts), "fake")

    def ensure_running(self) -> None:
        if self.running:
            return
        self._check_listens({n: r.listen for n, r in self.routes.items()})
        self.running = True
        self.starts += 1
        self.counts = {}  # a new process counts from 0

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise PlatformError(f"fake router: set_backends({service_name}) failed (knob)")
        ids = [b.release_id for b in backends]
        if len(set(ids)) != len(ids):
            raise PlatformError(f"service {service_name}: a release is listed twice in {ids}")
        for b in backends:
            if not b.servers:
                raise PlatformError(f"service {service_name}: release {b.release_id} has no "
                                    "servers")
        self._check_listens({service_name: service.listen})
        self.routes[service_name] = FakeRoute(service.listen, {b.release_id: b for b in backends})
        self.calls.append(f"set {service_name} {self.weights(service_name)}")
        self.ensure_running()

    def remove_service(self, service_name: str) -> None:
        self.routes.pop(service_name, None)
        self.calls.append(f"remove {service_name}")

    def verify(self, service_name: str) -> dict[str, int]:
        if not self.running:
            return {}
        return self.weights(service_name)

    def stop(self) -> None:
        self.running = False
        self.calls.append("stop")

    # ------------------------------------------------------------------ extras (like Traefik's)

    def weights(self, service_name: str) -> dict[str, int]:
        """What was last asked for, whether or not the router runs."""
        route = self.routes.get(service_name)
        return {rid: b.weight for rid, b in route.backends.items()} if route else {}

    def servers(self, service_name: str, release_id: str) -> list[str]:
        route = self.routes.get(service_name)
        b = route.backends.get(release_id) if route else None
        return list(b.servers) if b else []

    def server_status(self, release_id: str) -> dict[str, str]:
        """The router's health verdict per server URL, as Traefik's and HAProxy's."""
        return self.server_statuses([release_id])[release_id]

    def server_statuses(self, release_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """`server_status` of many releases in one call (each asked release has an entry)."""
        out: dict[str, dict[str, str]] = {rid: {} for rid in release_ids}
        if not self.running:
            return out
        for r in self.routes.values():
            for rid, b in r.backends.items():
                if rid in out:
                    out[rid].update({f"http://{s}": "DOWN" if s in self.down else "UP"
                                     for s in b.servers})
        return out

    def served_servers(self, service_name: str) -> dict[str, set[str]]:
        route = self.routes.get(service_name)
        if not self.running or route is None:
            return {}
        return {rid: set(b.servers) for rid, b in route.backends.items() if b.weight > 0}

    def previews(self, service_name: str) -> set[str]:
        """Releases that get the requests naming them (`X-Kiln-Release`)."""
        route = self.routes.get(service_name)
        if not self.running or route is None:
            return set()
        return {rid for rid, b in route.backends.items() if b.preview}

    def in_rotation(self, release_id: str) -> bool:
        return any(b.weight > 0 for r in self.routes.values()
                   for rid, b in r.backends.items() if rid == release_id)

    def open_requests(self, release_id: str) -> int:
        n = self.inflight.get(release_id, 0)
        if n > 0 and release_id not in self.stuck and not self.in_rotation(release_id):
            self.inflight[release_id] = n - 1
        return n

    def wait_drained(self, release_id: str, timeout: float) -> bool:
        for _ in range(10_000):
            if self.open_requests(release_id) == 0:
                return True
            if release_id in self.stuck:
                return False
        return False
