"""The local platform: images in a folder store, instances as sandboxed processes on loopback
addresses, Traefik (default) or HAProxy as the router, its JSON access log as the metric source.

Each part is built on first use, so `kiln bake` never imports the router or the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kiln.state.records.instances import release_at
from kiln.state.store import Store

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Compute, Image, MetricSource, Router


class LocalPlatform:
    def __init__(self, store: Store, home: Path, project: str, *,
                 router: Literal["traefik", "haproxy"] = "traefik",
                 sandbox: Literal["bwrap", "none"] = "bwrap",
                 router_admin: str | None = None) -> None:
        self.store, self.home, self.project = store, home, project
        self.router_kind = router
        self.sandbox: Literal["bwrap", "none"] = sandbox
        """The spec's `sandbox:`; "bwrap" refuses to bake or launch where bubblewrap fails."""
        self.router_admin = router_admin
        self._builder: Builder | None = None
        self._compute: Compute | None = None
        self._router: Router | None = None
        self._metrics: MetricSource | None = None

    @property
    def builder(self) -> Builder:
        if self._builder is None:
            from kiln.platforms.local.builder import LocalBuilder

            self._builder = LocalBuilder(self.store, self.home, sandbox=self.sandbox)
        return self._builder

    @property
    def compute(self) -> Compute:
        if self._compute is None:
            from kiln.platforms.local.compute import LocalCompute

            self._compute = LocalCompute(self.store, self.home, self.project,
                                         sandbox=self.sandbox)
        return self._compute

    @property
    def router(self) -> Router:
        if self._router is None:
            from kiln.platforms.local.routers import make_router

            self._router = make_router(self.router_kind, self.home, self.project,
                                       admin=self.router_admin)
        return self._router

    @property
    def metrics(self) -> MetricSource | None:
        if self._metrics is None:
            from kiln.platforms.local.accesslog import AccessLogSource
            from kiln.platforms.local.haproxy_router import HAProxyRouter
            from kiln.platforms.local.router import TraefikRouter

            router = self.router
            assert isinstance(router, TraefikRouter | HAProxyRouter)
            access_log = router.access_log_path  # both write Traefik's JSON shape
            store = self.store

            def release_of(address: str) -> str | None:
                host, _, port = address.rpartition(":")
                return release_at(store, host, int(port) if port.isdigit() else 0)

            self._metrics = AccessLogSource(access_log, release_of)
        return self._metrics

    def image(self, digest: str) -> Image:
        from kiln.bake.imagestore import get_image

        return get_image(self.store, digest)

    def verify_image(self, digest: str) -> str | None:
        from kiln.bake.imagestore import verify_image

        return verify_image(self.store, digest)

    def remove_images(self, keep: set[str]) -> list[str]:
        from kiln.bake.imagestore import remove_images

        return remove_images(self.store, self.home, keep)

    def remove_build_cache(self) -> list[str]:
        """Step snapshots (home/cache/<key>) on no kept image's chain and no unfinished bake's."""
        from kiln.platforms.local.stepcache import remove_unused

        return remove_unused(self.store, self.home)
