"""rich renderings of what the library returns. No logic about infrastructure lives here."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Group, RenderableType
from rich.text import Text

from kiln.errors import KilnError
from kiln.notify import failure_line
from kiln.platforms.base import Instance
from kiln.platforms.capabilities import RemoteLogs
from kiln.rollout.synthetic import synthetic_words
from kiln_cli.progress import OUTCOME_WORDS, PHASE_WORDS, clock, evidence_words
from kiln_cli.tables import Column, layout


def _short(digest: str | None) -> str:
    return (digest or "-").removeprefix("sha256:")[:12]


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M")


def images_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> Group:
    cols = [Column("IMAGE"), Column("DIGEST"), Column("CREATED", 1), Column("SIZE", 2),
            Column("TESTS")]
    cells = []
    for r in rows:
        verdict = r.get("verdict", "untested")
        color = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
        cells.append([r["name"], _short(r["digest"]), _ago(r["created_at"]),
                      f"{r.get('size', 0) / 1e6:.1f} MB", Text(verdict, style=color)])
    return layout(cols, cells, width)


def rollout_summary(ro: dict[str, Any], now: float | None = None) -> str:
    """One line about a service's latest rollout, in words."""
    move = f"{ro['from']} -> {ro['to']}" if ro["from"] else f"first release {ro['to']}"
    head = f"rollout #{ro['rollout_id']} {ro['strategy']} {move}: "
    if ro["phase"] == "done":
        outcome = OUTCOME_WORDS.get(ro["outcome"] or "", ro["outcome"] or "done")
        syn = synthetic_words(ro.get("synthetic"))
        return head + outcome + (f" — {ro['reason']}" if ro.get("reason") else "") + (
            f" ({syn})" if syn else "")
    where = PHASE_WORDS.get(ro["phase"], ro["phase"])
    if ro["phase"] == "step" and ro.get("steps"):
        where = f"canary step {ro['step']}/{ro['steps']}"
    parts = [head + where]
    if ro.get("waiting"):
        parts.append(f"— {ro['waiting']}")
    until = ro.get("until") or 0.0
    now = time.time() if now is None else now
    if until > now:
        parts.append(f"({clock(until - now)} left)")
    judge = ro.get("judge") or ""
    if judge and judge.partition(": ")[2] not in (ro.get("waiting") or ""):
        parts.append(f"judge: {judge}")
    if ev := evidence_words(ro.get("evidence")):
        parts.append(f"({ev})")
    if syn := synthetic_words(ro.get("synthetic")):
        parts.append(f"({syn})")
    return " ".join(parts)


def status_view(data: dict[str, Any], width: int | None = None,
                now: float | None = None) -> RenderableType:
    parts: list[RenderableType] = []
    if data.get("sandbox") == "none":
        parts.append(Text("sandbox: none (kiln.yaml): bakes and instances run unsandboxed, with "
                          "kiln's privileges", "bold red"))
    ctl = data.get("controller")
    if ctl:
        parts.append(Text(f"controller: kiln serve (pid {ctl['pid']} on {ctl['host']}, "
                          f"dashboard http://{ctl['listen']}) drives rollouts and replaces dead "
                          "or unhealthy instances"))
    prom = data.get("prometheus")
    if prom:
        parts.append(Text(f"prometheus: kiln's own at {prom['url']}, scraping {prom['targets']} "
                          "instance(s) and the router" if prom["running"] else
                          "prometheus: kiln's own is not running (analysis.metrics have no data "
                          "until `kiln deploy` starts it)", "" if prom["running"] else "bold red"))
    for hook in data.get("notify") or []:
        parts.append(Text(failure_line(hook), "yellow"))
    for svc in data["services"]:
        if svc.get("destroyed"):
            parts.append(Text.from_markup(
                f"[bold]{svc['service']}[/] on {svc['listen']}: destroyed, nothing runs "
                f"(`kiln deploy {svc['service']}` starts it again)"))
            continue
        parts.append(Text.from_markup(f"[bold]{svc['service']}[/] on {svc['listen']}  "
                                      f"current: {svc['current'] or '-'}"))
        ro = svc.get("rollout")
        if ro:
            parts.append(Text("  " + rollout_summary(ro, now)))
            if ro.get("would_have") and ro["would_have"] not in (ro.get("reason") or ""):
                parts.append(Text(f"  dry run: {ro['would_have']}", "yellow"))
            for m in ro.get("verdict") or []:
                color = {"pass": "green", "fail": "red"}.get(m["outcome"], "yellow")
                parts.append(Text("    " + m["line"], color))
            if ro["phase"] not in ("done", "standby") and not ro.get("driven_by", True):
                parts.append(Text("  nothing is driving this rollout now (the figures above are "
                                  "from when it stopped): `kiln deploy` resumes it"))
        cols = [Column("RELEASE"), Column("WEIGHT"), Column("INSTANCE"), Column("ADDRESS", 1),
                Column("HANDLE", 2), Column("STATE", 3), Column("HEALTH")]
        cells: list[list[str | Text]] = []
        for rel in svc["releases"]:
            first = True
            for inst in rel["instances"] or [None]:
                head = [rel["release"] if first else "", f"{rel['weight']}%" if first else ""]
                first = False
                if inst is None:
                    cells.append([*head, "-", "-", "-", "-", "-"])
                    continue
                health = Text("healthy", "green") if inst["healthy"] else (
                    Text("unhealthy", "yellow") if inst["alive"] else Text("dead", "red"))
                cells.append([*head, inst["id"], inst["address"], inst["label"] or "-",
                              inst["state"], health])
        parts.append(layout(cols, cells, width))
        dev = svc.get("dev") or []
        if dev:
            parts.append(Text("  dev instances (kiln up): " + ", ".join(
                f"{d['id']} at {d['address']}" for d in dev)))
    return Group(*parts)


