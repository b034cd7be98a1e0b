"""An in-memory Compute for the pure core's tests: deterministic ids, addresses and pids, and
knobs to make instances unhealthy, exit at once, ignore SIGTERM or die later.

Give it a Store and it records instances in the `instances` table like the local Compute does,
so code that reads state (status, the rollout executor) sees the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from kiln.errors import NotFound
from kiln.platforms import instance_rows
from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release
from kiln.platforms.capabilities import Sweeper
from kiln.platforms.instance_rows import LIVE_STATES, from_row, list_rows, set_state
from kiln.platforms.local.addresses import address_for
from kiln.platforms.local.environment import kiln_vars
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store

Kind = Literal["service", "test", "dev"]
ExecHandler = Callable[[Instance, str, Mapping[str, str]], ExecResult]


@dataclass
class FakeProcess:
    """What the fake knows about one instance's 'process'."""

    instance: Instance
    kind: str
    env: dict[str, str]
    alive: bool = True
    healthy: bool = True
    ignores_sigterm: bool = False
    exit_code: int | None = None
    stop: Literal["", "sigterm", "sigkill"] = ""
    log: list[str] = field(default_factory=list)
    cwd: str = "/"
    """Where the 'process' runs: the image's workdir under a pretend root `/`."""


class FakeCompute(Sweeper):
    """Deterministic in-memory Compute. Knobs (sets of release ids unless said otherwise):

    - `unhealthy_releases`: instances run but never pass a health probe
    - `exit_releases`: instances exit at once (code 1) after launch
    - `ignore_sigterm_releases`: instances need SIGKILL to stop
    - `die(instance)`, `set_healthy(instance, ok)`: change one instance later
    - `exec_handler(instance, command, env)`: answers `exec` (default: `env` prints the env)
    """

    def __init__(self, store: Store | None = None, project: str = "fake",
                 home: Path | None = None) -> None:
        self.store = store
        self.project = project
        self.home = home if home is not None else (store.home if store else Path("/nonexistent"))
        self.procs: dict[str, FakeProcess] = {}
        self.unhealthy_releases: set[str] = set()
        self.exit_releases: set[str] = set()
        self.ignore_sigterm_releases: set[str] = set()
        self.exec_handler: ExecHandler | None = None
        self.calls: list[tuple[str, str]] = []
        """(method, instance id or release id) in call order, for assertions."""
        self._counter = 0
        self._failures: dict[str, str] = {}

    # ------------------------------------------------------------------ knobs

    def die(self, instance: Instance, exit_code: int = 137) -> None:
        proc = self.procs[instance.id]
        proc.alive, proc.exit_code = False, exit_code

    def set_healthy(self, instance: Instance, ok: bool) -> None:
        self.procs[instance.id].healthy = ok

    def env_of(self, instance: Instance) -> dict[str, str]:
        return dict(self.procs[instance.id].env)

    def stop_signal(self, instance: Instance) -> str:
        """'sigterm' (stopped gracefully), 'sigkill' (had to be killed) or '' (not stopped)."""
        return self.procs[instance.id].stop

    # ------------------------------------------------------------------ Compute

    def launch(
        self, service_name: str, service: ServiceSpec, release: Release, image: Image, count: int,
        *, env: Mapping[str, str], kind: Kind = "service",
    ) -> list[Instance]:
        self.calls.append(("launch", release.id))
        out = []
        for _ in range(count):
            self._counter += 1
            n = self._counter
            instance_id = f"{release.id}-{n:06x}"
            taken = {p.instance.host for p in self.procs.values() if p.alive}
            host = address_for(self.project, n)
            while host in taken:
                n += 1
                host = address_for(self.project, n)
            inst = Instance(id=instance_id, service=service_name, release_id=release.id,
                            host=host, port=service.port,
                            handle={"pid": str(100_000 + self._counter),
                                    "start": f"fake-{self._counter}"})
            full_env = {**image.env, **service.env, **env,
                        **kiln_vars(host, service.port, service_name, release.id, instance_id)}
            proc = FakeProcess(inst, kind, full_env,
                               healthy=release.id not in self.unhealthy_releases,
                               ignores_sigterm=release.id in self.ignore_sigterm_releases,
                               cwd="/" + image.workdir)
            if release.id in self.exit_releases:
                proc.alive, proc.exit_code = False, 1
                proc.log.append(f"{service.command}: exited with code 1")
            self.procs[instance_id] = proc
            if self.store is not None:
                with self.store.tx() as c:
                    instance_rows.insert(c, inst, kind=kind)
            out.append(inst)
        return out

    def healthy(self, instance: Instance, health: Health) -> bool:
        proc = self.procs.get(instance.id)
        return proc is not None and proc.alive and proc.healthy

    def terminate(self, instance: Instance, timeout: float) -> None:
        self.calls.append(("terminate", instance.id))
        proc = self.procs.get(instance.id)
        if proc is not None and proc.alive:
            proc.alive = False
            proc.stop = "sigkill" if proc.ignores_sigterm else "sigterm"
            proc.exit_code = -9 if proc.ignores_sigterm else 0
        if self.store is not None:
            set_state(self.store, instance.id, "stopped")

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        out = []
        for inst in instances:
            proc = self.procs.get(inst.id)
            # A handle that names another process (a reused pid) is not ours.
            alive = (proc is not None and proc.alive
                     and all(proc.instance.handle.get(k) == v for k, v in inst.handle.items()))
            out.append(Observed(inst.id, alive))
        return out

    def exec(self, instance: Instance, command: str, *, timeout: float,
             env: Mapping[str, str] | None = None) -> ExecResult:
        proc = self.procs.get(instance.id)
        if proc is None:
            raise NotFound(f"instance {instance.id} is unknown to the fake compute")
        full = {**proc.env, **(env or {})}
        if self.exec_handler is not None:
            return self.exec_handler(instance, command, full)
        if command.strip() == "env":
            return ExecResult(0, "".join(f"{k}={v}\n" for k, v in sorted(full.items())), "")
        if command.strip() == "pwd":
            return ExecResult(0, proc.cwd + "\n", "")
        return ExecResult(0, "", "")

    def log_path(self, instance: Instance) -> Path:
        return self.home / "instances" / instance.id / "log"

    # ------------------------------------------------------------------ extras (as LocalCompute)

    def list_instances(self, service: str | None = None, kinds: Collection[str] = ("service",),
                       *, live_only: bool = True) -> list[Instance]:
        if self.store is not None:
            rows = list_rows(self.store, service, kinds, LIVE_STATES if live_only else None)
            return [from_row(r) for r in rows]
        return [p.instance for p in self.procs.values()
                if p.kind in kinds and (service is None or p.instance.service == service)
                and (p.alive or not live_only)]

    def wait_healthy(
        self, instances: Sequence[Instance], health: Health, deadline: float | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> tuple[list[Instance], list[Instance]]:
        ok, failed = [], []
        for inst, seen in zip(instances, self.observe(instances), strict=True):
            if not seen.alive:
                failed.append(inst)
                proc = self.procs.get(inst.id)
                code = proc.exit_code if proc else None
                self._failures[inst.id] = f"{inst.id} exited with code {code}"
            elif self.healthy(inst, health):
                ok.append(inst)
                if self.store is not None:
                    set_state(self.store, inst.id, "running")
            else:
                failed.append(inst)
                self._failures[inst.id] = f"{inst.id} not healthy within {health.deadline:g}s"
            if on_progress is not None:
                on_progress(f"{inst.id} {'healthy' if inst in ok else 'failed'}")
        return ok, failed

    def failure_reason(self, instance: Instance) -> str:
        return self._failures.get(instance.id, f"{instance.id} is not running")

    def set_state(self, instance: Instance, state: str) -> None:
        if self.store is not None:
            set_state(self.store, instance.id, state)

    def sweep(self) -> list[str]:
        changes = []
        if self.store is not None:
            for inst in self.list_instances(kinds=("service", "test", "dev")):
                if not self.observe([inst])[0].alive:
                    set_state(self.store, inst.id, "dead")
                    changes.append(f"{inst.id}: process is gone, marked dead")
        return changes

    def with_wrong_start(self, instance: Instance) -> Instance:
        """The same instance as if its pid had been reused by another process."""
        return replace(instance, handle={**instance.handle, "start": "reused"})
