"""`kiln deploy`: resume what was interrupted, bake and gate the image, then do what the pure plan
(`kiln.plan.decide`, what `kiln plan` prints) says: nothing, heal, or roll a new release out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from kiln.context import Context
from kiln.errors import KilnError
from kiln.platforms.base import Image, Release
from kiln.platforms.capabilities import RouterProcess
from kiln.rollout.decide import Status
from kiln.rollout.release_config import record_release
from kiln.spec.models import ServiceSpec
from kiln.state.records import routes as route_records
from kiln.usecases.results import DeployEvent, DeployResult, ServiceResult
from kiln.usecases.rollouts import drive, emit_log_tail, finish_standby, roll_to, write_report
from kiln.usecases.routing import start_router


def deploy(project: Context, services: Sequence[str] | None = None, *, skip_tests: bool = False,
           on_event: Callable[[DeployEvent], None] | None = None,
           no_cache: bool = False, force: bool = False, preview: bool = False
           ) -> DeployResult:
    """`preview`: hold each new release in preview (only `X-Kiln-Release` requests reach
    it) until `kiln promote`; `kiln abort` disposes of it."""
    emit = on_event or (lambda ev: None)
    names = project._services(services)
    result = DeployResult()
    if preview:
        for name in names:
            if project.service(name).rollout.strategy == "rolling":
                raise KilnError(f"services.{name}.rollout.strategy: --preview needs canary "
                                "or blue-green (rolling replaces instances in place)")
    with project.locked("deploy " + " ".join(names)):
        for name in names:  # a taken address is refused before any bake, test or process
            project.router.check_listen(name, project.service(name).listen)
        project.backup_state("deploy")
        project._sweep()
        router = project.router
        started_router = isinstance(router, RouterProcess) and not router.is_running()
        start_router(project)
        try:
            project.scraping.ensure()
            for name in names:
                result.services.append(_deploy_one(project, name, skip_tests, emit, no_cache,
                                                   force, preview=preview))
        except BaseException:
            # A deploy that fails before anything serves leaves no router of its own behind.
            if started_router and not route_records.any_weighted(project.store):
                project.router.stop()
                project.scraping.stop()
            raise
    return result


def deploy_image(project: Context, service: str, digest: str, *, force: bool = False,
                 on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
    """Roll out an image already in the store (the dashboard's deploy): no bake, same gate."""
    spec = project.service(service)
    with project.locked(f"deploy {service} {digest[:19]}"):
        image = project.image(digest)
        if image.name != spec.image:
            raise KilnError(f"{service}: image {digest[:19]} is a {image.name!r} image; the "
                            f"service runs {spec.image!r} images")
        project._sweep()
        start_router(project)
        return _deploy_one(project, service, False, on_event or (lambda ev: None), False, force,
                           baked=image)


def _deploy_one(project: Context, name: str, skip_tests: bool,
                emit: Callable[[DeployEvent], None], no_cache: bool, force: bool = False,
                baked: Image | None = None, preview: bool = False) -> ServiceResult:
    """Act on `kiln.plan.decide` (what `kiln plan` prints): resume, then bake and gate,
    then decide again with the baked image's digest and do what it says."""
    from kiln.plan import decide, facts
    from kiln.readmodel import observe_service

    t0 = time.monotonic()
    spec = project.service(name)

    def on_status(st: Status) -> None:
        emit(DeployEvent(name, "status", st.waiting or st.phase, status=st))

    # 1. Resume an interrupted rollout first: killing kiln must never lose one.
    resumed: ServiceResult | None = None
    seen = facts(project, observe_service(project, name), spec, None, force=force)
    if decide(seen).action == "resume" and seen.resume is not None:
        open_id, phase = seen.resume
        emit(DeployEvent(name, "release", f"resuming rollout #{open_id} ({phase})"))
        st = drive(project, name, open_id, on_status)
        report = write_report(project, name, open_id)
        resumed = ServiceResult(name, st.new, st.outcome or "failed", st.reason, open_id,
                                report)
        if st.outcome != "promoted":
            resumed.seconds = time.monotonic() - t0
            return resumed
    # 2. Bake (cached) and prove the image.
    image = baked or project.builder.build(
        spec.image, project.spec.images[spec.image], base_dir=project.base_dir,
        no_cache=no_cache,
        progress=lambda ev: emit(DeployEvent(name, "bake", ev.description, step=ev)))
    _gate(project, name, spec, image, skip_tests, emit)
    # 3. The decision, now that the image is known.
    view = observe_service(project, name)
    decision = decide(facts(project, view, spec, image.digest, force=force))
    current = view.current
    if decision.action == "unchanged":
        start_router(project)
        if resumed is not None:  # the resumed rollout is what this deploy did
            resumed.seconds = time.monotonic() - t0
            return resumed
        emit(DeployEvent(name, "uptodate", decision.detail))
        return ServiceResult(name, current.id if current else None, "unchanged",
                             seconds=time.monotonic() - t0)
    if decision.action == "heal" and current is not None:
        return _heal(project, name, spec, current, view.alive, emit, t0)
    if decision.action == "refused":
        raise KilnError(decision.detail,
                        hint="change the code or the spec, or deploy it again with --force")
    if decision.action == "resume":  # cannot happen under the lock; say so if it does
        raise KilnError(f"{name}: {decision.detail}; `kiln deploy {name}` resumes it")
    finish_standby(project, name, keep=None)
    project.router.check_listen(name, spec.listen)
    # Today's kiln.yaml makes a release: the image with the spec recorded for good.
    new = record_release(project.store, name, image, spec, skip_tests)
    return roll_to(project, name, spec, new, current, emit, t0, preview=preview)


def _heal(project: Context, name: str, spec: ServiceSpec, current: Release, alive: int,
          emit: Callable[[DeployEvent], None], t0: float) -> ServiceResult:
    """Dead instances of the live release are replaced by the same image: no new release."""
    from kiln.rollout.heal import heal

    emit(DeployEvent(name, "heal", f"{current.id}: {alive}/{spec.replicas} instances alive; "
                                   f"launching {max(spec.replicas - alive, 0)} of the same "
                                   "image (no new release)"))
    res = heal(project.rollout_env(name, current.spec), name, current,
               progress=lambda line: emit(DeployEvent(name, "heal", line)))
    if not res.ok and res.failed is not None:
        emit_log_tail(project, name, res.failed, emit)
    return ServiceResult(name, current.id, "healed" if res.ok else "failed", res.reason,
                         seconds=time.monotonic() - t0)


def _gate(project: Context, name: str, spec: ServiceSpec, image: Image, skip_tests: bool,
          emit: Callable[[DeployEvent], None]) -> None:
    """An image without a passing attestation for its current tests never gets traffic."""
    img_spec = project.spec.images[spec.image]
    if not img_spec.tests:
        return
    if skip_tests:
        project.store.event("tests.skipped",
                            f"tests of {image.digest[:19]} skipped (--skip-tests)",
                            service=name, data={"image": image.digest})
        emit(DeployEvent(name, "test", "tests skipped (--skip-tests)"))
        return
    from kiln.verify.api import ensure_tested

    ensure_tested(project, spec.image, image,
                  on_result=lambda line: emit(DeployEvent(name, "test", line)))
