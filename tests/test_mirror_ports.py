"""A `listen:` on the port of Traefik's mirror entrypoint: one line at validate and at deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.platforms.local.mirror_ports import (
    MirrorPortTaken,
    listen_collisions,
    mirror_entrypoints,
    same_socket,
)
from kiln.platforms.local.router import TraefikRouter

KILN = Path(sys.executable).parent / "kiln"

SPEC = """\
project: demo
router: {router}
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
services:
  web:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: {listen}
  api:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: 127.0.0.1:18741
"""


@pytest.mark.parametrize(("a", "b", "same"), [
    ("127.0.0.1:5000", "127.0.0.1:5000", True),
    ("127.0.0.1:5000", "127.0.0.1:5001", False),
    ("127.0.0.2:5000", "127.0.0.1:5000", False),  # another loopback address: both bind
    ("0.0.0.0:5000", "127.0.0.1:5000", True),  # a wildcard takes the port everywhere
    (":5000", "127.0.0.1:5000", True),
    ("[::]:5000", "127.0.0.1:5000", True),
    ("127.0.0.1:", "127.0.0.1:", False),
])
def test_same_socket(a: str, b: str, same: bool) -> None:
    assert same_socket(a, b) is same
    assert same_socket(b, a) is same


def test_listen_collisions_name_the_owner_of_the_entrypoint() -> None:
    state = {"services": {"api": {"listen": "127.0.0.1:9000", "mirror_listen": "127.0.0.1:41234"},
                          "web": {"listen": "127.0.0.1:9001", "mirror_listen": None},
                          "odd": "not a dict"}}
    mirrors = mirror_entrypoints(state)
    assert mirrors == {"api": "127.0.0.1:41234"}
    assert listen_collisions({"web": "127.0.0.1:41234", "api": "127.0.0.1:9000"}, mirrors) == [
        ("web", "127.0.0.1:41234", "api", "127.0.0.1:41234")]
    assert listen_collisions({"web": "127.0.0.1:9001"}, mirrors) == []
    assert mirror_entrypoints({}) == {} and mirror_entrypoints({"services": []}) == {}


def _project(tmp_path: Path, listen: str, router: str = "traefik") -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello\n")
    (tmp_path / "kiln.yaml").write_text(SPEC.format(listen=listen, router=router))
    state = tmp_path / ".kiln" / "router"
    state.mkdir(parents=True)
    (state / "router.json").write_text(json.dumps({"project": "demo", "services": {
        "api": {"listen": "127.0.0.1:18741", "mirror_listen": "127.0.0.1:41234",
                "releases": {}}}}))
    return tmp_path


def _validate(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KILN_HOME"}
    return subprocess.run([str(KILN), "validate"], cwd=folder, capture_output=True, text=True,
                          timeout=60, check=False, env={**env, "NO_COLOR": "1"})


def test_validate_refuses_a_listen_on_a_mirror_entrypoint_in_one_line(tmp_path: Path) -> None:
    res = _validate(_project(tmp_path, "127.0.0.1:41234"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and res.stdout == "", res.stderr
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("kiln.yaml:14:13: services.web.listen: 127.0.0.1:41234 is the port "
                           "of service api's mirror entrypoint"), line
    assert "expected an address no entrypoint uses, saw 127.0.0.1:41234" in line
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(("listen", "router"), [("127.0.0.1:18742", "traefik"),
                                                 ("127.0.0.1:41234", "haproxy")])
def test_validate_passes_a_free_listen_or_a_router_without_mirrors(
        tmp_path: Path, listen: str, router: str) -> None:
    res = _validate(_project(tmp_path, listen, router))
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr


def test_traefik_refuses_the_listen_before_a_deploy_changes_anything(tmp_path: Path) -> None:
    home = _project(tmp_path, "127.0.0.1:41234") / ".kiln"
    router = TraefikRouter(home, "demo")
    with pytest.raises(MirrorPortTaken, match=r"^services\.web\.listen: 127\.0\.0\.1:41234 is the "
                                            r"port of service api's mirror entrypoint"):
        router.check_listen("web", "127.0.0.1:41234")
    with pytest.raises(MirrorPortTaken, match="its own mirror entrypoint"):
        router.check_listen("api", "0.0.0.0:41234")
