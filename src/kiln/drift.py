"""`kiln drift`: what runs vs what the state says runs; tampered images; router disagreement."""

from __future__ import annotations

from typing import Any

from kiln.project import Project
from kiln.rollout.executor import instances_of, load_release


def detect(project: Project) -> list[dict[str, Any]]:
    """Each item: kind (dead-instance | tampered-instance | router | tampered-image |
    unknown-process | unknown-router), service, detail."""
    items: list[dict[str, Any]] = []
    store = project.store
    for name in project.spec.services:
        routes = {r["release_id"]: r["weight"]
                  for r in store.query("SELECT * FROM routes WHERE service = ?", (name,))}
        for release_id in routes:
            insts = instances_of(store, release_id)
            tampered = getattr(project.compute, "tampered", None)  # a container vs its image
            for inst, obs in zip(insts, project.compute.observe(insts), strict=True):
                if not obs.alive:
                    items.append({"kind": "dead-instance", "service": name,
                                  "detail": f"{inst.id} ({inst.address}) is recorded as running "
                                            f"but its process is gone"})
                elif tampered is not None:
                    problem = tampered(inst, load_release(store, release_id).image_digest)
                    if problem:
                        items.append({"kind": "tampered-instance", "service": name,
                                      "detail": problem})
        if routes:
            try:
                served = project.router.verify(name)
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
    orphans = getattr(project.compute, "orphans", None)
    for name, pid, _start in orphans() if orphans is not None else []:
        items.append({"kind": "unknown-process", "service": None,
                      "detail": f"process {pid} of instance {name} runs but the state does not "
                                "record it (the next `kiln deploy` or `kiln destroy` stops it)"})
    is_running = getattr(project.router, "is_running", None)
    if is_running is not None and is_running() and store.one(
            "SELECT 1 FROM routes WHERE weight > 0 LIMIT 1") is None:
        items.append({"kind": "unknown-router", "service": None,
                      "detail": "a router runs but the state records no routing "
                                "(`kiln destroy` stops it)"})
    own = getattr(project.platform, "drift", None)  # aws: AMIs of instances, missing ASGs
    if own is not None:
        items.extend(own())
    live = store.query(
        "SELECT DISTINCT r.image_digest FROM instances i JOIN releases r ON r.id = i.release_id "
        "WHERE i.state IN ('starting','running','draining')")
    for row in live:
        problem = project.platform.verify_image(row["image_digest"])
        if problem:
            items.append({"kind": "tampered-image", "service": None, "detail": problem})
    return items
