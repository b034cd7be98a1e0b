"""Local instances: processes started from a baked image, each on its own loopback address.

Crash safety: the row is inserted (state 'starting', no pid in its handle) before the process is spawned and
the pid recorded right after, in separate transactions; a pidfile in the instance folder is
written between the two, so `sweep()` can find and stop a process whose pid never reached the
database. Secrets (the `env` given to `launch`) are never written anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from kiln import logpump
from kiln.errors import NotFound, PlatformError
from kiln.platforms import instance_rows
from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release
from kiln.platforms.capabilities import ExitStatus, OrphanFinder, ReleaseTerminator, Sweeper
from kiln.platforms.instance_rows import (
    KINDS,
    LIVE_STATES,
    from_row,
    get_row,
    list_rows,
    set_state,
)
from kiln.platforms.local import addresses, cgroups, environment, tcp_table
from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.local.sandbox import (
    LogFile,
    Sandbox,
    SandboxMode,
    choose,
    group_members,
    instance_uid,
    kill_and_reap,
    kill_group,
    runtime_paths,
)
from kiln.spec.models import Health, ServiceSpec
from kiln.state.lock import pid_alive, pid_start_time
from kiln.state.records import instances as instance_records
from kiln.state.store import Store

Kind = Literal["service", "test", "dev"]
_EXITED = "exited"  # pid_start recorded for a process that was gone before we could read it
_LOG_TAIL_LINES = 20
LOG_SETTLE = 2.0
"""Seconds `log_path` waits for an exited instance's log pump to copy its last output."""


