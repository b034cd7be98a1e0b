"""Pure parts of platform aws's instance scripts and SSM probes: table tests, no AWS."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kiln.errors import KilnError
from kiln.platforms.aws import boot, probes
from kiln.platforms.base import ExecResult
from kiln.spec.models import HttpCheck, ServiceSpec


def service(**over: Any) -> ServiceSpec:
    data: dict[str, Any] = {"image": "web", "command": "python3 -m app", "listen": "80",
                            "port": 8000, "env": {"GREETING": "hi there"}}
    data.update(over)
    return ServiceSpec.model_validate(data)


def test_user_data_carries_references_never_values() -> None:
    spec = service(secrets={"DB": "ssm:/shop/db", "API": "secretsmanager:arn:x"})
    script = boot.user_data("web", spec, {"GREETING": "hi there"}, "app", "eu-west-1")
    assert "aws ssm get-parameter --region eu-west-1 --with-decryption --name /shop/db" in script
    assert "aws secretsmanager get-secret-value --region eu-west-1 --secret-id arn:x" in script
    assert "GREETING=hi there" in script and "PORT=8000" in script
    assert "cd /opt/kiln/root/app" in script
    assert "ExecStart=/bin/sh /etc/kiln-web.exec 'python3 -m app'" in script
    assert base64.b64decode(boot.encoded(script)).decode() == script


@pytest.mark.parametrize("ref", ["env:DB", "file:db.txt"])
def test_local_references_are_refused(ref: str) -> None:
    with pytest.raises(KilnError, match="use ssm:/parameter/name or secretsmanager:ARN"):
        boot.secret_lines("web", {"DB": ref}, "eu-west-1")


def test_exec_goes_through_the_service_script() -> None:
    assert boot.exec_lines("web", "echo 'hi'") == ["/bin/sh /etc/kiln-web.exec 'echo '\"'\"'hi'\"'\"''"]


@pytest.mark.parametrize(("stdout", "found"), [
    ("kiln-http-status:200\nbody", "200"),
    ("noise\nkiln-http-status:503\n", "503"),
    ("", None),
    ("kiln-http-statu", None),
])
def test_marker(stdout: str, found: str | None) -> None:
    assert probes._marker(ExecResult(0, stdout, ""), "kiln-http-status:") == found


@pytest.mark.parametrize(("stdout", "passed", "detail"), [
    ("kiln-http-status:200\nshop 1", True, "status 200"),
    ("kiln-http-status:500\noops", False, "status 500, expected 200"),
    ("kiln-http-status:000\n", False, "no answer"),
    ("", False, "ssm returned no output (expected the HTTP status curl prints; exit code 0)"),
])
def test_http_check_reads_only_what_ssm_returned(monkeypatch: pytest.MonkeyPatch, stdout: str,
                                                 passed: bool, detail: str) -> None:
    monkeypatch.setattr(probes.ssm, "run", lambda *a, **k: ExecResult(0, stdout, ""))
    out = probes.check_http(object(), "i-1", 8000, HttpCheck.Spec(path="/", status=200))  # type: ignore[arg-type]
    assert out.passed is passed and detail in out.detail, out


def test_image_paths_stay_in_the_root() -> None:
    assert probes.image_path("app/x.py") == "/opt/kiln/root/app/x.py"
    assert probes.image_path("/../../etc/passwd") == "/opt/kiln/root/etc/passwd"
