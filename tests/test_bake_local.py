"""LocalBuilder with real venvs and processes: caching, sealing, relocation, failures, kills.

One store is shared by the module so the base venv is made once (~5 s); each test bakes its own
image name from its own files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.bake import get_image, list_images, remove_images
from kiln.bake.imagestore import integrity_problem
from kiln.errors import BakeError, ImageTampered, NotFound
from kiln.platforms.base import Image, StepEvent
from kiln.platforms.local.builder import LocalBuilder
from kiln.spec.models import ImageSpec
from kiln.state.lock import pid_alive
from kiln.state.store import Store
from kiln.testing.project import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-home")


@pytest.fixture(scope="module")
def store(home: Path) -> Iterator[Store]:
    s = Store.open(home)
    yield s
    s.close()


@pytest.fixture
def builder(store: Store, home: Path) -> LocalBuilder:
    return LocalBuilder(store, home)


def spec(*steps: dict[str, object], base: str = "python") -> ImageSpec:
    return ImageSpec.model_validate({"base": base, "steps": list(steps)})


def bake(builder: LocalBuilder, name: str, s: ImageSpec, base_dir: Path,
         no_cache: bool = False) -> tuple[Image, list[StepEvent]]:
    events: list[StepEvent] = []
    image = builder.build(name, s, base_dir=base_dir, no_cache=no_cache, progress=events.append)
    return image, events


def final(events: list[StepEvent]) -> dict[int, str]:
    return {e.index: e.status for e in events if e.status != "running"}


def root_of(image: Image) -> Path:
    return Path(image.ref) / "root"


def image_state(home: Path, store: Store) -> tuple[list[str], list[str]]:
    folders = sorted(p.name for p in (home / "images").iterdir()) if (home / "images").exists() \
        else []
    return folders, sorted(r.digest for r in list_images(store))


def wheel(folder: Path) -> Path:
    """A pure-Python wheel with a module and a console script, built by hand (no network)."""
    files = {
        "tinypkg/__init__.py": "VALUE = 42\n\ndef main():\n    print('tiny', VALUE)\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: kiln-test\n"
                                       "Root-Is-Purelib: true\nTag: py3-none-any\n",
        "tinypkg-1.0.dist-info/entry_points.txt": "[console_scripts]\ntiny = tinypkg:main\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    files["tinypkg-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text)
    return path


# ---------------------------------------------------------------- relocation and pip


def test_sealed_venv_is_relocated_and_pip_installs_into_it(builder: LocalBuilder,
                                                           tmp_path: Path) -> None:
    wheel(tmp_path / "wheels")
    s = spec({"copy": "wheels/", "to": "wheels/"},
             {"run": "pip install --no-index --find-links wheels tinypkg"})
    image, _ = bake(builder, "reloc", s, tmp_path)
    root = root_of(image)
    py = root / ".venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import sys, tinypkg; print(sys.prefix, tinypkg.VALUE)"],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.split() == [str(root / ".venv"), "42"]
    # the console script pip wrote works from the sealed path (its shebang was rewritten)
    script = root / ".venv" / "bin" / "tiny"
    assert str(tmp_path) not in script.read_text() and "/tmp/work" not in script.read_text()
    env = {"PATH": f"{root / '.venv' / 'bin'}:/usr/bin:/bin"}
    out = subprocess.run(["tiny"], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "tiny 42"
    # kiln's own venv did not get the package
    assert subprocess.run([sys.executable, "-c", "import tinypkg"],
                          capture_output=True).returncode != 0
    cfg = (root / ".venv" / "pyvenv.cfg").read_text()
    assert "command" not in cfg


def test_run_steps_get_a_controlled_environment(builder: LocalBuilder, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TEST_SECRET", "leak")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    s = spec({"env": {"GREETING": "hi"}}, {"workdir": "w"},
             {"run": 'echo "$GREETING|${KILN_TEST_SECRET:-none}|$PIP_INDEX_URL|$VIRTUAL_ENV|'
                     '$HOME|$(command -v python)" > out.txt'})
    image, _ = bake(builder, "envs", s, tmp_path)
    greeting, secret, index, venv, home, python = \
        (root_of(image) / "w" / "out.txt").read_text().strip().split("|")
    assert (greeting, secret, index) == ("hi", "none", "http://127.0.0.1:9/simple")
    assert venv.endswith("/.venv") and python == venv + "/bin/python"
    assert home != os.environ.get("HOME") and not home.startswith(str(root_of(image)))
    assert image.env == {"GREETING": "hi"}


# ---------------------------------------------------------------- cache


def test_same_inputs_same_digest_and_no_cache_rebuild_matches(builder: LocalBuilder,
                                                              tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hello')\n")
    s = spec({"copy": "app/", "to": "app/"}, {"run": "echo built > app/stamp"})
    first, _ = bake(builder, "same", s, tmp_path)
    again, events = bake(builder, "same", s, tmp_path)
    assert again.digest == first.digest
    assert set(final(events).values()) == {"cached"}
    fresh, events = bake(builder, "same", s, tmp_path, no_cache=True)
    assert fresh.digest == first.digest
    assert set(final(events).values()) == {"ran"}


def test_edit_of_last_copied_file_reruns_only_that_step(builder: LocalBuilder,
                                                        tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text(d)
    s = spec({"copy": "a/", "to": "a/"}, {"run": "cp a/f.txt a/g.txt"},
             {"copy": "b/f.txt", "to": "b/"})
    first, _ = bake(builder, "edit", s, tmp_path)
    os.utime(tmp_path / "b" / "f.txt", (1, 1))  # mtime alone is no change
    same, events = bake(builder, "edit", s, tmp_path)
    assert same.digest == first.digest and set(final(events).values()) == {"cached"}
    (tmp_path / "b" / "f.txt").write_text("b2")
    second, events = bake(builder, "edit", s, tmp_path)
    assert final(events) == {0: "cached", 1: "cached", 2: "cached", 3: "ran"}
    assert second.digest != first.digest
    assert (root_of(second) / "b" / "f.txt").read_text() == "b2"
    assert (root_of(second) / "a" / "g.txt").read_text() == "a"
    # an edit of the first input reruns everything after it
    (tmp_path / "a" / "f.txt").write_text("a2")
    third, events = bake(builder, "edit", s, tmp_path)
    assert final(events) == {0: "cached", 1: "ran", 2: "ran", 3: "ran"}
    assert (root_of(third) / "a" / "g.txt").read_text() == "a2"


def test_run_step_cannot_corrupt_the_cache(builder: LocalBuilder, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("orig")
    (tmp_path / "v").write_text("1")
    s1 = spec({"copy": "f.txt"}, {"copy": "v"}, {"run": "echo changed >> f.txt"})
    one, _ = bake(builder, "cow", s1, tmp_path)
    (tmp_path / "v").write_text("2")  # reruns the run step on the restored snapshot
    two, _ = bake(builder, "cow", s1, tmp_path)
    assert (root_of(two) / "f.txt").read_text() == "origchanged\n"
    assert (root_of(one) / "f.txt").read_text() == "origchanged\n"


# ---------------------------------------------------------------- sealing


def test_sealed_image_is_read_only_with_manifest(builder: LocalBuilder, store: Store,
                                                 tmp_path: Path) -> None:
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho ok\n")
    (tmp_path / "tool.sh").chmod(0o755)
    s = spec({"copy": "tool.sh", "to": "bin/"}, {"env": {"A": "1"}})
    image, _ = bake(builder, "sealed", s, tmp_path)
    root = root_of(image)
    assert image.digest.startswith("sha256:")
    assert Path(image.ref).name == image.digest.removeprefix("sha256:")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISLNK(st.st_mode):
                assert not st.st_mode & 0o222, os.path.join(dirpath, name)
    assert (root / "bin" / "tool.sh").stat().st_mode & 0o111
    manifest = json.loads((Path(image.ref) / "manifest.json").read_text())
    assert manifest["digest"] == image.digest and manifest["env"] == {"A": "1"}
    assert manifest["python"].count(".") == 2
    assert get_image(store, image.digest) == image
    assert any(r.digest == image.digest and r.name == "sealed" for r in list_images(store))


# ---------------------------------------------------------------- failures


def test_failing_step_names_itself_and_leaves_the_store_unchanged(
        builder: LocalBuilder, store: Store, home: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    before = image_state(home, store)
    s = spec({"copy": "x"}, {"run": "for i in $(seq 1 30); do echo line$i; done; exit 3"})
    with pytest.raises(BakeError) as err:
        bake(builder, "broken", s, tmp_path)
    first, *rest = str(err.value).splitlines()
    assert first == "step 2/2 (run: for i in $(seq 1 30); do echo line$i; done; exit 3) " \
                    "failed with exit code 3"
    assert rest == [f"line{i}" for i in range(11, 31)]
    assert image_state(home, store) == before
    assert not (home / "tmp" / "work").exists()


def test_missing_copy_source_names_step_and_path(builder: LocalBuilder, tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=r"step 1/1 \(copy nothere/ -> app/\).*'nothere/'"):
        bake(builder, "missing", spec({"copy": "nothere/", "to": "app/"}), tmp_path)
    # `../` is refused by the spec; a symlink that leaves the project is refused by the builder
    (tmp_path / "escape").symlink_to("/etc")
    with pytest.raises(BakeError, match="outside"):
        bake(builder, "missing", spec({"copy": "escape"}), tmp_path)


def test_step_timeout(builder: LocalBuilder, tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=r"step 1/1 \(run: sleep 20\) timed out after 0.3s"):
        bake(builder, "slow", spec({"run": "sleep 20", "timeout": "300ms"}), tmp_path)


def test_unknown_base(builder: LocalBuilder, tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=r"expected python or python3\.X"):
        bake(builder, "b", spec(base="ubuntu"), tmp_path)
    with pytest.raises(BakeError, match=r"python3\.99"):
        bake(builder, "b", spec(base="python3.99"), tmp_path)


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kiln.platforms.local.builder import LocalBuilder
    from kiln.spec.models import ImageSpec
    from kiln.state.store import Store
    home, base_dir, marker = map(Path, sys.argv[1:4])
    spec = ImageSpec.model_validate({"steps": [{"copy": "x"}, {"run": "sleep 30"}]})
    def progress(ev):
        if ev.status == "running" and ev.index == 2:
            marker.write_text("running")
    LocalBuilder(Store.open(home), home).build("killed", spec, base_dir=base_dir,
                                               progress=progress)
""")


