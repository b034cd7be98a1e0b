"""One self-contained HTML report per rollout: inline SVG charts, inline CSS, no scripts.

`write_report(path, ReportData)` is pure apart from writing the file. `report_for_rollout()` builds
the ReportData from what the rollout recorded (the per-second series JSON that
`kiln.analysis.live.save_series` writes and the `rollouts` row) and writes `reports/rollout-N.html`.
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

from kiln.platforms.base import Sample

CANARY, BASELINE = "#e8590c", "#1c7ed6"
PASS, FAIL, NEUTRAL = "#2b8a3e", "#c92a2a", "#868e96"


@dataclass(frozen=True)
class Bucket:
    """One release's requests in one time bucket (t = seconds since the rollout started)."""

    t: float
    release: str
    n: int
    errors: int
    p50: float | None  # seconds, successful requests
    p95: float | None


@dataclass(frozen=True)
class Decision:
    t: float  # seconds since start
    label: str  # e.g. "weight 10%", "judge: fail"
    outcome: str = "info"  # pass | fail | inconclusive | info


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


# --- charts -----------------------------------------------------------------------------------

W, H = 920, 230
ML, MR, MT, MB = 64, 20, 16, 38


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10):
        if v <= m * mag:
            return float(m * mag)
    return float(10 * mag)


class _Chart:
    def __init__(self, t_max: float, y_max: float, y_label: str, y_fmt: str) -> None:
        self.t_max = max(t_max, 1.0)
        self.y_max = _nice_max(y_max)
        self.y_label, self.y_fmt = y_label, y_fmt
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        return ML + (W - ML - MR) * t / self.t_max

    def y(self, v: float) -> float:
        return MT + (H - MT - MB) * (1 - min(v, self.y_max) / self.y_max)

    def axes(self) -> None:
        p = self.parts
        for i in range(5):
            v = self.y_max * i / 4
            yy = self.y(v)
            p.append(f'<line x1="{ML}" x2="{W - MR}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
            p.append(f'<text x="{ML - 8}" y="{yy + 4:.1f}" class="tick" text-anchor="end">'
                     f'{self.y_fmt.format(v)}</text>')
        step = next(m for m in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 1e9)
                    if m >= self.t_max / 8)
        t = 0.0
        while t <= self.t_max + 1e-9:
            xx = self.x(t)
            p.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{H - MB}" y2="{H - MB + 4}" '
                     'class="axis"/>')
            p.append(f'<text x="{xx:.1f}" y="{H - MB + 17}" class="tick" text-anchor="middle">'
                     f'{_fmt_t(t)}</text>')
            t += step
        p.append(f'<line x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}" class="axis"/>')
        p.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 4}" class="label" '
                 'text-anchor="middle">time since the rollout started</text>')
        p.append(f'<text transform="translate(14,{(MT + H - MB) / 2}) rotate(-90)" '
                 f'class="label" text-anchor="middle">{html.escape(self.y_label)}</text>')

    def line(self, pts: Sequence[tuple[float, float | None]], color: str, dash: str = "",
             width: float = 2.0) -> None:
        seg: list[str] = []
        for t, v in [*pts, (0.0, None)]:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                if len(seg) > 1:
                    self.parts.append(
                        f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                        f'stroke-width="{width}" stroke-linejoin="round" '
                        f'{f"stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>')
                seg = []
                continue
            seg.append(f"{self.x(t):.1f},{self.y(v):.1f}")

    def area(self, pts: Sequence[tuple[float, float]], color: str, base: float = 0.0,
             top: float | None = None) -> None:
        if not pts:
            return
        up = " ".join(f"{self.x(t):.1f},{self.y(v if top is None else top):.1f}" for t, v in pts)
        down = " ".join(f"{self.x(t):.1f},{self.y(base if top is None else v):.1f}"
                        for t, v in reversed(pts))
        self.parts.append(f'<polygon points="{up} {down}" fill="{color}" fill-opacity="0.85"/>')

    def decisions(self, ds: Sequence[Decision], labels: bool) -> None:
        for i, d in enumerate(ds):
            color = {"pass": PASS, "fail": FAIL}.get(d.outcome, NEUTRAL)
            xx = self.x(d.t)
            self.parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{MT}" y2="{H - MB}" '
                              f'stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
            if labels:
                yy = MT + 12 + 14 * (i % 3)
                anchor = "end" if xx > W - 160 else "start"
                dx = -4 if anchor == "end" else 4
                self.parts.append(f'<text x="{xx + dx:.1f}" y="{yy}" class="flag" '
                                  f'text-anchor="{anchor}" fill="{color}">'
                                  f'{html.escape(d.label)}</text>')

    def svg(self, title: str, legend: Sequence[tuple[str, str, str]]) -> str:
        leg = "".join(
            f'<span class="key"><svg width="26" height="10"><line x1="0" x2="26" y1="5" y2="5" '
            f'stroke="{c}" stroke-width="{6 if d == "area" else 2.5}" '
            f'{"" if d in ("", "area") else f"stroke-dasharray={chr(34)}{d}{chr(34)}"}/></svg>'
            f"{html.escape(n)}</span>" for n, c, d in legend)
        return (f'<section class="chart"><div class="chead"><h2>{html.escape(title)}</h2>'
                f'<div class="legend">{leg}</div></div>'
                f'<svg viewBox="0 0 {W} {H}" width="100%" role="img" '
                f'aria-label="{html.escape(title)}">{"".join(self.parts)}</svg></section>')


