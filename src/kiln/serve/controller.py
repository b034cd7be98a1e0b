"""The controller of `kiln serve`: one reconcile loop for the whole project.

Every pass observes without the lock (state rows and /proc: cheap), and only when something needs
doing takes the project lock for that pass: it drives open rollouts one step each, ends expired
blue-green standbys, replaces dead instances of the current release (same image, no new release,
into rotation once healthy — the Auto Scaling group's job), restarts a dead router with its
routing, and runs drift on a schedule. Every action is an event. A CLI command waits for a pass
to end (the lock is held for one pass only) and hands its rollouts over (kiln.state.controller).

Each service is its own unit of failure: an action that raises (a secret that cannot be read, a
release missing from the state) marks that service failing, retried after 1, 2, 4 ... 60 s, with
one event when it starts failing and one when it recovers; the other services' actions go on in
the same pass. kiln.yaml is reloaded when it changes (kiln.serve.spec_watch).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError, StateError
from kiln.platforms.base import Instance
from kiln.platforms.capabilities import HealthVerdicts, RouterProcess
from kiln.platforms.instance_rows import from_row
from kiln.rollout.decide import SETTLED, Status
from kiln.rollout.executor import Reconciler, instances_of, load_release
from kiln.rollout.heal import HealPass, HealState, heal_step
from kiln.rollout.release_config import find_release
from kiln.serve.spec_watch import SpecWatch
from kiln.spec.models import ServiceSpec
from kiln.state.controller import heartbeat
from kiln.state.lock import CONTROLLER_COMMAND, try_lock, unlock
from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records
from kiln.state.records.journal import EventLine, events_after, last_event_id
from kiln.usecases.routing import start_router

if TYPE_CHECKING:
    from kiln.project import Project
    from kiln.serve.metrics import ServeMetrics


@dataclass
class Driven:
    """A rollout this controller drives: its reconciler (health memory) and live judge."""

    rollout_id: int
    reconciler: Reconciler
    judge: Any


@dataclass
class Healing(HealState):
    """A heal in progress for one service, with the controller's retry policy: replacements
    that die too, or are not healthy in time, are retried with a growing delay (1, 2, 4 ... 60 s)
    instead of the deploy's give-up."""

    attempts: int = 0
    next_try: float = 0.0


