"""Value types a test run produces: one CheckResult per check, one SuiteResult per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CheckKind = Literal["http", "command", "port", "file", "testinfra"]


@dataclass(frozen=True)
class CaseResult:
    """One pytest test inside a testinfra check (parsed from junitxml)."""

    name: str
    passed: bool
    detail: str = ""
    duration: float = 0.0
    skipped: bool = False


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of `images.<name>.tests`, in spec order (`index` is 0-based)."""

    index: int
    kind: CheckKind
    description: str
    passed: bool
    detail: str
    """One line: why it failed, or what was seen when it passed."""
    duration: float
    cases: tuple[CaseResult, ...] = ()
    """testinfra only: the individual tests."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index, "kind": self.kind, "description": self.description,
            "passed": self.passed, "detail": self.detail, "duration": round(self.duration, 4),
        }
        if self.cases:
            data["cases"] = [
                {"name": c.name, "passed": c.passed, "skipped": c.skipped, "detail": c.detail,
                 "duration": round(c.duration, 4)}
                for c in self.cases
            ]
        return data


@dataclass(frozen=True)
class SuiteResult:
    """Every check of one image, run against one throwaway instance."""

    passed: bool
    results: tuple[CheckResult, ...]
    started_at: float
    """Unix seconds."""
    finished_at: float
    suite_digest: str
    healthy_at: float | None = None
    """When the instance passed its health check (None: never, or not needed)."""
    instance_id: str | None = None
    log_tail: tuple[str, ...] = ()
    """The test instance's last log lines when a check failed: usually the cause."""

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)
