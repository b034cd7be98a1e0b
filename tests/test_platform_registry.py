"""The platform seam: platforms by name, imported lazily; the front never names one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kiln.project
from kiln.errors import KilnError
from kiln.platforms.local import LocalPlatform
from kiln.platforms.registry import PLATFORMS, get_platform
from kiln.project import Project
from kiln.spec.models import Spec
from kiln.state.store import Store


def test_local_is_found_by_name(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    try:
        platform = get_platform("local", store, tmp_path / "home", "shop")
        assert isinstance(platform, LocalPlatform)
    finally:
        store.close()


def test_an_unknown_platform_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    try:
        with pytest.raises(KilnError, match=r"platform 'nope' is not available \(platforms: .*local"):
            get_platform("nope", store, tmp_path / "home", "shop")
    finally:
        store.close()


def test_the_project_asks_the_registry_for_the_spec_platform(tmp_path: Path) -> None:
    from kiln.platforms.podman import PodmanPlatform
    from kiln.platforms.podman.builder import PodmanBuilder

    spec = Spec.model_validate({"project": "shop", "platform": "podman"})
    proj = Project(spec, tmp_path / "kiln.yaml", tmp_path, tmp_path / ".kiln")
    try:
        assert isinstance(proj.platform, PodmanPlatform)
        assert isinstance(proj.builder, PodmanBuilder)  # built without running podman
    finally:
        proj.close()


def test_registered_platforms_are_not_imported_until_asked_for() -> None:
    code = ("import sys, kiln.project, kiln.platforms.registry as r; "
            "print(sorted(m for m in sys.modules if m.startswith('kiln.platforms.') "
            "and m.count('.') == 2 and m.rsplit('.', 1)[1] in r.PLATFORMS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_front_never_imports_a_platform() -> None:
    tree = ast.parse(Path(kiln.project.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    named = {m for m in imported if m and any(m.startswith(f"kiln.platforms.{p}")
                                               for p in PLATFORMS)}
    assert named == set()