def _fmt_t(t: float) -> str:
    return f"{int(t // 60)}:{int(t % 60):02d}" if t >= 60 else f"{t:.0f}s"


def _rolling(buckets: Sequence[Bucket], release: str, window: int) -> list[tuple[float, float | None]]:
    """Error rate over the last `window` buckets (per-second rates are too noisy to read)."""
    mine = [b for b in buckets if b.release == release]
    out: list[tuple[float, float | None]] = []
    for i, b in enumerate(mine):
        win = mine[max(0, i - window + 1): i + 1]
        n = sum(w.n for w in win)
        out.append((b.t, sum(w.errors for w in win) / n if n else None))
    return out


def _smooth(pts: list[tuple[float, float | None]], window: int) -> list[tuple[float, float | None]]:
    """Rolling median, so one slow second does not dominate the plot."""
    out: list[tuple[float, float | None]] = []
    for i, (t, _) in enumerate(pts):
        vals = sorted(v for _, v in pts[max(0, i - window + 1): i + 1] if v is not None)
        out.append((t, vals[len(vals) // 2] if vals else None))
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "–"


def _ms(v: Any) -> str:
    return f"{1000 * v:.0f} ms" if isinstance(v, int | float) else "–"


def render(data: ReportData) -> str:
    """The report as one HTML string."""
    t_max = max([b.t + 1 for b in data.buckets] + [w[0] for w in data.weights]
                + [d.t for d in data.decisions] + [1.0])
    # Traffic split.
    split = _Chart(t_max, 100, "share of traffic", "{:.0f}%")
    split.axes()
    pts: list[tuple[float, float]] = []
    for i, (t, w) in enumerate(data.weights):
        nxt = data.weights[i + 1][0] if i + 1 < len(data.weights) else t_max
        pts += [(t, float(w)), (nxt, float(w))]
    if pts:
        split.area([(t, 100.0) for t, _ in pts], BASELINE)
        split.area(pts, CANARY)
    split.decisions(data.decisions, labels=True)
    base = data.baseline or "baseline"
    # Errors.
    window = 5
    err_c = _rolling(data.buckets, data.canary, window)
    err_b = _rolling(data.buckets, base, window) if data.baseline else []
    errs = _Chart(t_max, max([v or 0 for _, v in err_c + err_b] + [0.01]) * 1.1,
                  "error rate (5 s window)", "{:.1%}")
    errs.axes()
    errs.line(err_b, BASELINE)
    errs.line(err_c, CANARY)
    errs.decisions(data.decisions, labels=False)
    # Latency.
    def lat(rel: str, attr: str) -> list[tuple[float, float | None]]:
        return _smooth([(b.t, getattr(b, attr) and 1000 * getattr(b, attr))
                        for b in data.buckets if b.release == rel], 3)
    lc50, lc95, lb50, lb95 = (lat(data.canary, "p50"), lat(data.canary, "p95"),
                              lat(base, "p50"), lat(base, "p95"))
    lats = _Chart(t_max, max([v or 0 for _, v in lc95 + lb95 + lc50 + lb50] + [1.0]) * 1.05,
                  "latency (ms)", "{:.0f}")
    lats.axes()
    lats.line(lb95, BASELINE, "6 4", 1.6)
    lats.line(lc95, CANARY, "6 4", 1.6)
    lats.line(lb50, BASELINE)
    lats.line(lc50, CANARY)
    lats.decisions(data.decisions, labels=False)

    ok = data.outcome in ("promoted", "pass")
    bad = data.outcome in ("rolled_back", "fail", "failed", "aborted")
    badge = PASS if ok else FAIL if bad else NEUTRAL
    f = data.figures
    rows = [
        ("requests", f.get("canary_requests", "–"), f.get("baseline_requests", "–")),
        ("errors", _pct(f.get("canary_error_rate")), _pct(f.get("baseline_error_rate"))),
        ("p50 latency", _ms(f.get("canary_p50")), _ms(f.get("baseline_p50"))),
        ("p95 latency", _ms(f.get("canary_p95")), _ms(f.get("baseline_p95"))),
    ]
    table = "".join(f"<tr><th>{html.escape(str(a))}</th><td>{html.escape(str(b))}</td>"
                    f"<td>{html.escape(str(c))}</td></tr>" for a, b, c in rows)
    pvals = " · ".join(f"{k.removesuffix('_p')} p={f[k]:.2g}" for k in
                       ("error_p", "ceiling_p", "latency_p") if isinstance(f.get(k), float))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.started))
    legend_sides = [(f"canary {data.canary}", CANARY, ""), (f"baseline {base}", BASELINE, "")]
    body = (
        f'<header><div><h1>{html.escape(data.service)} '
        f'<span class="rel">{html.escape(data.baseline or "–")} → {html.escape(data.canary)}'
        f'</span></h1><p class="sub">rollout started {when} · '
        f'{_fmt_t(t_max)} of traffic</p></div>'
        f'<div class="badge" style="background:{badge}">'
        f'{html.escape(data.outcome.replace("_", " ") or "running")}</div></header>'
        f'<p class="reason">{html.escape(data.reason)}</p>'
        f'<div class="figs"><table><tr><th></th><th style="color:{CANARY}">canary</th>'
        f'<th style="color:{BASELINE}">baseline</th></tr>{table}</table>'
        f'<p class="pv">{html.escape(pvals or "")}</p></div>'
        + split.svg("Traffic split", [(f"canary {data.canary}", CANARY, "area"),
                                      (f"baseline {base}", BASELINE, "area")])
        + errs.svg("Error rate", legend_sides)
        + lats.svg("Latency", [*legend_sides, ("p50", "#495057", ""),
                               ("p95", "#495057", "6 4")])
        + '<footer>kiln · sequential judge (mSPRT), see docs/judge.md</footer>')
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>kiln rollout {html.escape(data.service)} {html.escape(data.canary)}</title>"
        f"<style>{_CSS}</style></head><body><main>{body}</main></body></html>")


