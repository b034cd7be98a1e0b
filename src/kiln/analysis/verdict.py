"""The judge's answer, shared by the statistics (which produce it) and the rollout (which acts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pass", "fail", "undecided"]
Figure = float | int | str | None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    """One human line, e.g. '5xx 6.1% vs 1.0%, p=0.0003; after 212 canary requests'."""
    figures: dict[str, Figure] = field(default_factory=dict)
