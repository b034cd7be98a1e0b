"""Pick the local router by the spec's `router:` key; switching stops the other one first.

Both routers write the same JSON access-log shape (the judge reads either) and keep their files
in their own folder under the project's home (`router/` for Traefik, `haproxy/` for HAProxy), so
a switch leaves nothing half-shared. The new router learns the routing at the next deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.router import TraefikRouter

RouterKind = Literal["traefik", "haproxy"]


def make_router(kind: RouterKind, home: Path, project: str) -> TraefikRouter | HAProxyRouter:
    """The project's router; the other kind is stopped if it still runs (it holds the ports)."""
    wanted: TraefikRouter | HAProxyRouter
    other: TraefikRouter | HAProxyRouter
    if kind == "haproxy":
        wanted, other = HAProxyRouter(home, project), TraefikRouter(home, project)
    else:
        wanted, other = TraefikRouter(home, project), HAProxyRouter(home, project)
    if other.is_running():
        other.stop()
    return wanted
