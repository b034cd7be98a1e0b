"""State that was truncated, swapped or damaged is refused with one line naming the recovery;
backups are taken before migrations and deploys; state and logs are the operator's alone."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from kiln.errors import StateError
from kiln.state.store import Store


def make(home: Path) -> None:
    store = Store.open(home)
    store.event("test", "something happened")
    store.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_permissions(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    make(home)
    assert mode(home) == 0o700
    assert mode(home / "state.db") == 0o600


def test_a_truncated_state_beside_instances_is_refused(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    make(home)
    (home / "instances" / "web-r1-abc").mkdir(parents=True)
    Store.open(home).backup("deploy")
    (home / "state.db").write_bytes(b"")
    (home / "state.db-wal").unlink(missing_ok=True)
    with pytest.raises(StateError) as info:
        Store.open(home)
    text = str(info.value)
    assert "is empty" in text and "truncated or deleted" in text
    assert "restore the newest backup: cp " in text and "\n" not in text
    assert (home / "state.db").stat().st_size == 0  # nothing was written over it


def test_a_damaged_page_is_refused_with_the_recovery(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    with store.tx() as c:
        for i in range(300):
            c.event("fill", "x" * 200 + str(i))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray((home / "state.db").read_bytes())
    page = 4096
    data[page * 3:page * 4] = b"\xde\xad\xbe\xef" * (page // 4)  # one garbage page
    (home / "state.db").write_bytes(bytes(data))
    with pytest.raises(StateError) as info:
        Store.open(home)
    assert "state.db" in str(info.value)
    assert "backup" in str(info.value) or "move" in str(info.value)


def test_not_a_database_at_all(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    home.mkdir()
    (home / "state.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(StateError, match="is damaged .file is not a database"):
        Store.open(home)


def test_backups_are_consistent_and_bounded(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    paths = [store.backup("deploy", keep=3) for _ in range(5)]
    kept = sorted((home / "backups").glob("state-*.db"))
    assert len(kept) == 3 and kept[-1] == paths[-1]
    assert mode(kept[-1]) == 0o600
    with sqlite3.connect(kept[-1]) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    store.close()


def test_migration_takes_a_backup(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    make(home)
    with sqlite3.connect(home / "state.db") as conn:
        conn.execute("PRAGMA user_version=3")  # as if an older kiln wrote it
        conn.execute("DROP TABLE IF EXISTS controller")
        conn.execute("DROP TABLE IF EXISTS meta")
        conn.execute("ALTER TABLE images DROP COLUMN workdir")
        conn.execute("ALTER TABLE releases DROP COLUMN image_env_json")
        conn.execute("ALTER TABLE releases DROP COLUMN image_workdir")
        conn.execute("ALTER TABLE images DROP COLUMN manifest")
        conn.execute("ALTER TABLE steps DROP COLUMN manifest")
        conn.execute("DROP TABLE layer_manifests")
    Store.open(home).close()
    assert list((home / "backups").glob("state-*-v3-migration.db"))


def test_a_state_replaced_under_a_running_command_is_not_written_to(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    store = Store.open(home)
    copy = store.backup("deploy")
    swap = home / "state.db.swap"
    swap.write_bytes(copy.read_bytes())
    swap.replace(home / "state.db")
    with pytest.raises(StateError, match="was replaced while this command ran"):
        store.event("late", "would be lost")
    store.close()
    again = Store.open(home)  # the next command works on what is there now
    again.event("next", "fine")
    again.close()
