"""Images kiln baked with podman: integrity (drift) and garbage collection."""

from __future__ import annotations

import json

from kiln.bake.imagestore import get_image
from kiln.platforms.podman import engine
from kiln.state.store import Store


def verify(store: Store, digest: str) -> str | None:
    """None when podman still has the image under the recorded id; else what is wrong."""
    image = get_image(store, digest)
    found = engine.image_id(image.ref)
    if found is None:
        return f"image {image.name} {digest}: podman no longer has it"
    if found != image.digest:
        return f"image {image.name} {digest}: podman's image {image.ref} has id {found}"
    return None


def remove(store: Store, keep: set[str], project: str) -> list[str]:
    """`podman rmi` every kiln image not in `keep` by this project's tag (one still used by a
    container stays in podman's storage; its row goes), then delete their rows.

    By tag, not id: podman refuses to delete by id an image with more than one tag, and the same
    inputs give the same image id in two projects (staging and production baked from one
    source) or two image names; untagging ours leaves the image to the other tags' owners and
    deletes it when ours was the last."""
    rows = [r for r in store.query("SELECT digest, name, key FROM images")
            if r["digest"] not in keep]
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
            c.execute("DELETE FROM images WHERE digest = ?", (digest,))
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
    newest = {str(r["name"]): float(r["at"]) for r in store.query(
        "SELECT name, MAX(created_at) AS at FROM images GROUP BY name")}
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
        if needed or created >= newest[repos[tag.rpartition(":")[0]]]:
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
