"""One self-contained HTML report per rollout, charted with the vendored uPlot (kiln.charts).

Every figure is also in a plain table, so the report reads without JavaScript; the charts are the
same code and payload (`chart_payload`) the dashboard draws live. `report_for_rollout()` builds the
ReportData from what the rollout recorded (the per-second series JSON that
`kiln.analysis.live.save_series` writes when a judge ran, the `rollouts` row, the releases and the
event log) and writes `reports/rollout-N.html`; a rollout without a judge or traffic still gets one.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.analysis.explain import explain
from kiln.charts import asset, inline_script, uplot_version
from kiln.platforms.base import Sample
from kiln.state.records import events as event_records
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.store import Store

CANARY, BASELINE = "#e8590c", "#1c7ed6"
PASS, FAIL, NEUTRAL = "#2b8a3e", "#c92a2a", "#868e96"
ERROR_WINDOW = 5
"""Seconds in the error-rate window: per-second rates are too noisy to read."""

PHASES = {
    "launch": "launching instances",
    "health": "health check",
    "preview": "preview (X-Kiln-Release requests only)",
    "step": "canary step",
    "roll": "rolling replacement",
    "drain_old": "draining the old release",
    "standby": "blue-green standby",
    "rollback": "rolling back",
    "restore": "restoring the old release",
    "drain_new": "draining the new release",
    "done": "done",
}
OUTCOMES = {"promoted": "promoted", "rolled_back": "rolled back", "aborted": "aborted",
            "failed": "failed", "running": "running", "": "running"}


def share_label(weight: int | None, mirror: int | None = 0) -> str:
    """What a step gives the canary: '50%', or 'mirror 100%' for a mirror step (its weight is
    0: it serves no one, it gets a copy of that share of the requests)."""
    return f"mirror {mirror}%" if mirror else f"{weight}%"


def phase_label(phase: str, weight: int | None = None, step: int | None = None,
                mirror: int | None = 0) -> str:
    """A phase as people say it: 'canary step 2 (50%)', 'canary step 1 (mirror 100%)',
    'health check'."""
    text = PHASES.get(phase, phase.replace("_", " "))
    if phase == "step":
        num = f" {step + 1}" if step is not None else ""
        text = f"canary step{num}" + (f" ({share_label(weight, mirror)})"
                                      if weight is not None or mirror else "")
    return text


@dataclass(frozen=True)
class Bucket:
    """One release's requests in one time bucket (t = seconds since the rollout started)."""

    t: float
    release: str
    n: int
    errors: int
    p50: float | None  # seconds, successful requests
    p95: float | None


def _quantile(b: Bucket, q: str) -> float | None:
    """A bucket's "p50" or "p95"."""
    return b.p50 if q == "p50" else b.p95


@dataclass(frozen=True)
class Decision:
    """A mark on the charts: a phase change or a judge decision."""

    t: float  # seconds since start
    label: str  # e.g. "canary step 2 (50%)", "judge: fail"
    outcome: str = "info"  # pass | fail | inconclusive | info | phase


@dataclass(frozen=True)
class StepDecision:
    """One row of the judge's table: what it decided at a step, with its figures."""

    t: float
    step: int
    weight: int
    outcome: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    mirror: int = 0
    """The share copied to the canary when the step was a mirror step (its weight is 0)."""


@dataclass
class ReportData:
    service: str
    canary: str
    baseline: str | None
    started: float  # unix seconds
    weights: list[tuple[float, int]] = field(default_factory=list)
    """(t, canary weight in percent), a step function."""
    buckets: list[Bucket] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    outcome: str = ""  # promoted | rolled_back | aborted | failed | running
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    steps: list[StepDecision] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    """release -> image digest."""
    analysis: dict[str, Any] | None = None
    """The judge's thresholds (the spec's rollout.analysis), None when the rollout was unjudged."""
    strategy: str = ""
    finished: float | None = None
    synthetic: str = ""
    """How much of the traffic was kiln's own synthetic load (`rollout.load`), in words."""
    mirrors: list[tuple[float, int]] = field(default_factory=list)
    """(t, share of requests copied to the canary in percent), a step function: mirror steps."""
    step_mirrors: dict[int, int] = field(default_factory=dict)
    """step index -> its mirror share, for the rollout's mirror steps (from its release)."""


