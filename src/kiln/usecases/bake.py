"""`kiln bake` and `kiln images`: build images (cached per step) and list the stored ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kiln.context import Context
from kiln.errors import NotFound
from kiln.platforms.base import Image, StepEvent


def bake(project: Context, names: Sequence[str] | None = None, *, no_cache: bool = False,
         progress: Callable[[str, StepEvent], None] | None = None) -> list[Image]:
    names = list(names or project.spec.images)
    for n in names:
        if n not in project.spec.images:
            known = ", ".join(sorted(project.spec.images)) or "none"
            raise NotFound(f"{project.spec_path}: no image named {n!r} (images: {known})")
    _check_sources(project, names)
    out = []
    with project.locked("bake " + " ".join(names)):
        for n in names:
            cb = (lambda ev, n=n: progress(n, ev)) if progress else None
            out.append(project.builder.build(n, project.spec.images[n],
                                             base_dir=project.base_dir, no_cache=no_cache,
                                             progress=cb))
    return out


def _check_sources(project: Context, names: list[str]) -> None:
    """Files the steps read exist, else one file:line error each (before anything runs)."""
    from kiln.spec.files import check_files
    from kiln.spec.loader import LoadedSpec

    try:
        text = project.spec_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        text = ""  # positions fall back to 1:1; the check itself needs only the spec
    check_files(LoadedSpec(project.spec, project.spec_path, project.base_dir, text), names)


def list_images(project: Context) -> list[dict[str, Any]]:
    from kiln.bake.imagestore import list_images

    rows = []
    for rec in list_images(project.store):
        rows.append({"name": rec.name, "digest": rec.digest, "created_at": rec.created_at,
                     "size": rec.size, "verdict": _verdict(project, rec.digest)})
    return rows


def _verdict(project: Context, digest: str) -> str:
    try:
        from kiln.verify.attest import verdict_for
    except ImportError:
        return "untested"
    return str(verdict_for(project.store, digest))
