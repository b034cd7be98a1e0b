"""What `kiln test` and the deploy gate call: test an image once per (digest, suite digest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from kiln.errors import NotFound, VerifyError
from kiln.platforms.base import Builder, Compute, Image
from kiln.secrets import available_secrets
from kiln.spec.models import ServiceSpec, Spec
from kiln.state.store import Store
from kiln.verify.attest import attest, latest_attestation
from kiln.verify.digest import suite_digest
from kiln.verify.results import CheckResult, SuiteResult
from kiln.verify.runner import run_checks


class Project(Protocol):
    """What testing an image needs of the project (kiln.project.Project has it); a Protocol
    here so this module does not import kiln.project, which imports it."""

    @property
    def spec(self) -> Spec: ...

    @property
    def spec_path(self) -> Path: ...

    @property
    def base_dir(self) -> Path: ...

    @property
    def home(self) -> Path: ...

    @property
    def store(self) -> Store: ...

    @property
    def builder(self) -> Builder: ...

    @property
    def compute(self) -> Compute: ...

    def warn(self, message: str) -> None: ...

    def locked(self, command: str) -> AbstractContextManager[None]: ...


def _service_for(project: Project, image_name: str) -> tuple[str, ServiceSpec | None]:
    """Tests launch the image as its first service would run it in production."""
    for name, svc in project.spec.services.items():
        if svc.image == image_name:
            return name, svc
    return image_name, None


def _line(r: CheckResult) -> str:
    """One plain line per check (the CLI adds colour)."""
    mark = "pass" if r.passed else "FAIL"
    return f"  {mark} {r.kind:<9} {r.description}  {r.detail} ({r.duration:.2f}s)"


def run_suite(project: Project, image_name: str, image: Image,
              on_line: Callable[[str], None] | None = None) -> SuiteResult:
    spec = project.spec.images[image_name]
    name, svc = _service_for(project, image_name)
    # Tests get the service's secrets that resolve here; a missing one is said, not fatal.
    secrets, missing = available_secrets(name, svc, project.base_dir) if svc else ({}, [])
    for line in missing:
        project.warn(f"{image_name}: {line}")
    suite = run_checks(image, spec, compute=project.compute, service_name=name, service=svc,
                       base_dir=project.base_dir, env=secrets,
                       on_result=(lambda r: on_line(_line(r))) if on_line else None)
    path = attest(project.store, project.home, image, suite)
    if on_line:
        if suite.log_tail:
            on_line(f"  log of test instance {suite.instance_id} "
                    f"(last {len(suite.log_tail)} lines):")
            for line in suite.log_tail:
                on_line(f"    | {line}")
        verdict = "passed" if suite.passed else "failed"
        on_line(f"{image_name} {verdict}: {sum(r.passed for r in suite.results)}/"
                f"{len(suite.results)} checks; attestation {path}")
    return suite


def ensure_tested(project: Project, image_name: str, image: Image,
                  on_result: Callable[[str], None] | None = None) -> None:
    """The deploy gate: a passing attestation for the current suite, or run the suite now.

    Raises VerifyError (exit 1, traffic untouched) when the image fails its checks.
    """
    spec = project.spec.images[image_name]
    digest = suite_digest(spec, project.base_dir)
    att = latest_attestation(project.store, image.digest, digest)
    ref = att.document.get("predicate", {}).get("image_ref") if att is not None else None
    if att is not None and att.passed and ref in (None, image.ref):  # same digest, same AMI
        if on_result:
            on_result(f"{image_name}: tests passed before (attestation #{att.id})")
        return
    suite = run_suite(project, image_name, image, on_result)
    if not suite.passed:
        failed = [r for r in suite.results if not r.passed]
        first = failed[0]
        raise VerifyError(
            f"image {image_name} ({image.digest[:19]}) failed {len(failed)} of "
            f"{len(suite.results)} checks, first: {first.kind} {first.description}: "
            f"{first.detail}; it will not be deployed",
            hint=f"its log: kiln logs {_service_for(project, image_name)[0]} --test"
            if suite.instance_id else None)


def test_images(project: Project, names: Sequence[str] | None,
                on_line: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`kiln test`: bake (cached) and test each image; one result per image."""
    names = list(names or project.spec.images)
    for n in names:
        if n not in project.spec.images:
            known = ", ".join(sorted(project.spec.images)) or "none"
            raise NotFound(f"{project.spec_path}: no image named {n!r} (images: {known})")
    out: list[dict[str, Any]] = []
    with project.locked("test " + " ".join(names)):
        for n in names:
            image = project.builder.build(n, project.spec.images[n], base_dir=project.base_dir)
            if on_line:
                on_line(f"{n} {image.digest}")
            suite = run_suite(project, n, image, on_line)
            out.append({"image": n, "digest": image.digest, "passed": suite.passed,
                        "suite_digest": suite.suite_digest, "instance": suite.instance_id,
                        "log_tail": list(suite.log_tail),
                        "checks": [r.to_json() for r in suite.results]})
    return out
