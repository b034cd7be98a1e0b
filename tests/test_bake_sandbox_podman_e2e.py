"""A podman bake step cannot write outside its image either (issue 20): the escapes tried on the
local platform (tests/test_bake_sandbox_e2e.py), each in a real `podman build`. Steps run in the
build container, so host paths they name are the container's own; a sentinel folder on the host
must stay exactly as it was."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import BakeError
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.podman import remove_images

pytestmark = pytest.mark.e2e

PROJECT = f"bakebox-escape-{os.getpid()}"


@pytest.fixture
def builder(tmp_path: Path, podman_base: str) -> Iterator[PodmanBuilder]:
    store = Store.open(tmp_path / ".kiln")
    b = PodmanBuilder(store, tmp_path / ".kiln", PROJECT)
    try:
        yield b
    finally:
        store.close()
        for name in ("abs", "rel", "dotdot", "write", "offline", "online"):
            remove_images(PROJECT, name)


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("outside")
    folder.chmod(0o1777)
    (folder / "keep.txt").write_text("untouched\n")
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"], \
        f"a bake wrote outside its image: {sorted(p.name for p in folder.iterdir())}"
    assert (folder / "keep.txt").read_text() == "untouched\n"


def spec(base: str, *steps: dict[str, object], network: str = "default") -> ImageSpec:
    return ImageSpec.model_validate({"base": base, "steps": list(steps), "network": network})


def project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    src.mkdir(exist_ok=True)
    (src / "payload.txt").write_text("payload\n")
    return src


def cat(image: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "run", "--rm", "--network=none", image, "cat", path],
                          capture_output=True, text=True, timeout=120, check=False)


def test_copy_through_an_absolute_symlink_lands_in_the_image(
        builder: PodmanBuilder, podman_base: str, tmp_path: Path, sentinel: Path) -> None:
    s = spec(podman_base, {"run": f"ln -s {sentinel} link"},
             {"copy": "payload.txt", "to": "link/"})
    image = builder.build("abs", s, base_dir=project(tmp_path))
    # The symlink resolves in the container's root: the file is in the image, not on the host.
    assert cat(image.ref, f"{sentinel}/payload.txt").stdout == "payload\n"


def test_copy_through_a_climbing_relative_symlink_lands_in_the_image(
        builder: PodmanBuilder, podman_base: str, tmp_path: Path, sentinel: Path) -> None:
    climb = "../" * 40 + str(sentinel).lstrip("/")
    s = spec(podman_base, {"run": f"mkdir -p a && ln -s {climb} a/b"},
             {"copy": "payload.txt", "to": "a/b/evil.txt"})
    image = builder.build("rel", s, base_dir=project(tmp_path))
    assert cat(image.ref, f"{sentinel}/evil.txt").stdout == "payload\n"


def test_dotdot_in_a_copy_target_is_refused(builder: PodmanBuilder, podman_base: str,
                                            tmp_path: Path, sentinel: Path) -> None:
    rel = os.path.relpath(sentinel, "/")
    s = spec(podman_base, {"copy": "payload.txt", "to": "../" * 40 + rel + "/evil.txt"})
    with pytest.raises(BakeError, match=r"copy destination '.*' leaves the image"):
        builder.build("dotdot", s, base_dir=project(tmp_path))


def test_run_step_writes_only_the_container(builder: PodmanBuilder, podman_base: str,
                                            tmp_path: Path, sentinel: Path) -> None:
    s = spec(podman_base, {"run": f"mkdir -p {sentinel} && echo pwned > {sentinel}/evil.txt "
                                  "&& echo pwned > /root/kiln-bake-evil"})
    image = builder.build("write", s, base_dir=project(tmp_path))
    assert cat(image.ref, f"{sentinel}/evil.txt").stdout == "pwned\n"
    assert not Path("/root/kiln-bake-evil").exists()


def test_network_none_cuts_the_steps_off(builder: PodmanBuilder, podman_base: str,
                                         tmp_path: Path) -> None:
    probe = "test -z \"$(ls /sys/class/net | grep -v '^lo$')\""  # no interface but loopback
    with pytest.raises(BakeError, match="step 1/1"):
        builder.build("online", spec(podman_base, {"run": probe}), base_dir=project(tmp_path))
    builder.build("offline", spec(podman_base, {"run": probe}, network="none"),
                  base_dir=project(tmp_path))
