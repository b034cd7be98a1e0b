"""A local bake step cannot write outside its image (issue 20): each escape of the issue is tried
with real bakes in the bubblewrap sandbox, and a sentinel folder outside the project must stay
exactly as it was. Also: no silent fallback when bubblewrap cannot run, and `sandbox: none`
shown by `status --json`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import BakeError
from kiln.platforms.local.builder import LocalBuilder
from kiln.platforms.local.sandbox import bwrap_works
from kiln.spec.models import ImageSpec
from kiln.state.store import Store
from kiln.testing.project import make_project, teardown

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not bwrap_works(), reason="bubblewrap not usable here")]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-home")


@pytest.fixture(scope="module")
def store(home: Path) -> Iterator[Store]:
    s = Store.open(home)
    yield s
    s.close()


@pytest.fixture
def builder(store: Store, home: Path) -> LocalBuilder:
    return LocalBuilder(store, home)


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder outside every project and home, world-writable like /tmp (so only the sandbox,
    not file permissions, keeps a step out), with one file in it; it must not change."""
    folder = tmp_path_factory.mktemp("outside")
    folder.chmod(0o1777)
    (folder / "keep.txt").write_text("untouched\n")
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"], \
        f"a bake wrote outside its image: {sorted(p.name for p in folder.iterdir())}"
    assert (folder / "keep.txt").read_text() == "untouched\n"


def spec(*steps: dict[str, object], network: str = "default") -> ImageSpec:
    return ImageSpec.model_validate({"base": "python", "steps": list(steps), "network": network})


def project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    (src / "files" / "lib").mkdir(parents=True, exist_ok=True)
    (src / "files" / "lib" / "x.txt").write_text("x\n")
    (src / "payload.txt").write_text("payload\n")
    return src


def test_copy_through_an_absolute_symlink_is_refused(builder: LocalBuilder, tmp_path: Path,
                                                     sentinel: Path) -> None:
    s = spec({"run": f"ln -s {sentinel} app"}, {"copy": "payload.txt", "to": "app/"})
    with pytest.raises(BakeError, match=r"step 2/2 \(copy payload.txt -> app/\): copy "
                                        r"destination 'app/' leaves the image through the "
                                        r"symlink app -> /"):
        builder.build("abs", s, base_dir=project(tmp_path))


def test_copy_through_a_climbing_relative_symlink_is_refused(builder: LocalBuilder,
                                                             tmp_path: Path,
                                                             sentinel: Path) -> None:
    climb = "../" * 40 + str(sentinel).lstrip("/")
    s = spec({"run": f"mkdir -p a && ln -s {climb} a/b"},
             {"copy": "payload.txt", "to": "a/b/evil.txt"})
    with pytest.raises(BakeError, match="leaves the image through the symlink a/b -> "):
        builder.build("rel", s, base_dir=project(tmp_path))


def test_folder_copy_replaces_a_symlinked_subfolder_instead_of_following_it(
        builder: LocalBuilder, tmp_path: Path, sentinel: Path) -> None:
    """Like Docker's COPY: a folder entry of the source replaces a symlink in the image."""
    s = spec({"run": f"mkdir app && ln -s {sentinel} app/lib"}, {"copy": "files/", "to": "app/"})
    image = builder.build("merge", s, base_dir=project(tmp_path))
    lib = Path(image.ref) / "root" / "app" / "lib"
    assert lib.is_dir() and not lib.is_symlink()
    assert (lib / "x.txt").read_text() == "x\n"


def test_dotdot_in_a_copy_target_is_refused(builder: LocalBuilder, tmp_path: Path,
                                            sentinel: Path) -> None:
    rel = os.path.relpath(sentinel, "/")
    s = spec({"copy": "payload.txt", "to": "../" * 40 + rel + "/evil.txt"})
    with pytest.raises(BakeError, match=r"copy destination '.*' leaves the image"):
        builder.build("dotdot", s, base_dir=project(tmp_path))


def test_run_step_cannot_write_to_the_host(builder: LocalBuilder, tmp_path: Path,
                                           sentinel: Path) -> None:
    for n, command in enumerate([f"echo pwned > {sentinel}/evil.txt",
                                 f"mkdir {sentinel}/evil",
                                 "echo pwned > /root/kiln-bake-evil",
                                 "echo pwned > /etc/kiln-bake-evil",
                                 f"ln -s {sentinel} out && echo pwned > out/evil.txt"]):
        with pytest.raises(BakeError, match="failed with exit code"):
            builder.build(f"write{n}", spec({"run": command}), base_dir=project(tmp_path))
    assert not Path("/root/kiln-bake-evil").exists()
    assert not Path("/etc/kiln-bake-evil").exists()


def test_workdir_through_a_symlink_stays_in_the_sandbox(builder: LocalBuilder, tmp_path: Path,
                                                        sentinel: Path) -> None:
    s = spec({"run": f"ln -s {sentinel} w"}, {"workdir": "w/sub"}, {"run": "echo hi > f"})
    with pytest.raises(BakeError, match="step 3/3"):
        builder.build("workdir", s, base_dir=project(tmp_path))


