"""FakeBuilder: a Builder without files, for testing the core (plan, deploy) without baking.

The digest hashes the base, the steps and the copied files, so the same inputs give the same
image and any edit gives a new one, like a real bake; a step is 'cached' when the same base and
steps up to it were built before (an edit reruns only the steps from it on); copy sources must
exist like in a real bake; `fail` makes the named images fail like a broken last step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from kiln.bake.steps import final_workdir, image_env
from kiln.errors import BakeError
from kiln.platforms.base import Image, StepEvent
from kiln.spec.models import CopyStep, ImageSpec


class FakeBuilder:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.fail = set(fail or ())
        self.built: list[tuple[str, str]] = []
        """(name, digest) of every build call, in order."""
        self._seen: set[str] = set()

    def build(self, name: str, spec: ImageSpec, *, base_dir: Path, no_cache: bool = False,
              progress: Callable[[StepEvent], None] | None = None) -> Image:
        data = spec.model_dump(mode="json", by_alias=True)
        total = len(spec.steps)
        prefix = hashlib.sha256(json.dumps(data["base"], sort_keys=True).encode())
        for i, step in enumerate(spec.steps, start=1):
            desc = type(step).__name__
            if isinstance(step, CopyStep):
                source = base_dir / step.source
                if not source.exists():
                    raise BakeError(f"step {i}/{total} ({desc}): copy source {step.source!r} "
                                    f"not found (looked for {source})")
                prefix.update(source.read_bytes() if source.is_file() else b"dir")
            prefix.update(json.dumps(data["steps"][i - 1], sort_keys=True).encode())
            key = prefix.hexdigest()
            if name in self.fail and i == total:
                if progress:
                    progress(StepEvent(i, total, desc, "failed"))
                raise BakeError(f"step {i}/{total} ({desc}) failed with exit code 1")
            cached = key in self._seen and not no_cache
            self._seen.add(key)
            if progress:
                progress(StepEvent(i, total, desc, "cached" if cached else "ran", key=key))
        if name in self.fail:
            raise BakeError(f"step {total}/{total} failed with exit code 1")
        digest = "sha256:" + prefix.hexdigest()
        self.built.append((name, digest))
        return Image(name=name, digest=digest, ref=f"fake://{name}/{digest[7:19]}",
                     env=image_env(spec.steps),
                     workdir=final_workdir(spec.steps, name))