def bucket_samples(samples: Iterable[Sample], started: float, width: float = 1.0) -> list[Bucket]:
    """Group samples per release into `width`-second buckets with counts and p50/p95."""
    groups: dict[tuple[int, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(int((s.time - started) // width), s.release_id)].append(s)
    out = []
    for (k, rel), ss in sorted(groups.items()):
        ok = sorted(s.duration for s in ss if not s.error)
        out.append(Bucket(k * width, rel, len(ss), sum(s.error for s in ss),
                          _q(ok, 0.5), _q(ok, 0.95)))
    return out


def _q(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# --- the chart payload (shared with the dashboard) ---------------------------------------------


def _weight_at(weights: Sequence[tuple[float, int]], t: float) -> int | None:
    w: int | None = None
    for wt, value in weights:
        if wt <= t + 1e-9:
            w = value
        else:
            break
    return w


def _weight_in_second(weights: Sequence[tuple[float, int]], t: int) -> int | None:
    """The weight drawn for second t: the one in force at its start, or, if the canary had
    none then, the first it got within the second (a step the judge ended in under a second
    is still drawn)."""
    w = _weight_at(weights, t)
    if w:
        return w
    return next((value for wt, value in weights if t < wt < t + 1 and value), w)


def _smooth(values: list[float | None], window: int) -> list[float | None]:
    """Rolling median, so one slow second does not dominate the plot."""
    out: list[float | None] = []
    for i in range(len(values)):
        vals = sorted(v for v in values[max(0, i - window + 1): i + 1] if v is not None)
        out.append(vals[len(vals) // 2] if vals and values[i] is not None else None)
    return out


def _rate(n: list[int], e: list[int], window: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(len(n)):
        tot = sum(n[max(0, i - window + 1): i + 1])
        out.append(sum(e[max(0, i - window + 1): i + 1]) / tot if tot and n[i] else None)
    return out


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def chart_payload(data: ReportData, now: float | None = None) -> dict[str, Any]:
    """Per-second arrays for the three charts (traffic split, error rate, latency) and the marks.

    Thresholds: the judge fails a canary whose error rate exceeds the baseline's by more than
    `max_error_rate_increase` (or `max_error_rate` outright), or whose latency is worse by more
    than `max_latency_increase`; the limit lines draw those against the baseline as it went.
    """
    end = max([b.t + 1 for b in data.buckets] + [w[0] for w in data.weights]
              + [d.t for d in data.decisions] + [1.0])
    if now is not None:
        end = max(end, now - data.started)
    if data.finished is not None:
        end = max(end, data.finished - data.started)
    n_sec = min(math.ceil(end) + 1, 6 * 3600)
    base = data.baseline or ""
    per: dict[str, dict[int, Bucket]] = defaultdict(dict)
    for b in data.buckets:
        per[b.release][int(b.t)] = b
    ts = list(range(n_sec))

    def col(rel: str, q: str) -> list[float | None]:
        return [_quantile(per[rel][t], q) if t in per[rel] else None for t in ts]

    def counts(rel: str) -> tuple[list[int], list[int]]:
        return ([per[rel][t].n if t in per[rel] else 0 for t in ts],
                [per[rel][t].errors if t in per[rel] else 0 for t in ts])

    weight = [_weight_in_second(data.weights, t) for t in ts]
    mirror = ([_weight_in_second(data.mirrors, t) or None for t in ts]
              if any(m for _, m in data.mirrors) else None)
    # The canary's series start when it has weight or a mirror step copies requests to it
    # (requests before that — health checks, a drain — are not what the judge compared) and
    # end when the rollback takes it away. Weights are noted once a second, so the second on
    # either side of a change is kept.
    has = [bool(w) or bool(mirror and mirror[i]) for i, w in enumerate(weight)]
    weighted = ([any(has[max(0, i - 1): i + 2]) for i in range(n_sec)] if data.weights
                else [True] * n_sec)

    def canary_only(values: list[float | None]) -> list[float | None]:
        return [v if on else None for v, on in zip(values, weighted, strict=True)]

    err_c = canary_only(_rate(*counts(data.canary), ERROR_WINDOW))
    err_b = _rate(*counts(base), ERROR_WINDOW)
    lat = {f"{side}_{q}": _smooth([None if v is None else 1000 * v for v in col(rel, q)], 3)
           for side, rel in (("canary", data.canary), ("baseline", base)) for q in ("p50", "p95")}
    lat["canary_p50"] = canary_only(lat["canary_p50"])
    lat["canary_p95"] = canary_only(lat["canary_p95"])
    a = data.analysis or {}
    err_limit: list[float | None] = [None] * n_sec
    lat_limit: list[float | None] = [None] * n_sec
    if data.analysis is not None:
        inc = float(a.get("max_error_rate_increase") or 0.0)
        ceiling = a.get("max_error_rate")
        for i, rate in enumerate(err_b):
            lims = [x for x in ((None if rate is None else rate + inc),
                                (float(ceiling) if ceiling is not None else None)) if x is not None]
            err_limit[i] = round(min(lims), 5) if lims else None
        # The judge pulls numpy and scipy (~0.2 s): only for a judged rollout's limit lines,
        # so `kiln deploy` of an unjudged one writes its report without them.
        from kiln.analysis.judge import LATENCY_FLOOR_S

        rel_inc = float(a.get("max_latency_increase") or 0.0)
        floor_ms = 1000 * LATENCY_FLOOR_S  # the judge allows at least this much more
        lat_limit = [None if v is None else max(v * (1 + rel_inc), v + floor_ms)
                     for v in lat["baseline_p50"]]
    marks = [{"t": round(d.t, 2), "label": d.label, "kind": d.outcome} for d in data.decisions]
    return {
        "t": ts, "weight": weight, "mirror": mirror, "window": ERROR_WINDOW,
        "err": {"canary": [_r(v, 5) for v in err_c], "baseline": [_r(v, 5) for v in err_b],
                "limit": err_limit},
        "lat": {**{k: [_r(v, 2) for v in vs] for k, vs in lat.items()},
                "limit": [_r(v, 2) for v in lat_limit]},
        "marks": sorted(marks, key=lambda m: float(m["t"])),
        "names": {"canary": data.canary, "baseline": data.baseline},
    }


# --- the page ----------------------------------------------------------------------------------


def _fmt_t(t: float) -> str:
    return f"{int(t // 60)}:{int(t % 60):02d}" if t >= 60 else f"{t:.0f}s"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "–"


def _ms(v: Any) -> str:
    return f"{1000 * v:.0f} ms" if isinstance(v, int | float) else "–"


def _p(v: Any) -> str:
    return f"{v:.2g}" if isinstance(v, int | float) else "–"


def totals(data: ReportData, release: str | None) -> dict[str, Any]:
    """Requests, errors and latency of one release over the whole series (request-weighted
    medians of the per-second quantiles when the judge gave no figure)."""
    mine = [b for b in data.buckets if release is not None and b.release == release]
    n = sum(b.n for b in mine)
    errors = sum(b.errors for b in mine)

    def wq(q: str) -> float | None:
        pts = sorted((v, b.n) for b in mine if (v := _quantile(b, q)) is not None)
        total = sum(w for _, w in pts)
        acc = 0
        for v, w in pts:
            acc += w
            if acc >= total / 2:
                return float(v)
        return None

    return {"requests": n, "errors": errors, "error_rate": errors / n if n else None,
            "p50": wq("p50"), "p95": wq("p95")} if mine else {}


def _summary_rows(data: ReportData) -> list[tuple[str, str, str]]:
    f = data.figures
    tc, tb = totals(data, data.canary), totals(data, data.baseline)

    def pick(side: str, key: str, tot: dict[str, Any]) -> Any:
        v = f.get(f"{side}_{key}")
        return v if isinstance(v, int | float) else tot.get(key)

    def count(tot: dict[str, Any], side: str, key: str) -> str:
        v = tot.get(key)
        if v is None:
            v = f.get(f"{side}_{key}")
        return str(v) if isinstance(v, int | float) else "–"

    return [
        ("requests (whole rollout)", count(tc, "canary", "requests"),
         count(tb, "baseline", "requests")),
        ("errors (whole rollout)", count(tc, "canary", "errors"), count(tb, "baseline", "errors")),
        ("error rate", _pct(pick("canary", "error_rate", tc)),
         _pct(pick("baseline", "error_rate", tb))),
        ("p50 latency", _ms(pick("canary", "p50", tc)), _ms(pick("baseline", "p50", tb))),
        ("p95 latency", _ms(pick("canary", "p95", tc)), _ms(pick("baseline", "p95", tb))),
    ]


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def thresholds_text(analysis: dict[str, Any] | None) -> str:
    if analysis is None:
        return "not judged (no rollout.analysis in the spec, or no baseline to compare with)"
    from kiln.analysis.judge import LATENCY_FLOOR_S

    parts = [f"error rate at most +{_pct(analysis.get('max_error_rate_increase'))} over the "
             "baseline"]
    if analysis.get("max_error_rate") is not None:
        parts.append(f"never above {_pct(analysis['max_error_rate'])}")
    parts.append(f"latency at most +{100 * float(analysis.get('max_latency_increase') or 0):.0f}%"
                 f" or +{1000 * LATENCY_FLOOR_S:.0f} ms, whichever is more")
    parts.append(f"at least {analysis.get('min_requests')} canary requests, "
                 f"no data → {analysis.get('on_no_data')}")
    return "; ".join(parts)


def _synthetic_note(data: ReportData) -> str:
    if not data.synthetic:
        return ""
    return f'<p class="synthetic"><b>Synthetic traffic.</b> {html.escape(data.synthetic)}</p>'


def steps_rows(data: ReportData) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for s in data.steps:
        f = s.figures
        rows.append((_fmt_t(s.t), str(s.step + 1), share_label(s.weight, s.mirror), s.outcome,
                     str(f.get("canary_requests", "–")), str(f.get("baseline_requests", "–")),
                     f"{_pct(f.get('canary_error_rate'))} vs {_pct(f.get('baseline_error_rate'))}",
                     f"{_ms(f.get('canary_p50'))} vs {_ms(f.get('baseline_p50'))}",
                     " · ".join(f"{k.removesuffix('_p')} {_p(f[k])}" for k in
                                ("error_p", "ceiling_p", "latency_p") if k in f) or "–",
                     s.reason))
    return rows


STEP_HEAD = ("at", "step", "weight", "decision", "canary req.", "baseline req.", "error rate",
             "p50", "p-values", "reason")


def render(data: ReportData) -> str:
    """The report as one HTML string (uPlot and kiln's chart code inlined)."""
    t_max = max([b.t + 1 for b in data.buckets] + [w[0] for w in data.weights]
                + [d.t for d in data.decisions] + [1.0])
    if data.finished is not None:
        t_max = max(t_max, data.finished - data.started)
    outcome = OUTCOMES.get(data.outcome, data.outcome.replace("_", " "))
    ok = data.outcome == "promoted"
    bad = data.outcome in ("rolled_back", "failed", "aborted")
    badge = PASS if ok else FAIL if bad else NEUTRAL
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.started))
    summary = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td>"
                      f"<td>{html.escape(c)}</td></tr>" for a, b, c in _summary_rows(data))
    steps = (_table(STEP_HEAD, steps_rows(data), "steps") if data.steps else
             "<p class=muted>The judge made no decision in this rollout"
             f"{'' if data.analysis else ' (it was not judged)'}.</p>")
    images = _table(("release", "role", "image digest"), [
        (rel, "canary" if rel == data.canary else "baseline" if rel == data.baseline else "",
         digest) for rel, digest in data.images.items()], "images")
    timeline = _table(("at", "what"), [(_fmt_t(d.t), d.label) for d in data.decisions],
                      "timeline")
    payload = json.dumps(chart_payload(data)).replace("</", "<\\/")
    body = (
        f'<header><div><h1>{html.escape(data.service)} '
        f'<span class="rel">{html.escape(data.baseline or "(first release)")} → '
        f'{html.escape(data.canary)}</span></h1><p class="sub">'
        f'{html.escape(data.strategy or "rollout")} started {when} · {_fmt_t(t_max)}</p></div>'
        f'<div class="badge" style="background:{badge}">{html.escape(outcome)}</div></header>'
        f'<p class="reason">{html.escape(data.reason or "–")}</p>'
        f'<section class="card"><h2>Canary vs baseline</h2><table class="figs"><tr><th></th>'
        f'<th style="color:{CANARY}">canary {html.escape(data.canary)}</th>'
        f'<th style="color:{BASELINE}">baseline {html.escape(data.baseline or "–")}</th></tr>'
        f'{summary}</table><p class="muted">Thresholds: {html.escape(thresholds_text(data.analysis))}'
        f'</p>{_synthetic_note(data)}</section>'
        f'<div id="charts"><noscript><p class="muted">The charts need JavaScript; every figure is in '
        f'the tables.</p></noscript></div>'
        f'<section class="card"><h2>The judge\'s decisions per step</h2>{steps}'
        f'{words_html(data)}</section>'
        f'<section class="card"><h2>Timeline</h2>{timeline}</section>'
        f'<section class="card"><h2>Images</h2>{images}</section>'
        f'<footer>kiln · sequential judge (mSPRT), see docs/judge.md · charts: uPlot '
        f'{html.escape(uplot_version())} (MIT)</footer>')
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>kiln rollout {html.escape(data.service)} {html.escape(data.canary)}</title>"
        f"<style>{asset('uPlot.min.css')}{CSS}</style></head><body><main>{body}</main>"
        f'<script type="application/json" id="kiln-chart-data">{payload}</script>'
        f"{inline_script('uPlot.iife.min.js')}{inline_script('kiln-charts.js')}"
        "<script>window.KilnReport=KilnCharts.render(document.getElementById('charts'),"
        "JSON.parse(document.getElementById('kiln-chart-data').textContent));</script>"
        "</body></html>")


CSS = """
body{margin:0;background:#f4f5f7;color:#212529;font:15px/1.45 -apple-system,BlinkMacSystemFont,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1000px;margin:24px auto;padding:0 20px}
header{display:flex;justify-content:space-between;align-items:center}
h1{font-size:26px;margin:0;font-weight:650}.rel{color:#868e96;font-weight:400;font-size:20px}
.sub{margin:2px 0 0;color:#868e96;font-size:13px}
.badge{color:#fff;padding:8px 18px;border-radius:999px;font-weight:650;text-transform:uppercase;
letter-spacing:.05em;font-size:14px}
.reason{font-size:16px;margin:14px 0;padding:12px 16px;background:#fff;border-radius:10px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card,.chart{background:#fff;border-radius:10px;margin:16px 0;padding:10px 14px;
box-shadow:0 1px 3px rgba(0,0,0,.08);overflow-x:auto}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;text-align:left;
vertical-align:top}thead th{border-bottom:1px solid #dee2e6;color:#495057;font-weight:600}
td{font-variant-numeric:tabular-nums}.figs td,.figs th{text-align:right}
.figs th:first-child{text-align:left;color:#495057;font-weight:500}
.images td:last-child{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.muted{color:#868e96;font-size:13px}
h2{font-size:16px;margin:4px 2px 8px;font-weight:600}
h3{font-size:14px;margin:10px 2px 4px;font-weight:600}.words{margin:0 0 6px;font-size:13px}
.words .fail{color:#c92a2a}.words .pass{color:#2b8a3e}
footer{color:#adb5bd;font-size:12px;text-align:center;margin:20px 0}
"""


def write_report(path: Path, rollout: ReportData) -> Path:
    """Write the report atomically; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(rollout), encoding="utf-8")
    tmp.replace(path)
    return path


def from_series(series: dict[str, Any], *, service: str, canary: str, baseline: str | None,
                started: float | None = None,
                step_mirrors: dict[int, int] | None = None) -> ReportData:
    """ReportData from the series JSON `kiln.analysis.live.Series.to_json()` writes
    (`step_mirrors`: the rollout's mirror steps, step index -> share, for the marks)."""
    seconds = series.get("seconds", [])
    t0 = started if started is not None else (seconds[0]["t"] if seconds else time.time())
    buckets = [Bucket(float(s["t"]) - t0, rel, int(v["n"]), int(v["errors"]), v.get("p50"),
                      v.get("p95")) for s in seconds for rel, v in s["releases"].items()]
    weights = [(float(t) - t0, int(w.get(canary, 0))) for t, w in series.get("weights", [])]
    data = ReportData(service, canary, baseline, t0, weights, buckets)
    data.step_mirrors = dict(step_mirrors or {})
    data.decisions = phase_marks(data, series.get("phases", []))
    return data


def phase_marks(data: ReportData, phases: Iterable[Sequence[Any]]) -> list[Decision]:
    """A readable mark per phase change; each canary step names its number and weight."""
    timeline = sorted([(float(t) - data.started, 0, str(p)) for t, p in phases]
                      + [(t, 1, str(w)) for t, w in data.weights])
    out: list[Decision] = []
    phase, step = "", 0
    for t, kind, value in timeline:
        if kind == 0:
            phase = value
            if value == "step":
                step += 1
            out.append(Decision(t, phase_label(value, _weight_at(data.weights, t + 0.5),
                                               step - 1, data.step_mirrors.get(step - 1)),
                                "phase"))
        elif phase == "step" and not any(abs(d.t - t) < 0.6 for d in out):
            step += 1  # step -> step: the weight changed without a phase change
            out.append(Decision(t, phase_label("step", int(value), step - 1,
                                               data.step_mirrors.get(step - 1)), "phase"))
    return out


def mirror_steps(config: dict[str, Any]) -> dict[int, int]:
    """step index -> mirror share of a release's recorded config (`rollout.steps[i].mirror`)."""
    steps = (config.get("rollout") or {}).get("steps") if isinstance(config, dict) else None
    if not isinstance(steps, list):
        return {}
    return {i: int(step["mirror"]) for i, step in enumerate(steps)
            if isinstance(step, dict) and isinstance(step.get("mirror"), int) and step["mirror"]}


def _events_timeline(store: Store, service: str, start: float, end: float, t0: float
                     ) -> tuple[list[tuple[float, int]], list[Decision], list[tuple[float, int]]]:
    """Weights, marks and mirror shares from the event log (exact times)."""
    weights: list[tuple[float, int]] = []
    marks: list[Decision] = []
    mirrors: list[tuple[float, int]] = []
    for r in event_records.rollout_events_between(store, service, start - 0.5, end + 0.5):
        t = float(r["time"]) - t0
        kind = str(r["kind"]).removeprefix("rollout.")
        data = json.loads(r["data_json"] or "{}")
        if kind == "step" and isinstance(data.get("weight"), int):
            mirror = data.get("mirror") if isinstance(data.get("mirror"), int) else 0
            weights.append((t, int(data["weight"])))
            mirrors.append((t, int(mirror)))
            marks.append(Decision(t, phase_label("step", data["weight"], data.get("step"),
                                                 mirror), "phase"))
        elif kind in ("full", "promoted"):
            weights.append((t, 100))
            mirrors.append((t, 0))
            marks.append(Decision(t, str(r["message"])[:60], "phase"))
        elif kind in ("rolled_back", "aborted", "failed"):
            weights.append((t, 0))
            mirrors.append((t, 0))
            marks.append(Decision(t, OUTCOMES.get(kind, kind), "fail"))
        elif kind != "paused":
            marks.append(Decision(t, kind.replace("_", " "), "phase"))
    return weights, marks, mirrors


DRY_MARKS = {"would_fail": ("dry run: the judge would have rolled back", "fail"),
             "dry_run": ("dry run: went on as if the step passed", "info")}
"""Marks of `analysis.dry_run` decisions: what the judge said, and that nothing was done."""


def words_html(data: ReportData) -> str:
    """Each judged step's verdict per metric in plain words (kiln.analysis.explain); the
    p-values stay in the table above."""
    items = []
    for s in data.steps:
        said = explain(s.figures)
        if not said:
            continue
        lis = "".join(f"<li class={e.outcome}>{html.escape(e.line())}</li>" for e in said)
        items.append(f"<h3>step {s.step + 1} ({share_label(s.weight, s.mirror)}): "
                     f"{html.escape(s.outcome)}</h3>"
                     f"<ul class=words>{lis}</ul>")
    return "".join(items)


def load_report_data(store: Store, home: Path, service: str, rollout_id: int) -> ReportData | None:
    """Everything the report shows about one rollout, from what is on disk."""
    row = rollout_records.row(store, rollout_id)
    if row is None:
        return None
    status = json.loads(row["status_json"] or "{}")
    started = float(row["started_at"])
    finished = row["finished_at"] if "finished_at" in row.keys() else None  # noqa: SIM118
    src = home / "reports" / f"rollout-{rollout_id}.json"
    canary, baseline = str(row["to_release"]), row["from_release"]
    canary_row = release_records.row(store, canary)
    try:
        canary_cfg = json.loads(canary_row["config_json"] or "{}") if canary_row else {}
    except ValueError:
        canary_cfg = {}
    step_mirrors = mirror_steps(canary_cfg)
    if src.exists():
        data = from_series(json.loads(src.read_text()), service=service, canary=canary,
                           baseline=baseline, started=started, step_mirrors=step_mirrors)
    else:
        data = ReportData(service, canary, baseline, started)
        data.step_mirrors = step_mirrors
    end = float(finished) if finished is not None else time.time()
    weights, marks, mirrors = _events_timeline(store, service, started, end, started)
    data.mirrors = mirrors
    if not data.weights:
        data.weights = weights
        data.decisions = marks + data.decisions
    elif weights:
        # The events' times are exact; the series notes weights once a second and misses
        # a step shorter than that (a canary rolled back within a second of its weight).
        data.weights = weights
    data.finished = float(finished) if finished is not None else None
    data.outcome = str(row["outcome"] or status.get("phase") or "")
    data.reason = str(row["reason"] or status.get("reason") or "")
    data.strategy = str(row["strategy"]) if "strategy" in row.keys() else ""  # noqa: SIM118
    if isinstance(status.get("synthetic"), dict):
        from kiln.rollout.synthetic import synthetic_words

        data.synthetic = (synthetic_words({**status["synthetic"], "running": False})
                          + ", through the router: split like real traffic and judged with it")
    for d in status.get("decisions", []) or []:
        if not isinstance(d, dict):
            continue
        figures = d.get("figures") or {}
        data.figures.update(figures)
        t = d.get("time")
        if isinstance(t, int | float):
            outcome = str(d.get("outcome") or "info")
            rel_t = float(t) - data.started
            step = int(d.get("step") or 0)
            mirror = data.step_mirrors.get(step, 0)
            data.steps.append(StepDecision(rel_t, step, int(d.get("weight") or 0), outcome,
                                           str(d.get("reason") or ""), figures, mirror))
            by_hand = outcome == "promote"  # `kiln promote` or the dashboard's button
            at = f"at {share_label(d.get('weight', '?'), mirror)}"
            label, mark = DRY_MARKS.get(outcome, (f"judge: {outcome}", outcome))
            if by_hand:
                label, mark = "promoted by hand", "info"
            data.decisions.append(Decision(rel_t, f"{label} {at}", mark))
    data.decisions.sort(key=lambda d: d.t)
    for rel in (baseline, canary):
        if rel is None:
            continue
        r = release_records.row(store, str(rel))
        if r is None:
            continue
        data.images[str(rel)] = str(r["image_digest"])
        if rel == canary and baseline is not None:
            try:
                cfg = json.loads(r["config_json"] or "{}")
            except ValueError:
                cfg = {}
            data.analysis = ((cfg.get("rollout") or {}).get("analysis")) or None
    return data


def report_for_rollout(store: Store, home: Path, service: str, rollout_id: int) -> Path | None:
    """Write `reports/rollout-N.html` for any rollout (judged or not, with or without traffic)."""
    data = load_report_data(store, home, service, rollout_id)
    if data is None:
        return None
    return write_report(home / "reports" / f"rollout-{rollout_id}.html", data)
