"""End to end, behind both local routers: `kiln deploy --preview` holds the new release at 0 % of
ordinary traffic and sends it only the requests naming it (`X-Kiln-Release`, header or cookie);
`kiln promote` starts the weighted steps, `kiln abort` disposes of it (issue 23)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter

import pytest

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, wait_for

pytestmark = pytest.mark.e2e

STEPS = """\
      strategy: canary
      steps:
        - {weight: 50, pause: 0s}
      drain_timeout: 3s
"""


def version(proj: Proj, headers: dict[str, str] | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", proj.port, timeout=5)
    try:
        conn.request("GET", "/version", headers=headers or {})
        resp = conn.getresponse()
        return str(json.loads(resp.read())["version"]) if resp.status == 200 else ""
    finally:
        conn.close()


def versions(stats_bodies: Counter[str]) -> Counter[str]:
    """Load's body prefixes ('{"version": "2"') -> version -> count."""
    out: Counter[str] = Counter()
    for body, n in stats_bodies.items():
        out[body.split('"')[3] if body.count('"') >= 4 else body] += n
    return out


def deploy_in_background(proj: Proj, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([KILN, "deploy", *args], cwd=proj.dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(deploy: subprocess.Popen[str], code: int) -> None:
    try:
        out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == code, out + err
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()


@pytest.mark.parametrize("proj", ["traefik", "haproxy"], indirect=True)
def test_preview_then_promote_then_abort_under_load(proj: Proj) -> None:
    proj.write(replicas=2, rollout=STEPS)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    proj.behave(version="2")
    with Load(proj.listen, path="/version", rate=600, workers=8, max_requests=20_000,
              max_seconds=240, keep_body=15) as ordinary:
        deploy = deploy_in_background(proj, "--preview")
        try:
            wait_for(lambda: version(proj, {"X-Kiln-Release": "web-r2"}) == "2", timeout=90,
                     what="web-r2 in preview")
            assert "X-Kiln-Release: web-r2" in proj.kiln("status").stdout
            named = {"header": {"X-Kiln-Release": "web-r2"},
                     "cookie": {"Cookie": "X-Kiln-Release=web-r2"}}
            got = {}
            for what, headers in named.items():
                with Load(proj.listen, path="/version", rate=200, workers=2, max_requests=500,
                          max_seconds=60, keep_body=15, headers=headers) as load:
                    got[what] = load.wait()
            before = ordinary.wait()  # the 20,000 ordinary requests, all during the preview
            assert proj.weights() == {"web-r1": 100, "web-r2": 0}
            res = proj.kiln("promote", "web")
            assert res.returncode == 0, res.stdout + res.stderr
            finish(deploy, 0)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
    assert before.sent == 20_000 and before.failed == 0, before.summary()
    assert versions(before.bodies) == Counter({"1": 20_000})
    for what, stats in got.items():
        assert versions(stats.bodies) == Counter({"2": 500}), (what, stats.summary())
    assert proj.weights() == {"web-r2": 100}

    # A release previewed, then aborted: disposed of, the ordinary traffic never noticed.
    proj.behave(version="3")
    with Load(proj.listen, path="/version", rate=200, workers=4, max_requests=20_000,
              max_seconds=240, keep_body=15) as ordinary:
        deploy = deploy_in_background(proj, "--preview")
        try:
            wait_for(lambda: version(proj, {"X-Kiln-Release": "web-r3"}) == "3", timeout=90,
                     what="web-r3 in preview")
            res = proj.kiln("abort", "web")
            assert res.returncode == 0, res.stdout + res.stderr
            finish(deploy, 3)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        after = ordinary.stop()
    assert after.failed == 0 and after.sent > 0, after.summary()
    assert versions(after.bodies) == Counter({"2": after.sent})
    assert proj.weights() == {"web-r2": 100}
    assert version(proj, {"X-Kiln-Release": "web-r3"}) == "2"   # gone: ordinary routing


def test_preview_needs_canary_or_blue_green(proj: Proj) -> None:
    proj.write(replicas=1, rollout="      strategy: rolling\n")
    res = proj.kiln("deploy", "--preview")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "--preview needs canary or blue-green" in res.stderr and "Traceback" not in res.stderr


def _running(proj: Proj, release: str) -> list[tuple[str, int]]:
    """(instance id, pid) of the release's running instances."""
    with sqlite3.connect(proj.dir / ".kiln" / "state.db") as conn:
        rows = conn.execute(
            "SELECT id, json_extract(handle_json, '$.pid') FROM instances WHERE release_id = ? "
            "AND state = 'running' AND json_extract(handle_json, '$.pid') IS NOT NULL",
            (release,)).fetchall()
    return [(str(i), int(p)) for i, p in rows]


@pytest.mark.parametrize("proj", ["traefik", "haproxy"], indirect=True)
def test_a_dead_preview_instance_is_replaced_and_the_header_still_reaches_it(proj: Proj) -> None:
    proj.write(replicas=2, rollout=STEPS)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    proj.behave(version="2")
    with Load(proj.listen, path="/version", rate=200, workers=4, max_seconds=180,
              keep_body=15) as ordinary:
        deploy = deploy_in_background(proj, "--preview")
        try:
            wait_for(lambda: version(proj, {"X-Kiln-Release": "web-r2"}) == "2", timeout=90,
                     what="web-r2 in preview")
            before = _running(proj, "web-r2")
            assert len(before) == 2
            os.kill(before[0][1], signal.SIGKILL)
            wait_for(lambda: len(_running(proj, "web-r2")) == 2
                     and before[0][0] not in dict(_running(proj, "web-r2")), timeout=60,
                     what="the dead preview instance replaced")
            # Healed and routed: the preview route still reaches web-r2, on both instances.
            with Load(proj.listen, path="/version", rate=200, workers=2, max_requests=400,
                      max_seconds=60, keep_body=15,
                      headers={"X-Kiln-Release": "web-r2"}) as named:
                got = named.wait()
            assert proj.status()["services"][0]["rollout"]["phase"] == "preview"
            res = proj.kiln("abort", "web")
            assert res.returncode == 0, res.stdout + res.stderr
            finish(deploy, 3)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        stats = ordinary.stop()
    assert got.failed == 0 and versions(got.bodies) == Counter({"2": 400}), got.summary()
    assert stats.failed == 0 and versions(stats.bodies) == Counter({"1": stats.sent}), \
        stats.summary()
    assert proj.weights() == {"web-r1": 100}
