"""kiln.yaml as `kiln serve` sees it: reloaded when the file changes, refused when invalid.

A pass stats the file (cheap); only when its identity (inode, size, mtime) moved is it read and
hashed, and only when the content digest moved is it parsed. A rollout the controller is about
to start driving forces a read (`check(force=True)`): an edit within the file system's mtime
granularity is still seen. An invalid file is refused once per content (one line) and the last
good spec stays in force; a change of platform or router is refused too (the controller's
platform was built for the old one: restart `kiln serve`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError, SpecError
from kiln.spec.loader import load_spec
from kiln.spec.models import Spec


def file_digest(path: Path) -> str | None:
    """sha256 of the file's bytes (None when it cannot be read)."""
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass
class Reload:
    """What a check found: a new spec to use, or a line saying why the file was refused."""

    spec: Spec | None
    line: str
    digest: str


class SpecWatch:
    def __init__(self, path: Path, spec: Spec) -> None:
        self.path = path
        self.spec = spec
        self.digest = file_digest(path)
        """Digest of the content `spec` came from (the last good one)."""
        self._stat = self._identity()
        self._refused: str | None = None
        """Digest of the last content refused (refused once, not once per pass)."""

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def check(self, force: bool = False) -> Reload | None:
        """A Reload when the file's content changed since the last check, else None."""
        ident = self._identity()
        if not force and ident == self._stat:
            return None
        self._stat = ident
        digest = file_digest(self.path)
        if digest is None or digest == self.digest or digest == self._refused:
            return None
        try:
            spec = load_spec(self.path).spec
        except SpecError as exc:
            self._refused = digest
            first = exc.problems[0] if exc.problems else str(exc)
            more = f" (and {len(exc.problems) - 1} more problem(s))" if len(exc.problems) > 1 \
                else ""
            return Reload(None, f"{self.path} changed but is invalid, kept the last good one: "
                                f"{first}{more}", digest)
        except KilnError as exc:
            self._refused = digest
            return Reload(None, f"{self.path} changed but cannot be loaded, kept the last good "
                                f"one: {exc}", digest)
        moved = [k for k, old, new in (("project", self.spec.project, spec.project),
                                       ("platform", self.spec.platform, spec.platform),
                                       ("router", self.spec.router, spec.router)) if old != new]
        if moved:
            self._refused = digest
            return Reload(None, f"{self.path} changed {', '.join(moved)}: kept the last good one "
                                "(restart `kiln serve` to use it)", digest)
        self.spec, self.digest, self._refused = spec, digest, None
        return Reload(spec, f"{self.path} changed: reloaded ({digest[:19]})", digest)
