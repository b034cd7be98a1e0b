"""Drive a persisted rollout to a settled phase: observe, decide (pure), act, persist once.

Killing the process at any moment and running the reconciler again converges, because the status
is written only after a pass's actions succeeded and every action is idempotent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kiln.errors import KilnError, PlatformError, StateError
from kiln.platforms.base import (
    Backend,
    Compute,
    Image,
    Instance,
    MetricSource,
    Release,
    Router,
)
from kiln.platforms.capabilities import (
    ExitStatus,
    Mirroring,
    OpenRequests,
    ReleaseTerminator,
    RouterProcess,
    ServersReadBack,
)
from kiln.platforms.instance_rows import from_row
from kiln.rollout.decide import (
    SETTLED,
    Action,
    EnsureInstances,
    Observation,
    Record,
    Retire,
    SetWeights,
    Status,
    TerminateRelease,
    TerminateRetiring,
    Verdict,
    decide,
)
from kiln.rollout.prewarm import SHOW_EVERY, prewarm, words
from kiln.rollout.release_config import launch_image, load_release
from kiln.rollout.synthetic import StepLoad
from kiln.spec.models import Health, ServiceSpec
from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records
from kiln.state.store import Store

__all__ = ["Env", "Reconciler", "env_fault", "instances_of", "launch_release", "load_release"]

LIVE_STATES = ("starting", "running", "draining")
FAST_TICK = 0.02
"""Seconds between passes while waiting on health or a drain (a probe, not a timer)."""
CONFIRM_DEADLINE = 10.0
"""How long a routing change may take to read back from the router before the pass fails."""


def shares(weights: Mapping[str, int]) -> dict[str, int]:
    """Each release's share in percent, releases at 0 left out: what routers agree on (one
    reads a single target back as weight 1, another leaves a weight-0 release out)."""
    total = sum(max(w, 0) for w in weights.values())
    return {rid: round(100 * w / total) for rid, w in weights.items() if w > 0} if total else {}


class JudgeFn(Protocol):
    def __call__(self, status: Status, now: float) -> Verdict | None: ...


@dataclass
class Env:
    """What a reconcile pass needs from the world."""

    store: Store
    compute: Compute
    router: Router
    metrics: MetricSource | None
    images: Callable[[str], Image]
    """The stored image of a digest, verified before it is launched."""
    secrets: Callable[[ServiceSpec], Mapping[str, str]] = lambda spec: {}
    """Resolves a release's own secret references (its recorded spec's) at launch."""
    fault: Callable[[str], None] = lambda point: None
    """Test-only fault point (KILN_FAULT): called at every step boundary."""
    notify: Callable[[str, str, str | None, dict[str, Any]], None] = (
        lambda kind, message, service, data: None)
    """Every recorded rollout event, for the `notify:` webhooks (queues; never blocks)."""
    instances_changed: Callable[[], object] = lambda: None
    """After instances were launched, routed or stopped (kiln's Prometheus rewrites its targets)."""


def instances_of(store: Store, release_id: str, states: Sequence[str] = LIVE_STATES,
                 kind: str = "service") -> list[Instance]:
    return [from_row(r) for r in instance_records.of_release(store, release_id, states, kind)]


def launch_release(env: Env, release: Release, count: int) -> list[Instance]:
    """Start `count` instances of `release` as it was made: its recorded spec (command, env,
    secrets references, health, port, resources) and its image's env and workdir. The one way
    a release is launched, so none runs today's kiln.yaml."""
    spec = release.spec
    launched = env.compute.launch(release.service, spec, release,
                                  launch_image(env.images, release), count, env=env.secrets(spec))
    env.instances_changed()  # scraped from before they take traffic
    return launched


def env_fault() -> Callable[[str], None]:
    """KILN_FAULT=point kills this process with SIGKILL when the point is reached."""
    target = os.environ.get("KILN_FAULT")
    if not target:
        return lambda point: None

    def fault(point: str) -> None:
        if point == target:
            os.kill(os.getpid(), 9)

    return fault


class Reconciler:
    """Runs one service's rollout (a `rollouts` row) until it settles.

    `service` (today's spec) gives only the rollout policy (`rollout`: strategy, steps, analysis,
    surge, drain timeout); how each release runs, is health-checked and stopped is its own
    recorded spec."""

    def __init__(self, env: Env, service_name: str, service: ServiceSpec, rollout_id: int,
                 judge: JudgeFn | None = None, tick: float = 0.1,
                 load: StepLoad | None = None) -> None:
        self.env = env
        self.name = service_name
        self.service = service
        self._releases: dict[str, Release] = {}
        self.rollout_id = rollout_id
        self.judge = judge
        self.tick = tick
        self._healthy: set[str] = set()
        self._saved = 0.0
        self.synthetic = load
        self._on_status: Callable[[Status], None] | None = None
        """Synthetic GETs during judged steps (`rollout.load`); stopped by `close()`."""

    # ------------------------------------------------------------ persistence

    def load(self) -> Status:
        text = rollout_records.status_json(self.env.store, self.rollout_id)
        assert text is not None
        return Status.from_json(json.loads(text))

    def _take_signal(self, status: Status) -> Status:
        with self.env.store.tx() as c:
            signal = rollout_records.take_signal(c, self.rollout_id)
        if signal == "abort":
            status.abort_requested = True
        elif signal == "promote":
            status.promote_requested = True
        elif signal == "promote_full":
            status.promote_full = True
        return status

    def save(self, status: Status, previous_phase: str) -> None:
        now = time.time()
        finished = now if status.phase == "done" else None
        with self.env.store.tx() as c:
            rollout_records.save_status(c, self.rollout_id, status.phase,
                                        json.dumps(status.to_json()), status.outcome,
                                        status.reason, now, finished)
            route_records.replace_service(c, self.name, status.weights)
        if status.phase != previous_phase:
            self.env.fault(f"after:{status.phase}")

    # ------------------------------------------------------------ releases

    def release(self, release_id: str) -> Release:
        """The release value (read once: releases never change)."""
        found = self._releases.get(release_id)
        if found is None:
            found = self._releases[release_id] = load_release(self.env.store, release_id)
        return found

    def _stop_timeout(self, release_id: str) -> float:
        try:
            return self.release(release_id).spec.stop_timeout
        except StateError:  # a record today's kiln cannot load still has to be stopped
            return self.service.stop_timeout

    # ------------------------------------------------------------ observe

    def observe(self, status: Status) -> Observation:
        now = time.time()
        new = instances_of(self.env.store, status.new, ("starting", "running", "dead"))
        observed = {o.instance_id: o.alive for o in self.env.compute.observe(new)}
        alive = [i for i in new if observed.get(i.id, False)]
        # Only instances this rollout launched can fail it: a release rolled back to may have
        # instances that died in an earlier life.
        dead = [i for i in new if not observed.get(i.id, False)
                and self._created_at(i.id) >= status.started - 1.0]
        for inst in new:
            if not observed.get(inst.id, False):
                self._mark_dead(inst)  # so the router is never given it again
        healthy = 0
        for inst in alive:
            if inst.id not in self._healthy and self.env.compute.healthy(
                    inst, self._release_health(status.new)):
                self._prewarm(inst, status)
                self._healthy.add(inst.id)
                self._mark(inst.id, "running")
            if inst.id in self._healthy:
                healthy += 1
        old_alive = old_healthy = 0
        if status.old:
            old = instances_of(self.env.store, status.old, ("starting", "running"))
            for inst, o in zip(old, self.env.compute.observe(old), strict=True):
                if not o.alive:
                    continue
                old_alive += 1
                # Restored old instances (a rolled-back rolling update) start as 'starting'.
                if inst.id in self._healthy or self._state(inst.id) == "running":
                    old_healthy += 1
                elif status.phase == "restore" and self.env.compute.healthy(
                        inst, self._release_health(status.old)):
                    self._healthy.add(inst.id)
                    self._mark(inst.id, "running")
                    old_healthy += 1
        verdict = None
        if self.judge is not None and status.old:
            # Called every pass so the report sees all traffic; only a step is judged.
            seen = self.judge(status, now)
            verdict = seen if status.phase == "step" else None
        return Observation(
            now=now, new_alive=len(alive), new_healthy=healthy, new_dead=len(dead),
            old_alive=old_alive, old_healthy=old_healthy,
            old_inflight=self._inflight(status.old) if status.phase == "drain_old" else 0,
            new_inflight=self._inflight(status.new) if status.phase == "drain_new" else 0,
            retiring_inflight=self._inflight(status.old) if status.retiring else 0,
            verdict=verdict,
        )

    def _prewarm(self, inst: Instance, status: Status) -> None:
        """Warm a healthy new instance before it is routed to (bounded; see prewarm.py),
        saying so meanwhile in the status's `waiting` (status, the live line, the dashboard)."""
        want = self.service.rollout.warmup_requests
        if want is None:
            return
        shown = [0.0]

        def progress(sent: int) -> None:
            if time.monotonic() - shown[0] < SHOW_EVERY:
                return
            shown[0] = time.monotonic()
            note = dataclasses.replace(status, waiting=words(inst.id, sent, want.count, want.path))
            self.save(note, status.phase)  # display only: the pass persists its own status
            if self._on_status is not None:
                self._on_status(note)

        done = prewarm(inst.url, want.path, want.count, want.timeout, progress=progress)
        self.env.store.event("instance.prewarmed", f"{inst.id}: {done.describe(want.count, want.path)}",
                             service=self.name, data={"instance": inst.id, "sent": done.sent,
                                                      "errors": done.errors})

    def _mark_dead(self, inst: Instance) -> None:
        if self._state(inst.id) == "dead":
            return
        # How it ended is asked now: a drain removes a container, and its exit code with it.
        compute = self.env.compute
        how = compute.exit_status(inst) if isinstance(compute, ExitStatus) else "is not running"
        with self.env.store.tx() as c:
            instance_records.mark_dead_unstamped(c, inst.id)
            c.event("instance.died", f"{inst.id} {how}", service=self.name,
                    data={"instance": inst.id, "release": inst.release_id, "how": how})

    def _state(self, instance_id: str) -> str | None:
        return instance_records.state_of(self.env.store, instance_id)

    def _created_at(self, instance_id: str) -> float:
        return instance_records.created_at(self.env.store, instance_id) or 0.0

    def _inflight(self, release_id: str | None) -> int:
        if release_id is None:
            return 0
        router = self.env.router
        if not isinstance(router, OpenRequests):
            return 0
        try:
            return int(router.open_requests(release_id))
        except Exception:  # a metrics hiccup must not block a drain; the timeout bounds it
            return 0

    def _mark(self, instance_id: str, state: str) -> None:
        with self.env.store.tx() as c:
            instance_records.settle_starting(c, instance_id, state)

    # ------------------------------------------------------------ act

    def act(self, status: Status, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, EnsureInstances):
                self._ensure(action.release, action.count)
            elif isinstance(action, SetWeights):
                self.route(action.weights, action.preview, dict(action.mirror))
            elif isinstance(action, Retire):
                self._retire(action.release, action.count, status)
            elif isinstance(action, TerminateRetiring):
                for inst in instances_of(self.env.store, action.release, ("draining",)):
                    self.env.compute.terminate(inst, self._stop_timeout(action.release))
            elif isinstance(action, TerminateRelease):
                insts = instances_of(self.env.store, action.release)
                compute = self.env.compute
                if isinstance(compute, ReleaseTerminator):
                    compute.terminate_release(action.release, insts,
                                              self._stop_timeout(action.release))
                else:
                    for inst in insts:
                        compute.terminate(inst, self._stop_timeout(action.release))
            elif isinstance(action, Record):
                self.env.store.event(action.kind, action.message, service=self.name,
                                     data=action.data)
                self.env.notify(action.kind, action.message, self.name, action.data)
        if any(isinstance(a, TerminateRetiring | TerminateRelease) for a in actions):
            self.env.instances_changed()

    def _ensure(self, release_id: str, count: int) -> None:
        existing = instances_of(self.env.store, release_id, ("starting", "running"))
        alive = [o for o in self.env.compute.observe(existing) if o.alive]
        missing = count - len(alive)
        if missing <= 0:
            return
        launch_release(self.env, self.release(release_id), missing)
        self.env.fault("launched")

    def route(self, weights: Mapping[str, int], preview: Sequence[str] = (),
              mirror: Mapping[str, int] | None = None) -> None:
        backends: list[Backend] = []
        for release_id, weight in weights.items():
            servers = [i.address for i in instances_of(self.env.store, release_id, ("running",))]
            if servers:
                backends.append(Backend(release_id, weight, servers,
                                        health=self._release_health(release_id),
                                        preview=release_id in preview,
                                        mirror=(mirror or {}).get(release_id, 0)))
        if mirror and not isinstance(self.env.router, Mirroring):
            raise PlatformError(f"service {self.name}: this router cannot mirror requests "
                                "(mirror steps need router: traefik)")
        if backends:
            # Listen and health follow the routed release; the traffic policy is today's.
            routed = self._routed_spec(weights).model_copy(
                update={"rollout": self.service.rollout})
            self.env.router.set_backends(self.name, routed, backends)
            self._confirm({b.release_id: b.weight for b in backends},
                          {b.release_id: set(b.servers) for b in backends if b.weight > 0},
                          {b.release_id: b.mirror for b in backends if b.mirror})
        else:
            self.env.router.remove_service(self.name)
        self.env.instances_changed()
        self.env.fault("routed")

    def _confirm(self, want: Mapping[str, int], servers: Mapping[str, set[str]],
                 mirrors: Mapping[str, int]) -> None:
        """Proceed only once the router's live state reads back as asked: a router that applies
        changes late (a file watch, a lagging API) must not see a release drained and disposed
        of while it still sends it requests. set_backends already waits on the local routers;
        this is the rollout's own check, whatever the router."""
        give_up = time.monotonic() + CONFIRM_DEADLINE
        router = self.env.router
        readback = router if isinstance(router, ServersReadBack) else None

        copier = router if isinstance(router, Mirroring) else None

        def matches() -> bool:
            return shares(router.verify(self.name)) == shares(want) and (
                readback is None or readback.served_servers(self.name) == servers) and (
                copier is None or copier.mirrors(self.name) == mirrors)

        while not matches():
            if time.monotonic() > give_up:
                raise PlatformError(f"the router did not confirm the routing of {self.name} "
                                    f"within {CONFIRM_DEADLINE:.0f}s: asked {dict(want)}, it "
                                    f"serves {router.verify(self.name)}")
            time.sleep(FAST_TICK)

    def _release_health(self, release_id: str) -> Health:
        return self.release(release_id).health

    def _routed_spec(self, weights: Mapping[str, int]) -> ServiceSpec:
        """The service's router entry (listen address, default health) follows the release
        with the most traffic: a rollback serves where the release it restores served."""
        for release_id in sorted(weights, key=lambda r: -weights[r]):
            try:
                return self.release(release_id).spec
            except StateError:
                break
        return self.service

    def _retire(self, release_id: str, count: int, status: Status) -> None:
        running = instances_of(self.env.store, release_id, ("running", "starting"))
        with self.env.store.tx() as c:
            for inst in running[:count]:
                instance_records.set_draining(c, inst.id)
        self.route(status.weights)

    # ------------------------------------------------------------ loop

    def run(self, on_status: Callable[[Status], None] | None = None,
            until: frozenset[str] = SETTLED, timeout: float = 3600.0) -> Status:
        try:
            return self._run(on_status, until, timeout)
        finally:
            self.close()  # every exit: settled, an error, Ctrl-C

    def _run(self, on_status: Callable[[Status], None] | None, until: frozenset[str],
             timeout: float) -> Status:
        status = self.load()
        deadline = time.monotonic() + timeout
        while status.phase not in until:
            if time.monotonic() > deadline:
                raise KilnError(f"rollout of {self.name} did not settle within {timeout:.0f}s "
                                f"(phase {status.phase})")
            status, acted = self.step(status, on_status)
            if not acted and status.phase not in until:
                # Judging a step or holding a standby is measured in seconds; everything else
                # waits on a probe (health, drain) and moves on as soon as it answers.
                slow = status.phase in ("step", "standby")
                time.sleep(self.tick if slow else min(self.tick, FAST_TICK))
        return status

    def close(self) -> None:
        """Stop what this driver runs beside the rollout (the synthetic load)."""
        if self.synthetic is not None:
            self.synthetic.close()

    def _keep_router(self) -> None:
        """The router is part of the rollout: a router that died (SIGKILL, OOM) is restarted
        with its recorded routing in the very next pass, then the rollout goes on by its rules
        (its failed requests count against whichever release they hit)."""
        router = self.env.router
        if not isinstance(router, RouterProcess) or router.is_running():
            return
        began = time.monotonic()
        try:
            self.env.router.ensure_running()
        except KilnError as exc:  # e.g. its port not free yet: the next pass tries again
            self.env.store.event("router.restart_failed", f"restarting the router failed: "
                                 f"{exc.message.splitlines()[0]}", service=self.name)
            return
        self.env.store.event("router.restarted",
                             f"the router was not running; restarted with its routing in "
                             f"{time.monotonic() - began:.2f}s", service=self.name)

    def step(self, status: Status, on_status: Callable[[Status], None] | None = None
             ) -> tuple[Status, bool]:
        """One pass: signal, observe, decide, act, persist. Returns the new status and whether
        it acted (a controller drives many rollouts by calling this in turn)."""
        status = self._take_signal(status)
        self._on_status = on_status
        self._keep_router()
        obs = self.observe(status)
        new_status, actions = decide(status, obs, self.service.rollout,
                                     self._release_health(status.new).deadline)
        self.act(new_status, actions)
        if self.synthetic is not None:
            new_status.synthetic = self.synthetic.sync(new_status, obs.now)
        changed = new_status.to_json() != status.to_json()
        # The judge's live line changes on every pass under traffic: persist it once a second.
        live_only = changed and not actions and dataclasses.replace(
            new_status, judge_line=status.judge_line, judge_words=status.judge_words,
            synthetic=status.synthetic, evidence=status.evidence).to_json() == status.to_json()
        if live_only and time.monotonic() - self._saved < 1.0:
            changed = False
        if changed or actions:
            self._saved = time.monotonic()
            self.save(new_status, status.phase)
            if on_status:
                on_status(new_status)
        return new_status, bool(actions)

