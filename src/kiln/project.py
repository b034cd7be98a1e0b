"""The library's front: one `Project` per kiln.yaml, with an operation per command.

The CLI only calls these methods and renders what they return; progress arrives through callbacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import ImageTampered, KilnError, NotFound, RolledBack, StateError
from kiln.notify import Notifier
from kiln.platforms.base import Image, Instance, Release, StepEvent
from kiln.platforms.capabilities import ImageCheck, RouterProcess, Sweeper
from kiln.platforms.instance_rows import from_row
from kiln.platforms.registry import get_platform
from kiln.rollout.decide import SETTLED, Status, start
from kiln.rollout.executor import Env, Reconciler, env_fault, instances_of, load_release
from kiln.rollout.release_config import (
    config_digest,
    find_release,
    previous_live,
    record_release,
    went_live,
)
from kiln.secrets import resolve_secrets
from kiln.spec.models import Health, ServiceSpec, Spec
from kiln.state.lock import project_lock
from kiln.state.store import Store, default_home

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Compute, MetricSource, Platform, Router
    from kiln.state.controller import Controller

__all__ = ["DeployEvent", "DeployResult", "Project", "ServiceResult", "config_digest",
           "raise_for", "resolve_secrets"]

Warn = Callable[[str], None]


@dataclass
class DeployEvent:
    """Progress of `deploy`, for the CLI to render."""

    service: str
    kind: str  # bake | test | release | status | settled | uptodate
    message: str
    status: Status | None = None
    step: StepEvent | None = None


@dataclass
class ServiceResult:
    service: str
    release: str | None
    outcome: str  # promoted | rolled_back | aborted | failed | unchanged | healed | signalled
    reason: str | None = None
    rollout_id: int | None = None
    report: str | None = None
    seconds: float = 0.0


@dataclass
class DeployResult:
    services: list[ServiceResult] = field(default_factory=list)

    @property
    def rolled_back(self) -> list[ServiceResult]:
        return [s for s in self.services if s.outcome in ("rolled_back", "failed", "aborted")]


def _no_notify(kind: str, message: str, service: str | None, data: dict[str, Any]) -> None:
    """No `notify:` hooks: events are only recorded."""


class Project:
    """A loaded kiln.yaml with its state and platform."""

    def __init__(self, spec: Spec, spec_path: Path, base_dir: Path, home: Path,
                 warn: Warn | None = None, platform: Platform | None = None) -> None:
        self.spec = spec
        self.spec_path = spec_path
        self.base_dir = base_dir
        self.home = home
        self.warn: Warn = warn or (lambda msg: None)
        self._store: Store | None = None
        self._platform: Platform | None = platform
        self.detach = False
        """Start rollouts without driving them (the controller's own requests: it drives them)."""
        self._notifier: Notifier | None = None

    @classmethod
    def open(cls, spec_file: Path | None = None, warn: Warn | None = None) -> Project:
        from kiln.spec.loader import find_spec, found_above, load_spec

        path = find_spec(Path.cwd(), spec_file)
        if found_above(path):
            (warn or (lambda msg: None))(f"using {path} (found in a folder above this one)")
        loaded = load_spec(path)
        for line in loaded.spec.warnings():
            (warn or (lambda msg: None))(f"{loaded.path}: {line}")
        return cls(loaded.spec, loaded.path, loaded.base_dir, default_home(loaded.base_dir), warn)

    # ------------------------------------------------------------ plumbing

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.home, self.spec.project)
        return self._store

    def backup_state(self, reason: str) -> None:
        """A copy of state.db in .kiln/backups before a change (kept: the newest 10)."""
        self.store.backup(reason)

    @property
    def notifier(self) -> Notifier | None:
        """The `notify:` webhooks' sender (None without hooks)."""
        if self._notifier is None and self.spec.notify:
            self._notifier = Notifier(self.spec.notify, self.spec.project)
        return self._notifier

    def close(self) -> None:
        if self._notifier is not None:  # deliver what is queued (bounded), then stop
            self._notifier.close()
            self._notifier = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        with project_lock(self.store, command, self.warn):
            yield

    @property
    def platform(self) -> Platform:
        """The spec's platform (found by name in the registry); its parts are built on first use."""
        if self._platform is None:
            try:
                self._platform = get_platform(
                    self.spec.platform, self.store, self.home, self.spec.project,
                    router=self.spec.router,
                    settings=self.spec.aws if self.spec.platform == "aws" else None,
                    sandbox=self.spec.sandbox, router_admin=self.spec.router_admin)
            except KilnError as exc:
                raise KilnError(f"{self.spec_path}: platform: {exc}", hint=exc.hint) from exc
        return self._platform

    @property
    def builder(self) -> Builder:
        builder = self.platform.builder
        if hasattr(builder, "locate"):  # lets it name a step's line in kiln.yaml
            builder.locate = self._locate
        return builder

    def _locate(self, loc: tuple[str | int, ...], message: str) -> str:
        """`file:line:col: path: message` for a problem a builder finds at `loc` of the spec."""
        from kiln.spec.loader import LoadedSpec, line_at

        try:
            text = self.spec_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            text = ""
        return line_at(LoadedSpec(self.spec, self.spec_path, self.base_dir, text), loc, message)

    @property
    def compute(self) -> Compute:
        return self.platform.compute

    @property
    def router(self) -> Router:
        return self.platform.router

    @property
    def metrics(self) -> MetricSource | None:
        return self.platform.metrics

    def service(self, name: str) -> ServiceSpec:
        try:
            return self.spec.services[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.services)) or "none"
            raise NotFound(f"{self.spec_path}: no service named {name!r} (services: {known})"
                           ) from None

    def _services(self, names: Sequence[str] | None) -> list[str]:
        if not names:
            return list(self.spec.services)
        for n in names:
            self.service(n)
        return list(names)

    def image(self, digest: str, use: str = "launch it") -> Image:
        """The stored image with this digest, verified against it before `use` (a tampered
        image is refused with ImageTampered when the builder can check it)."""
        image = self.platform.image(digest)
        builder = self.builder
        if isinstance(builder, ImageCheck):
            builder.verify(image, use)
        return image

    # ------------------------------------------------------------ bake

    def bake(self, names: Sequence[str] | None = None, *, no_cache: bool = False,
             progress: Callable[[str, StepEvent], None] | None = None) -> list[Image]:
        names = list(names or self.spec.images)
        for n in names:
            if n not in self.spec.images:
                known = ", ".join(sorted(self.spec.images)) or "none"
                raise NotFound(f"{self.spec_path}: no image named {n!r} (images: {known})")
        self._check_sources(names)
        out = []
        with self.locked("bake " + " ".join(names)):
            for n in names:
                cb = (lambda ev, n=n: progress(n, ev)) if progress else None
                out.append(self.builder.build(n, self.spec.images[n], base_dir=self.base_dir,
                                              no_cache=no_cache, progress=cb))
        return out

    def _check_sources(self, names: list[str]) -> None:
        """Files the steps read exist, else one file:line error each (before anything runs)."""
        from kiln.spec.files import check_files
        from kiln.spec.loader import LoadedSpec

        try:
            text = self.spec_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            text = ""  # positions fall back to 1:1; the check itself needs only the spec
        check_files(LoadedSpec(self.spec, self.spec_path, self.base_dir, text), names)

    def list_images(self) -> list[dict[str, Any]]:
        from kiln.bake.imagestore import list_images

        rows = []
        for rec in list_images(self.store):
            rows.append({"name": rec.name, "digest": rec.digest, "created_at": rec.created_at,
                         "size": rec.size, "verdict": self._verdict(rec.digest)})
        return rows

    def _verdict(self, digest: str) -> str:
        try:
            from kiln.verify.attest import verdict_for
        except ImportError:
            return "untested"
        return str(verdict_for(self.store, digest))

    # ------------------------------------------------------------ releases

    def current_release(self, service: str) -> Release | None:
        """The release serving the service: the target of its last promoted rollout."""
        row = self.store.one(
            "SELECT to_release, from_release, outcome, phase FROM rollouts WHERE service = ? "
            "AND outcome IS NOT NULL ORDER BY id DESC LIMIT 1", (service,))
        if row is None or self.destroyed(service):
            return None
        if row["outcome"] == "promoted":
            return load_release(self.store, row["to_release"])
        rid = row["from_release"]
        if rid is None:
            return None
        # A rolled-back rollout leaves the one before it serving.
        return load_release(self.store, rid)

    def destroyed(self, service: str) -> bool:
        """`kiln destroy` stopped the service and nothing was rolled out since."""
        gone = self.store.one("SELECT MAX(time) AS t FROM events WHERE service = ? AND kind = "
                              "'service.destroyed'", (service,))
        if gone is None or gone["t"] is None:
            return False
        last = self.store.one("SELECT MAX(started_at) AS t FROM rollouts WHERE service = ?",
                              (service,))
        return last is None or last["t"] is None or float(last["t"]) < float(gone["t"])

    def live_releases(self, service: str) -> list[str]:
        """Releases that went live (promoted rollouts, rollbacks included), most recent first."""
        return went_live(self.store, service)

    def _new_release(self, service: str, image: Image, spec: ServiceSpec,
                     skip_tests: bool) -> Release:
        """Today's kiln.yaml makes a release: the image with the spec recorded for good."""
        return record_release(self.store, service, image, spec, skip_tests)

    def _open_rollout(self, service: str) -> int | None:
        row = self.store.one(
            "SELECT id FROM rollouts WHERE service = ? AND phase != 'done' ORDER BY id DESC LIMIT 1",
            (service,))
        return int(row["id"]) if row else None

    def _start_rollout(self, service: str, spec: ServiceSpec, new: Release,
                       old: Release | None, strategy: str | None = None,
                       preview: bool = False) -> int:
        strategy = strategy or spec.rollout.strategy
        # Where the judge's evidence begins, persisted so a resumed rollout replays it all.
        judge = self._judge(service, spec) if old is not None else None
        info = judge.start_info() if judge is not None else None
        # How many instances is the release's own (its config digest covers replicas).
        status = start(strategy, new.id, old.id if old else None, new.spec.replicas, time.time(),
                       info, preview=preview)
        now = time.time()
        with self.store.tx() as c:
            cur = c.execute(
                "INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
                "status_json, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (service, status.old, status.new, strategy, status.phase,
                 json.dumps(status.to_json()), now, now))
            assert cur.lastrowid is not None
            message = (f"{strategy} {status.old} -> {status.new}" if status.old
                       else f"first release {status.new}")
            data = {"rollout": int(cur.lastrowid), "judged": judge is not None}
            c.event("rollout.started", message, service=service, data=data)
        if self.notifier is not None:
            self.notifier.send("rollout.started", message, service, data)
        return int(data["rollout"])

    def rollout_env(self, service: str, spec: ServiceSpec) -> Env:
        """What a reconciler of this service needs (its secrets resolved now)."""
        return self._env(service, spec)

    def _env(self, service: str, spec: ServiceSpec) -> Env:
        # Each release resolves its own recorded secret references when it is launched.
        # A plain lookup: compute.launch verifies the content at every launch (once, not twice).
        return Env(self.store, self.compute, self.router, None, self.platform.image,
                   secrets=lambda recorded: resolve_secrets(service, recorded, self.base_dir),
                   fault=env_fault(),
                   notify=self.notifier.send if self.notifier else _no_notify)

    def _judge(self, service: str, spec: ServiceSpec) -> Any:
        if spec.rollout.analysis is None:
            return None
        from kiln.analysis.live import make_judge

        metrics = self.metrics
        if metrics is None:
            return None
        warmup = None
        if spec.rollout.analysis.warmup > 0:
            from kiln.analysis.warmup import Warmup
            from kiln.state.records_warmup import instance_starts

            store = self.store
            warmup = Warmup(spec.rollout.analysis.warmup,
                            lambda releases: instance_starts(store, releases))
        from kiln.analysis.prometheus import PrometheusQuery

        queries = PrometheusQuery(self.spec.prometheus.url) if self.spec.prometheus else None
        # The router's own request counters, for the cross-check with the source's counts.
        return make_judge(metrics, service, spec.rollout.analysis, self.router.request_counts,
                          warmup, queries)

    def rollout_driver(self, service: str, rollout_id: int) -> tuple[Reconciler, Any]:
        """The reconciler of one rollout and its live judge (None when unjudged): call
        `step()` per pass, then `record_judge()` once it settled."""
        spec = self.service(service)
        judge = self._judge(service, spec)
        return Reconciler(self._env(service, spec), service, spec, rollout_id, judge=judge), judge

    def _reconcile(self, service: str, rollout_id: int, on_status: Callable[[Status], None]
                   ) -> Status:
        rec, judge = self.rollout_driver(service, rollout_id)
        try:
            return rec.run(on_status)
        finally:
            if judge is not None:
                self.record_judge(service, rollout_id, judge)

    def record_judge(self, service: str, rollout_id: int, judge: Any) -> None:
        """Save the judge's series (the report's charts) and its cross-check of the counts."""
        from kiln.analysis.live import save_series

        save_series(self.home, rollout_id, judge)
        check = judge.crosscheck()
        if check is not None:
            check["rollout"] = rollout_id
            lost = ", ".join(f"{r}: {c['lost']} of {c['router']}"
                             for r, c in check["releases"].items() if c["lost"])
            self.store.event(
                "judge.crosscheck",
                f"access log and {check['counter']}'s request counters "
                + ("agree" if check["agree"] else f"DISAGREE: lines missing ({lost})"),
                service=service, data=check)
            if not check["agree"]:
                self.warn(f"{service}: the judge's access log is missing requests the "
                          f"router counted ({lost}): its verdict saw incomplete data")

    def controller(self) -> Controller | None:
        """The project's live controller (`kiln serve`) in another process, if one runs."""
        from kiln.state.controller import running

        return running(self.store)

    def _drive(self, service: str, rollout_id: int, on_status: Callable[[Status], None]
               ) -> Status:
        """Drive the rollout here, or hand it to the controller and watch it settle."""
        ctl = self.controller()
        if ctl is None:
            return self._reconcile(service, rollout_id, on_status)
        from kiln.state.lock import lock_released

        self.store.event("rollout.handed_over", f"rollout #{rollout_id} handed to "
                         f"{ctl.describe()}", service=service)
        with lock_released(self.store):
            st = self._watch(rollout_id, on_status)
        if st is None:  # the controller went away: drive it here
            return self._reconcile(service, rollout_id, on_status)
        return st

    def _watch(self, rollout_id: int, on_status: Callable[[Status], None],
               poll: float = 0.2) -> Status | None:
        """Follow a rollout someone else drives until it settles (None: the controller left)."""
        seen = None
        while True:
            row = self.store.one("SELECT status_json FROM rollouts WHERE id = ?", (rollout_id,))
            if row is None:
                raise NotFound(f"rollout #{rollout_id} not found in state")
            st = Status.from_json(json.loads(row["status_json"]))
            if row["status_json"] != seen:
                seen = row["status_json"]
                on_status(st)
            if st.phase in SETTLED:
                return st
            if self.controller() is None:
                return None
            time.sleep(poll)

    def write_report(self, service: str, rollout_id: int) -> str | None:
        from kiln.analysis.report import report_for_rollout

        path = report_for_rollout(self.store, self.home, service, rollout_id)
        return str(path) if path else None

    def _standby(self, service: str) -> tuple[Reconciler, Status] | None:
        """The service's rollout if it is in blue-green standby."""
        rid = self._open_rollout(service)
        if rid is None:
            return None
        spec = self.service(service)
        rec = Reconciler(self._env(service, spec), service, spec, rid)
        status = rec.load()
        return (rec, status) if status.phase == "standby" else None

    def end_expired_standby(self, service: str) -> None:
        """Dispose of a blue-green standby set whose scale_down_delay has passed."""
        found = self._standby(service)
        if found is not None and time.time() >= found[1].standby_until:
            found[0].run(until=frozenset({"done"}), timeout=60.0)

    def _finish_standby(self, service: str, keep: str | None) -> None:
        """A new rollout ends the previous one's blue-green standby now."""
        found = self._standby(service)
        if found is None:
            return
        rec, status = found
        if status.old and status.old != keep:
            for inst in instances_of(self.store, status.old):
                self.compute.terminate(inst, rec.release(status.old).spec.stop_timeout)
        status.phase = "done"
        status.weights = {status.new: 100}
        rec.save(status, "standby")

    def _sweep(self) -> None:
        """Mark instances whose process is gone as dead; stop orphans a killed kiln left."""
        compute = self.compute
        if isinstance(compute, Sweeper):
            compute.sweep()

    # ------------------------------------------------------------ deploy

    def deploy(self, services: Sequence[str] | None = None, *, skip_tests: bool = False,
               on_event: Callable[[DeployEvent], None] | None = None,
               no_cache: bool = False, force: bool = False, preview: bool = False
               ) -> DeployResult:
        """`preview`: hold each new release in preview (only `X-Kiln-Release` requests reach
        it) until `kiln promote`; `kiln abort` disposes of it."""
        emit = on_event or (lambda ev: None)
        names = self._services(services)
        result = DeployResult()
        if preview:
            for name in names:
                if self.service(name).rollout.strategy == "rolling":
                    raise KilnError(f"services.{name}.rollout.strategy: --preview needs canary "
                                    "or blue-green (rolling replaces instances in place)")
        with self.locked("deploy " + " ".join(names)):
            for name in names:  # a taken address is refused before any bake, test or process
                self.router.check_listen(name, self.service(name).listen)
            self.backup_state("deploy")
            self._sweep()
            router = self.router
            started_router = isinstance(router, RouterProcess) and not router.is_running()
            self.router.ensure_running()
            try:
                for name in names:
                    result.services.append(self._deploy_one(name, skip_tests, emit, no_cache,
                                                            force, preview=preview))
            except BaseException:
                # A deploy that fails before anything serves leaves no router of its own behind.
                if started_router and self.store.one(
                        "SELECT 1 FROM routes WHERE weight > 0 LIMIT 1") is None:
                    self.router.stop()
                raise
        return result

    def deploy_image(self, service: str, digest: str, *, force: bool = False,
                     on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
        """Roll out an image already in the store (the dashboard's deploy): no bake, same gate."""
        spec = self.service(service)
        with self.locked(f"deploy {service} {digest[:19]}"):
            image = self.image(digest)
            if image.name != spec.image:
                raise KilnError(f"{service}: image {digest[:19]} is a {image.name!r} image; the "
                                f"service runs {spec.image!r} images")
            self._sweep()
            self.router.ensure_running()
            return self._deploy_one(service, False, on_event or (lambda ev: None), False, force,
                                    baked=image)

    def _deploy_one(self, name: str, skip_tests: bool, emit: Callable[[DeployEvent], None],
                    no_cache: bool, force: bool = False, baked: Image | None = None,
                    preview: bool = False) -> ServiceResult:
        """Act on `kiln.plan.decide` (what `kiln plan` prints): resume, then bake and gate,
        then decide again with the baked image's digest and do what it says."""
        from kiln.plan import decide, facts
        from kiln.readmodel import observe_service

        t0 = time.monotonic()
        spec = self.service(name)

        def on_status(st: Status) -> None:
            emit(DeployEvent(name, "status", st.waiting or st.phase, status=st))

        # 1. Resume an interrupted rollout first: killing kiln must never lose one.
        resumed: ServiceResult | None = None
        seen = facts(self, observe_service(self, name), spec, None, force=force)
        if decide(seen).action == "resume" and seen.resume is not None:
            open_id, phase = seen.resume
            emit(DeployEvent(name, "release", f"resuming rollout #{open_id} ({phase})"))
            st = self._drive(name, open_id, on_status)
            report = self.write_report(name, open_id)
            resumed = ServiceResult(name, st.new, st.outcome or "failed", st.reason, open_id,
                                    report)
            if st.outcome != "promoted":
                resumed.seconds = time.monotonic() - t0
                return resumed
        # 2. Bake (cached) and prove the image.
        image = baked or self.builder.build(
            spec.image, self.spec.images[spec.image], base_dir=self.base_dir, no_cache=no_cache,
            progress=lambda ev: emit(DeployEvent(name, "bake", ev.description, step=ev)))
        self._gate(name, spec, image, skip_tests, emit)
        # 3. The decision, now that the image is known.
        view = observe_service(self, name)
        decision = decide(facts(self, view, spec, image.digest, force=force))
        current = view.current
        if decision.action == "unchanged":
            self.router.ensure_running()
            if resumed is not None:  # the resumed rollout is what this deploy did
                resumed.seconds = time.monotonic() - t0
                return resumed
            emit(DeployEvent(name, "uptodate", decision.detail))
            return ServiceResult(name, current.id if current else None, "unchanged",
                                 seconds=time.monotonic() - t0)
        if decision.action == "heal" and current is not None:
            return self._heal(name, spec, current, view.alive, emit, t0)
        if decision.action == "refused":
            raise KilnError(decision.detail,
                            hint="change the code or the spec, or deploy it again with --force")
        if decision.action == "resume":  # cannot happen under the lock; say so if it does
            raise KilnError(f"{name}: {decision.detail}; `kiln deploy {name}` resumes it")
        self._finish_standby(name, keep=None)
        self.router.check_listen(name, spec.listen)
        new = self._new_release(name, image, spec, skip_tests)
        return self._roll_to(name, spec, new, current, emit, t0, preview=preview)

    def _heal(self, name: str, spec: ServiceSpec, current: Release, alive: int,
              emit: Callable[[DeployEvent], None], t0: float) -> ServiceResult:
        """Dead instances of the live release are replaced by the same image: no new release."""
        from kiln.rollout.heal import heal

        emit(DeployEvent(name, "heal", f"{current.id}: {alive}/{spec.replicas} instances alive; "
                                       f"launching {max(spec.replicas - alive, 0)} of the same "
                                       "image (no new release)"))
        res = heal(self._env(name, current.spec), name, current,
                   progress=lambda line: emit(DeployEvent(name, "heal", line)))
        if not res.ok and res.failed is not None:
            self._emit_log_tail(name, res.failed, emit)
        return ServiceResult(name, current.id, "healed" if res.ok else "failed", res.reason,
                             seconds=time.monotonic() - t0)

    def _emit_log_tail(self, name: str, inst: Instance,
                       emit: Callable[[DeployEvent], None], lines: int = 20) -> None:
        for line in log_tail(self.compute.log_path(inst), lines):
            emit(DeployEvent(name, "log", f"{inst.id} | {line}"))

    def _emit_failed_instance_log(self, name: str, release_id: str,
                                  emit: Callable[[DeployEvent], None]) -> None:
        """A health gate failed: the log of an instance that died (else the newest) says why."""
        row = self.store.one(
            "SELECT * FROM instances WHERE release_id = ? AND kind = 'service' "
            "ORDER BY state = 'dead' DESC, created_at DESC LIMIT 1", (release_id,))
        if row is not None:
            inst = from_row(row)
            emit(DeployEvent(name, "log", f"log of {inst.id} ({row['state']}), last lines:"))
            self._emit_log_tail(name, inst, emit)

    def _roll_to(self, name: str, spec: ServiceSpec, new: Release, current: Release | None,
                 emit: Callable[[DeployEvent], None], t0: float,
                 strategy: str | None = None, preview: bool = False) -> ServiceResult:
        def on_status(st: Status) -> None:
            emit(DeployEvent(name, "status", st.waiting or st.phase, status=st))

        rid = self._start_rollout(name, spec, new, current, strategy, preview)
        how = strategy or spec.rollout.strategy
        emit(DeployEvent(name, "release",
                         f"{how} {current.id} -> {new.id}" if current else
                         f"first release {new.id}: live once healthy"))
        if self.detach:
            return ServiceResult(name, new.id, "started", f"rollout #{rid} started", rid,
                                 seconds=time.monotonic() - t0)
        st = self._drive(name, rid, on_status)
        if st.outcome == "failed":
            self._emit_failed_instance_log(name, new.id, emit)
        report = self.write_report(name, rid)
        emit(DeployEvent(name, "settled", st.reason or st.phase, status=st))
        return ServiceResult(name, new.id, st.outcome or "failed", st.reason, rid, report,
                             time.monotonic() - t0)

    def refuse_known_bad(self, name: str, image_digest: str, cfg: str) -> None:
        """The same image and config that was just rolled back is not canaried again silently."""
        from kiln.plan import known_bad

        why = known_bad(self.store, name, image_digest, cfg)
        if why is not None:
            raise KilnError(why, hint="change the code or the spec, or deploy it again with --force")

    def _gate(self, name: str, spec: ServiceSpec, image: Image, skip_tests: bool,
              emit: Callable[[DeployEvent], None]) -> None:
        """An image without a passing attestation for its current tests never gets traffic."""
        img_spec = self.spec.images[spec.image]
        if not img_spec.tests:
            return
        if skip_tests:
            self.store.event("tests.skipped", f"tests of {image.digest[:19]} skipped (--skip-tests)",
                             service=name, data={"image": image.digest})
            emit(DeployEvent(name, "test", "tests skipped (--skip-tests)"))
            return
        from kiln.verify.api import ensure_tested

        ensure_tested(self, spec.image, image,
                      on_result=lambda line: emit(DeployEvent(name, "test", line)))

    # ------------------------------------------------------------ control

    def signal(self, service: str, signal: str) -> int:
        self.service(service)
        rid = self._open_rollout(service)
        if rid is None:
            raise KilnError(f"{service}: no rollout in progress")
        with self.store.tx() as c:
            c.execute("UPDATE rollouts SET signal = ? WHERE id = ?", (signal, rid))
        return rid

    def promote(self, service: str, *, full: bool = False,
                on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
        """Let a paused canary go on. If no deploy drives it, drive it here until it settles."""
        return self._drive_signal(service, "promote_full" if full else "promote", on_event)

    def abort(self, service: str,
              on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
        return self._drive_signal(service, "abort", on_event)

    def _drive_signal(self, service: str, signal: str,
                      on_event: Callable[[DeployEvent], None] | None) -> ServiceResult:
        emit = on_event or (lambda ev: None)
        t0 = time.monotonic()
        rid = self.signal(service, signal)
        from kiln.errors import LockHeld

        ctl = None if self.detach else self.controller()
        if self.detach or ctl is not None:
            # The controller drives the rollout: it takes the signal on its next pass.
            deadline = time.monotonic() + 10.0
            while ctl is not None and time.monotonic() < deadline:
                row = self.store.one("SELECT signal FROM rollouts WHERE id = ?", (rid,))
                if row is None or row["signal"] is None:
                    break
                time.sleep(0.05)
            who = ctl.describe() if ctl is not None else "the controller"
            return ServiceResult(service, None, "signalled", f"{who} took {signal} for rollout "
                                 f"#{rid}", rid, seconds=time.monotonic() - t0)
        try:
            with self.locked(f"{signal} {service}"):
                self.router.ensure_running()
                st = self._reconcile(
                    service, rid,
                    lambda s: emit(DeployEvent(service, "status", s.waiting or s.phase, status=s)))
        except LockHeld:
            # A running deploy owns the rollout; it picks the signal up on its next pass.
            words = {"promote": "kiln promote", "promote_full": "kiln promote --full",
                     "abort": "kiln abort"}[signal]
            row = self.store.one("SELECT to_release FROM rollouts WHERE id = ?", (rid,))
            return ServiceResult(service, str(row["to_release"]) if row else None, "signalled",
                                 f"`{words}` handed to the deploy driving rollout #{rid}", rid)
        return ServiceResult(service, st.new, st.outcome or "failed", st.reason, rid,
                             self.write_report(service, rid), time.monotonic() - t0)

    def rollback(self, service: str, to: str | None = None,
                 on_event: Callable[[DeployEvent], None] | None = None,
                 force: bool = False) -> ServiceResult:
        """A new rollout to a retained release, which runs as it was made (its recorded spec).

        Only a release that went live (served all traffic once) is a rollback target: it gets
        all traffic once healthy. `force` accepts one that never did (an aborted canary), but
        rolls it out like a new release: today's strategy, steps and judge."""
        emit = on_event or (lambda ev: None)
        spec = self.service(service)
        t0 = time.monotonic()
        with self.locked(f"rollback {service}"):
            current = self.current_release(service)
            if current is None:
                raise KilnError(f"{service}: nothing is deployed, nothing to roll back")
            if to is None:
                to = previous_live(self.store, service, current.id)
                if to is None:
                    raise KilnError(f"{service}: {current.id} has no previous live release")
            target = find_release(self.store, to)
            live = went_live(self.store, service)
            if target is None or target.service != service:
                where = ("not found in state" if target is None
                         else f"belongs to service {target.service}")
                raise NotFound(f"{service}: release {to} {where}; "
                               f"{self._accepted(service, current.id)}")
            if target.id == current.id:
                raise KilnError(f"{service}: {to} is already the current release")
            if target.id not in live and not force:
                raise KilnError(
                    f"{service}: {to} never went live (no rollout of it was promoted), so it is "
                    f"no rollback target; {self._accepted(service, current.id)}",
                    hint=f"`kiln rollback {service} --to {to} --force` rolls it out like a new "
                         "release: with the spec's strategy and judge")
            self._rollback_image(service, target)
            open_id = self._open_rollout(service)
            if open_id is not None:
                self._finish_standby(service, keep=target.id)
                if self._open_rollout(service) is not None:
                    raise KilnError(f"{service}: a rollout is in progress; `kiln abort {service}` "
                                    "rolls it back")
            self._sweep()
            self.router.ensure_running()
            # Like Argo's rollbackWindow: a known-good release skips the canary steps and gets
            # all traffic as soon as its instances are healthy (still health-gated). One that
            # never went live has earned no such trust: the spec's strategy and judge.
            strategy = "rollback" if target.id in live else None
            return self._roll_to(service, spec, target, current, emit, t0, strategy=strategy)

    def _accepted(self, service: str, current: str) -> str:
        """One clause listing the releases `kiln rollback --to` accepts (went live, image kept)."""
        have = []
        for rid in went_live(self.store, service):
            rel = find_release(self.store, rid)
            if rid == current or rel is None:
                continue
            try:
                self.platform.image(rel.image_digest)
            except NotFound:
                continue
            have.append(rid)
        return (f"releases it accepts: {', '.join(have)}" if have
                else "no other release that went live is retained")

    def _rollback_image(self, service: str, target: Release) -> Image:
        """The target's image, or why it cannot be rolled back to and what can."""
        try:  # ImageTampered (not caught here) when its files changed since sealing
            return self.image(target.image_digest, use=f"roll {service} back to {target.id}")
        except NotFound:
            pass
        have = []
        for rid in self.live_releases(service):
            try:
                rel = load_release(self.store, rid)
                self.image(rel.image_digest)
            except (NotFound, ImageTampered):
                continue
            if rid != target.id:
                have.append(rid)
        options = (f"releases that can be rolled back to: {', '.join(have)} "
                   f"(`kiln rollback {service} --to RELEASE`); " if have else "")
        raise NotFound(
            f"{service}: the image of {target.id} ({target.image_digest[:19]}) was removed "
            "by `kiln gc`, so it cannot be rolled back to",
            hint=options + f"or check out the source {target.id} was built from and "
                           f"`kiln deploy {service}` to bake it again")

    # ------------------------------------------------------------ reporting

    def status(self, service: str | None = None) -> dict[str, Any]:
        """What runs, per service (kiln.readmodel). Read-only: a dead router is reported with
        what restarts it, never restarted here."""
        from kiln.readmodel import status

        return status(self, self._services([service] if service else None), self.warn)

    def sandbox_kind(self) -> str:
        """How bakes and instances are isolated: local's "bwrap", or "none" when the spec says
        `sandbox: none`; other platforms isolate their own way and are named ("podman", "aws")."""
        from kiln.readmodel import sandbox_kind

        return sandbox_kind(self.spec)

    def _health_of(self, release_id: str, spec: ServiceSpec) -> Health:
        """An instance is probed on its release's own health check (a dev instance: today's)."""
        release = find_release(self.store, release_id)
        try:
            return spec.health if release is None else release.health
        except StateError:  # status still shows the instance; routing reports the record
            return spec.health

    def _stop_timeout_of(self, release_id: str, spec: ServiceSpec) -> float:
        """A release's instances get its own stop timeout (today's for a dev instance, or a
        record today's kiln cannot load: stopping must not fail)."""
        release = find_release(self.store, release_id)
        try:
            return spec.stop_timeout if release is None else release.spec.stop_timeout
        except StateError:
            return spec.stop_timeout

    def history(self, service: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The service's rollouts, oldest first (the last `limit` of them when given)."""
        from kiln.readmodel import history

        self.service(service)
        return history(self.store, self.home, service, limit)

    def events(self, service: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return [{"time": r["time"], "service": r["service"], "kind": r["kind"],
                 "message": r["message"], "data": json.loads(r["data_json"])}
                for r in reversed(self.store.events(service, limit))]

    # ------------------------------------------------------------ teardown

    def destroy(self, services: Sequence[str] | None = None) -> list[str]:
        names = self._services(services)
        stopped: list[str] = []
        with self.locked("destroy " + " ".join(names)):
            self._sweep()  # also stops processes the state no longer records
            for name in names:
                spec = self.service(name)
                self.router.remove_service(name)
                rows = self.store.query(
                    "SELECT DISTINCT release_id FROM instances WHERE service = ? AND state IN "
                    "('starting','running','draining')", (name,))
                for row in rows:
                    timeout = self._stop_timeout_of(str(row["release_id"]), spec)
                    for inst in instances_of(self.store, row["release_id"]):
                        self.compute.terminate(inst, timeout)
                        stopped.append(inst.id)
                with self.store.tx() as c:
                    c.execute("DELETE FROM routes WHERE service = ?", (name,))
                    c.execute("UPDATE rollouts SET phase = 'done', outcome = COALESCE(outcome, "
                              "'aborted'), finished_at = ? WHERE service = ? AND phase != 'done'",
                              (time.time(), name))
                    c.event("service.destroyed", f"{name}: {len(stopped)} instance(s) stopped",
                            service=name)
            left = self.store.one("SELECT COUNT(*) AS n FROM instances WHERE kind = 'service' "
                                  "AND state IN ('starting','running','draining')")
            if left is None or left["n"] == 0:
                self.router.stop()
        return stopped

    def logs(self, service: str | None = None, instance: str | None = None,
             kind: str | None = None) -> list[LogSource]:
        """Logs of a service's instances: the running ones (service and dev instances) by
        default, else its most recent instance (a failed test's, say); `kind` picks service,
        dev or test instances (the newest stopped one when none runs); `instance` any one by
        id prefix."""
        name = self.only_service(service)
        rows = self.store.query(
            "SELECT * FROM instances WHERE service = ? ORDER BY created_at DESC", (name,))
        if instance:
            rows = [r for r in rows if r["id"].startswith(instance)]
            if not rows:
                raise NotFound(f"{name}: no instance {instance!r}",
                               hint=f"`kiln status {name}` lists them")
        elif kind:
            rows = [r for r in rows if r["kind"] == kind]
            live = [r for r in rows if r["state"] in ("starting", "running", "draining")]
            rows = live or rows[:1]
            if not rows:
                raise NotFound(f"{name}: no {kind} instance has run")
        else:
            live = [r for r in rows if r["state"] in ("starting", "running", "draining")]
            rows = live or rows[:1]
        out = []
        for r in rows:
            inst = from_row(r)
            out.append(LogSource(inst.id, str(r["kind"]), str(r["state"]),
                                 self.compute.log_path(inst)))
        return out

    def only_service(self, service: str | None) -> str:
        """The named service, or the project's only one when none is named."""
        if service:
            self.service(service)
            return service
        if len(self.spec.services) != 1:
            names = ", ".join(sorted(self.spec.services)) or "none"
            raise KilnError(f"name a service (services: {names})")
        return next(iter(self.spec.services))


@dataclass
class LogSource:
    """One instance's log file, for `kiln logs`."""

    instance: str
    kind: str  # service | dev | test
    state: str
    path: Path


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of an instance's log (nothing when it cannot be read)."""
    from kiln.logpump import tail

    data = tail(str(path), 64_000)  # across the rotation: log.1 when log was just started
    return [ln.decode(errors="replace") for ln in data.splitlines()[-lines:]]


def raise_for(result: DeployResult) -> None:
    """Exit 3 when the judge or a health gate rolled a service back."""
    bad = result.rolled_back
    if bad:
        words = {"rolled_back": "rolled back", "failed": "failed", "aborted": "aborted"}
        detail = "; ".join(
            " ".join(filter(None, [s.service, s.release, words.get(s.outcome, s.outcome)]))
            + (f": {s.reason}" if s.reason else "") for s in bad)
        raise RolledBack(detail)
