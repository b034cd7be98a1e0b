"""The loopback ports kiln's Traefik keeps for mirror steps, and a `listen:` that takes one.

A service routed by Traefik gets a mirror entrypoint (`mirror_listen` in `<home>/router/
router.json`, a free loopback port picked at its first routing): the copies of a mirror step go
through it. A user's `listen:` on that port would make two entrypoints of one address; kiln
refuses it with one line at `kiln validate` and before a deploy changes anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import SpecError

if TYPE_CHECKING:
    from kiln.spec.loader import LoadedSpec

class MirrorPortTaken(SpecError):
    """A `listen:` on a mirror entrypoint's port: bad spec input like any other (exit 1)."""


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
"""A listen on these hosts takes the port on every address, loopback included."""


def mirror_entrypoints(router_state: Mapping[str, object]) -> dict[str, str]:
    """service -> the address of its mirror entrypoint, from Traefik's router.json."""
    services = router_state.get("services")
    if not isinstance(services, dict):
        return {}
    return {str(name): str(svc["mirror_listen"]) for name, svc in services.items()
            if isinstance(svc, dict) and svc.get("mirror_listen")}


def read_mirror_entrypoints(home: Path) -> dict[str, str]:
    """`mirror_entrypoints` of the project's Traefik state ({} when it has none yet)."""
    try:
        data = json.loads((home / "router" / "router.json").read_text())
    except (OSError, ValueError):
        return {}
    return mirror_entrypoints(data) if isinstance(data, dict) else {}


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), port


def same_socket(a: str, b: str) -> bool:
    """Two listen addresses that cannot both be bound: one port, and one host or a wildcard."""
    host_a, port_a = _split(a)
    host_b, port_b = _split(b)
    if not port_a or port_a != port_b:
        return False
    return host_a == host_b or host_a in WILDCARD_HOSTS or host_b in WILDCARD_HOSTS


def listen_collisions(listens: Mapping[str, str], mirrors: Mapping[str, str]
                      ) -> list[tuple[str, str, str, str]]:
    """(service, its listen, the service whose mirror entrypoint it takes, that address) for
    every `listen:` on a port kiln's Traefik keeps for mirror copies."""
    return [(name, listen, owner, mirror)
            for name, listen in sorted(listens.items())
            for owner, mirror in sorted(mirrors.items()) if same_socket(listen, mirror)]


def collision_message(service: str, listen: str, owner: str, mirror: str) -> str:
    """What, expected, seen (the caller adds where: file:line or the spec path)."""
    whose = "its own" if owner == service else f"service {owner}'s"
    return (f"{listen} is the port of {whose} mirror entrypoint ({mirror}, kept by kiln's Traefik "
            f"in .kiln/router/router.json for mirror steps); expected an address no entrypoint "
            f"uses, saw {listen}")


def check_mirror_ports(loaded: LoadedSpec, home: Path) -> None:
    """MirrorPortTaken, one line per `listen:` on a mirror entrypoint's port (file:line:col first).
    Only where kiln runs Traefik: HAProxy and the ALB have no mirror entrypoint."""
    from kiln.spec.loader import line_at

    spec = loaded.spec
    if spec.platform == "aws" or spec.router != "traefik":
        return
    found = listen_collisions({n: s.listen for n, s in spec.services.items()},
                              read_mirror_entrypoints(home))
    if found:
        raise MirrorPortTaken([line_at(loaded, ("services", name, "listen"),
                                 collision_message(name, listen, owner, mirror))
                         for name, listen, owner, mirror in found])
