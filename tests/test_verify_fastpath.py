"""The verification fast path (kiln.bake.manifest.check with recorded keys): a file is trusted
without reading it only when its lstat is exactly the (dev, ino, size, mtime, ctime) recorded
when its content last matched; every attack that changes a file's content or the tree's shape
changes that key or the walk (same-size edit with `touch -r`, rename over, hard-link writes,
chmod, add, remove, symlink retarget, type change), and a key is only recorded once its ctime is
before the current second. Real trees on disk; the keys' encoding is a pure table test."""

from __future__ import annotations

import mmap
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.bake import imagestore, manifest
from kiln.bake.manifest import Entry, Manifest, check, decode_keys, encode_keys
from kiln.errors import KilnError
from kiln.platforms.base import Image
from kiln.state.records import verified
from kiln.state.store import Store
from kiln.testing.images import wait_keyable

FILES = (Entry("a", "d", 0o555), Entry("a/x.py", "f", 0o444, 3, "11" * 32),
         Entry("a/y.py", "f", 0o444, 4, "22" * 32), Entry("l", "l", 0o777, 0, "a/x.py"))
M = Manifest(FILES)


@pytest.mark.parametrize(("keys", "expected"), [
    ({}, {}),
    ({"a/x.py": (1, 2, 3, 4, 5)}, {"a/x.py": ((1, 2, 3, 4, 5), FILES[1])}),
    ({"a/x.py": (1, 2, 3, 4, 5), "a/y.py": (1, 9, 4, -7, 8)},
     {"a/x.py": ((1, 2, 3, 4, 5), FILES[1]), "a/y.py": ((1, 9, 4, -7, 8), FILES[2])}),
    ({"not/in/manifest": (1, 2, 3, 4, 5)}, {}),  # only the manifest's files are encoded
])
def test_keys_round_trip_against_their_manifest(keys: dict[str, manifest.Key],
                                                expected: dict[str, object]) -> None:
    assert decode_keys(M, encode_keys(M, keys)) == expected


@pytest.mark.parametrize("blob", [b"", b"garbage", encode_keys(Manifest(FILES[:2]), {})])
def test_keys_that_do_not_fit_the_manifest_are_ignored(blob: bytes) -> None:
    assert decode_keys(M, blob) == {}


def make_tree(root: Path) -> None:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('v1')\n")
    (root / "app" / "other.py").write_text("print('v2')\n")  # same size as main.py
    (root / "app" / "lib").mkdir()
    for i in range(20):
        (root / "app" / "lib" / f"m{i}.py").write_text(f"x = {i}\n")
    (root / "app" / "link").symlink_to("main.py")
    imagestore.seal_readonly(root)


def settle(root: Path) -> None:
    """Wait until every ctime under `root` is old enough to key."""
    wait_keyable([root], timeout=5.0)


def recorded(root: Path) -> tuple[Manifest, dict[str, tuple[manifest.Key, Entry]]]:
    """The tree's manifest and the keys a first (full) check records, on a settled tree."""
    settle(root)
    content = manifest.build(root)
    first = check(root, content, {})
    assert first.problem is None and first.hashed == content.files
    assert set(first.keys) == {e.path for e in content.entries if e.kind == "f"}
    return content, decode_keys(content, encode_keys(content, first.keys))


def writable(path: Path) -> None:
    path.chmod(stat.S_IMODE(path.lstat().st_mode) | stat.S_IWUSR)


def test_an_unchanged_tree_is_checked_without_reading_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    content, known = recorded(root)
    again = check(root, content, known)
    assert again.problem is None and again.hashed == 0
    assert again.keys == {p: k for p, (k, _) in known.items()}
    os.utime(root / "app" / "main.py", (1, 1))  # new metadata, same bytes: read, still good
    after = check(root, content, known)
    assert after.problem is None and after.hashed == 1
    assert "app/main.py" not in after.keys  # its ctime is now: recorded by a later check
    settle(root)
    assert check(root, content, known).keys["app/main.py"] != known["app/main.py"][0]


NS = 1_700_000_000_123_456_789


@pytest.mark.parametrize(("ctime", "granule"), [
    (NS, 1),  # a nanosecond filesystem (ext4, xfs, btrfs, tmpfs)
    (1_700_000_000_123_456_700, 100),  # NTFS's 100 ns, or a nanosecond stamp ending in 00
    (1_700_000_000_120_000_000, 10_000_000),  # 10 ms
    (1_700_000_000_100_000_000, 100_000_000),  # capped: never finer than it may be
    (1_700_000_000_000_000_000, 2_000_000_000),  # whole seconds: 1 s filesystems, FAT's 2 s
])
def test_the_granule_is_the_coarsest_a_ctime_may_have_been_truncated_to(ctime: int,
                                                                       granule: int) -> None:
    assert manifest.granule(ctime) == granule


