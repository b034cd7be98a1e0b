"""Run a command with the image read-only and only a scratch folder writable.

With bubblewrap the whole filesystem is bound read-only (the image root included, at its own path
so the venv's absolute paths keep working), the scratch folder is bound writable, /dev, /proc and
/tmp are fresh, and the network namespace is shared so loopback addresses stay reachable. Without
bubblewrap the command runs as a plain process; the image store's files are already read-only.

bwrap stays as the parent of the command (it is the process group leader); `--info-fd` tells us
the pid of the command itself, which is the pid kiln records and observes.
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from kiln.errors import PlatformError
from kiln.platforms.base import ExecResult

SandboxMode = Literal["bwrap", "none"]


@functools.cache
def bwrap_works() -> bool:
    """True when bwrap is installed and can create a mount namespace here."""
    path = shutil.which("bwrap")
    if path is None:
        return False
    try:
        done = subprocess.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "true"],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def choose(mode: Literal["auto", "bwrap", "none"]) -> SandboxMode:
    if mode == "none":
        return "none"
    if bwrap_works():
        return "bwrap"
    if mode == "bwrap":
        raise PlatformError("bubblewrap (bwrap) is not usable on this machine",
                            hint="install bubblewrap or use sandbox='auto'")
    return "none"


@dataclass(frozen=True)
class Sandbox:
    root: Path
    """The image root: read-only, the command's working directory."""
    scratch: Path
    """The instance's writable folder (HOME, TMPDIR)."""
    mode: SandboxMode

    def argv(self, command: str, info_fd: int | None = None) -> list[str]:
        # bash execs a lone simple command itself, so the app is the process we record.
        inner = [shutil.which("bash") or "/bin/bash", "-c", command]
        if self.mode == "none":
            return inner
        root, scratch = str(self.root), str(self.scratch)
        argv = [shutil.which("bwrap") or "bwrap",
                "--ro-bind", "/", "/",
                "--dev", "/dev",
                "--proc", "/proc",
                "--tmpfs", "/tmp",
                "--ro-bind", root, root,
                "--bind", scratch, scratch,
                "--chdir", root]
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        return [*argv, "--", *inner]

    def spawn(self, command: str, env: Mapping[str, str],
              log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
        """Start the command detached (own session, stdin /dev/null, output to `log`).

        Returns the Popen (the group leader) and the pid of the command itself.
        """
        read_fd = write_fd = -1
        pass_fds: tuple[int, ...] = ()
        if self.mode == "bwrap":
            read_fd, write_fd = os.pipe()
            pass_fds = (write_fd,)
        try:
            proc = subprocess.Popen(
                self.argv(command, write_fd if self.mode == "bwrap" else None),
                cwd=self.root, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
            )
        except OSError as exc:
            raise PlatformError(f"cannot start instance command in {self.root}: {exc}") from exc
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        if self.mode == "none":
            return proc, proc.pid
        try:
            child = _read_child_pid(read_fd, proc, deadline=time.monotonic() + 10.0)
        finally:
            os.close(read_fd)
        return proc, child if child is not None else proc.pid

    def run(self, command: str, env: Mapping[str, str], timeout: float) -> ExecResult:
        """Run to completion, capturing output; the whole process group dies on timeout."""
        try:
            proc = subprocess.Popen(self.argv(command), cwd=self.root, env=dict(env),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise PlatformError(f"cannot run command in {self.root}: {exc}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            note = f"\nkiln: command timed out after {timeout:g}s and was killed\n"
            return ExecResult(124, out.decode(errors="replace"),
                              err.decode(errors="replace") + note)
        return ExecResult(proc.returncode, out.decode(errors="replace"),
                          err.decode(errors="replace"))


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


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
