"""Content manifests: every entry of a tree with its BLAKE3 digest, recorded in the state when
the tree is made and checked, byte for byte, before it is used.

A manifest lists each entry under a root by relative path (sorted as bytes): its kind, its
permission bits, and for a file its size and the BLAKE3 of its bytes, for a symlink its target.
No mtimes, ctimes or inode numbers: those are what an attacker restores (`touch -r`), so the check
reads the content every time. Files are hashed in parallel threads: blake3 releases the GIL, so a
200 MB tree verifies in a fraction of a second on two cores (bench/verify_image.py).

The manifest is stored in the state (images.manifest, steps.manifest, layer_manifests), never
beside the tree, so rewriting it takes writing the state too.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

FORMAT = 1
_BIG = 4 << 20  # files above this are hashed with blake3's own threads (mmap)
_CHUNK = 64  # files of one folder per worker task


@dataclass(frozen=True)
class Entry:
    path: str
    """Relative posix path ('' is never listed: the root itself)."""
    kind: str
    """d (folder), f (file), l (symlink), o (other: fifo, socket, device, whiteout)."""
    mode: int
    """Permission bits (S_IMODE), setuid/setgid/sticky included."""
    size: int = 0
    digest: str = ""
    """Files: BLAKE3 hex of the content; symlinks: the target; else ''."""

    def shape(self) -> tuple[str, int, int, str]:
        """What is compared before content. Write bits are left out: sealing strips them and
        the owner may add them back (to delete an image) without changing what runs."""
        return (self.kind, self.mode & ~0o222, self.size, self.digest if self.kind == "l" else "")


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "f")

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "f")

    def encode(self) -> bytes:
        rows = [[e.path, e.kind, e.mode, e.size, e.digest] for e in self.entries]
        return zlib.compress(json.dumps({"format": FORMAT, "entries": rows},
                                        separators=(",", ":")).encode(), 6)

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        """ValueError when the blob is not a manifest this kiln can read."""
        try:
            data = json.loads(zlib.decompress(blob))
            if data["format"] != FORMAT:
                raise ValueError(f"manifest format {data['format']!r}, expected {FORMAT}")
            return cls(tuple(Entry(str(p), str(k), int(m), int(s), str(d))
                             for p, k, m, s, d in data["entries"]))
        except (zlib.error, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable manifest: {exc}") from exc


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _file(path: str) -> tuple[int, int, str]:
    """(mode, size, BLAKE3 hex) of a regular file, from one open: fstat and the read see the
    same inode, and O_NOFOLLOW refuses a symlink swapped in since the listing."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is no longer a regular file")
        if st.st_size >= _BIG:  # blake3's own threads over a map of this same open file
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                h.update(mapped)
            return stat.S_IMODE(st.st_mode), st.st_size, h.hexdigest()
        # One read of size + 1 (EOF in one call); a file that grew since the fstat, or a short
        # read, is read on to its end, so nothing past the old size escapes the hash.
        data = os.read(fd, st.st_size + 1)
        h = blake3.blake3(data)
        if len(data) != st.st_size:
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
        return stat.S_IMODE(st.st_mode), st.st_size, h.hexdigest()
    finally:
        os.close(fd)


def _files(files: list[tuple[str, str]]) -> list[Entry]:
    out = []
    for rel, path in files:
        mode, size, digest = _file(path)
        out.append(Entry(rel, "f", mode, size, digest))
    return out


def build(root: Path, workers: int | None = None) -> Manifest:
    """The manifest of the tree under `root` as it is now.

    Every directory is one task in a thread pool (its listing, and open/fstat/read/BLAKE3 of its
    files); the syscalls and the hashing release the GIL, so two cores are kept busy."""
    found: list[Entry] = []
    lock = threading.Lock()
    pending: list[Future[None]] = []
    n = workers or min(8, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n) as pool:

        def visit(directory: str, rel: str) -> None:
            out: list[Entry] = []
            files: list[tuple[str, str]] = []  # (relative, absolute)
            with os.scandir(directory) as it:
                entries = list(it)
            for entry in entries:
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    out.append(Entry(sub, "l", stat.S_IMODE(st.st_mode), 0,
                                     os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out.append(Entry(sub, "d", stat.S_IMODE(st.st_mode)))
                    with lock:
                        pending.append(pool.submit(visit, entry.path, sub))
                elif entry.is_file(follow_symlinks=False):
                    files.append((sub, entry.path))
                else:
                    st = entry.stat(follow_symlinks=False)
                    out.append(Entry(sub, "o", stat.S_IMODE(st.st_mode)))
            with lock:  # a big folder's files are split between the workers
                for i in range(_CHUNK, len(files), _CHUNK):
                    pending.append(pool.submit(hash_some, files[i:i + _CHUNK]))
            out.extend(_files(files[:_CHUNK]))
            with lock:
                found.extend(out)

        def hash_some(files: list[tuple[str, str]]) -> None:
            out = _files(files)
            with lock:
                found.extend(out)

        pending.append(pool.submit(visit, str(root), ""))
        done = 0
        while True:
            with lock:
                if done == len(pending):
                    break
                fut = pending[done]
            fut.result()  # the first OSError of any task ends the walk
            done += 1
    return Manifest(tuple(sorted(found, key=lambda e: os.fsencode(e.path))))


def difference(root: Path, recorded: Manifest) -> str | None:
    """None when the tree under `root` is exactly `recorded`; else the first difference (in
    path order) in a few words: 'app/main.py: content differs', 'sitecustomize.py: added'."""
    try:
        now = build(root)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return f"cannot be read ({exc.strerror or exc}{where})"
    return compare(recorded, now)


def compare(recorded: Manifest, now: Manifest) -> str | None:
    """The first difference between two manifests in path order, or None (pure)."""
    want = {e.path: e for e in recorded.entries}
    have = {e.path: e for e in now.entries}
    problems: list[tuple[bytes, str]] = []
    for path in want.keys() - have.keys():
        problems.append((os.fsencode(path), f"{path}: removed"))
    for path, entry in have.items():
        old = want.get(path)
        if old is None:
            problems.append((os.fsencode(path), f"{path}: added"))
        elif old.shape() != entry.shape():
            problems.append((os.fsencode(path), f"{path}: {_what_changed(old, entry)}"))
        elif entry.kind == "f" and entry.digest != old.digest:
            problems.append((os.fsencode(path), f"{path}: content differs"))
    return min(problems)[1] if problems else None


def _what_changed(old: Entry, new: Entry) -> str:
    if old.kind != new.kind:
        names = {"d": "folder", "f": "file", "l": "symlink", "o": "special file"}
        return f"was a {names[old.kind]}, now a {names[new.kind]}"
    if old.kind == "l":
        return f"symlink now points to {new.digest!r}, not {old.digest!r}"
    if old.mode & ~0o222 != new.mode & ~0o222:
        return f"mode {new.mode:o}, not {old.mode:o}"
    return f"size {new.size}, not {old.size}"
