"""Shared fixtures. `proj`: a throwaway kiln project, torn down even when the test fails."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.moto import MotoServer, moto_server
from kiln.testing.project import Proj, make_project, teardown


@pytest.fixture
def proj(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Proj]:
    # `@pytest.mark.parametrize("proj", ["traefik", "haproxy"], indirect=True)`: one per router
    p = make_project(tmp_path, router=getattr(request, "param", "traefik"))
    try:
        yield p
        # Every judged rollout of every e2e test: the judge saw every request the router counted.
        lost = judge_losses(p.dir / ".kiln" / "state.db")
        assert not lost, f"the judge's access log missed requests the router counted: {lost}"
    finally:
        teardown(p)


def judge_losses(db: Path) -> list[dict[str, object]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data_json FROM events WHERE kind = 'judge.crosscheck'"
                            ).fetchall()
    checks = [json.loads(r[0]) for r in rows]
    return [c for c in checks if not c.get("agree", True)]


@pytest.fixture(scope="session")
def moto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's server on a free loopback port, started once for the AWS tests and stopped."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def moto(moto_session: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean fake AWS for one test; boto3 in this process (and its children) points at it."""
    moto_session.reset()
    for key, value in moto_session.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_session


@pytest.fixture(scope="session", autouse=True)
def shared_base_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Base environments are shared between the session's projects (as between a user's), but
    never with the user's own ~/.cache/kiln. Under pytest-xdist every worker uses the one folder
    of the run (beside the workers' own temp folders), so a base is made once per run: kiln's
    cache is safe to share between concurrent bakes (a base is published by an atomic rename)."""
    before = os.environ.get("KILN_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "kiln-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("kiln-cache")
    os.environ["KILN_CACHE"] = str(cache)
    yield
    if before is None:
        os.environ.pop("KILN_CACHE", None)
    else:
        os.environ["KILN_CACHE"] = before


@pytest.fixture(scope="session")
def podman_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shared Debian base image for podman tests: built once (per machine: podman keeps it
    under its tag), skipped where podman cannot run containers. A machine-wide lock: two xdist
    workers (or two runs) must not build and import it at once, or one tag's first image would
    be left untagged under the other's feet."""
    from kiln.testing.podman import ensure_base, unusable

    reason = unusable()
    if reason is not None:
        pytest.skip(reason)
    with open(Path(tempfile.gettempdir()) / "kiln-test-podman-base.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the worker dies)
        return ensure_base(tmp_path_factory.mktemp("podman-base"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with end-to-end tests first, those with the most e2e tests (the longest, roughly)
    first among them; each file's tests kept together and in their order. Under xdist
    (`--dist loadfile --no-loadscope-reorder`, scripts/test) the slow files start first and the
    fast ones fill the tail, so the workers finish close together."""
    e2e: dict[Path, int] = {}
    for item in items:
        e2e.setdefault(item.path, 0)
        if item.get_closest_marker("e2e") is not None:
            e2e[item.path] += 1
    items.sort(key=lambda item: -e2e[item.path])
