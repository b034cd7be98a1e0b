"""Bad input on podman: one clear line and the right exit code, never a traceback; a container
that exits at once fails the health gate, is rolled back and its log is shown."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.podman import make_project, teardown_project
from kiln.testing.project import Proj

FAST = """\
      strategy: canary
      steps:
        - {weight: 50, pause: 0s}
      drain_timeout: 2s
"""


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Proj]:
    p = make_project(tmp_path, rollout=FAST, replicas=2)
    try:
        yield p
    finally:
        teardown_project(p)


def edit(p: Proj, old: str, new: str) -> None:
    path = p.dir / "kiln.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_podman_missing_names_the_install_command(shop: Proj) -> None:
    res = shop.kiln("bake", env={"PATH": str(Path(sys.executable).parent)})
    assert res.returncode == 1
    line = one_line_error(res.stderr)
    assert "podman command is not installed" in line and "apt-get install podman" in line


@pytest.mark.e2e
def test_a_base_podman_does_not_have_is_one_line(shop: Proj, podman_base: str) -> None:
    edit(shop, "base: {debian: bookworm, packages: [python3, python-is-python3]}",
         "base: localhost/kiln-no-such-base:1")
    res = shop.kiln("bake")
    assert res.returncode == 1
    line = one_line_error(res.stderr)
    assert "base image 'localhost/kiln-no-such-base:1' not found" in line, line


@pytest.mark.e2e
def test_a_container_that_exits_at_once_fails_the_gate_and_shows_its_log(
        shop: Proj, podman_base: str) -> None:
    path = shop.dir / "kiln.yaml"  # no image tests: the gate under test is the health gate
    path.write_text(re.sub(r"    tests:\n(      - .*\n)+", "", path.read_text()))
    edit(shop, "command: python -m app", "command: python -m no_such_module")
    res = shop.kiln("deploy", timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    out = " ".join(res.stdout.split())
    assert "No module named no_such_module" in out, res.stdout
    assert "exited before becoming healthy" in out, res.stdout
    assert shop.status()["services"][0]["releases"] in ([], [{"release": "web-r1", "weight": 0,
                                                               "instances": []}])
    assert shop.live_pids() == []


@pytest.mark.e2e
def test_a_listen_address_in_use_is_one_line(shop: Proj, podman_base: str) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", shop.port))
        holder.listen()
        res = shop.kiln("deploy", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line_error(res.stderr)
    assert f"127.0.0.1:{shop.port}" in line and "already in use" in line, line
    assert os.path.exists(shop.dir / ".kiln" / "state.db")