def test_steps_run_unprivileged_and_see_neither_kiln_nor_the_home(
        builder: LocalBuilder, home: Path, tmp_path: Path) -> None:
    probe = (f"id -u > uid.txt; (test -e {home}/state.db && echo seen || echo hidden) > kiln.txt;"
             " (test -e /etc/shadow && echo seen || echo hidden) > root.txt")
    image = builder.build("who", spec({"run": probe}), base_dir=project(tmp_path))
    root = Path(image.ref) / "root"
    if os.geteuid() == 0:
        assert int((root / "uid.txt").read_text()) != 0
    assert (root / "kiln.txt").read_text().strip() == "hidden"
    assert (root / "root.txt").read_text().strip() == "hidden"
    # Sealed, the image belongs to root again (kiln as root) and stays readable by instances.
    for path in (root, root / "uid.txt", root / ".venv" / "bin" / "python"):
        st = path.lstat()
        assert st.st_uid == os.geteuid()
    assert (root / "uid.txt").stat().st_mode & 0o444 == 0o444


def test_network_none_cuts_the_steps_off(builder: LocalBuilder, tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        dial = (f"python -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 5)\"")
        builder.build("online", spec({"run": dial}), base_dir=project(tmp_path))
        with pytest.raises(BakeError, match="failed with exit code"):
            builder.build("offline", spec({"run": dial}, network="none"),
                          base_dir=project(tmp_path))


# ---------------------------------------------------------------- no silent fallback (CLI)


def fake_bwrap(folder: Path) -> dict[str, str]:
    """PATH with a `bwrap` that fails first, as on hosts with user namespaces disabled."""
    folder.mkdir()
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def assert_refused_in_one_line(res: subprocess.CompletedProcess[str], what: str) -> None:
    """A refusal for a sandbox that cannot run: one line naming why, the opt-out, no trace."""
    assert res.returncode != 0, res.stdout
    errors = [ln for ln in res.stderr.splitlines() if what in ln]
    assert len(errors) == 1, res.stderr
    assert "No permissions to create new namespace" in errors[0]
    assert "sandbox: none" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_baked_image_is_not_launched_when_the_sandbox_fails_at_start(tmp_path: Path) -> None:
    """Launching only looks the tools up (no probe per command): a bwrap that fails when the
    instance starts is explained by the probe, in one line, and nothing is left running."""
    proj = make_project(tmp_path)
    try:
        assert proj.kiln("bake").returncode == 0
        env = fake_bwrap(tmp_path / "fakebin")
        assert_refused_in_one_line(proj.kiln("deploy", env=env), "cannot sandbox instances")
        assert proj.live_pids() == []
    finally:
        teardown(proj)


def test_a_bwrap_that_hangs_is_refused_in_one_short_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that never reports its child nor exits: the launch gives up at its deadline,
    the probe at its own, and the refusal names the hang, not the probe's whole argv."""
    from kiln.platforms.local import sandbox

    folder = tmp_path / "fakebin"
    folder.mkdir()
    (folder / "bwrap").write_text("#!/bin/sh\nexec sleep 6017\n")
    (folder / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setattr(sandbox, "PROBE_TIMEOUT", 1.0)
    sandbox.bwrap_problem.cache_clear()
    try:
        problem = sandbox.bwrap_problem()
    finally:
        sandbox.bwrap_problem.cache_clear()
    assert problem == "bubblewrap (bwrap) did not run `true` within 1s"
    assert not _running(b"sleep\x006017\x00")  # the probe's hung bwrap was killed


def _running(cmdline: bytes) -> bool:
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == cmdline:
                return True
    return False


def test_without_bubblewrap_deploy_and_bake_refuse_and_sandbox_none_is_shown(
        tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    env = fake_bwrap(tmp_path / "fakebin")
    try:
        for args in (["deploy"], ["bake"]):
            assert_refused_in_one_line(proj.kiln(*args, env=env), "cannot sandbox")
        assert proj.live_pids() == []
        # What starts nothing still works on such a host (look, stop, destroy).
        res = proj.kiln("status", "--json", env=env)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["sandbox"] == "bwrap"
        # The explicit opt-out: the bake runs, every command warns once, status shows it.
        spec_file = proj.dir / "kiln.yaml"
        spec_file.write_text("sandbox: none\n" + spec_file.read_text())
        res = proj.kiln("bake", env=env)
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("sandbox: none") == 1, res.stderr
        res = proj.kiln("status", "--json", env=env)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["sandbox"] == "none"
        assert res.stderr.count("sandbox: none") == 1, res.stderr
        text = proj.kiln("status", env=env)
        assert "sandbox: none" in text.stdout
    finally:
        teardown(proj)


def test_status_json_says_bwrap_by_default(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    try:
        res = proj.kiln("status", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["sandbox"] == "bwrap"
        assert "sandbox: none" not in res.stderr
    finally:
        teardown(proj)


def test_spec_sandbox_none_is_local_only(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text("project: p\nplatform: podman\nsandbox: none\n")
    res = subprocess.run([str(Path(__file__).parent.parent / ".venv" / "bin" / "kiln"),
                          "validate"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode != 0
    assert "sandbox: `sandbox: none` applies to platform local" in res.stderr


def test_bake_names_the_line_of_a_copy_that_would_escape(tmp_path: Path, sentinel: Path) -> None:
    (tmp_path / "payload.txt").write_text("payload\n")
    (tmp_path / "kiln.yaml").write_text(
        "project: bakebox-escape\nimages:\n  web:\n    steps:\n"
        f"      - run: ln -s {sentinel} app\n"
        "      - copy: payload.txt\n        to: app/\n")
    res = subprocess.run([str(Path(__file__).parent.parent / ".venv" / "bin" / "kiln"), "bake"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if "leaves the image" in ln]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kiln: error: kiln.yaml:7:13: images.web.steps[1].to: step 2/2 "), \
        lines[0]
    assert "Traceback" not in res.stderr