def test_killed_bake_leaves_no_partial_image_and_next_bake_works(
        builder: LocalBuilder, store: Store, home: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    marker = tmp_path / "marker"
    before = image_state(home, store)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(home), str(tmp_path), str(marker)])
    step_pid: list[int] = []
    try:
        wait_for(lambda: (marker.exists() and (home / "tmp" / "step.pid").exists())
                 or child.poll() is not None, timeout=120, interval=0.02,
                 what="the sleep step to start")
        assert child.poll() is None, "the bake ended before it could be killed"
        step_pid.append(int((home / "tmp" / "step.pid").read_text().split()[0]))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert (home / "tmp" / "work").exists(), "the killed bake left its scratch folder"
        assert image_state(home, store) == before
        image, events = bake(builder, "killed", spec({"copy": "x"}, {"run": "echo ok > y"}),
                             tmp_path)
        assert final(events)[1] == "cached"
        assert (root_of(image) / "y").read_text() == "ok\n"
        assert not (home / "tmp" / "work").exists()
        assert not pid_alive(step_pid[0], None), "the orphaned step was killed by the next bake"
        folders, _rows = image_state(home, store)
        assert folders == sorted({*before[0], image.digest.removeprefix("sha256:")})
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in step_pid:
            if pid_alive(pid, None):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- store


