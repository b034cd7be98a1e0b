"""Starting, driving and watching a rollout: here, or handed to `kiln serve`'s controller; its
judge, its report and the end of a blue-green standby."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kiln.context import Context
from kiln.errors import NotFound
from kiln.platforms.base import Instance, Release
from kiln.platforms.instance_rows import from_row
from kiln.rollout.decide import SETTLED, Status, start
from kiln.rollout.executor import Reconciler, instances_of
from kiln.spec.models import ServiceSpec
from kiln.state.records import events as event_records
from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.usecases.results import DeployEvent, ServiceResult, log_tail


def judge_for(project: Context, service: str, spec: ServiceSpec) -> Any:
    """The service's live judge (None when its rollouts are not judged)."""
    if spec.rollout.analysis is None:
        return None
    from kiln.analysis.live import make_judge

    metrics = project.metrics
    if metrics is None:
        return None
    warmup = None
    if spec.rollout.analysis.warmup > 0:
        from kiln.analysis.warmup import Warmup
        from kiln.state.records.warmup import instance_starts

        store = project.store
        warmup = Warmup(spec.rollout.analysis.warmup,
                        lambda releases: instance_starts(store, releases))
    from kiln.analysis.prometheus import MetricQuery, PrometheusQuery

    queries: MetricQuery | None = None
    if project.spec.prometheus is not None:
        queries = PrometheusQuery(project.spec.prometheus.url)
    elif project.scraping.wanted:  # kiln's own, started (and kept) like the router
        project.scraping.ensure()
        queries = project.scraping.queries()
    # The router's own request counters, for the cross-check with the source's counts.
    return make_judge(metrics, service, spec.rollout.analysis, project.router.request_counts,
                      warmup, queries)


def start_rollout(project: Context, service: str, spec: ServiceSpec, new: Release,
                  old: Release | None, strategy: str | None = None,
                  preview: bool = False) -> int:
    strategy = strategy or spec.rollout.strategy
    # Where the judge's evidence begins, persisted so a resumed rollout replays it all.
    judge = judge_for(project, service, spec) if old is not None else None
    info = judge.start_info() if judge is not None else None
    # How many instances is the release's own (its config digest covers replicas).
    status = start(strategy, new.id, old.id if old else None, new.spec.replicas, time.time(),
                   info, preview=preview)
    now = time.time()
    with project.store.tx() as c:
        rid = rollout_records.insert(c, service, status.old, status.new, strategy, status.phase,
                                     json.dumps(status.to_json()), now)
        message = (f"{strategy} {status.old} -> {status.new}" if status.old
                   else f"first release {status.new}")
        data: dict[str, Any] = {"rollout": rid, "judged": judge is not None}
        c.event("rollout.started", message, service=service, data=data)
    project.notify("rollout.started", message, service, data)
    return rid


def rollout_driver(project: Context, service: str, rollout_id: int) -> tuple[Reconciler, Any]:
    """The reconciler of one rollout and its live judge (None when unjudged): call
    `step()` per pass, then `record_judge()` once it settled."""
    spec = project.service(service)
    judge = judge_for(project, service, spec)
    load = None
    if spec.rollout.load is not None and spec.rollout.strategy == "canary" and judge is not None:
        from kiln.rollout.synthetic import StepLoad

        load = StepLoad(spec.rollout, spec.listen, tag=str(rollout_id))
    return (Reconciler(project.rollout_env(service, spec), service, spec, rollout_id,
                       judge=judge, load=load), judge)


def reconcile(project: Context, service: str, rollout_id: int,
              on_status: Callable[[Status], None]) -> Status:
    rec, judge = rollout_driver(project, service, rollout_id)
    try:
        return rec.run(on_status)
    finally:
        if judge is not None:
            record_judge(project, service, rollout_id, judge)


def record_judge(project: Context, service: str, rollout_id: int, judge: Any) -> None:
    """Save the judge's series (the report's charts), what it was given (for replay) and its
    cross-check of the counts."""
    from kiln.analysis.live import save_series

    save_series(project.home, rollout_id, judge)
    if judge.recording is not None and not judge.recording.empty:
        # What the judge was given, kept with the rollout for `kiln judge replay`.
        from kiln.state.records import evidence

        evidence.save(project.store, rollout_id, judge.recording.to_blob(), time.time())
    check = judge.crosscheck()
    if check is not None:
        check["rollout"] = rollout_id
        lost = ", ".join(f"{r}: {c['lost']} of {c['router']}"
                         for r, c in check["releases"].items() if c["lost"])
        project.store.event(
            "judge.crosscheck",
            f"access log and {check['counter']}'s request counters "
            + ("agree" if check["agree"] else f"DISAGREE: lines missing ({lost})"),
            service=service, data=check)
        if not check["agree"]:
            project.warn(f"{service}: the judge's access log is missing requests the "
                         f"router counted ({lost}): its verdict saw incomplete data")


