"""The judge run again over a rollout's recorded evidence, under other settings: per step, the
verdict those settings give at the moment the recorded decision was made, next to it.

Pure: a `Recording` (kiln.analysis.recording), an `Analysis` and the recorded decisions in, a
`Replay` out. The replayed judge is one test over the whole rollout, like the live one: it looks
at every moment something was recorded (each window's start, each metric answer) and its first
"fail" is final. A step is judged on everything whose window began before the recorded decision
(the live judge had read part of that second): so the replay sees what the live judge saw, to
within the access log's lag of about a second (docs/judge.md, "Replay").

A metric with no data at a step says why in words: how long after the canary took traffic the
step (or the rollout) ended, before the metric's query had any answer for it — kiln's
Prometheus sees a new instance only after its discovery tick (docs/decisions/replay-margin.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
        open_ = [s for s in self.steps if s.replayed != "pass"]
        said = f"undecided at step(s) {', '.join(str(s.step + 1) for s in open_)}"
        missing = sorted({f"{e.metric} {e.measured.removeprefix('no ')}" for s in open_
                          for e in s.explained if e.measured.startswith(NO_DATA)})
        return said + (f": no {'; no '.join(missing)}" if missing else "")


NO_DATA = ("no data for", "no values for")


def _first_canary_traffic(rec: Recording) -> float | None:
    """When the judge first counted a canary request (its first window's start)."""
    return min((start for side, start in rec.windows if side == 0), default=None)


def no_data_words(explained: Explained, figures: Mapping[str, Any], at: float,
                  since: float | None, what: str) -> Explained:
    """A metric undecided for want of data, said in words (`what`: "the rollout ended" at a
    rollback, else "step N was decided"): which side had none, and how long after the canary
    took traffic that was."""
    g = {k.split(":", 2)[2]: v for k, v in figures.items()
         if k.startswith(f"metric:{explained.metric}:")}
    if explained.outcome != "undecided" or not g:
        return explained
    none_c = not float(g.get("canary_n") or 0) > 0
    none_b = not float(g.get("baseline_n") or 0) > 0
    if not (none_c or none_b):
        return explained
    kind = "values" if g.get("kind") == "value" else "data"
    side = "either release" if none_c and none_b else "the canary" if none_c else "the baseline"
    took = "" if since is None else f" {max(0.0, at - since):.1f} s after the canary took traffic"
    why = (f"{what}{took}, before the metric's query had any answer for {side}"
           + (" (Prometheus needs two scrapes of a new instance)" if none_c else ""))
    return replace(explained, measured=f"no {kind} for {side}", why=why)


def replay(rec: Recording, analysis: Analysis, decisions: Sequence[Mapping[str, Any]]
           ) -> Replay:
    judge = Judge(analysis, rec.canary, rec.baseline)
    since = _first_canary_traffic(rec)
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
        step = int(d.get("step") or 0)
        what = ("the rollout ended" if d.get("outcome") == "fail"
                else f"step {step + 1} was decided")
        words = [no_data_words(e, v.figures, t, since, what) for e in explain(v.figures)]
        reason = v.reason
        for e in words:  # the verdict's own "no data yet", made as plain as the words
            if e.measured.startswith(NO_DATA):
                reason = reason.replace(f"{e.metric}: no data yet", f"{e.metric}: {e.measured}")
        steps.append(StepReplay(step, int(d.get("weight") or 0), t, str(d.get("outcome")),
                                str(d.get("reason") or ""), v.outcome, reason, words,
                                dict(v.figures)))
    return Replay(steps)