@pytest.mark.parametrize(("ctime", "since_after", "ok"), [
    (NS, 0, False),  # stamped at the instant of the lease: a later write may repeat it
    (NS, manifest._MARGIN_NS, False),  # two ticks and not the granule: not yet
    (NS, manifest._MARGIN_NS + 1, True),
    (1_700_000_000_000_000_000, manifest._MARGIN_NS + 1_000_000_000, False),  # a 1 s stamp
    (1_700_000_000_000_000_000, manifest._MARGIN_NS + 2_000_000_000, True),
    (NS, -1_000_000_000, False),  # a ctime in the future (the clock went back): never
])
def test_a_key_is_trusted_only_two_ticks_and_a_granule_after_its_ctime(
        ctime: int, since_after: int, ok: bool) -> None:
    assert manifest.trusted(ctime, ctime + since_after) is ok
    assert manifest._MARGIN_NS >= 2_000_000  # at least two ticks of 1 ms


def test_a_file_changed_within_the_margin_gets_no_key_until_a_later_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    make_tree(root)
    content = manifest.build(root)
    monkeypatch.setattr(manifest, "_MARGIN_NS", 3600 * 1_000_000_000)  # "now" is always racy
    fresh = check(root, content, {})
    assert fresh.problem is None and fresh.keys == {}
    assert manifest.scan(root)[1] == {}  # nor does a bake record one
    monkeypatch.undo()
    settle(root)
    later = check(root, content, {})
    assert set(later.keys) == {e.path for e in content.entries if e.kind == "f"}


def same_size_edit_mtime_restored(root: Path) -> None:
    target = root / "app" / "main.py"
    before = target.stat()
    writable(target)
    target.write_text("print('ev')\n")
    target.chmod(stat.S_IMODE(before.st_mode))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r


def replaced_by_rename(root: Path) -> None:
    target = root / "app" / "main.py"
    before = target.stat()
    writable(root / "app")
    new = root / "app" / ".main.py.new"
    new.write_text("print('ev')\n")
    new.chmod(stat.S_IMODE(before.st_mode))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, target)
    (root / "app").chmod(0o555)


def written_through_a_hard_link(root: Path) -> None:
    target = root / "app" / "main.py"
    before = target.stat()
    outside = root.parent / "outside.py"
    os.link(target, outside)
    writable(outside)
    outside.write_text("print('ev')\n")
    outside.chmod(stat.S_IMODE(before.st_mode))
    os.utime(outside, ns=(before.st_atime_ns, before.st_mtime_ns))


def swapped_with_a_same_size_file(root: Path) -> None:
    writable(root / "app")
    os.replace(root / "app" / "main.py", root / "app" / ".tmp")
    os.replace(root / "app" / "other.py", root / "app" / "main.py")
    os.replace(root / "app" / ".tmp", root / "app" / "other.py")


def chmod_setuid(root: Path) -> None:
    (root / "app" / "main.py").chmod(0o4555)


def file_added(root: Path) -> None:
    writable(root / "app" / "lib")
    (root / "app" / "lib" / "sitecustomize.py").write_text("print('pwned')\n")


def file_removed(root: Path) -> None:
    writable(root / "app" / "lib")
    (root / "app" / "lib" / "m3.py").unlink()


def file_renamed(root: Path) -> None:
    writable(root / "app" / "lib")
    os.rename(root / "app" / "lib" / "m1.py", root / "app" / "lib" / "m1b.py")


def symlink_retargeted(root: Path) -> None:
    writable(root / "app")
    (root / "app" / "link").unlink()
    (root / "app" / "link").symlink_to("/etc/shadow")


def file_became_a_folder(root: Path) -> None:
    writable(root / "app" / "lib")
    (root / "app" / "lib" / "m5.py").unlink()
    (root / "app" / "lib" / "m5.py").mkdir()


