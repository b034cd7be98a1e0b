"""Table tests: what `validate` must refuse because `deploy` would crash on it or do something
absurd (issue 10), each as one `file:line:col: path: message` line; and what it only warns about."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import SpecError
from kiln.spec.loader import load_spec

BASE = """\
project: shop
images:
  web:
    steps:
      - copy: {copy}
        to: app/
services:
  web:
    image: web
    command: python -m app
    listen: 127.0.0.1:8080
{extra}"""


def spec(extra: str = "", copy: str = "app/") -> str:
    return BASE.format(extra=extra, copy=copy)


def problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "kiln.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "kiln.yaml")
    return info.value.problems


REFUSED: list[tuple[str, str, str]] = [
    ("env name with =", spec("    env: {'A=B': x}\n"), "env name 'A=B'"),
    ("env name with a space", spec("    env: {'A B': x}\n"), "env name 'A B'"),
    ("env value with NUL", spec('    env: {A: "x\\0y"}\n'), "env A: value contains a NUL"),
    ("huge env value", spec(f"    env: {{A: {'x' * 200_000}}}\n"), "at most 32768 allowed"),
    ("secret name with =", spec("    secrets: {'A=B': env:X}\n"), "secret name 'A=B'"),
    ("image env step name", spec().replace("        to: app/\n",
                                           "        to: app/\n      - env: {'1X': y}\n"),
     "env name '1X'"),
    ("weights going down", spec("    rollout:\n      steps:\n        - {weight: 10}\n"
                                "        - {weight: 5}\n"), "weight goes down from 10 to 5"),
    ("absurd pause", spec("    rollout:\n      steps:\n        - {weight: 10, pause: "
                          "99999999999h}\n"), "longer than the 30 days"),
    ("absurd number pause", spec("    rollout:\n      steps:\n        - {weight: 10, pause: "
                                 "1e12}\n"), "longer than the 30 days"),
    ("zero health interval", spec("    health: {interval: 0s}\n"), "must be above 0"),
    ("zero health timeout", spec("    health: {timeout: 0}\n"), "must be above 0"),
    ("zero health deadline", spec("    health: {deadline: 0ms}\n"), "must be above 0"),
    ("zero stop_timeout", spec("    stop_timeout: 0s\n"), "stop_timeout must be above 0"),
    ("copy from a parent folder", spec(copy="../secrets/"), "is outside the project"),
    ("copy from deep parent", spec(copy="app/../../x"), "is outside the project"),
    ("copy from an absolute path", spec(copy="/etc/"), "is outside the project"),
    ("read_only_paths relative", spec("    read_only_paths: [data]\n"), "absolute path"),
    ("read_only_paths root", spec("    read_only_paths: [/]\n"), "whole host"),
    ("mirror on haproxy", "router: haproxy\n" + spec(
        "    rollout:\n      steps:\n        - {mirror: 100%, pause: 2m}\n"
        "        - {weight: 50}\n"),
     "steps[0].mirror: mirroring is not available on router haproxy; use router: traefik"),
    ("mirror on the ALB", spec("    rollout:\n      steps:\n        - {mirror: 10%}\n").replace(
        "project: shop\n", "project: shop\nplatform: aws\naws: {region: eu-west-1, subnets: "
        "[subnet-0abc1234], base_ami: ami-0abc12345678}\n"),
     "mirroring is not available on the ALB (platform aws)"),
    ("mirror with a weight", spec("    rollout:\n      steps:\n        - {mirror: 100%, "
                                  "weight: 10}\n"), "a mirror step serves no user"),
    ("mirror after users were served", spec(
        "    rollout:\n      steps:\n        - {weight: 10}\n        - {mirror: 100%}\n"),
     "steps[1]: a mirror step comes before the first weighted step"),
    ("mirror share not a percent", spec("    rollout:\n      steps:\n        - {mirror: "
                                        "all}\n"), "expected a share like 100% or 10%"),
    ("mirror share above 100", spec("    rollout:\n      steps:\n        - {mirror: 150%}\n"),
     "expected at most 100, got 150"),
    ("mirror in blue-green", spec("    rollout:\n      strategy: blue-green\n      steps:\n"
                                  "        - {mirror: 100%}\n"), "mirror steps need strategy "
     "canary"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_refused_with_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'kiln.yaml'}:") and expected in found[0], found


ACCEPTED = [
    spec(copy="app/../app/"),
    spec(copy="./app"),
    spec("    env: {_A1: x, GREETING: hello}\n"),
    spec("    rollout:\n      steps:\n        - {weight: 10, pause: 720h}\n"
         "        - {weight: 10}\n        - {weight: 100}\n"),
    spec("    health: {interval: 100ms, timeout: 1s, deadline: 5s}\n"),
    spec("    read_only_paths: [/opt/data]\n"),
    spec("    rollout:\n      steps:\n        - {preview: true}\n        - {mirror: 100%, "
         "pause: 2m}\n        - {mirror: 10}\n        - {weight: 50}\n"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted(tmp_path: Path, text: str) -> None:
    (tmp_path / "kiln.yaml").write_text(text)
    load_spec(tmp_path / "kiln.yaml")


def test_code_changing_env_keys_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text(spec("    env: {LD_PRELOAD: /x.so, OK: y}\n"
                                             "    secrets: {PYTHONPATH: env:P}\n"))
    loaded = load_spec(tmp_path / "kiln.yaml")
    assert loaded.spec.warnings() == [
        "services.web.env LD_PRELOAD changes what code the instance runs; make sure it is meant",
        "services.web.env PYTHONPATH changes what code the instance runs; make sure it is meant"]
