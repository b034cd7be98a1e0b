"""End to end, under real load through Traefik: `analysis.dry_run` lets a bad canary through and
every surface (status, history, the report, the dashboard) says it would have been rolled back;
failed webhook deliveries show in status; `kiln judge replay` of a rolled-back rollout passes a
50-point margin, writes nothing, and bad input is one line."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from json_contract import conforms
from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, free_port, judged_canary, wait_for

pytestmark = pytest.mark.e2e

# Step 1 waits for `kiln promote` (pause: null): the test goes on once the judge has spoken,
# not after a pause it hopes is long enough.
DRY = ("      strategy: canary\n      steps:\n        - {weight: 20, pause: null}\n"
       "        - {weight: 50, pause: 1s}\n"
       "      analysis: {max_error_rate_increase: 0.02, max_latency_increase: 50%,\n"
       "                 min_requests: 50, on_no_data: pause, dry_run: true}\n"
       "      drain_timeout: 3s\n")
JUDGED = judged_canary([(20, "30s"), (50, "5s")])


def deploy_first(p: Proj, rollout: str) -> None:
    p.write(rollout=rollout)
    res = p.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr


def rollout_of(status: dict[str, object]) -> dict[str, object]:
    svc = status["services"][0]  # type: ignore[index]
    ro: dict[str, object] = svc["rollout"]
    return ro


def test_dry_run_promotes_a_bad_canary_and_every_surface_says_what_it_would_have_done(
        proj: Proj) -> None:
    deploy_first(proj, DRY)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: every delivery fails
    with (proj.dir / "kiln.yaml").open("a") as spec:
        spec.write(f"notify:\n  - {{url: \"{dead}\"}}\n")
    proj.behave(version="2", error_rate=0.3)
    with Load(proj.listen, rate=120, max_seconds=120) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=30)
        deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            ro = wait_for(lambda: (r := rollout_of(proj.status())).get("would_have") and r,
                          timeout=90, what="the judge to fail the canary (dry run)")
            assert str(ro["would_have"]).startswith("would have rolled back at step 1: 5xx")
            assert proj.weights().get("web-r2") == 20, "a dry run acted on the verdict"
            assert proj.kiln("promote", "web").returncode == 0
            out, err = deploy.communicate(timeout=120)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
    assert deploy.returncode == 0, out + err
    assert proj.weights() == {"web-r2": 100}

    status = json.loads(proj.kiln("status", "--json").stdout)
    conforms("status", json.dumps(status))
    ro = rollout_of(status)
    assert ro["outcome"] == "promoted"
    assert str(ro["reason"]).startswith("dry run: would have rolled back at step 1: 5xx"), ro
    assert str(ro["reason"]).endswith("went on as if every step passed"), ro
    words = {m["metric"]: m for m in ro["verdict"]}  # type: ignore[attr-defined]
    assert words["errors"]["outcome"] == "fail", words
    assert "allowed +2.0 points: failed" in words["errors"]["line"]
    assert "p=" not in words["errors"]["line"], "p-values only in --json figures and the report"
    text = proj.kiln("status").stdout
    assert "would have rolled back at step 1" in text, text
    assert "errors: canary" in " ".join(text.split()), text

    # Failed webhook deliveries: recorded and shown (status text and --json).
    hooks = status["notify"]
    assert [h["url"] for h in hooks] == [dead] and hooks[0]["failed"] >= 1, hooks
    assert "refused" in hooks[0]["last_error"].lower(), hooks
    assert re.search(r"notify: \d+ deliver(y|ies) to " + re.escape(dead) + r" failed, last:",
                     " ".join(text.split())), text

    hist = json.loads(proj.kiln("history", "web", "--json").stdout)
    assert hist["rollouts"][-1]["reason"] == ro["reason"]
    dry = [e for e in hist["events"] if e["kind"] == "rollout.dry_run"]
    assert len(dry) == 1 and "would have rolled back at step 1" in dry[0]["message"], dry

    report = Path(str(hist["rollouts"][-1]["report"])).read_text()
    assert "would have rolled back at step 1" in report
    assert "dry run: the judge would have rolled back" in report  # the chart's mark
    assert "errors: canary" in report and "failed —" in report

    import kiln
    from kiln.serve.board import Board
    from kiln.serve.pages import fragments

    project = kiln.Project.open(proj.dir / "kiln.yaml")
    board = Board(project, fragments)
    try:
        html = fragments(board.build())["board"]
    finally:
        board.prober.stop.set()
        project.close()
    assert "dry run: would have rolled back at step 1" in html
    assert "errors: canary" in html
    assert f"deliveries to {dead} failed" in html or f"delivery to {dead} failed" in html


def _writes(proj: Proj) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """The state's commit counter, its events and every file under .kiln but the logs."""
    home = proj.dir / ".kiln"
    conn = sqlite3.connect(home / "state.db")
    try:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    files = {str(p.relative_to(home)): (p.stat().st_mtime_ns, p.stat().st_size)
             for p in home.rglob("*") if p.is_file() and not p.name.startswith("state.db")
             and p.suffix != ".log" and "access" not in p.name
             and p.relative_to(home).parts[0] != "instances"}
    return version, events, files


