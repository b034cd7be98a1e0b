"""Images for tests and benchmarks made outside this state (a folder made by hand, a podman image
another store baked): record them as a bake would (row and content record), since every launch
verifies an image against what the state recorded and refuses one the state does not know."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiln.bake import imagestore, manifest
from kiln.platforms.base import Image
from kiln.state.store import Store


def register(store: Store, image: Image) -> Image:
    """Record `image` as baked into `store`, as it is now: a local folder (`ref` with root/)
    by its content manifest, anything else as a podman image by its layers."""
    key = f"registered-{image.digest[7:19]}"
    root = Path(image.ref) / "root"
    if root.is_dir():
        content = manifest.build(root)
        size, blob = content.size, content.encode()
    else:
        from kiln.platforms.podman import engine, images

        data = engine.inspect("image", image.ref)
        assert data is not None, f"podman has no image {image.ref}"
        size, blob = int(data.get("Size") or 0), images.record_layers(store, image.name, data)
    imagestore.record_image(store, name=image.name, digest=image.digest, ref=image.ref, key=key,
                            env=image.env, size=size, workdir=image.workdir, manifest=blob)
    return image


def wait_keyable(folders: list[Path], timeout: float = 30.0) -> None:
    """Wait (bounded) until every file under `folders` has a ctime old enough for the fast
    path to record its key (`manifest.trusted`): tests of the keys need them all recorded."""
    ready = max(manifest.trusted_from(os.lstat(os.path.join(d, n)).st_ctime_ns)
                for f in folders for d, dirs, files in os.walk(f) for n in (*dirs, *files))
    deadline = time.monotonic() + timeout
    while time.time_ns() < ready:
        if time.monotonic() > deadline:
            raise AssertionError(f"ctimes under {folders[0]} stay too recent to key within "
                                 f"{timeout}s: is the clock moving?")
        time.sleep(max(0.001, min(0.05, (ready - time.time_ns()) / 1e9)))
