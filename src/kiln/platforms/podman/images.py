"""Images kiln baked with podman: their layers' content verified against the state, and
garbage collection.

An image id names the image's config, and the config lists its layers' diff ids, but podman runs
a container on the layers' unpacked folders (overlay `diff/` dirs), which it never checks against
those ids after unpacking: a file overwritten there is what the next container sees. So at bake
kiln records, in the state, the image's diff ids (images.manifest) and each layer's content
manifest (layer_manifests, by diff id: shared layers are hashed once), and before every launch
and in `kiln drift` re-reads every layer folder against them (kiln.bake.manifest: BLAKE3,
parallel, with the fast path for files whose inode key is unchanged since they last matched).
docs/decisions/verified-content.md, docs/decisions/verified-content-fast-path.md.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.bake import manifest
from kiln.bake.imagestore import get_image
from kiln.errors import BakeError, ImageTampered
from kiln.platforms.base import Image
from kiln.platforms.podman import engine
from kiln.state.records import images as image_records
from kiln.state.records import layers as layer_records
from kiln.state.records import verified
from kiln.state.store import Store


def verify(store: Store, digest: str) -> str | None:
    """None when podman still has the image under the recorded id with the layers' content
    recorded at bake (every byte re-read: `kiln drift`, off the launch path); else one line
    saying what is wrong."""
    image = get_image(store, digest)
    found = engine.image_id(image.ref)
    if found is None:
        return f"image {image.name} {digest}: podman no longer has it"
    if found != image.digest:
        return f"image {image.name} {digest}: podman's image {image.ref} has id {found}"
    return layers_problem(store, image, full=True, record=False)


def ensure_intact(store: Store, image: Image, *, use: str) -> None:
    """Refuse (ImageTampered, plus an `image.tampered` event) an image whose layers are not
    what was baked."""
    problem = layers_problem(store, image)
    if problem is None:
        return
    store.event("image.tampered", f"refused to {use}: {problem}",
                data={"digest": image.digest, "use": use})
    raise ImageTampered(f"{problem}; refused to {use}",
                        hint=f"`podman rmi {image.digest[7:19]}`, then `kiln bake --no-cache "
                             f"{image.name}` rebuilds it")


def layer_dirs(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(diff id, unpacked folder) of each layer of an inspected image, bottom first.

    GraphDriver.Data lists the lower layers top first in LowerDir (':'-separated) and the top
    layer in UpperDir; RootFS.Layers lists the diff ids bottom first."""
    diff_ids = [str(x) for x in (data.get("RootFS") or {}).get("Layers") or []]
    graph = data.get("GraphDriver") or {}
    if graph.get("Name") != "overlay":
        raise ValueError(f"storage driver {graph.get('Name')!r} (kiln reads overlay layers)")
    found = graph.get("Data") or {}
    lower = [d for d in str(found.get("LowerDir") or "").split(":") if d]
    dirs = [*reversed(lower), *([str(found["UpperDir"])] if found.get("UpperDir") else [])]
    if len(dirs) != len(diff_ids):
        raise ValueError(f"{len(dirs)} layer folders for {len(diff_ids)} diff ids")
    return list(zip(diff_ids, dirs, strict=True))


def record_layers(store: Store, name: str, data: dict[str, Any]) -> bytes:
    """At bake: each layer's content manifest (by diff id, once) and the image's diff ids, the
    blob for images.manifest. A layer kiln recorded before (podman's layer cache reused it)
    must still be what it was: a modified one is refused, not baked into a new image."""
    try:
        layers = layer_dirs(data)
    except (ValueError, KeyError) as exc:
        raise BakeError(f"image {name}: cannot read podman's layers: {exc}") from exc
    for i, (diff_id, folder) in enumerate(layers, start=1):
        blob = layer_records.manifest_of(store, diff_id)
        if blob is not None:
            try:
                known = _known(store, diff_id, blob)
                checked = manifest.check(Path(folder), known[0], known[1])
                found = checked.problem
            except ValueError as exc:
                found = f"its record is unreadable ({exc})"
            if found is not None:
                raise BakeError(f"image {name}: layer {i}/{len(layers)} ({diff_id[:19]}) in "
                                f"podman's cache was modified after kiln first recorded it: "
                                f"{found}", hint="`podman rmi` the images using it, then "
                                                 f"`kiln bake --no-cache {name}`")
            _remember(store, diff_id, blob, known, checked)
            continue
        content, keys = manifest.scan(Path(folder))
        blob = content.encode()
        with store.tx() as c:
            layer_records.insert_new(c, diff_id, blob, time.time())
        if keys:
            verified.save(store, f"layer:{diff_id}", blob, manifest.encode_keys(content, keys))
    return zlib.compress(json.dumps({"format": 1, "layers": [d for d, _ in layers]}).encode())


