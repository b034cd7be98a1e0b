"""The one read model: what is observed of each service, gathered in one place.

`kiln status`, `kiln plan`, `kiln drift`, `deploy`'s decision (kiln.plan) and the dashboard
(kiln.serve.board) all read a service through `observe_service`, so they cannot disagree on
what runs: which release is current, which instances are recorded, which of them are alive and
in rotation, and which rollout is open. It only reads: no sweep, no router restart, no event,
no write of any kind (docs/decisions/read-only-commands.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kiln.analysis.explain import explain
from kiln.errors import NotFound, StateError
from kiln.notify import FAILED_WINDOW, failure_summary
from kiln.platforms.capabilities import RouterProcess, RouterSwitch
from kiln.platforms.instance_rows import from_row
from kiln.rollout.decide import SETTLED, Status
from kiln.rollout.executor import load_release
from kiln.rollout.release_config import find_release
from kiln.state.records import events as event_records
from kiln.state.records import instances as instance_records
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records

if TYPE_CHECKING:
    from pathlib import Path

    from kiln.platforms.base import Compute, Instance, Release, Router
    from kiln.scraping import Scraping
    from kiln.spec.models import Health, ServiceSpec, Spec
    from kiln.state.store import Store

LIVE = ("starting", "running", "draining")


class Context(Protocol):
    """What the read model reads through (a `kiln.project.Project`)."""

    @property
    def spec(self) -> Spec: ...
    @property
    def store(self) -> Store: ...
    @property
    def compute(self) -> Compute: ...
    @property
    def router(self) -> Router: ...
    @property
    def scraping(self) -> Scraping: ...
    def service(self, name: str) -> ServiceSpec: ...
    def current_release(self, service: str) -> Release | None: ...
    def destroyed(self, service: str) -> bool: ...


@dataclass
class SeenInstance:
    instance: Instance
    state: str  # starting | running | draining
    alive: bool


@dataclass
class ServiceView:
    """One service as observed now."""

    name: str
    current: Release | None
    destroyed: bool
    routes: dict[str, int]  # release -> weight
    instances: list[SeenInstance] = field(default_factory=list)
    last_rollout: Any = None  # the newest rollouts row
    open_rollout: Any = None  # the newest rollouts row whose phase is not done

    def of(self, release_id: str) -> list[SeenInstance]:
        return [s for s in self.instances if s.instance.release_id == release_id]

    @property
    def alive(self) -> int:
        """Alive instances of the current release (starting or running: a draining one is
        on its way out)."""
        if self.current is None:
            return 0
        return sum(1 for s in self.of(self.current.id) if s.alive and s.state != "draining")

    @property
    def routed(self) -> int:
        """Of those, the ones in rotation (recorded running)."""
        if self.current is None:
            return 0
        return sum(1 for s in self.of(self.current.id) if s.alive and s.state == "running")

    @property
    def dead(self) -> list[SeenInstance]:
        return [s for s in self.instances if not s.alive]

    @property
    def standby(self) -> bool:
        return self.open_rollout is not None and self.open_rollout["phase"] == "standby"

    @property
    def resumable(self) -> Any:
        """The open rollout a deploy resumes (not a blue-green standby: that one settled)."""
        return None if self.open_rollout is None or self.standby else self.open_rollout


def observe_service(ctx: Context, name: str) -> ServiceView:
    store = ctx.store
    routes = route_records.weights_of(store, name)
    rows = instance_records.live_of_service(store, name)
    insts = [from_row(r) for r in rows]
    alive = {o.instance_id: o.alive for o in ctx.compute.observe(insts)} if insts else {}
    last = rollout_records.newest(store, name)
    return ServiceView(
        name=name, current=ctx.current_release(name), destroyed=ctx.destroyed(name),
        routes=routes,
        instances=[SeenInstance(i, str(r["state"]), alive.get(i.id, False))
                   for r, i in zip(rows, insts, strict=True)],
        last_rollout=last,
        open_rollout=last if last is not None and last["phase"] != "done" else None)


def router_view(ctx: Context) -> dict[str, Any]:
    """Whether the router is needed (some route has weight) and runs (None: cannot tell)."""
    needed = route_records.any_weighted(ctx.store)
    router = ctx.router
    return {"needed": needed,
            "running": router.is_running() if isinstance(router, RouterProcess) else None}


def release_rows(ctx: Context, view: ServiceView,
                 healthy: Callable[[SeenInstance], bool | None]) -> list[dict[str, Any]]:
    """The releases of a service with a weight or an instance, with their instances: the
    `releases` of `kiln status --json` and of the dashboard."""
    releases: dict[str, dict[str, Any]] = {
        rid: {"release": rid, "weight": w, "instances": []} for rid, w in view.routes.items()}
    for seen in view.instances:
        inst = seen.instance
        rel = releases.setdefault(inst.release_id, {"release": inst.release_id, "weight": 0,
                                                    "instances": []})
        rel["instances"].append({
            "id": inst.id, "address": inst.address, "handle": dict(inst.handle),
            # What was seen, not what was recorded: a gone process is never `running`.
            "label": inst.label, "state": seen.state if seen.alive else "dead",
            "alive": seen.alive,
            "healthy": seen.alive and bool(healthy(seen))})
    for rid, rel in releases.items():
        try:
            release = load_release(ctx.store, rid)
        except NotFound:
            continue
        rel["image"] = release.image_digest
        rel["number"] = release.number
    return list(releases.values())


def rollout_row(ctx: Context, view: ServiceView, spec: ServiceSpec) -> dict[str, Any] | None:
    """The service's newest rollout as `kiln status --json` shows it."""
    ro = view.last_rollout
    if ro is None:
        return None
    st = Status.from_json(json.loads(ro["status_json"]))
    done = ro["phase"] == "done"
    steps = len(spec.rollout.steps) if ro["strategy"] == "canary" else 0
    out = {"rollout_id": ro["id"], "strategy": ro["strategy"], "from": ro["from_release"],
           "to": ro["to_release"], "phase": ro["phase"], "step": min(st.step + 1, steps),
           "mirror": st.mirror_share(),
           "steps": steps, "outcome": ro["outcome"], "reason": ro["reason"],
           "waiting": None if done else st.waiting,
           "judge": None if done else st.judge_line,
           "evidence": None if done or ro["phase"] != "step" else st.evidence_at(time.time()),
           "synthetic": st.synthetic,
           "verdict": verdict_words(st, done),
           "would_have": next((d.reason for d in st.decisions if d.outcome == "would_fail"),
                              None),
           "until": st.deadline if ro["phase"] in ("health", "roll", "restore") and st.deadline
           else None,
           "driven_by": None}
    if ro["phase"] not in SETTLED:
        from kiln.state.controller import running
        from kiln.state.lock import live_holder

        holder, ctl = live_holder(ctx.store), running(ctx.store)
        out["driven_by"] = holder.describe() if holder else ctl.describe() if ctl else None
    return out


