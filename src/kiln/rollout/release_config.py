"""Where a release is loaded: one `Release` value (its image's digest, env and workdir, its
recorded service config, its config digest) from its `releases` row.

Releases never change, so every launch, route, health check and stop of a release reads that
value, never the current spec: a release launched or health-checked with a newer spec's config
runs what it never ran (a rollback answered with today's env; an old release drained as
unhealthy on a new health path: 503s). A stored config that no longer loads (written by another
kiln version, or refused by a newer rule) is an error naming the release where its spec is needed,
not a silent fallback; routing, which needs only the health check, loads just that part.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from kiln.errors import NotFound, StateError
from kiln.platforms.base import RELEASE_HINT, Image, Release, ReleaseImage
from kiln.spec.models import Health, ServiceSpec
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.store import Store

HINT = RELEASE_HINT


def config_digest(service: ServiceSpec) -> str:
    """What makes a release besides its image: how it is run. Rollout settings are not part of it."""
    data = service.model_dump(mode="json", by_alias=True, exclude={"rollout"})
    blob = json.dumps(data, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _config(release_id: str, text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError as exc:
        raise StateError(f"release {release_id}: its recorded configuration is not JSON ({exc})",
                         hint=HINT) from exc
    if not isinstance(data, dict):
        raise StateError(f"release {release_id}: its recorded configuration is not a mapping",
                         hint=HINT)
    return data


def from_release_row(row: Any) -> Release:
    """The release a `releases` row records (the row needs every column)."""
    rid = str(row["id"])
    env_json = row["image_env_json"]
    image = ReleaseImage(str(row["image_digest"]))
    if env_json is not None:  # else: made before releases recorded the image's env and workdir
        image = ReleaseImage(image.digest, json.loads(env_json), str(row["image_workdir"] or ""))
    return Release(rid, str(row["service"]), int(row["number"]), image,
                   _config(rid, row["config_json"]), str(row["config_digest"]))


def find_release(store: Store, release_id: str) -> Release | None:
    row = release_records.row(store, release_id)
    return None if row is None else from_release_row(row)


def load_release(store: Store, release_id: str) -> Release:
    """The release `release_id`, as one immutable value (NotFound when the state has none)."""
    release = find_release(store, release_id)
    if release is None:
        raise NotFound(f"release {release_id} not found in state")
    return release


def releases_of(store: Store, service: str) -> list[Release]:
    """Every release of a service, oldest first."""
    return [from_release_row(r) for r in release_records.rows_of_service(store, service)]


def record_release(store: Store, service: str, image: Image, spec: ServiceSpec,
                   skip_tests: bool) -> Release:
    """Make the service's next release: `image` run with `spec`, both recorded for good."""
    cfg = config_digest(spec)
    with store.tx() as c:
        number = release_records.next_number(c, service)
        rid = f"{service}-r{number}"
        release = Release.of(rid, service, number, ReleaseImage.of(image), spec, cfg)
        release_records.insert(
            c, rid, service, number, image.digest, cfg, json.dumps(dict(release.config)),
            time.time(), skip_tests, json.dumps(dict(image.env), sort_keys=True),
            image.workdir)
        c.event("release.created", f"{rid}: image {image.digest[:19]}", service=service,
                data={"image": image.digest, "config": cfg, "skip_tests": skip_tests})
    return release


def same_config(store: Store, release: Release, cfg: str) -> bool:
    """Whether `release` runs with the config whose digest is `cfg`. The recorded digest was taken
    under the kiln that made the release; a field added since (with its default) changes a new
    digest but not how the release runs, so the recorded config is also read under today's
    model: upgrading kiln alone never makes a new release."""
    if cfg == release.config_digest:
        return True
    try:
        return config_digest(release.spec) == cfg
    except StateError:
        return False


def release_spec(store: Store, release_id: str) -> ServiceSpec | None:
    """The service spec `release_id` was created with; None if there is no such release."""
    release = find_release(store, release_id)
    return None if release is None else release.spec


def release_health(store: Store, release_id: str) -> Health | None:
    """The health check `release_id` was created with; None if there is no such release.
    Only the `health` part must load: a rule added to other keys since does not stop routing."""
    release = find_release(store, release_id)
    return None if release is None else release.health


def launch_image(images: Callable[[str], Image], release: Release) -> Image:
    """The image `release` launches: the stored image of its digest (verified by `images`), with
    the env and workdir the release was made with."""
    return release.image.applied_to(images(release.image.digest))


def went_live(store: Store, service: str) -> list[str]:
    """Releases that served all of the service's traffic at some point (the target of a promoted
    rollout, rollbacks included), most recently promoted first. An aborted or rolled-back
    canary never did."""
    seen: list[str] = []
    for rid in rollout_records.promoted_targets(store, service):
        if rid not in seen:
            seen.append(rid)
    return seen


def previous_live(store: Store, service: str, current: str) -> str | None:
    """The rollback target: the live release promoted most recently before `current` last was.
    By construction it went live (never an aborted canary's release)."""
    live: Sequence[str] = went_live(store, service)
    return next((rid for rid in live if rid != current), None)
