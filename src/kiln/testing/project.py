"""A throwaway kiln project driven through the `kiln` command, for end-to-end tests, benchmarks
and demos: a folder from the bundled example app, the command in a subprocess, and a teardown that
leaves no process behind even when the caller failed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.state.lock import pid_alive
from kiln.state.records.instances import handles_json
from kiln.state.store import connect

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[3]
KILN = str(Path(sys.executable).parent / "kiln")

SPEC = """\
project: {project}
router: {router}
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
    tests:
      - http: {{path: /healthz, status: 200}}
{tests}services:
  web:
    image: web
    command: python -m app
    port: 8000
    listen: 127.0.0.1:{port}
    replicas: {replicas}
    health: {{path: {health_path}, interval: 200ms, timeout: 1s, deadline: {deadline}}}
    stop_timeout: 5s
    rollout:
{rollout}
"""

CANARY_FAST = """\
      strategy: canary
      steps:
        - {weight: 10, pause: 0s}
        - {weight: 50, pause: 0s}
      drain_timeout: 3s
"""


def judged_canary(steps: Sequence[tuple[int, str]], *, max_latency_increase: str = "50%",
                  drain_timeout: str = "3s") -> str:
    """The rollout block (indented for `services.web.rollout`) of a canary the judge decides:
    (weight, pause) steps, at most 2 points more errors, >= 50 requests, pause without data."""
    lines = "".join(f"        - {{weight: {w}, pause: {p}}}\n" for w, p in steps)
    return (f"      strategy: canary\n      steps:\n{lines}"
            f"      analysis: {{max_error_rate_increase: 0.02, max_latency_increase: "
            f"{max_latency_increase}, min_requests: 50,\n                 on_no_data: pause}}\n"
            f"      drain_timeout: {drain_timeout}\n")


def default_sigint() -> None:
    """`preexec_fn` for a child a test will Ctrl-C: a job started in the background (`./scripts/
    test &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so
    the child must get the default disposition back rather than rely on the caller's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A free loopback port for a test's listen address, below the kernel's ephemeral range.

    kiln picks its own ports (a router's admin and exporter, a mirror entrypoint, Prometheus)
    with bind(0), from that range: a test port from it could be taken by another test's router
    between the pick and the deploy (CI once saw "already in use by pid ... (traefik)")."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randint(max(1024, low - 12_000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class Proj:
    dir: Path
    port: int
    router: str = "traefik"

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self, *, rollout: str = CANARY_FAST, replicas: int = 3, health_path: str = "/healthz",
              deadline: str = "20s", tests: list[str] | None = None) -> None:
        """`tests`: extra check lines (YAML flow items, e.g. `command: {run: ..., exit_code: 0}`)."""
        extra = "".join(f"      - {t}\n" for t in tests or [])
        (self.dir / "kiln.yaml").write_text(SPEC.format(tests=extra,
            project=self.dir.name.replace("_", "-")[:30].strip("-") or "e2e", port=self.port,
            router=self.router,
            replicas=replicas, rollout=rollout, health_path=health_path, deadline=deadline))

    def behave(self, **kw: object) -> None:
        path = self.dir / "app" / "behaviour.json"
        data = json.loads(path.read_text())
        data.update(kw)
        path.write_text(json.dumps(data))

    def kiln(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KILN, *args], cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def status(self) -> dict[str, Any]:
        res = self.kiln("status", "--json")
        if res.returncode != 0:
            raise RuntimeError(f"kiln status failed: {res.stderr.strip()}")
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def weights(self) -> dict[str, int]:
        """release -> weight, for releases the router gives traffic or that still have instances."""
        svc = self.status()["services"][0]
        return {r["release"]: r["weight"] for r in svc["releases"]
                if r["weight"] > 0 or r["instances"]}

    def live_pids(self) -> list[int]:
        db = self.dir / ".kiln" / "state.db"
        if not db.exists():
            return []
        conn = connect(db)  # through kiln's one opener: never a raw open of state.db
        try:
            rows = handles_json(conn)
        finally:
            conn.close()
        handles = [LocalHandle.parse(json.loads(text)) for text in rows]
        return [h.pid for h in handles
                if h.pid is not None and h.pid_start is not None and pid_alive(h.pid, h.pid_start)]

    def alive_instances(self) -> int:
        return len(self.live_pids())


def teardown(proj: Proj) -> None:
    """destroy, then kill whatever is still alive (instances, the router, kiln's Prometheus)."""
    with contextlib.suppress(Exception):  # teardown must go on
        proj.kiln("destroy", timeout=60)
    for pid in proj.live_pids():
        with contextlib.suppress(OSError):  # the app: its sandbox's pid namespace dies with it
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    for pidfile in (proj.dir / ".kiln" / "router" / "traefik.pid",
                    proj.dir / ".kiln" / "haproxy" / "haproxy.pid",
                    proj.dir / ".kiln" / "prometheus" / "prometheus.pid"):
        running = read_pidfile(pidfile)  # pid and start time: never a reused pid
        if running is not None and running.alive():
            with contextlib.suppress(OSError):
                os.kill(running.pid, signal.SIGKILL)


def make_project(parent: Path, example: Path | None = None, router: str = "traefik") -> Proj:
    """A project folder under `parent` with the example app and a free listen port."""
    folder = parent / "shop"
    shutil.copytree(example or (ROOT / "examples" / "shop" / "app"), folder / "app")
    p = Proj(folder, free_port(), router)
    p.write()
    return p


def wait_for(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def _zombie_or_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def process_group(pgid: int) -> set[int]:
    """Live (not zombie) processes in process group `pgid`."""
    out = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.add(int(entry.name))
    return out


def kill_and_settle(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid`, then wait until it and what dies with it (an instance's log pump and
    sandbox share its process group) are gone: `kill()` returns before a busy machine has run
    the victim, so a command started right after could still see it alive."""
    pgid = os.getpgid(pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _zombie_or_gone(pid) and not process_group(pgid), timeout=timeout,
             what=f"pid {pid} and its process group {pgid} to be gone")
