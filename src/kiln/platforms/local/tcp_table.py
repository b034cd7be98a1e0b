"""Count a process's established TCP connections to given addresses, from /proc (Linux).

Traefik v3 has no per-service open-connections gauge any more, so kiln looks at Traefik's own
sockets: connections from Traefik to a release's servers are the requests it is proxying there
(plus keep-alive connections idle for less than the transport's idle timeout).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

ESTABLISHED = "01"


def decode_address(hex_addr: str) -> str:
    """'0100007F:1F90' (as in /proc/net/tcp) -> '127.0.0.1:8080'; IPv6 too, bracket-free."""
    host_hex, port_hex = hex_addr.split(":")
    port = int(port_hex, 16)
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        # Four little-endian 32-bit words.
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, words)
        if host.startswith("::ffff:") and "." in host:
            host = host.removeprefix("::ffff:")
    return f"{host}:{port}"


def parse_tcp_table(text: str) -> list[tuple[str, str, str, int]]:
    """Rows of /proc/net/tcp{,6} -> (local, remote, state, inode)."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        rows.append((decode_address(fields[1]), decode_address(fields[2]), fields[3],
                     int(fields[9])))
    return rows


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds open (empty when it is gone)."""
    out: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def count_established(rows: Iterable[tuple[str, str, str, int]], inodes: set[int],
                      remotes: set[str]) -> int:
    return sum(1 for _local, remote, state, inode in rows
               if state == ESTABLISHED and inode in inodes and remote in remotes)


def connections_to(pid: int, remotes: Iterable[str]) -> int:
    """Established connections that process `pid` holds to any of `remotes` ('host:port')."""
    wanted = set(remotes)
    if not wanted:
        return 0
    inodes = socket_inodes(pid)
    if not inodes:
        return 0
    rows: list[tuple[str, str, str, int]] = []
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            rows.extend(parse_tcp_table(Path(table).read_text()))
        except OSError:
            continue
    return count_established(rows, inodes, wanted)


LISTEN = "0A"


def holds_listener(pid: int, address: str,
                   others: Callable[[], Iterable[int]] | None = None) -> bool | None:
    """Whether `pid` (or one of `others()`, e.g. its process group) holds the socket listening on `address`
    ('host:port'; a wildcard listener on the same port counts). None when /proc can not tell.

    Another project's instance can sit on the same loopback address; an answer from it must not
    be taken for ours.
    """
    port = address.rpartition(":")[2]
    wanted = {address, f"0.0.0.0:{port}", f":::{port}", f"::{port}"}
    listeners: set[int] = set()
    readable = False
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            rows = parse_tcp_table(Path(table).read_text())
        except OSError:
            continue
        readable = True
        listeners |= {inode for local, _r, state, inode in rows
                      if state == LISTEN and local in wanted}
    if not readable:
        return None
    if not listeners:
        return False
    if socket_inodes(pid) & listeners:
        return True
    return any(socket_inodes(p) & listeners for p in (others() if others else ()) if p != pid)


def listener_owner(address: str) -> str | None:
    """Who listens on `address` ('host:port', a wildcard listener on its port too), in words:
    'pid 4242 (nginx)'. None when nobody does, or /proc does not tell (another user's process,
    another network namespace)."""
    port = address.rpartition(":")[2]
    wanted = {address, f"0.0.0.0:{port}", f":::{port}", f"::{port}"}
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = parse_tcp_table(Path(table).read_text())
        except OSError:
            continue
        inodes |= {inode for local, _r, state, inode in rows
                   if state == LISTEN and local in wanted}
    inodes.discard(0)
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and socket_inodes(int(entry)) & inodes:
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                name = "?"
            return f"pid {entry} ({name})"
    return None


def in_use_message(address: str, where: str) -> str:
    """One line for a listen address another process holds: what, where, and who holds it."""
    owner = listener_owner(address)
    return (f"{address} ({where}) is already in use by "
            + (owner if owner else "another process") + "; choose another port there or stop it")
