"""What an ansible or puppet step reads from the project, resolved, checked and hashed.

The cache key of a provisioner step covers the whole folder of its playbook or manifest (roles,
templates, group_vars, hiera data beside it), every extra role or module folder, and the step's
own settings (variables included, through its definition). Hashing the folder rather than chasing
includes is what keeps the key honest: a playbook can pull in any file next to it. The cost is
that unrelated files in that folder also rerun the step, so keep them in their own folder
(bake/ in the examples).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kiln.bake.hashing import content_hash
from kiln.bake.steps import skip_name
from kiln.errors import BakeError


@dataclass(frozen=True)
class Tree:
    """One folder a step reads: where it is (absolute) and how the user named it."""

    path: Path
    label: str


def project_path(base_dir: Path, rel: str, what: str, where: str, *, folder: bool) -> Path:
    """base_dir/rel, which must exist, be a file (or folder) and stay inside the project."""
    base = base_dir.resolve()
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise BakeError(f"{where}: {what} {rel!r} is outside {base}",
                        hint="keep provisioning files inside the folder of kiln.yaml")
    if not path.exists():
        raise BakeError(f"{where}: {what} {rel!r} not found (looked for {path})")
    if folder and not path.is_dir():
        raise BakeError(f"{where}: {what} {rel!r} is not a folder")
    if not folder and not path.is_file():
        raise BakeError(f"{where}: {what} {rel!r} is not a file")
    return path


def trees_hash(trees: list[Tree], extra: str = "") -> str:
    """One hash over the contents of every tree (in the order given) and `extra`."""
    h = hashlib.sha256(extra.encode() + b"\0")
    for tree in trees:
        h.update(tree.label.encode() + b"\0" + content_hash(tree.path, skip_name).encode() + b"\0")
    return h.hexdigest()