def layers_problem(store: Store, image: Image, *, full: bool | None = None,
                   record: bool = True) -> str | None:
    """None when every layer of the image is the content recorded at bake; else one line
    naming the image, the layer and its first differing file. `full`: re-hash every file (None:
    as KILN_VERIFY says; by default only files whose key changed, kiln.bake.manifest.check).
    `record` False: a read-only command (`drift`) checks and writes nothing."""
    with manifest.gc_paused():
        return _layers_problem(store, image, full, record)


def _layers_problem(store: Store, image: Image, full: bool | None, record: bool) -> str | None:
    label = f"image {image.name} {image.digest[:19]}"
    data = engine.inspect("image", image.ref)
    if data is None:
        return f"{label}: podman no longer has it"
    row = image_records.manifest_row(store, image.digest)
    if row is None:
        return f"{label}: the state has no record of it (kiln did not bake it here)"
    blob = None if row["manifest"] is None else bytes(row["manifest"])
    if blob is None:  # baked before kiln recorded layers: recorded now, trusted from here on
        try:
            blob = record_layers(store, image.name, data)
        except BakeError as exc:
            return f"{label}: {exc.message}"
        if record:
            with store.tx() as c:
                image_records.set_manifest(c, image.digest, blob)
    try:
        recorded = [str(d) for d in json.loads(zlib.decompress(blob))["layers"]]
        layers = layer_dirs(data)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        return f"{label}: cannot check its layers ({exc})"
    if [d for d, _ in layers] != recorded:
        return f"{label} was modified after baking: its layers are not the ones baked"
    records = []
    for i, (diff_id, _) in enumerate(layers, start=1):
        known = layer_records.manifest_of(store, diff_id)
        if known is None:
            return f"{label}: layer {i} ({diff_id[:19]}) has no content record in the state"
        try:
            records.append((known, _known(store, diff_id, known, full=full)))
        except ValueError as exc:
            return f"{label}: layer {i} ({diff_id[:19]}): its record is unreadable ({exc})"
    with ThreadPoolExecutor(max_workers=len(layers) or 1) as pool:  # layers side by side
        found = list(pool.map(
            lambda layer: manifest.check(Path(layer[0][1]), layer[1][1][0], layer[1][1][1]),
            zip(layers, records, strict=True)))
    for i, ((diff_id, _), checked) in enumerate(zip(layers, found, strict=True), start=1):
        if checked.problem is not None:
            return (f"{label} was modified after baking: layer {i}/{len(layers)} "
                    f"({diff_id[:19]}): {checked.problem}")
    for (diff_id, _), (layer_blob, layer_known), checked in zip(layers, records, found, strict=True):
        if record:
            _remember(store, diff_id, layer_blob, layer_known, checked)
    return None


def _known(store: Store, diff_id: str, blob: bytes, *, full: bool | None = None
           ) -> tuple[manifest.Manifest, manifest.Known | None]:
    """A layer's recorded manifest and the fast path's keys for it (None: re-hash every file,
    when `full` or KILN_VERIFY=full). ValueError: the manifest is unreadable."""
    recorded = manifest.Manifest.decode(blob)
    if manifest.full_by_default() if full is None else full:
        return recorded, None
    saved = verified.load(store, f"layer:{diff_id}", blob)
    return recorded, manifest.decode_keys(recorded, saved) if saved is not None else {}


def _remember(store: Store, diff_id: str, blob: bytes,
              known: tuple[manifest.Manifest, manifest.Known | None],
              checked: manifest.Checked) -> None:
    """Record the keys an intact layer's check found, when they changed."""
    if checked.keys != {p: k for p, (k, _) in (known[1] or {}).items()}:
        verified.save(store, f"layer:{diff_id}", blob,
                      manifest.encode_keys(known[0], checked.keys))


