"""The report's charts in a real browser (Debian's chromium, headless, Playwright) for three
judged rollouts under load — promoted, rolled back for errors, rolled back for latency — checked
against what the judge decided: the weight drawn at each decision is the weight it judged, the
canary's series exist only while it had weight, the limit lines are the judge's limits (the
latency one with its +5 ms floor), the bad canaries cross the limit they were rolled back for,
every decision is a mark, legends show values, mark labels do not overlap. The dashboard keeps
the last rollout's charts after it settled, with the report's data. Screenshots go to
KILN_TEST_ARTIFACTS/charts or the test's tmp dir (the path is printed)."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.analysis.judge import LATENCY_FLOOR_S
from kiln.testing.browser import chromium
from kiln.testing.load import Load
from kiln.testing.project import Proj, judged_canary, wait_for
from kiln.testing.serve import ServeProc

pytestmark = pytest.mark.e2e

INC_ERR, INC_LAT = 0.02, 0.25
JUDGED = judged_canary([(20, "8s"), (50, "4s")], max_latency_increase="25%")

READ = """() => { const h = window.KilnReport; return {
  keys: h.specs.map(s => s.key), data: h.charts.map(c => c.data), labels: h.labels || {},
  marks: h.payload.marks,
  legends: Array.from(document.querySelectorAll('.u-legend')).map(l =>
    Array.from(l.querySelectorAll('.u-value')).map(v => v.textContent)) }; }"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as context:
        yield context


def artifacts(tmp_path: Path) -> Path:
    env = os.environ.get("KILN_TEST_ARTIFACTS")
    out = Path(env) / "charts" if env else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


def rollout_rows(proj: Proj) -> dict[int, dict[str, Any]]:
    db = sqlite3.connect(f"file:{proj.dir / '.kiln' / 'state.db'}?mode=ro", uri=True)
    try:
        return {int(r[0]): {"started": float(r[1]), "outcome": r[2],
                            "status": json.loads(r[3])}
                for r in db.execute("SELECT id, started_at, outcome, status_json FROM rollouts")}
    finally:
        db.close()


def deploy(proj: Proj, **behaviour: object) -> None:
    proj.behave(**behaviour)
    with Load(proj.listen, rate=100, max_seconds=90) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=20)
        res = proj.kiln("deploy", timeout=120)
    assert res.returncode in (0, 3), res.stdout + res.stderr


def check_against_judge(seen: dict[str, Any], row: dict[str, Any]) -> dict[str, list[Any]]:
    """The drawn data against the judge's decisions; returns the charts' series by name."""
    assert seen["keys"] == ["split", "errors", "latency"]
    split, errors, latency = seen["data"]
    t, weight = split[0], split[2]
    series = {"weight": weight, "err_c": errors[1], "err_b": errors[2], "err_lim": errors[3],
              "lat_c": latency[1], "lat_b": latency[2], "lat_c95": latency[3],
              "lat_lim": latency[5]}
    decisions = row["status"]["decisions"]
    assert decisions, row
    for d in decisions:
        at = d["time"] - row["started"]
        # The weight drawn when the judge decided is the weight it judged. Weights are drawn
        # per second from the second's start: a step that began within the decision's second
        # (a judge that decides in under a second) shows from the next one.
        assert d["weight"] in weight[int(at): int(at) + 2], (at, d, weight)
        # Every decision is a mark at its time, coloured by its outcome.
        kind = "info" if d["outcome"] == "promote" else d["outcome"]
        assert any(abs(m["t"] - at) < 0.01 and m["kind"] == kind for m in seen["marks"]), (
            d, seen["marks"])
    for i in range(len(t)):
        if not any(weight[max(0, i - 1): i + 2]):  # no weight (± the 1 s it is noted at)
            assert series["err_c"][i] is None and series["lat_c"][i] is None, i
            assert series["lat_c95"][i] is None, i
        b = series["err_b"][i]
        assert (b is None) == (series["err_lim"][i] is None), i
        if b is not None:
            assert abs(series["err_lim"][i] - (b + INC_ERR)) < 1e-4, i
        b = series["lat_b"][i]
        assert (b is None) == (series["lat_lim"][i] is None), i
        if b is not None:
            want = max(b * (1 + INC_LAT), b + 1000 * LATENCY_FLOOR_S)
            assert abs(series["lat_lim"][i] - want) < 0.03, (i, b, series["lat_lim"][i])
    assert any(v is not None for v in series["err_c"]), ("no canary error series drawn", weight,
                                                         row["status"]["decisions"])
    assert any(v is not None for v in series["lat_c"]), "no canary latency drawn"
    # Legends show values, not "t: –", with the cursor off the chart.
    for legend in seen["legends"]:
        assert legend and legend[0] not in ("", "–"), seen["legends"]
    # Mark labels: within a row, no two overlap.
    for placed in seen["labels"].values():
        rows: dict[int, list[tuple[float, float]]] = {}
        for p in placed:
            rows.setdefault(p["row"], []).append((p["x0"], p["x1"]))
        for spans in rows.values():
            spans.sort()
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start, (spans, placed)
    return series


