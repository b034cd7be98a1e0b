"""The verification fast path under attack, through real launches: with the keys of every file
of both releases' images recorded in the state (so launches trust unchanged inodes without
reading them), each attack on an image (same-size edit with `touch -r`, rename over, a write
through a hard link, chmod, an added file, a removed file, a retargeted symlink) is refused by a
rollback (`kiln rollback`, one stderr line naming the file) and by a heal (what `kiln serve`
does for a dead instance); undone, both launch again."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.bake.imagestore import get_image, integrity_problem
from kiln.bake.manifest import Manifest, decode_keys
from kiln.errors import ImageTampered
from kiln.project import Project
from kiln.rollout.heal import heal
from kiln.state.records import verified
from kiln.testing.images import wait_keyable
from kiln.testing.project import Proj, wait_for

pytestmark = pytest.mark.e2e

Undo = Callable[[], None]


def ok(p: Proj, *args: str) -> str:
    res = p.kiln(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def root_of(p: Proj, digest: str) -> Path:
    return p.dir / ".kiln" / "images" / digest.removeprefix("sha256:") / "root"


def settle(root: Path) -> None:
    """Until every ctime in the image is old enough to key: then a check records it."""
    wait_keyable([root])


def record_keys(p: Proj, digests: list[str]) -> dict[str, set[str]]:
    """A passing check of each image (it records the keys) and the paths whose key is kept."""
    project = Project.open(p.dir / "kiln.yaml")
    try:
        out = {}
        for digest in digests:
            settle(root_of(p, digest))
            # The launch path's check records keys (drift's, read-only, does not).
            assert integrity_problem(project.store, get_image(project.store, digest)) is None
            blob = bytes(project.store.one("SELECT manifest FROM images WHERE digest = ?",
                                           (digest,))["manifest"])
            saved = verified.load(project.store, f"image:{digest}", blob)
            assert saved is not None
            out[digest] = set(decode_keys(Manifest.decode(blob), saved))
        return out
    finally:
        project.close()


def restore(path: Path, data: bytes, mode: int) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def quiet_edit(root: Path) -> Undo:
    target = root / "app" / "behaviour.json"
    before, data = target.stat(), target.read_bytes()
    target.chmod(before.st_mode | stat.S_IWUSR)
    target.write_bytes(data.replace(b'"version"', b'"VERSION"'))
    target.chmod(stat.S_IMODE(before.st_mode))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    assert target.stat().st_size == before.st_size
    return lambda: restore(target, data, stat.S_IMODE(before.st_mode))


def renamed_over(root: Path) -> Undo:
    target = root / "app" / "behaviour.json"
    before, data = target.stat(), target.read_bytes()
    new = target.with_name(".behaviour.json.new")
    new.write_bytes(data.replace(b'"version"', b'"VERSION"'))
    new.chmod(stat.S_IMODE(before.st_mode))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, target)
    return lambda: restore(target, data, stat.S_IMODE(before.st_mode))


def through_a_hard_link(root: Path) -> Undo:
    target = root / "app" / "behaviour.json"
    before, data = target.stat(), target.read_bytes()
    outside = root.parents[2] / f"outside-{root.parent.name[:8]}.json"
    os.link(target, outside)
    outside.chmod(before.st_mode | stat.S_IWUSR)
    with open(outside, "r+b") as fh:  # the same inode as the image's file
        fh.write(data.replace(b'"version"', b'"VERSION"'))
    outside.chmod(stat.S_IMODE(before.st_mode))
    os.utime(outside, ns=(before.st_atime_ns, before.st_mtime_ns))

    def undo() -> None:
        outside.unlink()
        restore(target, data, stat.S_IMODE(before.st_mode))
    return undo


def chmod_setuid(root: Path) -> Undo:
    target = root / "app" / "behaviour.json"
    mode = stat.S_IMODE(target.stat().st_mode)
    target.chmod(mode | stat.S_ISUID | stat.S_IXUSR)
    return lambda: target.chmod(mode)


def added(root: Path) -> Undo:
    extra = root / "app" / "sitecustomize.py"
    extra.write_text("print('pwned')\n")
    return extra.unlink


def removed(root: Path) -> Undo:
    target = root / "app" / "behaviour.json"
    data, mode = target.read_bytes(), stat.S_IMODE(target.stat().st_mode)
    target.unlink()
    return lambda: restore(target, data, mode)


def a_symlink(root: Path) -> Path:
    for d, dirs, files in sorted(os.walk(root)):
        for n in sorted((*dirs, *files)):
            if os.path.islink(os.path.join(d, n)):
                return Path(d) / n
    raise AssertionError(f"no symlink in {root}")


def retargeted(root: Path) -> Undo:
    link = a_symlink(root)
    target = os.readlink(link)
    link.unlink()
    link.symlink_to("/etc/shadow")

    def undo() -> None:
        link.unlink()
        link.symlink_to(target)
    return undo


ATTACKS: list[tuple[Callable[[Path], Undo], str, bool]] = [
    # (attack, what the refusal says, whether it is a file with a recorded key)
    (quiet_edit, "app/behaviour.json: content differs", True),
    (renamed_over, "app/behaviour.json: content differs", True),
    (through_a_hard_link, "app/behaviour.json: content differs", True),
    (chmod_setuid, "app/behaviour.json: mode", True),
    (added, "app/sitecustomize.py: added", False),
    (removed, "app/behaviour.json: removed", True),
    (retargeted, "symlink now points to '/etc/shadow'", False),
]


def test_each_attack_is_refused_by_rollback_and_heal_on_the_fast_path(proj: Proj) -> None:
    ok(proj, "deploy")
    proj.behave(version="2")
    ok(proj, "deploy")
    images = json.loads(ok(proj, "images", "--json"))
    second, first = str(images[0]["digest"]), str(images[1]["digest"])
    assert proj.weights() == {"web-r2": 100}
    os.kill(proj.live_pids()[0], signal.SIGKILL)  # a dead instance: heal must relaunch it
    for attack, expected, keyed in ATTACKS:
        keys = record_keys(proj, [first, second])
        if keyed:  # the fast path would have trusted it: only its key changing gives it away
            assert all("app/behaviour.json" in k for k in keys.values()), attack.__name__
        undo = [attack(root_of(proj, d)) for d in (first, second)]
        res = proj.kiln("rollback", "web")
        assert res.returncode == 1, (attack.__name__, res.stdout + res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, (attack.__name__, res.stderr)
        assert expected in lines[0] and "refused to roll web back" in lines[0], \
            (attack.__name__, lines)
        project = Project.open(proj.dir / "kiln.yaml")
        try:
            current = project.current_release("web")
            assert current is not None
            with pytest.raises(ImageTampered) as err:
                heal(project.rollout_env("web", current.spec), "web", current)
            assert expected in str(err.value) and "\n" not in str(err.value), \
                (attack.__name__, str(err.value))
        finally:
            project.close()
        assert proj.weights() == {"web-r2": 100}, attack.__name__
        for fn in undo:
            fn()
    # Undone, both images launch again (their re-read files match; keys recorded anew).
    project = Project.open(proj.dir / "kiln.yaml")
    try:
        current = project.current_release("web")
        assert current is not None
        heal(project.rollout_env("web", current.spec), "web", current)
    finally:
        project.close()
    wait_for(lambda: proj.alive_instances() == 3, timeout=60.0, what="the healed instance")
    ok(proj, "rollback", "web")
    assert proj.weights() == {"web-r1": 100}
