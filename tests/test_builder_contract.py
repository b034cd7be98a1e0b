"""The Builder contract, run against the fake, the local platform and podman: the same inputs
give the same image without rerunning anything, an edit reruns only the steps from it on, `env`
steps reach the image, a failing step is a BakeError naming it, and a missing copy source too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import BakeError
from kiln.platforms import capabilities as caps
from kiln.platforms.aws import AwsPlatform
from kiln.platforms.aws.bake import AmiBuilder
from kiln.platforms.base import Builder, Image, StepEvent
from kiln.platforms.fake.builder import FakeBuilder
from kiln.platforms.local import LocalPlatform
from kiln.platforms.local.builder import LocalBuilder
from kiln.platforms.podman import PodmanPlatform
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.podman import BASE, remove_images

PROJECT = "bcontract"


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Path]]:
    """One store per module, so the local base venv is made once."""
    home = tmp_path_factory.mktemp("builder-contract")
    store = Store.open(home)
    yield store, home
    store.close()


@pytest.fixture(params=["fake", pytest.param("local", marks=pytest.mark.e2e),
                        pytest.param("podman", marks=pytest.mark.e2e)])
def platform(request: pytest.FixtureRequest,
             store_home: tuple[Store, Path]) -> tuple[Builder, Any]:
    """(builder, base) for each platform."""
    store, home = store_home
    if request.param == "fake":
        return FakeBuilder(), "python"
    if request.param == "local":
        return LocalBuilder(store, home), "python"
    request.getfixturevalue("podman_base")
    request.getfixturevalue("podman_images")
    return PodmanBuilder(store, home, PROJECT), BASE.model_dump()


@pytest.fixture
def podman_images(folder: Path) -> Iterator[None]:
    """The images (and step-cache tags) a podman test bakes leave podman's storage after it."""
    yield
    remove_images(PROJECT, folder.name)


