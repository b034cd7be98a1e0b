"""What only the local platform knows about an instance, kept in `Instance.handle`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kiln.platforms.base import Instance


@dataclass(frozen=True)
class LocalHandle:
    pid: int | None = None
    pid_start: str | None = None
    """Process start time (from /proc/PID/stat) so a reused pid is never mistaken for ours."""
    workdir: str | None = None

    @classmethod
    def of(cls, instance: Instance) -> LocalHandle:
        return cls.parse(instance.handle)

    @classmethod
    def parse(cls, handle: Mapping[str, str]) -> LocalHandle:
        pid = handle.get("pid")
        return cls(int(pid) if pid and pid.isdigit() else None, handle.get("pid_start"),
                   handle.get("workdir"))

    def to_map(self) -> dict[str, str]:
        """pid first: it is the handle's label in status tables."""
        out: dict[str, str] = {}
        if self.pid is not None:
            out["pid"] = str(self.pid)
        if self.pid_start is not None:
            out["pid_start"] = self.pid_start
        if self.workdir is not None:
            out["workdir"] = self.workdir
        return out