class LocalCompute(Sweeper, OrphanFinder, ExitStatus, ReleaseTerminator):
    """The Compute seam on the local platform. State lives in the store's `instances` table."""

    def __init__(self, store: Store, home: Path, project: str, *,
                 sandbox: Literal["auto", "bwrap", "none"] = "auto") -> None:
        self.store = store
        self.home = home
        self.project = project
        self._sandbox = sandbox
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._failures: dict[str, str] = {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._hierarchy: cgroups.Hierarchy | Literal["unknown"] | None = "unknown"

    @property
    def sandbox_mode(self) -> SandboxMode:
        """Chosen when something is to start (PlatformError without a working bubblewrap unless
        the spec says `sandbox: none`), so status, stop and destroy still work on such a host."""
        return choose(self._sandbox)

    # ------------------------------------------------------------------ paths

    def folder(self, instance_id: str) -> Path:
        return self.home / "instances" / instance_id

    def log_path(self, instance: Instance) -> Path:
        """The instance's log. Once the instance has exited, the path is returned only after its
        log writer (when this process started it) copied the last output: the exit is seen
        before the writer drains the pipe, and the last line is usually why it exited."""
        self._sync_log(instance)
        return self.folder(instance.id) / "log"

    def _log_writer(self, instance: Instance) -> subprocess.Popen[bytes] | None:
        """The process copying the instance's output into its log, when this object started
        it (the log pump)."""
        return self._procs.get(instance.id)

    def _sync_log(self, instance: Instance) -> None:
        """Wait briefly, once the instance has exited, for its log writer to finish."""
        proc = self._log_writer(instance)
        if proc is not None and proc.poll() is None and not self.observe([instance])[0].alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=LOG_SETTLE)

    def scratch(self, instance: Instance) -> Path:
        """The instance's writable folder (its HOME)."""
        return self.folder(instance.id) / "scratch"

    # ------------------------------------------------------------------ launch

    def launch(
        self, service_name: str, service: ServiceSpec, release: Release, image: Image, count: int,
        *, env: Mapping[str, str], kind: Kind = "service",
    ) -> list[Instance]:
        """Start `count` instances of `image`; returns at once (see `wait_healthy`).

        If one cannot be started, those already started by this call are stopped again.
        """
        if kind not in KINDS:
            raise PlatformError(f"instance kind {kind!r} is not one of {', '.join(KINDS)}")
        self._check_image(image)
        started: list[Instance] = []
        try:
            for _ in range(count):
                started.append(self._launch_one(service_name, service, release, image, env,
                                                kind))
        except BaseException:
            for inst in started:
                self.terminate(inst, timeout=2.0)
            raise
        return started

    def _check_image(self, image: Image) -> None:
        """A clear error before anything starts when the image cannot run."""
        root = Path(image.ref) / "root"
        if not root.is_dir():
            raise NotFound(f"image {image.name} ({image.digest[:19]}) is missing from the store: "
                           f"{root} does not exist", hint="run kiln bake again")
        if image.workdir and not (root / image.workdir).is_dir():
            raise PlatformError(f"image {image.name} ({image.digest[:19]}): its workdir "
                                f"{image.workdir!r} is not a folder in the image",
                                hint="run kiln bake --no-cache to rebuild it")
        from kiln.bake.imagestore import ensure_intact

        ensure_intact(self.store, image, use="launch it")  # every kind: the content baked

    def _insert_launching(self, instance_id: str, service_name: str, service: ServiceSpec,
                          release: Release, kind: Kind, handle: Mapping[str, str],
                          **data: str) -> str:
        """The row of an instance about to start (state 'starting', before its process exists,
        so a crash between the two leaves something `sweep()` finds) on a free loopback address,
        and its launch event, in one transaction. Returns the address."""
        with self.store.tx() as c:
            counter = instance_records.count_all(c)
            taken = instance_records.live_hosts(c)
            # The range is keyed by the project folder too: two checkouts of one project (same
            # name) running side by side must not hand out each other's addresses.
            host = addresses.allocate(f"{self.project}@{self.home.resolve()}", service.port,
                                      counter, taken)
            instance_rows.insert(c, Instance(
                id=instance_id, service=service_name, release_id=release.id, host=host,
                port=service.port, handle=handle), kind=kind)
            c.event("instance.launch", f"launching {instance_id} on {host}:{service.port}",
                    service=service_name,
                    data={"instance": instance_id, "release": release.id, "kind": kind, **data})
        return host

    def _launch_one(self, service_name: str, service: ServiceSpec, release: Release,
                    image: Image, secret_env: Mapping[str, str], kind: Kind) -> Instance:
        instance_id = f"{release.id}-{secrets.token_hex(3)}"
        folder = self.folder(instance_id)
        root = Path(image.ref) / "root"
        host = self._insert_launching(instance_id, service_name, service, release, kind,
                                      LocalHandle(workdir=str(folder)).to_map())
        proc: subprocess.Popen[bytes] | None = None
        try:
            scratch = folder / "scratch"
            (scratch / "tmp").mkdir(parents=True, exist_ok=True)
            base = environment.base_env(root, scratch, os.environ)
            kiln = environment.kiln_vars(host, service.port, service_name, release.id, instance_id)
            stored_env = environment.instance_env(base=base, image_env=image.env,
                                                  service_env=service.env, extra_env={}, kiln=kiln)
            full_env = environment.instance_env(base=base, image_env=image.env,
                                                service_env=service.env, extra_env=secret_env,
                                                kiln=kiln)
            sandbox = Sandbox(root, scratch, self.sandbox_mode, uid=instance_uid(instance_id),
                              read_only=(*runtime_paths(root), *service.read_only_paths),
                              workdir=image.workdir)
            sandbox.prepare_scratch()
            cgroup, limits_note = self._make_cgroup(instance_id, service)
            _write_json(folder / "instance.json", {
                "root": str(root), "scratch": str(scratch), "sandbox": sandbox.mode,
                "uid": sandbox.uid, "read_only": list(sandbox.read_only),
                "workdir": sandbox.workdir,
                "command": service.command, "env": stored_env,
                "secret_keys": sorted(secret_env),  # names only, never values
                "cgroup": list(cgroup.paths) if cgroup else None, "limits": limits_note,
                "logs": service.logs.model_dump(mode="json"),
            })
            spawned = sandbox.spawn(
                service.command, full_env,
                LogFile(folder / "log", service.logs.max_size, service.logs.keep),
                cgroups.join_argv(cgroup))
            proc, pid = spawned.proc, spawned.pid
            self._procs[instance_id] = proc
            pid_start = pid_start_time(pid) or _EXITED
            _write_json(folder / "pid", {"pid": pid, "pid_start": pid_start, "pgid": proc.pid,
                                         "pgid_start": pid_start_time(proc.pid) or _EXITED,
                                         "sandbox_pid": spawned.sandbox_pid})
            handle = LocalHandle(pid, pid_start, str(folder)).to_map()
            with self.store.tx() as c:
                instance_rows.set_handle(c, instance_id, handle)
        except BaseException:
            # A launch that fails half-way leaves neither a process nor a live row behind.
            if proc is not None:
                kill_and_reap(proc)
            with contextlib.suppress(Exception):
                cgroups.release(folder)
            with contextlib.suppress(Exception):
                set_state(self.store, instance_id, "dead")
            raise
        return Instance(id=instance_id, service=service_name, release_id=release.id, host=host,
                        port=service.port, handle=handle)

    def _make_cgroup(self, instance_id: str,
                     service: ServiceSpec) -> tuple[cgroups.Cgroup | None, str]:
        """The instance's cgroup with the spec's limits (recorded in its folder), and a note for
        instance.json. kiln as root must get one (else the launch fails); kiln as a user
        without write access to the cgroup tree runs the instance unlimited, and says so."""
        if self._hierarchy == "unknown":
            self._hierarchy = cgroups.host_hierarchy()
        res = service.resources
        limits = cgroups.Limits(res.memory_limit, res.pids_limit, res.cpus)
        note = (f"memory {limits.memory}, pids {limits.pids}, cpus "
                f"{'unlimited' if limits.cpus is None else f'{limits.cpus:g}'}")
        if self._hierarchy is None:
            if os.geteuid() == 0:
                raise PlatformError("no cgroup hierarchy with the memory and pids controllers "
                                    "is mounted: instances cannot be limited",
                                    hint="mount cgroup v2 (or v1 memory and pids) under "
                                         "/sys/fs/cgroup")
            return None, "none (no cgroup hierarchy with memory and pids)"
        try:
            # the folder's hash keeps two checkouts' (or projects') instance ids apart
            scope = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:8]
            cgroup = cgroups.create(self._hierarchy, f"kiln-{scope}-{instance_id}", limits)
        except PlatformError as exc:
            if os.geteuid() == 0:
                raise
            return None, f"none ({exc})"
        cgroups.record(self.folder(instance_id), cgroup)
        return cgroup, note

    # ------------------------------------------------------------------ observe

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        """Alive = the recorded pid runs, is not a zombie, and started when we recorded."""
        self._reap()
        result = []
        for inst in instances:
            pid, start = self._recorded(inst)
            alive = pid is not None and start is not None and pid_alive(pid, start)
            result.append(Observed(inst.id, alive))
        return result

    def list_instances(self, service: str | None = None, kinds: Collection[str] = ("service",),
                       *, live_only: bool = True) -> list[Instance]:
        """Instances recorded in state (live states only unless `live_only=False`)."""
        rows = list_rows(self.store, service, kinds, LIVE_STATES if live_only else None)
        return [from_row(r) for r in rows]

    def state_of(self, instance: Instance) -> str | None:
        row = get_row(self.store, instance.id)
        return None if row is None else str(row["state"])

    def set_state(self, instance: Instance, state: str) -> None:
        """Record a lifecycle state (e.g. 'draining') chosen by the rollout."""
        set_state(self.store, instance.id, state)

    # ------------------------------------------------------------------ health

    def healthy(self, instance: Instance, health: Health) -> bool:
        ok, _ = self._probe(instance, health.path, health.timeout)
        return ok

    def _probe(self, instance: Instance, path: str, timeout: float) -> tuple[bool, str]:
        url = instance.url + (path if path.startswith("/") else "/" + path)
        try:
            with self._opener.open(url, timeout=timeout) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            return False, f"GET {path} answered {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return False, f"GET {path} failed: {reason}"
        if not 200 <= status < 300:
            return False, f"GET {path} answered {status}"
        if self._listener_is_not_ours(instance):
            return False, (f"GET {path} answered {status}, but not from {instance.id}: "
                           f"another process listens on {instance.host}:{instance.port}")
        return True, f"GET {path} answered {status}"

    def _listener_is_not_ours(self, instance: Instance) -> bool:
        """A healthy answer counts only if the instance's own process group holds the listener
        (another process may have taken a freed address)."""
        pid, _start, pgid, _leader = self._identity(instance)
        group = (lambda: group_members(pgid)) if pgid is not None else None
        address = f"{instance.host}:{instance.port}"
        return pid is not None and tcp_table.holds_listener(pid, address, group) is False

    def wait_healthy(
        self, instances: Sequence[Instance], health: Health, deadline: float | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> tuple[list[Instance], list[Instance]]:
        """Probe all instances in parallel until each is healthy, dead, or `deadline` seconds
        (default: health.deadline) have passed. Returns (healthy, failed); a failed instance's
        reason (with the tail of its log) is `failure_reason(instance)`. Healthy ones are
        recorded as 'running'. A process that exits fails at once, not at the deadline.
        """
        limit = time.monotonic() + (health.deadline if deadline is None else deadline)
        started = time.monotonic()
        pending = list(instances)
        ok: list[Instance] = []
        failed: list[Instance] = []
        last: dict[str, str] = {}
        pause = 0.01
        if not pending:
            return ok, failed
        with ThreadPoolExecutor(max_workers=min(32, len(pending))) as pool:
            while pending:
                alive = {o.instance_id: o.alive for o in self.observe(pending)}
                for inst in [i for i in pending if not alive[i.id]]:
                    pending.remove(inst)
                    failed.append(inst)
                    self._failures[inst.id] = self._exit_reason(inst)
                    _say(on_progress, f"{inst.id} exited before it was healthy")
                if not pending:
                    break
                timeout = max(0.05, min(health.timeout, limit - time.monotonic()))
                results = list(pool.map(self._probe, pending, [health.path] * len(pending),
                                        [timeout] * len(pending)))
                for inst, (good, why) in zip(list(pending), results, strict=True):
                    last[inst.id] = why
                    if good:
                        pending.remove(inst)
                        ok.append(inst)
                        self.set_state(inst, "running")
                        _say(on_progress, f"{inst.id} healthy after "
                                          f"{time.monotonic() - started:.2f}s "
                                          f"({len(ok)}/{len(instances)})")
                if not pending:
                    break
                if time.monotonic() >= limit:
                    waited = time.monotonic() - started
                    for inst in pending:
                        failed.append(inst)
                        self._failures[inst.id] = (
                            f"{inst.id} not healthy within {waited:.1f}s "
                            f"(last probe: {last.get(inst.id, 'none')})"
                            + self._tail_note(inst))
                        _say(on_progress, f"{inst.id} not healthy within {waited:.1f}s")
                    pending = []
                    break
                time.sleep(min(pause, max(0.0, limit - time.monotonic())))
                pause = min(pause * 1.5, 0.1)
        return ok, failed

    def failure_reason(self, instance: Instance) -> str:
        """Why `wait_healthy` gave up on an instance, with the tail of its log."""
        return self._failures.get(instance.id) or self._exit_reason(instance)

    def _exit_reason(self, inst: Instance) -> str:
        return f"{inst.id} {self.exit_status(inst)}" + self._tail_note(inst)

    def exit_status(self, inst: Instance) -> str:
        proc = self._procs.get(inst.id)
        code = None
        if proc is not None:  # the app is gone; bwrap (its parent) exits right after it
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=1.0)
        how = describe_exit(code) if code is not None else "is not running"
        cgroup = cgroups.recorded(self.folder(inst.id))
        if cgroup is not None and cgroup.oom_kills():
            how += " (killed by the kernel's OOM killer at its memory limit)"
        return how

    def _tail_note(self, inst: Instance) -> str:
        tail = self.log_tail(inst)
        return f"; last log lines:\n{tail}" if tail else "; its log is empty"

    def log_tail(self, instance: Instance, lines: int = _LOG_TAIL_LINES) -> str:
        data = logpump.tail(str(self.log_path(instance)), 8192).decode(errors="replace")
        return "\n".join(data.rstrip("\n").splitlines()[-lines:])

    # ------------------------------------------------------------------ terminate

    def terminate(self, instance: Instance, timeout: float) -> None:
        """SIGTERM the instance's processes, SIGKILL the group after `timeout`; mark it
        stopped. Idempotent: an instance already gone is just marked stopped."""
        self.terminate_release(instance.release_id, [instance], timeout)

    def terminate_release(self, release_id: str, instances: Sequence[Instance],
                          timeout: float) -> None:
        """`terminate` for several instances at once: every group gets SIGTERM first, then each
        is waited for against one deadline, so N instances take one stop time, not N."""
        signalled = {inst.id: self._signal_stop(inst) for inst in instances}
        until = time.monotonic() + timeout
        survivors = []
        for inst in instances:
            pgid = signalled[inst.id]
            if pgid is not None and not self._wait_group_gone(inst, pgid, until):
                kill_group(pgid, signal.SIGKILL)
                if not self._wait_group_gone(inst, pgid, time.monotonic() + 5.0):
                    survivors.append(f"instance {inst.id}: process group {pgid} survived "
                                     "SIGKILL")
                    continue
            self._stopped(inst)
        if survivors:
            raise PlatformError("; ".join(survivors))

    def _signal_stop(self, instance: Instance) -> int | None:
        """SIGTERM the instance's group (our own processes only); the group to wait for."""
        pid, start, pgid, leader = self._identity(instance)
        ours = pid is not None and start is not None and pid_alive(pid, start)
        leader_ours = pgid is not None and leader is not None and pid_alive(pgid, leader)
        if ours and pid is not None:
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                ours = False
        if not (ours or leader_ours) or pgid is None:
            return None
        # SIGTERM every member but a bwrap leader: bwrap stays to reap the app and exits
        # with its status. Without bwrap the app is the leader and gets it like the rest.
        pid = pid if ours else None
        leader_is_sandbox = pid is not None and pid != pgid
        info = _read_json(self.folder(instance.id) / "pid") or {}
        keep = {pgid, info.get("sandbox_pid")} if leader_is_sandbox else set()
        for member in group_members(pgid):
            if member in keep:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGTERM)
        return pgid

    def _stopped(self, instance: Instance) -> None:
        self._reap()
        cgroups.release(self.folder(instance.id))  # and whatever left the process group
        self._record_stopped(instance)
        self._procs.pop(instance.id, None)

    def _record_stopped(self, instance: Instance) -> None:
        """Mark the row stopped, with its event, once (a second terminate records nothing)."""
        row = get_row(self.store, instance.id)
        if row is not None and row["state"] != "stopped":
            with self.store.tx() as c:
                instance_records.mark_stopped(c, instance.id, time.time())
                c.event("instance.stop", f"stopped {instance.id}", service=instance.service,
                        data={"instance": instance.id})

    def _wait_group_gone(self, instance: Instance, pgid: int, until: float) -> bool:
        pause = 0.005
        while True:
            self._reap()
            if not group_members(pgid):
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _recorded(self, inst: Instance) -> tuple[int | None, str | None]:
        """(pid, pid_start) from the instance's handle, else from its row."""
        handle = LocalHandle.of(inst)
        if handle.pid is None:
            row = get_row(self.store, inst.id)
            if row is not None:
                handle = LocalHandle.of(from_row(row))
        return handle.pid, handle.pid_start

    def _identity(self, inst: Instance) -> tuple[int | None, str | None, int | None, str | None]:
        """(pid, pid_start, pgid, pgid_start) from the instance, its row, then its pidfile."""
        pid, start = self._recorded(inst)
        info = _read_json(self.folder(inst.id) / "pid")
        if pid is None and info:
            pid, start = info.get("pid"), info.get("pid_start")
        pgid, leader = None, None
        if info and info.get("pid") == pid:
            pgid, leader = info.get("pgid"), info.get("pgid_start")
        return pid, start, pgid, leader

    # ------------------------------------------------------------------ sweep

    def sweep(self) -> list[str]:
        """Make state match reality; call under the project lock. Rows of live states whose
        process is gone become 'dead'; a process found only through its pidfile (kiln was killed
        before recording it) or left running by a row marked stopped/dead is stopped.
        Returns one line per change."""
        changes: list[str] = []
        self._reap()
        rows = {r["id"]: r for r in list_rows(self.store, None, KINDS, None)}
        for row in rows.values():
            if row["state"] in LIVE_STATES:
                inst = from_row(row)
                if not self.observe([inst])[0].alive:
                    set_state(self.store, inst.id, "dead")
                    changes.append(f"{inst.id}: process is gone, marked dead")
        for name, pid, start in self.orphans():
            known = rows.get(name)
            ghost = Instance(id=name, service=known["service"] if known else "?",
                             release_id=known["release_id"] if known else "?",
                             host="", port=0, handle=LocalHandle(pid, start).to_map())
            self.terminate(ghost, timeout=2.0)
            changes.append(f"{name}: stopped orphan process {pid}")
        changes += self._sweep_cgroups()
        return changes

    def _sweep_cgroups(self) -> list[str]:
        """Remove the cgroups of instances no live row holds (kiln killed between launch and
        terminate, or a terminate that failed half-way); whatever still runs in one dies.
        Only a cgroup that still held processes is reported."""
        changes: list[str] = []
        base = self.home / "instances"
        if not base.is_dir():
            return changes
        for folder in sorted(base.iterdir()):
            if not (folder / cgroups.RECORD).exists():
                continue
            row = get_row(self.store, folder.name)
            if row is not None and row["state"] in LIVE_STATES:
                continue
            left = cgroups.release(folder)
            if left:  # a dead instance's empty cgroup goes quietly
                changes.append(f"{folder.name}: killed {len(left)} process(es) left in its "
                               "cgroup")
        return changes

    def orphans(self) -> list[tuple[str, int, str]]:
        """(instance folder, pid, start) of processes that run but that no live row records:
        kiln was killed before recording them, or the state was swapped or lost."""
        found: list[tuple[str, int, str]] = []
        base = self.home / "instances"
        if not base.is_dir():
            return found
        for folder in sorted(base.iterdir()):
            info = _read_json(folder / "pid")
            if not info:
                continue
            pid, start = info.get("pid"), info.get("pid_start")
            if not (isinstance(pid, int) and isinstance(start, str)):
                continue
            known = get_row(self.store, folder.name)
            live_row = (known is not None and known["state"] in LIVE_STATES
                        and LocalHandle.of(from_row(known)).pid == pid)
            if not live_row and pid_alive(pid, start):
                found.append((folder.name, pid, start))
        return found

    def gc_folders(self) -> list[str]:
        """Remove the folders (logs, scratch) of instances that are stopped or dead and whose
        process is gone; call under the project lock. Returns the removed instance ids."""
        def process_alive(folder: Path) -> bool:
            info = _read_json(folder / "pid") or {}
            pid, start = info.get("pid"), info.get("pid_start")
            return isinstance(pid, int) and isinstance(start, str) and pid_alive(pid, start)

        self._sweep_cgroups()  # a folder goes only after its cgroup
        return instance_rows.gc_folders(self.store, self.home / "instances", process_alive)

    # ------------------------------------------------------------------ exec

    def exec(self, instance: Instance, command: str, *, timeout: float,
             env: Mapping[str, str] | None = None) -> ExecResult:
        """Run `bash -c command` like the instance runs: same sandbox, cwd and environment.
        Secrets are not stored, so pass them again in `env` if the command needs them.
        A command that outlives `timeout` is killed and reported with exit code 124."""
        info = _read_json(self.folder(instance.id) / "instance.json")
        if not info:
            raise NotFound(f"instance {instance.id} has no record in "
                           f"{self.folder(instance.id)}")
        root, scratch = Path(info["root"]), Path(info["scratch"])
        if not root.is_dir():
            raise NotFound(f"instance {instance.id}: image root {root} is gone")
        mode = "bwrap" if info.get("sandbox") == "bwrap" else self.sandbox_mode
        full = dict(info["env"])
        full.update(env or {})
        full.update({k: v for k, v in info["env"].items() if k == "HOST" or k == "PORT"
                     or k.startswith("KILN_")})
        uid = info.get("uid")
        sandbox = Sandbox(root, scratch, mode, uid=uid if isinstance(uid, int) else None,
                          read_only=tuple(str(p) for p in info.get("read_only") or ()),
                          workdir=str(info.get("workdir") or ""))
        return sandbox.run(command, full, timeout,
                           cgroups.join_argv(cgroups.recorded(self.folder(instance.id))))

    # ------------------------------------------------------------------ internals

    def _reap(self) -> None:
        """Collect exit statuses of processes this object spawned (no zombies left behind)."""
        for proc in self._procs.values():
            proc.poll()


def _say(fn: Callable[[str], None] | None, message: str) -> None:
    if fn is not None:
        fn(message)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_exit(code: int) -> str:
    """An exit code in words: a signal by its name (negative from Popen, 128+N from a shell,
    bwrap or podman), else the number."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    try:
        name = signal.Signals(number).name if number else ""
    except ValueError:
        name = ""
    if code < 0:
        return f"was killed by {name or f'signal {-code}'}"
    return f"exited with code {code}" + (f" ({name})" if name else "")