def test_replay_of_a_rolled_back_rollout_passes_a_50_point_margin_and_writes_nothing(
        proj: Proj) -> None:
    deploy_first(proj, JUDGED)
    proj.behave(version="2", error_rate=0.08)
    with Load(proj.listen, rate=120, max_seconds=120) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=30)
        res = proj.kiln("deploy", timeout=150)
    assert res.returncode == 3, res.stdout + res.stderr
    rid = json.loads(proj.kiln("history", "web", "--json").stdout)["rollouts"][-1]["rollout_id"]

    before = _writes(proj)
    same = proj.kiln("judge", "replay", str(rid), "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    data = conforms("replay", same.stdout)
    assert [s["recorded"] for s in data["steps"]] == ["fail"], data["steps"]
    assert data["recorded_outcome"] == "rolled_back" and data["source"] == "access-log"
    figures = {f["name"]: f["value"] for f in data["steps"][0]["figures"]}
    assert figures["canary_requests"] >= 50, "rolled back before min_requests: nothing to pass"

    loose = proj.kiln("judge", "replay", f"#{rid}", "--max-error-rate-increase", "50%", "--json")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    got = conforms("replay", loose.stdout)
    assert got["settings"]["max_error_rate_increase"] == 0.5
    assert got["recorded_settings"]["max_error_rate_increase"] == 0.02
    assert [s["replayed"] for s in got["steps"]] == ["pass"], got["steps"]
    assert got["outcome"] == "pass"
    text = proj.kiln("judge", "replay", str(rid), "--max-error-rate-increase", "50%")
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stdout.split())
    assert "max_error_rate_increase 0.02 -> 0.5" in flat, flat
    assert "would have passed every recorded step" in flat, flat
    assert "errors: canary" in flat and "allowed +50.0 points: passed" in flat, flat

    # Bad input: one line each, no traceback, non-zero (2 for a bad setting).
    for args, line in [
        (["999"], "rollout #999 not found in state"),
        (["1"], "rollout #1 has no stored judge evidence"),
        (["web"], "ROLLOUT: expected a rollout id like 3, got 'web'"),
        ([str(rid), "--max-error-rate-increase", "lots"],
         "--max-error-rate-increase: expected a percentage like 25%"),
        ([str(rid), "--alpha", "0.9"], "--alpha: expected a false-alarm rate between 0 and 0.5"),
        ([str(rid), "--max-increase", "50%"],
         "--max-increase: expected NAME=X like checkout_failures=50%, got '50%'"),
        ([str(rid), "--max-increase", "checkout_failures=50%"],
         "--max-increase: no metric 'checkout_failures' in this rollout's analysis.metrics "
         "(it has: none)"),
    ]:
        bad = proj.kiln("judge", "replay", *args)
        # A setting's bad value is a usage error (2); an unknown rollout is not found (1).
        assert bad.returncode == (2 if args[1:] else 1), (args, bad.returncode)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert line in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    err = proj.kiln("judge", "replay", "999", "--json")
    assert conforms("error", err.stdout)["error"]["kind"] == "NotFound"
    assert _writes(proj) == before, "kiln judge replay wrote to the state or under .kiln"
