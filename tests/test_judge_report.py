"""The HTML report: one self-contained file with the three charts and the verdict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kiln.analysis.report import Decision, ReportData, bucket_samples, write_report
from kiln.platforms.base import Sample


def synthetic(seed: int = 1) -> ReportData:
    """A bad canary: from 10% to 50% weight, 6% errors and +50% latency, rolled back at 42 s."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0
    samples: list[Sample] = []
    for sec in range(60):
        w = 0 if sec >= 42 else (10 if sec < 20 else 50)
        for rel, share, err, med in (("web-r3", w, 0.06, 0.075), ("web-r2", 100 - w, 0.01, 0.05)):
            n = int(rng.poisson(2.0 * share))
            for _ in range(n):
                e = bool(rng.random() < err)
                samples.append(Sample(rel, t0 + sec + float(rng.random()), 500 if e else 200,
                                      float(med * np.exp(0.5 * rng.standard_normal())), e))
    return ReportData(
        service="web", canary="web-r3", baseline="web-r2", started=t0,
        weights=[(0, 10), (20, 50), (42, 0)],
        buckets=bucket_samples(samples, t0),
        decisions=[Decision(20, "10% → 50%", "pass"), Decision(42, "judge: fail", "fail")],
        outcome="rolled_back",
        reason="5xx 6.1% vs 1.0%, p=0.0003; after 212 canary requests",
        figures={"canary_requests": 212, "baseline_requests": 4100, "canary_error_rate": 0.061,
                 "baseline_error_rate": 0.010, "canary_p50": 0.075, "baseline_p50": 0.05,
                 "canary_p95": 0.17, "baseline_p95": 0.11, "error_p": 0.0003, "latency_p": 0.002},
    )


def test_report_is_one_self_contained_file(tmp_path: Path) -> None:
    data = synthetic()
    path = write_report(tmp_path / "reports" / "rollout-1.html", data)
    text = path.read_text()
    canary_total = sum(b.n for b in data.buckets if b.release == "web-r3")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    # uPlot and kiln's chart code are inlined: nothing is loaded from anywhere else.
    assert "uPlot" in text and "KilnCharts.render" in text and 'id="kiln-chart-data"' in text
    assert not re.search(r"(src|href)=\"?(https?:|//)", text)
    assert "rolled back" in text and "6.1% vs 1.0%" in text and "judge: fail" in text
    # Readable without JavaScript: the figures are in tables.
    assert "<noscript>" in text and f"<td>{canary_total}</td>" in text


def test_bucket_samples() -> None:
    s = [Sample("a", 10.2, 200, 0.1, False), Sample("a", 10.7, 500, 0.0, True),
         Sample("a", 11.1, 200, 0.3, False), Sample("b", 10.5, 200, 0.2, False)]
    b = bucket_samples(s, 10.0)
    assert [(x.t, x.release, x.n, x.errors, x.p50) for x in b] == [
        (0.0, "a", 2, 1, 0.1), (0.0, "b", 1, 0, 0.2), (1.0, "a", 1, 0, 0.3)]


def test_report_for_rollout_from_recorded_series(tmp_path: Path) -> None:
    import json

    from kiln.analysis.report import report_for_rollout
    from kiln.state.records import releases, rollouts
    from kiln.state.store import Store

    status = {"decisions": [{"time": 125.0, "step": 0, "weight": 10, "outcome": "fail",
                             "reason": "5xx 50% vs 0%"}]}
    store = Store.open(tmp_path)
    with store.tx() as c:
        for n in (2, 3):
            releases.insert(c, f"web-r{n}", "web", n, f"sha256:{n}", "cfg", "{}", 90.0, False,
                            "{}", None)
        rid = rollouts.insert(c, "web", "web-r2", "web-r3", "canary", "done", "{}", 100.0)
        rollouts.save_status(c, rid, "done", json.dumps(status), "rolled_back",
                             "5xx 50% vs 0%", 100.0, None)
    (tmp_path / "reports").mkdir()
    series = {"seconds": [{"t": 100 + i, "releases": {
        "web-r2": {"n": 18, "errors": 0, "p50": 0.05, "p95": 0.1},
        "web-r3": {"n": 2, "errors": i % 2, "p50": 0.08, "p95": 0.2}}} for i in range(30)],
        "weights": [[100.0, {"web-r2": 90, "web-r3": 10}], [125.0, {"web-r2": 100, "web-r3": 0}]],
        "phases": [[100.0, "step"], [125.0, "rollback"]]}
    (tmp_path / "reports" / f"rollout-{rid}.json").write_text(json.dumps(series))

    path = report_for_rollout(store, tmp_path, "web", rid)
    store.close()
    assert path == tmp_path / "reports" / f"rollout-{rid}.html"
    text = path.read_text()
    # Counts come from the series when the judge's figures lack them (never "–").
    assert "<td>60</td>" in text and "<td>540</td>" in text and "<td>15</td>" in text
    assert "canary step 1 (10%)" in text and "rolling back" in text
    text = path.read_text()
    assert "judge: fail at 10%" in text and "rolled back" in text


