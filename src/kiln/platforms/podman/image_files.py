"""File checks on podman images: the image's own filesystem, read through an unstarted container.

`podman cp CONTAINER:PATH -` writes a tar of PATH as the container sees it: from the image's
layers, with symlinks resolved inside the container's root (what stat() in a chroot does, so an
absolute link like /etc/localtime -> /usr/share/zoneinfo/... is followed in the image, never on
the host). It works for rootless podman too, needs no tool inside the image, and reads files the
instance's unprivileged user could not. The container is created, never started, and removed
when the checks are done (`sweep()` removes one a killed kiln left behind).
"""

from __future__ import annotations

import contextlib
import posixpath
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Sequence

from kiln.errors import PlatformError
from kiln.platforms.podman import containerfile, engine
from kiln.verify.checks import FileStat

CP_TIMEOUT = 60.0
_ABSENT = ("could not be found", "no such file or directory")


def container_path(path: str) -> str:
    """A check's path in the container: relative to the image root (/app), or absolute."""
    full = posixpath.normpath(posixpath.join(containerfile.ROOT, path))
    return "/" + full.lstrip("/")


class ContainerFiles:
    """ImageFiles (kiln.verify.checks) of the image an unstarted container was created from."""

    def __init__(self, container: str) -> None:
        self.container = container

    @classmethod
    @contextlib.contextmanager
    def of(cls, ref: str, name: str, labels: Sequence[str] = ()) -> Iterator[ContainerFiles]:
        """A container of image `ref` named `name` for the time of the block."""
        engine.run(["create", "--pull=never", "--name", name, *labels, ref, "kiln-file-check"],
                   timeout=120.0, what=f"podman create of {ref[:19]} for file checks")
        try:
            yield cls(name)
        finally:
            engine.run(["rm", "-f", name], timeout=60.0, check=False)

    def stat(self, path: str) -> FileStat | None:
        found = self._copy(path, content=False)
        return None if found is None else found[0]

    def read(self, path: str) -> bytes:
        found = self._copy(path, content=True)
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return found[1]

    def _copy(self, path: str, *, content: bool) -> tuple[FileStat, bytes] | None:
        """The first tar member of `podman cp` (the path itself) and, if asked, its content.
        The rest of a folder's tar is not read: closing the pipe ends podman cp."""
        where = container_path(path)
        proc = subprocess.Popen([engine.binary(), "cp", f"{self.container}:{where}", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timer = threading.Timer(CP_TIMEOUT, proc.kill)
        timer.start()
        member: tarfile.TarInfo | None = None
        data = b""
        try:
            assert proc.stdout is not None
            with contextlib.suppress(tarfile.TarError), \
                    tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                member = tar.next()
                if member is not None and content and member.isreg():
                    extracted = tar.extractfile(member)
                    data = extracted.read() if extracted is not None else b""
            proc.stdout.close()
            _, err = proc.communicate(timeout=CP_TIMEOUT)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if member is not None:
            return _stat_of(member), data
        reason = err.decode(errors="replace")
        if proc.returncode != 0 and any(word in reason.lower() for word in _ABSENT):
            return None
        raise PlatformError(f"podman cp of {where} from {self.container}: "
                            f"{engine.last_line(reason) if reason.strip() else 'no output'}")


def _stat_of(member: tarfile.TarInfo) -> FileStat:
    kind = (stat.S_IFDIR if member.isdir() else stat.S_IFLNK if member.issym()
            else stat.S_IFREG if member.isreg() else stat.S_IFIFO if member.isfifo()
            else stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else 0)
    return FileStat(kind | stat.S_IMODE(member.mode), member.size)
