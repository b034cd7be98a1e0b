"""The rollout as a step machine: `decide(status, observation) -> (status, actions)`. Pure.

Like Argo Rollouts' canary reconciler, every pass reads the persisted status and what really runs,
and returns the next idempotent actions plus the status to persist once they are done. A pass that
is killed half-way is simply run again: every action is "make it so", never "do it once more".
Rollback is a phase like any other, not an exception path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.analysis.explain import explain
from kiln.analysis.verdict import Verdict as Verdict
from kiln.spec.models import Rollout

Phase = Literal[
    "launch",        # start the new release's instances
    "health",        # wait until all are healthy (the gate)
    "preview",       # healthy, 0 % of ordinary traffic; only X-Kiln-Release requests reach it
    "step",          # canary: hold a weight for a pause, judged
    "roll",          # rolling: replace instances batch by batch
    "drain_old",     # new release has everything; let the old one finish in-flight requests
    "standby",       # blue-green: old set kept, weight 0, for instant rollback until a deadline
    "rollback",      # put traffic back on the old release
    "restore",       # rolling rollback: start the old instances that were already replaced
    "drain_new",     # the new release left rotation; let it finish in-flight requests
    "done",
]
SETTLED: frozenset[str] = frozenset({"done", "standby"})
Outcome = Literal["promoted", "rolled_back", "aborted", "failed"]


@dataclass
class Decision:
    """One judged moment, kept for history and the report."""

    time: float
    step: int
    weight: int
    outcome: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def _plain(figures: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy (the judge may hand numpy scalars)."""
    out: dict[str, Any] = {}
    for k, v in figures.items():
        if isinstance(v, bool) or v is None or isinstance(v, str | int):
            out[k] = v
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
    return out


