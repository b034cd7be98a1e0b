"""Secrets of a service (`env:NAME`, `file:PATH`), resolved at launch and never stored.
`ssm:` and `secretsmanager:` references (platform aws) are left to the instance."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.errors import KilnError
from kiln.spec.models import ServiceSpec

REMOTE = ("ssm", "secretsmanager")
"""Schemes kiln never resolves itself: the instance does, with its own credentials."""


def resolve_secrets(service_name: str, service: ServiceSpec, base_dir: Path) -> dict[str, str]:
    """Resolve `env:NAME` / `file:PATH` references at launch; never stored."""
    out: dict[str, str] = {}
    for key, ref in service.secrets.items():
        scheme, _, target = ref.partition(":")
        if scheme in REMOTE:
            continue  # resolved on the instance by its instance profile (platform aws)
        if scheme == "env":
            if target not in os.environ:
                raise KilnError(f"services.{service_name}.secrets.{key}: environment variable "
                                f"{target} is not set")
            out[key] = os.environ[target]
        else:
            path = (base_dir / target).resolve()
            try:
                out[key] = path.read_text().strip()
            except OSError as exc:
                raise KilnError(f"services.{service_name}.secrets.{key}: cannot read {path}: "
                                f"{exc.strerror}") from exc
    return out


def available_secrets(service_name: str, service: ServiceSpec,
                      base_dir: Path) -> tuple[dict[str, str], list[str]]:
    """For image tests, which must not need production secrets: the ones that resolve here,
    and one line per secret left out (and why)."""
    out: dict[str, str] = {}
    missing: list[str] = []
    for key, ref in service.secrets.items():
        one = service.model_copy(update={"secrets": {key: ref}})
        try:
            out.update(resolve_secrets(service_name, one, base_dir))
        except KilnError as exc:
            missing.append(f"{key} left out of the test instance ({exc.message})")
    return out, missing
