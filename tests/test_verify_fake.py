"""run_checks' control flow on the in-memory FakeCompute: launch, health, dispose, secrets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.base import ExecResult, Image, Instance
from kiln.platforms.fake.compute import FakeCompute
from kiln.spec.models import ImageSpec
from kiln.verify import CheckResult, run_checks
from kiln.verify.runner import IDLE_COMMAND
from verify_helpers import app_service, make_image


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path / "store")


def _run(compute: FakeCompute, image: Image, tests: list[dict[str, Any]], base: Path,
         **kw: Any) -> Any:
    kw.setdefault("service", app_service())
    return run_checks(image, ImageSpec.model_validate({"tests": tests}), compute=compute,
                      service_name="web", base_dir=base, **kw)


def _alive(compute: FakeCompute) -> list[str]:
    return [i for i, p in compute.procs.items() if p.alive]


def test_launches_one_test_instance_and_disposes(image: Image, tmp_path: Path) -> None:
    compute = FakeCompute(home=tmp_path)
    seen: list[tuple[Instance, str, Mapping[str, str]]] = []

    def handler(inst: Instance, command: str, env: Mapping[str, str]) -> ExecResult:
        seen.append((inst, command, env))
        return ExecResult(0, env.get("DB_PASSWORD", ""), "")

    compute.exec_handler = handler
    suite = _run(compute, image, [{"command": {"run": "echo", "stdout_contains": "s3cret"}}],
                 tmp_path, env={"DB_PASSWORD": "s3cret"})
    assert suite.passed, suite.results
    (proc,) = compute.procs.values()
    assert proc.kind == "test" and proc.env["GREETING"] == "hello"
    assert proc.env["DB_PASSWORD"] == "s3cret"  # launched with the secrets, like a deploy
    assert [c[0] for c in compute.calls] == ["launch", "terminate"]
    assert _alive(compute) == [] and suite.instance_id == proc.instance.id
    assert suite.healthy_at is None  # no check needed the app


def test_unhealthy_instance_fails_app_checks(image: Image, tmp_path: Path) -> None:
    compute = FakeCompute(home=tmp_path)
    compute.unhealthy_releases.add(f"web-test-{'ab' * 6}")
    svc = app_service(health={"path": "/healthz", "deadline": "200ms"})
    suite = _run(compute, image, [{"port": 8000}, {"http": {"path": "/"}}, {"command": "true"}],
                 tmp_path, service=svc)
    port, http, cmd = suite.results
    assert "not healthy (GET /healthz) within 0.2s" in port.detail
    assert http.detail == port.detail and cmd.passed
    assert _alive(compute) == []


def test_exited_instance(image: Image, tmp_path: Path) -> None:
    compute = FakeCompute(home=tmp_path)
    compute.exit_releases.add(f"web-test-{'ab' * 6}")
    suite = _run(compute, image, [{"http": {"path": "/"}}], tmp_path)
    assert suite.results[0].detail.startswith("not run: the instance never became healthy: the "
                                              "instance exited")


def test_launch_error_fails_instance_checks_but_file_checks_run(image: Image,
                                                                tmp_path: Path) -> None:
    from kiln.errors import PlatformError

    class Broken(FakeCompute):
        def launch(self, *a: Any, **kw: Any) -> list[Instance]:
            raise PlatformError("no addresses left")

    suite = _run(Broken(home=tmp_path), image,
                 [{"command": "true"}, {"file": {"path": "server.py"}}], tmp_path)
    cmd, f = suite.results
    assert cmd.detail == "could not launch a test instance: no addresses left" and f.passed


def test_no_service_launches_idle_instance(image: Image, tmp_path: Path) -> None:
    compute = FakeCompute(home=tmp_path)
    suite = _run(compute, image, [{"command": "true"}, {"http": {"path": "/"}}], tmp_path,
                 service=None)
    (proc,) = compute.procs.values()
    assert proc.kind == "test" and not proc.alive
    assert suite.results[0].passed
    assert "no service runs image web" in suite.results[1].detail
    assert IDLE_COMMAND.startswith("exec sleep")


def test_interrupt_during_a_check_disposes(image: Image, tmp_path: Path) -> None:
    compute = FakeCompute(home=tmp_path)

    def interrupt(_: CheckResult) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(compute, image, [{"command": "true"}], tmp_path, on_result=interrupt)
    assert _alive(compute) == [] and compute.calls[-1][0] == "terminate"