def history_table(rows: Sequence[dict[str, Any]], width: int | None = None) -> Group:
    cols = [Column("#"), Column("RELEASE"), Column("FROM", 2), Column("STRATEGY", 3),
            Column("OUTCOME"), Column("STARTED", 1), Column("IMAGE", 4)]
    cells: list[list[str | Text]] = []
    notes = []
    for r in rows:
        color = {"promoted": "green"}.get(r["outcome"] or "", "red" if r["outcome"] else "yellow")
        note = r["reason"] or ""
        if r.get("skip_tests"):
            note = ("tests skipped (--skip-tests); " + note).strip("; ")
        word = OUTCOME_WORDS.get(r["outcome"] or "", r["outcome"] or PHASE_WORDS.get(
            r["phase"], r["phase"]))
        cells.append([str(r["rollout_id"]), r["release"], r["from"] or "-", r["strategy"],
                      Text(word, style=color), _ago(r["started_at"]), _short(r["image"])])
        notes.append(note)
    return layout(cols, cells, width, notes)


def replay_view(data: dict[str, Any], width: int | None = None) -> Group:
    """`kiln judge replay`: per step, the replayed verdict next to the recorded one, and why."""
    now, was = data["settings"], data["recorded_settings"]
    changed = [f"{k} {was[k]:g} -> {v:g}" for k, v in now.items()
               if k != "metrics" and v != was[k]]
    before = {m["name"]: m["max_increase"] for m in was.get("metrics", [])}
    changed += [f"{m['name']} max_increase {before[m['name']]:g} -> {m['max_increase']:g}"
                for m in now.get("metrics", []) if before.get(m["name"]) != m["max_increase"]]
    said = ", ".join(changed) or "the recorded settings"
    parts: list[RenderableType] = [
        Text.from_markup(f"[bold]rollout #{data['rollout_id']}[/] {data['service']} "
                         f"{data['baseline']} -> {data['canary']} ({data['source']}): recorded "
                         f"{OUTCOME_WORDS.get(data['recorded_outcome'] or '', 'running')}"),
        Text(f"replayed with {said}: {data['summary']}",
             "green" if data["outcome"] == "pass" else
             "red" if data["outcome"] == "fail" else "yellow")]
    cols = [Column("STEP"), Column("WEIGHT"), Column("RECORDED"), Column("REPLAYED")]
    cells: list[list[str | Text]] = []
    for st in data["steps"]:
        color = {"pass": "green", "fail": "red"}.get(st["replayed"], "yellow")
        cells.append([str(st["step"]), f"{st['weight']}%", st["recorded"],
                      Text(st["replayed"], style=color)])
    parts.append(layout(cols, cells, width))
    for st in data["steps"]:  # why, per step and metric, one line each
        parts.append(Text(f"step {st['step']}: {st['replayed']}"
                          + ("" if st["metrics"] else f" — {st['reason']}")))
        for m in st["metrics"]:
            color = {"pass": "green", "fail": "red"}.get(m["outcome"], "yellow")
            parts.append(Text("  " + m["line"], color))
    if not data["steps"]:
        parts.append(Text("the judge recorded no step decision in this rollout"))
    return Group(*parts)


