"""Content manifests: what they record, the first difference they name (pure table tests of
`compare`), and `difference` on real trees (a same-size edit with its mtime put back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.bake.manifest import Entry, Manifest, build, compare, difference

A = Entry("app", "d", 0o555)
MAIN = Entry("app/main.py", "f", 0o444, 12, "aa" * 32)
LINK = Entry("app/link", "l", 0o777, 0, "main.py")


@pytest.mark.parametrize(("now", "expected"), [
    ((A, LINK, MAIN), None),
    ((A, LINK, Entry("app/main.py", "f", 0o644, 12, "aa" * 32)), None),  # write bits only
    ((A, LINK, Entry("app/main.py", "f", 0o444, 12, "bb" * 32)), "app/main.py: content differs"),
    ((A, LINK, Entry("app/main.py", "f", 0o4555, 12, "aa" * 32)),
     "app/main.py: mode 4555, not 444"),
    ((A, LINK, Entry("app/main.py", "f", 0o444, 13, "aa" * 32)), "app/main.py: size 13, not 12"),
    ((A, MAIN), "app/link: removed"),
    ((A, LINK, MAIN, Entry("sitecustomize.py", "f", 0o644, 1, "cc" * 32)),
     "sitecustomize.py: added"),
    ((A, Entry("app/link", "l", 0o777, 0, "/etc/shadow"), MAIN),
     "app/link: symlink now points to '/etc/shadow', not 'main.py'"),
    ((A, LINK, Entry("app/main.py", "d", 0o555)), "app/main.py: was a file, now a folder"),
    # the first in path order, whatever else differs
    ((A, Entry("app/link", "f", 0o444, 1, "dd" * 32), Entry("app/main.py", "f", 0o444, 12,
                                                            "ee" * 32)),
     "app/link: was a symlink, now a file"),
])
def test_compare_names_the_first_difference(now: tuple[Entry, ...], expected: str | None
                                            ) -> None:
    assert compare(Manifest((A, LINK, MAIN)), Manifest(now)) == expected


def test_a_manifest_round_trips_and_refuses_garbage() -> None:
    m = Manifest((A, LINK, MAIN))
    assert Manifest.decode(m.encode()) == m
    with pytest.raises(ValueError):
        Manifest.decode(b"not a manifest")


def test_difference_reads_content_not_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "pkg" / "sub").mkdir(parents=True)
    for i in range(300):  # more than one worker task per folder
        (root / "pkg" / f"m{i}.py").write_text(f"x = {i:04d}\n")
    (root / "pkg" / "sub" / "big.bin").write_bytes(os.urandom(5 << 20))  # hashed via mmap
    (root / "pkg" / "link").symlink_to("m1.py")
    recorded = build(root)
    assert recorded.files == 301 and difference(root, recorded) is None
    target = root / "pkg" / "m7.py"
    st = target.stat()
    target.write_text("x = 9999\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert difference(root, recorded) == "pkg/m7.py: content differs"
    target.write_text("x = 0007\n")
    big = root / "pkg" / "sub" / "big.bin"
    data = bytearray(big.read_bytes())
    data[3 << 20] ^= 1
    big.write_bytes(bytes(data))
    assert difference(root, recorded) == "pkg/sub/big.bin: content differs"
