"""Suite digests and attestations: what the deploy gate trusts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.platforms.base import Image
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.verify import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    CheckResult,
    SuiteResult,
    attest,
    latest_attestation,
    suite_digest,
    verdict_for,
)

IMAGE = Image(name="web", digest="sha256:" + "c0" * 32, ref="/nowhere")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    yield s
    s.close()


def _spec(tests: list[object]) -> ImageSpec:
    return ImageSpec.model_validate({"tests": tests})


def test_suite_digest_tracks_checks_and_test_files(tmp_path: Path) -> None:
    folder = tmp_path / "tests" / "image"
    folder.mkdir(parents=True)
    (folder / "test_a.py").write_text("def test_a(host):\n    assert True\n")
    spec = _spec([{"http": {"path": "/"}}, {"testinfra": "tests/image/"}])
    first = suite_digest(spec, tmp_path)
    assert first.startswith("sha256:") and len(first) == 71
    assert suite_digest(spec, tmp_path) == first  # stable

    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "test_a.cpython-311.pyc").write_bytes(b"junk")
    assert suite_digest(spec, tmp_path) == first  # caches do not count

    (folder / "test_a.py").write_text("def test_a(host):\n    assert 1\n")
    edited = suite_digest(spec, tmp_path)
    assert edited != first

    (folder / "conftest.py").write_text("")
    added = suite_digest(spec, tmp_path)
    assert added not in (first, edited)

    assert suite_digest(_spec([{"http": {"path": "/", "status": 201}},
                               {"testinfra": "tests/image/"}]), tmp_path) != added
    assert suite_digest(_spec([{"testinfra": "missing/"}]), tmp_path).startswith("sha256:")


def test_suite_digest_single_file(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("x = 1\n")
    spec = _spec([{"testinfra": "t.py"}])
    before = suite_digest(spec, tmp_path)
    (tmp_path / "t.py").write_text("x = 2\n")
    assert suite_digest(spec, tmp_path) != before


def _suite(passed: bool, digest: str = "sha256:" + "5e" * 32) -> SuiteResult:
    results = (
        CheckResult(0, "http", "http GET / -> 200", True, "status 200, 2 bytes", 0.01),
        CheckResult(1, "command", "command `false`", passed, "exit code 1, expected 0", 0.02),
    )
    return SuiteResult(passed=passed, results=results, started_at=1_700_000_000.25,
                       finished_at=1_700_000_001.5, suite_digest=digest)


def test_attestation_round_trip(store: Store, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert verdict_for(store, IMAGE.digest) == "untested"
    assert latest_attestation(store, IMAGE.digest, "sha256:" + "5e" * 32) is None

    path = attest(store, home, IMAGE, _suite(False))
    assert path == home / "attestations" / f"{'c0' * 32}-{'5e' * 8}.json"
    doc = json.loads(path.read_text())
    assert doc["_type"] == STATEMENT_TYPE and doc["predicateType"] == PREDICATE_TYPE
    assert doc["subject"] == [{"name": "web", "digest": {"sha256": "c0" * 32}}]
    pred = doc["predicate"]
    assert pred["passed"] is False and pred["suite_digest"] == "sha256:" + "5e" * 32
    assert (pred["passed_checks"], pred["failed_checks"]) == (1, 1)
    assert pred["checks"][1]["detail"] == "exit code 1, expected 0"
    assert pred["started_at"] == "2023-11-14T22:13:20.250Z"
    assert pred["kiln_version"]
    assert verdict_for(store, IMAGE.digest) == "failed"

    attest(store, home, IMAGE, _suite(True))
    att = latest_attestation(store, IMAGE.digest, "sha256:" + "5e" * 32)
    assert att is not None and att.passed and att.path == path
    assert att.document["predicate"]["passed"] is True
    assert json.loads(path.read_text()) == att.document  # file and table agree
    assert verdict_for(store, IMAGE.digest) == "passed"

    # a new suite digest: the old result does not count for it
    assert latest_attestation(store, IMAGE.digest, "sha256:" + "00" * 32) is None
    assert verdict_for(store, IMAGE.digest, "sha256:" + "00" * 32) == "untested"
    events = [r["kind"] for r in store.events()]
    assert events[:2] == ["test.passed", "test.failed"]
