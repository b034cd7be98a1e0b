"""End to end on podman: `file:` image checks read the OCI image's own filesystem (paths relative
to the image root /app or absolute in the container, symlinks followed inside the image)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.podman import BASE, remove_containers
from kiln.testing.project import Proj, free_port, teardown

pytestmark = pytest.mark.e2e

CHECKS = [  # (check, passes, words of its detail)
    ('{path: etc/app.cfg, mode: "0640", contains: "port = 8000"}', True, "0640"),
    ("{path: /etc/os-release, contains: bookworm}", True, "ok"),  # a symlink in the image
    ("{path: /etc/kiln-nothing, exists: false}", True, "is absent"),
    ("{path: /usr/lib}", True, "ok"),
    ('{path: etc/app.cfg, contains: "port = 9000"}', False, "does not contain 'port = 9000'"),
    ("{path: /etc/kiln-nothing}", False, "does not exist in the image"),
    ("{path: /etc/os-release, exists: false}", False, "exists, expected it absent"),
    ('{path: etc/app.cfg, mode: "0644"}', False, "mode 0640, expected 0644"),
    ("{path: /usr/lib, contains: x}", False, "is not a regular file"),
]


@pytest.fixture
def proj(tmp_path: Path, podman_base: str) -> Iterator[Proj]:
    p = Proj(tmp_path / "files", free_port())
    p.dir.mkdir()
    (p.dir / "app.cfg").write_text("port = 8000\n")
    tests = "".join(f"      - file: {check}\n" for check, _, _ in CHECKS)
    (p.dir / "kiln.yaml").write_text(f"""\
project: pf-{free_port()}
platform: podman
images:
  web:
    base: {{debian: {BASE.debian}, packages: [{', '.join(BASE.packages)}]}}
    steps:
      - copy: app.cfg
        to: etc/
      - run: chmod 640 etc/app.cfg
    tests:
{tests}services:
  web:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: {p.listen}
""")
    try:
        yield p
    finally:
        teardown(p)
        remove_containers(f"kiln-{p.dir.name}")


def test_file_checks_read_the_podman_image(proj: Proj) -> None:
    res = proj.kiln("test", "web", "--json", timeout=300)
    assert res.returncode == 1, res.stderr
    (suite,) = json.loads(res.stdout)
    assert suite["instance"] is None  # file checks need no container running
    got = [(c["passed"], c["detail"]) for c in suite["checks"]]
    for (check, passes, words), (passed, detail) in zip(CHECKS, got, strict=True):
        assert passed is passes and words in detail, (check, detail)
    left = subprocess.run(["podman", "ps", "-a", "--filter", "label=kiln.kind=files",
                           "--format", "{{.Names}}"], capture_output=True, text=True,
                          timeout=60).stdout.split()
    assert not [n for n in left if n.startswith(f"kiln-{proj_name(proj)}-")]
    tag = f"localhost/kiln/{proj_name(proj)}-web"
    names = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", tag],
                           capture_output=True, text=True, timeout=60).stdout.split()
    if names:  # by name: the same image id may carry another project's tag too
        subprocess.run(["podman", "rmi", *names], capture_output=True, timeout=120)


def proj_name(p: Proj) -> str:
    return (p.dir / "kiln.yaml").read_text().split("\n", 1)[0].removeprefix("project: ")