BACKOFF_CAP = 60.0
"""Seconds between retries of a failing service, at most (1, 2, 4 ... 60)."""


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` + 1 of something that failed `attempts` times."""
    return min(BACKOFF_CAP, 2.0 ** max(attempts - 1, 0))


@dataclass
class Failing:
    """A unit of the controller (a service, the router, drift) whose last action raised."""

    error: str
    attempts: int
    next_try: float  # monotonic
    since: float  # wall clock


class Controller:
    """Owns a Project (and its store connection): use it from its own thread only."""

    def __init__(self, project: Project, metrics: ServeMetrics, *, tick: float = 0.25,
                 drift_every: float = 60.0, on_pass: Callable[[bool], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> None:
        self.project = project
        self.say = announce or (lambda line: None)
        self._logged = last_event_id(project.store) if announce is not None else -1
        """The last event `log_events` printed (-1: no log). `kiln serve` prints one line per
        event recorded while it runs (its own actions, the dashboard's requests, commands'
        rollouts), so it is never silent while things happen."""
        self.watch = SpecWatch(project.spec_path, project.spec)
        self.broken: dict[str, Failing] = {}
        """Unit (service name, `router`, `drift`) -> its failure, while it fails."""
        self._pass_failing: Failing | None = None
        self._base_tick = tick
        self.tick = tick
        self.heal_every = tick
        self._set_tick()
        self.drift_every = drift_every
        self.on_pass = on_pass or (lambda acted: None)
        self.driven: dict[int, Driven] = {}
        self.healing: dict[str, Healing] = {}
        self.metrics = metrics
        self.drift: dict[str, Any] = {"at": None, "items": []}
        self._next_drift = time.monotonic() + min(5.0, drift_every)
        self._next_router = 0.0
        self._next_heal_check = 0.0
        self._actions: dict[str, Callable[[str], bool]] = {
            "router": self._do_router, "rollout": self._do_rollout,
            "standby": self._do_standby, "heal": self._do_heal}
        """What each kind of `_todo` item runs (a table, not a name looked up with getattr)."""
        self._specs: dict[str, ServiceSpec] = {}
        self.failing: dict[str, int] = {}
        self._watched: dict[str, set[str]] = {}
        """Service -> the instances its last probe counted (to forget those that are gone)."""
        """Instance id -> health checks failed in a row (instances in rotation, alive)."""
        self._next_probe: dict[str, float] = {}
        self._next_beat = 0.0
        self.stop = threading.Event()

    def _set_tick(self) -> None:
        """A death is seen within half the shortest health interval, so a replacement is in
        rotation within 2 health intervals + its start time (recomputed on a reload)."""
        intervals = [s.health.interval for s in self.project.spec.services.values()]
        self.tick = min([self._base_tick, *(i / 2 for i in intervals)])
        self.heal_every = max(self.tick, min(intervals, default=1.0) / 2)
        """Instances are observed every half health interval: a death is seen within one."""

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            acted = False
            wait: float | None = None
            try:
                acted = self.reconcile_once()
                if self._pass_failing is not None:
                    self._pass_failing = None
                    self._event("controller.recovered", "reconcile passes work again", None)
                    self.say("kiln serve: reconcile passes work again")
            except Exception as exc:  # a pass that failed is retried; the controller stays up
                wait = self._pass_failed(exc)
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.log_events()
            self.on_pass(acted)
            # A replacement waiting for its health check is probed often.
            self.stop.wait(wait if wait is not None else 0.0 if acted
                           else min(self.tick, 0.05) if self.healing else self.tick)
        for drv in self.driven.values():
            drv.reconciler.close()  # e.g. a synthetic load: not beyond the controller's life

    def _pass_failed(self, exc: Exception) -> float:
        """A whole pass failed (the state cannot be read, say): one event when it starts
        failing or fails differently, retried with the same backoff as a service."""
        prev = self._pass_failing
        attempts = prev.attempts + 1 if prev is not None else 1
        delay = backoff(attempts)
        self._pass_failing = Failing(str(exc), attempts, time.monotonic() + delay,
                                     prev.since if prev else time.time())
        self.metrics.actions.labels("error").inc()
        if prev is None or prev.error != str(exc):
            line = (f"reconcile pass failed: {exc}; retrying with backoff (up to "
                    f"{BACKOFF_CAP:.0f}s)")
            self.say(f"kiln serve: {line}")
            with contextlib.suppress(Exception):  # the state itself may be what fails
                self._event("controller.error", line, None, {"error": repr(exc)})
        return delay

    SAID = frozenset({"controller.failing", "controller.recovered", "controller.error",
                      "controller.spec_refused", "controller.spec_reloaded"})
    """Events whose line the controller already said as it recorded them."""

    def log_events(self) -> None:
        """Say every event recorded since the last call, one line each."""
        if self._logged < 0:
            return
        try:
            new = events_after(self.project.store, self._logged)
        except Exception:  # the log is a view; a failing state is said by the pass itself
            return
        for ev in new:
            if ev.kind not in self.SAID:
                self.say(log_line(ev))
            self._logged = ev.id

    def reconcile_once(self) -> bool:
        """One pass over every service. Returns True when it acted."""
        store = self.project.store
        now = time.monotonic()
        if now >= self._next_beat:
            heartbeat(store)
            self._next_beat = now + 5.0
            self.project.record_failed_deliveries()  # `status` and the board show them
        self._reload()
        todo = [(kind, name) for kind, name in self._todo() if self._due(name or "router")]
        drift_due = now >= self._next_drift and self._due("drift")
        if not todo and not drift_due:
            return False
        if not try_lock(store, f"{CONTROLLER_COMMAND}: reconcile"):
            self.metrics.busy.inc()
            return False
        try:
            acted = False
            for kind, service in todo:
                unit = service or "router"
                if not self._due(unit):  # failed earlier in this pass
                    continue
                try:
                    acted = self._actions[kind](service) or acted
                except Exception as exc:  # this service only: the others go on
                    self._failed(unit, kind, exc)
                    continue
                self._ok(unit)
            if drift_due:
                try:
                    self._run_drift()
                except Exception as exc:
                    self._failed("drift", "drift check", exc)
                else:
                    self._ok("drift")
            return acted
        finally:
            unlock(store)

    # ------------------------------------------------------------------ failures and the spec

    def _due(self, unit: str) -> bool:
        f = self.broken.get(unit)
        return f is None or time.monotonic() >= f.next_try

    def _failed(self, unit: str, what: str, exc: Exception) -> None:
        """Back off this unit; one event and line when it starts failing (not on every retry)."""
        prev = self.broken.get(unit)
        attempts = prev.attempts + 1 if prev is not None else 1
        delay = backoff(attempts)
        error = exc.message if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
        self.broken[unit] = Failing(error, attempts, time.monotonic() + delay,
                                    prev.since if prev else time.time())
        self.metrics.actions.labels("error").inc()
        if prev is not None:
            return
        service = None if unit in ("router", "drift") else unit
        line = (f"{unit}: {what} failed: {error}; retrying in {delay:.0f}s, then with backoff "
                f"up to {BACKOFF_CAP:.0f}s (other services go on)")
        self.say(f"kiln serve: {line}")
        self._event("controller.failing", line, service,
                    {"unit": unit, "action": what, "error": error})

    def _ok(self, unit: str) -> None:
        prev = self.broken.pop(unit, None)
        if prev is None:
            return
        service = None if unit in ("router", "drift") else unit
        line = (f"{unit}: works again after {prev.attempts} failed attempt(s) over "
                f"{time.time() - prev.since:.0f}s")
        self.say(f"kiln serve: {line}")
        self._event("controller.recovered", line, service,
                    {"unit": unit, "attempts": prev.attempts, "error": prev.error})

    def _reload(self, force: bool = False) -> None:
        """Use kiln.yaml as it is now if it changed and is valid; one line either way."""
        found = self.watch.check(force)
        if found is None:
            return
        self.say(f"kiln serve: {found.line}")
        if found.spec is None:
            self._event("controller.spec_refused", found.line, None, {"digest": found.digest})
            return
        self.project.spec = found.spec
        self._set_tick()
        # Services that are gone from the spec are no longer failing; new ones are tried now.
        for unit in [u for u in self.broken if u not in found.spec.services
                     and u not in ("router", "drift")]:
            del self.broken[unit]
        self._event("controller.spec_reloaded", found.line, None, {"digest": found.digest})

    # ------------------------------------------------------------------ observe (no lock)

    def _todo(self) -> list[tuple[str, str]]:
        """What needs the lock this pass. Rollouts are read every pass (one query); instances
        are observed every half health interval; the router once a second."""
        store = self.project.store
        now = time.monotonic()
        out: list[tuple[str, str]] = []
        if now >= self._next_router:
            self._next_router = now + 1.0
            if self._router_down():
                out.append(("router", ""))
        latest = rollout_records.latest_per_service(store)
        check = now >= self._next_heal_check
        if check:
            self._next_heal_check = now + self.heal_every
        currents = self._currents() if check else {}
        candidates: dict[str, list[Any]] = {}
        for name in self.project.spec.services:
            if not self._due(name):
                continue  # failing: retried when its backoff is over
            row = latest.get(name)
            if row is not None and row["phase"] not in SETTLED:
                out.append(("rollout", name))
            elif row is not None and row["phase"] == "standby" and time.time() >= Status.from_json(
                    json.loads(row["status_json"])).standby_until:
                out.append(("standby", name))
            elif name in self.healing:
                out.append(("heal", name))
            elif name in currents:
                candidates[name] = []
        if candidates:
            for r in instance_records.up_service_instances(store):
                if currents.get(str(r["service"])) == r["release_id"] and r["service"] in candidates:
                    candidates[str(r["service"])].append(from_row(r))
            # None left: destroyed, or never launched; not ours to bring back.
            candidates = {k: v for k, v in candidates.items() if v}
            flat = [i for insts in candidates.values() for i in insts]
            alive = {o.instance_id: o.alive for o in self.project.compute.observe(flat)}
            whole: dict[str, tuple[ServiceSpec, str, list[Instance]]] = {}
            for name, insts in candidates.items():
                try:
                    spec = self._release_spec(currents[name])
                except Exception as exc:  # this service only
                    self._failed(name, f"reading release {currents[name]}", exc)
                    continue
                short = len(insts) < spec.replicas
                if short or not all(alive.get(i.id, False) for i in insts):
                    out.append(("heal", name))
                else:
                    whole[name] = (spec, currents[name], insts)
            sick = self._probe(whole)
            out += [("heal", name) for name in whole if name in sick]
        return out

    def _probe(self, services: dict[str, tuple[ServiceSpec, str, list[Instance]]]) -> set[str]:
        """Read the router's own health verdict on each release's servers once per health
        interval (as an ASG with ELB health checks does: the balancer already checks every
        server at that interval, so kiln sends no probes of its own), for every service due in
        one router call; the services with an instance DOWN `unhealthy_threshold` readings in a
        row (alive, not serving: replace it). A router without verdicts (AWS: the ASG replaces
        unhealthy targets itself) skips it."""
        router = self.project.router
        now = time.monotonic()
        due = {n: v for n, v in services.items() if now >= self._next_probe.get(n, 0.0)}
        if not isinstance(router, HealthVerdicts) or not due:
            return set()
        seen = router.server_statuses(sorted({rel for _, rel, _ in due.values()}))
        sick: set[str] = set()
        for name, (spec, release_id, insts) in due.items():
            self._next_probe[name] = now + spec.health.interval
            ids = {i.id for i in insts}
            for gone in self._watched.get(name, set()) - ids:  # by id: `web` vs `web-api-r1-…`
                self.failing.pop(gone, None)
            self._watched[name] = ids
            for inst in insts:
                verdict = seen.get(release_id, {}).get(f"http://{inst.address}")
                if verdict is None or verdict.startswith("MAINT"):
                    continue  # not in the router (starting, draining) or held by an operator
                down = verdict.startswith("DOWN")
                self.failing[inst.id] = self.failing.get(inst.id, 0) + 1 if down else 0
                if self.failing[inst.id] >= spec.health.unhealthy_threshold:
                    sick.add(name)
        return sick

    def _sick(self, name: str, spec: ServiceSpec, insts: list[Instance]) -> list[Instance]:
        """At most one unhealthy instance at a time, and none while a replacement is pending:
        if every instance fails (a dependency is down), they are not all killed at once."""
        if name in self.healing:
            return []
        limit = spec.health.unhealthy_threshold
        return [i for i in insts if self.failing.get(i.id, 0) >= limit][:1]

    def _router_down(self) -> bool:
        if not route_records.any_weighted(self.project.store):
            return False
        router = self.project.router
        return isinstance(router, RouterProcess) and not router.is_running()

    def _currents(self) -> dict[str, str]:
        """service -> its current release (the last settled rollout's target, or its origin)."""
        out: dict[str, str] = {}
        for r in rollout_records.settled_per_service(self.project.store):
            rel = r["to_release"] if r["outcome"] == "promoted" else r["from_release"]
            if rel is not None:
                out[str(r["service"])] = str(rel)
        return out

    def _current(self, name: str) -> str | None:
        row = rollout_records.last_settled(self.project.store, name)
        if row is None:
            return None
        return str(row["to_release"]) if row["outcome"] == "promoted" else row["from_release"]

    def _release_spec(self, release_id: str) -> ServiceSpec:
        """How the release runs (its own recorded config, not today's spec; releases never
        change, so it is read once)."""
        cached = self._specs.get(release_id)
        if cached is not None:
            return cached
        release = find_release(self.project.store, release_id)
        if release is None:
            raise StateError(f"release {release_id} is not in the state")
        spec = self._specs[release_id] = release.spec
        return spec

    # ------------------------------------------------------------------ act (under the lock)

    def _do_router(self, _: str) -> bool:
        if not self._router_down():
            return False
        start_router(self.project)
        self._event("router.restarted", "the router was down; restarted it with its routing",
                    None)
        self.metrics.actions.labels("router_restart").inc()
        return True

    def _do_rollout(self, name: str) -> bool:
        open_id = rollout_records.open_id(self.project.store, name)
        if open_id is None:
            return False
        rid = open_id
        drv = self.driven.get(rid)
        if drv is None:
            # The command that handed it over read kiln.yaml just now: drive it with that one.
            self._reload(force=True)
            rec, judge = self.project.rollout_driver(name, rid)
            drv = self.driven[rid] = Driven(rid, rec, judge)
            self._event("controller.rollout", f"driving rollout #{rid}", name, {"rollout": rid})
        status, acted = drv.reconciler.step(drv.reconciler.load())
        if status.phase in SETTLED:
            self._settled(name, drv, status)
        return acted

    def _settled(self, name: str, drv: Driven, status: Status) -> None:
        del self.driven[drv.rollout_id]
        drv.reconciler.close()
        if drv.judge is not None:
            self.project.record_judge(name, drv.rollout_id, drv.judge)
        report = self.project.write_report(name, drv.rollout_id)
        self._event("controller.rollout_settled",
                    f"rollout #{drv.rollout_id} settled: {status.outcome or status.phase}", name,
                    {"rollout": drv.rollout_id, "outcome": status.outcome, "report": report})
        self.metrics.actions.labels(f"rollout_{status.outcome or status.phase}").inc()

    def _do_standby(self, name: str) -> bool:
        self.project.end_expired_standby(name)
        self._event("standby.ended", "blue-green standby ended on time: the old set is disposed "
                    "of", name)
        self.metrics.actions.labels("standby_end").inc()
        return True

    def _do_heal(self, name: str) -> bool:
        """One heal pass (kiln.rollout.heal.heal_step) with the controller's own liveness
        verdicts (`_sick`) and retry policy; every change it made is an event."""
        current = self._current(name)
        if current is None:
            return False
        store = self.project.store
        spec = self._release_spec(current)
        release = load_release(store, current)
        sick = self._sick(name, spec, instances_of(store, current, ("running",)))
        checks = {i.id: self.failing.pop(i.id, 0) for i in sick}
        now = time.time()
        heal = self.healing.get(name)
        if heal is None or heal.release != current:
            heal = Healing(current, now)
        self.healing[name] = heal  # kept if the pass fails half-way: its retry delay holds

        def out_of_rotation(res: HealPass) -> None:
            for inst in res.died + res.lost:
                self._event("instance.died", f"{inst.id} ({inst.address}) died; replacing it "
                            "from the same image", name, {"instance": inst.id, "release": current})
            if res.died or res.lost:
                self.metrics.actions.labels("instance_died").inc()
            for inst in res.retired:
                self._event("instance.unhealthy", f"{inst.id} ({inst.address}) failed "
                            f"{checks[inst.id]} health checks in a row; replacing it from the "
                            "same image", name, {"instance": inst.id, "release": current,
                                                 "checks": checks[inst.id]})
                self.metrics.actions.labels("instance_unhealthy").inc()

        res = heal_step(self.project.rollout_env(name, spec), name, release, heal, now,
                        sick=sick, launch=now >= heal.next_try, on_out=out_of_rotation)
        if res.launched:
            heal.attempts += 1
            heal.next_try = now + (min(60.0, 2.0 ** (heal.attempts - 2))
                                   if heal.attempts > 1 else 0.0)
            self._event("instance.replaced", f"launched {len(res.launched)} instance(s) of "
                        f"{current} (same image, no new release)", name,
                        {"release": current, "count": len(res.launched),
                         "attempt": heal.attempts})
            self.metrics.actions.labels("instance_launched").inc()
        for inst in res.expired:
            self._event("instance.unhealthy", f"{inst.id} not healthy within "
                        f"{spec.health.deadline:.0f}s; stopped it, will retry", name,
                        {"instance": inst.id})
        if res.admitted:
            joined = [i.id for i in res.admitted]
            self._event("instance.in_rotation", f"{', '.join(joined)} healthy and in rotation "
                        f"{time.time() - heal.since:.1f}s after the death", name,
                        {"instances": joined, "release": current})
            self.metrics.actions.labels("instance_in_rotation").inc()
        if res.done:
            del self.healing[name]
        return res.acted

    def _run_drift(self) -> None:
        from kiln.drift import detect

        self._next_drift = time.monotonic() + self.drift_every
        items = detect(self.project)
        before = {json.dumps(i, sort_keys=True) for i in self.drift["items"]}
        self.drift = {"at": time.time(), "items": items}
        if items and {json.dumps(i, sort_keys=True) for i in items} != before:
            self._event("drift.found", f"{len(items)} drift item(s): "
                        + "; ".join(str(i["detail"]) for i in items[:3]), None, {"items": items})
        self.metrics.actions.labels("drift_check").inc()

    def _event(self, kind: str, message: str, service: str | None,
               data: dict[str, Any] | None = None) -> None:
        self.project.store.event(kind, message, service=service or None, data=data)


def log_line(ev: EventLine) -> str:
    """'19:40:01 web rollout.step: canary step 2 (50%)': time, service, kind, message."""
    when = time.strftime("%H:%M:%S", time.localtime(ev.time))
    return f"{when} {ev.service or '-'} {ev.kind}: {' '.join(ev.message.split())}"
