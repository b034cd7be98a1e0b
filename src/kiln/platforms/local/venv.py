"""The image's own Python: find the base interpreter and make a venv that works from any path.

An image is built in a scratch folder and then moved to images/<digest>/root, and a cached step
snapshot is restored into another scratch folder; so the venv must not depend on where it was
created. A venv's `python` finds its prefix from the path it was started by (bin/python is a
symlink to the base interpreter, pyvenv.cfg sits beside bin/), so the interpreter itself is
relocatable. What is not, and what `make_relocatable` fixes after every step:

- console-script shebangs (`#!/abs/build/path/.venv/bin/python`) are replaced by a /bin/sh
  trampoline that execs the `python` beside the script (the form pip itself uses for long paths);
  the RECORD of the owning distribution is updated so `pip` still sees consistent hashes;
- `bin/activate` gets VIRTUAL_ENV computed from its own location; the csh/fish/PowerShell/nu
  variants are removed;
- pyvenv.cfg loses its informational `command =` line, which names the build folder.

Byte code: a .pyc embeds the absolute path of its source and, by default, an mtime; so after
every step `compile_tree` rewrites every pyc that is not kiln's own (unchecked-hash, path relative
to the image root). Only changed files are compiled again.

For the digest, `digest_override` hashes pyvenv.cfg without its machine-specific `home`,
`executable` and `command` lines and an absolute symlink in .venv/bin (python3.X -> the base
interpreter) by its base name only: the same inputs on another machine with the same Python
version give the same digest.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.bake.sandbox import BakeSandbox, contained
from kiln.errors import BakeError

BAKE_FORMAT = 1
"""Bumped when the way kiln lays out or normalises an image changes: invalidates every cache key."""

_BASE_RE = re.compile(r"^python(3\.\d+)?$")
_TRAMPOLINE = (
    "#!/bin/sh\n"
    "'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")\"/python \"$0\" \"$@\"\n"
    "' '''\n"
)
_SHEBANG_RE = re.compile(rb"^#!\s*(/\S*/bin/python[0-9.]*)[ \t]*\r?\n")
_LONG_SHEBANG_RE = re.compile(
    rb"^#!/bin/sh\r?\n'''exec' (/\S*/bin/python[0-9.]*) .*\r?\n' '''\r?\n")
# Quoted since CPython 3.11.4 (and 3.12); Debian 12's 3.11.2 writes the path bare.
_ACTIVATE_RE = re.compile(r"""^VIRTUAL_ENV=(?:(["']).*?\1|[^\s"'$]+)[ \t]*$""", re.MULTILINE)
_CFG_VOLATILE = ("home", "executable", "command")


@dataclass(frozen=True)
class Runtime:
    """A base interpreter an image's venv is made from."""

    executable: str
    version: str  # e.g. 3.11.7
    implementation: str  # e.g. cpython

    def definition(self, base: str) -> dict[str, Any]:
        """What the base contributes to every cache key (never the interpreter's path)."""
        return {"base": base, "python": self.version, "implementation": self.implementation,
                "format": BAKE_FORMAT}


def resolve_base(base: str) -> Runtime:
    """`python` -> the interpreter running kiln; `python3.X` -> that interpreter on PATH."""
    m = _BASE_RE.match(base)
    if not m:
        raise BakeError(f"base {base!r}: unknown base for the local platform",
                        hint="expected python or python3.X, e.g. python3.12")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if m.group(1) is None or m.group(1) == running:
        # not a capability probe: CPython's private `_base_executable` (the interpreter a venv
        # was made from) is absent on other implementations
        exe = getattr(sys, "_base_executable", None) or sys.executable
        return Runtime(exe, platform.python_version(), sys.implementation.name)
    return _probe(base)


@functools.lru_cache(maxsize=16)
def _probe(command: str) -> Runtime:
    found = shutil.which(command)
    if found is None:
        raise BakeError(f"base {command}: no {command} interpreter on PATH",
                        hint=f"install Python {command[6:]} or use base: python")
    # not a capability probe: the same `_base_executable` read, in the other interpreter
    code = ("import json, platform, sys; print(json.dumps([getattr(sys, '_base_executable', None)"
            " or sys.executable, platform.python_version(), sys.implementation.name]))")
    try:
        out = subprocess.run([found, "-c", code], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BakeError(f"base {command}: cannot run {found}: {exc}") from exc
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[0]
        raise BakeError(f"base {command}: {found} does not run ({why})",
                        hint=f"install Python {command[6:]} or use base: python")
    exe, version, impl = json.loads(out.stdout)
    return Runtime(str(exe), str(version), str(impl))


def create_venv(runtime: Runtime, venv: Path, env: dict[str, str], sandbox: BakeSandbox,
                timeout: float = 300) -> None:
    """`python -m venv` (with pip) at `venv`, in the bake sandbox, then make it relocatable."""
    try:
        out = sandbox.run([runtime.executable, "-m", "venv", str(venv)], env=env,
                          timeout=timeout)
    except BakeError as exc:
        raise BakeError(f"base: cannot create a venv with {runtime.executable}: {exc}") from exc
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-20:])
        raise BakeError(f"base: `{runtime.executable} -m venv` failed with exit code "
                        f"{out.returncode}\n{tail}")
    make_relocatable(venv)


_COMPILE = r"""
import importlib.util, marshal, os, py_compile, sys
root = sys.argv[1]
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
tag = sys.implementation.cache_tag
for dirpath, dirnames, filenames in os.walk(root):
    if "__pycache__" in dirnames:
        cache = os.path.join(dirpath, "__pycache__")
        for name in os.listdir(cache):
            stem, _, rest = name.partition(".")
            if rest != tag + ".pyc" or not os.path.exists(os.path.join(dirpath, stem + ".py")):
                os.unlink(os.path.join(cache, name))
        dirnames.remove("__pycache__")
    for name in filenames:
        if not name.endswith(".py"):
            continue
        src = os.path.join(dirpath, name)
        pyc = importlib.util.cache_from_source(src)
        try:
            with open(src, "rb") as fh:
                want = importlib.util.source_hash(fh.read())
            with open(pyc, "rb") as fh:
                head = fh.read(16)
            if head[4:8] == b"\x01\0\0\0" and head[8:16] == want:
                continue
        except OSError:
            pass
        try:
            if os.path.lexists(pyc):
                os.unlink(pyc)
            py_compile.compile(src, cfile=pyc, dfile=os.path.relpath(src, root), doraise=True,
                               invalidation_mode=mode)
        except Exception:
            pass
"""


def compile_tree(root: Path, sandbox: BakeSandbox, timeout: float = 600) -> None:
    """Byte-compile every .py under `root` that lacks kiln's own pyc; drop foreign/orphan pycs.

    kiln's pycs are unchecked-hash (no mtime; the image never changes after sealing, and the
    digest covers sources and pycs alike) with source paths relative to the image root, so they
    are identical on every machine and in every build folder. A pyc whose header carries another
    mode (pip's, the interpreter's) is rewritten: it may embed the absolute build path.
    """
    python = root / ".venv" / "bin" / "python"
    if not python.is_symlink() and not python.exists():
        return
    # The image's python is whatever the steps left there: it runs in the sandbox too.
    out = sandbox.run([str(python), "-I", "-S", "-B", "-c", _COMPILE, str(root)],
                      env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=timeout)
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise BakeError(f"cannot byte-compile the image: {why}")


def make_relocatable(venv: Path) -> None:
    """Rewrite what names the venv's current folder (see the module docstring). Idempotent.

    Runs as kiln, between sandboxed steps, on a tree the steps shaped: it touches only regular
    files whose folder resolves inside the image (`venv`'s parent), and what it writes belongs to
    that folder's owner (the step uid), so the next step can change it again."""
    bindir = venv / "bin"
    root = venv.parent
    if not bindir.is_dir() or not contained(root, bindir):
        return
    rewritten: set[Path] = set()
    for entry in sorted(bindir.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        if entry.name in ("activate.csh", "activate.fish", "Activate.ps1", "activate.nu"):
            entry.unlink()
            continue
        if entry.name == "activate":
            text = entry.read_text()
            fixed = _ACTIVATE_RE.sub(
                'VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"', text,
                count=1)
            if fixed != text:
                _replace(entry, fixed.encode(), stat.S_IMODE(entry.lstat().st_mode))
            continue
        with open(entry, "rb") as fh:
            head = fh.read(1024)
        m = _SHEBANG_RE.match(head) or _LONG_SHEBANG_RE.match(head)
        if not m or not m.group(1).startswith(os.fsencode(bindir)):
            continue
        body = entry.read_bytes()[m.end():]
        _replace(entry, _TRAMPOLINE.encode() + body, stat.S_IMODE(entry.lstat().st_mode))
        rewritten.add(entry)
    if rewritten:
        _fix_records(venv, rewritten)
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file() and not cfg.is_symlink() and contained(root, cfg):
        lines = cfg.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if ln.partition("=")[0].strip() != "command"]
        if kept != lines:
            _replace(cfg, "".join(kept).encode(), stat.S_IMODE(cfg.lstat().st_mode))


def _replace(path: Path, data: bytes, mode: int) -> None:
    """A new file at `path` (never written through: another tree may share the old inode),
    owned like its folder."""
    folder = path.parent.lstat()
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    if folder.st_uid != os.geteuid() and os.geteuid() == 0:
        os.lchown(path, folder.st_uid, folder.st_gid)


def _fix_records(venv: Path, rewritten: set[Path]) -> None:
    """Update hash and size of rewritten scripts in the RECORD files that list them."""
    for record in venv.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        if record.is_symlink() or not contained(venv.parent, record):
            continue
        site = record.parent.parent
        rows = list(csv.reader(io.StringIO(record.read_text())))
        changed = False
        for row in rows:
            if len(row) < 3:
                continue
            target = Path(os.path.normpath(site / row[0]))
            if target in rewritten:
                data = target.read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                row[1], row[2] = f"sha256={digest.decode()}", str(len(data))
                changed = True
        if changed:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            _replace(record, buf.getvalue().encode(), stat.S_IMODE(record.lstat().st_mode))


def digest_override(rel: str, st: os.stat_result, path: Path) -> bytes | None:
    """Hash machine-specific venv entries in a machine-independent form (see module doc)."""
    if rel == ".venv/pyvenv.cfg" and stat.S_ISREG(st.st_mode):
        lines = path.read_text().splitlines()
        kept = sorted(ln.strip() for ln in lines
                      if ln.partition("=")[0].strip() not in _CFG_VOLATILE and ln.strip())
        return ("pyvenv.cfg\0" + "\n".join(kept)).encode()
    if rel.startswith(".venv/bin/") and stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if os.path.isabs(target):
            return ("base-interpreter\0" + os.path.basename(target)).encode()
    return None
