"""Live progress of long work: bake steps, image tests, rollout phases.

On a terminal, what is going on now sits in a live area at the bottom (redrawn a few times a
second, with elapsed and remaining time) and finished work scrolls above it as permanent lines;
a bake step's output streams into the live area and collapses into one line when the step
succeeds, as BuildKit does. When piped, only the permanent lines are printed (and a step's output
when it fails), so logs stay readable.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from kiln.rollout.synthetic import synthetic_words

if TYPE_CHECKING:
    from kiln.platforms.base import StepEvent
    from kiln.project import DeployEvent, DeployResult
    from kiln.rollout.decide import Status

_STYLE = {"ran": "green", "cached": "cyan", "failed": "red", "running": "yellow"}
STEP_TAIL = 5
"""Output lines of a running step shown in the live area."""
ERROR_TAIL = 20
"""Lines of a failed step's output the error message itself carries (kiln.bake.steps.TAIL_LINES)."""


_MARKS = {"pass": "green", "FAIL": "bold red", "passed": "green", "failed": "bold red"}


def test_line(line: str) -> Text:
    """A plain line from the library, with pass/FAIL words coloured (never parsed as markup)."""
    text = Text(line)
    for word, style in _MARKS.items():
        text.highlight_words([f" {word} ", f" {word}:"], style=style)
    return text


def bake_line(image: str, ev: StepEvent) -> Text:
    """The one format of a finished bake step, in `bake` and `deploy` alike."""
    where = "base" if ev.index == 0 else f"{ev.index}/{ev.total}"
    text = Text(f"{image} [{where}] ")
    text.append(f"{ev.status:<6}", style=_STYLE.get(ev.status, ""))
    text.append(f" {ev.duration:6.2f}s  {ev.description}")
    return text


