"""State that was truncated, swapped or damaged is refused with one line naming the recovery;
backups are taken before migrations and deploys; state and logs are the operator's alone."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from kiln.errors import StateError
from kiln.state.store import Store, state_error


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
    with pytest.raises(StateError, match=r"is damaged .file is not a database"):
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
        conn.execute("DROP TABLE rollout_evidence")
        conn.execute("DROP TABLE verified_keys")
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


def _error(cls: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
    exc = cls(message)
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(("exc", "says", "backup"), [
    (_error(sqlite3.DatabaseError, "database disk image is malformed", 11), "is damaged", True),
    (_error(sqlite3.DatabaseError, "file is not a database", 26), "is damaged", True),
    (_error(sqlite3.OperationalError, "database is locked", 5), "locked by another process",
     False),
    (_error(sqlite3.OperationalError, "database table is locked", 6),
     "locked by another process", False),
    (_error(sqlite3.OperationalError, "attempt to write a readonly database", 8),
     "for writing", False),
    (_error(sqlite3.OperationalError, "unable to open database file", 14), "for writing", False),
    (_error(sqlite3.OperationalError, "disk I/O error", 10 | (3 << 8)), "input/output", False),
    (_error(sqlite3.OperationalError, "no such table: releases", 1), "cannot use", False),
])
def test_an_error_says_what_it_is_and_advises_a_backup_only_for_damage(
        tmp_path: Path, exc: sqlite3.Error, says: str, backup: bool) -> None:
    home = tmp_path / ".kiln"
    make(home)  # a sound database: a generic error on it is not damage
    Store.open(home).backup("deploy")
    err = state_error(exc, home / "state.db")
    text = str(err)
    assert says in text and "\n" not in text
    assert ("restore the newest backup" in text) is backup, text


def test_a_generic_error_on_a_damaged_file_advises_the_backup(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    make(home)
    Store.open(home).backup("deploy")
    db = home / "state.db"
    data = bytearray(db.read_bytes())
    data[4096 * 2:4096 * 2 + 64] = b"\xff" * 64  # a b-tree page header
    db.write_bytes(bytes(data))
    text = str(state_error(_error(sqlite3.OperationalError, "no such table: x", 1), db))
    assert "is damaged" in text and "restore the newest backup" in text


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    home.mkdir()
    db = home / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes(body) VALUES ('keep me')")
    before = db.read_bytes()
    with pytest.raises(StateError) as info:
        Store.open(home, "shop")
    text = str(info.value)
    assert "is not kiln's state" in text and "notes" in text and "\n" not in text
    assert "restore" not in text
    assert db.read_bytes() == before  # not migrated over, not switched to WAL


def test_a_sqlite_file_that_claims_a_schema_version_without_kilns_tables(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    home.mkdir()
    with sqlite3.connect(home / "state.db") as conn:
        conn.execute("CREATE TABLE things (name TEXT)")
        conn.execute("PRAGMA user_version=3")
    with pytest.raises(StateError, match=r"not kiln's state: schema v3 without table\(s\) "):
        Store.open(home)


def test_another_projects_state_is_refused(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    Store.open(home, "shop").close()
    with pytest.raises(StateError) as info:
        Store.open(home, "blog")
    assert "belongs to project 'shop', not 'blog'" in str(info.value)
    again = Store.open(home, "shop")
    assert again.project() == "shop"
    again.close()


def test_a_state_without_a_recorded_project_is_claimed_once(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    Store.open(home).close()  # opened without a project (older kiln: before migration 8)
    Store.open(home, "shop").close()
    with pytest.raises(StateError, match="belongs to project 'shop'"):
        Store.open(home, "blog")


@pytest.mark.parametrize("which", ["state.db", "state.db-wal", "state.db-shm"])
def test_a_directory_in_place_of_a_state_file(tmp_path: Path, which: str) -> None:
    home = tmp_path / ".kiln"
    make(home)
    (home / which).unlink(missing_ok=True)
    (home / which).mkdir()
    with pytest.raises(StateError, match=f"{which} is a directory"):
        Store.open(home)


def test_an_empty_state_beside_backups_is_refused(tmp_path: Path) -> None:
    home = tmp_path / ".kiln"
    make(home)
    Store.open(home).backup("deploy")
    (home / "state.db").write_bytes(b"")
    with pytest.raises(StateError, match=r"is empty but .* still holds backups"):
        Store.open(home)
