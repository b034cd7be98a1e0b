"""`kiln promote` / `kiln abort`: a signal to the open rollout, taken by whoever drives it (the
controller, a running deploy) or, when nobody does, driven here until it settles."""

from __future__ import annotations

import time
from collections.abc import Callable

from kiln.context import Context
from kiln.errors import KilnError, LockHeld
from kiln.state.records import rollouts as rollout_records
from kiln.usecases.results import DeployEvent, ServiceResult
from kiln.usecases.rollouts import reconcile, write_report
from kiln.usecases.routing import start_router


def signal(project: Context, service: str, signal: str) -> int:
    project.service(service)
    rid = rollout_records.open_id(project.store, service)
    if rid is None:
        raise KilnError(f"{service}: no rollout in progress")
    rollout_records.set_signal(project.store, rid, signal)
    return rid


def promote(project: Context, service: str, *, full: bool = False,
            on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
    """Let a paused canary go on. If no deploy drives it, drive it here until it settles."""
    return _drive_signal(project, service, "promote_full" if full else "promote", on_event)


def abort(project: Context, service: str,
          on_event: Callable[[DeployEvent], None] | None = None) -> ServiceResult:
    return _drive_signal(project, service, "abort", on_event)


def _drive_signal(project: Context, service: str, sig: str,
                  on_event: Callable[[DeployEvent], None] | None) -> ServiceResult:
    emit = on_event or (lambda ev: None)
    t0 = time.monotonic()
    rid = signal(project, service, sig)
    ctl = None if project.detach else project.controller()
    if project.detach or ctl is not None:
        # The controller drives the rollout: it takes the signal on its next pass.
        deadline = time.monotonic() + 10.0
        while ctl is not None and time.monotonic() < deadline:
            if rollout_records.pending_signal(project.store, rid) is None:
                break
            time.sleep(0.05)
        who = ctl.describe() if ctl is not None else "the controller"
        return ServiceResult(service, None, "signalled", f"{who} took {sig} for rollout "
                             f"#{rid}", rid, seconds=time.monotonic() - t0)
    try:
        with project.locked(f"{sig} {service}"):
            start_router(project)
            st = reconcile(
                project, service, rid,
                lambda s: emit(DeployEvent(service, "status", s.waiting or s.phase, status=s)))
    except LockHeld:
        # A running deploy owns the rollout; it picks the signal up on its next pass.
        words = {"promote": "kiln promote", "promote_full": "kiln promote --full",
                 "abort": "kiln abort"}[sig]
        return ServiceResult(service, rollout_records.to_release(project.store, rid),
                             "signalled", f"`{words}` handed to the deploy driving rollout "
                             f"#{rid}", rid)
    return ServiceResult(service, st.new, st.outcome or "failed", st.reason, rid,
                         write_report(project, service, rid), time.monotonic() - t0)
