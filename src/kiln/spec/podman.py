"""Shapes of kiln.yaml used by `platform: podman`: a Debian base built from the archive; and an
instance's limits and log rotation (both platforms). Pure: whether the suite or packages exist is
found out by the bake."""

# No `from __future__ import annotations`: pydantic would compile and evaluate every annotation
# string at start-up (part of every command's, so every rollout's, overhead); names that
# exist only later are quoted.
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DebianBase(_Model):
    """`base: {debian: bookworm, packages: [python3]}`: a minbase root file system from the
    Debian archive (mmdebstrap), imported as a base image and cached by these inputs."""

    debian: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]] = Field(
        default_factory=list)


def parse_memory(value: Any) -> Any:
    """'256M', '1g', '512MiB' or a number of bytes -> bytes; None (no limit) stays None, so a
    release's stored config (dumped with memory: null) validates again."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a size like 256M or 1G")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _MEMORY_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(float(m.group(1)) * _UNITS[unit])
    raise ValueError(f"expected a size like 256M or 1G, got {value!r}")


DEFAULT_MEMORY = 512 * 1024**2
"""Memory limit of an instance whose spec sets none (local cgroup, podman --memory)."""
DEFAULT_PIDS = 512
"""Process/thread limit of an instance whose spec sets none (local pids cgroup, --pids-limit)."""
DEFAULT_LOG_SIZE = 10 * 1024**2
DEFAULT_LOG_KEEP = 2


class Resources(_Model):
    """Limits of one instance: a cgroup per local instance, --cpus/--memory/--pids-limit on
    podman. Unset (null) means the platform default (`DEFAULT_*`), so a release recorded before
    a key existed still runs limited; cpus unset means no cpu quota."""

    cpus: float | None = Field(None, gt=0, le=1024)
    memory: Annotated[int | None, BeforeValidator(parse_memory)] = None
    """Bytes; written like 256M or 1G. Default 512M."""
    pids: int | None = Field(None, ge=16, le=1_000_000)
    """Processes and threads the instance may have at once. Default 512."""

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, v: int | None) -> int | None:
        if v is not None and v < 6 * 1024 * 1024:
            raise ValueError(f"memory must be at least 6M (podman's floor), got {v} bytes")
        return v

    @property
    def memory_limit(self) -> int:
        return self.memory if self.memory is not None else DEFAULT_MEMORY

    @property
    def pids_limit(self) -> int:
        return self.pids if self.pids is not None else DEFAULT_PIDS


class Logs(_Model):
    """`logs: {max_size: 10M, keep: 2}`: an instance's log is rotated at max_size, keeping
    `keep` older files (log.1 ... log.keep), so it never holds more than (keep+1) x max_size."""

    max_size: Annotated[int, BeforeValidator(parse_memory)] = Field(DEFAULT_LOG_SIZE,
                                                                    ge=64 * 1024)
    """Bytes; written like 10M. At least 64K."""
    keep: int = Field(DEFAULT_LOG_KEEP, ge=0, le=20)
