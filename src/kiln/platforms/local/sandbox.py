"""Run an instance's command isolated from the host, kiln's state and the other instances.

With bubblewrap an instance is a process that
- runs as an unprivileged uid of its own (kiln as root: a per-instance uid, reached through
  `setpriv`, in a user namespace made by `unshare --user`; kiln as a user: bwrap's own user
  namespace), with no capabilities and `no_new_privs`;
- has its own pid and ipc namespaces: it sees only its own processes, and when the namespace's
  init (bwrap) goes, the kernel kills everything left in it (no `setsid` escape from terminate);
- sees a new root holding only the system paths an app needs (`SYSTEM_PATHS`, a few `ETC_PATHS`,
  the base Python the image's venv links to, and any `read_only_paths` of the service), all
  read-only; its image read-only at its own path (the venv's absolute paths keep working); its
  scratch folder writable; a fresh /dev, /proc and a private /tmp; an /etc/passwd naming only
  itself. `.kiln/`, other instances' folders, /root, /home, /etc/shadow are simply not there;
- shares the host's network namespace, so it can bind its own loopback address.

Without a working bubblewrap kiln refuses to launch (`choose`), unless the spec says
`sandbox: none`: then the command runs as a plain process (the store's files are still
read-only); that mode is for machines without user namespaces and isolates nothing.

The pid kiln records is the app's (host view): bwrap's `--info-fd` names the namespace's init, and
the app is that init's only child. The log pump (`kiln/logpump.py`, which starts the sandbox with
its output on a pipe) leads the process group; it and the outer bwrap stay until the app is gone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln import logpump
from kiln.errors import PlatformError
from kiln.platforms.base import ExecResult

SandboxMode = Literal["bwrap", "none"]

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Programs and shared libraries, bound read-only (symlinks, as on merged-/usr, are copied)."""
ETC_PATHS = ("/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf",
             "/etc/gai.conf", "/etc/localtime", "/etc/timezone", "/etc/ssl",
             "/etc/ca-certificates", "/etc/ca-certificates.conf", "/etc/pki", "/etc/mime.types",
             "/etc/protocols", "/etc/services", "/etc/ld.so.cache", "/etc/ld.so.conf",
             "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/os-release", "/etc/debian_version")
"""Name resolution, TLS roots, time zone, the dynamic linker's cache: what an app reads in /etc.
Everything else in /etc (shadow, sudoers, ssh keys, the host's passwd) stays out."""
UID_BASE, UID_RANGE = 300_000, 65_536
"""Instance uids when kiln runs as root: above the usual subuid ranges (100000-165535)."""


def instance_uid(instance_id: str) -> int:
    """The unprivileged uid an instance runs as (kiln as root); stable, so `exec` can reuse it."""
    return UID_BASE + zlib.crc32(instance_id.encode()) % UID_RANGE


