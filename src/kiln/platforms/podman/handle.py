"""What only the podman platform knows about an instance, kept in `Instance.handle`."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.platforms.base import Instance


@dataclass(frozen=True)
class PodmanHandle:
    name: str
    """The container's name (kiln-<project>-<home hash>-<instance id>)."""
    container: str | None = None
    """The container's short id (12 hex digits), once podman has created it."""
    pid: int | None = None
    """The container's main process as the host sees it (fast liveness without calling podman)."""
    pid_start: str | None = None
    workdir: str | None = None
    """The instance's folder on the host (its log)."""

    @classmethod
    def of(cls, instance: Instance) -> PodmanHandle:
        h = instance.handle
        pid = h.get("pid")
        return cls(h.get("name", ""), h.get("container"),
                   int(pid) if pid and pid.isdigit() else None, h.get("pid_start"),
                   h.get("workdir"))

    def to_map(self) -> dict[str, str]:
        """container (its short id) first: it is the handle's label in status tables."""
        out = {"container": self.container} if self.container else {}
        out["name"] = self.name
        if self.pid is not None:
            out["pid"] = str(self.pid)
        if self.pid_start is not None:
            out["pid_start"] = self.pid_start
        if self.workdir is not None:
            out["workdir"] = self.workdir
        return out
