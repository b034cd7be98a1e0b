"""Garbage collection: images of releases no longer retained, folders of dead instances."""

from __future__ import annotations

import shutil
from typing import Any

from kiln.project import Project


def collect(project: Project, keep: int = 3) -> dict[str, Any]:
    """Keep the last `keep` releases of every service (and anything with live instances)."""
    from kiln.bake.imagestore import remove_images

    store = project.store
    with project.locked("gc"):
        # A blue-green standby whose delay has passed is disposed of here too.
        for name in project.spec.services:
            project.end_expired_standby(name)
        keep_digests: set[str] = set()
        for row in store.query("SELECT DISTINCT service FROM releases"):
            for rel in store.query("SELECT image_digest FROM releases WHERE service = ? "
                                   "ORDER BY number DESC LIMIT ?", (row["service"], keep)):
                keep_digests.add(rel["image_digest"])
        for row in store.query(
                "SELECT DISTINCT r.image_digest FROM instances i JOIN releases r "
                "ON r.id = i.release_id WHERE i.state IN ('starting','running','draining')"):
            keep_digests.add(row["image_digest"])
        # The newest image of every name stays: it is the bake cache's fast path.
        for row in store.query("SELECT name, digest FROM images i WHERE created_at = "
                               "(SELECT MAX(created_at) FROM images WHERE name = i.name)"):
            keep_digests.add(row["digest"])
        removed = remove_images(store, project.home, keep_digests)
        folders = []
        for row in store.query("SELECT id FROM instances WHERE state IN ('stopped','dead')"):
            folder = project.home / "instances" / row["id"]
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folders.append(row["id"])
        store.event("gc", f"removed {len(removed)} image(s), {len(folders)} instance folder(s)",
                    data={"images": removed})
    return {"images": removed, "instances": folders}
