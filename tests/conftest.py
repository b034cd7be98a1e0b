"""Shared fixtures. `proj`: a throwaway kiln project, torn down even when the test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing.project import Proj, make_project, teardown


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[Proj]:
    p = make_project(tmp_path)
    try:
        yield p
    finally:
        teardown(p)