def bake(platform: tuple[Builder, Any], folder: Path, *steps: dict[str, Any],
         no_cache: bool = False) -> tuple[Image, list[str]]:
    """The image and the status of each user step ('ran' / 'cached')."""
    builder, base = platform
    events: list[StepEvent] = []
    spec = ImageSpec.model_validate({"base": base, "steps": list(steps)})
    image = builder.build(folder.name, spec, base_dir=folder, no_cache=no_cache,
                          progress=events.append)
    done = {e.index: e.status for e in events if e.index >= 1 and e.status in ("ran", "cached")}
    return image, [done[i] for i in sorted(done)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A project folder with files to copy; its name (the image's) is unique per test."""
    app = tmp_path / f"img{abs(hash(tmp_path)) % 10**8}"
    (app / "app").mkdir(parents=True)
    # Unique content: podman's layer cache outlives test runs, and a first bake must run.
    (app / "app" / "main.py").write_text(f"print('v1')  # {uuid.uuid4()}\n")
    (app / "notes.txt").write_text(f"one {uuid.uuid4()}\n")
    return app


STEPS: list[dict[str, Any]] = [
    {"copy": "app/", "to": "app/"},
    {"env": {"GREETING": "hi", "MODE": "test"}},
    {"run": "test -f app/main.py"},
    {"copy": "notes.txt", "to": "notes.txt"},
]


def test_same_inputs_same_image_nothing_rerun(platform: tuple[Builder, Any],
                                              folder: Path) -> None:
    first, statuses = bake(platform, folder, *STEPS)
    assert first.digest.startswith("sha256:") and len(first.digest) == 71
    assert "ran" in statuses
    again, statuses = bake(platform, folder, *STEPS)
    assert again.digest == first.digest and statuses == ["cached"] * 4


def test_a_late_edit_reruns_only_the_steps_after_it(platform: tuple[Builder, Any],
                                                   folder: Path) -> None:
    first, _ = bake(platform, folder, *STEPS)
    (folder / "notes.txt").write_text(f"two {uuid.uuid4()}\n")
    second, statuses = bake(platform, folder, *STEPS)
    assert second.digest != first.digest
    assert statuses == ["cached", "cached", "cached", "ran"]


def test_no_cache_reruns_every_step(platform: tuple[Builder, Any], folder: Path) -> None:
    bake(platform, folder, *STEPS)
    _, statuses = bake(platform, folder, *STEPS, no_cache=True)
    assert statuses == ["ran"] * 4


def test_env_steps_reach_the_image(platform: tuple[Builder, Any], folder: Path) -> None:
    image, _ = bake(platform, folder, *STEPS)
    assert dict(image.env) == {"GREETING": "hi", "MODE": "test"}


def test_a_failing_step_is_a_bake_error_naming_it(platform: tuple[Builder, Any],
                                                  folder: Path) -> None:
    builder, _ = platform
    if isinstance(builder, FakeBuilder):
        builder.fail.add(folder.name)
    with pytest.raises(BakeError, match=r"step 2/2"):
        bake(platform, folder, {"copy": "app/", "to": "app/"},
             {"run": "echo broken >&2; exit 3"})


def test_a_missing_copy_source_is_a_bake_error(platform: tuple[Builder, Any],
                                               folder: Path) -> None:
    with pytest.raises(BakeError, match=r"copy source 'nope/' not found"):
        bake(platform, folder, {"copy": "nope/", "to": "app/"})


@pytest.mark.e2e
def test_podman_runs_provisioner_steps_between_containerfile_runs(
        store_home: tuple[Store, Path], podman_base: str, folder: Path, podman_images: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A puppet/ansible step splits the Containerfile: the steps before it are built, the
    provisioner gets that image and the steps after it build on what it committed. (The
    provisioner itself, kiln.bake.provisioners, is tested on its own; here it tags its input.)"""
    import subprocess

    from kiln.bake import provisioners

    seen: list[str] = []

    def provision(prepared: provisioners.Prepared, *, image: str, tag: str,
                  on_line: object = None) -> str:
        seen.append(image)
        subprocess.run(["podman", "tag", image, tag], check=True, capture_output=True)
        return subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", tag],
                              check=True, capture_output=True, text=True).stdout.strip()

    monkeypatch.setattr(provisioners, "provision", provision)
    (folder / "site.pp").write_text("notify { 'hi': }\n")
    store, home = store_home
    platform = (PodmanBuilder(store, home, PROJECT), BASE.model_dump())
    steps = [{"copy": "app/", "to": "app/"}, {"puppet": {"manifest": "site.pp"}},
             {"run": "test -f app/main.py"}]
    image, statuses = bake(platform, folder, *steps)
    assert statuses == ["ran", "ran", "ran"] and len(seen) == 1
    assert seen[0] != podman_base  # it got the image with the copy step in it
    again, statuses = bake(platform, folder, *steps)
    assert again.digest == image.digest and statuses == ["cached"] * 3 and len(seen) == 1


@pytest.mark.parametrize(("part", "capabilities"), [
    (FakeBuilder, set()),
    (LocalBuilder, {"ImageCheck", "Resolver", "SpecLocator"}),
    (PodmanBuilder, {"ImageCheck", "Resolver"}),
    (AmiBuilder, {"Resolver"}),  # an AMI cannot change once created
])
def test_declares_its_capabilities(part: type, capabilities: set[str]) -> None:
    """Each builder names its optional capabilities, and the core's `isinstance` finds exactly
    those (no method matching one by chance, none declared but missing)."""
    assert caps.declared(part, caps.BUILDER) == capabilities
    assert caps.answered(part, caps.BUILDER) == capabilities
    assert caps.declared(part, caps.ROUTER + caps.COMPUTE + caps.PLATFORM) == set()


@pytest.mark.parametrize(("part", "capabilities"), [
    (LocalPlatform, set()), (PodmanPlatform, set()), (AwsPlatform, {"OwnDrift"}),
])
def test_platform_declares_its_capabilities(part: type, capabilities: set[str]) -> None:
    assert caps.declared(part, caps.PLATFORM) == capabilities
    assert caps.answered(part, caps.PLATFORM) == capabilities
