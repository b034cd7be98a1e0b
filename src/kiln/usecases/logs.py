"""`kiln logs`: which instances' log files to show."""

from __future__ import annotations

from kiln.context import Context
from kiln.errors import NotFound
from kiln.platforms.capabilities import RemoteLogs
from kiln.platforms.instance_rows import from_row
from kiln.state.records import instances as instance_records
from kiln.usecases.results import LogSource

LIVE = ("starting", "running", "draining")


def logs(project: Context, service: str | None = None, instance: str | None = None,
         kind: str | None = None) -> list[LogSource]:
    """Logs of a service's instances: the running ones (service and dev instances) by
    default, else its most recent instance (a failed test's, say); `kind` picks service,
    dev or test instances (the newest stopped one when none runs); `instance` any one by
    id prefix."""
    name = project.only_service(service)
    rows = instance_records.of_service(project.store, name)
    if instance:
        rows = [r for r in rows if r["id"].startswith(instance)]
        if not rows:
            raise NotFound(f"{name}: no instance {instance!r}",
                           hint=f"`kiln status {name}` lists them")
    elif kind:
        rows = [r for r in rows if r["kind"] == kind]
        live = [r for r in rows if r["state"] in LIVE]
        rows = live or rows[:1]
        if not rows:
            raise NotFound(f"{name}: no {kind} instance has run")
    else:
        live = [r for r in rows if r["state"] in LIVE]
        rows = live or rows[:1]
    out = []
    compute = project.compute
    for r in rows:
        inst = from_row(r)
        if isinstance(compute, RemoteLogs):  # read from the instance: nothing fetched here
            out.append(LogSource(inst.id, str(r["kind"]), str(r["state"]),
                                 compute.saved_log(inst), inst if r["state"] in LIVE else None))
        else:
            out.append(LogSource(inst.id, str(r["kind"]), str(r["state"]),
                                 compute.log_path(inst)))
    return out
