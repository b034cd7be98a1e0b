"""Pure hashing: the Merkle digest of a tree and the cache key of a step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.bake.hashing import content_hash, step_key, tree_digest
from kiln.bake.steps import definition, skip_name
from kiln.platforms.local.venv import digest_override
from kiln.spec.models import CopyStep, RunStep


def make_tree(root: Path, files: dict[str, str], order: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel in order or list(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[rel])
    return root


FILES = {"a.txt": "alpha", "sub/b.py": "print(1)", "sub/deeper/c": "gamma", "z": ""}


def test_digest_format_and_same_twice(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", FILES)
    first = tree_digest(tree)
    assert first.digest.startswith("sha256:") and len(first.digest) == 7 + 64
    assert tree_digest(tree).digest == first.digest
    assert first.files == 4 and first.size == sum(len(v) for v in FILES.values())


def test_digest_ignores_mtime_and_creation_order(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a", FILES)
    b = make_tree(tmp_path / "b", FILES, order=list(reversed(FILES)))
    os.utime(b / "a.txt", (1, 1))
    os.utime(b / "sub", (2, 2))
    assert tree_digest(a).digest == tree_digest(b).digest


@pytest.mark.parametrize("change", ["content", "exec-bit", "rename", "new-empty-dir",
                                    "symlink-target", "file-to-symlink"])
def test_digest_changes(tmp_path: Path, change: str) -> None:
    a = make_tree(tmp_path / "a", FILES)
    (a / "link").symlink_to("a.txt")
    before = tree_digest(a).digest
    if change == "content":
        (a / "sub/b.py").write_text("print(2)")
    elif change == "exec-bit":
        (a / "sub/b.py").chmod(0o755)
    elif change == "rename":
        (a / "z").rename(a / "y")
    elif change == "new-empty-dir":
        (a / "empty").mkdir()
    elif change == "symlink-target":
        (a / "link").unlink()
        (a / "link").symlink_to("z")
    elif change == "file-to-symlink":
        (a / "z").unlink()
        (a / "z").symlink_to("a.txt")
    assert tree_digest(a).digest != before


def test_digest_ignores_write_bits(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a", FILES)
    before = tree_digest(a).digest
    (a / "a.txt").chmod(0o444)
    assert tree_digest(a).digest == before


def test_venv_override_hides_machine_specific_bits(tmp_path: Path) -> None:
    def venv_tree(root: Path, home: str) -> Path:
        bindir = root / ".venv" / "bin"
        bindir.mkdir(parents=True)
        (root / ".venv" / "pyvenv.cfg").write_text(
            f"home = {home}/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n"
            f"executable = {home}/bin/python3.11\ncommand = {home}/bin/python3.11 -m venv x\n")
        (bindir / "python3.11").symlink_to(f"{home}/bin/python3.11")
        (bindir / "python").symlink_to("python3.11")
        return root

    one = venv_tree(tmp_path / "one", "/opt/py")
    two = venv_tree(tmp_path / "two", "/home/me/.pyenv/versions/3.11.7")
    assert tree_digest(one, digest_override).digest == tree_digest(two, digest_override).digest
    assert tree_digest(one).digest != tree_digest(two).digest
    (two / ".venv" / "pyvenv.cfg").write_text("home = /x/bin\nversion = 3.12.1\n")
    assert tree_digest(one, digest_override).digest != tree_digest(two, digest_override).digest


def test_content_hash_of_copy_inputs(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    h = content_hash(src, skip_name)
    os.utime(src / "a.txt", (5, 5))
    assert content_hash(src, skip_name) == h
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (src / ".git").mkdir()
    assert content_hash(src, skip_name) == h, "skipped names are not inputs"
    (src / "a.txt").chmod(0o755)
    assert content_hash(src, skip_name) != h
    assert content_hash(src / "z", skip_name) != content_hash(src / "a.txt", skip_name)


BASE = {"base": "python", "python": "3.11.7", "implementation": "cpython", "format": 1}


@pytest.mark.parametrize(("a", "b", "same"), [
    (("", BASE, {"run": "x"}, ""), ("", BASE, {"run": "x"}, ""), True),
    (("", BASE, {"run": "x"}, ""), ("p", BASE, {"run": "x"}, ""), False),
    (("", BASE, {"run": "x"}, ""), ("", {**BASE, "python": "3.12.1"}, {"run": "x"}, ""), False),
    (("", BASE, {"run": "x"}, ""), ("", BASE, {"run": "y"}, ""), False),
    (("", BASE, {"copy": "a"}, "h1"), ("", BASE, {"copy": "a"}, "h2"), False),
])
def test_step_key(a: tuple, b: tuple, same: bool) -> None:  # type: ignore[type-arg]
    assert (step_key(*a) == step_key(*b)) is same


def test_run_timeout_is_not_part_of_the_key() -> None:
    assert definition(RunStep(run="x", timeout=5)) == definition(RunStep(run="x", timeout=9))
    assert definition(CopyStep.model_validate({"copy": "a"}))["kind"] == "CopyStep"
