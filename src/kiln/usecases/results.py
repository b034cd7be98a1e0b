"""What the use cases report: progress events and per-service outcomes, for the CLI to render."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import RolledBack
from kiln.platforms.base import Instance, StepEvent
from kiln.rollout.decide import Status


@dataclass
class DeployEvent:
    """Progress of `deploy`, for the CLI to render."""

    service: str
    kind: str  # bake | test | release | status | settled | uptodate
    message: str
    status: Status | None = None
    step: StepEvent | None = None


@dataclass
class ServiceResult:
    service: str
    release: str | None
    outcome: str  # promoted | rolled_back | aborted | failed | unchanged | healed | signalled
    reason: str | None = None
    rollout_id: int | None = None
    report: str | None = None
    seconds: float = 0.0


@dataclass
class DeployResult:
    services: list[ServiceResult] = field(default_factory=list)

    @property
    def rolled_back(self) -> list[ServiceResult]:
        return [s for s in self.services if s.outcome in ("rolled_back", "failed", "aborted")]


@dataclass
class LogSource:
    """One instance's log file, for `kiln logs`."""

    instance: str
    kind: str  # service | dev | test
    state: str
    path: Path
    remote: Instance | None = None
    """Set when the log is read from the running instance itself (RemoteLogs: aws), not
    from `path`."""


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of an instance's log (nothing when it cannot be read)."""
    from kiln.logpump import tail

    data = tail(str(path), 64_000)  # across the rotation: log.1 when log was just started
    return [ln.decode(errors="replace") for ln in data.splitlines()[-lines:]]


def raise_for(result: DeployResult) -> None:
    """Exit 3 when the judge or a health gate rolled a service back."""
    bad = result.rolled_back
    if bad:
        words = {"rolled_back": "rolled back", "failed": "failed", "aborted": "aborted"}
        detail = "; ".join(
            " ".join(filter(None, [s.service, s.release, words.get(s.outcome, s.outcome)]))
            + (f": {s.reason}" if s.reason else "") for s in bad)
        raise RolledBack(detail)
