"""Rows of `verified_keys`: the verification fast path's file keys (kiln.bake.manifest.Key),
one row per tree ('image:<digest>', 'layer:<diff id>'), bound to the manifest they were
checked against and to the boot they were recorded in: a row for another manifest, or from
before a reboot, is ignored (the tree is then fully re-hashed and the row recorded anew).

Why the boot: after a crash, a file's new bytes can be on disk under its old ctime (ext4's
ordered mode writes data before the journal commits the inode; `lazytime` keeps timestamps in
memory), and device numbers may differ after a reboot; one full check per boot covers both."""

from __future__ import annotations

import functools
import hashlib
import time

from kiln.errors import StateError
from kiln.state.store import Store


@functools.cache
def boot_id() -> str:
    """This boot's id (Linux); '' where there is none (keys then outlive reboots)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def load(store: Store, tree: str, manifest_blob: bytes) -> bytes | None:
    """The keys recorded for `tree` against exactly this manifest in this boot, or None."""
    row = store.one("SELECT manifest_sha256, boot_id, keys FROM verified_keys WHERE tree = ?",
                    (tree,))
    if row is None or row["manifest_sha256"] != hashlib.sha256(manifest_blob).hexdigest() \
            or row["boot_id"] != boot_id():
        return None
    return bytes(row["keys"])


def save(store: Store, tree: str, manifest_blob: bytes, keys: bytes) -> None:
    """Record the keys; a state that cannot be written now (busy past its timeout, read-only)
    only costs the next check a full re-hash, so that is not an error of the check."""
    try:
        with store.tx() as c:
            c.execute("INSERT OR REPLACE INTO verified_keys(tree, manifest_sha256, boot_id, keys, "
                      "recorded_at) VALUES (?,?,?,?,?)",
                      (tree, hashlib.sha256(manifest_blob).hexdigest(), boot_id(), keys,
                       time.time()))
    except StateError:
        pass


def forget(store: Store, trees: list[str]) -> None:
    if not trees:
        return
    marks = ",".join("?" * len(trees))
    with store.tx() as c:
        c.execute(f"DELETE FROM verified_keys WHERE tree IN ({marks})", tuple(trees))
