"""Run a bake's steps so that they can write only inside the image being built.

Every process a local bake starts on the tree (venv creation, `copy` and `run:` steps, byte
compilation with the image's own python) runs in a bubblewrap sandbox that
- runs as an unprivileged uid (kiln as root: `BAKE_UID`, reached as instances reach theirs,
  through `setpriv` and `unshare --user`; kiln as a user: bwrap's own user namespace), with no
  capabilities and `no_new_privs`;
- sees the system paths (`SYSTEM_PATHS`, a few `ETC_PATHS`: resolver and TLS roots, so package
  installs still work), the base interpreter's prefix and a step's copy source, all read-only;
  the image root and the bake's scratch folder writable, each at its own path (the venv's
  absolute paths keep working); a fresh /dev, /proc and a private /tmp. Nothing else of the
  host: `.kiln/`, /root, /home and the project's other files are simply not there;
- has its own pid namespace (`--die-with-parent`: when kiln or the step's leader goes, the
  kernel kills everything left, `setsid` or not), ipc and uts namespaces, and its own empty
  network namespace when the image says `network: none`.

Symlinks a step leaves in the tree therefore resolve inside the sandbox's view: an absolute
link to /etc names the sandbox's read-only /etc, not the host's. kiln's own work on the tree
between steps (copy targets, the venv's relocation, the workdir) resolves paths against the
image root and refuses what leaves it (`contained`).

`mode="none"` (the spec's `sandbox: none`) runs everything as plain processes, as kiln's user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import BakeError
from kiln.platforms.local.sandbox import (
    ETC_PATHS,
    NO_SANDBOX_HINT,
    SYSTEM_PATHS,
    UID_BASE,
    SandboxMode,
    bwrap_problem,
    covered,
    data_pipe,
)

BAKE_UID = UID_BASE - 1
"""The uid bake steps run as when kiln is root: below every instance uid, above subuid ranges."""


def require(mode: SandboxMode) -> SandboxMode:
    """`mode`, after checking that bubblewrap works here when it is asked for (BakeError)."""
    if mode == "bwrap":
        problem = bwrap_problem()
        if problem is not None:
            raise BakeError(f"cannot sandbox the bake: {problem}", hint=NO_SANDBOX_HINT)
    return mode


def run_uid(mode: SandboxMode) -> int:
    """The uid the tree belongs to while it is built."""
    if mode == "bwrap" and os.geteuid() == 0:
        return BAKE_UID
    return os.geteuid()


def contained(root: Path, path: Path) -> bool:
    """True when `path`, every symlink on it resolved, stays inside `root` (also resolved)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def own_tree(root: Path, uid: int) -> None:
    """Hand `root` and everything below it (never following a symlink) to `uid`."""
    if os.geteuid() != 0:
        return
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, uid)


@dataclass(frozen=True)
class BakeSandbox:
    root: Path
    """The image root: the one place a step writes to."""
    scratch: Path
    """HOME and TMPDIR of the steps (writable; not part of the image)."""
    mode: SandboxMode
    network: bool = True
    """False: the steps get an empty network namespace (`network: none`)."""
    read_only: tuple[str, ...] = ()
    """Host paths bound read-only at their own path (the base interpreter's prefix)."""

    @property
    def uid(self) -> int:
        return run_uid(self.mode)

    def prepare(self) -> None:
        """Hand the image root and the scratch folder to the step uid (kiln as root)."""
        if self.mode != "bwrap" or os.geteuid() != 0:
            return
        for path in (self.scratch, self.scratch / "home", self.scratch / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
            os.lchown(path, self.uid, self.uid)
        if self.root.is_dir() and self.root.stat().st_uid != self.uid:
            own_tree(self.root, self.uid)  # a snapshot made before bakes were sandboxed

    @contextlib.contextmanager
    def prepared(self, inner: Sequence[str], *, source: Path | None = None
                 ) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """(argv, fds to pass) running `inner` in the sandbox; `source` is bound read-only at
        /kiln-source (a copy step's input)."""
        if self.mode == "none":
            yield list(inner), ()
            return
        uid = self.uid
        passwd = (f"root:x:0:0::/:/usr/sbin/nologin\nbuild:x:{uid}:{uid}:kiln bake:"
                  f"{self.scratch / 'home'}:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\n")
        group = f"root:x:0:\nbuild:x:{uid}:\nnogroup:x:65534:\n"
        fds: list[int] = []
        try:
            fds += [data_pipe(passwd), data_pipe(group)]
            argv = self._bwrap_argv(uid, fds, source)
            if os.geteuid() == 0:
                argv += [shutil.which("setpriv") or "setpriv", f"--reuid={uid}",
                         f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                         "--bounding-set=-all", "--no-new-privs", "--",
                         shutil.which("unshare") or "unshare", "--user", f"--map-user={uid}",
                         f"--map-group={uid}", "--"]
            yield [*argv, *inner], tuple(fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _bwrap_argv(self, uid: int, data_fds: list[int], source: Path | None) -> list[str]:
        argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-pid",
                "--unshare-ipc", "--unshare-uts", "--hostname", "kiln-bake"]
        if not self.network:
            argv.append("--unshare-net")
        if os.geteuid() == 0:
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
        binds = [*((p, "--ro-bind") for p in extra), (str(self.root), "--bind"),
                 (str(self.scratch), "--bind")]
        for path, how in binds:
            if covered(path, SYSTEM_PATHS):
                continue
            for parent in reversed(Path(path).parents):
                name = str(parent)
                if name not in made and not covered(name, [*SYSTEM_PATHS, *extra]):
                    argv += ["--perms", "0755", "--dir", name]
                    made.add(name)
            argv += [how, path, path]
            made.add(path)
        if source is not None:
            argv += ["--ro-bind", str(source), "/kiln-source"]
        return [*argv, "--chdir", str(self.root), "--"]

    def run(self, inner: Sequence[str], *, env: Mapping[str, str], timeout: float,
            stdin: bytes = b"", source: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `inner` to completion in the sandbox, output captured (kiln's own helpers)."""
        try:
            with self.prepared(inner, source=source) as (argv, fds):
                done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                      check=False, env=dict(env), pass_fds=fds,
                                      start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise BakeError(f"{inner[0]} timed out after {timeout:g}s in the bake sandbox") from exc
        except OSError as exc:
            raise BakeError(f"cannot start {inner[0]} in the bake sandbox: {exc}") from exc
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"))


def in_dir(cwd: Path, argv: Sequence[str]) -> list[str]:
    """`argv` started in `cwd`, which is created first (inside the sandbox, as the step uid: a
    workdir that runs through a symlink lands wherever the sandbox lets it, never on the host)."""
    return ["/bin/sh", "-c", 'mkdir -p -- "$0" && cd -- "$0" && exec "$@"', str(cwd), *argv]
