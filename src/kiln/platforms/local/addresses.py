"""Loopback addresses for instances: one 127.x.y.z per instance, so every instance can use the
service's own port and the router addresses it without a port map.

The second octet is derived from the project name so two projects on one machine rarely share a
range; the last two octets come from a per-project counter (the instances table's row count),
begun at a per-project point of the range, and an address is skipped when a live instance holds
it or the port cannot actually be bound. The starting point matters: with 128 second octets, two
projects often share one, and both starting at .0.1 raced for it (the check that the port is free
and the app's own bind are apart by the app's start-up; CI saw "Address already in use").
"""

from __future__ import annotations

import errno
import socket
import zlib
from collections.abc import Callable, Collection, Iterator

from kiln.errors import PlatformError

#: Addresses are never 127.0.0.1 (that is where users and the router listen).
_HOSTS_PER_BLOCK = 254 * 256


def project_octet(project: str) -> int:
    """Second octet for a project: 64..191, stable across runs."""
    return 64 + zlib.crc32(project.encode()) % 128


def address_for(project: str, counter: int) -> str:
    """The `counter`-th address of a project's range, from the project's own starting point
    (wraps after 65,024 addresses)."""
    n = (counter + zlib.crc32(project.encode()) // 128) % _HOSTS_PER_BLOCK
    return f"127.{project_octet(project)}.{n // 254}.{n % 254 + 1}"


def candidates(project: str, start: int) -> Iterator[str]:
    """Every address of the project's range once, beginning at `start`."""
    for i in range(_HOSTS_PER_BLOCK):
        yield address_for(project, start + i)


def port_free(host: str, port: int) -> bool:
    """True when (host, port) can be bound right now, the way a server would bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def allocate(project: str, port: int, start: int, taken: Collection[str],
             is_free: Callable[[str, int], bool] = port_free, limit: int = 4096) -> str:
    """First address from `start` that no live instance holds and whose port is free."""
    for tried, host in enumerate(candidates(project, start)):
        if tried >= limit:
            break
        if host in taken:
            continue
        if is_free(host, port):
            return host
    raise PlatformError(f"no free loopback address for port {port} in 127.{project_octet(project)}"
                        f".0.0/16 after {limit} tries",
                        hint="stop unused instances (kiln destroy) or free the port")
