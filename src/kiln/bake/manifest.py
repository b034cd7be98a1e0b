"""Content manifests: every entry of a tree with its BLAKE3 digest, recorded in the state when
the tree is made and checked before it is used.

A manifest lists each entry under a root by relative path (sorted as bytes): its kind, its
permission bits, and for a file its size and the BLAKE3 of its bytes, for a symlink its target.
The manifest is stored in the state (images.manifest, steps.manifest, layer_manifests), never
beside the tree, so rewriting it takes writing the state too.

`check` walks the whole tree every time (paths, kinds, modes, sizes, link targets) and re-hashes
every file, except (the fast path) a file whose lstat is exactly the `Key` recorded, also in the
state, when its content was last hashed and matched: same device, inode, size, mtime and
*ctime*. No system call sets a ctime (utimensat, `touch -r` set atime/mtime and move ctime to
now), so a matching key is the same inode, unchanged since it was hashed; only root can fool it
(clock change, raw block-device writes), and root can rewrite the state too.
docs/decisions/verified-content-fast-path.md. Files are hashed in parallel threads (blake3
releases the GIL).
"""

from __future__ import annotations

import fcntl
import gc
import json
import mmap
import os
import stat
import threading
import time
import zlib
from array import array
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import blake3

from kiln.errors import KilnError

FORMAT = 1
_BIG = 4 << 20  # files above this are hashed with blake3's own threads (mmap)
_CHUNK = 64  # files of one folder per worker task


def _tick_ns() -> int:
    """One tick of the coarse clock the kernel stamps ctimes with (how far it lags the fine
    clock), from its resolution; 100 ms where the clock cannot be asked."""
    try:
        res = time.clock_getres(5)  # CLOCK_REALTIME_COARSE (Linux; Python 3.11 has no name)
    except OSError:
        return 100_000_000
    return max(round(res * 1e9), 1_000_000)


_MARGIN_NS = 2 * _tick_ns()  # two ticks: the lag, and the tick the stamp was taken in

