"""kiln's image steps as a Containerfile (pure: text in, text out; table-tested).

One instruction per step, in order, so podman's layer cache reruns only the steps after an edit:
`copy` -> COPY from a staged folder of the build context, `run` -> RUN (exec form, so any shell
text survives quoting), `env` -> ENV, `workdir` -> WORKDIR. Relative paths are relative to the
image root, `/app` (the local platform's image root, here a folder of the container).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.errors import BakeError
from kiln.spec.models import CopyStep, EnvStep, RunStep, Step, WorkdirStep

ROOT = "/app"
"""The image root in the container: instances start there, relative step paths resolve there."""
PREAMBLE = 2
"""FROM and WORKDIR come before the first user step (user step i is podman's STEP i + 2)."""


@dataclass(frozen=True)
class Staged:
    """Where a copy step's source sits in the build context: `context_path` (e.g. '3/app.py'),
    and whether it is a folder (its contents are copied) or one file."""

    context_path: str
    is_dir: bool
    name: str


def in_root(path: str, where: str, what: str) -> str:
    """An absolute path inside the container for a step's path relative to the image root."""
    full = posixpath.normpath(posixpath.join(ROOT, path))
    if not path.startswith("/") and full != ROOT and not full.startswith(ROOT + "/"):
        raise BakeError(f"{where}: {what} {path!r} leaves the image",
                        hint="use a path inside the image, relative to its root")
    return full


def workdir_after(steps: Sequence[Step]) -> str:
    """The working directory once `steps` ran: where a run that follows them starts."""
    workdir = ROOT
    for i, step in enumerate(steps):
        if isinstance(step, WorkdirStep):
            workdir = in_root(step.workdir, f"steps[{i}]", "workdir")
    return workdir


def render(base: str, steps: Sequence[Step], staged: dict[int, Staged],
           labels: dict[str, str], image_name: str = "image",
           numbers: Sequence[int] | None = None, workdir: str = ROOT) -> str:
    """The Containerfile; `staged[i]` is the context location of step i's copy source (1-based).

    `numbers` are the steps' 1-based numbers in the image spec when `steps` is a run of them
    (the steps between two provisioner steps); by default 1, 2, 3... `workdir`: where the run
    starts (`workdir_after` the steps before it).
    """
    lines = [f"FROM {base}", f"WORKDIR {workdir}"]
    for i, step in zip(numbers or range(1, len(steps) + 1), steps, strict=True):
        where = f"images.{image_name}.steps[{i - 1}]"
        lines.append(instruction(step, staged.get(i), where))
    if labels:
        lines.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())))
    return "\n".join(lines) + "\n"


def instruction(step: Step, staged: Staged | None, where: str) -> str:
    if isinstance(step, CopyStep):
        if staged is None:
            raise BakeError(f"{where}: copy source {step.source!r} was not staged")
        dest = in_root(step.to, where, "copy destination")
        if staged.is_dir:
            return f"COPY {json.dumps([staged.context_path + '/', dest + '/'])}"
        if step.to.endswith("/") or step.to in (".", ""):
            dest = posixpath.join(dest, staged.name)
        return f"COPY {json.dumps([staged.context_path, dest])}"
    if isinstance(step, RunStep):
        return f"RUN {json.dumps(['/bin/sh', '-c', step.run])}"
    if isinstance(step, EnvStep):
        for key, value in step.env.items():
            if "\n" in value:
                raise BakeError(f"{where}: env {key} has a line break, which a Containerfile "
                                "cannot carry")
        return "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in step.env.items())
    if isinstance(step, WorkdirStep):
        return f"WORKDIR {in_root(step.workdir, where, 'workdir')}"
    raise BakeError(f"{where}: a {type(step).__name__} is not a Containerfile instruction")
