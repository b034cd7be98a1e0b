"""End to end: while a new instance is pre-warmed (`rollout.warmup_requests`), `kiln status`
(text and --json) and the deploy's live progress say so, with the count sent so far."""

from __future__ import annotations

import subprocess

import pytest

from kiln.testing.project import CANARY_FAST, KILN, Proj, wait_for

pytestmark = pytest.mark.e2e


def test_prewarming_is_shown_while_it_runs(proj: Proj) -> None:
    proj.write(rollout=CANARY_FAST + "      warmup_requests: {path: /, count: 200, timeout: 60s}\n",
               replicas=1)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    proj.behave(version="2", extra_latency_ms=30)  # 200 GETs take 6 s or more
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def warming() -> str:
            ro = proj.status()["services"][0]["rollout"] or {}
            return str(ro.get("waiting") or "") if ro.get("to") == "web-r2" else ""

        wait_for(lambda: warming().startswith("pre-warming web-r2-"), timeout=90,
                 interval=0.2, what="status to show the pre-warming")
        text = proj.kiln("status").stdout
        assert "pre-warming web-r2-" in text and "GETs to /)" in text, text
        out, err = deploy.communicate(timeout=120)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert deploy.returncode == 0, out + err
    assert "pre-warming web-r2-" in out and "/200 GETs to /)" in out, out
    assert proj.weights() == {"web-r2": 100}
