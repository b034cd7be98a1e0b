"""A buildah working container: the image being built, open for a provisioner, then committed.

Why buildah and not a running podman container: a buildah working container runs nothing until
asked, and `buildah commit` keeps the image's own config (CMD, ENV, WORKDIR, labels) untouched,
where `podman commit` of a container kept alive by `sleep` would record that command and the
container's own environment. buildah shares podman's image storage, so the committed image is at
once visible to podman. See docs/decisions/provisioners.md.

The container is always removed, also when the step fails or is interrupted: a failed step leaves
no image and no container behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from kiln.bake.provisioners.process import Finished, OnLine, stream
from kiln.errors import BakeError
from kiln.state.lock import pid_alive

PREFIX = "kiln-provision-"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def buildah() -> str:
    """The buildah executable, or one line saying how to get it."""
    found = shutil.which("buildah", path=os.environ.get("PATH", "") + ":" + SYSTEM_PATH)
    if found is None:
        raise BakeError("ansible and puppet steps need buildah, which is not installed",
                        hint="apt-get install buildah")
    return found


def _run(argv: Sequence[str], what: str, timeout: float = 300.0) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                             check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BakeError(f"{what}: buildah did not answer in {timeout:g}s") from None
    if out.returncode != 0:
        message = out.stderr.strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        raise BakeError(f"{what}: {message[0]}")
    return out.stdout.strip()


def sweep(exe: str) -> None:
    """Remove the working containers a killed kiln left (their name holds its dead pid)."""
    with contextlib.suppress(BakeError):
        names = _run([exe, "containers", "--format", "{{.ContainerName}}"],
                     "cannot list working containers", timeout=60).split()
        for name in names:
            pid = name.removeprefix(PREFIX).partition("-")[0]
            if name.startswith(PREFIX) and pid.isdigit() and not pid_alive(int(pid), None):
                _run([exe, "rm", name], f"cannot remove working container {name}")


class WorkContainer:
    """One buildah working container. Open it with `WorkContainer.open`."""

    def __init__(self, exe: str, name: str) -> None:
        self.exe = exe
        self.name = name

    @classmethod
    @contextlib.contextmanager
    def open(cls, image: str, *, network: str = "host") -> Iterator[WorkContainer]:
        """A working container from `image`, removed on the way out whatever happened.

        `network` is the network of its commands: the host's by default, so package managers
        reach the same archive the host does (nothing listens in a working container).
        """
        exe = buildah()
        sweep(exe)
        name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _run([exe, "from", "--quiet", "--pull-never", f"--network={network}", "--name", name,
              image], f"cannot open image {image} for provisioning")
        try:
            yield cls(exe, name)
        finally:
            with contextlib.suppress(BakeError):
                _run([exe, "rm", name], f"cannot remove working container {name}")

    def run_argv(self, argv: Sequence[str], *, volumes: Sequence[tuple[Path, str]] = (),
                 env: dict[str, str] | None = None) -> list[str]:
        """The buildah command line that runs `argv` in the container."""
        cmd = [self.exe, "run"]
        for source, target in volumes:
            cmd += ["-v", f"{source}:{target}:ro"]
        for key, value in sorted((env or {}).items()):
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, self.name, "--", *argv]

    def run(self, argv: Sequence[str], *, on_line: OnLine, timeout: float,
            volumes: Sequence[tuple[Path, str]] = (), env: dict[str, str] | None = None
            ) -> Finished:
        """Run `argv` inside the container, streaming its output."""
        return stream(self.run_argv(argv, volumes=volumes, env=env),
                      env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, timeout=timeout,
                      on_line=on_line)

    def shell(self, script: str, *, timeout: float = 600.0, on_line: OnLine | None = None
              ) -> Finished:
        """Run a /bin/sh script inside the container."""
        return self.run(["/bin/sh", "-c", script], on_line=on_line or (lambda _l: None),
                        timeout=timeout)

    def commit(self, tag: str) -> str:
        """Commit the container as `tag`; the new image's id."""
        return _run([self.exe, "commit", "--quiet", "--rm=false", self.name, tag],
                    f"cannot commit working container {self.name}")