_CSS = """
body{margin:0;background:#f4f5f7;color:#212529;font:15px/1.45 -apple-system,BlinkMacSystemFont,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:980px;margin:24px auto;padding:0 20px}
header{display:flex;justify-content:space-between;align-items:center}
h1{font-size:26px;margin:0;font-weight:650}.rel{color:#868e96;font-weight:400;font-size:20px}
.sub{margin:2px 0 0;color:#868e96;font-size:13px}
.badge{color:#fff;padding:8px 18px;border-radius:999px;font-weight:650;text-transform:uppercase;
letter-spacing:.05em;font-size:14px}
.reason{font-size:16px;margin:14px 0;padding:12px 16px;background:#fff;border-radius:10px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.figs{display:flex;gap:24px;align-items:center;background:#fff;border-radius:10px;padding:8px 16px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.figs table{border-collapse:collapse}.figs th,.figs td{padding:3px 14px;text-align:right}
.figs th:first-child{text-align:left;color:#495057;font-weight:500}
.figs td{font-variant-numeric:tabular-nums}.pv{color:#495057;font-size:13px}
.chart{background:#fff;border-radius:10px;margin:16px 0;padding:10px 12px 4px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
.chead{display:flex;justify-content:space-between;align-items:baseline}
h2{font-size:16px;margin:4px 6px;font-weight:600}
.legend{font-size:13px;color:#495057}.key{margin-left:14px;white-space:nowrap}
.key svg{vertical-align:middle;margin-right:5px}
.grid{stroke:#e9ecef;stroke-width:1}.axis{stroke:#adb5bd;stroke-width:1}
.tick{font-size:11px;fill:#868e96}.label{font-size:12px;fill:#495057}
.flag{font-size:11px;font-weight:600}
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
                started: float | None = None) -> ReportData:
    """ReportData from the series JSON `kiln.analysis.live.Series.to_json()` writes."""
    seconds = series.get("seconds", [])
    t0 = started if started is not None else (seconds[0]["t"] if seconds else time.time())
    buckets = [Bucket(float(s["t"]) - t0, rel, int(v["n"]), int(v["errors"]), v.get("p50"),
                      v.get("p95")) for s in seconds for rel, v in s["releases"].items()]
    weights = [(float(t) - t0, int(w.get(canary, 0))) for t, w in series.get("weights", [])]
    decisions = [Decision(float(t) - t0, str(phase)) for t, phase in series.get("phases", [])]
    return ReportData(service, canary, baseline, t0, weights, buckets, decisions)


def report_for_rollout(store: Any, home: Path, service: str, rollout_id: int) -> Path | None:
    """Write `reports/rollout-N.html` from the recorded series and the rollout's row."""
    src = home / "reports" / f"rollout-{rollout_id}.json"
    if not src.exists():
        return None
    row = store.one("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
    if row is None:
        return None
    status = json.loads(row["status_json"] or "{}")
    data = from_series(json.loads(src.read_text()), service=service,
                       canary=str(row["to_release"]), baseline=row["from_release"],
                       started=float(row["started_at"]))
    data.outcome = str(row["outcome"] or status.get("phase") or "")
    data.reason = str(row["reason"] or status.get("reason") or "")
    for d in status.get("decisions", []) or []:
        if isinstance(d, dict):
            data.figures.update(d.get("figures") or {})
            t = d.get("time")
            if isinstance(t, int | float):
                outcome = str(d.get("outcome") or "info")
                data.decisions.append(Decision(
                    float(t) - data.started, f"{d.get('weight', '?')}%: {outcome}", outcome))
    return write_report(home / "reports" / f"rollout-{rollout_id}.html", data)
