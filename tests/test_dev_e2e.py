"""End to end: `kiln up` runs the exact baked image on its own address; `exec` and `down`."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from kiln.testing.project import Proj

pytestmark = pytest.mark.e2e


def test_up_exec_down(proj: Proj) -> None:
    proj.behave(version="7")
    up = proj.kiln("up", "web", "--detach", timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr
    match = re.search(r"http://127\.[0-9.]+:\d+\S*", up.stdout)
    assert match, up.stdout
    url = match.group(0).rstrip("/")
    assert len(proj.live_pids()) == 1
    # The instance runs the baked image: a source change after `up` must not reach it.
    proj.behave(version="8")
    with urllib.request.urlopen(url + "/", timeout=5) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert "version 7" in body, body

    res = proj.kiln("exec", "web", "--", "python", "-c", "import sys; print(sys.prefix)")
    assert res.returncode == 0, res.stdout + res.stderr
    prefix = Path(res.stdout.strip())
    images = (proj.dir / ".kiln" / "images").resolve()
    assert prefix.resolve().is_relative_to(images), (prefix, images)

    # exec passes the command's exit code through.
    code = proj.kiln("exec", "web", "--", "python", "-c", "raise SystemExit(5)")
    assert code.returncode == 5, code.stdout + code.stderr

    # `kiln up` again: the source changed (version 8), so the instance is replaced; once more
    # with nothing changed, it is reused. Never a pile-up.
    urls = []
    for _ in range(2):
        again = proj.kiln("up", "web", "--json", timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        urls.append(json.loads(again.stdout)["url"].rstrip("/"))
        assert len(proj.live_pids()) == 1
    assert urls[0] != url and urls[1] == urls[0], (url, urls)
    dev = proj.status()["services"][0]["dev"]
    assert len(dev) == 1 and urls[0].endswith(dev[0]["address"]), dev

    # `kiln logs` reaches dev instances (the only service is the default).
    logs = proj.kiln("logs", "--dev", "-n", "5")
    assert logs.returncode == 0, logs.stderr
    assert "listening on" in logs.stdout and "-dev" in logs.stdout, logs.stdout

    down = proj.kiln("down", timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "1 dev instance" in down.stdout
    assert proj.live_pids() == []
    gone = proj.kiln("exec", "web", "--", "true")
    assert gone.returncode == 1 and "no running instance" in gone.stderr, gone.stderr


def test_up_unknown_service_is_refused(proj: Proj) -> None:
    res = proj.kiln("up", "nope", "--detach", timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "nope" in res.stderr and "web" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert proj.live_pids() == []
