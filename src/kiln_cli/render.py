"""rich renderings of what the library returns. No logic about infrastructure lives here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from kiln.platforms.base import StepEvent
    from kiln.project import DeployEvent, DeployResult

_STYLE = {"ran": "green", "cached": "cyan", "failed": "red", "running": "yellow"}


def _short(digest: str | None) -> str:
    return (digest or "-").removeprefix("sha256:")[:12]


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


class StepPrinter:
    """Prints one line per finished bake step: ran / cached, with its duration."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    def __call__(self, image: str, ev: StepEvent) -> None:
        if self.quiet or (ev.status == "running" and not ev.output):
            return
        if ev.output:
            self.console.print(Text(f"      {ev.output}", style="dim"), soft_wrap=True)
            return
        style = _STYLE.get(ev.status, "")
        where = "base" if ev.index == 0 else f"{ev.index}/{ev.total}"
        self.console.print(
            f"  {image} \\[{where}] [{style}]{ev.status:>6}[/] "
            f"{ev.duration:6.2f}s  {ev.description}", soft_wrap=True)


class DeployPrinter:
    """Live progress of a deploy: bake steps, checks, rollout phases and weights."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.t0 = time.monotonic()
        self._last = ""

    def __call__(self, ev: DeployEvent) -> None:
        if self.quiet:
            return
        t = f"[dim]{time.monotonic() - self.t0:6.1f}s[/]"
        if ev.kind == "bake" and ev.step is not None:
            if ev.step.output:
                self.console.print(Text(f"         {ev.step.output}", style="dim"),
                                   soft_wrap=True)
                return
            if ev.step.status == "running":
                return
            style = _STYLE.get(ev.step.status, "")
            self.console.print(f"{t} {ev.service} bake [{style}]{ev.step.status}[/] "
                               f"{ev.step.description}", soft_wrap=True)
            return
        if ev.kind == "status" and ev.status is not None:
            st = ev.status
            weights = " ".join(f"{k}={v}%" for k, v in st.weights.items())
            # One line per change of phase, weights or reason; live counts don't make new lines.
            line = f"{st.phase} {weights} {(st.waiting or '').split('(')[0]}".strip()
            if line == self._last:
                return
            self._last = line
            self.console.print(f"{t} {ev.service} [bold]{st.phase}[/] {weights} "
                               f"[dim]{st.waiting or ''}[/]", soft_wrap=True)
            return
        self.console.print(Text.from_markup(f"{t} {ev.service} {ev.kind}: ").append(
            test_line(ev.message)), soft_wrap=True)

    def summary(self, result: DeployResult) -> None:
        for s in result.services:
            color = {"promoted": "green", "healed": "green", "unchanged": "cyan",
                     "signalled": "cyan"}.get(
                s.outcome, "red")
            self.console.print(f"[bold]{s.service}[/]: [{color}]{s.outcome}[/] "
                               f"{s.release or ''} {('— ' + s.reason) if s.reason else ''} "
                               f"[dim]({s.seconds:.1f}s)[/]", soft_wrap=True)
            if s.report:
                self.console.print(f"  report: {s.report}")


_MARKS = {"pass": "green", "FAIL": "bold red", "passed": "green", "failed": "bold red"}


def test_line(line: str) -> Text:
    """A plain line from the library, with pass/FAIL words coloured (never parsed as markup)."""
    text = Text(line)
    for word, style in _MARKS.items():
        text.highlight_words([f" {word} ", f" {word}:"], style=style)
    return text


def images_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("IMAGE", "DIGEST", "CREATED", "SIZE", "TESTS"):
        table.add_column(col)
    for r in rows:
        verdict = r.get("verdict", "untested")
        color = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
        table.add_row(r["name"], _short(r["digest"]), _ago(r["created_at"]),
                      f"{r.get('size', 0) / 1e6:.1f} MB", f"[{color}]{verdict}[/]")
    return table


def status_view(data: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    for svc in data["services"]:
        head = Text.from_markup(f"[bold]{svc['service']}[/] on {svc['listen']}  "
                                f"current: {svc['current'] or '-'}")
        parts.append(head)
        ro = svc.get("rollout")
        if ro:
            step = min(ro['step'] + 1, ro['steps'])  # past the last step once it is done
            parts.append(Text(f"  rollout #{ro['id']} {ro['strategy']} {ro['from'] or '-'} -> "
                              f"{ro['to']}: {ro['phase']} (step {step}/{ro['steps']})"
                              f" {ro['outcome'] or ''} {ro['waiting'] or ro['reason'] or ''}"))
            if ro["phase"] not in ("done", "standby") and not ro.get("driven_by", True):
                parts.append(Text("  nothing is driving this rollout now (the figures above are "
                                  "from when it stopped): `kiln deploy` resumes it"))
        table = Table(box=None, pad_edge=False)
        for col in ("RELEASE", "WEIGHT", "INSTANCE", "ADDRESS", "HANDLE", "STATE", "HEALTH"):
            table.add_column(col)
        for rel in svc["releases"]:
            first = True
            for inst in rel["instances"] or [None]:
                cells = [rel["release"] if first else "", f"{rel['weight']}%" if first else ""]
                first = False
                if inst is None:
                    table.add_row(*cells, "-", "-", "-", "-", "-")
                    continue
                health = "[green]healthy[/]" if inst["healthy"] else (
                    "[yellow]unhealthy[/]" if inst["alive"] else "[red]dead[/]")
                table.add_row(*cells, inst["id"], inst["address"], inst["label"] or "-",
                              inst["state"], health)
        parts.append(table)
    return Group(*parts)


def history_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("#", "RELEASE", "FROM", "STRATEGY", "OUTCOME", "STARTED", "IMAGE"):
        table.add_column(col, no_wrap=True)
    table.add_column("NOTE", overflow="fold", ratio=1)
    for r in rows:
        color = {"promoted": "green"}.get(r["outcome"] or "", "red" if r["outcome"] else "yellow")
        note = r["reason"] or ""
        if r.get("skip_tests"):
            note = ("tests skipped (--skip-tests); " + note).strip("; ")
        table.add_row(str(r["rollout"]), r["release"], r["from"] or "-", r["strategy"],
                      f"[{color}]{r['outcome'] or r['phase']}[/]", _ago(r["started_at"]),
                      _short(r["image"]), note)
    return table


def show_logs(paths: Sequence[tuple[str, Path]], *, follow: bool, lines: int) -> None:
    """Print the tail of each log; with follow, keep printing new lines (^C stops)."""
    import sys

    handles = []
    for inst_id, path in paths:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - kept open while following
        except OSError:
            continue
        data = fh.read()
        for line in data.splitlines()[-lines:]:
            sys.stdout.write(f"{inst_id} | {line.decode(errors='replace')}\n")
        handles.append((inst_id, fh))
    sys.stdout.flush()
    try:
        while follow and handles:
            idle = True
            for inst_id, fh in handles:
                chunk = fh.readline()
                while chunk:
                    idle = False
                    sys.stdout.write(f"{inst_id} | {chunk.decode(errors='replace')}")
                    chunk = fh.readline()
            sys.stdout.flush()
            if idle:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for _, fh in handles:
            fh.close()


__all__ = ["DeployPrinter", "StepPrinter", "history_table", "images_table", "show_logs",
           "status_view", "test_line"]