@dataclass
class Status:
    """Persisted once per pass (as JSON) in the `rollouts` row."""

    phase: Phase
    strategy: str
    new: str
    old: str | None
    replicas: int
    step: int = 0
    step_started: float = 0.0
    deadline: float = 0.0
    drain_started: float = 0.0
    weights: dict[str, int] = field(default_factory=dict)
    outcome: Outcome | None = None
    reason: str | None = None
    promote_requested: bool = False
    promote_full: bool = False
    abort_requested: bool = False
    waiting: str | None = None
    """Why the rollout is not moving (shown by `status`): e.g. waiting for `kiln promote`."""
    rolled: int = 0
    """rolling: how many old instances have been replaced so far."""
    retiring: int = 0
    """rolling: old instances currently draining out of rotation."""
    standby_until: float = 0.0
    decisions: list[Decision] = field(default_factory=list)
    started: float = 0.0
    preview: bool = False
    """`kiln deploy --preview`: hold the healthy release in preview until `kiln promote`."""
    judge: dict[str, Any] = field(default_factory=dict)
    """Where the judge's evidence starts (log cursor, router counters), so a resumed rollout
    judges every request since it began."""
    judge_line: str | None = None
    """The judge's latest view of the current step, one line (live progress; not a decision)."""
    evidence: dict[str, Any] | None = None
    """The current step's evidence: {needed, have, eta_s} (kiln.analysis.evidence)."""
    synthetic: dict[str, Any] | None = None
    """The rollout's synthetic load (`rollout.load`): {paths, rate, sent, errors, running}."""
    judge_words: list[dict[str, Any]] | None = None
    """The judge's latest view per metric, in words (kiln.analysis.explain; live, like
    `judge_line`)."""
    mirror: int = 0
    """The share of requests copied to `new` in the current step when it is a mirror step
    (`new` has weight 0 then); read only while `phase` is "step" (`mirror_share`)."""

    def mirror_share(self) -> int:
        """What the current step copies to the new release (0: a weighted step, or no step)."""
        return self.mirror if self.phase == "step" else 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def evidence_at(self, now: float) -> dict[str, Any] | None:
        """The step's evidence ({needed, have, eta_s}) with its time left counted down to
        `now`: the status is written at most once a second and read at any time."""
        ev = self.evidence
        if not ev:
            return None
        out = {k: ev.get(k) for k in ("needed", "have", "eta_s")}
        at, left = ev.get("at"), ev.get("eta_s")
        if isinstance(at, int | float) and isinstance(left, int | float):
            out["eta_s"] = round(max(0.0, left - max(0.0, now - at)), 1)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        data = dict(data)
        data["decisions"] = [Decision(**d) for d in data.get("decisions", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Observation:
    now: float
    new_alive: int
    new_healthy: int
    new_dead: int
    """New instances that exited after launch: they never come back."""
    old_alive: int
    old_healthy: int = -1
    """Healthy old instances (-1: not observed; only a rolling rollback restores old ones)."""
    old_inflight: int = 0
    new_inflight: int = 0
    retiring_inflight: int = 0
    verdict: Verdict | None = None
    """The judge's view of the current step; None when not judged (first release, no analysis)."""


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class EnsureInstances:
    """Make `count` live instances of the release exist (launch only the missing ones)."""

    release: str
    count: int


@dataclass(frozen=True)
class SetWeights:
    """Route traffic; weights are relative. Servers are the releases' in-rotation instances."""

    weights: dict[str, int]
    preview: tuple[str, ...] = ()
    """Releases reachable by `X-Kiln-Release: <release>` (header or cookie) whatever their
    weight: a release in preview has weight 0 and gets only those requests."""
    mirror: tuple[tuple[str, int], ...] = ()
    """(release, percent): that share of the live requests is copied to the release, whose
    answers are discarded (a mirror step: the release is judged at weight 0)."""


@dataclass(frozen=True)
class Retire:
    """Take `count` instances of a release out of rotation (rolling): mark them draining."""

    release: str
    count: int


@dataclass(frozen=True)
class TerminateRetiring:
    release: str


@dataclass(frozen=True)
class TerminateRelease:
    release: str


@dataclass(frozen=True)
class Record:
    """Write an event to history."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


Action = EnsureInstances | SetWeights | Retire | TerminateRetiring | TerminateRelease | Record


def start(strategy: str, new: str, old: str | None, replicas: int, now: float,
          judge: dict[str, Any] | None = None, preview: bool = False) -> Status:
    return Status(phase="launch", strategy=strategy, new=new, old=old, replicas=replicas,
                  started=now, judge=dict(judge or {}), preview=preview)


def decide(s: Status, obs: Observation, rollout: Rollout, health_deadline: float
           ) -> tuple[Status, list[Action]]:
    """The next actions and the status to persist after they succeed."""
    s = dataclasses.replace(s, decisions=list(s.decisions), weights=dict(s.weights))
    if s.phase == "done":
        return s, []
    if s.abort_requested and s.phase not in ("rollback", "restore", "drain_new", "standby"):
        return _rollback(s, obs, "aborted", "`kiln abort`")
    handler = _PHASES[s.phase]
    return handler(s, obs, rollout, health_deadline)


def _launch(s: Status, obs: Observation, r: Rollout, health_deadline: float
            ) -> tuple[Status, list[Action]]:
    count = s.replicas
    if s.strategy == "rolling" and s.old is not None:
        count = min(s.replicas, max(r.max_surge, 1)) if r.max_surge > 0 else 0
        s.phase = "roll"
        s.deadline = obs.now + health_deadline
        return s, [EnsureInstances(s.new, count)] if count else []
    s.phase = "health"
    s.deadline = obs.now + health_deadline
    return s, [EnsureInstances(s.new, count)]


def _health(s: Status, obs: Observation, r: Rollout, health_deadline: float
            ) -> tuple[Status, list[Action]]:
    if obs.new_dead > 0:
        return _rollback(s, obs, "failed",
                         f"{obs.new_dead} new instance(s) exited before becoming healthy")
    if obs.new_healthy < s.replicas:
        if obs.now >= s.deadline:
            return _rollback(s, obs, "failed",
                             f"health gate: {obs.new_healthy}/{s.replicas} new instances healthy "
                             f"within {health_deadline:g}s")
        s.waiting = f"{obs.new_healthy}/{s.replicas} new instances healthy"
        return s, []
    s.waiting = None
    if s.old is None:
        # Nothing to shift from: the first release goes live as soon as it is healthy.
        s.weights = {s.new: 100}
        s.phase, s.outcome, s.reason = "done", "promoted", "first release"
        return s, [SetWeights(dict(s.weights)), Record("rollout.promoted", f"{s.new} is live")]
    if s.preview and s.strategy in ("canary", "blue-green"):
        s.step = 0
        return _enter_preview(s, obs, r)
    if s.strategy in ("blue-green", "rollback"):
        return _full(s, obs, r, f"switched all traffic ({s.strategy})")
    s.phase, s.step, s.step_started = "step", 0, obs.now
    return _enter_step(s, obs, r)


HEALING = "preview: replacing"


def _preview_waiting(s: Status) -> str:
    return (f"preview: only requests with X-Kiln-Release: {s.new} reach it — "
            "`kiln promote` starts the steps, `kiln abort` disposes of it")


def _enter_preview(s: Status, obs: Observation, r: Rollout) -> tuple[Status, list[Action]]:
    assert s.old is not None
    s.phase, s.step_started, s.promote_requested = "preview", obs.now, False
    s.weights = {s.new: 0, s.old: 100}
    s.waiting = _preview_waiting(s)
    return s, [SetWeights(dict(s.weights), (s.new,)),
               Record("rollout.preview", f"{s.new} in preview: 0% of ordinary traffic; "
                      f"requests with X-Kiln-Release: {s.new} (header or cookie) reach it")]


def _preview(s: Status, obs: Observation, r: Rollout, health_deadline: float
             ) -> tuple[Status, list[Action]]:
    """Hold until `kiln promote` (or the preview step's pause); abort is handled by decide().
    A preview instance that dies is replaced (nobody but the previewers depends on it): out of
    the routing at once, the replacement routed once healthy, the preview route kept."""
    if obs.new_dead > s.replicas or ((s.waiting or "").startswith(HEALING) \
            and obs.new_healthy < s.replicas and obs.now >= s.deadline):
        return _rollback(s, obs, "failed", f"{obs.new_dead} new instance(s) died during the "
                                           "preview; replacements did not become healthy")
    if obs.new_alive < s.replicas:
        if not (s.waiting or "").startswith(HEALING):
            s.deadline = obs.now + health_deadline
        s.waiting = f"{HEALING} {s.replicas - obs.new_alive} dead instance(s) of {s.new}"
        return s, [SetWeights(dict(s.weights), (s.new,)), EnsureInstances(s.new, s.replicas)]
    if (s.waiting or "").startswith(HEALING):
        if obs.new_healthy < s.replicas:
            return s, []
        s.waiting = _preview_waiting(s)
        return s, [SetWeights(dict(s.weights), (s.new,)),
                   Record("rollout.preview", f"{s.new}: dead preview instance(s) replaced; "
                          f"X-Kiln-Release: {s.new} reaches it again")]
    if s.promote_full or s.strategy != "canary":
        if s.promote_requested or s.promote_full:
            return _full(s, obs, r, "promoted from preview")
        return s, []
    step = r.steps[s.step] if s.step < len(r.steps) else None
    pause = step.pause if step is not None and step.preview else None
    if not s.promote_requested and (pause is None or obs.now - s.step_started < pause):
        return s, []
    s.decisions.append(Decision(obs.now, s.step, 0, "preview",
                                "kiln promote" if s.promote_requested else "preview pause ended"))
    if step is not None and step.preview:
        s.step += 1
    s.phase = "step"
    return _enter_step(s, obs, r)


def _enter_step(s: Status, obs: Observation, r: Rollout) -> tuple[Status, list[Action]]:
    s.waiting = None
    if s.step >= len(r.steps):
        return _full(s, obs, r, _steps_summary(s))
    if r.steps[s.step].preview:
        return _enter_preview(s, obs, r)
    weight = r.steps[s.step].weight
    assert s.old is not None
    s.weights = {s.new: weight, s.old: 100 - weight}
    s.step_started = obs.now
    s.judge_line = None
    s.judge_words = None
    s.evidence = None
    s.promote_requested = False
    mirror = mirrored(s, r)
    s.mirror = dict(mirror).get(s.new, 0)
    what = (f"{weight}% to {s.new}" if not mirror else
            f"{mirror[0][1]}% of requests copied to {s.new} (its answers discarded)")
    return s, [SetWeights(dict(s.weights), mirror=mirror),
               Record("rollout.step", f"step {s.step + 1}/{len(r.steps)}: {what}",
                      {"step": s.step, "weight": weight, "mirror": dict(mirror).get(s.new, 0)})]


def mirrored(s: Status, r: Rollout) -> tuple[tuple[str, int], ...]:
    """The copies a status's routing holds: in a mirror step, (new release, percent)."""
    if s.phase != "step" or s.step >= len(r.steps) or not r.steps[s.step].mirror:
        return ()
    return ((s.new, int(r.steps[s.step].mirror or 0)),)


def previewed(s: Status) -> tuple[str, ...]:
    """The releases a status's routing previews (reachable by `X-Kiln-Release`)."""
    return (s.new,) if s.phase == "preview" else ()


def _steps_summary(s: Status) -> str:
    """How the steps ended, in true words: 'passed' only for steps the judge passed."""
    would = next((d for d in s.decisions if d.outcome == "would_fail"), None)
    dry = [d.step + 1 for d in s.decisions if d.outcome == "dry_run"]
    if would is not None:
        return f"dry run: {would.reason}; went on as if every step passed"
    if dry:
        return (f"dry run: step(s) {', '.join(map(str, dry))} not shown within the margins; "
                "went on as if every step passed")
    ends: dict[int, str] = {}
    for d in s.decisions:
        if d.outcome in ("pass", "undecided", "promote"):
            ends[d.step] = d.outcome
    unjudged = sum(1 for o in ends.values() if o == "undecided")
    manual = sum(1 for o in ends.values() if o == "promote")
    if not unjudged and not manual:
        return "all steps passed"
    parts = []
    if unjudged:
        parts.append(f"{unjudged} step(s) undecided (on_no_data promote)")
    if manual:
        parts.append(f"{manual} promoted by the user")
    # Said plainly wherever the reason is shown (status, history, report).
    return "promoted without evidence: " + ", ".join(parts)


def _step(s: Status, obs: Observation, r: Rollout, health_deadline: float
          ) -> tuple[Status, list[Action]]:
    """A canary step; with `analysis.dry_run` the judge is heard and recorded, never obeyed."""
    v = obs.verdict
    if v is None or v.outcome == "pass" or r.analysis is None or not r.analysis.dry_run:
        return _judged_step(s, obs, r, health_deadline)
    notes: list[Action] = []
    if v.outcome == "fail" and not any(d.outcome == "would_fail" for d in s.decisions):
        line = f"would have rolled back at step {s.step + 1}: {v.reason}"
        s.decisions.append(Decision(obs.now, s.step, s.weights.get(s.new, 0), "would_fail",
                                    line, _plain(v.figures)))
        notes.append(Record("rollout.dry_run", f"dry run: {line}", _plain(v.figures)))
    # Go on as if the step passed; the step's end is recorded as what the judge really said.
    said = Verdict("pass", f"dry run, the judge said {v.outcome}: {v.reason}", v.figures)
    s, actions = _judged_step(s, dataclasses.replace(obs, verdict=said), r, health_deadline,
                              ended_as="dry_run")
    if s.phase == "step":
        s.judge_line = f"{v.outcome} (dry run: not acted on): {v.reason}"
    return s, [*notes, *actions]


def _judged_step(s: Status, obs: Observation, r: Rollout, health_deadline: float,
                 ended_as: str = "pass") -> tuple[Status, list[Action]]:
    weight = s.weights.get(s.new, 0)
    if obs.new_alive < s.replicas:
        return _rollback(s, obs, "failed",
                         f"{s.replicas - obs.new_alive} new instance(s) died during step "
                         f"{s.step + 1}")
    v = obs.verdict
    if v is not None:
        s.judge_line = f"{v.outcome}: {v.reason}"
        s.judge_words = [e.to_json() for e in explain(v.figures)]
        if "evidence_needed" in v.figures:
            s.evidence = {k: v.figures.get(f"evidence_{k}")
                          for k in ("needed", "have", "eta_s", "at")}
    if v is not None and v.outcome == "fail":
        s.decisions.append(Decision(obs.now, s.step, weight, "fail", v.reason, _plain(v.figures)))
        return _rollback(s, obs, "rolled_back", v.reason, _plain(v.figures))
    if s.promote_full:
        s.decisions.append(Decision(obs.now, s.step, weight, "promote", "kiln promote --full"))
        return _full(s, obs, r, "`kiln promote --full`")
    pause = r.steps[s.step].pause
    elapsed = obs.now - s.step_started
    if s.promote_requested:
        s.decisions.append(Decision(obs.now, s.step, weight, "promote", "kiln promote"))
        s.step += 1
        return _enter_step(s, obs, r)
    share = f"{weight}%" if not r.steps[s.step].mirror else f"{r.steps[s.step].mirror}% mirrored"
    if pause is None:
        s.waiting = f"step {s.step + 1}: {share} — waiting for `kiln promote`"
        return s, []
    if elapsed < pause:
        s.waiting = f"step {s.step + 1}: {share} — judging; the pause ends in " \
                    f"{_countdown(pause - elapsed)}" if v is not None else None
        return s, []
    if v is None or v.outcome == "pass":
        if v is not None:
            s.decisions.append(Decision(obs.now, s.step, weight, ended_as, v.reason,
                                        _plain(v.figures)))
        s.waiting = None
        s.step += 1
        return _enter_step(s, obs, r)
    # Undecided at the end of the pause: never a silent pass.
    on_no_data = r.analysis.on_no_data if r.analysis else "pause"
    if on_no_data == "rollback":
        s.decisions.append(Decision(obs.now, s.step, weight, "undecided", v.reason,
                                    _plain(v.figures)))
        return _rollback(s, obs, "rolled_back", f"undecided ({v.reason}); on_no_data rollback",
                         _plain(v.figures))
    if on_no_data == "promote":
        s.decisions.append(Decision(obs.now, s.step, weight, "undecided", v.reason,
                                    _plain(v.figures)))
        note = Record("rollout.undecided", f"step {s.step + 1}: {weight}% undecided after its "
                      f"pause ({v.reason}); on_no_data promote: going on", _plain(v.figures))
        s.step += 1
        s, actions = _enter_step(s, obs, r)
        return s, [note, *actions]
    # on_no_data pause: keep judging (a later pass advances, a fail rolls back) until the
    # progress deadline, then give up and roll back.
    deadline = s.step_started + pause + r.progress_deadline
    if obs.now >= deadline:
        s.decisions.append(Decision(obs.now, s.step, weight, "undecided", v.reason,
                                    _plain(v.figures)))
        return _rollback(s, obs, "rolled_back",
                         f"no decision within the progress deadline ({r.progress_deadline:g}s "
                         f"after the pause): {v.reason}", _plain(v.figures))
    prefix = f"step {s.step + 1}: {weight}% undecided"
    was_waiting = (s.waiting or "").startswith(prefix)
    s.deadline = deadline
    s.waiting = (f"{prefix} ({v.reason}) — still judging: goes on when it passes; rolls back "
                 f"in {_countdown(deadline - obs.now)} (progress deadline); `kiln promote` or "
                 f"`kiln abort` to decide now")
    if not was_waiting:
        return s, [Record("rollout.undecided", s.waiting, _plain(v.figures))]
    return s, []


def _countdown(seconds: float) -> str:
    """Whole seconds, so the persisted status changes at most once a second."""
    left = max(0, int(seconds + 0.999))
    return f"{left // 60}m{left % 60:02d}s" if left >= 60 else f"{left}s"


def _full(s: Status, obs: Observation, r: Rollout, why: str) -> tuple[Status, list[Action]]:
    assert s.old is not None
    s.weights = {s.new: 100, s.old: 0}
    s.waiting = None
    actions: list[Action] = [SetWeights(dict(s.weights)),
                             Record("rollout.full", f"100% to {s.new}: {why}")]
    if s.strategy == "blue-green" and r.scale_down_delay > 0:
        s.phase, s.standby_until = "standby", obs.now + r.scale_down_delay
        s.outcome, s.reason = "promoted", why
        return s, actions
    s.phase, s.drain_started = "drain_old", obs.now
    s.outcome, s.reason = "promoted", why
    return s, actions


def _drain_old(s: Status, obs: Observation, r: Rollout, health_deadline: float
               ) -> tuple[Status, list[Action]]:
    if obs.old_inflight > 0 and obs.now - s.drain_started < r.drain_timeout:
        s.waiting = f"draining {s.old}: {obs.old_inflight} request(s) in flight"
        return s, []
    assert s.old is not None
    s.phase, s.waiting = "done", None
    s.weights = {s.new: 100}
    return s, [SetWeights(dict(s.weights)), TerminateRelease(s.old),
               Record("rollout.promoted", f"{s.new} has all traffic; {s.old} disposed of")]


def _standby(s: Status, obs: Observation, r: Rollout, health_deadline: float
             ) -> tuple[Status, list[Action]]:
    if obs.now < s.standby_until:
        s.waiting = f"{s.old} kept on standby for instant rollback"
        return s, []
    s.phase, s.drain_started = "drain_old", obs.now
    return _drain_old(s, obs, r, health_deadline)


RESTORE_DEADLINE = 60.0


def _rollback(s: Status, obs: Observation, outcome: Outcome, reason: str,
              figures: dict[str, Any] | None = None) -> tuple[Status, list[Action]]:
    s.outcome, s.reason = outcome, reason
    s.phase, s.drain_started, s.waiting = "drain_new", obs.now, None
    s.weights = {s.new: 0, s.old: 100} if s.old else {s.new: 0}
    actions: list[Action] = [SetWeights(dict(s.weights))]
    if s.strategy == "rolling" and s.old and (s.rolled or s.retiring):
        # Old instances were already replaced: bring the old release back to full strength
        # before the new one (still serving alongside) is disposed of.
        s.weights = {s.new: 1, s.old: 1}
        actions = [SetWeights(dict(s.weights)), EnsureInstances(s.old, s.replicas)]
        s.phase, s.deadline = "restore", obs.now + RESTORE_DEADLINE
    s.retiring = 0
    return s, [*actions, Record(f"rollout.{outcome}", reason, figures or {})]


def _restore(s: Status, obs: Observation, r: Rollout, health_deadline: float
             ) -> tuple[Status, list[Action]]:
    assert s.old is not None
    if obs.old_healthy < s.replicas and obs.now < s.deadline:
        s.waiting = f"restoring {s.old}: {max(obs.old_healthy, 0)}/{s.replicas} healthy"
        return s, []
    s.phase, s.drain_started, s.waiting = "drain_new", obs.now, None
    s.weights = {s.new: 0, s.old: 100}
    return s, [SetWeights(dict(s.weights))]


def _rollback_phase(s: Status, obs: Observation, r: Rollout, health_deadline: float
                    ) -> tuple[Status, list[Action]]:
    return _rollback(s, obs, s.outcome or "rolled_back", s.reason or "rollback")


def _drain_new(s: Status, obs: Observation, r: Rollout, health_deadline: float
               ) -> tuple[Status, list[Action]]:
    if obs.new_inflight > 0 and obs.now - s.drain_started < r.drain_timeout:
        s.waiting = f"draining {s.new}: {obs.new_inflight} request(s) in flight"
        return s, []
    s.phase, s.waiting = "done", None
    s.weights = {s.old: 100} if s.old else {}
    return s, [SetWeights(dict(s.weights)), TerminateRelease(s.new)]


def _roll(s: Status, obs: Observation, r: Rollout, health_deadline: float
          ) -> tuple[Status, list[Action]]:
    """Rolling: replace old instances batch by batch.

    With max_surge > 0, start up to max_surge new instances, wait until they are healthy, then
    retire as many old ones. With max_surge 0 (no spare capacity), retire up to max_unavailable
    old instances first, then start their replacements — but never so many that nothing would
    be serving; a one-instance service surges one instead.
    """
    assert s.old is not None
    if obs.new_dead > 0:
        return _rollback(s, obs, "failed", f"{obs.new_dead} new instance(s) exited")
    if s.retiring:
        if obs.retiring_inflight > 0 and obs.now - s.drain_started < r.drain_timeout:
            return s, []
        s.rolled += s.retiring
        s.retiring = 0
        return s, [TerminateRetiring(s.old)]
    surge = r.max_surge
    target_new = min(s.replicas, s.rolled + surge)
    if obs.new_alive < target_new:
        s.deadline = obs.now + health_deadline
        return s, [EnsureInstances(s.new, target_new)]
    if obs.new_healthy < obs.new_alive:
        if obs.now >= s.deadline:
            return _rollback(s, obs, "failed", f"health gate: {obs.new_healthy}/"
                                               f"{obs.new_alive} new instances healthy")
        s.waiting = f"rolling: {obs.new_healthy}/{obs.new_alive} new instances healthy"
        return s, []
    old_left = s.replicas - s.rolled
    if old_left <= 0:
        return _full(s, obs, r, "all instances replaced (rolling)")
    if surge > 0:
        retire = min(old_left, max(obs.new_healthy - s.rolled + r.max_unavailable, 1))
    else:
        retire = min(old_left, max(r.max_unavailable, 1))
        if obs.new_healthy + old_left - retire <= 0:
            s.deadline = obs.now + health_deadline
            return s, [EnsureInstances(s.new, obs.new_alive + 1)]
    s.weights = {s.new: obs.new_healthy, s.old: old_left - retire}
    s.retiring = retire
    s.drain_started = obs.now
    s.waiting = f"rolling: {s.rolled}/{s.replicas} replaced"
    return s, [SetWeights(dict(s.weights)), Retire(s.old, retire)]


_PHASES = {
    "launch": _launch,
    "health": _health,
    "preview": _preview,
    "step": _step,
    "roll": _roll,
    "drain_old": _drain_old,
    "standby": _standby,
    "rollback": _rollback_phase,
    "restore": _restore,
    "drain_new": _drain_new,
}
