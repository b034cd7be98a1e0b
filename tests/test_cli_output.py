"""What people read: tables at 80 columns on a terminal and piped, bake output streaming,
`status --watch`, the live rollout line. Through the real console script where it is output."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from kiln.rollout.decide import Status
from kiln.spec.init import init_project
from kiln.state.store import Store
from kiln_cli.progress import rollout_line

KILN = Path(sys.executable).parent / "kiln"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG = ("5xx 21.3% vs 0.0%, p=0.0001; after 64 canary requests and 812 baseline requests, "
        "latency p50 12.1 ms vs 3.4 ms: the canary is slower than allowed by max_latency_increase")


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("KILN_HOME", "COLUMNS", "LINES")}
    base["TERM"] = "xterm"
    base.pop("NO_COLOR", None)
    return base


def piped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KILN), *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=120, check=False)


def on_terminal(*args: str, cwd: Path, cols: int = 80, timeout: float = 60,
                answer: bytes | None = None) -> tuple[int, str]:
    """Run kiln with stdout on a pseudo-terminal of `cols` columns; (exit code, screen text).
    With `answer`, stdin is the terminal too and `answer` is typed into it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen([str(KILN), *args], cwd=cwd, env=env(), stdout=slave, stderr=slave,
                            stdin=slave if answer is not None else subprocess.DEVNULL)
    os.close(slave)
    if answer is not None:
        os.write(master, answer)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")
    return code, text


@pytest.fixture
def with_history(tmp_path: Path) -> Path:
    """A project whose state has three rollouts, one with a long judge reason."""
    folder = tmp_path / "shop"
    init_project(folder)
    store = Store.open(folder / ".kiln")
    try:
        with store.tx() as c:
            for n, (outcome, reason) in enumerate(
                    [("promoted", "first release"), ("rolled_back", LONG),
                     ("aborted", "`kiln abort`")], start=1):
                c.execute("INSERT INTO releases(id, service, number, image_digest, config_digest,"
                          " config_json, created_at) VALUES (?,?,?,?,?,?,?)",
                          (f"web-r{n}", "web", n, "sha256:" + f"{n}" * 64, "sha256:c", "{}",
                           1764150000.0 + n))
                c.execute("INSERT INTO rollouts(service, from_release, to_release, strategy, "
                          "phase, status_json, outcome, reason, started_at, updated_at, "
                          "finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                          ("web", f"web-r{n - 1}" if n > 1 else None, f"web-r{n}", "canary",
                           "done", json.dumps(Status(
                               phase="done", strategy="canary", new=f"web-r{n}", old=None,
                               replicas=2, step=2).to_json()), outcome, reason,
                           1764150000.0 + n, 1764150001.0 + n, 1764150002.0 + n))
    finally:
        store.close()
    return folder


def test_history_piped_is_one_full_line_per_rollout(with_history: Path) -> None:
    res = piped("history", cwd=with_history)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4, res.stdout  # header + 3 rollouts, nothing wrapped
    assert lines[2].endswith(LONG) and "rolled back" in lines[2]
    assert "rolled_back" not in res.stdout


def test_history_at_80_columns_folds_whole_words(with_history: Path) -> None:
    code, screen = on_terminal("history", cwd=with_history, cols=80)
    assert code == 0, screen
    lines = screen.rstrip("\n").splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    # Every word of the long note is intact (no word split across lines).
    words = set(" ".join(lines).split())
    assert set(LONG.split()) <= words, screen
    assert "web-r2" in screen and "rolled back" in screen


def test_status_watch_returns_when_nothing_is_open_and_numbers_steps_like_text(
        with_history: Path) -> None:
    res = piped("status", "--watch", cwd=with_history)
    assert res.returncode == 0, res.stderr
    assert "rollout #3 canary web-r2 -> web-r3: aborted" in res.stdout, res.stdout
    assert "(none)" not in res.stdout and "step 3/2" not in res.stdout


def test_status_names_steps_like_text_and_says_a_first_release(with_history: Path) -> None:
    res = piped("status", cwd=with_history)
    assert res.returncode == 0, res.stderr
    assert "step 3/2" not in res.stdout and "(none)" not in res.stdout
    assert "rollout #3 canary web-r2 -> web-r3: aborted — `kiln abort`" in res.stdout, res.stdout


def test_live_rollout_line_counts_down_and_shows_the_judge() -> None:
    st = Status(phase="step", strategy="canary", new="web-r2", old="web-r1", replicas=2,
                weights={"web-r2": 10, "web-r1": 90},
                waiting="step 1: 10% — judging; the pause ends in 12s",
                judge_line="inconclusive: 12 canary and 80 baseline requests, need 50 each")
    line = rollout_line(st, now=988.0)
    assert "web-r2 10% web-r1 90%" in line and "the pause ends in 12s" in line
    assert "judge: inconclusive: 12 canary" in line
    health = Status(phase="health", strategy="canary", new="web-r2", old=None, replicas=2,
                    deadline=1030.0, waiting="1/2 new instances healthy")
    assert rollout_line(health, now=1000.0) == (
        "health gate — 1/2 new instances healthy (30s left of the deadline)")


BAKE_SPEC = """\
project: streamer
images:
  web:
    base: python
    steps:
      - run: "for i in $(seq 1 30); do echo out-line-$i; done; exit {code}"
services:
  web:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: 127.0.0.1:18999
"""


@pytest.mark.e2e
def test_bake_output_collapses_on_success_and_shows_on_failure(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text(BAKE_SPEC.format(code=0))
    res = piped("bake", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "out-line-7" not in res.stdout, "a successful step collapses to one line"
    assert re.search(r"web \[1/1\] ran +\d+\.\d+s  run: ", res.stdout), res.stdout
    # On a terminal the same bake ends with the same collapsed line.
    (tmp_path / "kiln.yaml").write_text(BAKE_SPEC.format(code=0) + "# again\n")
    code, screen = on_terminal("bake", "--no-cache", cwd=tmp_path)
    assert code == 0, screen
    assert re.search(r"web \[1/1\] ran +\d+\.\d+s  run: ", screen), screen
    (tmp_path / "kiln.yaml").write_text(BAKE_SPEC.format(code=3))
    res = piped("bake", cwd=tmp_path)
    assert res.returncode == 1
    both = res.stdout + res.stderr
    # Every line of the failed step's output is shown: earlier ones by the printer, the last
    # ones with the error.
    for i in range(1, 31):
        assert f"out-line-{i}\n" in both, both
    assert "exit code 3" in res.stderr


def test_destroy_asks_on_a_terminal_and_yes_skips_the_question(with_history: Path) -> None:
    code, screen = on_terminal("destroy", cwd=with_history, answer=b"n\n")
    assert code == 1, screen
    assert "Stop every instance of web" in screen and "nothing was stopped" in screen, screen
    code, screen = on_terminal("destroy", "--yes", cwd=with_history, answer=b"")
    assert code == 0 and "stopped 0 instance(s)" in screen, screen
    assert "Stop every instance" not in screen
