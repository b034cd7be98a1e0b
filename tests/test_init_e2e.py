"""End to end: `kiln init`, then deploys of a service nobody calls yet return on their own; a
detached deploy goes on in the background and `kiln status --watch` follows it to the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from json_contract import conforms
from kiln.testing.project import KILN, Proj, free_port, teardown

pytestmark = pytest.mark.e2e


def kiln(folder: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KILN, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout)


def change(folder: Path, n: int) -> None:
    with (folder / "app" / "__main__.py").open("a") as f:
        f.write(f"# change {n}\n")


def test_init_then_deploys_without_traffic_return_on_their_own(tmp_path: Path) -> None:
    folder = tmp_path / "starter"
    assert kiln(tmp_path, "init", str(folder)).returncode == 0
    port = free_port()
    spec = folder / "kiln.yaml"
    spec.write_text(re.sub(r"listen: 127\.0\.0\.1:\d+", f"listen: 127.0.0.1:{port}",
                           spec.read_text()))
    proj = Proj(folder, port)
    background: int | None = None
    try:
        first = kiln(folder, "deploy")
        assert first.returncode == 0, first.stdout + first.stderr
        change(folder, 1)
        t = time.monotonic()
        second = kiln(folder, "deploy")
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
        assert "promoted without evidence" in out and time.monotonic() - t < 120, out
        assert proj.weights() == {"web-r2": 100}

        # The template's pauses are proven above; the detached runs below prove detach and
        # --watch, so shorter pauses keep the test short.
        spec.write_text(spec.read_text().replace("pause: 10s}", "pause: 2s}"))
        change(folder, 2)
        detached = kiln(folder, "deploy", "--detach", "--json")
        assert detached.returncode == 0, detached.stdout + detached.stderr
        (started,) = conforms("deploy", detached.stdout)  # JSON only on stdout
        assert started["outcome"] == "started" and started["release"] == "web-r3", started
        m = re.search(r"in the background \(pid (\d+)\)", started["reason"])
        assert m, started
        background = int(m.group(1))
        status = proj.status()["services"][0]["rollout"]
        assert status["to"] == "web-r3" and status["phase"] != "done", status
        assert status["driven_by"] and str(background) in status["driven_by"]
        watched = kiln(folder, "status", "--watch", "--json")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        docs = [conforms("status", line) for line in watched.stdout.splitlines()]
        assert docs, watched.stdout
        last = docs[-1]["services"][0]["rollout"]
        assert last["to"] == "web-r3" and last["outcome"] == "promoted", last
        assert proj.weights() == {"web-r3": 100}

        change(folder, 3)
        detached = kiln(folder, "deploy", "--detach")
        out = detached.stdout + detached.stderr
        assert detached.returncode == 0, out
        m = re.search(r"in the background \(pid (\d+)\)", out)
        assert m, out
        background = int(m.group(1))
        watched = kiln(folder, "status", "--watch")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "web: settled: promoted" in watched.stdout
        assert proj.weights() == {"web-r4": 100}
    finally:
        if background is not None:
            with contextlib.suppress(OSError):
                os.kill(background, signal.SIGKILL)
        teardown(proj)
