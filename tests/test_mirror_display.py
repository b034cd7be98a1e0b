"""Mirror steps read as "mirror N%" (not 0 %) in the report, the dashboard and `kiln plan`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from kiln.analysis.report import (
    Bucket,
    ReportData,
    StepDecision,
    chart_payload,
    load_report_data,
    mirror_steps,
    phase_label,
    share_label,
    steps_rows,
)
from kiln.plan import Facts, decide
from kiln.plan_evidence import estimate, estimate_words
from kiln.rollout.decide import Status
from kiln.serve.board import step_list
from kiln.serve.pages import steps_html
from kiln.spec.models import RolloutStep, ServiceSpec


@pytest.mark.parametrize(("weight", "mirror", "text"), [
    (10, 0, "10%"), (0, 100, "mirror 100%"), (0, None, "0%"), (0, 25, "mirror 25%")])
def test_share_label(weight: int, mirror: int | None, text: str) -> None:
    assert share_label(weight, mirror) == text


def test_phase_label_of_a_mirror_step() -> None:
    assert phase_label("step", 0, 0, 100) == "canary step 1 (mirror 100%)"
    assert phase_label("step", 50, 1) == "canary step 2 (50%)"
    assert phase_label("step", None, 0, 100) == "canary step 1 (mirror 100%)"


def test_mirror_steps_of_a_recorded_config() -> None:
    cfg = {"rollout": {"steps": [{"weight": 0, "mirror": 100}, {"weight": 10, "mirror": None},
                                 {"weight": 50}]}}
    assert mirror_steps(cfg) == {0: 100}
    assert mirror_steps({}) == {} and mirror_steps({"rollout": {"steps": "x"}}) == {}


def test_chart_draws_the_mirror_share_and_the_mirrored_canary() -> None:
    """During a mirror step the canary's weight is 0, yet its copies are what the judge
    compares: its series show, and a 'mirror' line gives the share copied."""
    buckets = [Bucket(float(t), rel, 10, 0, 0.01, 0.02) for t in range(30)
               for rel in ("web-r2", "web-r1")]
    data = ReportData("web", "web-r2", "web-r1", 1000.0,
                      weights=[(0.0, 0), (10.0, 10), (20.0, 100)], buckets=buckets,
                      mirrors=[(0.0, 100), (10.0, 0), (20.0, 0)])
    p = chart_payload(data)
    assert p["mirror"][:10] == [100] * 10 and set(p["mirror"][12:]) == {None}
    assert p["weight"][5] == 0 and p["weight"][15] == 10
    assert p["lat"]["canary_p50"][5] is not None  # mirrored: shown, not blanked as weight 0
    assert chart_payload(ReportData("web", "web-r2", "web-r1", 1000.0,
                                    weights=[(0.0, 10)]))["mirror"] is None


def test_steps_table_says_mirror() -> None:
    data = ReportData("web", "web-r2", "web-r1", 1000.0)
    data.steps = [StepDecision(5.0, 0, 0, "pass", "ok", {}, 100),
                  StepDecision(9.0, 1, 10, "pass", "ok", {})]
    assert [row[2] for row in steps_rows(data)] == ["mirror 100%", "10%"]


def test_report_data_of_a_rollout_with_a_mirror_step(tmp_path: Path) -> None:
    from kiln.state.records import releases, rollouts
    from kiln.state.store import Store

    cfg = {"rollout": {"steps": [{"weight": 0, "mirror": 100, "pause": 1.0},
                                 {"weight": 50, "pause": 0.0}]}}
    store = Store.open(tmp_path)
    started = time.time() - 1
    try:
        with store.tx() as c:
            releases.insert(c, "web-r1", "web", 1, "sha256:1", "c1", "{}", 90.0, False, "{}",
                            None)
            releases.insert(c, "web-r2", "web", 2, "sha256:2", "c2", json.dumps(cfg), 91.0,
                            False, "{}", None)
            rid = rollouts.insert(c, "web", "web-r1", "web-r2", "canary", "step", "{}",
                                  started)
        store.event("rollout.step", "step 1/2: 100% of requests copied to web-r2",
                    service="web", data={"step": 0, "weight": 0, "mirror": 100})
        store.event("rollout.step", "step 2/2: 50% to web-r2", service="web",
                    data={"step": 1, "weight": 50, "mirror": 0})
        status = {"decisions": [{"time": time.time(), "step": 0, "weight": 0,
                                 "outcome": "pass", "reason": "mirror as good"}]}
        with store.tx() as c:
            rollouts.save_status(c, rid, "done", json.dumps(status), "promoted", "",
                                 time.time() + 1, None)
        data = load_report_data(store, tmp_path, "web", rid)
    finally:
        store.close()
    assert data is not None
    labels = [d.label for d in data.decisions]
    assert "canary step 1 (mirror 100%)" in labels and "canary step 2 (50%)" in labels
    assert "judge: pass at mirror 100%" in labels
    assert [m for _, m in data.mirrors] == [100, 0]
    assert data.steps[0].mirror == 100


def test_dashboard_step_list_shows_the_mirror_share() -> None:
    st = Status(phase="step", strategy="canary", new="web-r2", old="web-r1", replicas=3,
                step=0)
    plan = [RolloutStep(mirror=100, pause=60.0), RolloutStep(weight=50, pause=0.0)]
    steps = step_list(st, plan)
    assert [(s["weight"], s["mirror"]) for s in steps] == [(0, 100), (50, 0)]
    text = steps_html(steps)
    assert "step 1: mirror 100% (copies; answers discarded)" in text
    assert "step 2: set weight 50%" in text and "set weight 0%" not in text


def _spec(steps: list[dict[str, object]]) -> ServiceSpec:
    return ServiceSpec.model_validate({
        "image": "app", "command": "x", "listen": "127.0.0.1:8080",
        "rollout": {"steps": steps, "progress_deadline": "10m", "analysis": {}}})


def test_plan_estimates_a_mirror_step() -> None:
    """A mirror step copies its share to the canary while the baseline answers everything:
    at 100 % it gathers evidence at the whole rate, against a baseline of the same size."""
    est = estimate("web", _spec([{"mirror": "100%", "pause": "10s"},
                                 {"weight": 10, "pause": "10s"}]), 200.0)
    assert est is not None
    first = est["steps"][0]
    assert (first["weight"], first["mirror"]) == (0, 100)
    assert first["seconds"] is not None and first["seconds"] < 30
    words = estimate_words(est)
    assert "mirror 100% step ~" in words and " 0% step" not in words
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "json" /
                         "plan.schema.json").read_text())["items"]["properties"]["evidence"]
    assert not list(Draft202012Validator(schema).iter_errors(est))  # `kiln plan --json`
    quiet = estimate("web", _spec([{"mirror": "10%", "pause": "1s"}]), 0.5)
    assert quiet is not None and "the mirror 10% step needs" in str(quiet["warning"])


def test_plan_detail_names_mirror_steps() -> None:
    f = Facts(current="web-r1", current_image="sha256:1", image="sha256:2", alive=2, routed=2,
              replicas=2, strategy="canary", steps=(0, 10, 50), mirrors=(100, 0, 0))
    assert decide(f).detail.endswith("via mirror 100%, 10%, 50%")


def test_the_progress_line_says_mirror_for_the_mirrored_release() -> None:
    from kiln.rollout.decide import Status
    from kiln_cli.progress import rollout_line

    st = Status(phase="step", strategy="canary", new="web-r2", old="web-r1", replicas=1,
                weights={"web-r2": 0, "web-r1": 100}, mirror=100)
    assert "web-r2 mirror 100% web-r1 100%" in rollout_line(st, now=0.0)
    st.phase = "drain_new"  # rolled back out of the mirror step: plain weights again
    assert "web-r2 0% web-r1 100%" in rollout_line(st, now=0.0)
