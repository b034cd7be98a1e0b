"""gc of the local step cache: snapshots on a kept image's chain and those of an unfinished bake
stay; the rest go, row and folder (a folder shared with an env step only with its last row)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from kiln.platforms.local.stepcache import remove_unused
from kiln.state.store import Store


def _step(store: Store, home: Path, key: str, parent: str | None, t: float,
          snapshot: str | None = None) -> None:
    snap = snapshot or f"cache/{key}"
    (home / snap).mkdir(parents=True, exist_ok=True)
    (home / snap / "file").write_text(key)
    with store.tx() as c:
        c.execute("INSERT INTO steps(key, parent_key, image_name, description, snapshot, "
                  "created_at, used_at) VALUES (?,?,?,?,?,?,?)",
                  (key, parent, "web", f"step {key}", snap, t, t))


def _image(store: Store, digest: str, key: str, t: float) -> None:
    with store.tx() as c:
        c.execute("INSERT INTO images(digest, name, ref, key, env_json, size, created_at) "
                  "VALUES (?,?,?,?,?,?,?)", (digest, "web", "/x", key, "{}", 0, t))


def test_only_snapshots_no_kept_image_and_no_unfinished_bake_needs_are_removed(
        tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    # v1: base -> copy -> run (image at t=3); v2 edited the run step (image at t=6); then v3
    # changed it again and failed (t=7, after the newest image). `env` after v2's run step
    # shares its parent's folder.
    _step(store, home, "base", None, 1)
    _step(store, home, "copy", "base", 2)
    _step(store, home, "run1", "copy", 2.5)
    _image(store, "sha256:v1", "run1", 3)
    _step(store, home, "run2", "copy", 5)
    _step(store, home, "env2", "run2", 5.5, snapshot="cache/run2")
    _image(store, "sha256:v2", "env2", 6)
    _step(store, home, "run3", "copy", 7)
    _step(store, home, "orphan", "gone", 4)  # from an image gc removed earlier
    with store.tx() as c:
        c.execute("DELETE FROM images WHERE digest = 'sha256:v1'")  # gc dropped v1's image
    removed = remove_unused(store, home)
    assert sorted(r.split(": ")[1].split(" (")[0] for r in removed) == ["step orphan",
                                                                         "step run1"]
    left = {r["key"] for r in store.query("SELECT key FROM steps")}
    assert left == {"base", "copy", "run2", "env2", "run3"}
    assert not (home / "cache" / "run1").exists() and not (home / "cache" / "orphan").exists()
    assert (home / "cache" / "run2" / "file").exists() and (home / "cache" / "run3").exists()
    # v2's image goes too: its own run step goes, and with env2 the shared folder.
    with store.tx() as c:
        c.execute("DELETE FROM images WHERE digest = 'sha256:v2'")
    _image(store, "sha256:v4", "copy", 8)
    assert len(remove_unused(store, home)) == 3  # run2, env2, and run3 (older than v4 now)
    assert not (home / "cache" / "run2").exists()
    assert {r["key"] for r in store.query("SELECT key FROM steps")} == {"base", "copy"}
    store.close()


def test_nothing_is_removed_while_a_bake_holds_the_lock(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    _step(store, home, "stale", None, 1)
    _image(store, "sha256:v1", "other", 2)
    lock = home / "tmp" / "bake.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert remove_unused(store, home) == []
    assert len(remove_unused(store, home)) == 1
    store.close()