def clock(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class LiveArea:
    """Permanent lines above, a redrawn activity below (terminal only)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live_ok = console.is_terminal
        self._live: Live | None = None
        self._render: Callable[[], RenderableType] | None = None

    def print(self, renderable: RenderableType) -> None:
        # Folded to a terminal's width (at words); one whole line per event when piped.
        self.console.print(renderable, soft_wrap=not self.console.is_terminal)

    def show(self, render: Callable[[], RenderableType] | None) -> None:
        """Draw `render()` in the live area from now on (None clears it)."""
        self._render = render
        if not self.live_ok:
            return
        if render is None:
            self.stop()
            return
        if self._live is None:
            self._live = Live(_Lazy(self), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()
        self._live.refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class _Lazy:
    """Renders the area's current activity when rich refreshes (so clocks keep ticking)."""

    def __init__(self, area: LiveArea) -> None:
        self.area = area

    def __rich__(self) -> RenderableType:
        return self.area._render() if self.area._render else Text("")


class StepPrinter:
    """Bake progress: one permanent line per finished step; a running step's output streams
    into the live area and is shown in full only if the step fails."""

    def __init__(self, console: Console, quiet: bool = False, prefix: Callable[[], str] | None = None,
                 area: LiveArea | None = None) -> None:
        self.area = area or LiveArea(console)
        self.quiet = quiet
        self.prefix = prefix or (lambda: "")
        self._output: deque[str] = deque(maxlen=500)
        self._running: tuple[str, StepEvent, float] | None = None

    def __call__(self, image: str, ev: StepEvent) -> None:
        if self.quiet:
            return
        if ev.status == "running":
            if self._running is None or self._running[1].index != ev.index:
                self._output.clear()
                self._running = (image, ev, time.monotonic())
            if ev.output:
                self._output.append(ev.output)
            self.area.show(self._render_running)
            return
        self.area.show(None)
        self._running = None
        line = Text(self.prefix()).append(bake_line(image, ev))
        self.area.print(line)
        if ev.status == "failed" and len(self._output) > ERROR_TAIL:
            # The error carries the last lines; show what came before them.
            earlier = list(self._output)[:-ERROR_TAIL]
            self.area.print(Text(f"  output of the failed step ({len(earlier)} earlier lines; "
                                 "the last ones follow with the error):", style="dim"))
            for out in earlier:
                self.area.print(Text(f"  | {out}", style="dim"))
        self._output.clear()

    def _render_running(self) -> RenderableType:
        if self._running is None:
            return Text("")
        image, ev, began = self._running
        where = "base" if ev.index == 0 else f"{ev.index}/{ev.total}"
        head = Text(self.prefix()).append(f"{image} [{where}] ").append("running", "yellow")
        head.append(f" {time.monotonic() - began:6.1f}s  {ev.description}")
        tail = [Text(f"  | {line}", style="dim", no_wrap=True, overflow="ellipsis")
                for line in list(self._output)[-STEP_TAIL:]]
        return Group(head, *tail)


def evidence_words(ev: dict[str, Any] | None) -> str:
    """'evidence 240/481 canary requests, ~12s left' ('' without an estimate)."""
    if not ev or ev.get("needed") is None:
        return ""
    left = ev.get("eta_s")
    when = ("no canary traffic to extrapolate" if left is None else
            "enough" if left <= 0 else f"~{clock(float(left))} left")
    return f"evidence {ev.get('have', 0)}/{ev['needed']} canary requests, {when}"


def weights_words(st: Status) -> str:
    """'web-r2 10% web-r1 90%'; in a mirror step 'web-r2 mirror 100% web-r1 100%' (the new
    release's weight is 0 then: it gets copies of requests, it serves no one)."""
    mirror = st.mirror_share()
    return " ".join(f"{k} mirror {mirror}%" if mirror and k == st.new else f"{k} {v}%"
                    for k, v in st.weights.items())


def rollout_line(st: Status, now: float | None = None) -> str:
    """What a rollout is doing, with the time left of its current wait and the judge's view."""
    now = time.time() if now is None else now
    weights = weights_words(st)
    parts = [PHASE_WORDS.get(st.phase, st.phase), weights]
    if st.waiting:
        parts.append(f"— {st.waiting}")
    if st.phase in ("health", "roll", "restore") and st.deadline > now:
        parts.append(f"({clock(st.deadline - now)} left of the deadline)")
    live = st.judge_line
    if st.phase == "step" and live and live.partition(": ")[2] not in (st.waiting or ""):
        parts.append(f"judge: {live}")
    if st.phase == "step" and (ev := evidence_words(st.evidence_at(now))):
        parts.append(f"({ev})")
    if st.phase == "step" and (syn := synthetic_words(st.synthetic)):
        parts.append(f"({syn})")
    return " ".join(p for p in parts if p)


class DeployPrinter:
    """Live progress of a deploy (and of promote/abort/rollback): bake, tests, rollout."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.area = LiveArea(console)
        self.steps = StepPrinter(console, prefix=self._stamp, area=self.area)
        self._last = ""
        self._status: tuple[str, Status] | None = None

    def _stamp(self) -> str:
        return f"{time.monotonic() - self.t0:6.1f}s "

    def __call__(self, ev: DeployEvent) -> None:
        if self.quiet:
            return
        if ev.kind == "bake" and ev.step is not None:
            self.steps(ev.service, ev.step)
            return
        if ev.kind == "status" and ev.status is not None:
            self._on_status(ev.service, ev.status)
            return
        if ev.kind == "settled":
            return  # the summary says it
        label = f"{ev.service} {ev.kind}: " if ev.kind in ("test", "heal") else f"{ev.service} "
        self.area.print(Text(self._stamp(), style="dim").append(label)
                        .append(test_line(ev.message)))

    def _on_status(self, service: str, st: Status) -> None:
        # A permanent line per change of phase, weights or reason; live figures and clocks
        # only redraw the live area.
        weights = weights_words(st)
        key = f"{st.phase} {weights} {(st.waiting or '').split('(')[0]}".strip()
        quiet = st.phase == "done" or (st.phase in ("launch", "health") and not st.waiting)
        if key != self._last and not quiet:
            self._last = key
            self.area.show(None)
            line = Text(self._stamp(), style="dim").append(f"{service} ")
            line.append(PHASE_WORDS.get(st.phase, st.phase), style="bold")
            if weights:
                line.append(f" {weights}")
            if st.waiting:
                line.append(f" — {st.waiting}", style="dim")
            self.area.print(line)
        if st.phase == "done":
            self._status = None
            self.area.show(None)
            return
        self._status = (service, st)
        self.area.show(self._render_status)

    def _render_status(self) -> RenderableType:
        if self._status is None:
            return Text("")
        service, st = self._status
        # Folded, not cut: the judge's view is the end of the line and the part people read.
        line = Text(self._stamp(), style="dim", overflow="fold")
        return line.append(f"{service} ").append(rollout_line(st), style="yellow")

    def stop(self) -> None:
        self.area.show(None)

    def summary(self, result: DeployResult) -> None:
        self.stop()
        for s in result.services:
            color = {"promoted": "green", "healed": "green", "unchanged": "cyan",
                     "signalled": "cyan"}.get(s.outcome, "red")
            line = Text(f"{s.service}: ", style="bold").append(
                OUTCOME_WORDS.get(s.outcome, s.outcome), style=color)
            if s.release:
                line.append(f" {s.release}")
            if s.reason:
                line.append(f" — {s.reason}")
            line.append(f" ({s.seconds:.1f}s)", style="dim")
            piped = not self.console.is_terminal
            self.console.print(line, soft_wrap=piped)
            if s.report:
                self.console.print(f"  report: {s.report if piped else near(s.report)}",
                                   soft_wrap=piped, highlight=False)


def near(path: str) -> str:
    """A path as short as it reads on a terminal: relative to the working folder when inside
    it (`.kiln/reports/rollout-3.html`), else as given. Piped output keeps it absolute."""
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") and len(rel) < len(path) else path


OUTCOME_WORDS = {"rolled_back": "rolled back", "promoted": "promoted", "aborted": "aborted",
                 "failed": "failed", "unchanged": "unchanged", "healed": "healed",
                 "signalled": "signalled"}
"""Outcomes as words in sentences (JSON keeps the identifiers)."""
PHASE_WORDS = {"launch": "launching", "health": "health gate", "preview": "preview",
               "step": "canary step",
               "roll": "rolling", "drain_old": "draining the old release", "standby": "standby",
               "rollback": "rolling back", "restore": "restoring the old release",
               "drain_new": "draining the new release", "done": "done"}
"""Rollout phases as words for people."""
