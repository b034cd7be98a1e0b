"""`kiln init` writes a starter project that validates, and never overwrites anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.spec.init import init_project, project_name
from kiln.spec.loader import load_spec


def test_init_writes_a_valid_project(tmp_path: Path) -> None:
    folder = tmp_path / "my-app"
    written = init_project(folder)
    assert written[0] == folder / "kiln.yaml"
    rel = {p.relative_to(folder).as_posix() for p in written}
    assert {"kiln.yaml", "app/__init__.py", "app/__main__.py", "app/requirements.txt",
            "tests/image/test_image.py"} <= rel
    spec = load_spec(folder / "kiln.yaml").spec
    assert spec.project == "my-app"
    assert spec.services["web"].image == "web"
    main = (folder / "app" / "__main__.py").read_text()
    compile(main, "__main__.py", "exec")
    assert "$HOST" in main and "$project" not in main


def test_init_with_explicit_name(tmp_path: Path) -> None:
    init_project(tmp_path, "shop-2")
    assert load_spec(tmp_path / "kiln.yaml").spec.project == "shop-2"


def test_init_refuses_existing_spec(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text("project: mine\n")
    with pytest.raises(KilnError, match="already exists"):
        init_project(tmp_path)
    assert (tmp_path / "kiln.yaml").read_text() == "project: mine\n"


def test_init_never_overwrites_app_files(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("mine\n")
    with pytest.raises(KilnError, match="refusing to overwrite"):
        init_project(tmp_path)
    assert not (tmp_path / "kiln.yaml").exists()
    assert (tmp_path / "app" / "__main__.py").read_text() == "mine\n"


def test_init_rejects_bad_name(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="invalid project name 'Shop'"):
        init_project(tmp_path, "Shop")


@pytest.mark.parametrize(("folder", "name"), [
    ("shop", "shop"), ("My Shop_2", "my-shop-2"), ("2fast", "fast"), ("___", "app"),
    ("Ünïcode", "unicode"), ("x" * 60, "x" * 40), ("a--b", "a-b")])
def test_project_name(tmp_path: Path, folder: str, name: str) -> None:
    assert project_name(tmp_path / folder) == name
