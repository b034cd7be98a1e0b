"""Test attestations: an in-toto Statement v1 binding a suite result to an image digest.

The document is written under `<home>/attestations/` (for people and other tools) and stored in
the `attestations` table (for the deploy gate and `kiln images`). The gate trusts the table; the
file is a copy. An attestation is for one (image digest, suite digest) pair: editing a check or a
testinfra file makes the image untested again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from kiln.errors import StateError
from kiln.platforms.base import Image
from kiln.state.records import attestations as attestation_records
from kiln.state.store import Store
from kiln.verify.results import SuiteResult

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://kiln.dev/attestation/test/v1"

Verdict = Literal["passed", "failed", "untested"]


@dataclass(frozen=True)
class Attestation:
    id: int
    image_digest: str
    suite_digest: str
    passed: bool
    document: dict[str, Any]
    path: Path | None
    created_at: float


def kiln_version() -> str:
    try:
        return metadata.version("kiln")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def statement(image: Image, suite: SuiteResult) -> dict[str, Any]:
    """The in-toto Statement for `suite` run against `image` (pure)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image.name, "digest": {"sha256": _hex(image.digest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "suite_digest": suite.suite_digest,
            "image_ref": image.ref,  # binds the platform's copy too (aws: the AMI id)
            "test_instance": suite.instance_id,
            "passed": suite.passed,
            "checks": [r.to_json() for r in suite.results],
            "passed_checks": sum(1 for r in suite.results if r.passed),
            "failed_checks": sum(1 for r in suite.results if not r.passed),
            "started_at": _iso(suite.started_at),
            "finished_at": _iso(suite.finished_at),
            "kiln_version": kiln_version(),
        },
    }


def attest(store: Store, home: Path, image: Image, suite: SuiteResult) -> Path:
    """Write the Statement to home/attestations/<image hex>-<suite hex>.json and record it."""
    doc = statement(image, suite)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    folder = home / "attestations"
    path = folder / f"{_hex(image.digest)}-{_hex(suite.suite_digest)[:16]}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write attestation {path}: {exc.strerror or exc}") from exc
    with store.tx() as c:
        attestation_records.insert(c, image.digest, suite.suite_digest, suite.passed, text,
                                   str(path), time.time())
        failed = [r.description for r in suite.results if not r.passed]
        c.event("test.passed" if suite.passed else "test.failed",
                f"image {image.name} {_hex(image.digest)[:12]}: "
                + ("all checks passed" if suite.passed
                   else f"{len(failed)} of {len(suite.results)} checks failed"),
                data={"image": image.name, "image_digest": image.digest,
                      "suite_digest": suite.suite_digest, "failed": failed,
                      "attestation": str(path)})
    return path


def _row(row: Any) -> Attestation:
    return Attestation(
        id=int(row["id"]), image_digest=row["image_digest"], suite_digest=row["suite_digest"],
        passed=bool(row["passed"]), document=json.loads(row["document"]),
        path=Path(row["path"]) if row["path"] else None, created_at=float(row["created_at"]),
    )


def latest_attestation(store: Store, image_digest: str,
                       suite_digest: str | None = None) -> Attestation | None:
    """The newest attestation of the image (for this suite, if given)."""
    row = attestation_records.newest(store, image_digest, suite_digest)
    return _row(row) if row is not None else None


def verdict_for(store: Store, image_digest: str, suite_digest: str | None = None) -> Verdict:
    """What `kiln images` shows: the newest result for the image (and suite, if given)."""
    att = latest_attestation(store, image_digest, suite_digest)
    if att is None:
        return "untested"
    return "passed" if att.passed else "failed"
