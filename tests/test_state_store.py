"""The SQLite state: WAL, versioned migrations, append-only events, all-or-nothing transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import KilnError, StateError
from kiln.platforms.instance_rows import from_row
from kiln.state.store import MIGRATIONS, SCHEMA_VERSION, Store, _split_sql, default_home

TABLES = {"images", "steps", "attestations", "releases", "instances", "rollouts", "routes",
          "events", "lock"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "home")
    try:
        yield s
    finally:
        s.close()


def _raw(path: Path) -> sqlite3.Connection:
    """A connection of our own, independent of Store, to look at the file as another process would."""
    return sqlite3.connect(path, isolation_level=None)


def test_open_creates_wal_db_at_latest_version_with_every_table(tmp_path: Path) -> None:
    home = tmp_path / "deep" / "home"
    Store.open(home).close()
    db = home / "state.db"
    assert db.is_file()
    conn = _raw(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables >= TABLES
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='events'")}
        assert len(triggers) == 2
    finally:
        conn.close()


def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = Store.open(home)
    s.event("test.kind", "kept")
    s.close()
    s = Store.open(home)
    try:
        assert [r["message"] for r in s.events()] == ["kept"]
        assert s.one("PRAGMA user_version")[0] == SCHEMA_VERSION  # type: ignore[index]
    finally:
        s.close()


def test_old_database_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = _raw(home / "state.db")
    for statement in _split_sql(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO rollouts(service, to_release, strategy, phase, status_json, "
                 "started_at, updated_at) VALUES ('web', 'web-r1', 'canary', 'done', '{}', 1, 1)")
    conn.execute("PRAGMA user_version=1")
    conn.close()

    s = Store.open(home)
    try:
        assert s.one("PRAGMA user_version")[0] == SCHEMA_VERSION  # type: ignore[index]
        cols = {r["name"] for r in s.query("PRAGMA table_info(rollouts)")}
        assert "signal" in cols
        rel_cols = {r["name"] for r in s.query("PRAGMA table_info(releases)")}
        assert "skip_tests" in rel_cols
        row = s.one("SELECT service, signal FROM rollouts")
        assert row is not None and row["service"] == "web" and row["signal"] is None
    finally:
        s.close()


def test_instance_pids_move_into_the_platform_handle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = _raw(home / "state.db")
    for statement in _split_sql(MIGRATIONS[0]) + _split_sql(MIGRATIONS[1]):
        conn.execute(statement)
    conn.execute("INSERT INTO instances(id, service, release_id, host, port, pid, pid_start, "
                 "workdir, state, created_at) VALUES ('web-r1-a', 'web', 'web-r1', '127.1.2.3', "
                 "8000, 4242, '777', '/w/a', 'running', 1), ('web-r1-b', 'web', 'web-r1', "
                 "'127.1.2.4', 8000, NULL, NULL, '/w/b', 'starting', 2)")
    conn.execute("PRAGMA user_version=2")
    conn.close()

    s = Store.open(home)
    try:
        cols = {r["name"] for r in s.query("PRAGMA table_info(instances)")}
        assert "handle_json" in cols and not cols & {"pid", "pid_start", "workdir"}
        a, b = [from_row(r) for r in s.query("SELECT * FROM instances ORDER BY id")]
        assert dict(a.handle) == {"pid": "4242", "pid_start": "777", "workdir": "/w/a"}
        assert a.label == "pid 4242" and a.address == "127.1.2.3:8000"
        assert dict(b.handle) == {"workdir": "/w/b"}  # no pid recorded yet: no pid key
    finally:
        s.close()


def test_database_from_a_newer_kiln_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store.open(home).close()
    conn = _raw(home / "state.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StateError) as info:
        Store.open(home)
    msg = str(info.value)
    assert f"v{SCHEMA_VERSION + 5}" in msg and "newer" in msg
    assert "\n" not in msg
    assert info.value.exit_code == 1


def test_garbage_database_file_is_a_state_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StateError, match=r"state\.db"):
        Store.open(home)


@pytest.mark.parametrize("sql", [
    "UPDATE events SET message = 'rewritten'",
    "DELETE FROM events",
])
def test_events_are_append_only(store: Store, sql: str) -> None:
    store.event("a.kind", "first", service="web", data={"x": 1})
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), store.tx() as c:
        c.execute(sql)
    rows = store.events()
    assert [(r["kind"], r["message"], r["service"]) for r in rows] == [("a.kind", "first", "web")]
    assert rows[0]["data_json"] == '{"x": 1}'


def test_events_newest_first_and_filtered_by_service(store: Store) -> None:
    store.event("k", "one", service="web")
    store.event("k", "two", service="api")
    store.event("k", "three", service="web")
    assert [r["message"] for r in store.events()] == ["three", "two", "one"]
    assert [r["message"] for r in store.events("web")] == ["three", "one"]
    assert [r["message"] for r in store.events(limit=1)] == ["three"]


def test_transaction_that_raises_leaves_nothing_behind(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.tx() as c:
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'web-r1', 100)")
        c.event("route.set", "web-r1 at 100")
        raise Boom
    assert store.query("SELECT * FROM routes") == []
    assert store.events() == []
    # The connection is usable again afterwards (no transaction left open).
    with store.tx() as c:
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'web-r1', 100)")
    assert len(store.query("SELECT * FROM routes")) == 1


def test_failing_statement_rolls_back_earlier_statements(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.tx() as c:
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'r1', 10)")
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'r1', 20)")
    assert store.query("SELECT * FROM routes") == []


def test_committed_transaction_is_visible_to_another_connection(store: Store) -> None:
    with store.tx() as c:
        c.execute("INSERT INTO routes(service, release_id, weight) VALUES ('web', 'r1', 10)")
    conn = _raw(store.home / "state.db")
    try:
        assert conn.execute("SELECT weight FROM routes").fetchall() == [(10,)]
    finally:
        conn.close()


def _not_writable_homes(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return [a_file / "state", a_file, Path("/proc/kiln-cannot-write-here/state")]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_unwritable_state_dir_is_one_line_naming_the_folder(tmp_path: Path, which: int) -> None:
    home = _not_writable_homes(tmp_path)[which]
    with pytest.raises(StateError) as info:
        Store.open(home)
    msg = str(info.value)
    assert str(home) in msg
    assert "\n" not in msg
    assert "KILN_HOME" in msg  # says what to do
    assert isinstance(info.value, KilnError) and info.value.exit_code == 1


def test_kiln_home_overrides_default_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_HOME", raising=False)
    assert default_home(tmp_path) == (tmp_path / ".kiln").resolve()
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "elsewhere"))
    assert default_home(tmp_path / "proj") == (tmp_path / "elsewhere").resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILN_HOME", "rel/home")
    assert default_home(Path("/nonexistent")) == tmp_path / "rel" / "home"
    monkeypatch.setenv("KILN_HOME", "")
    assert default_home(tmp_path) == (tmp_path / ".kiln").resolve()


def test_split_sql_keeps_triggers_whole() -> None:
    statements = _split_sql(MIGRATIONS[0])
    triggers = [s for s in statements if s.upper().startswith("CREATE TRIGGER")]
    assert len(triggers) == 2
    assert all(t.rstrip().endswith("END;") for t in triggers)
    assert all(sqlite3.complete_statement(s) for s in statements)
