"""`kiln destroy`: stop every instance of the services, drop their routes, end open rollouts;
the router (and kiln's Prometheus) stop once no service instance is left."""

from __future__ import annotations

import time
from collections.abc import Sequence

from kiln.context import Context
from kiln.errors import StateError
from kiln.platforms.capabilities import ReleaseTerminator
from kiln.rollout.executor import instances_of
from kiln.rollout.release_config import find_release
from kiln.spec.models import ServiceSpec
from kiln.state.records import instances as instance_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.records import routes as route_records


def destroy(project: Context, services: Sequence[str] | None = None) -> list[str]:
    names = project._services(services)
    stopped: list[str] = []
    with project.locked("destroy " + " ".join(names)):
        project._sweep()  # also stops processes the state no longer records
        for name in names:
            spec = project.service(name)
            project.router.remove_service(name)
            for release_id in instance_records.live_release_ids(project.store, name):
                timeout = _stop_timeout_of(project, release_id, spec)
                insts = instances_of(project.store, release_id)
                compute = project.compute
                if isinstance(compute, ReleaseTerminator):
                    compute.terminate_release(release_id, insts, timeout)
                else:
                    for inst in insts:
                        compute.terminate(inst, timeout)
                stopped += [i.id for i in insts]
            with project.store.tx() as c:
                route_records.delete_service(c, name)
                rollout_records.end_open(c, name, time.time())
                c.event("service.destroyed", f"{name}: {len(stopped)} instance(s) stopped",
                        service=name)
        if instance_records.live_service_count(project.store) == 0:
            project.router.stop()
            project.scraping.stop()
        else:
            project.scraping.sync()
    return stopped


def _stop_timeout_of(project: Context, release_id: str, spec: ServiceSpec) -> float:
    """A release's instances get its own stop timeout (today's for a dev instance, or a
    record today's kiln cannot load: stopping must not fail)."""
    release = find_release(project.store, release_id)
    try:
        return spec.stop_timeout if release is None else release.spec.stop_timeout
    except StateError:
        return spec.stop_timeout
