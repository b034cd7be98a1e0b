"""A cgroup per local instance: memory, pids and cpu limits, and a sure way to kill every process.

cgroup v2 when /sys/fs/cgroup is the unified hierarchy with the memory and pids controllers
(instances under /sys/fs/cgroup/kiln/<id>); v1 otherwise, one folder per controller nested under
the cgroup kiln itself runs in (`kiln-<scope>-<id>`, so limits an operator set on kiln's cgroup still
bound its instances). The instance's process joins its cgroup *before* it execs anything
(`join_argv`: a `sh` that writes its own pid to each `cgroup.procs`, then execs the sandbox), so
every descendant is in it from the start. The folders are recorded in the instance folder
(`cgroup.json`), which is how terminate and sweep find them again from any kiln process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.errors import PlatformError

CONTROLLERS = ("memory", "pids", "cpu")
REQUIRED = ("memory", "pids")
CPU_PERIOD_US = 100_000
RECORD = "cgroup.json"


@dataclass(frozen=True)
class Limits:
    memory: int
    """Bytes (swap included: the instance is OOM-killed, never swapped out)."""
    pids: int
    cpus: float | None = None
    """None: no quota."""


@dataclass(frozen=True)
class Hierarchy:
    """Where instance cgroups are made on this host."""

    version: Literal[1, 2]
    parents: dict[str, str]
    """controller -> the folder instance cgroups go in (v2: one entry, key 'unified')."""
    root: str = ""
    """v2: the unified mount (controllers are enabled from there down to the parent)."""


@dataclass(frozen=True)
class Cgroup:
    version: Literal[1, 2]
    paths: tuple[str, ...]
    """One folder per controller (v1) or the one folder (v2)."""

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.paths]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for name in self.procs_files:
            with contextlib.suppress(OSError, ValueError), open(name, encoding="ascii") as fh:
                found.update(int(x) for x in fh.read().split())
        return found

    def exists(self) -> bool:
        return any(os.path.isdir(p) for p in self.paths)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took in this cgroup."""
        for path in self.paths:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            try:
                with open(os.path.join(path, name), encoding="ascii") as fh:
                    lines = fh.read().splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        """SIGKILL whatever is still inside (a process that left the instance's process group),
        then remove the folders. Raises PlatformError if one survives `timeout`."""
        until = time.monotonic() + timeout
        pause = 0.002
        while True:
            left = self.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            busy = []
            for path in reversed(self.paths):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise PlatformError(f"cannot remove cgroup {path}: {exc}") from exc
                    busy.append(path)
            if not busy:
                return
            if time.monotonic() >= until:
                raise PlatformError(f"cgroup {busy[0]} still holds processes "
                                    f"{sorted(self.pids())} after SIGKILL")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _mounts(mountinfo: str) -> tuple[str | None, dict[str, str]]:
    """(cgroup2 mount point or None, v1 controller -> mount point) from /proc/self/mountinfo."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point, fstype, options = fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup2" and (unified is None or point == "/sys/fs/cgroup"):
            unified = point
        elif fstype == "cgroup":
            for ctrl in CONTROLLERS:
                if ctrl in options and ctrl not in v1:
                    v1[ctrl] = point
    return unified, v1


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """controller (or '' for v2) -> the cgroup path this process is in, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            own[ctrl] = parts[2]
    return own


def detect(mountinfo: str, proc_cgroup: str) -> Hierarchy | None:
    """The hierarchy instance cgroups go in, or None when memory and pids are not available
    (pure: the two /proc files are read by `host_hierarchy`)."""
    unified, v1 = _mounts(mountinfo)
    if unified is not None:
        try:
            with open(os.path.join(unified, "cgroup.controllers"), encoding="ascii") as fh:
                available = fh.read().split()
        except OSError:
            available = []
        if all(c in available for c in REQUIRED):
            return Hierarchy(2, {"unified": os.path.join(unified, "kiln")}, root=unified)
    if all(c in v1 for c in REQUIRED):
        own = _own_paths(proc_cgroup)
        return Hierarchy(1, {ctrl: os.path.normpath(point + "/" + own.get(ctrl, "/"))
                             for ctrl, point in v1.items()})
    return None


def host_hierarchy() -> Hierarchy | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            mountinfo = fh.read()
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            proc_cgroup = fh.read()
    except OSError:
        return None
    return detect(mountinfo, proc_cgroup)


