"""The digest of a test suite: check definitions + the content of testinfra files.

An attestation is valid for one (image digest, suite digest) pair, so editing a check or a test
file makes the image "untested" again for the gate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from kiln.spec.models import ImageSpec, TestinfraCheck

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def testinfra_files(path: Path) -> Iterator[Path]:
    """Files that can change a testinfra run: everything under the folder but caches."""
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        return
    for child in sorted(path.rglob("*")):
        rel = child.relative_to(path)
        if any(part in _SKIP_DIRS for part in rel.parts) or child.name.endswith(_SKIP_SUFFIXES):
            continue
        if child.is_file():
            yield child


def suite_digest(image_spec: ImageSpec, base_dir: Path) -> str:
    """'sha256:<hex>' over the checks (as validated) and every testinfra file they point at.

    A testinfra path that does not exist hashes as "missing" (the run then fails that check), so
    the digest is always computable.
    """
    h = hashlib.sha256(b"kiln-suite-v1\0")
    checks = [c.model_dump(mode="json", by_alias=True) for c in image_spec.tests]
    h.update(json.dumps(checks, sort_keys=True, separators=(",", ":")).encode())
    for check in image_spec.tests:
        if not isinstance(check, TestinfraCheck):
            continue
        root = (base_dir / check.testinfra).resolve()
        h.update(b"\0testinfra\0" + check.testinfra.encode() + b"\0")
        if not root.exists():
            h.update(b"missing\0")
            continue
        for file in testinfra_files(root):
            rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
            h.update(rel.encode() + b"\0")
            h.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + h.hexdigest()
