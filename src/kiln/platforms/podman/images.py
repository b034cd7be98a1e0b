"""Images kiln baked with podman: integrity (drift) and garbage collection."""

from __future__ import annotations

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


def remove(store: Store, keep: set[str]) -> list[str]:
    """`podman rmi` every kiln image not in `keep` (one still used by a container stays in
    podman's storage; its row goes), then delete their rows."""
    removed = [str(r["digest"]) for r in store.query("SELECT digest, ref FROM images")
               if r["digest"] not in keep]
    for digest in removed:
        engine.run(["rmi", digest.removeprefix("sha256:")], timeout=120.0, check=False)
    with store.tx() as c:
        for digest in removed:
            c.execute("DELETE FROM images WHERE digest = ?", (digest,))
        if removed:
            c.event("image.removed", f"removed {len(removed)} image(s)", data={"digests": removed})
    return removed