def runtime_paths(root: Path) -> list[str]:
    """The base interpreter's prefix the image's venv links to (`home` in pyvenv.cfg), when it
    lies outside the system paths (pyenv, uv or a build under /root or /opt)."""
    try:
        cfg = (root / ".venv" / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return []
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            prefix = Path(value.strip()).resolve().parent
            if not _covered(str(prefix), SYSTEM_PATHS):
                return [str(prefix)]
    return []


def _covered(path: str, by: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


covered = _covered
"""`path` is one of `by` or lies below one (public for the bake sandbox)."""


def bwrap_works() -> bool:
    """True when bwrap is installed and the whole isolation chain works here."""
    return bwrap_problem() is None


def _missing_tools() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and not (shutil.which("setpriv") and shutil.which("unshare")):
        return "setpriv or unshare (util-linux) is not installed"
    return None


PROBE_TIMEOUT = 10.0
"""Seconds the probe's sandboxed `true` may take."""


@functools.cache
def bwrap_problem() -> str | None:
    """Why the isolation chain (bwrap; setpriv and unshare when root) cannot run here, or None:
    a sandboxed `true` is started (~12 ms, once per process)."""
    missing = _missing_tools()
    if missing is not None:
        return missing
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-probe-") as scratch:
            probe = Sandbox(Path("/usr"), Path(scratch), "bwrap", uid=UID_BASE)
            with probe.prepared("true", None) as (argv, fds):
                done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT,
                                      check=False, pass_fds=fds, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # (its message is the whole sandbox argv)
        return f"bubblewrap (bwrap) did not run `true` within {PROBE_TIMEOUT:g}s"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap (bwrap) does not start: {exc}"
    if done.returncode != 0:
        why = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        return f"bubblewrap (bwrap) fails here (exit code {done.returncode}: {why})"
    return None


NO_SANDBOX_HINT = ("install bubblewrap and util-linux (setpriv, unshare) and allow user "
                   "namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                   "user.max_user_namespaces > 0); or, knowing that steps and instances then run "
                   "unconfined, set `sandbox: none` at the top of kiln.yaml")


def choose(mode: Literal["auto", "bwrap", "none"]) -> SandboxMode:
    """The sandbox to use; never a silent fallback: without a working bwrap, only an explicit
    "none" (the spec's `sandbox: none`) runs instances unsandboxed. Only the tools are looked
    up here; whether the chain really works is learnt from the sandboxed start itself, and a
    start that fails is explained by `bwrap_problem` (`unusable`): the probe's own bwrap start
    is not part of every launch (docs/decisions/sandbox-probe.md)."""
    if mode == "none":
        return "none"
    missing = _missing_tools()
    if missing is not None:
        raise PlatformError(f"cannot sandbox instances: {missing}", hint=NO_SANDBOX_HINT)
    return "bwrap"


def unusable() -> PlatformError | None:
    """After a sandboxed start failed: the error to raise when the sandbox itself cannot run
    here (probed once per process), None when it can (the command's own failure)."""
    problem = bwrap_problem()
    if problem is None:
        return None
    return PlatformError(f"cannot sandbox instances: {problem}", hint=NO_SANDBOX_HINT)


@dataclass(frozen=True)
class LogFile:
    """Where an instance's output goes, and its rotation (spec `logs:`)."""

    path: Path
    max_bytes: int
    keep: int


@dataclass(frozen=True)
class Spawned:
    proc: subprocess.Popen[bytes]
    """The log pump: the process-group leader; it exits with the command's status."""
    pid: int
    """The app (host view)."""
    sandbox_pid: int | None
    """The outer bwrap: like the pump, it must outlive the app to reap it (not SIGTERMed)."""


@dataclass(frozen=True)
class Sandbox:
    root: Path
    """The image root: read-only."""
    scratch: Path
    """The instance's writable folder (HOME, TMPDIR)."""
    mode: SandboxMode
    uid: int | None = None
    """The uid to run as when kiln is root (default: derived from the scratch folder's name)."""
    read_only: tuple[str, ...] = ()
    """Extra host paths bound read-only (the base Python's prefix, a service's own choices)."""
    workdir: str = ""
    """The command's working directory, relative to `root` (the image's last `workdir` step)."""

    @property
    def cwd(self) -> Path:
        return self.root / self.workdir if self.workdir else self.root

    @property
    def run_uid(self) -> int:
        if os.geteuid() != 0:
            return os.geteuid()
        return self.uid if self.uid is not None else instance_uid(self.scratch.parent.name)

    def prepare_scratch(self) -> None:
        """Hand the scratch folder (and its tmp) to the instance's uid."""
        if self.mode != "bwrap" or os.geteuid() != 0:
            return
        uid = self.run_uid
        for path in (self.scratch, self.scratch / "tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, uid, uid)
                os.chmod(path, 0o700)

    @contextlib.contextmanager
    def prepared(self, command: str,
                 info_fd: int | None) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """(argv, fds to pass) for the command; the generated /etc/passwd and /etc/group go
        through pipes bwrap reads at start-up (closed on exit)."""
        inner = ["/bin/bash", "-c", command]
        if self.mode == "none":
            yield [shutil.which("bash") or "/bin/bash", "-c", command], ()
            return
        uid = self.run_uid
        passwd = (f"root:x:0:0::/:/usr/sbin/nologin\napp:x:{uid}:{uid}:kiln instance:"
                  f"{self.scratch}:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\n")
        group = f"root:x:0:\napp:x:{uid}:\nnogroup:x:65534:\n"
        fds: list[int] = []
        try:
            data_fds = [_data_pipe(passwd), _data_pipe(group)]
            fds += data_fds
            argv = self._bwrap_argv(uid, data_fds, info_fd)
            if os.geteuid() == 0:
                # bwrap (as root) built the view; now become the instance's uid for good, in a
                # user namespace of its own, with no capabilities and no way to regain any.
                argv += [shutil.which("setpriv") or "setpriv", f"--reuid={uid}",
                         f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                         "--bounding-set=-all", "--no-new-privs", "--",
                         shutil.which("unshare") or "unshare", "--user", f"--map-user={uid}",
                         f"--map-group={uid}", "--"]
            yield [*argv, *inner], (*fds, *([info_fd] if info_fd is not None else []))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _bwrap_argv(self, uid: int, data_fds: list[int], info_fd: int | None) -> list[str]:
        root, scratch = str(self.root), str(self.scratch)
        argv = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--hostname", "kiln-instance"]
        if os.geteuid() == 0:
            # Keep only what setpriv needs to switch uid; it drops those too.
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(uid),
                     "--cap-drop", "ALL"]
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                 "--perms", "0755", "--dir", "/etc"]
        for path in ETC_PATHS:
            if os.path.lexists(path) and os.path.exists(path):
                argv += ["--ro-bind", path, path]
        argv += ["--perms", "0644", "--ro-bind-data", str(data_fds[0]), "/etc/passwd",
                 "--perms", "0644", "--ro-bind-data", str(data_fds[1]), "/etc/group"]
        made: set[str] = {"/", "/tmp", "/etc", "/dev", "/proc", *SYSTEM_PATHS}
        extra = [p for p in self.read_only if os.path.exists(p)]
        for path, how in [*((p, "--ro-bind") for p in extra), (root, "--ro-bind"),
                          (scratch, "--bind")]:
            if _covered(path, SYSTEM_PATHS):
                continue
            for parent in reversed(Path(path).parents):
                name = str(parent)
                if name not in made and not _covered(name, [*SYSTEM_PATHS, *extra]):
                    argv += ["--perms", "0755", "--dir", name]  # bwrap's own would be 0700
                    made.add(name)
            argv += [how, path, path]
            made.add(path)
        argv += ["--chdir", str(self.cwd)]
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        return [*argv, "--"]

    def spawn(self, command: str, env: Mapping[str, str], log: LogFile,
              join: Sequence[str] = ()) -> Spawned:
        """Start the command detached under the log pump (own session, stdin /dev/null, output
        rotated into `log`); `join` prefixes the sandbox's argv (the cgroup join), so the
        sandbox and everything it starts begin inside the instance's cgroup."""
        read_fd = write_fd = -1
        if self.mode == "bwrap":
            read_fd, write_fd = os.pipe()
        try:
            with self.prepared(command, write_fd if write_fd >= 0 else None) as (argv, fds):
                pump = [sys.executable, "-I", "-S", logpump.__file__, str(log.path),
                        str(log.max_bytes), str(log.keep),
                        ",".join(map(str, fds)) if fds else "-", "--"]
                proc = subprocess.Popen(
                    [*pump, *join, *argv], cwd=self.cwd, env=dict(env),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=fds)
        except OSError as exc:
            if read_fd >= 0:
                os.close(read_fd)
            raise PlatformError(f"cannot start instance command in {self.cwd}: {exc}") from exc
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        deadline = time.monotonic() + 10.0
        if self.mode == "none":
            app = _first_child(proc.pid, proc, deadline)
            return Spawned(proc, app if app is not None else proc.pid, None)
        try:
            init = _read_child_pid(read_fd, proc, deadline)
        finally:
            os.close(read_fd)
        if init is None:
            # bwrap never reported its child: it could not build the sandbox, or it ran and
            # the command died at once. Which one decides between a clear error and a launch
            # whose instance fails its health check.
            error = unusable()
            if error is not None:
                kill_and_reap(proc)
                raise error
            return Spawned(proc, proc.pid, None)
        outer = _parent(init)
        app = _first_child(init, proc, deadline)
        return Spawned(proc, app if app is not None else init, outer)

    def run(self, command: str, env: Mapping[str, str], timeout: float,
            join: Sequence[str] = ()) -> ExecResult:
        """Run to completion, capturing output; the whole process group dies on timeout.
        `join` as for `spawn` (an `exec` runs inside the instance's cgroup and limits)."""
        try:
            with self.prepared(command, None) as (argv, fds):
                proc = subprocess.Popen([*join, *argv], cwd=self.cwd, env=dict(env),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True,
                                        pass_fds=fds)
        except OSError as exc:
            raise PlatformError(f"cannot run command in {self.cwd}: {exc}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            note = f"\nkiln: command timed out after {timeout:g}s and was killed\n"
            return ExecResult(124, out.decode(errors="replace"),
                              err.decode(errors="replace") + note)
        if proc.returncode != 0 and self.mode == "bwrap":
            error = unusable()  # the sandbox, not the command, failed: say so, once
            if error is not None:
                raise error
        return ExecResult(proc.returncode, out.decode(errors="replace"),
                          err.decode(errors="replace"))


def _data_pipe(text: str) -> int:
    """A pipe's read end already holding `text` (small: fits the pipe buffer)."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, text.encode())
    finally:
        os.close(write_fd)
    return read_fd


data_pipe = _data_pipe


def _read_child_pid(fd: int, proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """bwrap writes {"child-pid": N, ...} to --info-fd, then closes it."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    try:
        pid = json.loads(data.decode()).get("child-pid")
    except (ValueError, UnicodeDecodeError):
        return None
    return pid if isinstance(pid, int) else None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _first_child(pid: int, proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The namespace init's child: the sandboxed command (it execs through to the app)."""
    path = f"/proc/{pid}/task/{pid}/children"
    pause = 0.001
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="ascii") as fh:
                children = fh.read().split()
        except OSError:
            return None
        if children:
            return int(children[0])
        if proc.poll() is not None:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return None


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a spawned process group and collect its leader (bounded wait)."""
    kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, from /proc."""
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members
