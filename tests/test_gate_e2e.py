"""End to end: an image that fails a check never gets traffic; --skip-tests is on the record."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, wait_for

pytestmark = pytest.mark.e2e

# Passes for version 1 only, so bumping the version makes the image fail exactly this check.
VERSION_CHECK = 'http: {path: /version, status: 200, json: {version: "1"}}'


def test_failing_image_is_refused_while_traffic_flows(proj: Proj) -> None:
    proj.write(tests=[VERSION_CHECK])
    first = proj.kiln("deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    # A passing attestation is reused: no second run of the checks for the same image and suite.
    again = proj.kiln("deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "tests passed before" in again.stdout and "up to date" in again.stdout, again.stdout
    assert "checks; attestation" not in again.stdout, again.stdout

    pids_before = sorted(proj.live_pids())
    proj.behave(version="2")
    seen: list[dict[str, int]] = []
    with Load(proj.listen, rate=100, max_seconds=60, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 30)
        deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            while deploy.poll() is None:  # traffic stays on web-r1 throughout
                seen.append(proj.weights())
                time.sleep(0.2)
            out, err = deploy.communicate(timeout=60)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
        after = load.stats.sent
        wait_for(lambda: load.stats.sent > after + 30)
    stats = load.stats
    assert deploy.returncode == 1, out + err
    assert "failed 1 of 2 checks" in err and "/version" in err, err
    assert "will not be deployed" in err and "Traceback" not in out + err, err
    assert all(w == {"web-r1": 100} for w in seen), seen
    assert stats.failed == 0, stats.summary() + str(stats.error_samples)
    assert stats.bodies and all("version 1" in b for b in stats.bodies), stats.bodies
    assert sorted(proj.live_pids()) == pids_before  # no instance of a new release
    svc = proj.status()["services"][0]
    assert [r["release"] for r in svc["releases"]] == ["web-r1"], svc

    images = json.loads(proj.kiln("images", "--json").stdout)
    verdicts = sorted(i["verdict"] for i in images)
    assert verdicts == ["failed", "passed"], images

    skipped = proj.kiln("deploy", "--skip-tests")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "tests skipped" in skipped.stdout, skipped.stdout
    assert proj.weights() == {"web-r2": 100}
    hist = json.loads(proj.kiln("history", "web", "--json").stdout)
    by_release = {r["release"]: r for r in hist["rollouts"]}
    assert by_release["web-r2"]["skip_tests"] is True, hist["rollouts"]
    assert by_release["web-r1"]["skip_tests"] is False, hist["rollouts"]
    assert any(e["kind"] == "tests.skipped" for e in hist["events"]), hist["events"]
    text = proj.kiln("history", "web").stdout  # the table may wrap the note
    assert "skipped" in text, text
