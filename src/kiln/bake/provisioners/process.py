"""Run a provisioner's command, handing each output line to the bake progress as it comes.

The command runs in its own session so a timeout or Ctrl-C kills everything it started; the
last lines are kept for the error message of a failed step.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

OnLine = Callable[[str], None]

TAIL_LINES = 40


@dataclass(frozen=True)
class Finished:
    code: int | None
    """Exit code, or None when the command timed out."""
    tail: list[str]
    """The last lines of stdout and stderr together, in the order they came."""
    stderr: list[str]
    """The last lines of stderr alone (tools put their parse errors there)."""


def stream(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, on_line: OnLine,
           cwd: Path | None = None) -> Finished:
    """Run `argv`, calling `on_line` for every stdout/stderr line; kill the session on timeout."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    errs: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lock = threading.Lock()

    def pump(pipe: IO[bytes] | None, is_err: bool) -> None:
        assert pipe is not None  # Popen(stdout=PIPE, stderr=PIPE)
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with lock:
                tail.append(line)
                if is_err:
                    errs.append(line)
                with contextlib.suppress(Exception):  # a progress printer never stops a bake
                    on_line(line)

    readers = [threading.Thread(target=pump, args=(proc.stdout, False), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, True), daemon=True)]
    for reader in readers:
        reader.start()
    code: int | None
    try:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return Finished(code, list(tail), list(errs))
