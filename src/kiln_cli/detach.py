"""`kiln deploy --detach` and `kiln status --watch`: a rollout that goes on without a terminal.

`--detach` runs the same deploy in a background process (its own session, output to a log file
under `.kiln/logs/`), shows that output until the rollout is under way (a canary step or a
rolling batch — the long part), then returns. `kiln status --watch` follows a rollout, whoever
drives it, until it settles; if nobody drives it any more, `kiln deploy` resumes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kiln_cli.progress import OUTCOME_WORDS
from kiln_cli.render import rollout_summary

UNDER_WAY = ("step", "roll", "drain_old")
SETTLED = ("done", "standby")
BAD = ("rolled_back", "failed", "aborted")


def _kiln_command() -> list[str]:
    exe = Path(sys.argv[0])
    if exe.name == "kiln" and exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "from kiln_cli.main import run; run()"]


def _rollouts(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["service"]: s["rollout"] for s in status["services"] if s.get("rollout")}


def deploy_detached(args: Sequence[str], cwd: Path, home: Path,
                    status: Callable[[], dict[str, Any]], echo: Callable[[str], None],
                    poll: float = 0.3,
                    started: Callable[[list[dict[str, Any]]], None] | None = None) -> int:
    """Start `kiln <args>` in the background; return 0 once one of its rollouts is under way
    (or the background deploy's exit code if it ends first). `started` gets the rollouts under
    way as deploy results (`outcome: started`) for `--json`, in place of the words."""
    t0 = time.monotonic()
    before = {name: ro["rollout_id"] for name, ro in _rollouts(status()).items()}
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*_kiln_command(), *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "COLUMNS": "120"})
    shown = 0

    def show() -> None:
        nonlocal shown
        data = log.read_bytes()
        end = data.rfind(b"\n") + 1
        if end > shown:
            for line in data[shown:end].decode("utf-8", "replace").splitlines():
                echo(line)
            shown = end

    while True:
        show()
        code = proc.poll()
        if code is not None:
            show()
            return code
        under_way = [(name, ro) for name, ro in _rollouts(status()).items()
                     if (ro["rollout_id"] != before.get(name) or ro["phase"] not in SETTLED)
                     and ro["phase"] in UNDER_WAY]
        if under_way:
            if started is not None:
                started([{"service": name, "release": ro.get("to"), "outcome": "started",
                          "reason": f"goes on in the background (pid {proc.pid}); output: {log}",
                          "rollout_id": ro["rollout_id"], "report": None,
                          "seconds": round(time.monotonic() - t0, 3)}
                         for name, ro in under_way])
            for name, ro in under_way:
                echo(f"{name}: rollout #{ro['rollout_id']} goes on in the background "
                     f"(pid {proc.pid}); follow it with `kiln status --watch`; output: {log}")
            return 0
        time.sleep(poll)


def _silent(line: str) -> None:
    """Words are not written where JSON documents are."""


REQUESTED_GRACE = 2.0
"""Seconds `status --watch` waits for a rollout just requested (`kiln deploy &` then watch: the
deploy may not have taken the lock yet) before it says nothing is open."""


def watch(status: Callable[[], dict[str, Any]], echo: Callable[[str], None],
          poll: float = 0.5, timeout: float = 24 * 3600.0,
          documents: Callable[[dict[str, Any]], None] | None = None,
          busy: Callable[[], str | None] | None = None,
          redraw: Callable[[list[str]], None] | None = None,
          grace: float = REQUESTED_GRACE) -> int:
    """Follow the services' rollouts until none is open; 3 if one that was open ended rolled
    back, failed or aborted, 1 if an open rollout has nobody driving it.

    Words: `echo` gets one line per change (piped); `redraw`, if given (a terminal), gets the
    current line of every service at each poll and redraws them in place instead. `documents`
    (`--json`) gets the whole status document at each change, one JSON document per line.
    `busy` names a kiln command that holds the project lock (a deploy baking or testing before
    its rollout opens): while one does, or for `grace` seconds after the start, watch waits for
    the rollout it will open rather than report the previous one as settled."""
    seen: dict[str, str] = {}
    watched: set[str] = set()
    started = time.monotonic()
    deadline = started + timeout
    initial = _rollouts(status())
    before = {name: ro["rollout_id"] for name, ro in initial.items()}
    watched |= {name for name, ro in initial.items() if ro["phase"] not in SETTLED}
    first = True
    while True:
        data = status()
        rollouts = _rollouts(data)
        open_ = {name for name, ro in rollouts.items() if ro["phase"] not in SETTLED}
        watched |= open_
        lines = {name: f"{name}: {rollout_summary(ro)}" for name, ro in rollouts.items()}
        changed = [name for name, line in lines.items() if seen.get(name) != line]
        if documents is not None:
            if changed or first:
                documents(data)
        elif redraw is not None:
            redraw([lines[name] for name in sorted(lines)])
        else:
            for name in changed:
                echo(lines[name])
        seen.update(lines)
        first = False
        for name in sorted(open_):
            ro = rollouts[name]
            if ro.get("driven_by") is None:
                # The rollout row is read before the lock: a driver that settled it and let go
                # in between looks like no driver. Look again before saying so.
                again = _rollouts(status()).get(name)
                if again is not None and (again["phase"] in SETTLED or again.get("driven_by")
                                          or again["rollout_id"] != ro["rollout_id"]):
                    continue
                if documents is None:
                    echo(f"{name}: no kiln command is driving rollout #{ro['rollout_id']}; "
                         "`kiln deploy` resumes it")
                return 1
        new = any(ro["rollout_id"] != before.get(name) for name, ro in rollouts.items())
        waiting = not open_ and not watched and not new and (
            (busy is not None and busy() is not None) or time.monotonic() - started < grace)
        if not open_ and not waiting:
            outcomes = {name: ro["outcome"] for name, ro in rollouts.items()
                        if name in watched or ro["rollout_id"] != before.get(name)}
            if documents is None:
                for name, outcome in outcomes.items():
                    echo(f"{name}: settled: {OUTCOME_WORDS.get(outcome, outcome)}")
            return 3 if any(o in BAD for o in outcomes.values()) else 0
        if time.monotonic() > deadline:
            return 1
        time.sleep(poll)
