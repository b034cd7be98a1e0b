"""Bench: launch-time content verification of a 10,000-file, 200 MB image, against the anchor
`podman run --rm IMAGE true` of an image with the same files, measured in the same run.

1. local, fast:  `imagestore.integrity_problem` as every local launch runs it: one walk of the
                 tree (paths, kinds, modes, sizes, links) and an lstat per file; files whose
                 (dev, ino, size, mtime, ctime) is the key recorded in state.db are not read;
2. local, full:  the same with `full=True` (KILN_VERIFY=full, `kiln drift`): BLAKE3 of every byte
                 in parallel threads;
3. podman, fast / full: `images.layers_problem` (what every podman launch runs): `podman image
                 inspect` and the same check of every layer folder (the Debian base's layer and
                 the 200 MB COPY);
4. anchor: `podman run --rm IMAGE true` of that podman image.

Interleaved, N runs each, page cache warm (as for an image launched again; the first, full,
check after the bake is reported apart). min/median/max seconds, the ratio of medians to the
anchor, CPU seconds per check (its threads; load does not inflate them), and the 1-minute load
average around each row's runs (the machine is shared: wall times wait for a core).

    .venv/bin/python bench/verify_image.py [--runs 7] [--files 10000] [--mb 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from kiln.bake import imagestore, manifest
from kiln.platforms.base import Image
from kiln.platforms.podman import images
from kiln.state.records import verified
from kiln.state.store import Store
from kiln.testing.images import wait_keyable
from kiln.testing.podman import ensure_base, unusable


def make_tree(root: Path, files: int, total: int) -> None:
    """`files` files of about total/files bytes each (incompressible), 100 per folder."""
    blob = os.urandom(1 << 20)
    size = total // files
    for i in range(files):
        folder = root / f"pkg{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        start = (i * 7919) % (len(blob) - size)
        (folder / f"mod{i:05d}.py").write_bytes(blob[start:start + size])


CPU: dict[str, list[float]] = {}


def timed(fn: Callable[[], object], key: str = "") -> float:
    """Wall seconds of fn(); its CPU seconds (this process's threads and waited-for children:
    for `podman run` that is the podman command, not conmon or runc) go to CPU[key]."""
    cpu = _cpu()
    began = time.perf_counter()
    result = fn()
    took = time.perf_counter() - began
    CPU.setdefault(key, []).append(_cpu() - cpu)
    assert result is None or result == 0, result
    return took


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def settle(folders: list[Path]) -> None:
    """Wait (bounded) until every ctime under `folders` is old enough for the fast path to
    record its file's key (kiln.bake.manifest.trusted)."""
    wait_keyable(folders)


def stats(xs: list[float]) -> str:
    return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-verify-"))
    tag = f"localhost/kiln-bench-verify:{os.getpid()}"
    podman_ok = unusable() is None
    try:
        home = work / "home"
        home.mkdir()
        store = Store.open(home)
        folder = home / "images" / "bench"
        make_tree(folder / "root" / "app", args.files, args.mb << 20)
        imagestore.seal_readonly(folder / "root")
        content = manifest.build(folder / "root")
        local = imagestore.record_image(store, name="bench", digest="sha256:" + "0" * 64,
                                        ref=str(folder), key="bench", env={}, size=content.size,
                                        manifest=content.encode())
        print(f"image: {content.files} files, {content.size / 1e6:.0f} MB; "
              f"manifest in state {len(content.encode()) / 1e3:.0f} kB; {os.cpu_count()} cores")
        pod: Image | None = None
        data: dict[str, object] = {}
        if podman_ok:
            base = ensure_base(work / "base")
            (work / "ctx").mkdir()
            shutil.copytree(folder / "root" / "app", work / "ctx" / "app")
            (work / "ctx" / "Containerfile").write_text(f"FROM {base}\nCOPY app/ /app/\n")
            subprocess.run(["podman", "build", "-q", "-t", tag, str(work / "ctx")], check=True,
                           capture_output=True, timeout=600)
            data = json.loads(subprocess.run(["podman", "image", "inspect", tag], check=True,
                                             capture_output=True, text=True).stdout)[0]
            digest = "sha256:" + str(data["Id"]).removeprefix("sha256:")
            pod = imagestore.record_image(store, name="bench-podman", digest=digest, ref=digest,
                                          key="bench-podman", env={}, size=0,
                                          manifest=images.record_layers(store, "bench", data))
        settle([folder / "root"])
        first = timed(lambda: imagestore.integrity_problem(store, local, full=True))  # records
        keyed = verified.load(store, f"image:{local.digest}", content.encode())
        assert keyed is not None
        print(f"keys recorded: {len(manifest.decode_keys(content, keyed))} of {content.files} "
              f"files, {len(keyed) / 1e3:.0f} kB in state")
        if pod is not None:
            settle([Path(d) for _, d in images.layer_dirs(data)])
            assert images.layers_problem(store, pod, full=True) is None  # records its keys
        checks: dict[str, Callable[[], object]] = {
            "local": partial(imagestore.integrity_problem, store, local, full=False),
            "local-full": partial(imagestore.integrity_problem, store, local, full=True)}
        if pod is not None:
            checks |= {
                "podman": partial(images.layers_problem, store, pod, full=False),
                "podman-full": partial(images.layers_problem, store, pod, full=True),
                "anchor": lambda: subprocess.run(["podman", "run", "--rm", tag, "true"],
                                                 capture_output=True, timeout=120).returncode}
        times: dict[str, list[float]] = {k: [] for k in checks}
        loads: dict[str, list[float]] = {k: [] for k in checks}
        for _ in range(args.runs):
            for key, fn in checks.items():
                loads[key].append(os.getloadavg()[0])
                times[key].append(timed(fn, key))
        print(f"first (full) local check after the bake: {first:.3f} s, "
              f"CPU {CPU[''][0]:.3f} s")
        anchor = statistics.median(times["anchor"]) if times.get("anchor") else None
        print("| check | wall (min / median / max) | vs podman run | CPU per check (median) "
              "| load average (min-max) |")
        print("|---|---|---|---|---|")
        for key, label in (("local", "local image, fast path (launches)"),
                           ("local-full", "local image, full re-hash (`KILN_VERIFY=full`, drift)"),
                           ("podman", "podman image, every layer, fast path (launches)"),
                           ("podman-full", "podman image, every layer, full re-hash"),
                           ("anchor", "`podman run --rm IMAGE true` (anchor)")):
            xs = times.get(key)
            if not xs:
                continue
            ratio = (f"{statistics.median(xs) / anchor:.2f}x" if anchor else "-")
            print(f"| {label} | {stats(xs)} | {ratio} | {statistics.median(CPU[key]):.3f} s "
                  f"| {min(loads[key]):.1f}-{max(loads[key]):.1f} |")
        store.close()
    finally:
        if podman_ok:
            subprocess.run(["podman", "rmi", tag], capture_output=True, timeout=120)
        imagestore.force_rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
