"""LocalBuilder: bake an image into a folder tree with its own venv, step by cached step.

A bake, in order:
1. resolve the base, hash every copy step's inputs and chain the cache keys (no tree work);
2. fast path: the last key already names a sealed image -> return it;
3. take the bake lock (home/tmp/bake.lock, flock: released by the kernel if we die), sweep what a
   killed bake left (home/tmp/work, snapshot staging, a still-running step);
4. restore the newest cached snapshot on the key chain by copying it (never linking: a run step
   may modify files in place, and kiln usually runs as root, for whom read-only bits mean nothing),
   then run the remaining steps in the bake sandbox (kiln.bake.sandbox: only the tree and a
   scratch folder writable, as an unprivileged uid), snapshotting the tree after each into
   home/cache/<key> (`cp -a --reflink=auto`: a cheap clone on CoW file systems, a plain copy
   elsewhere);
5. seal: compute the Merkle digest, chmod a-w, write
   manifest.json, os.replace the folder to home/images/<hex>/ and only then write the row.

Step 0 is the base (the venv); user steps are 1..N. Every tree is built at the same path
(home/tmp/work/image/root), so tools that record the build path at least record a stable one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln.bake import imagestore, manifest, steps
from kiln.bake.hashing import step_key, tree_digest
from kiln.bake.sandbox import BakeSandbox, contained, in_dir, own_tree, require
from kiln.errors import BakeError
from kiln.platforms.base import Image, StepEvent
from kiln.platforms.capabilities import ImageCheck, Resolver, SpecLocator
from kiln.platforms.local import stepcache, venv
from kiln.platforms.local.sandbox import SYSTEM_PATHS, SandboxMode, covered
from kiln.spec.models import CopyStep, EnvStep, ImageSpec, RunStep, Step, WorkdirStep
from kiln.state.records import steps as step_records
from kiln.state.store import Store

Progress = Callable[[StepEvent], None]


@dataclass(frozen=True)
class _Planned:
    index: int  # 0 = base
    step: Step | None  # None for the base
    description: str
    key: str
    source: Path | None = None  # copy steps: the resolved source

    @property
    def changes_tree(self) -> bool:
        return not isinstance(self.step, EnvStep | WorkdirStep)


class LocalBuilder(ImageCheck, Resolver, SpecLocator):
    """Builder for the local platform. `home` is the project's state folder (.kiln/)."""

    def __init__(self, store: Store, home: Path,
                 warn: Callable[[str], None] | None = None, *,
                 sandbox: SandboxMode = "bwrap") -> None:
        self.store = store
        self.home = home
        self.warn = warn or stepcache.warn_on_stderr
        self.locate: Callable[[tuple[str | int, ...], str], str] | None = None
        """Set by the context (`use_locator`): (path in the spec, message) ->
        "kiln.yaml:line:col: path: message"."""
        self.sandbox = sandbox
        """"bwrap": steps run in the bake sandbox (kiln.bake.sandbox); "none" only when the spec
        says `sandbox: none`."""

    def use_locator(self, locate: Callable[[tuple[str | int, ...], str], str]) -> None:
        self.locate = locate

    # ------------------------------------------------------------------ plan

    def _plan(self, name: str, spec: ImageSpec, base_dir: Path) -> tuple[venv.Runtime, list[_Planned]]:
        if not isinstance(spec.base, str):
            raise BakeError(f"base: {{debian: {spec.base.debian}}} needs platform: podman",
                            hint="the local platform's base is a Python runtime like 'python' "
                                 "or 'python3.11'")
        runtime = venv.resolve_base(spec.base)
        base_def = runtime.definition(spec.base)
        if spec.network == "none":  # a step may behave differently offline: its own keys
            base_def = {**base_def, "network": "none"}
        base_key = step_key("", base_def, {"kind": "base"})
        plan = [_Planned(0, None, f"base {spec.base} ({runtime.implementation} "
                                  f"{runtime.version})", base_key)]
        try:
            for i, step, desc, key, source in steps.chain(spec.steps, base_dir, base_def,
                                                          base_key):
                plan.append(_Planned(i, step, desc, key, source))
        except steps.PathEscape as exc:
            raise self._located(exc, name, len(plan)) from exc
        return runtime, plan

    def _located(self, exc: steps.PathEscape, name: str, index: int) -> BakeError:
        """`exc` prefixed with the file:line of step `index` (1-based) of image `name`."""
        if self.locate is None:
            return exc
        return BakeError(self.locate(("images", name, "steps", index - 1, exc.field),
                                     exc.message), hint=exc.hint)

    def resolve(self, name: str, spec: ImageSpec, *, base_dir: Path) -> Image | None:
        """The image a bake would return if every step is cached, without running anything."""
        _, plan = self._plan(name, spec, base_dir)
        row = imagestore.find_by_key(self.store, plan[-1].key)
        if row is None:
            return None
        image = Image(name=name, digest=row["digest"], ref=row["ref"], env=steps.image_env(spec.steps),
                      workdir=steps.final_workdir(spec.steps, name))
        if imagestore.integrity_problem(self.store, image, record=False) is not None:
            return None  # tampered: a bake must rebuild it, so it is not "unchanged"
        return image

    def verify(self, image: Image, use: str) -> None:
        """Refuse an image whose files are not what the state recorded (ImageTampered)."""
        imagestore.ensure_intact(self.store, image, use=use)

    # ------------------------------------------------------------------ build

    def build(self, name: str, spec: ImageSpec, *, base_dir: Path, no_cache: bool = False,
              progress: Progress | None = None) -> Image:
        emit = progress or (lambda _e: None)
        runtime, plan = self._plan(name, spec, base_dir)
        total = len(spec.steps)
        env = steps.image_env(spec.steps)
        if not no_cache:
            row = imagestore.find_by_key(self.store, plan[-1].key)
            if row is not None and not self._intact_or_discard(row, name, env):
                row = None
            if row is not None:
                for p in plan:
                    emit(StepEvent(p.index, total, p.description, "cached", 0.0, p.key))
                self._touch([p.key for p in plan])
                return Image(name=name, digest=row["digest"], ref=row["ref"], env=env,
                             workdir=steps.final_workdir(spec.steps, name))
        with self._bake_lock() as work:
            return self._build_locked(name, spec, runtime, plan, env, work, no_cache, emit)

    def _intact_or_discard(self, row: sqlite3.Row, name: str, env: dict[str, str]) -> bool:
        """A cached image is reused only if it still matches its digest; a tampered one is
        removed (its folder; the row is refreshed by the rebuild) so this bake rebuilds it."""
        image = Image(name=name, digest=row["digest"], ref=row["ref"], env=env)
        problem = imagestore.integrity_problem(self.store, image)
        if problem is None:
            return True
        self.store.event("image.tampered", f"rebuilding: {problem}",
                         data={"digest": image.digest, "use": "cache"})
        imagestore.force_rmtree(Path(image.ref))
        return False

    def _build_locked(self, name: str, spec: ImageSpec, runtime: venv.Runtime,
                      plan: list[_Planned], env: dict[str, str], work: Path, no_cache: bool,
                      emit: Progress) -> Image:
        total = len(spec.steps)
        require(self.sandbox)
        folder = work / "image"
        root = folder / "root"
        scratch = work / "scratch"
        folder.mkdir(parents=True)
        box = BakeSandbox(root, scratch, self.sandbox, network=spec.network != "none",
                          read_only=_runtime_prefixes(runtime))
        start = 0
        if not no_cache:
            snapshots = self._snapshots([p.key for p in plan])
            bad: set[Path] = set()  # env/workdir steps share their parent's folder: warn once
            for p in reversed(plan):
                if p.key in snapshots and snapshots[p.key] not in bad \
                        and self._entry_intact(p, snapshots[p.key], bad):
                    _clone(snapshots[p.key], root)
                    start = p.index + 1
                    break
        for p in plan[:start]:
            emit(StepEvent(p.index, total, p.description, "cached", 0.0, p.key))
        self._touch([p.key for p in plan[:start]])
        step_env = steps.base_env(root, scratch)
        cwd = root
        for p in plan[1:start]:  # env and workdir of the cached steps still apply
            step_env, cwd = _apply_context(p.step, step_env, cwd, root)
        for p in plan[start:]:
            emit(StepEvent(p.index, total, p.description, "running", 0.0, p.key))
            began = time.monotonic()
            try:
                if p.step is None:
                    shared = None if no_cache else shared_base(runtime, p.key)
                    if shared is not None:
                        _clone(shared, root)
                        box.prepare()
                        self._snapshot(name, p, plan, root, work)
                        emit(StepEvent(p.index, total, p.description + " (shared cache)",
                                       "cached", time.monotonic() - began, p.key))
                        continue
                    root.mkdir()
                    box.prepare()
                    venv.create_venv(runtime, root / ".venv", step_env, box)
                elif isinstance(p.step, CopyStep):
                    assert p.source is not None
                    box.prepare()
                    try:
                        _copy(box, runtime, p.step, p.source, _where(p, total))
                    except steps.PathEscape as exc:
                        raise self._located(exc, name, p.index) from exc
                elif isinstance(p.step, RunStep):
                    box.prepare()
                    self._run(p, total, p.step, cwd, step_env, work, emit, box)
                else:
                    step_env, cwd = _apply_context(p.step, step_env, cwd, root)
                if p.changes_tree:
                    venv.make_relocatable(root / ".venv")
                    venv.compile_tree(root, box)
            except BakeError:
                emit(StepEvent(p.index, total, p.description, "failed",
                               time.monotonic() - began, p.key))
                raise
            except OSError as exc:
                emit(StepEvent(p.index, total, p.description, "failed",
                               time.monotonic() - began, p.key))
                raise BakeError(f"{_where(p, total)} failed: {exc}") from exc
            self._snapshot(name, p, plan, root, work)
            if p.step is None:
                keep_shared_base(runtime, p.key, root)
            emit(StepEvent(p.index, total, p.description, "ran", time.monotonic() - began, p.key))
        return self._seal(name, spec, runtime, plan[-1].key, env, folder)

    def _run(self, p: _Planned, total: int, step: RunStep, cwd: Path, env: dict[str, str],
             work: Path, emit: Progress, box: BakeSandbox) -> None:
        log = work / "step.log"
        began = time.monotonic()

        def line(text: str) -> None:
            emit(StepEvent(p.index, total, p.description, "running", time.monotonic() - began,
                           p.key, output=text))

        # The workdir is made inside the sandbox, as the step uid (it may run through a symlink).
        with box.prepared(in_dir(cwd, ["bash", "-c", step.run])) as (argv, fds):
            code = steps.run_command(argv, cwd=box.root, env=env, timeout=step.timeout, log=log,
                                     pidfile=self.home / "tmp" / "step.pid", on_output=line,
                                     pass_fds=fds)
        out = steps.tail(log)
        if code is None:
            raise BakeError(f"{_where(p, total)} timed out after {step.timeout:g}s"
                            + (f"\n{out}" if out else ""))
        if code != 0:
            raise BakeError(f"{_where(p, total)} failed with exit code {code}"
                            + (f"\n{out}" if out else ""))

    # ------------------------------------------------------------------ cache

    def _snapshots(self, keys: list[str]) -> dict[str, Path]:
        rows = step_records.snapshots(self.store, keys)
        found = {}
        for r in rows:
            path = self.home / r["snapshot"]
            if path.is_dir():
                found[r["key"]] = path
        return found

    def _entry_intact(self, p: _Planned, path: Path, bad: set[Path]) -> bool:
        """A cache entry is restored only if it is what the state recorded when it was made;
        a bad one is rebuilt (this step and the ones after it), with one warning line."""
        problem = stepcache.entry_problem(self.store, p.key, path)
        if problem is None:
            return True
        bad.add(path)
        self.warn(f"step cache entry of {p.description} ({p.key[:12]}) {problem}; "
                  "rebuilding from that step")
        self.store.event("cache.tampered", f"rebuilding: {p.description}: {problem}",
                         data={"key": p.key})
        return False

    def _snapshot(self, name: str, p: _Planned, plan: list[_Planned], root: Path,
                  work: Path) -> None:
        """Keep the tree after step `p` in the cache (env/workdir steps share their parent's)."""
        if p.changes_tree:
            rel = f"cache/{p.key}"
            staging = self.home / "tmp" / f"snap-{uuid.uuid4().hex[:12]}"
            _clone(root, staging)
            target = self.home / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                old = self.home / "tmp" / f"old-{uuid.uuid4().hex[:12]}"
                os.replace(target, old)
                imagestore.force_rmtree(old)
            os.replace(staging, target)
            content: bytes | None = manifest.build(target).encode()
        else:
            parent = step_records.snapshot_and_manifest(self.store, plan[p.index - 1].key)
            if parent is None:
                return
            rel, content = parent["snapshot"], parent["manifest"]
        now = time.time()
        parent_key = plan[p.index - 1].key if p.index else None
        with self.store.tx() as c:
            step_records.put(c, p.key, parent_key, name, p.description, rel, now, content)

    def _touch(self, keys: list[str]) -> None:
        if not keys:
            return
        with self.store.tx() as c:
            step_records.touch(c, keys, time.time())

    # ------------------------------------------------------------------ seal

    def _seal(self, name: str, spec: ImageSpec, runtime: venv.Runtime, key: str,
              env: dict[str, str], folder: Path) -> Image:
        root = folder / "root"
        workdir = steps.final_workdir(spec.steps, name)
        if workdir:  # created if no step made it, as Dockerfile WORKDIR does
            if not contained(root, root / workdir):
                raise BakeError(f"images.{name}: workdir {workdir!r} leaves the image through a "
                                "symlink an earlier step made",
                                hint="point the last workdir step at a real folder of the image")
            try:
                (root / workdir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BakeError(f"images.{name}: workdir {workdir!r} cannot be a folder in the "
                                f"image: {exc.strerror}",
                                hint="point the last workdir step at a folder") from exc
        if self.sandbox == "bwrap":
            own_tree(root, 0)  # built as the step uid; sealed, it belongs to root as before
        tree = tree_digest(root, venv.digest_override)
        imagestore.seal_readonly(root)
        found, keys = manifest.scan(root)
        content = found.encode()  # the launches' authority, kept in the state
        target = imagestore.image_dir(self.home, tree.digest)
        imagestore.write_manifest(folder, {
            "name": name, "digest": tree.digest, "key": key, "env": env, "workdir": workdir,
            "base": spec.base,
            "python": runtime.version, "implementation": runtime.implementation,
            "platform": platform.machine(), "size": tree.size, "files": tree.files,
            "steps": [s.model_dump(mode="json", by_alias=True) for s in spec.steps],
            "created_at": time.time(),
        })
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and imagestore.integrity_problem(
                self.store, Image(name, tree.digest, str(target))) is None:
            imagestore.force_rmtree(folder)  # same tree already sealed: keep the first
            keys = {}  # its files are other inodes than the ones just hashed
        else:
            imagestore.force_rmtree(target)  # absent, or tampered: replace it
            os.replace(folder, target)
        image = imagestore.record_image(self.store, name=name, digest=tree.digest,
                                        ref=str(target), key=key, env=env,
                                        size=tree.size, workdir=workdir, manifest=content)
        if keys:  # files sealed in an earlier second may take the fast path at the first launch
            imagestore.record_keys(self.store, tree.digest, found, content, keys)
        return image

    # ------------------------------------------------------------------ lock and sweep

    @contextmanager
    def _bake_lock(self) -> Iterator[Path]:
        """One bake per home at a time; sweep what a killed bake left behind."""
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with open(tmp / "bake.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._sweep(tmp)
                work = tmp / "work"
                try:
                    yield work
                finally:
                    imagestore.force_rmtree(work)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _sweep(self, tmp: Path) -> None:
        steps.kill_orphan(tmp / "step.pid")
        (tmp / "step.pid").unlink(missing_ok=True)
        for entry in tmp.iterdir():
            if entry.name == "work" or entry.name.startswith(("snap-", "old-")):
                imagestore.force_rmtree(entry)


def _apply_context(step: Step | None, env: dict[str, str], cwd: Path,
                   root: Path) -> tuple[dict[str, str], Path]:
    if isinstance(step, EnvStep):
        return {**env, **step.env}, cwd
    if isinstance(step, WorkdirStep):
        return env, steps.inside(root, step.workdir, "workdir", "workdir step")
    return env, cwd


def _copy(box: BakeSandbox, runtime: venv.Runtime, step: CopyStep, source: Path,
          where: str) -> None:
    """A copy step, done by kiln's `COPY_SCRIPT` in the bake sandbox: only the image root is
    writable, the source is bound read-only, and targets that leave the image are refused."""
    view = "/kiln-source" if box.mode == "bwrap" else str(source)
    job = steps.copy_job(step, source, box.root, where, view)
    done = box.run([runtime.executable, "-I", "-S", "-c", steps.COPY_SCRIPT],
                   env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=600,
                   stdin=json.dumps(job).encode(), source=source if view != str(source) else None)
    if done.returncode == 3:
        raise steps.PathEscape(f"{where}: copy destination {done.stdout.strip()!r} leaves the "
                               "image through a symlink an earlier step made", field="to",
                               hint="a copy writes only inside the image; remove the symlink "
                                    "or copy somewhere else")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BakeError(f"{where} failed: {why}")


def _runtime_prefixes(runtime: venv.Runtime) -> tuple[str, ...]:
    """The base interpreter's installation prefix(es), when outside the system paths (pyenv,
    uv, a build under /opt): bound read-only so the venv's python runs in the sandbox."""
    out: list[str] = []
    for exe in (Path(runtime.executable), Path(runtime.executable).resolve()):
        prefix = str(exe.parent.parent)
        if not covered(prefix, SYSTEM_PATHS) and prefix not in out and prefix != "/":
            out.append(prefix)
    return tuple(out)


def _where(p: _Planned, total: int) -> str:
    return f"step {p.index}/{total} ({p.description})"


def shared_cache_dir() -> Path:
    """Where baked base environments are shared between projects: $KILN_CACHE, else
    $XDG_CACHE_HOME/kiln, else ~/.cache/kiln."""
    explicit = os.environ.get("KILN_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kiln"


def _shared_path(runtime: venv.Runtime, key: str) -> Path:
    # Keyed by the interpreter too: a venv points at the interpreter it was made from.
    which = hashlib.sha256(f"{runtime.executable}\0{key}".encode()).hexdigest()[:32]
    return shared_cache_dir() / "base" / which


def shared_base(runtime: venv.Runtime, key: str) -> Path | None:
    """A base environment another project already made with this interpreter, if any."""
    path = _shared_path(runtime, key)
    return path / "tree" if (path / "complete").exists() else None


def keep_shared_base(runtime: venv.Runtime, key: str, root: Path) -> None:
    """Offer a freshly made base environment to other projects (best effort, atomic)."""
    target = _shared_path(runtime, key)
    if (target / "complete").exists():
        return
    staging = target.parent / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir(parents=True)
        _clone(root, staging / "tree")
        (staging / "complete").write_text(runtime.executable + "\n")
        os.rename(staging, target)
    except (OSError, BakeError):
        if staging.exists():
            imagestore.force_rmtree(staging)


def _clone(src: Path, dst: Path) -> None:
    """A private copy of a tree: reflinks where the file system can, bytes otherwise."""
    out = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(src), str(dst)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BakeError(f"cannot copy {src} to {dst}: {out.stderr.strip()}")
