"""A release's recorded configuration: how it runs, whatever today's kiln.yaml says.

Releases never change, so routing, healing and the dashboard read the config stored with the
release, never the current spec: a release health-checked with a newer spec's path is drained as
unhealthy (seen as 503s behind both routers). A stored config that no longer loads (written by
another kiln version, or refused by a newer rule) is therefore an error naming the release, not
a silent fallback; routing, which needs only the health check, loads just that part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from kiln.errors import StateError
from kiln.platforms.base import Image, Release
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store

HINT = "kiln deploy makes a new release from today's kiln.yaml; kiln history lists the releases"


def config_digest(service: ServiceSpec) -> str:
    """What makes a release besides its image: how it is run. Rollout settings are not part of it."""
    data = service.model_dump(mode="json", by_alias=True, exclude={"rollout"})
    blob = json.dumps(data, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def same_config(store: Store, release: Release, cfg: str) -> bool:
    """Whether `release` runs with the config whose digest is `cfg`. The recorded digest was taken
    under the kiln that made the release; a field added since (with its default) changes a new
    digest but not how the release runs, so the recorded config is also read under today's
    model: upgrading kiln alone never makes a new release."""
    if cfg == release.config_digest:
        return True
    try:
        spec = release_spec(store, release.id)
    except StateError:
        return False
    return spec is not None and config_digest(spec) == cfg


def _recorded(store: Store, release_id: str) -> dict[str, Any] | None:
    row = store.one("SELECT config_json FROM releases WHERE id = ?", (release_id,))
    if row is None:
        return None
    try:
        data = json.loads(row["config_json"] or "{}")
    except ValueError as exc:
        raise StateError(f"release {release_id}: its recorded configuration is not JSON ({exc})",
                         hint=HINT) from exc
    if not isinstance(data, dict):
        raise StateError(f"release {release_id}: its recorded configuration is not a mapping",
                         hint=HINT)
    return data


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top)"
    return f"{where}: {err['msg']}"


def release_spec(store: Store, release_id: str) -> ServiceSpec | None:
    """The service spec `release_id` was created with; None if there is no such release."""
    data = _recorded(store, release_id)
    if data is None:
        return None
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        raise StateError(f"release {release_id}: its recorded configuration does not load "
                         f"({_first_error(exc)})", hint=HINT) from exc


def release_health(store: Store, release_id: str) -> Health | None:
    """The health check `release_id` was created with; None if there is no such release.
    Only the `health` part must load: a rule added to other keys since does not stop routing."""
    data = _recorded(store, release_id)
    if data is None:
        return None
    try:
        return Health.model_validate(data.get("health") or {})
    except ValidationError as exc:
        raise StateError(f"release {release_id}: its recorded health check does not load "
                         f"({_first_error(exc)})", hint=HINT) from exc


def release_image(store: Store, images: Callable[[str], Image], release: Release) -> Image:
    """The image `release` launches: its digest's image with the env and workdir the release
    was made with. The image store keys images by their files' digest, so two images with the
    same files and other `env`/`workdir` steps share a row (the last bake's); the release's own
    record says which it was."""
    image = images(release.image_digest)
    row = store.one("SELECT image_env_json, image_workdir FROM releases WHERE id = ?",
                    (release.id,))
    if row is None or row["image_env_json"] is None:
        return image  # made before releases recorded it
    return dataclasses.replace(image, env=json.loads(row["image_env_json"]),
                               workdir=str(row["image_workdir"] or ""))
