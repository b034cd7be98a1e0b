"""What the dashboard shows, rebuilt by the controller's thread when the state changed.

Change detection is cheap: SQLite's `PRAGMA data_version` moves when another connection commits,
and the controller knows when it acted itself; a running rollout refreshes its live charts once a
second. Readers (HTTP threads) only take the last snapshot under a condition variable, which
also wakes the server-sent-event streams.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln.analysis.live import Answers, Series
from kiln.analysis.report import chart_payload, load_report_data, phase_label
from kiln.errors import StateError
from kiln.readmodel import (
    SeenInstance,
    notify_failures,
    observe_service,
    release_rows,
    router_view,
    verdict_words,
)
from kiln.rollout.decide import SETTLED, Status
from kiln.spec.models import RolloutStep
from kiln.state.records import images as image_records
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records.journal import data_version

if TYPE_CHECKING:
    from kiln.project import Project

HEALTH_EVERY = 10.0
"""Seconds between the dashboard's own health probes of each instance (display only; routing
decisions use the controller's and the router's checks)."""


class Prober:
    """Probes every instance's health path now and then, off the controller's thread."""

    def __init__(self, on_change: Callable[[], None], every: float = HEALTH_EVERY) -> None:
        self.every = every
        self.on_change = on_change
        self.targets: dict[str, tuple[str, int, str, float]] = {}
        self.results: dict[str, bool] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kiln-serve-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def want(self, targets: dict[str, tuple[str, int, str, float]]) -> None:
        with self._lock:
            self.targets = targets

    def healthy(self, instance_id: str) -> bool | None:
        with self._lock:
            return self.results.get(instance_id)

    def _run(self) -> None:
        while not self.stop.wait(self.every if self.results else 0.5):
            with self._lock:
                targets = dict(self.targets)
            results = {iid: _probe(*t) for iid, t in targets.items()}
            with self._lock:
                changed, self.results = results != self.results, results
            if changed:
                self.on_change()


def _probe(host: str, port: int, path: str, timeout: float) -> bool:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path if path.startswith("/") else "/" + path)
        return 200 <= conn.getresponse().status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class Live:
    """The running rollout's traffic as the dashboard plots it (the platform's metric source,
    asked for the whole rollout each time; the newest answer of a window replaces the last)."""

    rollout_id: int
    series: Series = field(default_factory=Series)
    since: float = field(default_factory=time.time)
    answers: Answers = field(default_factory=Answers)


class Board:
    def __init__(self, project: Project, render: Callable[[dict[str, Any]], dict[str, str]],
                 drift: Callable[[], dict[str, Any]] | None = None) -> None:
        self.project = project
        self.render = render
        self.drift = drift or (lambda: {"at": None, "items": []})
        self.cond = threading.Condition()
        self.version = 0
        self.state: dict[str, Any] = {}
        self.fragments: dict[str, str] = {}
        self.changed_at = time.time()
        self._data_version = -1
        self._live: dict[str, Live] = {}
        self._settled: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._next_live = 0.0
        self._probed = threading.Event()
        self.prober = Prober(self._probed.set)
        self._targets: dict[str, tuple[str, int, str, float]] = {}

    def snapshot(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.cond:
            return self.version, self.state, self.fragments

    def wait(self, after: int, timeout: float) -> int:
        """Block until the version moves past `after` (or the timeout); returns the version."""
        with self.cond:
            self.cond.wait_for(lambda: self.version > after, timeout)
            return self.version

    def refresh(self, acted: bool = False) -> bool:
        """Rebuild if anything moved; True when the published state changed."""
        now = time.monotonic()
        dv = data_version(self.project.store)
        due = (acted or dv != self._data_version or self._probed.is_set()
               or (self._live and now >= self._next_live))
        if not due:
            return False
        self._data_version = dv
        self._probed.clear()
        if now >= self._next_live:
            self._next_live = now + 1.0
        state = self.build()
        blob = json.dumps(state, sort_keys=True, default=str)
        if blob == json.dumps(self.state, sort_keys=True, default=str):
            return False
        fragments = self.render(state)
        with self.cond:
            self.state, self.fragments = state, fragments
            self.version += 1
            self.changed_at = time.time()
            self.cond.notify_all()
        return True

    # ------------------------------------------------------------------ the picture

    def build(self) -> dict[str, Any]:
        p = self.project
        store = p.store
        self._targets = {}
        services = [self._service(name) for name in p.spec.services]
        self.prober.want(self._targets)
        events = [{"time": r["time"], "service": r["service"], "kind": r["kind"],
                   "message": r["message"]} for r in store.events(None, 60)]
        return {
            "project": p.spec.project,
            "sandbox": p.sandbox_kind(),
            "router": router_view(p),
            "services": services,
            "events": events,
            "drift": self.drift(),
            "notify": notify_failures(p),
        }

    def _service(self, name: str) -> dict[str, Any]:
        """One service as `kiln status` sees it (kiln.readmodel), with the dashboard's own
        health probes and history."""
        p = self.project
        store = p.store
        spec = p.service(name)
        view = observe_service(p, name)
        healths: dict[str, Any] = {}

        def healthy(seen: SeenInstance) -> bool:
            inst = seen.instance
            rid = inst.release_id
            if rid not in healths:
                healths[rid] = self._release_health(rid) or spec.health
            health = healths[rid]
            self._targets[inst.id] = (inst.host, inst.port, health.path, health.timeout)
            probed = self.prober.healthy(inst.id)
            return probed if probed is not None else seen.state == "running"

        releases = release_rows(p, view, healthy)
        history = p.history(name, limit=20)[::-1]  # the rows of `kiln history --json`, newest first
        current = view.current
        retained = [{"release": r["id"], "image": r["image_digest"]} for r in
            release_records.retained_live(store, name) if current is None or r["id"] != current.id]
        images = [{"digest": r["digest"], "created_at": r["created_at"]} for r in
            image_records.newest_of_name(store, spec.image, 10)]
        return {"service": name, "listen": spec.listen, "strategy": spec.rollout.strategy,
                "replicas": spec.replicas, "current": current.id if current else None,
                "releases": sorted(releases, key=lambda r: str(r["release"])),
                "rollout": self._rollout(name, history[0] if history else None),
                "history": history, "retained": retained, "images": images}

    def _rollout(self, name: str, last: dict[str, Any] | None) -> dict[str, Any] | None:
        if last is None:
            return None
        raw = rollout_records.status_json(self.project.store, last["rollout_id"])
        st = Status.from_json(json.loads(raw)) if raw is not None else None
        if st is None:
            return None
        open_ = st.phase not in SETTLED
        plan = self._steps(name, st)
        steps = len(plan)
        weight = st.weights.get(st.new)
        mirrors = {i: int(step.mirror) for i, step in enumerate(plan) if step.mirror}
        out = {**last, "step": st.step, "steps": steps, "weights": st.weights,
               "phase": st.phase, "step_list": step_list(st, plan),
               "judge_line": st.judge_line if st.phase == "step" else None,
               "actions": actions_for(st),
               "waiting": st.waiting, "open": open_, "standby_until": st.standby_until or None,
               "evidence": st.evidence_at(time.time()) if open_ and st.phase == "step"
               else None,
               "synthetic": st.synthetic,
               "phase_label": phase_label(st.phase, weight, st.step,
                                          mirrors.get(st.step) if st.phase == "step" else 0),
               "verdict": verdict_words(st, not open_),
               "would_have": next((d.reason for d in st.decisions
                                   if d.outcome == "would_fail"), None),
               "decisions": [{"time": d.time, "step": d.step, "weight": d.weight,
                              "mirror": mirrors.get(d.step, 0),
                              "outcome": d.outcome, "reason": d.reason}
                             for d in st.decisions[-20:]],
               "chart": None}
        if open_:
            out["chart"] = self._chart(name, int(last["rollout_id"]), st)
        else:
            self._live.pop(name, None)
            out["chart"] = self._settled_chart(name, int(last["rollout_id"]))
        return out

    def _settled_chart(self, name: str, rollout_id: int) -> dict[str, Any] | None:
        """The charts stay when a rollout settles: what it recorded (the report's payload),
        built once per rollout (a settled rollout's series no longer change)."""
        kept = self._settled.get(name)
        if kept is not None and kept[0] == rollout_id:
            return kept[1]
        data = load_report_data(self.project.store, self.project.home, name, rollout_id)
        if data is None or not (data.buckets or data.steps):
            return None  # not saved yet (a command settling it writes the series after)
        chart = chart_payload(data)
        self._settled[name] = (rollout_id, chart)
        return chart

    def _steps(self, name: str, st: Status) -> list[RolloutStep]:
        """The steps the rollout runs: its release's recorded spec (today's if it has none)."""
        from kiln.rollout.release_config import find_release

        try:
            release = find_release(self.project.store, st.new)
        except StateError:
            release = None
        spec = release.spec if release is not None else self.project.service(name)
        return list(spec.rollout.steps)

    def _chart(self, name: str, rollout_id: int, st: Status) -> dict[str, Any] | None:
        """The judge's canary-vs-baseline view, live: the report's payload as of now."""
        metrics = self.project.metrics
        live = self._live.get(name)
        if live is None or live.rollout_id != rollout_id:
            live = self._live[name] = Live(rollout_id, since=st.started or time.time())
        if metrics is not None:
            releases = [r for r in (st.new, st.old) if r]
            live.series.add(live.answers.update(metrics.windows(releases, live.since,
                                                                time.time())))
        live.series.note(time.time(), st)
        data = load_report_data(self.project.store, self.project.home, name, rollout_id)
        if data is None:
            return None
        from kiln.analysis.report import from_series

        seen = from_series(live.series.to_json(), service=name, canary=data.canary,
                           baseline=data.baseline, started=data.started)
        data.buckets = seen.buckets
        if not data.weights:
            data.weights = seen.weights
        return chart_payload(data, now=time.time())

    def _release_health(self, release_id: str) -> Any:
        from kiln.rollout.release_config import release_health

        try:
            return release_health(self.project.store, release_id)
        except StateError:
            return None  # the dashboard shows the release without its health check


def actions_for(st: Status) -> list[str]:
    """The buttons that can act on this rollout now (kiln.rollout.decide ignores the rest):
    promote only while a canary step holds, abort until the rollout is already going back."""
    if st.phase in SETTLED:
        return []
    out = ["promote"] if st.phase == "step" and st.strategy == "canary" else []
    if st.phase not in ("rollback", "restore", "drain_new"):
        out.append("abort")
    return out


def step_list(st: Status, plan: list[RolloutStep]) -> list[dict[str, Any]]:
    """The canary's steps as Argo's dashboard lists them, each with where the rollout is:
    done, current, failed (the step it was rolled back from), skipped or pending."""
    if st.strategy != "canary":
        return []
    going_back = st.phase in ("rollback", "restore", "drain_new") or (
        st.outcome not in (None, "promoted"))
    decided = {d.step: d.outcome for d in st.decisions}
    out = []
    for i, step in enumerate(plan):
        if st.outcome == "promoted":
            state = "done" if i in decided or i < st.step else "skipped"
        elif i < st.step:
            state = "done"
        elif i == st.step and going_back:
            state = "failed" if st.weights or i in decided else "pending"
        elif i == st.step and st.phase == "step":
            state = "current"
        else:
            state = "pending"
        hold = ("until promoted" if step.pause is None else "no pause" if step.pause == 0
                else f"{step.pause:g}s")
        out.append({"step": i + 1, "weight": step.weight, "mirror": step.mirror or 0,
                    "hold": hold, "state": state, "judge": decided.get(i)})
    return out
