"""The local image store: sealed trees under home/images/<hex>/ and their rows in `images`.

Layout of one image (`Image.ref` is the folder images/<hex>/): root/ (the read-only tree
instances run in) and
images/<hex>/manifest.json (name, digest, env, base, Python version, steps; for people: what
launches trust is the content manifest in the row, kiln.bake.manifest). A folder without a
row is garbage from a bake killed between its rename and its row; `remove_images` sweeps it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.bake import manifest
from kiln.errors import ImageTampered, NotFound
from kiln.platforms.base import Image
from kiln.state.records import images as image_records
from kiln.state.records import verified
from kiln.state.store import Store


@dataclass(frozen=True)
class ImageRecord:
    name: str
    digest: str
    created_at: float
    size: int
    ref: str


def hexdigest(digest: str) -> str:
    return digest.removeprefix("sha256:")


def image_dir(home: Path, digest: str) -> Path:
    return home / "images" / hexdigest(digest)


def _image(row: sqlite3.Row, name: str | None = None) -> Image:
    return Image(name=name or row["name"], digest=row["digest"], ref=row["ref"],
                 env=json.loads(row["env_json"]), workdir=row["workdir"])


def find_by_key(store: Store, key: str) -> sqlite3.Row | None:
    """The newest image whose last step has cache key `key` and whose tree still exists."""
    for row in image_records.by_key(store, key):
        if os.path.isdir(row["ref"]):
            return row
    return None


def record_image(store: Store, *, name: str, digest: str, ref: str, key: str,
                 env: Mapping[str, str], size: int, workdir: str = "",
                 manifest: bytes | None = None) -> Image:
    """Insert (or refresh) the row of a sealed image. Only called after its folder is in place.
    `manifest`: what launches verify it against (kiln.bake.manifest; podman: its layers)."""
    env_json = json.dumps(dict(env), sort_keys=True)
    with store.tx() as c:
        image_records.upsert(c, digest, name, ref, key, env_json, workdir, size, time.time(),
                             manifest)
        c.event("image.baked", f"baked image {name} {digest[:19]}", data={"digest": digest})
    return Image(name=name, digest=digest, ref=ref, env=dict(env), workdir=workdir)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def list_images(store: Store) -> list[ImageRecord]:
    """Every image in the store, newest first."""
    rows = image_records.all_newest_first(store)
    return [ImageRecord(r["name"], r["digest"], r["created_at"], r["size"], r["ref"])
            for r in rows]


def get_image(store: Store, digest: str) -> Image:
    """The image with this digest ('sha256:<hex>' or just the hex); NotFound if it is unknown."""
    full = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    row = image_records.row(store, full)
    if row is None:
        raise NotFound(f"image {digest}: not in the image store",
                       hint="run `kiln bake` to build it")
    return _image(row)


def remove_images(store: Store, home: Path, keep: set[str]) -> list[str]:
    """Delete every image (row and folder) whose digest is not in `keep`; returns their digests.

    Orphan folders (no row) are removed too. Folders are made writable first: sealed trees are
    read-only.
    """
    keep_hex = {hexdigest(d) for d in keep}
    removed: list[str] = []
    for digest in image_records.digests(store):
        if hexdigest(digest) not in keep_hex:
            removed.append(digest)
    with store.tx() as c:
        for digest in removed:
            image_records.delete(c, digest)
        if removed:
            c.event("image.removed", f"removed {len(removed)} image(s)", data={"digests": removed})
    verified.forget(store, [f"image:{d}" for d in removed])
    images = home / "images"
    if images.is_dir():
        for entry in sorted(images.iterdir()):
            if entry.name not in keep_hex:
                force_rmtree(entry)
    return removed


def make_writable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and not st.st_mode & stat.S_IWUSR:
                os.chmod(path, st.st_mode | stat.S_IWUSR)


def force_rmtree(path: Path) -> None:
    """rmtree that also removes read-only trees (sealed images, snapshots of them)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    try:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
        make_writable(path)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def seal_readonly(root: Path) -> None:
    """chmod a-w on every file and folder under `root` (and `root` itself), bottom-up."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in (*filenames, *dirnames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)
    os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) & ~0o222)


def verify_image(store: Store, digest: str) -> str | None:
    """Re-check a stored image against the state, every byte (`kiln drift`: an audit, off the
    launch path); a one-line problem if its files differ."""
    return integrity_problem(store, get_image(store, digest), full=True, record=False)


# ---------------------------------------------------------------- integrity at every use
#
# The authority is the state: the content manifest (kiln.bake.manifest) recorded in the image's
# row when it was sealed, never a file beside the image. Every check walks the whole tree and
# re-hashes every file except those whose (dev, inode, size, mtime, ctime) is the key the state
# recorded when that file last matched (the fast path; docs/decisions/verified-content-fast-path.md).
# An image sealed before manifests existed is re-hashed against its recorded digest once and
# then gets its manifest.


def integrity_problem(store: Store, image: Image, *, full: bool | None = None,
                      record: bool = True) -> str | None:
    """None when the image's tree is still exactly what the state recorded at bake, else one
    line naming the image and the first differing file. `full`: re-hash every file (None: as
    KILN_VERIFY says; the fast path by default). A check that passes records the keys of the
    files it may trust next time (a full one included) unless `record` is False: a read-only
    command (`plan`, `drift`) checks and writes nothing."""
    with manifest.gc_paused():
        return _integrity_problem(store, image, full, record)


def _integrity_problem(store: Store, image: Image, full: bool | None,
                       record: bool) -> str | None:
    from kiln.bake.hashing import tree_digest
    from kiln.platforms.local.venv import digest_override

    folder = Path(image.ref)
    root = folder / "root"
    label = f"image {image.name} {image.digest[:19]}"
    if not root.is_dir():
        return f"{label}: folder {root} is missing"
    row = image_records.manifest_row(store, image.digest)
    if row is None:
        return f"{label}: the state has no record of it (kiln did not bake it here)"
    blob = None if row["manifest"] is None else bytes(row["manifest"])
    if blob is not None:
        try:
            recorded = manifest.Manifest.decode(blob)
        except ValueError as exc:
            return f"{label}: its manifest in the state is unreadable ({exc})"
        found = check_tree(store, f"image:{image.digest}", root, recorded, blob, full=full,
                           record=record)
        return None if found is None else f"{label} was modified after baking: {found}"
    try:  # sealed before manifests: the digest in the state is the authority
        now = tree_digest(root, digest_override).digest
    except OSError as exc:
        return f"{label}: cannot be read ({exc})"
    if now != image.digest:
        return f"{label} was modified after baking: its files hash to {now[:19]}"
    if record:
        record_manifest(store, image.digest, manifest.build(root).encode())
    return None


def check_tree(store: Store, tree: str, root: Path, recorded: manifest.Manifest, blob: bytes,
               *, full: bool | None = None, record: bool = True) -> str | None:
    """`manifest.check` of `root` with the keys the state holds for `tree` (none when `full`),
    recording the keys it found when the tree is intact and they changed."""
    if full is None:
        full = manifest.full_by_default()
    saved = None if full else verified.load(store, tree, blob)
    known = manifest.decode_keys(recorded, saved) if saved is not None else {}
    checked = manifest.check(root, recorded, None if full else known)
    if checked.problem is not None:
        return checked.problem
    if record and checked.keys != {p: k for p, (k, _) in known.items()}:
        verified.save(store, tree, blob, manifest.encode_keys(recorded, checked.keys))
    return None


def record_keys(store: Store, digest: str, recorded: manifest.Manifest, blob: bytes,
                keys: dict[str, manifest.Key]) -> None:
    """Record the fast path's keys of an image's files, hashed against `recorded` (`blob`)."""
    verified.save(store, f"image:{digest}", blob, manifest.encode_keys(recorded, keys))


def record_manifest(store: Store, digest: str, blob: bytes) -> None:
    with store.tx() as c:
        image_records.set_manifest(c, digest, blob)


def ensure_intact(store: Store, image: Image, *, use: str) -> None:
    """Refuse (ImageTampered, plus an `image.tampered` event) an image whose files are not what
    was baked. `use` names what was about to happen (launch it, roll web back to web-r2...)."""
    problem = integrity_problem(store, image)
    if problem is None:
        return
    store.event("image.tampered", f"refused to {use}: {problem}",
                data={"digest": image.digest, "use": use})
    raise ImageTampered(f"{problem}; refused to {use}",
                        hint=f"`kiln bake --no-cache {image.name}` rebuilds it from its steps")