def limit_files(version: int, controller: str, limits: Limits) -> list[tuple[str, str]]:
    """(file, value) to write, in order, for one controller (v2: controller is 'unified')."""
    quota = (str(int(limits.cpus * CPU_PERIOD_US)) if limits.cpus is not None else None)
    if version == 2:
        return [("memory.max", str(limits.memory)), ("memory.swap.max", "0"),
                ("memory.oom.group", "1"), ("pids.max", str(limits.pids)),
                *([("cpu.max", f"{quota} {CPU_PERIOD_US}")] if quota else [])]
    if controller == "memory":
        # memsw (memory + swap) only exists with swap accounting; it must be >= the limit.
        return [("memory.limit_in_bytes", str(limits.memory)),
                ("memory.memsw.limit_in_bytes", str(limits.memory))]
    if controller == "pids":
        return [("pids.max", str(limits.pids))]
    if controller == "cpu" and quota:
        return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota)]
    return []


_OPTIONAL = frozenset({"memory.memsw.limit_in_bytes", "memory.swap.max", "memory.oom.group"})
"""Files that exist only with swap accounting or a newer kernel: skipped when absent."""


def create(hierarchy: Hierarchy, name: str, limits: Limits) -> Cgroup:
    """Make the instance's cgroup(s) with the limits set; nothing is left behind on failure."""
    made: list[str] = []
    try:
        if hierarchy.version == 2:
            _enable_v2(hierarchy)
        for ctrl, parent in hierarchy.parents.items():
            path = os.path.join(parent, name)
            os.makedirs(parent, exist_ok=True)
            os.mkdir(path)
            made.append(path)
            for fname, value in limit_files(hierarchy.version, ctrl, limits):
                try:
                    _write(os.path.join(path, fname), value)
                except FileNotFoundError:
                    if fname not in _OPTIONAL:
                        raise
    except OSError as exc:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise PlatformError(f"cannot make the instance's cgroup {name}: {exc}",
                            hint="kiln needs write access to /sys/fs/cgroup (run it as root)") \
            from exc
    return Cgroup(hierarchy.version, tuple(made))


def _enable_v2(hierarchy: Hierarchy) -> None:
    """Turn on memory, pids (and cpu when there) for children of the root and of kiln/."""
    parent = hierarchy.parents["unified"]
    with open(os.path.join(hierarchy.root, "cgroup.controllers"), encoding="ascii") as fh:
        available = fh.read().split()
    wanted = " ".join(f"+{c}" for c in CONTROLLERS if c in available)
    _write(os.path.join(hierarchy.root, "cgroup.subtree_control"), wanted)
    os.makedirs(parent, exist_ok=True)
    _write(os.path.join(parent, "cgroup.subtree_control"), wanted)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def join_argv(cgroup: Cgroup | None) -> list[str]:
    """A prefix that moves the process into the cgroup, then execs the rest of the argv: the
    pid written is the one that becomes the sandbox, so no child starts outside."""
    if cgroup is None:
        return []
    script = ('while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; '
              'exec "$@"')
    return ["/bin/sh", "-c", script, "kiln-cgroup", *cgroup.procs_files, "--"]


def record(folder: Path, cgroup: Cgroup) -> None:
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps({"version": cgroup.version, "paths": list(cgroup.paths)}),
                   encoding="utf-8")
    os.replace(tmp, folder / RECORD)


def recorded(folder: Path) -> Cgroup | None:
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        version, paths = data["version"], data["paths"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if version not in (1, 2) or not isinstance(paths, list):
        return None
    return Cgroup(version, tuple(str(p) for p in paths))


def release(folder: Path, timeout: float = 5.0) -> list[int] | None:
    """Kill what is left in the instance's recorded cgroup and remove it (and the record).
    Returns the pids that were still inside, or None when there was no cgroup."""
    cgroup = recorded(folder)
    if cgroup is None:
        return None
    left = sorted(cgroup.pids())
    if cgroup.exists():
        cgroup.remove(timeout)
    with contextlib.suppress(FileNotFoundError):
        (folder / RECORD).unlink()
    return left


__all__ = ["Cgroup", "Hierarchy", "Limits", "create", "detect", "host_hierarchy", "join_argv",
           "limit_files", "record", "recorded", "release"]

