"""A release is one value: every instance of it runs the command, env, secret and health check it
was made with, whatever kiln.yaml says today. Per strategy, on real processes behind the real
router: three releases that differ in all four, a rollback to the middle one (and on rolling, a
failed update whose restore relaunches it), and each instance asked what it really got.
The number to reach: 0 instances running a config other than their release's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.project import Proj, free_port, teardown
from kiln.testing.release_probe import (
    ask_all,
    mismatches,
    secret_env,
    service_block,
    write_app,
)

pytestmark = pytest.mark.e2e

LOCAL_HEAD = """\
project: {project}
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
"""

PODMAN_HEAD = """\
project: {project}
platform: podman
images:
  web:
    base: {{debian: bookworm, packages: [python3, python-is-python3]}}
    steps:
      - copy: app/
        to: app/
"""


class Probe:
    """A project whose kiln.yaml is rewritten per release (`make(n)`), driven by the CLI."""

    def __init__(self, folder: Path, head: str, strategy: str, project: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_app(folder)
        self.proj = Proj(folder, free_port())
        self.head = head.format(project=project)
        self.strategy = strategy

    def make(self, n: int, **kw: object) -> None:
        block = service_block(n, port=8000, listen=self.proj.listen, strategy=self.strategy,
                              **kw)  # type: ignore[arg-type]
        (self.proj.dir / "kiln.yaml").write_text(self.head + block)

    def kiln(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        res = self.proj.kiln(*args, timeout=timeout, env=secret_env())
        return res.returncode, res.stdout + res.stderr

    def deploy(self, n: int, **kw: object) -> None:
        self.make(n, **kw)
        code, out = self.kiln("deploy")
        assert code == 0, out

    def check(self, current: str, replicas: int = 2) -> None:
        """Every live instance is `current`'s and runs `current`'s config."""
        status = self.proj.status()
        assert status["services"][0]["current"] == current, status
        seen = ask_all(status)
        assert sorted(s.release for s in seen) == [current] * replicas, seen
        assert mismatches(seen) == []


def local_probe(tmp_path: Path, strategy: str) -> Iterator[Probe]:
    probe = Probe(tmp_path / "probe", LOCAL_HEAD, strategy, f"release-{strategy}")
    try:
        yield probe
    finally:
        teardown(probe.proj)


@pytest.fixture(params=["canary", "blue-green", "rolling"])
def probe(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Probe]:
    yield from local_probe(tmp_path, str(request.param))


def releases_then_rollback(probe: Probe) -> None:
    """r1, r2, r3 (each differs in command, env, secret and health path), then back to r2."""
    for n in (1, 2, 3):
        probe.deploy(n)
        probe.check(f"web-r{n}")
    code, out = probe.kiln("rollback", "web", "--to", "web-r2")
    assert code == 0, out
    probe.check("web-r2")  # kiln.yaml still says r3: MODE three, /health-three


def test_rollback_runs_the_release_as_it_was_made(probe: Probe) -> None:
    releases_then_rollback(probe)
    if probe.strategy == "rolling":
        # A rolling update that fails after replacing an instance restores web-r2: its
        # replacements are launched from web-r2's own record, not today's r4.
        before = {s.instance for s in ask_all(probe.proj.status())}
        probe.make(4, ready_after=3.0, exit_after=4.5)
        code, out = probe.kiln("deploy")
        assert code == 3 and "new instance(s) exited" in out, out
        probe.check("web-r2")
        restored = {s.instance for s in ask_all(probe.proj.status())} - before
        assert restored, "the failed update replaced no instance: nothing was restored"
    else:
        # A release that never went live is no rollback target; the refusal lists those that are.
        probe.make(4, health_path_override="/nope", deadline="3s")
        code, out = probe.kiln("deploy")
        assert code == 3, out
        code, out = probe.kiln("rollback", "web", "--to", "web-r4")
        assert code == 1, out
        line = out.strip().splitlines()[0]
        assert "web-r4 never went live" in line and "web-r3, web-r1" in line, out
        code, out = probe.kiln("rollback", "web", "--to", "web-r1")
        assert code == 0, out
        probe.check("web-r1")


@pytest.mark.usefixtures("podman_base")
def test_podman_rollback_runs_the_release_as_it_was_made(tmp_path: Path) -> None:
    probe = Probe(tmp_path / "probe", PODMAN_HEAD, "rolling", "release-podman")
    try:
        releases_then_rollback(probe)
    finally:
        from kiln.testing.podman import teardown_project

        teardown_project(probe.proj)
