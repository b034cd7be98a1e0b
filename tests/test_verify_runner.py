"""run_checks against a real throwaway instance: LocalCompute (sandboxed process on loopback)
running a stdlib http app from an image folder."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.base import Image, Instance
from kiln.platforms.instance_rows import from_row
from kiln.platforms.local.compute import LocalCompute
from kiln.spec.models import ImageSpec, ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register
from kiln.verify import CheckResult, SuiteResult, run_checks
from verify_helpers import app_service, make_image

pytestmark = pytest.mark.e2e


class Compute(LocalCompute):
    """LocalCompute plus what the tests assert on: which instances it launched, as what."""

    def test_instances(self) -> list[Instance]:
        return [from_row(r) for r in self.store.query(
            "SELECT * FROM instances WHERE kind = 'test' ORDER BY created_at")]

    @property
    def launched(self) -> list[Instance]:
        return [from_row(r) for r in self.store.query("SELECT * FROM instances")]

    @property
    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.store.query("SELECT kind FROM instances")]

    def running(self) -> list[str]:
        insts = self.launched
        return [o.instance_id for o in self.observe(insts) if o.alive] + [
            i.id for i in insts if self.state_of(i) not in ("stopped", "dead")]


@pytest.fixture
def compute(tmp_path: Path) -> Iterator[Compute]:
    store = Store.open(tmp_path / "home")
    c = Compute(store, tmp_path / "home", "vt")
    yield c
    for inst in c.launched:
        c.terminate(inst, 1.0)
    store.close()


@pytest.fixture
def image(tmp_path: Path, compute: Compute) -> Image:
    return register(compute.store, make_image(tmp_path / "store"))


def run(compute: Compute, image: Image, tests: list[dict[str, Any]], base_dir: Path,
        service: ServiceSpec | None = None, *, no_service: bool = False,
        seen: list[CheckResult] | None = None) -> SuiteResult:
    spec = ImageSpec.model_validate({"tests": tests})
    suite = run_checks(image, spec, compute=compute, service_name="web",
                       service=None if no_service else (service or app_service()),
                       base_dir=base_dir, on_result=seen.append if seen is not None else None)
    assert compute.running() == [], "the test instance must be disposed of"
    return suite


PASSING: list[dict[str, Any]] = [
    {"http": {"path": "/healthz", "status": 200, "body_contains": "ok"}},
    {"http": {"path": "/json", "json": {"status": "ok", "greeting": "hello",
                                        "items.1.name": "b", "n": 3}}},
    {"http": {"path": "/missing", "status": 404}},
    {"command": "test \"$GREETING\" = hello && test \"$IMAGE_ENV\" = from-image"},
    {"command": {"run": "echo out; echo err >&2; exit 3", "exit_code": 3,
                 "stdout_contains": "out", "stderr_contains": "err"}},
    {"port": 8000},
    {"file": {"path": "/app/config.txt", "mode": "0644", "contains": "blue"}},
    {"file": {"path": "bin/run.sh", "mode": "755"}},
    {"file": {"path": "/etc/nope", "exists": False}},
]

FAILING: list[tuple[dict[str, Any], str]] = [
    ({"http": {"path": "/healthz", "status": 201}}, "status 200, expected 201"),
    ({"http": {"path": "/healthz", "body_contains": "banana"}}, "does not contain 'banana'"),
    ({"http": {"path": "/json", "json": {"status": "down"}}}, "json field status is 'ok'"),
    ({"http": {"path": "/json", "json": {"items.7.name": "x"}}}, "json field items.7.name is "
                                                                 "missing"),
    ({"command": "exit 2"}, "exit code 2, expected 0"),
    ({"command": {"run": "echo a", "stdout_contains": "zzz"}}, "stdout does not contain 'zzz'"),
    ({"command": {"run": "echo a", "stderr_contains": "zzz"}}, "stderr does not contain 'zzz'"),
    ({"port": 1}, ":1: "),
    ({"file": {"path": "/app/config.txt", "mode": "0600"}}, "mode 0644, expected 0600"),
    ({"file": {"path": "/app/config.txt", "contains": "red"}}, "does not contain 'red'"),
    ({"file": {"path": "/app/nope"}}, "does not exist in the image"),
    ({"file": {"path": "/app/config.txt", "exists": False}}, "exists, expected it absent"),
    ({"file": {"path": "../../etc/passwd"}}, "does not exist in the image"),
]


def test_every_builtin_kind_passes(compute: Compute, image: Image, tmp_path: Path) -> None:
    seen: list[CheckResult] = []
    suite = run(compute, image, PASSING, tmp_path, seen=seen)
    assert [r.detail for r in suite.results if not r.passed] == []
    assert suite.passed
    assert [r.index for r in seen] == list(range(len(PASSING)))  # live, in order
    assert [r.kind for r in suite.results] == ["http"] * 3 + ["command"] * 2 + ["port"] + [
        "file"] * 3
    assert suite.healthy_at is not None and suite.started_at <= suite.healthy_at
    assert suite.suite_digest.startswith("sha256:")
    assert compute.kinds == ["test"]  # launched through the platform's own path, as a test


def test_impossible_expectations_fail_with_a_reason(compute: Compute, image: Image,
                                                    tmp_path: Path) -> None:
    suite = run(compute, image, [c for c, _ in FAILING], tmp_path)
    assert not suite.passed
    for result, (_, expected) in zip(suite.results, FAILING, strict=True):
        assert not result.passed, result
        assert expected in result.detail, result
        assert "\n" not in result.detail


def test_hanging_checks_time_out(compute: Compute, image: Image, tmp_path: Path) -> None:
    t0 = time.monotonic()
    suite = run(compute, image, [
        {"command": {"run": "sleep 30", "timeout": "500ms"}},
        {"http": {"path": "/slow", "timeout": "500ms"}},
        {"command": "true"},
    ], tmp_path)
    assert time.monotonic() - t0 < 10
    hang_cmd, hang_http, ok = suite.results
    assert not hang_cmd.passed and hang_cmd.detail == "timed out after 0.5s"
    assert not hang_http.passed and "no response within 0.5s" in hang_http.detail
    assert ok.passed


def test_never_healthy_fails_app_checks_and_leaves_nothing(compute: Compute, image: Image,
                                                           tmp_path: Path) -> None:
    sick = app_service(env={"UNHEALTHY": "1"},
                       health={"path": "/healthz", "timeout": "200ms", "deadline": "1s"})
    suite = run(compute, image, [
        {"http": {"path": "/healthz"}},
        {"command": "true"},
        {"port": 8000},
        {"testinfra": "does-not-matter.py"},
    ], tmp_path, sick)
    http, cmd, port, ti = suite.results
    assert cmd.passed  # runs in the instance env without waiting for the app
    for r in (http, port, ti):
        assert not r.passed and r.detail.startswith(
            "not run: the instance never became healthy: not healthy (GET /healthz) within 1s; "
            "last answer: status 503, expected 200"), r  # what was seen
    assert compute.running() == []


def test_instance_that_exits_is_reported(compute: Compute, image: Image,
                                         tmp_path: Path) -> None:
    crash = app_service(command="echo boom-at-start >&2; exit 1")
    suite = run(compute, image, [{"http": {"path": "/"}}], tmp_path, crash)
    assert "the instance exited; last log line: boom-at-start" in suite.results[0].detail


def test_missing_testinfra_path_fails_cleanly(compute: Compute, image: Image,
                                              tmp_path: Path) -> None:
    suite = run(compute, image, [{"testinfra": "tests/image/"}], tmp_path)
    (r,) = suite.results
    assert not r.passed and r.detail == f"testinfra path {tmp_path}/tests/image does not exist"


def test_interrupt_disposes_of_the_instance(compute: Compute, image: Image,
                                            tmp_path: Path) -> None:
    def interrupt(_: CheckResult) -> None:
        raise KeyboardInterrupt

    spec = ImageSpec.model_validate({"tests": [{"command": "true"}, {"command": "true"}]})
    with pytest.raises(KeyboardInterrupt):
        run_checks(image, spec, compute=compute, service_name="web", service=app_service(),
                   base_dir=tmp_path, on_result=interrupt)
    assert len(compute.launched) == 1 and compute.running() == []


def test_image_without_service(compute: Compute, image: Image, tmp_path: Path) -> None:
    suite = run(compute, image, [
        {"file": {"path": "server.py"}},
        {"command": "test -f server.py && test \"$IMAGE_ENV\" = from-image"},
        {"http": {"path": "/"}},
        {"port": 8000},
    ], tmp_path, no_service=True)
    f, c, h, p = suite.results
    assert f.passed and c.passed, (f, c)
    assert "no service runs image web" in h.detail and "no service runs image web" in p.detail


def test_only_file_checks_launch_nothing(compute: Compute, image: Image,
                                         tmp_path: Path) -> None:
    suite = run(compute, image, [{"file": {"path": "server.py"}}], tmp_path)
    assert suite.passed and compute.launched == [] and suite.instance_id is None


TESTINFRA = textwrap.dedent('''
    import json
    import urllib.request


    def test_runs_in_image_root(host):
        assert host.file("server.py").exists
        assert host.file("app/config.txt").contains("blue")
        assert host.run("echo $GREETING").stdout.strip() == "hello"


    def test_instance_address(kiln_instance):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(kiln_instance.url + "/json", timeout=5) as resp:
            assert json.load(resp)["greeting"] == "hello"


    def test_env_address():
        import os
        assert os.environ["KILN_INSTANCE_URL"].startswith("http://127.")
''')


def test_real_testinfra_folder(compute: Compute, image: Image, tmp_path: Path) -> None:
    folder = tmp_path / "tests" / "image"
    folder.mkdir(parents=True)
    (folder / "test_image.py").write_text(TESTINFRA)
    (folder / "test_broken.py").write_text(
        "def test_config_is_red(host):\n    assert host.file('app/config.txt').contains('red')\n")
    suite = run(compute, image, [{"testinfra": "tests/image/"}], tmp_path)
    (r,) = suite.results
    assert not r.passed
    assert r.detail.startswith("3 passed, 1 failed; test_broken::test_config_is_red[kiln://web-")
    by_name = {c.name.split("[")[0]: c for c in r.cases}
    assert set(by_name) == {"test_broken::test_config_is_red",
                            "test_image::test_runs_in_image_root",
                            "test_image::test_instance_address", "test_image::test_env_address"}
    assert not by_name["test_broken::test_config_is_red"].passed
    (folder / "test_broken.py").unlink()
    suite = run(compute, image, [{"testinfra": "tests/image/test_image.py"}], tmp_path)
    assert suite.passed, suite.results[0].detail
    assert not list(folder.rglob("__pycache__")) and not (folder / ".pytest_cache").exists()


def test_hanging_testinfra_is_killed(compute: Compute, image: Image,
                                     tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang(host):\n"
                                           "    time.sleep(60)\n")
    t0 = time.monotonic()
    suite = run(compute, image, [{"testinfra": "test_hang.py", "timeout": "3s"}], tmp_path)
    assert suite.results[0].detail == "timed out after 3s"
    assert time.monotonic() - t0 < 15