def show_logs(paths: Sequence[tuple[str, Path]], *, follow: bool, lines: int) -> None:
    """Print the tail of each log (across its rotation); with follow, keep printing new lines,
    from the new file once the log pump rotates (^C stops)."""
    import sys

    from kiln.logpump import tail

    handles: dict[str, tuple[IO[bytes], Path]] = {}
    for inst_id, path in paths:
        try:
            fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 - kept open while following
        except OSError as exc:
            sys.stderr.write(f"{inst_id}: no log to show ({path}: {exc.strerror or exc})\n")
            continue
        fh.seek(0, os.SEEK_END)
        data = tail(str(path), max(64_000, lines * 200))
        if not data.strip():  # silence must not look like a broken command
            sys.stderr.write(f"{inst_id}: the app has written nothing yet (log: {path})\n")
        for line in data.splitlines()[-lines:]:
            sys.stdout.write(f"{inst_id} | {line.decode(errors='replace')}\n")
        handles[inst_id] = (fh, path)
    sys.stdout.flush()
    try:
        while follow and handles:
            idle = True
            for inst_id, (fh, path) in list(handles.items()):
                chunk = fh.readline()
                while chunk:
                    idle = False
                    sys.stdout.write(f"{inst_id} | {chunk.decode(errors='replace')}")
                    chunk = fh.readline()
                if _rotated(fh, path):  # the old file is read to its end: go on in the new
                    with contextlib.suppress(OSError):
                        handles[inst_id] = (open(path, "rb"), path)  # noqa: SIM115
                        fh.close()
                        idle = False
            sys.stdout.flush()
            if idle:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for fh, _ in handles.values():
            fh.close()


FOLLOW_EVERY = 2.0
"""Seconds between reads of a remote log while following (one SSM command per instance)."""


def show_remote_logs(reader: RemoteLogs, instances: Sequence[Instance], *, follow: bool,
                     lines: int, every: float | None = None,
                     stop: Callable[[], bool] = lambda: False,
                     write: Callable[[str], object] | None = None) -> None:
    """The last lines of each instance's log, read from the instance (RemoteLogs); with
    follow, ask every `every` seconds for the lines after the last one seen, until ^C (or
    `stop()`). An instance that cannot be read is named on stderr and left out."""
    import sys

    out = write or sys.stdout.write
    every = FOLLOW_EVERY if every is None else every
    cursors: dict[str, tuple[Instance, str | None]] = {}
    for inst in instances:
        try:
            got, cursor = reader.read_log(inst, lines=lines)
        except KilnError as exc:
            sys.stderr.write(f"{inst.id}: cannot read its log: {exc.message.splitlines()[0]}\n")
            continue
        if not got:
            sys.stderr.write(f"{inst.id}: the app has written nothing yet\n")
        for line in got:
            out(f"{inst.id} | {line}\n")
        cursors[inst.id] = (inst, cursor)
    sys.stdout.flush()
    try:
        while follow and cursors and not stop():
            deadline = time.monotonic() + every
            while time.monotonic() < deadline and not stop():
                time.sleep(min(0.1, every))
            for iid, (inst, cursor) in list(cursors.items()):
                try:  # no cursor yet (nothing logged): everything there is, is new
                    got, cursor = reader.read_log(inst, lines=None, after=cursor)
                except KilnError as exc:
                    sys.stderr.write(f"{iid}: stopped following: "
                                     f"{exc.message.splitlines()[0]}\n")
                    del cursors[iid]
                    continue
                for line in got:
                    out(f"{iid} | {line}\n")
                if got and cursor is None:  # nothing to ask "after": it would repeat them
                    sys.stderr.write(f"{iid}: stopped following: its journal gives no cursor\n")
                    del cursors[iid]
                    continue
                cursors[iid] = (inst, cursor)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def _rotated(fh: IO[bytes], path: Path) -> bool:
    """The log pump renamed the file being followed (log -> log.1) and started a new one."""
    try:
        return os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
    except OSError:
        return False


__all__ = ["history_table", "images_table", "replay_view", "show_logs", "show_remote_logs",
           "status_view"]