@pytest.mark.parametrize(("attack", "expected"), [
    (same_size_edit_mtime_restored, "app/main.py: content differs"),
    (replaced_by_rename, "app/main.py: content differs"),
    (written_through_a_hard_link, "app/main.py: content differs"),
    (swapped_with_a_same_size_file, "app/main.py: content differs"),
    (chmod_setuid, "app/main.py: mode 4555, not 444"),
    (file_added, "app/lib/sitecustomize.py: added"),
    (file_removed, "app/lib/m3.py: removed"),
    (file_renamed, "app/lib/m1.py: removed"),
    (symlink_retargeted, "app/link: symlink now points to '/etc/shadow', not 'main.py'"),
    (file_became_a_folder, "app/lib/m5.py: was a file, now a folder"),
])
def test_every_attack_is_caught_by_the_fast_path(tmp_path: Path, attack: Callable[[Path], None],
                                                 expected: str) -> None:
    root = tmp_path / "root"
    make_tree(root)
    content, known = recorded(root)
    assert check(root, content, known).hashed == 0  # the fast path is what is tested
    attack(root)
    found = check(root, content, known)
    assert found.problem == expected and found.keys == {}
    assert check(root, content, None).problem == expected  # the full check agrees


def test_kiln_verify_full_forces_a_full_check_and_a_bad_value_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_VERIFY", raising=False)
    assert manifest.full_by_default() is False
    monkeypatch.setenv("KILN_VERIFY", "FULL")
    assert manifest.full_by_default() is True
    monkeypatch.setenv("KILN_VERIFY", "sometimes")
    with pytest.raises(KilnError) as err:
        manifest.full_by_default()
    assert str(err.value).count("\n") == 0 and "KILN_VERIFY='sometimes'" in str(err.value)
    assert "expected 'full' or 'fast'" in str(err.value)


def image_in(store: Store, home: Path) -> tuple[Image, Manifest, bytes]:
    folder = home / "images" / "one"
    make_tree(folder / "root")
    content = manifest.build(folder / "root")
    blob = content.encode()
    image = imagestore.record_image(store, name="one", digest="sha256:" + "1" * 64,
                                    ref=str(folder), key="k", env={}, size=content.size,
                                    manifest=blob)
    return image, content, blob


def test_the_state_holds_the_keys_bound_to_the_manifest(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_VERIFY", raising=False)
    home = tmp_path / "home"
    store = Store.open(home)
    try:
        image, content, blob = image_in(store, home)
        tree = f"image:{image.digest}"
        settle(Path(image.ref) / "root")
        assert imagestore.integrity_problem(store, image) is None  # records the keys
        saved = verified.load(store, tree, blob)
        assert saved is not None and len(decode_keys(content, saved)) == content.files
        assert verified.load(store, tree, blob + b"x") is None  # another manifest: not used
        with monkeypatch.context() as m:  # after a reboot: not used (a crash can leave new
            m.setattr(verified, "boot_id", lambda: "another-boot")  # bytes under an old ctime)
            assert verified.load(store, tree, blob) is None
        # The fast path then still catches a quiet edit, names it, and records nothing new.
        same_size_edit_mtime_restored(Path(image.ref) / "root")
        problem = imagestore.integrity_problem(store, image)
        assert problem == (f"image one {image.digest[:19]} was modified after baking: "
                           "app/main.py: content differs")
        assert verified.load(store, tree, blob) == saved
        # A forced full check agrees, whatever the keys say.
        monkeypatch.setenv("KILN_VERIFY", "full")
        assert imagestore.integrity_problem(store, image) == problem
        # gc forgets the keys with the image.
        imagestore.remove_images(store, home, set())
        assert verified.load(store, tree, blob) is None
    finally:
        store.close()


def test_a_copy_of_the_tree_is_re_read_not_trusted_by_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    content, known = recorded(root)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)
    found = check(moved, content, known)
    assert found.problem is None and found.hashed == content.files  # other inodes: all read


def test_a_file_mapped_writable_while_it_is_hashed_gets_no_key(tmp_path: Path) -> None:
    """A write to an mmap page that is already dirty and writable does not fault, so the
    kernel does not stamp the ctime until writeback: a key recorded while such a mapping
    exists could be fooled. A file open for writing anywhere is hashed but not keyed."""
    root = tmp_path / "root"
    make_tree(root)
    target = root / "app" / "main.py"
    writable(target)
    fd = os.open(target, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mapped:  # MAP_SHARED, writable
            mapped[:] = bytes(mapped[:])  # the page dirty and writable, the bytes the same
            target.chmod(0o444)
            settle(root)
            content = manifest.build(root)
            first = check(root, content, {})
            assert first.problem is None and first.hashed == content.files
            assert "app/main.py" not in first.keys and len(first.keys) == content.files - 1
            known = decode_keys(content, encode_keys(content, first.keys))
            mapped[7:9] = b"ev"  # may leave the ctime as it was: no key trusts it
        found = check(root, content, known)
        assert found.problem == "app/main.py: content differs" and found.hashed == 1
    finally:
        os.close(fd)
    again = check(root, content, known)  # closed: the next check may key it (once settled)
    assert again.problem == "app/main.py: content differs"
