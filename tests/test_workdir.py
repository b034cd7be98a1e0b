"""`workdir:` applies to the service as Dockerfile WORKDIR does: the image records its last
`workdir` step, and the service command and `exec` start there (fake, local and podman)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.bake.imagestore import get_image
from kiln.bake.steps import final_workdir
from kiln.errors import BakeError
from kiln.platforms.base import Builder, Compute, Image, Release, ReleaseImage
from kiln.platforms.fake.builder import FakeBuilder
from kiln.platforms.fake.compute import FakeCompute
from kiln.platforms.local.builder import LocalBuilder
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.platforms.podman.compute import PodmanCompute
from kiln.spec.models import Health, ImageSpec, ServiceSpec, WorkdirStep
from kiln.state.store import Store
from kiln.testing.podman import BASE, remove_containers

APP = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.getcwd().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
'''


@pytest.mark.parametrize(("workdirs", "expected"), [
    ([], ""),
    (["srv"], "srv"),
    (["/srv/app/"], "srv/app"),
    (["srv", "."], ""),
    (["srv", "other/./x"], "other/x"),
    (["a/../b"], "b"),
])
def test_the_last_workdir_step_wins_relative_to_the_image_root(workdirs: list[str],
                                                                expected: str) -> None:
    assert final_workdir([WorkdirStep(workdir=w) for w in workdirs], "web") == expected


def test_a_workdir_outside_the_image_is_refused_naming_the_step() -> None:
    with pytest.raises(BakeError, match=r"images\.web\.steps\[1\]: workdir '\.\./x' leaves"):
        final_workdir([WorkdirStep(workdir="srv"), WorkdirStep(workdir="../x")], "web")


@pytest.fixture(params=["fake", pytest.param("local", marks=pytest.mark.e2e),
                        pytest.param("podman", marks=pytest.mark.e2e)])
def platform(request: pytest.FixtureRequest, tmp_path: Path
             ) -> Iterator[tuple[str, Store, Builder, Compute, Any]]:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    project = f"wd-{tmp_path.name[-10:]}"
    builder: Builder
    compute: Compute
    base: Any = "python"
    if request.param == "fake":
        builder, compute = FakeBuilder(), FakeCompute(store, project)
    elif request.param == "local":
        builder, compute = LocalBuilder(store, home), LocalCompute(store, home, project)
    else:
        request.getfixturevalue("podman_base")
        builder, compute = (PodmanBuilder(store, home, project),
                            PodmanCompute(store, home, project))
        base = BASE.model_dump()
    try:
        yield request.param, store, builder, compute, base
    finally:
        for inst in compute.list_instances(kinds=("service", "test", "dev"),  # type: ignore[attr-defined]
                                           live_only=False):
            compute.terminate(inst, timeout=2.0)
        if request.param == "podman":
            remove_containers(compute.container_name(""))  # type: ignore[attr-defined]
        store.close()


def test_the_service_and_exec_start_in_the_images_workdir(
        platform: tuple[str, Store, Builder, Compute, Any], tmp_path: Path) -> None:
    name, store, builder, compute, base = platform
    (tmp_path / "app.py").write_text(APP)
    spec = ImageSpec.model_validate({"base": base, "steps": [
        {"copy": "app.py", "to": "srv/web/"}, {"workdir": "srv/web"}]})
    image = builder.build("web", spec, base_dir=tmp_path)
    assert image.workdir.rstrip("/").endswith("srv/web")
    if name != "fake":  # the store remembers it, so a rollback starts the same way
        assert get_image(store, image.digest).workdir == image.workdir
    service = ServiceSpec(image="web", command="python app.py", port=28181,
                          listen="127.0.0.1:9")
    release = Release.of("web-r1", "web", 1, ReleaseImage.of(image), service, "c")
    [inst] = compute.launch("web", service, release, image, 1, env={})
    healthy, failed = compute.wait_healthy([inst], Health(path="/", timeout=2.0, deadline=60.0))
    assert healthy == [inst], compute.log_path(inst).read_text() if failed else ""
    result = compute.exec(inst, "pwd", timeout=30.0)
    assert result.exit_code == 0 and result.stdout.strip().endswith("/srv/web"), result
    if name != "fake":
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(inst.url + "/", timeout=5) as resp:
            assert resp.read().decode().endswith("/srv/web")


@pytest.mark.e2e
def test_a_local_workdir_no_step_created_exists_in_the_image(tmp_path: Path) -> None:
    """As WORKDIR: the folder is made if no step made it, so the service can start in it."""
    home = tmp_path / ".kiln"
    store = Store.open(home)
    try:
        spec = ImageSpec.model_validate({"base": "python", "steps": [{"workdir": "data/run"}]})
        image: Image = LocalBuilder(store, home).build("web", spec, base_dir=tmp_path)
        assert image.workdir == "data/run"
        assert (Path(image.ref) / "root" / "data" / "run").is_dir()
    finally:
        store.close()


def test_an_aws_instance_unit_starts_in_the_images_workdir() -> None:
    from kiln.platforms.aws.boot import user_data

    service = ServiceSpec(image="web", command="python app.py", port=8000, listen="127.0.0.1:9")

    def script(workdir: str = "") -> str:
        return user_data("web", service, {}, workdir, "eu-west-1")

    # The unit starts through the exec script, which enters the image's workdir.
    assert "cd /opt/kiln/root/srv/web\n" in script("srv/web")
    assert "mkdir -p /opt/kiln /opt/kiln/root/srv/web\n" in script("srv/web")
    assert "cd /opt/kiln/root\n" in script()
    assert "ExecStart=/bin/sh /etc/kiln-web.exec 'python app.py'" in script()