def drive(project: Context, service: str, rollout_id: int, on_status: Callable[[Status], None]
          ) -> Status:
    """Drive the rollout here, or hand it to the controller and watch it settle."""
    ctl = project.controller()
    if ctl is None:
        return reconcile(project, service, rollout_id, on_status)
    from kiln.state.lock import lock_released

    project.store.event("rollout.handed_over", f"rollout #{rollout_id} handed to "
                        f"{ctl.describe()}", service=service)
    with lock_released(project.store):
        st = watch(project, rollout_id, on_status)
    if st is None:  # the controller went away: drive it here
        return reconcile(project, service, rollout_id, on_status)
    return st


def watch(project: Context, rollout_id: int, on_status: Callable[[Status], None],
          poll: float = 0.2) -> Status | None:
    """Follow a rollout someone else drives until it settles (None: the controller left)."""
    seen = None
    while True:
        raw = rollout_records.status_json(project.store, rollout_id)
        if raw is None:
            raise NotFound(f"rollout #{rollout_id} not found in state")
        st = Status.from_json(json.loads(raw))
        if raw != seen:
            seen = raw
            on_status(st)
        if st.phase in SETTLED:
            return st
        if project.controller() is None:
            return None
        time.sleep(poll)


def write_report(project: Context, service: str, rollout_id: int) -> str | None:
    from kiln.analysis.report import report_for_rollout

    path = report_for_rollout(project.store, project.home, service, rollout_id)
    return str(path) if path else None


def _standby(project: Context, service: str) -> tuple[Reconciler, Status] | None:
    """The service's rollout if it is in blue-green standby."""
    rid = rollout_records.open_id(project.store, service)
    if rid is None:
        return None
    spec = project.service(service)
    rec = Reconciler(project.rollout_env(service, spec), service, spec, rid)
    status = rec.load()
    return (rec, status) if status.phase == "standby" else None


def end_expired_standby(project: Context, service: str) -> None:
    """Dispose of a blue-green standby set whose scale_down_delay has passed."""
    found = _standby(project, service)
    if found is not None and time.time() >= found[1].standby_until:
        found[0].run(until=frozenset({"done"}), timeout=60.0)


def finish_standby(project: Context, service: str, keep: str | None) -> None:
    """A new rollout ends the previous one's blue-green standby now."""
    found = _standby(project, service)
    if found is None:
        return
    rec, status = found
    if status.old and status.old != keep:
        for inst in instances_of(project.store, status.old):
            project.compute.terminate(inst, rec.release(status.old).spec.stop_timeout)
    status.phase = "done"
    status.weights = {status.new: 100}
    rec.save(status, "standby")


def emit_log_tail(project: Context, name: str, inst: Instance,
                  emit: Callable[[DeployEvent], None], lines: int = 20) -> None:
    for line in log_tail(project.compute.log_path(inst), lines):
        emit(DeployEvent(name, "log", f"{inst.id} | {line}"))


def _emit_failed_instance_log(project: Context, name: str, release_id: str,
                              emit: Callable[[DeployEvent], None]) -> None:
    """A health gate failed: the log of an instance that died (else the newest) says why."""
    row = instance_records.telling_of_release(project.store, release_id)
    if row is not None:
        inst = from_row(row)
        how = event_records.instance_death(project.store, inst.id)
        state = f"{row['state']}: {how}" if how else row["state"]
        emit(DeployEvent(name, "log", f"log of {inst.id} ({state}), last lines:"))
        emit_log_tail(project, name, inst, emit)


def roll_to(project: Context, name: str, spec: ServiceSpec, new: Release,
            current: Release | None, emit: Callable[[DeployEvent], None], t0: float,
            strategy: str | None = None, preview: bool = False) -> ServiceResult:
    def on_status(st: Status) -> None:
        emit(DeployEvent(name, "status", st.waiting or st.phase, status=st))

    rid = start_rollout(project, name, spec, new, current, strategy, preview)
    how = strategy or spec.rollout.strategy
    emit(DeployEvent(name, "release",
                     f"{how} {current.id} -> {new.id}" if current else
                     f"first release {new.id}: live once healthy"))
    if project.detach:
        return ServiceResult(name, new.id, "started", f"rollout #{rid} started", rid,
                             seconds=time.monotonic() - t0)
    st = drive(project, name, rid, on_status)
    if st.outcome == "failed":
        _emit_failed_instance_log(project, name, new.id, emit)
    report = write_report(project, name, rid)
    emit(DeployEvent(name, "settled", st.reason or st.phase, status=st))
    return ServiceResult(name, new.id, st.outcome or "failed", st.reason, rid, report,
                         time.monotonic() - t0)
