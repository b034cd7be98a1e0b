"""The judge run again over a rollout's recorded evidence, under other settings: per step, the
verdict those settings give at the moment the recorded decision was made, next to it.

Pure: a `Recording` (kiln.analysis.recording), an `Analysis` and the recorded decisions in, a
`Replay` out. The replayed judge is one test over the whole rollout, like the live one: it looks
at every moment something was recorded (each window's start, each metric answer) and its first
"fail" is final. A step is judged on everything whose window began before the recorded decision
(the live judge had read part of that second): so the replay sees what the live judge saw, to
within the access log's lag of about a second (docs/judge.md, "Replay").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.analysis.explain import Explained, explain
from kiln.analysis.judge import Judge
from kiln.analysis.recording import Recording, by_time
from kiln.analysis.verdict import Verdict
from kiln.spec.models import Analysis

#: Recorded decisions a replay puts its verdict next to: the judge's (and a hand's) step ends.
JUDGED = frozenset({"pass", "fail", "undecided", "would_fail", "dry_run", "promote"})


@dataclass(frozen=True)
class StepReplay:
    step: int
    weight: int
    time: float
    recorded: str
    recorded_reason: str
    replayed: str
    reason: str
    explained: list[Explained]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # name/value pairs: a metric's figures are named after it (`metric:<name>:p`), and
        # the schema lists every key of an object.
        figs = [{"name": k, "value": v} for k, v in sorted(self.figures.items())
                if (isinstance(v, int | float | str) and not isinstance(v, bool)) or v is None]
        return {"step": self.step + 1, "weight": self.weight, "time": self.time,
                "recorded": self.recorded, "recorded_reason": self.recorded_reason,
                "replayed": self.replayed, "reason": self.reason,
                "metrics": [e.to_json() for e in self.explained], "figures": figs}


@dataclass(frozen=True)
class Replay:
    steps: list[StepReplay]

    @property
    def outcome(self) -> str:
        """fail if the replayed judge failed at any recorded step, pass if it passed every
        one, else undecided."""
        outs = [s.replayed for s in self.steps]
        if "fail" in outs:
            return "fail"
        return "pass" if outs and all(o == "pass" for o in outs) else "undecided"

    def summary(self) -> str:
        for s in self.steps:
            if s.replayed == "fail":
                return f"would have rolled back at step {s.step + 1}: {s.reason}"
        if self.outcome == "pass":
            return f"would have passed every recorded step ({len(self.steps)})"
        open_ = [str(s.step + 1) for s in self.steps if s.replayed != "pass"]
        return f"undecided at step(s) {', '.join(open_)}"


def replay(rec: Recording, analysis: Analysis, decisions: Sequence[Mapping[str, Any]]
           ) -> Replay:
    judge = Judge(analysis, rec.canary, rec.baseline)
    events = list(by_time(rec).items())
    i = 0
    last: Verdict | None = None
    steps = []
    cuts = sorted((d for d in decisions if str(d.get("outcome")) in JUDGED
                   and isinstance(d.get("time"), int | float)), key=lambda d: float(d["time"]))
    for d in cuts:
        t = float(d["time"])
        # Everything known by the decision; a window that began before it counts whole.
        while i < len(events) and events[i][0] <= t:
            at, (windows, counts, values) = events[i]
            judge.add_windows(windows)
            for name, side, failures, total in counts:
                judge.set_metric_counts(name, (rec.canary, rec.baseline)[side], failures, total)
            for name, side, value in values:
                judge.add_metric_values(name, (rec.canary, rec.baseline)[side], [value])
            last = judge.verdict(at)
            i += 1
        v = judge.verdict(t) if last is None or last.outcome != "fail" else last
        steps.append(StepReplay(int(d.get("step") or 0), int(d.get("weight") or 0), t,
                                str(d.get("outcome")), str(d.get("reason") or ""), v.outcome,
                                v.reason, explain(v.figures), dict(v.figures)))
    return Replay(steps)
