"""The Builder seam on podman: kiln's steps -> a generated Containerfile -> `podman build`.

Two caches, one inside the other. kiln's input key (base image id, each step's definition, the
content of every copy source; the same chain as the local bake) finds a finished image without
running podman build at all, so a no-op bake reruns nothing. When an input changed, podman's own
layer cache (`--layers`) reruns only the steps from the first changed one on. The image's
identity is its OCI image id ('sha256:<hex>' of its config), recorded with the input key.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from kiln.bake import imagestore, provisioners, steps
from kiln.bake.hashing import iter_files, step_key
from kiln.errors import BakeError, PlatformError
from kiln.platforms.base import Image, StepEvent
from kiln.platforms.capabilities import ImageCheck, Resolver
from kiln.platforms.podman import containerfile, debian_base, engine, images
from kiln.spec.models import CopyStep, ImageSpec, RunStep
from kiln.state.records import images as image_records
from kiln.state.store import Store

Progress = Callable[[StepEvent], None]
_STEP_RE = re.compile(r"^STEP (\d+)/(\d+): ")
_CACHED_RE = re.compile(r"^--> Using cache ")
_DONE_RE = re.compile(r"^--> [0-9a-f]{6,}")
PULL_TIMEOUT = 120.0
_FIXED_MTIME = int(steps.SOURCE_DATE_EPOCH)


class PodmanBuilder(ImageCheck, Resolver):
    def __init__(self, store: Store, home: Path, project: str) -> None:
        self.store, self.home, self.project = store, home, project

    # ------------------------------------------------------------------ plan

    def base_id(self, spec: ImageSpec, say: Callable[[str], None] | None = None) -> str:
        """The base image's id: a Debian build (made once), or an image podman has or pulls."""
        if not isinstance(spec.base, str):
            return debian_base.ensure(spec.base, self.home / "podman" / "tmp", say)
        ref = spec.base
        found = engine.image_id(ref)
        if found is not None:
            return found
        proc = engine.run(["pull", "--quiet", ref], timeout=PULL_TIMEOUT, check=False)
        found = engine.image_id(ref) if proc.returncode == 0 else None
        if found is None:
            raise BakeError(f"base image {ref!r} not found: podman has no such image and could "
                            f"not pull it ({engine.last_line(proc.stderr)})",
                            hint="`podman images` lists the images here; "
                                 "base: {debian: bookworm, packages: [python3]} builds one from "
                                 "the Debian archive")
        return found

    def keys(self, spec: ImageSpec, base_dir: Path, base: str) -> list[str]:
        """The cache key after each step (the last one identifies the image)."""
        base_def = {"podman_base": base}
        if spec.network == "none":  # a step may behave differently offline: its own keys
            base_def["network"] = "none"
        key = step_key("", base_def, {"kind": "base"})
        out = []
        for i, step in enumerate(spec.steps):
            where = f"images.steps[{i}]"
            inputs = ""
            definition = steps.definition(step)
            if isinstance(step, CopyStep):
                inputs = steps.copy_inputs_hash(steps.copy_source(step, base_dir, where))
            elif provisioners.is_provisioner(step):
                definition = provisioners.definition(step)
                inputs = provisioners.prepare(step, base_dir, where).inputs
            key = step_key(key, base_def, definition, inputs)
            out.append(key)
        return out or [key]

    def _known(self, key: str) -> Image | None:
        """The newest image recorded under `key` that podman still has."""
        for row in image_records.by_key(self.store, key):
            if engine.image_id(row["ref"]) == row["digest"]:
                return Image(name=row["name"], digest=row["digest"], ref=row["ref"])
        return None

    def resolve(self, name: str, spec: ImageSpec, *, base_dir: Path) -> Image | None:
        """The image these inputs already made, without building (for `kiln plan`)."""
        base = self._base_if_present(spec)
        if base is None:
            return None
        found = self._known(self.keys(spec, base_dir, base)[-1])
        return None if found is None else Image(name, found.digest, found.ref, steps.image_env(spec.steps),
                                                containerfile.workdir_after(spec.steps))

    def _base_if_present(self, spec: ImageSpec) -> str | None:
        ref = spec.base if isinstance(spec.base, str) else debian_base.tag(spec.base)
        return engine.image_id(ref)

    # ------------------------------------------------------------------ build

    def build(self, name: str, spec: ImageSpec, *, base_dir: Path, no_cache: bool = False,
              progress: Progress | None = None) -> Image:
        emit = progress or (lambda _e: None)
        total = len(spec.steps)
        base = self.base_id(spec, say=lambda m: emit(StepEvent(0, total, m, "running")))
        keys = self.keys(spec, base_dir, base)
        env = steps.image_env(spec.steps)
        if not no_cache:
            found = self._known(keys[-1])
            if found is not None:
                for i, step in enumerate(spec.steps, start=1):
                    emit(StepEvent(i, total, steps.describe(step), "cached", 0.0, keys[i - 1]))
                return Image(name=name, digest=found.digest, ref=found.ref, env=env,
                             workdir=containerfile.workdir_after(spec.steps))
        tag = images.image_tag(self.project, name, keys[-1])
        labels = {"kiln.image": name, "kiln.key": keys[-1]}
        image = base
        run: list[int] = []  # step numbers (1-based) of the Containerfile being gathered
        for i, step in enumerate(spec.steps, start=1):
            if not provisioners.is_provisioner(step):
                run.append(i)
                continue
            if run:
                image = self._segment(name, spec, base_dir, image, run, keys, None, no_cache,
                                      emit)
                run = []
            image = self._provision(name, spec, base_dir, image, i, keys, no_cache, emit)
        self._segment(name, spec, base_dir, image, run, keys, (tag, labels), no_cache, emit)
        data = engine.inspect("image", tag)
        if data is None:
            raise BakeError(f"image {name}: podman build finished but {tag} is missing")
        digest = str(data["Id"])
        digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"
        return imagestore.record_image(self.store, name=name, digest=digest, ref=digest,
                                       key=keys[-1], env=env, size=int(data.get("Size") or 0),
                                       workdir=containerfile.workdir_after(spec.steps),
                                       manifest=images.record_layers(self.store, name, data))

    def verify(self, image: Image, use: str) -> None:
        """Refuse an image whose layers are not what the state recorded (ImageTampered)."""
        images.ensure_intact(self.store, image, use=use)

    def _segment(self, name: str, spec: ImageSpec, base_dir: Path, base: str, numbers: list[int],
                 keys: list[str], final: tuple[str, dict[str, str]] | None, no_cache: bool,
                 emit: Progress) -> str:
        """`podman build` of the steps `numbers` on `base`; the image's id. The last segment
        carries the labels and the image's tag; the others are tagged by their last key."""
        tag, labels = final or (
            f"{images.step_repository(self.project, name)}:{keys[numbers[-1] - 1][:16]}", {})
        context = self.home / "podman" / "build" / name
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        try:
            staged = stage(spec, base_dir, context, numbers)
            before = spec.steps[:numbers[0] - 1] if numbers else spec.steps
            text = containerfile.render(base, [spec.steps[i - 1] for i in numbers], staged,
                                        labels, name, numbers, containerfile.workdir_after(before))
            (context / "Containerfile").write_text(text)
            self._podman_build(context, tag, spec, numbers, keys, no_cache, emit)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        found = engine.image_id(tag)
        if found is None:
            raise BakeError(f"image {name}: podman build finished but {tag} is missing")
        return found

    def _provision(self, name: str, spec: ImageSpec, base_dir: Path, base: str, number: int,
                   keys: list[str], no_cache: bool, emit: Progress) -> str:
        """An ansible or puppet step in a buildah working container on `base` (see
        kiln.bake.provisioners), its result tagged by the step's key and reused while it lasts."""
        step = spec.steps[number - 1]
        assert provisioners.is_provisioner(step)
        total, key, desc = len(spec.steps), keys[number - 1], steps.describe(step)
        tag = f"{images.step_repository(self.project, name)}:{key[:16]}"
        found = None if no_cache else engine.image_id(tag)
        if found is not None:
            emit(StepEvent(number, total, desc, "cached", 0.0, key))
            return found
        emit(StepEvent(number, total, desc, "running", 0.0, key))
        started = time.monotonic()
        prepared = provisioners.prepare(step, base_dir, f"images.{name}.steps[{number - 1}]")
        try:
            image = provisioners.provision(prepared, image=base, tag=tag, on_line=lambda line: emit(
                StepEvent(number, total, desc, "running", time.monotonic() - started, key, line)))
        except BakeError:
            emit(StepEvent(number, total, desc, "failed", time.monotonic() - started, key))
            raise
        emit(StepEvent(number, total, desc, "ran", time.monotonic() - started, key))
        return image if image.startswith("sha256:") else f"sha256:{image}"

    def _podman_build(self, context: Path, tag: str, spec: ImageSpec, numbers: list[int],
                      keys: list[str], no_cache: bool, emit: Progress) -> None:
        total = len(spec.steps)
        argv = [engine.binary(), "build", "--layers", "--pull=never", "--format", "oci",
                "-f", str(context / "Containerfile"), "-t", tag]
        if no_cache:
            argv.append("--no-cache")
        if spec.network == "none":
            argv.append("--network=none")
        argv.append(str(context))
        timeout = sum(s.timeout for s in spec.steps if isinstance(s, RunStep)) + 300.0
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        current: int | None = None
        started = time.monotonic()
        tail: list[str] = []
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail = [*tail, line][-20:]
                m = _STEP_RE.match(line)
                if m:
                    nth = int(m.group(1)) - containerfile.PREAMBLE  # 1-based within the run
                    current = numbers[nth - 1] if 1 <= nth <= len(numbers) else None
                    started = time.monotonic()
                    if current is not None:
                        emit(StepEvent(current, total, steps.describe(spec.steps[current - 1]),
                                       "running", 0.0, keys[current - 1]))
                        tail = []
                    continue
                if current is not None and 1 <= current <= total and (
                        _CACHED_RE.match(line) or _DONE_RE.match(line)):
                    status: Literal["cached", "ran"] = (
                        "cached" if _CACHED_RE.match(line) else "ran")
                    emit(StepEvent(current, total, steps.describe(spec.steps[current - 1]),
                                   status, time.monotonic() - started, keys[current - 1]))
                    current = None
                    tail = []
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, 9)
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        if code == 0:
            return
        if current is not None and 1 <= current <= total:
            step = spec.steps[current - 1]
            emit(StepEvent(current, total, steps.describe(step), "failed",
                           time.monotonic() - started, keys[current - 1]))
            detail = "\n".join(ln for ln in tail if ln.strip() and not _STEP_RE.match(ln))
            raise BakeError(f"step {current}/{total} ({steps.describe(step)}) failed: "
                            f"{engine.last_line(detail)}"
                            + (f"\n{detail}" if detail else ""))
        raise PlatformError(f"podman build of {tag} failed: {engine.last_line(chr(10).join(tail))}")


