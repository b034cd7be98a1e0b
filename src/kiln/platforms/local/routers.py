"""Pick the local router by the spec's `router:` key; a switch stops the other one only when
the new one starts (a read, `kiln status` or `kiln plan`, never stops the router serving).

Both routers write the same JSON access-log shape (the judge reads either) and keep their files
in their own folder under the project's home (`router/` for Traefik, `haproxy/` for HAProxy), so
a switch leaves nothing half-shared. The new router learns the routing at the next deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kiln.platforms.local.traefik_process import read_pidfile

if TYPE_CHECKING:
    from kiln.platforms.local.haproxy_router import HAProxyRouter
    from kiln.platforms.local.router import TraefikRouter

RouterKind = Literal["traefik", "haproxy"]

_PIDFILES = {"traefik": ("router", "traefik.pid"), "haproxy": ("haproxy", "haproxy.pid")}


def _make(kind: RouterKind, home: Path, project: str, admin: str | None = None
          ) -> TraefikRouter | HAProxyRouter:
    if kind == "haproxy":
        from kiln.platforms.local.haproxy_router import HAProxyRouter

        return HAProxyRouter(home, project)
    from kiln.platforms.local.router import TraefikRouter

    return TraefikRouter(home, project, admin=admin)


def make_router(kind: RouterKind, home: Path, project: str, *, admin: str | None = None
                ) -> TraefikRouter | HAProxyRouter:
    """The project's router. When the other kind still runs (the spec switched routers), the
    router is told: that one holds the ports and serves until this one starts, which stops it
    first. Only the router in use is imported, unless the other one is found running."""
    other: RouterKind = "traefik" if kind == "haproxy" else "haproxy"
    router = _make(kind, home, project, admin)
    running = read_pidfile(home.joinpath(*_PIDFILES[other]))
    if running is not None and running.alive():
        router.replaces = _make(other, home, project)
    return router