def crossed(series: dict[str, list[Any]], key: str, limit: str, until: int) -> bool:
    return any(c is not None and lim is not None and c > lim
               for c, lim in zip(series[key][:until + 1], series[limit][:until + 1],
                                 strict=True))


def test_report_charts_draw_what_the_judge_used(proj: Proj, browser: Any,
                                                tmp_path: Path) -> None:
    out = artifacts(tmp_path)
    proj.write(rollout=JUDGED, replicas=2)
    first = proj.kiln("deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    deploy(proj, version="2")                     # rollout 2: promoted
    deploy(proj, version="3", error_rate=0.25)    # rollout 3: rolled back (errors)
    deploy(proj, version="4", error_rate=0.0, extra_latency_ms=60)  # rollout 4: latency
    rows = rollout_rows(proj)
    assert [rows[i]["outcome"] for i in (2, 3, 4)] == ["promoted", "rolled_back",
                                                       "rolled_back"], rows
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    drawn: dict[int, dict[str, Any]] = {}
    for rid, name in ((2, "promoted"), (3, "errors-rolled-back"), (4, "latency-rolled-back")):
        report = proj.dir / ".kiln" / "reports" / f"rollout-{rid}.html"
        page.goto(report.as_uri())
        page.wait_for_function("() => window.KilnReport && window.KilnReport.charts.length === 3")
        assert page.locator("canvas").count() == 3
        seen = page.evaluate(READ)
        drawn[rid] = seen
        series = check_against_judge(seen, rows[rid])
        fail = [d for d in rows[rid]["status"]["decisions"] if d["outcome"] == "fail"]
        at = int(fail[-1]["time"] - rows[rid]["started"]) + 1 if fail else 0
        if rid == 2:
            assert not fail and not crossed(series, "err_c", "err_lim", len(series["err_c"]) - 1)
        elif rid == 3:
            assert fail and crossed(series, "err_c", "err_lim", at), series["err_c"]
        else:
            assert fail and crossed(series, "lat_c", "lat_lim", at), series["lat_c"]
        path = out / f"report-{rid}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
    # The dashboard keeps the last rollout's charts once it settled, with the report's data.
    with ServeProc(proj.dir) as srv:
        page.goto(srv.base + "/")
        page.wait_for_function("() => { const h = window.KilnDashboard.holders.web;"
                               " return h && h.chart.charts.length === 3; }")
        board = page.evaluate("() => window.KilnDashboard.holders.web.chart.charts"
                              ".map(c => c.data)")
        assert board == drawn[4]["data"]
        assert "<form" not in page.content()  # read-only: no buttons
        path = out / "dashboard-settled.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
    assert not errors, errors
