"""A release runs with the configuration recorded with it; one that no longer loads is an error
naming the release, never a silent fall back to today's spec (which health-checked an old
release on a new path: 503s)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import StateError
from kiln.rollout.release_config import release_health, release_spec
from kiln.spec.models import ServiceSpec
from kiln.state.store import Store

GOOD = ServiceSpec(image="web", command="python -m app", port=8000, listen="127.0.0.1:8080",
                   health={"path": "/old-health"}).model_dump(mode="json", by_alias=True)


def store_with(tmp_path: Path, config: Any) -> Store:
    store = Store.open(tmp_path / ".kiln")
    text = config if isinstance(config, str) else json.dumps(config)
    with store.tx() as c:
        c.execute("INSERT INTO releases(id, service, number, image_digest, config_digest, "
                  "config_json, created_at) VALUES ('web-r1','web',1,'sha256:x','c',?,?)",
                  (text, time.time()))
    return store


def test_a_release_loads_the_config_it_was_made_with(tmp_path: Path) -> None:
    store = store_with(tmp_path, GOOD)
    spec = release_spec(store, "web-r1")
    assert spec is not None and spec.health.path == "/old-health"
    health = release_health(store, "web-r1")
    assert health is not None and health.path == "/old-health"
    assert release_spec(store, "web-r9") is None and release_health(store, "web-r9") is None
    store.close()


def test_a_rule_added_since_stops_the_spec_but_not_routing(tmp_path: Path) -> None:
    """A key today's kiln refuses (here: a negative replica count): the full spec is an error
    naming the release and the key; its health check still loads for routing."""
    store = store_with(tmp_path, {**GOOD, "replicas": -1})
    with pytest.raises(StateError, match=r"release web-r1: its recorded configuration does not "
                                         r"load \(replicas: "):
        release_spec(store, "web-r1")
    health = release_health(store, "web-r1")
    assert health is not None and health.path == "/old-health"
    store.close()


@pytest.mark.parametrize(("config", "match"), [
    ("{not json", "is not JSON"),
    ("[1, 2]", "is not a mapping"),
    ({**GOOD, "health": {"path": "/x", "timeout": "forever"}},
     r"recorded health check does not load \(timeout: "),
])
def test_a_broken_record_is_one_line_naming_the_release(tmp_path: Path, config: Any,
                                                        match: str) -> None:
    store = store_with(tmp_path, config)
    with pytest.raises(StateError, match=match) as info:
        release_health(store, "web-r1")
    assert "web-r1" in str(info.value) and "\n" not in str(info.value)
    store.close()


def _digest_of(data: dict[str, Any]) -> str:
    import hashlib

    blob = json.dumps({k: v for k, v in data.items() if k != "rollout"}, sort_keys=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def test_a_field_added_by_a_kiln_upgrade_is_not_a_config_change(tmp_path: Path) -> None:
    """A release recorded by an older kiln lacks today's `stop_timeout` (and its digest was taken
    without it): today's spec with the default is the same config; a real edit is not."""
    from kiln.platforms.base import Release
    from kiln.rollout.release_config import config_digest, load_release, same_config

    old = {k: v for k, v in GOOD.items() if k != "stop_timeout"}
    store = store_with(tmp_path, old)
    release = load_release(store, "web-r1")
    release = Release("web-r1", "web", 1, release.image, release.config, _digest_of(old))
    today = ServiceSpec.model_validate(GOOD)
    assert config_digest(today) != release.config_digest  # the digest alone would redeploy
    assert same_config(store, release, config_digest(today))
    edited = ServiceSpec.model_validate({**GOOD, "env": {"GREETING": "hi"}})
    assert not same_config(store, release, config_digest(edited))
    store.close()


def test_a_release_launches_with_the_env_and_workdir_it_was_made_with(tmp_path: Path) -> None:
    """Two images with the same files but other env/workdir steps share one image row (keyed
    by the files' digest; the last bake's env wins there): each release keeps its own."""
    from kiln.platforms.base import Image
    from kiln.rollout.release_config import launch_image, load_release

    store = store_with(tmp_path, GOOD)
    with store.tx() as c:
        c.execute("UPDATE releases SET image_env_json = ?, image_workdir = ? WHERE id = 'web-r1'",
                  (json.dumps({"ROLE": "web"}), "srv"))
        c.execute("INSERT INTO releases(id, service, number, image_digest, config_digest, "
                  "config_json, created_at) VALUES ('web-r0','web',0,'sha256:x','c','{}',0)")
    shared = Image("worker", "sha256:x", "/x", env={"ROLE": "worker"}, workdir="")
    r1 = launch_image(lambda d: shared, load_release(store, "web-r1"))
    assert r1.env == {"ROLE": "web"} and r1.workdir == "srv" and r1.digest == "sha256:x"
    old = launch_image(lambda d: shared, load_release(store, "web-r0"))
    assert old == shared  # a release made before releases recorded it: the store's row
    store.close()


def test_a_new_release_records_its_images_env_and_workdir(tmp_path: Path) -> None:
    from test_serve_controller import CANARY, deployed

    proj, _ = deployed(tmp_path, CANARY)  # the fake image has an env step VERSION=1
    row = proj.store.one("SELECT image_env_json, image_workdir FROM releases WHERE id = 'web-r1'")
    assert row is not None
    assert json.loads(row["image_env_json"]) == {"VERSION": "1"} and row["image_workdir"] == ""
    proj.close()
