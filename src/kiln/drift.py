"""`kiln drift`: what runs vs what the state says runs; tampered images; router disagreement."""

from __future__ import annotations

from typing import Any

from kiln.platforms.capabilities import (
    OrphanFinder,
    OwnDrift,
    RouterProcess,
    RouterSwitch,
    TamperCheck,
)
from kiln.project import Project
from kiln.readmodel import observe_service
from kiln.rollout.executor import load_release
from kiln.state.records import instances as instance_records
from kiln.state.records import routes as route_records


def detect(project: Project) -> list[dict[str, Any]]:
    """Each item: kind (dead-instance | missing-instances | tampered-instance | router |
    tampered-image | unknown-process | unknown-router | router-switch), service, detail. Reads what runs
    through kiln.readmodel (as `status` and `plan` do) and writes nothing."""
    items: list[dict[str, Any]] = []
    store = project.store
    router = project.router
    # The spec switched routers and the new one has not started: the old one serves, and its
    # routing is not the new one's to compare.
    instead = router.serving_instead() if isinstance(router, RouterSwitch) else None
    for name in project.spec.services:
        view = observe_service(project, name)
        routes = view.routes
        for seen in view.instances:
            inst = seen.instance
            compute = project.compute
            if not seen.alive:
                items.append({"kind": "dead-instance", "service": name,
                              "detail": f"{inst.id} ({inst.address}) is recorded as running "
                                        f"but its process is gone"})
            elif isinstance(compute, TamperCheck):  # a container vs its image
                problem = compute.tampered(inst,
                                           load_release(store, inst.release_id).image_digest)
                if problem:
                    items.append({"kind": "tampered-instance", "service": name,
                                  "detail": problem})
        replicas = project.service(name).replicas
        if (view.current is not None and view.resumable is None and view.alive < replicas
                and not any(not s.alive for s in view.of(view.current.id))):
            items.append({"kind": "missing-instances", "service": name,
                          "detail": f"{view.alive}/{replicas} instances of {view.current.id} "
                                    "alive (`kiln deploy` or `kiln serve` launches the missing "
                                    "ones from the same release)"})
        if routes and instead is None:
            try:
                served = router.verify(name)
            except Exception as exc:  # router down is drift too, reported not raised
                items.append({"kind": "router", "service": name,
                              "detail": f"router does not answer: {exc}"})
                served = None
            if served is not None:
                want = {k: v for k, v in routes.items() if v > 0}
                got = {k: v for k, v in served.items() if v > 0}
                if want != got:
                    items.append({"kind": "router", "service": name,
                                  "detail": f"router serves {got}, state says {want}"})
    compute = project.compute
    for name, pid, _start in compute.orphans() if isinstance(compute, OrphanFinder) else []:
        items.append({"kind": "unknown-process", "service": None,
                      "detail": f"process {pid} of instance {name} runs but the state does not "
                                "record it (the next `kiln deploy` or `kiln destroy` stops it)"})
    if instead is not None:
        items.append({"kind": "router-switch", "service": None,
                      "detail": f"the spec says router {project.spec.router}, but {instead} "
                                "serves the traffic (`kiln deploy` switches)"})
    if isinstance(router, RouterProcess) and router.is_running() and \
            not route_records.any_weighted(store):
        items.append({"kind": "unknown-router", "service": None,
                      "detail": "a router runs but the state records no routing "
                                "(`kiln destroy` stops it)"})
    platform = project.platform
    if isinstance(platform, OwnDrift):  # aws: AMIs of instances, missing ASGs
        items.extend(platform.drift())
    for digest in instance_records.live_image_digests(store):
        problem = project.platform.verify_image(digest)
        if problem:
            items.append({"kind": "tampered-image", "service": None, "detail": problem})
    return items
