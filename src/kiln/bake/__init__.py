"""Baking: cached steps into sealed, content-addressed images.

Public API: `list_images`, `get_image`, `remove_images`, `ImageRecord`, and the pure hashing
helpers `tree_digest` and `step_key`. The local platform's builder, its step cache and its venv
helper are platform code: kiln.platforms.local.builder, .stepcache, .venv.
"""

from kiln.bake.hashing import step_key, tree_digest
from kiln.bake.imagestore import ImageRecord, get_image, list_images, remove_images

__all__ = [
    "ImageRecord",
    "get_image",
    "list_images",
    "remove_images",
    "step_key",
    "tree_digest",
]
