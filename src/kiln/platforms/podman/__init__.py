"""The podman platform: images built by `podman build` from kiln's steps (bases from a registry-
less Debian bootstrap or any image podman has), instances as locked-down containers published on
loopback addresses, and the local platform's Traefik router and access-log metrics.

Each part is built on first use; nothing here runs podman until a part is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.platforms.local import LocalPlatform

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Compute, Image


class PodmanPlatform(LocalPlatform):
    """Builder and Compute are podman's; router and metrics are the local platform's."""

    @property
    def builder(self) -> Builder:
        if self._builder is None:
            from kiln.platforms.podman.builder import PodmanBuilder

            self._builder = PodmanBuilder(self.store, self.home, self.project)
        return self._builder

    @property
    def compute(self) -> Compute:
        if self._compute is None:
            from kiln.platforms.podman.compute import PodmanCompute

            self._compute = PodmanCompute(self.store, self.home, self.project)
        return self._compute

    def image(self, digest: str) -> Image:
        from kiln.bake.imagestore import get_image

        return get_image(self.store, digest)

    def verify_image(self, digest: str) -> str | None:
        """The image is still in podman's storage under the id kiln recorded."""
        from kiln.platforms.podman.images import verify

        return verify(self.store, digest)

    def remove_images(self, keep: set[str]) -> list[str]:
        from kiln.platforms.podman.images import remove

        return remove(self.store, keep, self.project)

    def remove_build_cache(self) -> list[str]:
        """The `-step` tags of the builder's step cache that nothing needs any more."""
        from kiln.platforms.podman.images import remove_step_images

        return remove_step_images(self.store, self.project)