def test_get_and_remove_images(builder: LocalBuilder, store: Store, home: Path,
                               tmp_path: Path) -> None:
    (tmp_path / "k").write_text("1")
    keep, _ = bake(builder, "gc", spec({"copy": "k"}), tmp_path)
    (tmp_path / "k").write_text("2")
    drop, _ = bake(builder, "gc", spec({"copy": "k"}), tmp_path)
    orphan = home / "images" / ("0" * 64)
    orphan.mkdir()
    everything = {r.digest for r in list_images(store)} - {drop.digest}
    removed = remove_images(store, home, everything)
    assert removed == [drop.digest]
    assert not Path(drop.ref).exists() and not orphan.exists()
    assert Path(keep.ref).is_dir()
    with pytest.raises(NotFound):
        get_image(store, drop.digest)
    assert get_image(store, keep.digest.removeprefix("sha256:")).digest == keep.digest
    # the removed image bakes again from the step cache
    again, events = bake(builder, "gc", spec({"copy": "k"}), tmp_path)
    assert again.digest == drop.digest and final(events)[1] == "cached"


# ---------------------------------------------------------------- integrity at every use


def test_a_tampered_image_is_refused_and_rebuilt(builder: LocalBuilder, store: Store,
                                                 tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('v1')\n")
    s = spec({"copy": "app/", "to": "app/"})
    image, _ = bake(builder, "guarded", s, tmp_path)
    target = root_of(image) / "app" / "main.py"
    assert integrity_problem(store, image) is None
    builder.verify(image, "launch it")
    # Same bytes, new metadata: still what was baked.
    os.utime(target, (1, 1))
    assert integrity_problem(store, image) is None
    # New bytes of the same size, mtime put back (touch -r): caught by content, named.
    stamp = target.stat()
    target.chmod(0o644)
    target.write_text("print('ev')\n")
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    target.chmod(stat.S_IMODE(stamp.st_mode))
    problem = integrity_problem(store, image)
    assert problem is not None and "app/main.py: content differs" in problem, problem
    with pytest.raises(ImageTampered, match=r"app/main.py: content differs; refused to launch"):
        builder.verify(image, "launch it")
    assert store.one("SELECT * FROM events WHERE kind = 'image.tampered' ORDER BY id DESC")
    assert builder.resolve("guarded", s, base_dir=tmp_path) is None
    # A bake rebuilds it: same digest, original content, intact again.
    # (From the last step's snapshot in the cache, which the tampering did not touch.)
    again, _ = bake(builder, "guarded", s, tmp_path)
    assert again.digest == image.digest
    assert "rebuilding" in store.one("SELECT message FROM events WHERE kind = 'image.tampered' "
                                     "ORDER BY id DESC LIMIT 1")["message"]
    assert target.read_text() == "print('v1')\n"
    assert integrity_problem(store, again) is None


def test_an_added_or_removed_file_or_a_rewritten_seal_is_caught(builder: LocalBuilder,
                                                                store: Store,
                                                                tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('v1')\n")
    image, _ = bake(builder, "guarded2", spec({"copy": "app/", "to": "app/"}), tmp_path)
    app = root_of(image) / "app"
    app.chmod(0o755)
    (app / "extra.py").write_text("x = 1\n")
    (Path(image.ref) / "seal.json").write_text("{}")  # nothing beside the image is trusted
    assert integrity_problem(store, image) == (
        f"image guarded2 {image.digest[:19]} was modified after baking: app/extra.py: added")
    (app / "extra.py").unlink()
    assert integrity_problem(store, image) is None  # write bits added back are not content


def test_a_poisoned_step_cache_entry_is_rebuilt_with_one_warning(
        store: Store, home: Path, tmp_path: Path) -> None:
    warnings: list[str] = []
    builder = LocalBuilder(store, home, warn=warnings.append)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('v1')\n")
    s = spec({"copy": "app/", "to": "app/"}, {"env": {"A": "1"}})
    first, _ = bake(builder, "poison", s, tmp_path)
    key = store.one("SELECT key FROM images WHERE digest = ?", (first.digest,))["key"]
    snapshot = home / store.one("SELECT snapshot FROM steps WHERE key = ?", (key,))["snapshot"]
    (snapshot / "sitecustomize.py").write_text("print('pwned')\n")
    second, _ = bake(builder, "poison", spec({"copy": "app/", "to": "app/"},
                                                 {"env": {"A": "1"}},
                                                 {"run": "true"}), tmp_path)
    assert not (root_of(second) / "sitecustomize.py").exists()
    assert len(warnings) == 1, warnings
    assert "sitecustomize.py: added" in warnings[0] and "rebuilding" in warnings[0]
    assert store.one("SELECT 1 FROM events WHERE kind = 'cache.tampered'") is not None
    assert integrity_problem(store, second) is None


def test_a_second_project_reuses_the_shared_base_environment(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    s = spec({"copy": "app/", "to": "app/"})
    digests, bases = [], []
    for project in ("one", "two"):
        home = tmp_path / project
        store = Store.open(home)
        try:
            image, events = bake(LocalBuilder(store, home), "shared", s, tmp_path)
        finally:
            store.close()
        digests.append(image.digest)
        bases.append([e for e in events if e.index == 0][-1])
    assert bases[0].status == "ran" and bases[1].status == "cached", bases
    assert "shared cache" in bases[1].description
    assert digests[0] == digests[1], "the shared base gives the same image"
    assert bases[1].duration < bases[0].duration


def test_run_step_output_is_streamed_line_by_line(builder: LocalBuilder, tmp_path: Path) -> None:
    s = spec({"run": "for i in 1 2 3; do echo line-$i; done"})
    _, events = bake(builder, "stream", s, tmp_path)
    lines = [e.output for e in events if e.status == "running" and e.output]
    assert lines == ["line-1", "line-2", "line-3"]
