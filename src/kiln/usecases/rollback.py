"""`kiln rollback`: a new rollout to a retained release that went live, run as it was made (its
recorded spec); `--force` accepts one that never did and rolls it out like a new release."""

from __future__ import annotations

import time
from collections.abc import Callable

from kiln.context import Context
from kiln.errors import ImageTampered, KilnError, NotFound
from kiln.platforms.base import Image, Release
from kiln.rollout.executor import load_release
from kiln.rollout.release_config import find_release, previous_live, went_live
from kiln.state.records import rollouts as rollout_records
from kiln.usecases.results import DeployEvent, ServiceResult
from kiln.usecases.rollouts import finish_standby, roll_to
from kiln.usecases.routing import start_router


def rollback(project: Context, service: str, to: str | None = None,
             on_event: Callable[[DeployEvent], None] | None = None,
             force: bool = False) -> ServiceResult:
    """A new rollout to a retained release, which runs as it was made (its recorded spec).

    Only a release that went live (served all traffic once) is a rollback target: it gets
    all traffic once healthy. `force` accepts one that never did (an aborted canary), but
    rolls it out like a new release: today's strategy, steps and judge."""
    emit = on_event or (lambda ev: None)
    spec = project.service(service)
    t0 = time.monotonic()
    with project.locked(f"rollback {service}"):
        current = project.current_release(service)
        if current is None:
            raise KilnError(f"{service}: nothing is deployed, nothing to roll back")
        if to is None:
            to = previous_live(project.store, service, current.id)
            if to is None:
                raise KilnError(f"{service}: {current.id} has no previous live release")
        target = find_release(project.store, to)
        live = went_live(project.store, service)
        if target is None or target.service != service:
            where = ("not found in state" if target is None
                     else f"belongs to service {target.service}")
            raise NotFound(f"{service}: release {to} {where}; "
                           f"{_accepted(project, service, current.id)}")
        if target.id == current.id:
            raise KilnError(f"{service}: {to} is already the current release")
        if target.id not in live and not force:
            raise KilnError(
                f"{service}: {to} never went live (no rollout of it was promoted), so it is "
                f"no rollback target; {_accepted(project, service, current.id)}",
                hint=f"`kiln rollback {service} --to {to} --force` rolls it out like a new "
                     "release: with the spec's strategy and judge")
        _rollback_image(project, service, target)
        open_id = rollout_records.open_id(project.store, service)
        if open_id is not None:
            finish_standby(project, service, keep=target.id)
            if rollout_records.open_id(project.store, service) is not None:
                raise KilnError(f"{service}: a rollout is in progress; `kiln abort {service}` "
                                "rolls it back")
        project._sweep()
        start_router(project)
        # Like Argo's rollbackWindow: a known-good release skips the canary steps and gets
        # all traffic as soon as its instances are healthy (still health-gated). One that
        # never went live has earned no such trust: the spec's strategy and judge.
        strategy = "rollback" if target.id in live else None
        return roll_to(project, service, spec, target, current, emit, t0, strategy=strategy)


def _accepted(project: Context, service: str, current: str) -> str:
    """One clause listing the releases `kiln rollback --to` accepts (went live, image kept)."""
    have = []
    for rid in went_live(project.store, service):
        rel = find_release(project.store, rid)
        if rid == current or rel is None:
            continue
        try:
            project.platform.image(rel.image_digest)
        except NotFound:
            continue
        have.append(rid)
    return (f"releases it accepts: {', '.join(have)}" if have
            else "no other release that went live is retained")


def _rollback_image(project: Context, service: str, target: Release) -> Image:
    """The target's image, or why it cannot be rolled back to and what can."""
    try:  # ImageTampered (not caught here) when its files changed since sealing
        return project.image(target.image_digest, use=f"roll {service} back to {target.id}")
    except NotFound:
        pass
    have = []
    for rid in project.live_releases(service):
        try:
            rel = load_release(project.store, rid)
            project.image(rel.image_digest)
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
