"""Podman images are verified against the state at every launch: a file overwritten in an image's
COPY layer (its `diff/` folder in podman's storage, same size, mtime put back) makes rollback and
a heal refuse with one line naming the layer and the file, `kiln drift` report it, and a bake
that podman's layer cache would hand the layer to refuse it."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.platforms.podman.images import layer_dirs
from kiln.testing.podman import (
    make_project,
    project_name,
    project_networks,
    remove_images,
    teardown_project,
)
from kiln.testing.project import CANARY_FAST, Proj

pytestmark = pytest.mark.e2e


@pytest.fixture
def shop(tmp_path: Path, podman_base: str) -> Iterator[Proj]:
    p = make_project(tmp_path, rollout=CANARY_FAST, replicas=1)
    # A file no other project has: this project's COPY layers are its own (podman shares equal
    # layers between images, and this test overwrites one).
    (p.dir / "app" / "marker.txt").write_text(secrets.token_hex(16) + "\n")
    restore: list[tuple[Path, bytes, os.stat_result]] = []
    p.restore = restore  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        for path, data, st in restore:  # never leave a tampered layer in shared storage
            path.write_bytes(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        teardown_project(p)
        remove_images(project_name(p), "web")
    assert project_networks(p) == []  # destroy took the networks, also after a refused heal


def ok(p: Proj, *args: str) -> str:
    res = p.kiln(*args, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def digests(p: Proj) -> list[str]:
    return [str(i["digest"]) for i in json.loads(ok(p, "images", "--json"))]


def tamper_layer(p: Proj, digest: str) -> Path:
    """Overwrite app/behaviour.json in the image's layer that holds it: same size, mtime back."""
    out = subprocess.run(["podman", "image", "inspect", digest.removeprefix("sha256:")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    folders = [Path(d) for _, d in layer_dirs(json.loads(out)[0])]
    # kiln's image root is /app, the copy step's target app/: /app/app/behaviour.json
    target = next(f / "app" / "app" / "behaviour.json" for f in reversed(folders)
                  if (f / "app" / "app" / "behaviour.json").is_file())
    st = target.stat()
    data = target.read_bytes()
    p.restore.append((target, data, st))  # type: ignore[attr-defined]
    evil = re.sub(rb'("version": ")([^"]*)', lambda m: m.group(1) + b"X" * len(m.group(2)),
                  data)
    target.write_bytes(evil)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.read_bytes() != data
    return target


def test_a_tampered_podman_layer_is_refused_at_launch_and_reported_by_drift(shop: Proj) -> None:
    ok(shop, "deploy")
    shop.behave(version="2")
    ok(shop, "deploy")
    second, first = digests(shop)[:2]

    tamper_layer(shop, first)
    res = shop.kiln("rollback", "web", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "layer" in lines[0] and "app/behaviour.json: content differs" in lines[0], lines
    assert "refused to roll web back" in lines[0], lines

    tamper_layer(shop, second)
    res = shop.kiln("drift", "--json", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    tampered = [i for i in json.loads(res.stdout) if i["kind"] == "tampered-image"]
    assert len(tampered) == 1 and "app/behaviour.json: content differs" in \
        tampered[0]["detail"], tampered

    # A heal: the container dies, `kiln deploy` (nothing changed) launches a replacement.
    out = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True,
                         text=True, timeout=60).stdout.split()
    mine = [n for n in out if n.startswith(f"kiln-{project_name(shop)}-")]
    assert len(mine) == 1, out
    subprocess.run(["podman", "kill", mine[0]], capture_output=True, timeout=60, check=True)
    res = shop.kiln("deploy", timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "app/behaviour.json: content differs" in res.stderr and "refused to launch" in \
        res.stderr and "Traceback" not in res.stderr, res.stdout + res.stderr

    # podman's layer cache hands the modified COPY layer to a new bake (a later step changed):
    # the bake refuses it instead of baking it into a new image.
    spec = shop.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace('run: python -c "import app"',
                                             'run: python -c "import app; print(2)"'))
    res = shop.kiln("bake", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "in podman's cache was modified" in res.stderr and \
        "app/behaviour.json: content differs" in res.stderr, res.stdout + res.stderr


def layer_keys(p: Proj, digests: list[str]) -> list[set[str]]:
    """The launch path's check of each image (it records the fast path's keys; `kiln drift`'s
    full check, read-only, does not), after every file of its layers has a ctime in a past
    second; the paths keyed, per layer."""
    from kiln.bake.imagestore import get_image
    from kiln.bake.manifest import Manifest, decode_keys
    from kiln.platforms.podman.images import layers_problem
    from kiln.project import Project
    from kiln.state.records import verified
    from kiln.testing.images import wait_keyable

    project = Project.open(p.dir / "kiln.yaml")
    try:
        out = []
        for digest in digests:
            data = json.loads(subprocess.run(
                ["podman", "image", "inspect", digest.removeprefix("sha256:")],
                capture_output=True, text=True, timeout=60, check=True).stdout)[0]
            layers = layer_dirs(data)
            wait_keyable([Path(folder) for _, folder in layers])
            assert layers_problem(project.store, get_image(project.store, digest)) is None
            for diff_id, _ in layers:
                blob = bytes(project.store.one(
                    "SELECT manifest FROM layer_manifests WHERE diff_id = ?",
                    (diff_id,))["manifest"])
                saved = verified.load(project.store, f"layer:{diff_id}", blob)
                out.append(set() if saved is None else
                           set(decode_keys(Manifest.decode(blob), saved)))
        return out
    finally:
        project.close()


def test_a_layer_edit_is_caught_on_the_fast_path_by_rollback_and_heal(shop: Proj) -> None:
    ok(shop, "deploy")
    shop.behave(version="2")
    ok(shop, "deploy")
    second, first = digests(shop)[:2]
    keyed = layer_keys(shop, [first, second])
    # The fast path is on: the file about to be edited is trusted by its key until it changes.
    assert sum("app/app/behaviour.json" in k for k in keyed) == 2, keyed

    tamper_layer(shop, first)
    res = shop.kiln("rollback", "web", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "app/behaviour.json: content differs" in lines[0] and \
        "refused to roll web back" in lines[0], lines

    tamper_layer(shop, second)
    out = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True,
                         text=True, timeout=60).stdout.split()
    mine = [n for n in out if n.startswith(f"kiln-{project_name(shop)}-")]
    assert len(mine) == 1, out
    subprocess.run(["podman", "kill", mine[0]], capture_output=True, timeout=60, check=True)
    res = shop.kiln("deploy", timeout=300)  # the heal of a dead container
    assert res.returncode != 0, res.stdout + res.stderr
    refused = [ln for ln in res.stderr.splitlines() if "refused to launch" in ln]
    assert len(refused) == 1 and "app/behaviour.json: content differs" in refused[0], \
        res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