def stage(spec: ImageSpec, base_dir: Path, context: Path,
           numbers: list[int]) -> dict[int, containerfile.Staged]:
    """Copy the source of every copy step among `numbers` into context/<step>/ (skipping .git,
    .kiln, caches), with a fixed mtime so podman's cache sees only content."""
    staged: dict[int, containerfile.Staged] = {}
    for i in numbers:
        step = spec.steps[i - 1]
        if not isinstance(step, CopyStep):
            continue
        source = steps.copy_source(step, base_dir, f"images.steps[{i - 1}]")
        folder = context / str(i)
        folder.mkdir()
        if source.is_dir():
            for rel, path in iter_files(source, steps.skip_name):
                _copy(path, folder / rel)
            staged[i] = containerfile.Staged(str(i), True, source.name)
        else:
            _copy(source, folder / source.name)
            staged[i] = containerfile.Staged(f"{i}/{source.name}", False, source.name)
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            for entry in (*filenames, *dirnames):
                os.utime(os.path.join(dirpath, entry), (_FIXED_MTIME, _FIXED_MTIME),
                         follow_symlinks=False)
        os.utime(folder, (_FIXED_MTIME, _FIXED_MTIME))
    return staged


def _copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if src.stat().st_mode & 0o111 else 0o644)


