"""The dashboard's HTML: rendered on the server (it reads without JavaScript); the script only
swaps in the fragments each server-sent event carries and redraws the live charts."""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any

from kiln.analysis.report import CSS as REPORT_CSS
from kiln.analysis.report import OUTCOMES, phase_label, share_label
from kiln.notify import failure_line
from kiln.rollout.synthetic import synthetic_words

CSRF_MARK = "__KILN_CSRF__"
"""Replaced per request by the reader's CSRF value (empty when it has no token)."""


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def prose(v: Any) -> str:
    """Escaped text whose `backticked` parts (commands, keys in reasons) render as code."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", e(v))


VERDICT_WORDS = {"pass": "passing so far", "fail": "failing", "undecided": "not decided yet"}
STEP_MARKS = {"done": "✓", "current": "▶", "failed": "✗", "skipped": "–", "pending": "○"}
CONFIRM = {"abort": "Abort rollout of {service}? Traffic goes back to the old release.",
           "rollback": "Roll back {service}? The selected release gets all traffic."}
"""Destructive actions the page asks about before posting (and the server without script)."""


def verdict_words(line: str | None) -> str:
    """'undecided: 40 of 100 requests' -> 'judge: not decided yet — 40 of 100 requests'."""
    if not line:
        return ""
    outcome, _, reason = line.partition(": ")
    words = VERDICT_WORDS.get(outcome, outcome)
    return f'<p class="verdict {e(outcome)}">judge: <b>{e(words)}</b>' + (
        f" — {prose(reason)}" if reason else "") + "</p>"


def metric_words(verdict: list[dict[str, Any]]) -> str:
    """The verdict per metric in plain words (kiln.analysis.explain)."""
    if not verdict:
        return ""
    return '<ul class="words">' + "".join(
        f'<li class="{e(m["outcome"])}">{e(m["line"])}</li>' for m in verdict) + "</ul>"


def steps_html(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return ""
    items = "".join(
        f'<li class="step {e(st["state"])}" data-step-state="{e(st["state"])}">'
        f'<span class="mark">{STEP_MARKS.get(st["state"], "")}</span> '
        + (f'step {st["step"]}: {share_label(0, st["mirror"])} (copies; answers discarded)'
           if st.get("mirror") else f'step {st["step"]}: set weight {st["weight"]}%')
        + f' · hold {e(st["hold"])}'
        + (f' · judge: {e(st["judge"])}' if st["judge"] else "") + "</li>"
        for st in steps)
    return f'<ol class="steps">{items}</ol>'


def _when(t: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(t))) if t else "–"


def _evidence(ev: dict[str, Any] | None) -> str:
    """Canary requests gathered vs what a pass needs, and the time left (docs/judge.md)."""
    if not ev or ev.get("needed") is None:
        return ""
    left = ev.get("eta_s")
    when = ("no canary traffic to extrapolate" if left is None else
            "enough" if left <= 0 else f"~{float(left):.0f}s left")
    return (f'<p class="muted">evidence {int(ev.get("have") or 0)}/{int(ev["needed"])} '
            f'canary requests, {when}</p>')


def _form(service: str, action: str, label: str, extra: str = "", cls: str = "") -> str:
    ask = CONFIRM.get(action)
    confirm = f' data-confirm="{e(ask.format(service=service))}"' if ask else ""
    return (f'<form method="post" action="/services/{e(service)}/{action}" class="inline"'
            f'{confirm}>'
            f'<input type="hidden" name="csrf" value="{CSRF_MARK}">{extra}'
            f'<button type="submit" class="{cls}" data-action="{action}">{e(label)}</button></form>')


def _instances(rel: dict[str, Any]) -> str:
    out = []
    for i in rel["instances"]:
        state = "healthy" if i["healthy"] else ("dead" if not i["alive"] else i["state"])
        out.append(f'<span class="inst {e(state)}" title="{e(i["id"])} {e(i["address"])}">'
                   f'{e(i["address"])} · {e(state)}</span>')
    return " ".join(out) or '<span class="muted">none</span>'


def _from_to(r: dict[str, Any]) -> str:
    """'web-r1 → web-r2', or 'first release web-r1' (as the CLI words it)."""
    if not r["from"]:
        return f"first release {e(r['release'])}"
    return f"{e(r['from'])} → {e(r['release'])}"


def service_card(s: dict[str, Any]) -> str:
    name = s["service"]
    rel_rows = "".join(
        f'<tr><td>{e(r["release"])}{" (current)" if r["release"] == s["current"] else ""}</td>'
        f'<td class="w"><span class="bar"><span style="width:{int(r["weight"])}%"></span></span>'
        f' <b data-weight="{e(r["release"])}">{int(r["weight"])}%</b></td>'
        f'<td class="mono">{e(str(r.get("image") or "")[:19])}</td><td>{_instances(r)}</td></tr>'
        for r in s["releases"])
    ro = s["rollout"]
    rollout = '<p class="muted">no rollout yet</p>'
    if ro is not None:
        outcome = OUTCOMES.get(ro["outcome"] or "", ro["outcome"] or "")
        state = (f'<b class="phase" data-phase="{e(ro["phase"])}">{e(ro["phase_label"])}</b>'
                 if ro["open"] else f'<b class="phase">{e(outcome or ro["phase_label"])}</b>')
        step = (f' · step {ro["step"] + 1}/{ro["steps"]}' if ro["strategy"] == "canary"
                and ro["open"] else "")
        standby = (f' · standby ends {_when(ro["standby_until"])}'
                   if ro["phase"] == "standby" else "")
        acts = ro.get("actions", [])
        buttons = ((_form(name, "promote", "Promote") if "promote" in acts else "")
                   + (_form(name, "abort", "Abort", "", "bad") if "abort" in acts else ""))
        decisions = "".join(
            f'<tr><td>{_when(d["time"])}</td><td>{d["step"] + 1}</td>'
            f'<td>{share_label(d["weight"], d.get("mirror"))}</td>'
            f'<td class="{e(d["outcome"])}">{e(d["outcome"])}</td><td>{prose(d["reason"])}'
            f'</td></tr>' for d in ro["decisions"])
        rollout = (
            f'<p>rollout #{ro["rollout_id"]} {e(ro["strategy"])} {_from_to(ro)}: '
            f'{state}{step}{standby}</p>'
            + steps_html(ro.get("step_list", []))
            + (verdict_words(ro.get("judge_line")) if ro["open"] else "")
            + (f'<p class="bad">dry run: {prose(ro["would_have"])}</p>'
               if ro.get("would_have") else "")
            + metric_words(ro.get("verdict") or [])
            + (f'<p class="waiting">{prose(ro["waiting"])}</p>' if ro["waiting"] else "")
            + _evidence(ro.get("evidence"))
            + (f'<p class="muted">{e(syn)}</p>' if (syn := synthetic_words(ro.get("synthetic")))
               else "")
            + (f'<p class="muted">{prose(ro["reason"])}</p>' if ro["reason"] and not ro["open"]
               else "")
            + buttons
            + (f'<div class="live" data-chart-for="{e(name)}"></div>' if ro["chart"] else "")
            + (f'<table class="dec"><thead><tr><th>at</th><th>step</th><th>weight</th>'
               f'<th>judge</th><th>why</th></tr></thead><tbody>{decisions}</tbody></table>'
               if decisions else ""))
    retained = "".join(f'<option value="{e(r["release"])}">{e(r["release"])} '
                       f'({e(r["image"][:19])})</option>' for r in s["retained"])
    rollback = (_form(name, "rollback", "Roll back", f'<select name="to">{retained}</select>')
                if retained else "")
    images = "".join(f'<option value="{e(i["digest"])}">{e(i["digest"][:19])} '
                     f'({_when(i["created_at"])})</option>' for i in s["images"])
    deploy = (_form(name, "deploy", "Deploy image", f'<select name="image">{images}</select>')
              if images else "")
    hist = "".join(
        f'<tr><td><a href="/reports/{r["rollout_id"]}">#{r["rollout_id"]}</a></td>'
        f'<td>{_from_to(r)}</td><td>{e(r["strategy"])}</td>'
        f'<td>{e(OUTCOMES.get(r["outcome"] or "", r["outcome"] or "") or phase_label(r["phase"]))}'
        f'</td><td>{_when(r["started_at"])}</td><td>{prose(r["reason"])}</td></tr>'
        for r in s["history"])
    return (
        f'<section class="card service" id="svc-{e(name)}" data-service="{e(name)}">'
        f'<h2>{e(name)} <span class="muted">{e(s["listen"])} · {e(s["strategy"])} · '
        f'{s["replicas"]} replica(s)</span></h2>'
        f'<table class="rels"><thead><tr><th>release</th><th>weight</th><th>image</th>'
        f'<th>instances</th></tr></thead><tbody>{rel_rows}</tbody></table>'
        f'<div class="rollout">{rollout}</div><div class="ops">{rollback}{deploy}</div>'
        f'<details><summary>history</summary><table><thead><tr><th>rollout</th><th>releases'
        f'</th><th>strategy</th><th>outcome</th><th>started</th><th>why</th></tr></thead>'
        f'<tbody>{hist}</tbody></table></details></section>')


def fragments(state: dict[str, Any]) -> dict[str, str]:
    """The parts of the page the events replace: the board and its chart payloads."""
    router = state["router"]
    rstate = ("not needed" if not router["needed"] else
              "running" if router["running"] else "DOWN")
    drift = state["drift"]
    if drift["at"] is None:
        drift_html = '<p class="muted">not checked yet</p>'
    else:
        found = len(drift["items"])
        drift_html = (f'<p class="muted">last checked {_when(drift["at"])}: '
                      f'{f"{found} item(s)" if found else "no drift"}</p>'
                      + "".join(f'<p class="bad">{e(i["kind"])}: {prose(i["detail"])}</p>'
                                for i in drift["items"]))
    events = "".join(
        f'<tr><td>{_when(ev["time"])}</td><td>{e(ev["service"] or "")}</td>'
        f'<td>{e(ev["kind"])}</td><td>{prose(ev["message"])}</td></tr>' for ev in state["events"])
    unsandboxed = ('<p class="bad">sandbox: none — bakes and instances run unsandboxed, with '
                   "kiln's privileges</p>" if state.get("sandbox") == "none" else "")
    notify = "".join(f'<p class="bad">{e(failure_line(h))}</p>'
                     for h in state.get("notify") or [])
    board = (
        f'<p class="sub">project <b>{e(state["project"])}</b> · router <b>{rstate}</b></p>'
        + unsandboxed + notify
        + "".join(service_card(s) for s in state["services"])
        + f'<section class="card"><h2>Drift</h2>{drift_html}</section>'
        f'<section class="card"><h2>Events</h2><table class="events"><tbody>{events}</tbody>'
        f'</table></section>')
    charts = {s["service"]: s["rollout"]["chart"] for s in state["services"]
              if s["rollout"] and s["rollout"]["chart"]}
    return {"board": board, "charts": json.dumps(charts)}


FORM_RE = re.compile(r"<form\b.*?</form>", re.S)


def read_only(board: str) -> str:
    """The board without its forms: a reader without the token gets no buttons (dashboard.js
    does the same to the boards the event stream sends)."""
    return FORM_RE.sub("", board)


def confirm_page(service: str, action: str, params: dict[str, str], csrf: str) -> str:
    """The question a destructive form asks when the page's script did not (no JavaScript):
    the same form again, with `confirmed=yes`."""
    ask = CONFIRM[action].format(service=service)
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
                     for k, v in params.items() if k not in ("csrf", "confirmed"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>kiln: confirm</title>"
        f"<style>{REPORT_CSS}{CSS}</style></head><body><main><h1>Confirm</h1>"
        f'<p class="warn">{e(ask)}</p>'
        f'<form method="post" action="/services/{e(service)}/{e(action)}" class="inline">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{hidden}'
        '<input type="hidden" name="confirmed" value="yes">'
        f'<button type="submit" class="bad" data-action="{e(action)}">Yes, {e(action)}'
        '</button></form> <a href="/">Cancel</a></main></body></html>')


def page(frags: dict[str, str], version: int, csrf: str, authed: bool) -> str:
    banner = ("" if authed else
              '<p class="warn">Read-only: open the address with the token that <code>kiln '
              'serve</code> printed (or in .kiln/serve.token) to use the buttons.</p>')
    board = frags.get("board", "")
    board = board.replace(CSRF_MARK, html.escape(csrf)) if authed else read_only(board)
    charts = frags.get("charts", "{}").replace("</", "<\\/")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="kiln-csrf" content="{html.escape(csrf)}">'
        "<title>kiln</title>"
        '<link rel="stylesheet" href="/static/uPlot.min.css">'
        f"<style>{REPORT_CSS}{CSS}</style></head><body><main>"
        f'<header><h1>kiln</h1><span class="muted" id="live">version {version}</span></header>'
        f'{banner}<div id="board">{board}</div></main>'
        f'<script type="application/json" id="kiln-charts">{charts}</script>'
        '<script src="/static/uPlot.iife.min.js"></script>'
        '<script src="/static/kiln-charts.js"></script>'
        '<script src="/static/dashboard.js"></script></body></html>')


CSS = """
main{max-width:1100px}.service h2{margin-bottom:6px}
.bar{display:inline-block;width:90px;height:8px;background:#dee2e6;border-radius:4px;
vertical-align:middle;overflow:hidden}.bar span{display:block;height:100%;background:#e8590c}
.inst{display:inline-block;margin:1px 4px;padding:1px 6px;border-radius:8px;font-size:12px;
background:#e9ecef}.inst.healthy{background:#d3f9d8}.inst.dead{background:#ffe3e3}
.inst.starting{background:#fff3bf}.inst.draining{background:#e7f5ff}
.mono{font-family:ui-monospace,monospace;font-size:12px}
form.inline{display:inline-block;margin:4px 8px 4px 0}
button{padding:5px 14px;border-radius:6px;border:1px solid #1c7ed6;background:#1c7ed6;
color:#fff;font-weight:600;cursor:pointer}button.bad{background:#c92a2a;border-color:#c92a2a}
select{padding:4px;margin-right:4px}.waiting{color:#e67700}.warn{background:#fff3bf;padding:8px 12px;
border-radius:8px}.bad,.fail{color:#c92a2a}.pass{color:#2b8a3e}.events td{font-size:12px}
.events{display:block;max-height:360px;overflow-y:auto}details{margin-top:8px}
button.bad{color:#fff}
ol.steps{list-style:none;padding-left:0;margin:6px 0}.step{padding:1px 0;color:#495057}
.step .mark{display:inline-block;width:1.2em}.step.done .mark{color:#2b8a3e}
.step.current{font-weight:600;color:#1c7ed6}.step.failed{color:#c92a2a}
.step.skipped,.step.pending{color:#868e96}.verdict b{font-weight:600}
.verdict.fail b{color:#c92a2a}.verdict.pass b{color:#2b8a3e}code{font-size:90%;
background:#f1f3f5;padding:0 3px;border-radius:3px}
"""