def verdict_words(st: Status, done: bool) -> list[dict[str, Any]]:
    """The judge's view per metric in words: live while the rollout runs, else its last
    decision's (kiln.analysis.explain)."""
    if not done and st.judge_words:
        return st.judge_words
    for d in reversed(st.decisions):
        if d.figures:
            return [e.to_json() for e in explain(d.figures)]
    return []


def notify_failures(ctx: Context) -> list[dict[str, Any]]:
    """Webhook deliveries given up on over the last day, per hook (kiln.notify)."""
    since = time.time() - FAILED_WINDOW
    return failure_summary([json.loads(r["data_json"]) for r in
                            event_records.of_kind_since(ctx.store, "notify.failed", since)])


def health_of(ctx: Context, release_id: str, spec: ServiceSpec) -> Health:
    """An instance is probed on its release's own health check (a dev instance, or a record
    today's kiln cannot load: today's)."""
    release = find_release(ctx.store, release_id)
    try:
        return spec.health if release is None else release.health
    except StateError:  # status still shows the instance; routing reports the record
        return spec.health


def service_status(ctx: Context, name: str) -> dict[str, Any]:
    """One service of `kiln status --json`."""
    spec = ctx.service(name)
    view = observe_service(ctx, name)
    dev = [{"id": r["id"], "address": f"{r['host']}:{r['port']}", "state": r["state"]}
           for r in instance_records.dev_up_of_service(ctx.store, name)]
    return {"service": name, "listen": spec.listen,
            "current": view.current.id if view.current else None,
            "destroyed": view.destroyed,
            "releases": release_rows(ctx, view, lambda s: ctx.compute.healthy(
                s.instance, health_of(ctx, s.instance.release_id, spec))),
            "rollout": rollout_row(ctx, view, spec), "dev": dev}


def sandbox_kind(spec: Spec) -> str:
    """How bakes and instances are isolated: local's "bwrap", or "none" when the spec says
    `sandbox: none`; other platforms isolate their own way and are named ("podman", "aws")."""
    return spec.sandbox if spec.platform == "local" else spec.platform


def status(ctx: Context, names: list[str], warn: Callable[[str], None]) -> dict[str, Any]:
    """`kiln status --json`. Read-only: a router that died is reported, not restarted."""
    from kiln.state.controller import running

    ctl = running(ctx.store)
    router = router_view(ctx)
    if router["needed"] and router["running"] is False:
        instead = (ctx.router.serving_instead() if isinstance(ctx.router, RouterSwitch)
                   else None)
        warn(f"the spec's router ({ctx.spec.router}) is not running yet: {instead} still "
             "serves the traffic; `kiln deploy` (or a running `kiln serve`) switches to it"
             if instead is not None else
             "the router is not running: traffic is not served; `kiln deploy` (or a running "
             "`kiln serve`) restarts it with its last routing")
    prometheus = ctx.scraping.view()
    if prometheus is not None and router["needed"] and not prometheus["running"]:
        warn("kiln's Prometheus is not running: analysis.metrics have no data; `kiln deploy` "
             "(or a running `kiln serve`) restarts it")
    return {"project": ctx.spec.project, "router": router, "sandbox": sandbox_kind(ctx.spec),
            "prometheus": prometheus,
            "controller": None if ctl is None else {
                "pid": ctl.pid, "host": ctl.host, "listen": ctl.listen,
                "started_at": ctl.started_at},
            "services": [service_status(ctx, n) for n in names],
            "notify": notify_failures(ctx)}


def history(store: Store, home: Path, service: str, limit: int | None = None
            ) -> list[dict[str, Any]]:
    """`kiln history --json`: the service's rollouts, oldest first (the last `limit`)."""
    out = []
    for ro in rollout_records.last_of_service(store, service, limit):
        rel = release_records.row(store, str(ro["to_release"]))
        report = home / "reports" / f"rollout-{ro['id']}.html"
        out.append({
            "rollout_id": ro["id"], "release": ro["to_release"], "from": ro["from_release"],
            "strategy": ro["strategy"], "phase": ro["phase"], "outcome": ro["outcome"],
            "reason": ro["reason"], "started_at": ro["started_at"],
            "finished_at": ro["finished_at"],
            "image": rel["image_digest"] if rel else None,
            "skip_tests": bool(rel["skip_tests"]) if rel else False,
            "report": str(report) if report.exists() else None,
        })
    return out
