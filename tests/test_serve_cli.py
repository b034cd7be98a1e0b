"""`kiln serve` through the real console script: bad input is one line, one controller per
project (a second one exits 4), SIGTERM stops it cleanly and removes its token."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from kiln.spec.init import init_project
from kiln.testing.project import KILN, wait_for
from kiln.testing.serve import ServeProc


def test_serve_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    res = subprocess.run([KILN, "serve", "--listen", "0.0.0.0:8600"], cwd=tmp_path / "shop",
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--listen '0.0.0.0:8600'" in lines[0]
    assert "loopback only" in lines[0] and "Traceback" not in res.stderr


def test_one_controller_per_project_and_sigterm_cleans_up(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    init_project(folder)
    with ServeProc(folder) as first:
        token = folder / ".kiln" / "serve.token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert token.read_text().strip() == first.token
        assert first.status()["project"]
        second = subprocess.run([KILN, "serve", "--listen", "127.0.0.1:0"], cwd=folder,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 4, second.stdout + second.stderr
        assert "another controller runs for this project" in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        shown = subprocess.run([KILN, "status", "--json"], cwd=folder, capture_output=True,
                               text=True, timeout=60)
        assert json.loads(shown.stdout)["controller"]["pid"] == first.proc.pid, shown.stdout
        text = subprocess.run([KILN, "status"], cwd=folder, capture_output=True, text=True,
                              timeout=60).stdout
        assert f"controller: kiln serve (pid {first.proc.pid}" in text, text
        code, _ = first.post("/api/services/web/promote", {})
        assert code == 401
        wait_for(lambda: any(" web serve.refused: refused promote web" in line
                             for line in first.output), 20, what="the refusal in the serve log")
        assert first.stop() == 0
    after = subprocess.run([KILN, "status", "--json"], cwd=folder, capture_output=True,
                           text=True, timeout=60)
    assert json.loads(after.stdout)["controller"] is None
    assert any("keep serving" in line for line in first.output)
    # The token survives a restart (a bookmarked address keeps working) until rotated.
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    with ServeProc(folder) as again:
        assert again.token == first.token
        assert any("0600, kept;" in line for line in again.output), again.output
    rotated = ServeProc(folder, args=["--rotate-token"])
    with rotated:
        assert rotated.token != first.token and token.read_text().strip() == rotated.token
        assert any("0600, rotated;" in line for line in rotated.output), rotated.output