if __name__ == "__main__":  # render a sample: python tests/test_judge_report.py OUT.html
    import sys
    print(write_report(Path(sys.argv[1]), synthetic()))


def test_chart_payload_thresholds_weights_and_marks() -> None:
    from kiln.analysis.report import chart_payload

    data = synthetic()
    data.analysis = {"max_error_rate_increase": 0.02, "max_error_rate": 0.5,
                     "max_latency_increase": 0.25, "min_requests": 100, "on_no_data": "pause"}
    p = chart_payload(data)
    assert p["t"][:3] == [0, 1, 2] and len(p["t"]) == len(p["weight"]) == len(p["err"]["limit"])
    assert p["weight"][5] == 10 and p["weight"][25] == 50 and p["weight"][50] == 0
    for base, limit in zip(p["err"]["baseline"], p["err"]["limit"], strict=True):
        assert abs(limit - (0.5 if base is None else min(base + 0.02, 0.5))) < 1e-4
    for base, limit in zip(p["lat"]["baseline_p50"], p["lat"]["limit"], strict=True):
        assert (base is None) == (limit is None)
        assert base is None or abs(limit - 1.25 * base) < 0.02
    assert [m["kind"] for m in p["marks"]] == ["pass", "fail"]
    unjudged = chart_payload(synthetic())
    assert set(unjudged["err"]["limit"]) == {None}


def test_phase_labels_are_words() -> None:
    from kiln.analysis.report import from_series, phase_label

    assert phase_label("drain_old") == "draining the old release"
    assert phase_label("step", 50, 1) == "canary step 2 (50%)"
    data = from_series({"seconds": [], "weights": [[10.0, {"a": 10}], [20.0, {"a": 50}],
                                                    [30.0, {"a": 100}]],
                        "phases": [[0.0, "launch"], [5.0, "health"], [10.0, "step"],
                                   [30.0, "drain_old"], [31.0, "done"]]},
                       service="s", canary="a", baseline="b", started=0.0)
    assert [d.label for d in data.decisions] == [
        "launching instances", "health check", "canary step 1 (10%)", "canary step 2 (50%)",
        "draining the old release", "done"]


def test_every_rollout_gets_a_report_even_unjudged(tmp_path: Path) -> None:
    """No series (no judge, no traffic): the report is built from the rollout row and events."""
    import json

    from kiln.analysis.report import report_for_rollout
    from kiln.state.store import Store

    store = Store.open(tmp_path)
    with store.tx() as c:
        c.execute("INSERT INTO releases(id, service, number, image_digest, config_digest, "
                  "config_json, created_at) VALUES ('web-r1','web',1,'sha256:aaa','c','{}',0)")
        c.execute("INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
                  "status_json, outcome, reason, started_at, updated_at, finished_at) VALUES "
                  "('web', NULL, 'web-r1', 'canary', 'done', ?, 'promoted', 'first release', "
                  "?, ?, ?)", (json.dumps({"phase": "done"}), 1.0, 9.0, 9.0))
    import time as _t
    now = _t.time()
    with store.tx() as c:
        c.execute("UPDATE rollouts SET started_at = ?, finished_at = ?", (now - 5, now + 1))
        c.event("rollout.full", "100% to web-r1: first release", service="web")
    path = report_for_rollout(store, tmp_path, "web", 1)
    assert path is not None
    text = path.read_text()
    assert "sha256:aaa" in text and "promoted" in text and "(first release)" in text
    assert "100% to web-r1" in text
    store.close()
