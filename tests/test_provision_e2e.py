"""End to end on podman: the ansible-greeter and puppet-greeter examples bake from the shared
Debian base (the podman tests' own), pass their image tests (what the provisioner did), go live,
rebake from the cache, and canary a second release to 100%.

CI cost is kept down by doing the expensive thing once per example: the Ansible example proves
a changed role file reruns its step and the ones after it; the Puppet example (whose step
installs and purges puppet, ~30 s) canaries a configuration change instead of a second bake.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.podman import project_name, teardown_project
from kiln.testing.project import ROOT, Proj, free_port

pytestmark = pytest.mark.e2e


def _example(tmp_path: Path, name: str) -> Proj:
    folder = tmp_path / name
    shutil.copytree(ROOT / "examples" / name, folder,
                    ignore=shutil.ignore_patterns(".kiln", "__pycache__"))
    p = Proj(folder, free_port())
    text = (folder / "kiln.yaml").read_text()
    text = re.sub(r"listen: 127\.0\.0\.1:\d+", f"listen: {p.listen}", text)
    # A new name per run: provisioned images are tagged by project, so this bake is a cold one.
    text = text.replace(f"project: {name}", f"project: t-{name[:7]}-{uuid.uuid4().hex[:8]}")
    (folder / "kiln.yaml").write_text(text)
    return p


@pytest.fixture
def ansible_greeter(tmp_path: Path, podman_base: str) -> Iterator[Proj]:
    p = _example(tmp_path, "ansible-greeter")
    try:
        yield p
    finally:
        teardown(p)


@pytest.fixture
def puppet_greeter(tmp_path: Path, podman_base: str) -> Iterator[Proj]:
    p = _example(tmp_path, "puppet-greeter")
    try:
        yield p
    finally:
        teardown(p)


def teardown(p: Proj) -> None:
    """Destroy the project, then remove the images its bakes tagged (one name per run)."""
    teardown_project(p)
    prefix = f"localhost/kiln/{project_name(p)}-"
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, timeout=60, check=False)
    tags = [t for t in listed.stdout.split() if t.startswith(prefix)]
    if tags:
        subprocess.run(["podman", "rmi", "--force", *tags], capture_output=True, timeout=120,
                       check=False)


def steps_of(output: str) -> list[tuple[str, str]]:
    """(status, first word of the step) of each bake step line, as `kiln bake` prints them
    ('  web [2/3]    ran  40.50s  ansible ...') and as `kiln deploy` does ('web bake ran ansible')."""
    return re.findall(r"(?:\[\d+/\d+\]\s+|\sbake )(ran|cached|failed)\s+(?:[\d.]+s\s+)?(\S+)",
                      output)


def greeting(p: Proj) -> dict[str, str]:
    with urllib.request.urlopen(f"http://{p.listen}/", timeout=10) as resp:
        body: dict[str, str] = json.loads(resp.read())
    return body


def deploy_live(p: Proj, release: str, *, new_image: bool = True) -> str:
    res = p.kiln("deploy", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    if new_image:  # the image tests of what the provisioner did (an image is tested once)
        assert "4 passed" in res.stdout, res.stdout
    assert p.weights() == {release: 100}
    return res.stdout


def test_ansible_example_bakes_tests_caches_and_canaries(ansible_greeter: Proj) -> None:
    p = ansible_greeter
    out = deploy_live(p, "web-r1")
    assert ("ran", "ansible") in steps_of(out), out
    assert greeting(p) == {"greeting": "hello from ansible", "provisioner": "ansible"}

    again = p.kiln("bake")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s for s, _ in steps_of(again.stdout)] == ["cached"] * 3, again.stdout

    template = p.dir / "bake/roles/greeter/templates/greeter.conf.j2"
    template.write_text(template.read_text().replace("greeting = {{ greeting }}",
                                                     "greeting = {{ greeting }}, twice"))
    rebake = p.kiln("bake")
    assert rebake.returncode == 0, rebake.stdout + rebake.stderr
    assert [s for s, _ in steps_of(rebake.stdout)] == ["cached", "ran", "ran"], rebake.stdout

    out = deploy_live(p, "web-r2")
    assert "canary web-r1 -> web-r2" in out and re.search(r"web-r2[ =]20%", out), out
    assert greeting(p)["greeting"] == "hello from ansible, twice"

    (p.dir / "bake/site.yml").write_text("- hosts: all\n  tasks:\n    - name: x\n"
                                         "      command: [unclosed\n")
    bad = p.kiln("bake")
    assert bad.returncode == 1
    assert "bake/site.yml:5:1" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert p.weights() == {"web-r2": 100}


def test_puppet_example_bakes_tests_caches_and_canaries(puppet_greeter: Proj) -> None:
    p = puppet_greeter
    out = deploy_live(p, "web-r1")
    assert ("ran", "puppet") in steps_of(out), out
    assert greeting(p) == {"greeting": "hello from puppet", "provisioner": "puppet"}

    again = p.kiln("bake")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s for s, _ in steps_of(again.stdout)] == ["cached"] * 3, again.stdout

    spec = p.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace("    replicas: 2\n",
                                             "    replicas: 2\n    env: {RELEASE: two}\n"))
    out = deploy_live(p, "web-r2", new_image=False)
    assert "canary web-r1 -> web-r2" in out and re.search(r"web-r2[ =]20%", out), out
    assert greeting(p)["provisioner"] == "puppet"
