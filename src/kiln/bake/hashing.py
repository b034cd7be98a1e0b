"""Content hashes for bakes: the Merkle digest of an image tree and the cache key of a step.

Both hash only what a user can observe in an image: relative paths, entry type, the exec bit,
file contents and symlink targets. Never mtimes, owners, inode numbers or the order a directory
listing happens to return, so the same inputs give the same digest on any machine.

Why only the exec bit (like git) and not the full mode: write bits are stripped at sealing, and
read bits follow the umask of whoever checked the sources out; neither is an input worth a new
image.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Override = Callable[[str, os.stat_result, Path], bytes | None]
"""(relative posix path, lstat, absolute path) -> bytes to hash instead of the real content."""

_CHUNK = 1 << 20


def file_hash(path: Path) -> bytes:
    h = hashlib.sha256(b"blob\0")
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def _entry_kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "l"
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISREG(st.st_mode):
        return "x" if st.st_mode & 0o100 else "f"
    return "o"  # fifo, socket, device: recorded by type only


@dataclass
class TreeHash:
    digest: str
    """'sha256:<hex>' of the root tree."""
    size: int
    """Total bytes of regular files."""
    files: int


def tree_digest(root: Path, override: Override | None = None) -> TreeHash:
    """Merkle hash of the tree under `root` (the root itself is not named)."""
    totals = [0, 0]

    def walk(directory: Path, rel: str) -> bytes:
        h = hashlib.sha256(b"tree\0")
        with os.scandir(directory) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            path = directory / name
            sub = f"{rel}/{name}" if rel else name
            st = path.lstat()
            kind = _entry_kind(st)
            custom = override(sub, st, path) if override else None
            if custom is not None:
                child = hashlib.sha256(b"norm\0" + custom).digest()
            elif kind == "d":
                child = walk(path, sub)
            elif kind in ("f", "x"):
                child = file_hash(path)
                totals[0] += st.st_size
                totals[1] += 1
            elif kind == "l":
                child = hashlib.sha256(b"link\0" + os.fsencode(os.readlink(path))).digest()
            else:
                child = b""
            h.update(os.fsencode(name) + b"\0" + kind.encode() + b"\0" + child)
        return h.digest()

    top = walk(root, "")
    return TreeHash("sha256:" + top.hex(), totals[0], totals[1])


def iter_files(source: Path, skip: Callable[[str], bool]) -> Iterator[tuple[str, Path]]:
    """(relative posix path, absolute path) of every entry under `source`, sorted, dirs first.

    `skip(name)` prunes an entry (and everything below it) by its base name.
    """
    def walk(directory: Path, rel: str) -> Iterator[tuple[str, Path]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            if skip(entry.name):
                continue
            sub = f"{rel}/{entry.name}" if rel else entry.name
            path = Path(entry.path)
            yield sub, path
            if entry.is_dir(follow_symlinks=False):
                yield from walk(path, sub)

    yield from walk(source, "")


def content_hash(source: Path, skip: Callable[[str], bool]) -> str:
    """Hash of a copy step's input: a file, or a folder's relative paths, kinds and contents."""
    h = hashlib.sha256()
    st = source.lstat()
    if not stat.S_ISDIR(st.st_mode):
        entries: Iterator[tuple[str, Path]] = iter([("", source)])
    else:
        entries = iter_files(source, skip)
    for rel, path in entries:
        st = path.lstat()
        kind = _entry_kind(st)
        if kind in ("f", "x"):
            body = file_hash(path)
        elif kind == "l":
            body = os.fsencode(os.readlink(path))
        else:
            body = b""
        h.update(os.fsencode(rel) + b"\0" + kind.encode() + b"\0" + body + b"\0")
    return h.hexdigest()


def step_key(parent: str, base: dict[str, Any], step: dict[str, Any], inputs: str = "") -> str:
    """Cache key of a step: its parent's key, the base, its definition and its inputs' hash."""
    payload = json.dumps(
        {"parent": parent, "base": base, "step": step, "inputs": inputs},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()
