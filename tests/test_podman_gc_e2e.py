"""gc on podman: the builder's step-cache tags (`<project>-<image>-step:<key>`, the image before
and after an ansible/puppet step) go once no image podman keeps is built on them, while a
retained image's steps and a failed bake's newer steps stay."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.bake import provisioners
from kiln.errors import BakeError
from kiln.platforms.podman import images
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.podman import BASE

pytestmark = pytest.mark.e2e


def podman(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["podman", *args], input=stdin, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def provision(prepared: provisioners.Prepared, *, image: str, tag: str,
              on_line: object = None) -> str:
    """Stands in for puppet (tested on its own): commits a layer that depends on its inputs."""
    podman("build", "-q", "--pull=never", "-t", tag, "-f", "-",
           stdin=f"FROM {image}\nRUN echo {prepared.inputs[:12]} > /provisioned\n")
    return podman("image", "inspect", "--format", "{{.Id}}", tag).strip()


def step_tags(project: str) -> set[str]:
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
    return {t for t in out.split() if t.startswith(f"localhost/kiln/{project}-web-step:")}


@pytest.fixture
def project(podman_base: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(provisioners, "provision", provision)
    name = f"gcstep{uuid.uuid4().hex[:6]}"
    try:
        yield name
    finally:
        out = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
        tags = [t for t in out.split() if t.startswith(f"localhost/kiln/{name}-")]
        if tags:
            subprocess.run(["podman", "rmi", *tags], capture_output=True, timeout=120)


def test_gc_removes_step_images_nothing_needs(tmp_path: Path, project: str) -> None:
    home, src = tmp_path / ".kiln", tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('hi')\n")
    store = Store.open(home)
    builder = PodmanBuilder(store, home, project)
    repo = images.step_repository(project, "web")

    def spec(manifest: str, check: str = "test -f /provisioned") -> ImageSpec:
        (src / "site.pp").write_text(manifest)
        return ImageSpec.model_validate({"base": BASE.model_dump(), "steps": [
            {"copy": "app/", "to": "app/"}, {"puppet": {"manifest": "site.pp"}},
            {"run": check}]})

    def puppet_tag(manifest: str) -> str:
        s = spec(manifest)
        return f"{repo}:{builder.keys(s, src, builder.base_id(s))[1][:16]}"

    try:
        v1 = builder.build("web", spec("notify { 'v1': }\n"), base_dir=src)
        after_v1 = step_tags(project)  # the image before the puppet step, and what it committed
        assert len(after_v1) == 2
        # Step images carry whole seconds: let v2's record be clearly newer than v1's steps.
        deadline = time.monotonic() + 5
        while time.time() < max(float(podman("image", "inspect", "--format", "{{.Created.Unix}}",
                                             t)) for t in after_v1) + 2.0 \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        v2 = builder.build("web", spec("notify { 'v2': }\n"), base_dir=src)
        with pytest.raises(BakeError):  # a failed bake: its retry starts from v3's puppet image
            builder.build("web", spec("notify { 'v3': }\n", check="false"), base_dir=src)
        before = step_tags(project)
        assert len(before) == 4  # one before-puppet image shared by all, three puppet results
        v1_puppet = puppet_tag("notify { 'v1': }\n")
        assert v1_puppet in before

        images.remove(store, {v1.digest, v2.digest}, project)  # both retained: their steps stay
        assert images.remove_step_images(store, project) == []
        images.remove(store, {v2.digest}, project)  # v1 collected: only its own puppet image goes
        assert images.remove_step_images(store, project) == [v1_puppet]
        assert step_tags(project) == before - {v1_puppet}
        assert podman("image", "inspect", "--format", "{{.Id}}", v2.ref).strip() in v2.digest
    finally:
        store.close()


def test_gc_untags_an_image_another_project_shares(tmp_path: Path, project: str) -> None:
    """The same inputs bake the same image id in two projects; gc of one removes its own tag
    (podman refuses `rmi ID` for an image with two tags) and leaves the other's image."""
    (tmp_path / "app.txt").write_text("shared\n")
    spec = ImageSpec.model_validate({"base": BASE.model_dump(), "steps": [{"copy": "app.txt"}]})
    mine, theirs = Store.open(tmp_path / "a"), Store.open(tmp_path / "b")
    try:
        a = PodmanBuilder(mine, tmp_path / "a", project).build("web", spec, base_dir=tmp_path)
        b = PodmanBuilder(theirs, tmp_path / "b", f"{project}-b").build("web", spec,
                                                                        base_dir=tmp_path)
        assert a.digest == b.digest
        assert images.remove(mine, set(), project) == [a.digest]
        out = podman("images", "--format", "{{.Repository}}", "--filter", f"id={a.digest[7:]}")
        assert out.split() == [f"localhost/kiln/{project}-b-web"]
        assert images.remove(theirs, set(), f"{project}-b") == [b.digest]
        assert subprocess.run(["podman", "image", "exists", b.digest[7:]],
                              timeout=60).returncode == 1
    finally:
        mine.close()
        theirs.close()
