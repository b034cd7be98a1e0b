"""The local image store: sealed trees under home/images/<hex>/ and their rows in `images`.

Layout of one image (`Image.ref` is the folder images/<hex>/): root/ (the read-only tree
instances run in) and
images/<hex>/manifest.json (name, digest, env, base, Python version, steps). A folder without a
row is garbage from a bake killed between its rename and its row; `remove_images` sweeps it.
"""

from __future__ import annotations

import contextlib
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

from kiln.errors import ImageTampered, NotFound
from kiln.platforms.base import Image
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
    for row in store.query("SELECT * FROM images WHERE key = ? ORDER BY created_at DESC", (key,)):
        if os.path.isdir(row["ref"]):
            return row
    return None


def record_image(store: Store, *, name: str, digest: str, ref: str, key: str,
                 env: Mapping[str, str], size: int, workdir: str = "") -> Image:
    """Insert (or refresh) the row of a sealed image. Only called after its folder is in place."""
    env_json = json.dumps(dict(env), sort_keys=True)
    with store.tx() as c:
        c.execute(
            "INSERT INTO images(digest, name, ref, key, env_json, workdir, size, created_at) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(digest) DO UPDATE SET "
            "name = excluded.name, ref = excluded.ref, key = excluded.key, "
            "env_json = excluded.env_json, workdir = excluded.workdir, size = excluded.size, "
            "created_at = excluded.created_at",  # the newest bake of a name is the cache's
            (digest, name, ref, key, env_json, workdir, size, time.time()),
        )
        c.event("image.baked", f"baked image {name} {digest[:19]}", data={"digest": digest})
    return Image(name=name, digest=digest, ref=ref, env=dict(env), workdir=workdir)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def list_images(store: Store) -> list[ImageRecord]:
    """Every image in the store, newest first."""
    rows = store.query("SELECT * FROM images ORDER BY created_at DESC, name")
    return [ImageRecord(r["name"], r["digest"], r["created_at"], r["size"], r["ref"])
            for r in rows]


def get_image(store: Store, digest: str) -> Image:
    """The image with this digest ('sha256:<hex>' or just the hex); NotFound if it is unknown."""
    full = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    row = store.one("SELECT * FROM images WHERE digest = ?", (full,))
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
    for row in store.query("SELECT digest FROM images"):
        if hexdigest(row["digest"]) not in keep_hex:
            removed.append(row["digest"])
    with store.tx() as c:
        for digest in removed:
            c.execute("DELETE FROM images WHERE digest = ?", (digest,))
        if removed:
            c.event("image.removed", f"removed {len(removed)} image(s)", data={"digests": removed})
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
    """Re-hash a sealed image; a one-line problem if its tree no longer matches its digest."""
    return integrity_problem(get_image(store, digest), full=True)


# ---------------------------------------------------------------- integrity at every use
#
# Re-hashing an image before each use costs a read of every byte (a venv: tens of MB). The
# fast path compares every entry's lstat against what it was right after sealing: inode, size,
# mode, mtime and ctime (which no user can set back without changing the clock). Any difference
# (a rewritten, chmod-ed, added or removed file, a copied or restored store) means a full
# re-hash against the digest; a tree that still hashes right gets a fresh record.

SEAL_FILE = "seal.json"


def _stats(root: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in (".", *dirnames, *filenames):
            path = os.path.join(dirpath, name) if name != "." else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            out[rel] = [st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns]
    return out


def write_seal(folder: Path) -> None:
    """Record the sealed tree's metadata (call once the tree is read-only and in place)."""
    tmp = folder / (SEAL_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "entries": _stats(folder / "root")}))
    os.replace(tmp, folder / SEAL_FILE)


def _seal_matches(folder: Path) -> bool:
    try:
        recorded = json.loads((folder / SEAL_FILE).read_text())
        return bool(recorded.get("format") == 1
                    and recorded.get("entries") == _stats(folder / "root"))
    except (OSError, ValueError, AttributeError):
        return False


def integrity_problem(image: Image, *, full: bool = False) -> str | None:
    """None when the image's tree still matches its digest, else one line saying how not.
    `full` skips the metadata fast path and always re-hashes."""
    from kiln.bake.hashing import tree_digest
    from kiln.bake.venv import digest_override

    folder = Path(image.ref)
    root = folder / "root"
    label = f"image {image.name} {image.digest[:19]}"
    if not root.is_dir():
        return f"{label}: folder {root} is missing"
    if not full and _seal_matches(folder):
        return None
    try:
        now = tree_digest(root, digest_override).digest
    except OSError as exc:
        return f"{label}: cannot be read ({exc})"
    if now != image.digest:
        return f"{label}: its files now hash to {now[:19]} (modified after sealing)"
    if os.access(folder, os.W_OK):
        with contextlib.suppress(OSError):
            write_seal(folder)
    return None


def ensure_intact(image: Image, store: Store | None, *, use: str) -> None:
    """Refuse (ImageTampered, plus an `image.tampered` event) an image whose tree no longer
    matches its digest. `use` names what was about to happen (launch, rollback, test...)."""
    problem = integrity_problem(image)
    if problem is None:
        return
    if store is not None:
        store.event("image.tampered", f"refused to {use}: {problem}",
                    data={"digest": image.digest, "use": use})
    raise ImageTampered(f"{problem}; refused to {use}",
                        hint="`kiln bake` rebuilds it from its steps")
