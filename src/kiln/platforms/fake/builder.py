"""FakeBuilder: a Builder without files, for testing the core (plan, deploy) without baking.

The digest is a hash of the spec's JSON, so the same spec gives the same image and any edit
gives a new one, like a real bake; `fail` makes the named images fail like a broken step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from kiln.errors import BakeError
from kiln.platforms.base import Image, StepEvent
from kiln.spec.models import EnvStep, ImageSpec


class FakeBuilder:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.fail = set(fail or ())
        self.built: list[tuple[str, str]] = []
        """(name, digest) of every build call, in order."""
        self._seen: set[str] = set()

    def build(self, name: str, spec: ImageSpec, *, base_dir: Path, no_cache: bool = False,
              progress: Callable[[StepEvent], None] | None = None) -> Image:
        payload = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
        digest = "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
        cached = digest in self._seen and not no_cache
        total = len(spec.steps)
        for i, step in enumerate(spec.steps, start=1):
            if progress:
                desc = type(step).__name__
                if name in self.fail and i == total:
                    progress(StepEvent(i, total, desc, "failed"))
                    raise BakeError(f"step {i}/{total} ({desc}) failed with exit code 1")
                progress(StepEvent(i, total, desc, "cached" if cached else "ran"))
        if name in self.fail:
            raise BakeError(f"step {total}/{total} failed with exit code 1")
        env: dict[str, str] = {}
        for step in spec.steps:
            if isinstance(step, EnvStep):
                env.update(step.env)
        self._seen.add(digest)
        self.built.append((name, digest))
        return Image(name=name, digest=digest, ref=f"fake://{name}/{digest[7:19]}", env=env)
