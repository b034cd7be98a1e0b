"""Garbage collection: images of releases no longer retained, folders of dead instances.

Retention counts releases that were live (the target of a promoted rollout), newest first: an
aborted or rolled-back release never pushes a rollback target out. The current and the previous
live release are kept whatever `keep` says, and so is every release with instances or an open
rollout. An image is removed only when no retained release needs it. Then the platform's step
cache (local snapshots, podman's `-step` tags) loses what no remaining image and no unfinished
bake needs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from kiln.project import Project
from kiln.rollout.release_config import previous_live
from kiln.state.records import evidence as evidence_records
from kiln.state.records import images as image_records
from kiln.state.records import instances as instance_records
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records


@dataclass
class Retention:
    """Which releases of one service gc keeps, and why (for `gc --json` and the test)."""

    service: str
    live: list[str] = field(default_factory=list)
    """Releases that were live, most recently promoted first."""
    kept: dict[str, str] = field(default_factory=dict)
    """release -> why it is kept."""


def retention(project: Project, service: str, keep: int) -> Retention:
    store = project.store
    ret = Retention(service, live=project.live_releases(service))
    current = project.current_release(service)
    if current is not None:
        ret.kept[current.id] = "current"
        # The rollback target: the live release before the current one, never a release that
        # only ever was an aborted or rolled-back canary (rollback --to refuses those).
        previous = previous_live(store, service, current.id)
        if previous is not None:
            ret.kept.setdefault(previous, "previous (rollback target)")
    for rid in ret.live[:max(keep, 0)]:
        ret.kept.setdefault(rid, f"one of the last {keep} live")
    for rid in rollout_records.open_releases(store, service):
        ret.kept.setdefault(rid, "open rollout")
    for rid in instance_records.live_release_ids(store, service):
        ret.kept.setdefault(rid, "has instances")
    return ret


def collect(project: Project, keep: int = 3) -> dict[str, Any]:
    """Remove images no retained release needs, and the folders of stopped instances."""
    store = project.store
    with project.locked("gc"):
        # A blue-green standby whose delay has passed is disposed of here too.
        for name in project.spec.services:
            project.end_expired_standby(name)
        keep_digests: set[str] = set()
        kept: dict[str, dict[str, str]] = {}
        for service in release_records.services(store):
            ret = retention(project, service, keep)
            kept[ret.service] = ret.kept
            for rid in ret.kept:
                digest = release_records.image_digest(store, rid)
                if digest is not None:
                    keep_digests.add(digest)
        # Anything running (dev and test instances too) keeps its image.
        keep_digests.update(instance_records.live_image_digests(store))
        # The newest image of every name stays: it is the bake cache's fast path.
        keep_digests.update(image_records.newest_per_name(store))
        removed = project.platform.remove_images(keep_digests)
        # Then the step cache (local snapshots, podman's `-step` tags) nothing needs now.
        steps = project.platform.remove_build_cache()
        folders = []
        for iid in instance_records.ended_ids(store):
            folder = project.home / "instances" / iid
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folders.append(iid)
        # The judge's evidence (for `kiln judge replay`) of each service's last `keep` rollouts.
        evidence = evidence_records.drop_all_but(
            store, evidence_records.newest_rollouts(store, max(keep, 1)))
        store.event("gc", f"removed {len(removed)} image(s), {len(steps)} step image(s), "
                          f"{len(folders)} instance folder(s), the judge's evidence of "
                          f"{len(evidence)} rollout(s)",
                    data={"images": removed, "steps": steps, "kept": kept,
                          "evidence": evidence})
    return {"images": removed, "steps": steps, "instances": folders, "kept": kept,
            "evidence": evidence}
