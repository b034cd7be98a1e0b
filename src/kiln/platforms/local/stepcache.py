"""Garbage collection of the local builder's step cache (home/cache/<key>: the tree after each
step, which is what makes a rebake after an edit rerun only the steps from the edit on).

A snapshot is kept when it lies on the step chain of an image that is still in the store (so
rebuilding any kept image, or editing its last steps, stays fast) or when it is newer than the
newest image of its name (a bake that failed or is still running: its retry resumes there).
Everything else goes, row and folder; a folder shared by an `env`/`workdir` step and its parent
goes only with the last row naming it. The bake lock is taken so no bake restores a snapshot
while it is removed; if a bake holds it, nothing is removed this time.

Before a bake restores a snapshot it checks it against the content manifest recorded in its row
when it was made (`entry_problem`): a file dropped into an entry (a `sitecustomize.py`) would
otherwise be baked into the next image, whose new digest then includes it.
"""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path

from kiln.bake import manifest
from kiln.bake.imagestore import force_rmtree
from kiln.state.records import images as image_records
from kiln.state.records import steps as step_records
from kiln.state.store import Store


def entry_problem(store: Store, key: str, path: Path) -> str | None:
    """None when the snapshot at `path` is what the state recorded for step `key`; else how
    it differs ('was modified: sitecustomize.py: added')."""
    blob = step_records.manifest_of(store, key)
    if blob is None:
        return "has no content record (made by an older kiln)"
    try:
        recorded = manifest.Manifest.decode(blob)
    except ValueError as exc:
        return f"has an unreadable content record ({exc})"
    found = manifest.difference(path, recorded)
    return None if found is None else f"was modified: {found}"


def warn_on_stderr(message: str) -> None:
    sys.stderr.write(f"kiln: warning: {message}\n")


def _chains(store: Store) -> set[str]:
    """Every step key on the chain of an image in the store."""
    parent = step_records.parents(store)
    keep: set[str] = set()
    for image_key in image_records.keys(store):
        key: str | None = image_key
        while key is not None and key not in keep:
            keep.add(key)
            key = parent.get(key)
    return keep


def remove_unused(store: Store, home: Path) -> list[str]:
    """Remove snapshots no kept image and no unfinished bake needs; returns what was removed
    ('<image>: <step> (<key>)')."""
    lock = home / "tmp" / "bake.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a bake runs: its snapshots are in use
        try:
            return _remove(store, home)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove(store: Store, home: Path) -> list[str]:
    keep = _chains(store)
    newest = image_records.newest_time_per_name(store)
    gone = [r for r in step_records.all_oldest_first(store)
            if str(r["key"]) not in keep
            and float(r["created_at"]) <= newest.get(str(r["image_name"]), float("inf"))]
    if not gone:
        return []
    with store.tx() as c:
        for r in gone:
            step_records.delete(c, str(r["key"]))
    still = step_records.snapshot_paths(store)
    for snapshot in {str(r["snapshot"]) for r in gone} - still:
        force_rmtree(home / snapshot)
    return [f"{r['image_name']}: {r['description']} ({str(r['key'])[:12]})" for r in gone]
