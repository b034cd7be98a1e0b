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
import os
import stat
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

FORMAT = 1
_BIG = 4 << 20  # files above this are hashed with blake3's own threads (mmap)
_BATCH_BYTES = 8 << 20  # one worker task: files summing to about this many bytes


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


def scan(root: Path) -> list[tuple[Entry, str]]:
    """Every entry under `root` with its absolute path, sorted by relative path; files carry no
    digest yet (`hash_files` fills them in)."""
    out: list[tuple[Entry, str]] = []

    def walk(directory: str, rel: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            kind = _kind(st.st_mode)
            target = os.readlink(entry.path) if kind == "l" else ""
            out.append((Entry(sub, kind, stat.S_IMODE(st.st_mode),
                              st.st_size if kind == "f" else 0, target), entry.path))
            if kind == "d":
                walk(entry.path, sub)

    walk(str(root), "")
    return out


def hash_file(path: str, size: int) -> str:
    if size >= _BIG:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        return h.hexdigest()
    with open(path, "rb", buffering=0) as fh:
        return blake3.blake3(fh.read()).hexdigest()


def _batches(items: Sequence[tuple[str, int]]) -> Iterable[list[tuple[int, str, int]]]:
    batch: list[tuple[int, str, int]] = []
    total = 0
    for i, (path, size) in enumerate(items):
        batch.append((i, path, size))
        total += size
        if total >= _BATCH_BYTES or len(batch) >= 256:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def hash_files(items: Sequence[tuple[str, int]], workers: int | None = None) -> list[str]:
    """BLAKE3 hex of each (path, size), in parallel threads; OSError if one cannot be read."""
    out = [""] * len(items)

    def run(batch: list[tuple[int, str, int]]) -> None:
        for i, path, size in batch:
            out[i] = hash_file(path, size)

    n = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n) as pool:
        for fut in [pool.submit(run, b) for b in _batches(items)]:
            fut.result()
    return out


def build(root: Path) -> Manifest:
    """The manifest of the tree under `root` as it is now."""
    scanned = scan(root)
    files = [(i, p) for i, (e, p) in enumerate(scanned) if e.kind == "f"]
    digests = hash_files([(p, scanned[i][0].size) for i, p in files])
    entries = [e for e, _ in scanned]
    for (i, _), digest in zip(files, digests, strict=True):
        e = entries[i]
        entries[i] = Entry(e.path, e.kind, e.mode, e.size, digest)
    return Manifest(tuple(entries))


def difference(root: Path, recorded: Manifest) -> str | None:
    """None when the tree under `root` is exactly `recorded`; else the first difference (in
    path order) in a few words: 'app/main.py: content differs', 'sitecustomize.py: added'.

    Structure first (one scandir walk), then the content of every file in parallel."""
    try:
        scanned = scan(root)
    except OSError as exc:
        return f"{root} cannot be read ({exc.strerror or exc})"
    want = {e.path: e for e in recorded.entries}
    have = {e.path: (e, p) for e, p in scanned}
    problems: list[tuple[bytes, str]] = []
    for path in want.keys() - have.keys():
        problems.append((os.fsencode(path), f"{path}: removed"))
    for path in have.keys() - want.keys():
        problems.append((os.fsencode(path), f"{path}: added"))
    to_hash: list[tuple[str, str, int]] = []  # (rel, abs, size)
    for path, (entry, abspath) in have.items():
        old = want.get(path)
        if old is None:
            continue
        if old.shape() != entry.shape():
            problems.append((os.fsencode(path), f"{path}: {_what_changed(old, entry)}"))
        elif entry.kind == "f":
            to_hash.append((path, abspath, entry.size))
    if problems:  # the first structural difference is enough: no need to read content
        return min(problems)[1]
    try:
        digests = hash_files([(a, s) for _, a, s in to_hash])
    except OSError as exc:
        return f"a file cannot be read ({exc.strerror or exc}: {exc.filename})"
    bad = sorted(os.fsencode(rel) for (rel, _, _), d in zip(to_hash, digests, strict=True)
                 if d != want[rel].digest)
    return f"{os.fsdecode(bad[0])}: content differs" if bad else None


def _what_changed(old: Entry, new: Entry) -> str:
    if old.kind != new.kind:
        names = {"d": "folder", "f": "file", "l": "symlink", "o": "special file"}
        return f"was a {names[old.kind]}, now a {names[new.kind]}"
    if old.kind == "l":
        return f"symlink now points to {new.digest!r}, not {old.digest!r}"
    if old.mode & ~0o222 != new.mode & ~0o222:
        return f"mode {new.mode:o}, not {old.mode:o}"
    return f"size {new.size}, not {old.size}"
