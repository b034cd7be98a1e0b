"""Platforms by name, imported only when asked for (like testinfra's backends).

A platform is a class taking `(store, home, project)` whose instances give the `Platform` parts.
The library's front looks platforms up here and never imports one itself.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from kiln.errors import KilnError
from kiln.platforms.base import Platform
from kiln.state.store import Store

PLATFORMS: dict[str, str] = {
    "local": "kiln.platforms.local:LocalPlatform",
    "aws": "kiln.platforms.aws:AwsPlatform",
    "podman": "kiln.platforms.podman:PodmanPlatform",
}
"""name -> "module:Class". A name in the spec's `platform:` Literal but not here is refused."""


def names() -> list[str]:
    return sorted(PLATFORMS)


def get_platform(name: str, store: Store, home: Path, project: str, *,
                 router: str = "traefik", settings: object | None = None,
                 sandbox: str = "bwrap", router_admin: str | None = None) -> Platform:
    """The platform called `name` for one project (KilnError naming the known ones if unknown).

    `router` (the spec's `router:` key) is passed on as a keyword only when it is not the default
    Traefik, so a platform that routes no other way needs no such parameter; one that does not
    take it refuses the choice here with one line. `settings` (the spec's block named after the
    platform, e.g. `aws:`) is passed as a keyword when there is one; `sandbox` (the spec's
    `sandbox:`) only when it is not the default.
    """
    target = PLATFORMS.get(name)
    if target is None:
        raise KilnError(f"platform {name!r} is not available (platforms: {', '.join(names())})")
    module_name, _, class_name = target.partition(":")
    # not a capability probe: the registry names each platform's class as "module:Class"
    cls = getattr(importlib.import_module(module_name), class_name)
    options: dict[str, object] = {} if settings is None else {"settings": settings}
    if sandbox != "bwrap":  # the spec's `sandbox: none`, for a platform that sandboxes with it
        if "sandbox" not in inspect.signature(cls).parameters:
            raise KilnError(f"sandbox: {sandbox!r} is not available on platform {name!r}")
        options["sandbox"] = sandbox
    if router_admin is not None:  # the spec refuses it on platforms without such a router
        options["router_admin"] = router_admin
    if router == "traefik":
        platform: Platform = cls(store, home, project, **options)
    elif "router" in inspect.signature(cls).parameters:
        platform = cls(store, home, project, router=router, **options)
    else:
        raise KilnError(f"router {router!r} is not available on platform {name!r}")
    return platform
