"""Baking: cached steps into sealed, content-addressed images.

Public API: `LocalBuilder` (the local platform's Builder), `list_images`, `get_image`,
`remove_images`, `ImageRecord`, and the pure hashing helpers `tree_digest` and `step_key`.
"""

from kiln.bake.hashing import step_key, tree_digest
from kiln.bake.imagestore import ImageRecord, get_image, list_images, remove_images
from kiln.bake.local import LocalBuilder

__all__ = [
    "ImageRecord",
    "LocalBuilder",
    "get_image",
    "list_images",
    "remove_images",
    "step_key",
    "tree_digest",
]