def remove(store: Store, keep: set[str], project: str) -> list[str]:
    """`podman rmi` every kiln image not in `keep` by this project's tag (one still used by a
    container stays in podman's storage; its row goes), then delete their rows.

    By tag, not id: podman refuses to delete by id an image with more than one tag, and the same
    inputs give the same image id in two projects (staging and production baked from one
    source) or two image names; untagging ours leaves the image to the other tags' owners and
    deletes it when ours was the last."""
    rows = [r for r in image_records.all_newest_first(store) if r["digest"] not in keep]
    for row in rows:
        digest = str(row["digest"])
        tag = image_tag(project, str(row["name"]), str(row["key"]))
        # The tag may have moved to a newer build of the same key (--no-cache): then the old
        # image is reached by its id only.
        target = tag if engine.image_id(tag) == digest else digest.removeprefix("sha256:")
        engine.run(["rmi", target], timeout=120.0, check=False)
    removed = [str(r["digest"]) for r in rows]
    with store.tx() as c:
        for digest in removed:
            image_records.delete(c, digest)
        if removed:
            c.event("image.removed", f"removed {len(removed)} image(s)", data={"digests": removed})
    return removed


def image_tag(project: str, name: str, key: str) -> str:
    """The tag the podman builder gives the image baked for `key`."""
    return f"{image_repository(project, name)}:{key[:16]}"


def image_repository(project: str, name: str) -> str:
    """Where the podman builder tags every bake of the project's image `name` (one tag a key)."""
    return f"localhost/kiln/{project}-{name}"


def step_repository(project: str, name: str) -> str:
    """Where the podman builder tags the intermediate images of its step cache (the image before
    an ansible/puppet step, and the one that step committed), each under its step's key."""
    return f"{image_repository(project, name)}-step"


def remove_step_images(store: Store, project: str) -> list[str]:
    """`podman rmi` the step-cache tags of this project's images that nothing still needs; the
    tags removed. Run after `remove`, so the final images gc removed no longer hold theirs.

    A step tag stays while (1) it is an ancestor of an image podman keeps under another name
    (its layers are the first layers of that image: the steps of a retained release's or the
    newest bake's image, which a rebake of a later step reuses), or (2) it is newer than the
    newest image recorded under its name (a bake that failed or is running: its retry starts
    from there). Removing a tag never frees a layer another image uses (podman keeps those)."""
    newest = image_records.newest_time_per_name(store)
    repos = {step_repository(project, name): name for name in newest}
    listing = engine.run(["images", "--format", "json"], timeout=120.0).stdout
    images = [i for i in json.loads(listing or "[]") if isinstance(i, dict)]
    steps: list[tuple[str, str, float]] = []  # (tag, image id, created)
    users: list[str] = []  # ids of images podman keeps under a name that is not a step tag
    for image in images:
        names = [str(n) for n in image.get("Names") or []]
        ours = [n for n in names if n.rpartition(":")[0] in repos]
        steps += [(n, str(image["Id"]), float(image.get("Created") or 0)) for n in ours]
        if len(ours) < len(names):
            users.append(str(image["Id"]))
    if not steps:
        return []
    layers = _layers([*{i for _, i, _ in steps}, *users])
    kept_chains = [layers[i] for i in users if i in layers]
    removed = []
    for tag, ident, created in steps:
        chain = layers.get(ident)
        needed = chain is None or any(c[:len(chain)] == chain for c in kept_chains)
        # podman's Created is in whole seconds, the record's time is not: a step made in the
        # second the newest image was recorded counts as newer (kept; gc errs on keeping).
        if needed or created >= math.floor(newest[repos[tag.rpartition(":")[0]]]):
            continue
        if engine.run(["rmi", tag], timeout=120.0, check=False).returncode == 0:
            removed.append(tag)
    if removed:
        store.event("image.removed", f"removed {len(removed)} step image tag(s)",
                    data={"steps": removed})
    return removed


def _layers(ids: list[str]) -> dict[str, list[str]]:
    """image id -> its layer diff ids, bottom first (one `podman image inspect` for all)."""
    proc = engine.run(["image", "inspect", *ids], timeout=120.0, check=False)
    try:
        data = json.loads(proc.stdout or "[]")
    except ValueError:
        return {}
    return {str(d["Id"]): [str(x) for x in (d.get("RootFS") or {}).get("Layers") or []]
            for d in data if isinstance(d, dict) and "Id" in d}
