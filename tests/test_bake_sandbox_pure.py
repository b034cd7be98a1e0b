"""Pure parts of the bake sandbox and of `sandbox: none` (issue 20): where a copy target leads,
the spec keys, and how the dashboard shows an unsandboxed project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.bake.sandbox import BakeSandbox, contained, in_dir
from kiln.bake.steps import PathEscape, copy_job, symlink_escape
from kiln.errors import SpecError
from kiln.serve.pages import fragments
from kiln.spec.loader import parse_spec
from kiln.spec.models import CopyStep


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An image root with the links a hostile step could leave."""
    root = tmp_path / "root"
    (root / "app" / "sub").mkdir(parents=True)
    (root / "to-app").symlink_to("app")
    (root / "abs-out").symlink_to("/etc")
    (root / "climb").symlink_to("../../..")
    (root / "app" / "up").symlink_to("..")
    (root / "abs-in").symlink_to(root / "app")
    (root / "dangling").symlink_to("nowhere")
    return root


@pytest.mark.parametrize(("rel", "escape"), [
    ("app/sub/x", None),
    ("to-app/x", None),
    ("app/up/app/x", None),
    ("abs-in/x", None),  # absolute, but into the image itself
    ("dangling", None),  # a dangling link is replaced, not followed
    ("new/deeper/x", None),
    ("abs-out/x", "abs-out -> /etc"),
    ("climb/x", "climb -> ../../.."),
    ("app/sub/../../abs-out", "abs-out -> /etc"),
])
def test_symlink_escape(tree: Path, rel: str, escape: str | None) -> None:
    assert symlink_escape(tree, tree / os.path.normpath(rel)) == escape


def test_contained(tree: Path) -> None:
    assert contained(tree, tree / "to-app")
    assert not contained(tree, tree / "abs-out")
    assert not contained(tree, tree / "climb")


def test_copy_job_refuses_an_escape_and_names_the_field(tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("x")
    step = CopyStep.model_validate({"copy": "payload.txt", "to": "abs-out/"})
    with pytest.raises(PathEscape, match=r"^step 2/3 \(c\): copy destination 'abs-out/' leaves "
                                         r"the image through the symlink abs-out -> /etc \(") as exc:
        copy_job(step, src, tree, "step 2/3 (c)", "/kiln-source")
    assert exc.value.field == "to"


def test_copy_job_lists_a_folder_dirs_first(tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "files"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "x.txt").write_text("x")
    step = CopyStep.model_validate({"copy": "files/", "to": "app/"})
    job = copy_job(step, src, tree, "w", "/kiln-source")
    assert job["mkdirs"] == [str(tree / "app")]
    assert job["entries"] == [("/kiln-source/lib", str(tree / "app" / "lib")),
                              ("/kiln-source/lib/x.txt", str(tree / "app" / "lib" / "x.txt"))]


def test_unsandboxed_mode_runs_the_command_as_is(tmp_path: Path) -> None:
    box = BakeSandbox(tmp_path / "root", tmp_path / "scratch", "none")
    with box.prepared(["true"]) as (argv, fds):
        assert argv == ["true"] and fds == ()


def test_sandboxed_argv_binds_only_root_and_scratch_writable(tmp_path: Path) -> None:
    box = BakeSandbox(tmp_path / "root", tmp_path / "scratch", "bwrap", network=False)
    with box.prepared(in_dir(tmp_path / "root" / "w", ["bash", "-c", "x"])) as (argv, _fds):
        pairs = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1)]
        writable = [b for a, b in pairs if a == "--bind"]
        assert writable == [str(tmp_path / "root"), str(tmp_path / "scratch")]
        assert "--unshare-net" in argv and "--die-with-parent" in argv
        assert argv[-3:] == ["bash", "-c", "x"]


def test_spec_sandbox_and_network_keys() -> None:
    spec = parse_spec("project: p\nsandbox: none\nimages:\n  web:\n    network: none\n")
    assert spec.sandbox == "none" and spec.images["web"].network == "none"
    assert [w for w in spec.warnings() if w.startswith("sandbox: none")]
    assert parse_spec("project: p\n").sandbox == "bwrap"
    with pytest.raises(SpecError, match="sandbox: `sandbox: none` applies to platform local"):
        parse_spec("project: p\nplatform: podman\nsandbox: none\n")
    with pytest.raises(SpecError, match="sandbox"):
        parse_spec("project: p\nsandbox: off\n")


def test_dashboard_says_when_a_project_runs_unsandboxed() -> None:
    state = {"project": "p", "router": {"needed": False, "running": None}, "services": [],
             "events": [], "drift": {"at": None, "items": []}}
    assert "sandbox: none" not in fragments({**state, "sandbox": "bwrap"})["board"]
    assert "sandbox: none" in fragments({**state, "sandbox": "none"})["board"]