Key = tuple[int, int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a file whose content was hashed."""


class Entry(NamedTuple):
    """One entry of a tree (a tuple: a 10,000-file manifest decodes in milliseconds)."""

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


Known = Mapping[str, tuple[Key, Entry]]
"""Path -> (its key when last hashed, the recorded entry whose digest that hash matched)."""


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
            rows = data["entries"]
            if not all(type(r) is list and len(r) == 5 and type(r[0]) is str
                       and type(r[1]) is str and type(r[2]) is int and type(r[3]) is int
                       and type(r[4]) is str for r in rows):
                raise ValueError("an entry is not [path, kind, mode, size, digest]")
            return cls(tuple(map(Entry._make, rows)))
        except (zlib.error, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable manifest: {exc}") from exc


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a check decodes and walks (some 20,000 tuples
    for 10,000 files, none in a cycle): its collections scan the whole heap and cost a fifth
    of a fast check. Back on (if it was) when the check ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


MODE_ENV = "KILN_VERIFY"


def full_by_default() -> bool:
    """Whether launches re-hash every file: KILN_VERIFY=full (the fast path is `fast`, the
    default). An environment switch, not a flag: launches happen inside deploy, rollback, up,
    test and `kiln serve`'s heals, and the operator decides this for all of them at once."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("", "fast"):
        return False
    if mode == "full":
        return True
    raise KilnError(f"{MODE_ENV}={os.environ[MODE_ENV]!r}: expected 'full' or 'fast'",
                    hint=f"`{MODE_ENV}=full` re-reads every file at each launch; unset it for "
                         "the fast path")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unshared(fd: int) -> bool:
    """Whether no one has the file open for writing right now: a read lease is granted only
    then (taken and dropped at once). That rules out a writable shared mapping made earlier,
    the one way to change bytes without moving the ctime (a write to an mmap page that is
    already dirty and writable does not fault, so the kernel does not stamp it until
    writeback). Any writer from here on opens anew, and its write() or first page fault stamps
    the ctime. False also where leases are not allowed (not the file's owner, no CAP_LEASE;
    some filesystems): such a file gets no key and is re-read by every check."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _file(path: str) -> tuple[int, int, str, Key | None]:
    """(mode, size, BLAKE3 hex, key) of a regular file, from one open: fstat and the read see
    the same inode, and O_NOFOLLOW refuses a symlink swapped in since the listing. The key is
    taken before the read (a write during it moves the ctime, so the next check re-reads), and
    is None while the file is open for writing somewhere (`_unshared`) or when its ctime is
    too recent to be trusted (`trusted`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        since = time.time_ns()
        unshared = _unshared(fd)
        st = os.fstat(fd)
        keyed = unshared and trusted(st.st_ctime_ns, since)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is no longer a regular file")
        if st.st_size >= _BIG:  # blake3's own threads over a map of this same open file
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                h.update(mapped)
            return (stat.S_IMODE(st.st_mode), st.st_size, h.hexdigest(),
                    _key(st) if keyed else None)
        # One read of size + 1 (EOF in one call); a file that grew since the fstat, or a short
        # read, is read on to its end, so nothing past the old size escapes the hash.
        data = os.read(fd, st.st_size + 1)
        h = blake3.blake3(data)
        if len(data) != st.st_size:
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
        return stat.S_IMODE(st.st_mode), st.st_size, h.hexdigest(), _key(st) if keyed else None
    finally:
        os.close(fd)


def _files(files: list[tuple[str, str]], keys: dict[str, Key]) -> list[Entry]:
    out = []
    for rel, path in files:
        mode, size, digest, key = _file(path)
        out.append(Entry(rel, "f", mode, size, digest))
        if key is not None:
            keys[rel] = key
    return out


def build(root: Path, workers: int | None = None) -> Manifest:
    """The manifest of the tree under `root` as it is now (every file read and hashed)."""
    return _walk(root, workers)[0]


def scan(root: Path) -> tuple[Manifest, dict[str, Key]]:
    """`build`, and the keys of the files that may be trusted by key from now on (see
    `trusted`): what a bake records so that even the first launch may take the fast path."""
    found, keys, _ = _walk(root)
    return found, keys


def granule(ctime_ns: int) -> int:
    """The coarsest timestamp granularity `ctime_ns` may have been truncated to: the largest
    power of ten (up to 100 ms) that divides it, or 2 s for a whole second (1 s filesystems,
    and FAT's 2 s). A nanosecond filesystem's ctime is divisible by 10**k with odds 10**-k, so
    the guess errs only on the safe side (a longer wait before a key is trusted)."""
    if ctime_ns % 1_000_000_000 == 0:
        return 2_000_000_000
    g = 1
    while g < 100_000_000 and ctime_ns % (g * 10) == 0:
        g *= 10
    return g


def trusted(ctime_ns: int, since_ns: int) -> bool:
    """Whether a key whose file had `ctime_ns` when it was hashed may be trusted, when no one
    had the file open for writing at `since_ns` (the fine clock, just before its read lease).

    Any write from `since_ns` on is stamped with the coarse clock, which lags the fine one by
    at most a tick, truncated to the filesystem's granularity: its ctime is later than
    `since_ns - tick - granule`. A ctime at least two ticks and a granule older than
    `since_ns` can therefore never be stamped again ("racy" entries, as git calls the others;
    they are re-read by the next check, which records them)."""
    return trusted_from(ctime_ns) <= since_ns


def trusted_from(ctime_ns: int) -> int:
    """The first instant (fine clock, ns) from which a file with `ctime_ns` can be keyed."""
    return ctime_ns + _MARGIN_NS + granule(ctime_ns)


def _walk_known(root: Path, known: Known,
                workers: int | None = None) -> tuple[Manifest, dict[str, Key], int]:
    """`_walk` for a tree whose keys are known: the listing and the lstats in this thread
    (Python work under the GIL: threads only add switching), then the files whose key
    differs read and hashed in parallel threads."""
    found: list[Entry] = []
    keys: dict[str, Key] = {}
    todo: list[tuple[str, str]] = []  # (relative, absolute): to read
    stack = [(str(root), "")]
    while stack:
        directory, rel = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    found.append(Entry(sub, "l", stat.S_IMODE(st.st_mode), 0,
                                       os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append(Entry(sub, "d", stat.S_IMODE(st.st_mode)))
                    stack.append((entry.path, sub))
                elif entry.is_file(follow_symlinks=False):
                    was = known.get(sub)
                    if was is not None:
                        st = entry.stat(follow_symlinks=False)
                        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                        if key == was[0]:  # the same inode, unchanged since it was hashed
                            mode = stat.S_IMODE(st.st_mode)  # (size is in the key)
                            found.append(was[1] if was[1].mode == mode else
                                         Entry(sub, "f", mode, st.st_size, was[1].digest))
                            keys[sub] = key
                            continue
                    todo.append((sub, entry.path))
                else:
                    st = entry.stat(follow_symlinks=False)
                    found.append(Entry(sub, "o", stat.S_IMODE(st.st_mode)))
    if len(todo) <= _CHUNK:
        found.extend(_files(todo, keys))
    else:
        n = workers or min(8, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=n) as pool:
            parts = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
            mine = [dict[str, Key]() for _ in parts]
            for entries in pool.map(_files, parts, mine):  # the first OSError ends the walk
                found.extend(entries)
        for part in mine:
            keys.update(part)
    return Manifest(tuple(found)), keys, len(todo)


def _walk(root: Path, workers: int | None = None) -> tuple[Manifest, dict[str, Key], int]:
    """The manifest of the tree under `root` (in path order), each file's key, and how many
    files were read (all). Every directory is one task in a thread pool (its listing, and
    open/fstat/read/BLAKE3 of its files); the syscalls and the hashing release the GIL, so two
    cores are kept busy."""
    found: list[Entry] = []
    keys: dict[str, Key] = {}
    hashed = [0]
    lock = threading.Lock()
    pending: list[Future[None]] = []
    n = workers or min(8, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n) as pool:

        def visit(directory: str, rel: str) -> None:
            out: list[Entry] = []
            mine: dict[str, Key] = {}
            files: list[tuple[str, str]] = []  # (relative, absolute): to read
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
            out.extend(_files(files[:_CHUNK], mine))
            with lock:
                found.extend(out)
                keys.update(mine)
                hashed[0] += min(len(files), _CHUNK)

        def hash_some(files: list[tuple[str, str]]) -> None:
            mine: dict[str, Key] = {}
            out = _files(files, mine)
            with lock:
                found.extend(out)
                keys.update(mine)
                hashed[0] += len(files)

        pending.append(pool.submit(visit, str(root), ""))
        done = 0
        while True:
            with lock:
                if done == len(pending):
                    break
                fut = pending[done]
            fut.result()  # the first OSError of any task ends the walk
            done += 1
    found.sort(key=lambda e: os.fsencode(e.path))
    return Manifest(tuple(found)), keys, hashed[0]


@dataclass(frozen=True)
class Checked:
    """What `check` found."""

    problem: str | None
    """None when the tree is exactly the manifest; else its first difference in path order."""
    keys: dict[str, Key] = field(default_factory=dict)
    """When intact: the key of every file that may be trusted by key from now on."""
    hashed: int = 0
    """Files read and hashed (the others matched their recorded key)."""


def check(root: Path, recorded: Manifest, known: Known | None = None) -> Checked:
    """Compare the tree under `root` with `recorded`: the full walk, and a re-hash of every
    file whose key is not in `known` (None: of every file).

    The keys returned are those of the files that may be trusted by key from now on: not a
    file still open for writing somewhere (`_unshared`), nor one whose ctime is too recent to
    be told apart from a later write's (`trusted`); such a file is re-read by the next check,
    which records it."""
    try:
        now, keys, hashed = _walk(root) if known is None else _walk_known(root, known)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return Checked(f"cannot be read ({exc.strerror or exc}{where})")
    problem = compare(recorded, now)
    if problem is not None:
        return Checked(problem, {}, hashed)
    return Checked(None, keys, hashed)


def difference(root: Path, recorded: Manifest) -> str | None:
    """None when the tree under `root` is exactly `recorded` (every byte re-read); else the
    first difference (in path order) in a few words: 'app/main.py: content differs',
    'sitecustomize.py: added'."""
    return check(root, recorded).problem


def encode_keys(recorded: Manifest, keys: Mapping[str, Key]) -> bytes:
    """`keys` as 5 int64 per file of `recorded`, in its order (size -1: none), compressed:
    decoding 10,000 of them takes a millisecond, not the tens a JSON list would."""
    out = array("q")
    for e in recorded.entries:
        if e.kind == "f":
            out.extend(keys.get(e.path, (0, 0, -1, 0, 0)))
    return zlib.compress(out.tobytes(), 1)


def decode_keys(recorded: Manifest, blob: bytes) -> dict[str, tuple[Key, Entry]]:
    """What `encode_keys` wrote for `recorded`, with each file's recorded entry; {} when the
    blob does not fit it (ValueError never: a bad blob only costs a full check)."""
    try:
        flat = array("q")
        flat.frombytes(zlib.decompress(blob))
    except (zlib.error, ValueError):
        return {}
    files = [e for e in recorded.entries if e.kind == "f"]
    if len(flat) != 5 * len(files):
        return {}
    it = iter(flat.tolist())
    return {e.path: (key, e)
            for e, key in zip(files, zip(it, it, it, it, it, strict=False), strict=True)
            if key[2] >= 0}  # 5 ints a file: the length was checked above


def compare(recorded: Manifest, now: Manifest) -> str | None:
    """The first difference between two manifests in path order, or None (pure)."""
    want = {e.path: e for e in recorded.entries}
    have = {e.path: e for e in now.entries}
    problems: list[tuple[bytes, str]] = []
    for path in want.keys() - have.keys():
        problems.append((os.fsencode(path), f"{path}: removed"))
    for path, entry in have.items():
        old = want.get(path)
        if old is entry or old == entry:  # the fast path hands back the recorded entry
            continue
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
