"""Files a spec names must exist: checked by `kiln validate` and before a bake, with file:line.

Not part of loading: `status`, `destroy` or `rollback` work on a project whose app folder is gone
(a release never needs its sources again); only what reads the sources checks them.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from kiln.errors import SpecError
from kiln.spec.loader import LoadedSpec, line_at
from kiln.spec.models import AnsibleStep, CopyStep, PuppetStep, TestinfraCheck
from kiln.spec.yaml_tree import Loc

_Need = tuple[Loc, str, str]  # where in the spec, the path, what it names


def needed_files(loaded: LoadedSpec, images: list[str] | None = None) -> list[_Need]:
    """Every (spec location, project-relative path, what it is) the given images read."""
    out: list[_Need] = []
    for name, img in loaded.spec.images.items():
        if images is not None and name not in images:
            continue
        for i, step in enumerate(img.steps):
            at: Loc = ("images", name, "steps", i)
            if isinstance(step, CopyStep):
                out.append(((*at, "copy"), step.source, "copy source"))
            elif isinstance(step, AnsibleStep):
                out.append(((*at, "ansible", "playbook"), step.ansible.playbook, "playbook"))
                out += [((*at, "ansible", "roles_path"), p, "roles folder")
                        for p in step.ansible.roles_path]
            elif isinstance(step, PuppetStep):
                out.append(((*at, "puppet", "manifest"), step.puppet.manifest, "manifest"))
                out += [((*at, "puppet", "modulepath"), p, "module folder")
                        for p in step.puppet.modulepath]
        for j, check in enumerate(img.tests):
            if isinstance(check, TestinfraCheck):
                out.append((("images", name, "tests", j, "testinfra"), check.testinfra,
                            "testinfra path"))
    return out


def missing_files(loaded: LoadedSpec, images: list[str] | None = None) -> list[str]:
    """One line per named file that does not exist: file:line:col: path: what, and a guess."""
    lines: list[str] = []
    for loc, rel, what in needed_files(loaded, images):
        if (loaded.base_dir / rel).exists():
            continue
        message = f"{what} {rel!r} does not exist in {loaded.base_dir}"
        guess = _nearest(loaded.base_dir, rel)
        if guess:
            message += f" (did you mean {guess!r}?)"
        lines.append(line_at(loaded, loc, message))
    return lines


def check_files(loaded: LoadedSpec, images: list[str] | None = None) -> None:
    """Raise SpecError listing every missing file the given images (default: all) read."""
    lines = missing_files(loaded, images)
    if lines:
        raise SpecError(lines)


def _nearest(base: Path, rel: str) -> str | None:
    """The closest existing sibling name of the first missing part of `rel` ('ap/' -> 'app/')."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    folder = base
    for k, part in enumerate(parts):
        if (folder / part).exists():
            folder = folder / part
            continue
        try:
            names = [p.name for p in folder.iterdir()]
        except OSError:
            return None
        close = difflib.get_close_matches(part, names, n=1)
        if not close:
            return None
        fixed = [*parts[:k], close[0], *parts[k + 1:]]
        return "/".join(fixed) + ("/" if rel.endswith("/") else "")
    return None
