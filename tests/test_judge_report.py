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
    path = write_report(tmp_path / "reports" / "rollout-1.html", synthetic())
    text = path.read_text()
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert text.count("<svg viewBox") == 3
    assert "<script" not in text and not re.search(r"(src|href)=\"?https?:", text)
    assert "rolled back" in text and "6.1% vs 1.0%" in text and "judge: fail" in text


def test_bucket_samples() -> None:
    s = [Sample("a", 10.2, 200, 0.1, False), Sample("a", 10.7, 500, 0.0, True),
         Sample("a", 11.1, 200, 0.3, False), Sample("b", 10.5, 200, 0.2, False)]
    b = bucket_samples(s, 10.0)
    assert [(x.t, x.release, x.n, x.errors, x.p50) for x in b] == [
        (0.0, "a", 2, 1, 0.1), (0.0, "b", 1, 0, 0.2), (1.0, "a", 1, 0, 0.3)]


def test_report_for_rollout_from_recorded_series(tmp_path: Path) -> None:
    import json
    from typing import Any

    from kiln.analysis.report import report_for_rollout

    (tmp_path / "reports").mkdir()
    series = {"seconds": [{"t": 100 + i, "releases": {
        "web-r2": {"n": 18, "errors": 0, "p50": 0.05, "p95": 0.1},
        "web-r3": {"n": 2, "errors": i % 2, "p50": 0.08, "p95": 0.2}}} for i in range(30)],
        "weights": [[100.0, {"web-r2": 90, "web-r3": 10}], [125.0, {"web-r2": 100, "web-r3": 0}]],
        "phases": [[100.0, "step"], [125.0, "rollback"]]}
    (tmp_path / "reports" / "rollout-7.json").write_text(json.dumps(series))
    status = {"decisions": [{"time": 125.0, "step": 0, "weight": 10, "outcome": "fail",
                             "reason": "5xx 50% vs 0%"}]}

    class Store:
        def one(self, sql: str, args: tuple[Any, ...]) -> dict[str, Any]:
            return {"to_release": "web-r3", "from_release": "web-r2", "started_at": 100.0,
                    "outcome": "rolled_back", "reason": "5xx 50% vs 0%",
                    "status_json": json.dumps(status)}

    path = report_for_rollout(Store(), tmp_path, "web", 7)
    assert path == tmp_path / "reports" / "rollout-7.html"
    text = path.read_text()
    assert "10%: fail" in text and "rolled back" in text


if __name__ == "__main__":  # render a sample: python tests/test_judge_report.py OUT.html
    import sys
    print(write_report(Path(sys.argv[1]), synthetic()))
