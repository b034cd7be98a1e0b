"""SQLite state: WAL, versioned migrations, every change in one transaction.

Modules own their queries (bake writes images/steps, rollout writes releases/rollouts); this module
owns the file, the schema and the transaction discipline.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kiln.errors import StateError

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE images (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ref TEXT NOT NULL,
        key TEXT NOT NULL,            -- cache key of the last step: same inputs, same key
        env_json TEXT NOT NULL DEFAULT '{}',
        size INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX images_name ON images(name, created_at);
    CREATE TABLE steps (
        key TEXT PRIMARY KEY,         -- sha256(parent key, definition, content of inputs)
        parent_key TEXT,
        image_name TEXT NOT NULL,
        description TEXT NOT NULL,
        snapshot TEXT NOT NULL,       -- path of the cached tree after this step
        created_at REAL NOT NULL,
        used_at REAL NOT NULL
    );
    CREATE TABLE attestations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        image_digest TEXT NOT NULL,
        suite_digest TEXT NOT NULL,
        passed INTEGER NOT NULL,
        document TEXT NOT NULL,       -- in-toto Statement (JSON)
        path TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX attestations_image ON attestations(image_digest, suite_digest);
    CREATE TABLE releases (
        id TEXT PRIMARY KEY,          -- service-rN
        service TEXT NOT NULL,
        number INTEGER NOT NULL,
        image_digest TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        config_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE(service, number)
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        release_id TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        pid INTEGER,
        pid_start TEXT,
        workdir TEXT,
        state TEXT NOT NULL,          -- starting | running | draining | stopped | dead
        kind TEXT NOT NULL DEFAULT 'service',  -- service | test | dev
        created_at REAL NOT NULL,
        stopped_at REAL
    );
    CREATE INDEX instances_service ON instances(service, state);
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        from_release TEXT,
        to_release TEXT NOT NULL,
        strategy TEXT NOT NULL,
        phase TEXT NOT NULL,          -- see kiln.rollout.status
        status_json TEXT NOT NULL,
        outcome TEXT,                 -- promoted | rolled_back | aborted | failed
        reason TEXT,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX rollouts_service ON rollouts(service, id);
    CREATE TABLE routes (
        service TEXT NOT NULL,
        release_id TEXT NOT NULL,
        weight INTEGER NOT NULL,
        PRIMARY KEY (service, release_id)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        service TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TABLE lock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        pid_start TEXT,
        host TEXT NOT NULL,
        command TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    """,
    # 2: `kiln promote` / `kiln abort` signal a rollout that another process is driving
    """
    ALTER TABLE rollouts ADD COLUMN signal TEXT;
    ALTER TABLE releases ADD COLUMN skip_tests INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: what only a platform knows about an instance (pid, container id...) is its handle
    """
    ALTER TABLE instances ADD COLUMN handle_json TEXT NOT NULL DEFAULT '{}';
    UPDATE instances SET handle_json = json_object('pid', CAST(pid AS TEXT), 'pid_start',
        pid_start, 'workdir', workdir);
    ALTER TABLE instances DROP COLUMN pid;
    ALTER TABLE instances DROP COLUMN pid_start;
    ALTER TABLE instances DROP COLUMN workdir;
    """,
    # 4: `kiln serve` holds the project's controller role; commands hand rollouts to it
    """
    CREATE TABLE controller (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        pid_start TEXT,
        host TEXT NOT NULL,
        listen TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat REAL NOT NULL
    );
    """,
    # 5: an image records where its service starts (its last `workdir` step)
    """
    ALTER TABLE images ADD COLUMN workdir TEXT NOT NULL DEFAULT '';
    """,
    # 6: a release records its image's env and workdir: two images with the same files (one row,
    # keyed by digest) may set different ones (NULL: a release made before this)
    """
    ALTER TABLE releases ADD COLUMN image_env_json TEXT;
    ALTER TABLE releases ADD COLUMN image_workdir TEXT;
    """,
    # 7: content manifests (kiln.bake.manifest) recorded when a tree is made and checked before
    # it is used: an image's files (local) or its layers' diff ids (podman), a step-cache
    # snapshot's files, and a podman layer's files by diff id (NULL: made before this)
    """
    ALTER TABLE images ADD COLUMN manifest BLOB;
    ALTER TABLE steps ADD COLUMN manifest BLOB;
    CREATE TABLE layer_manifests (
        diff_id TEXT PRIMARY KEY,
        manifest BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """The project's state database. Open with `Store.open(home)`."""

    def __init__(self, conn: sqlite3.Connection, home: Path) -> None:
        self.conn = conn
        self.home = home
        self._file = _identity(home / "state.db")

    @classmethod
    def open(cls, home: Path) -> Store:
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private(home, 0o700)
            probe = home / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StateError(
                f"state directory {home} is not writable: {exc.strerror or exc}",
                hint="set KILN_HOME to a writable folder",
            ) from exc
        db = home / "state.db"
        _refuse_lost_state(home, db)
        try:
            fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(db, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                conn.close()
                raise StateError(f"state database {db} is damaged ({check[0]})",
                                 hint=_recovery(home))
            for path in (db, home / "state.db-wal", home / "state.db-shm"):
                _private(path, 0o600)
            store = cls(conn, home)
            store._migrate()
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {db}: {exc}",
                             hint=_recovery(home)) from exc
        except OSError as exc:
            raise StateError(f"cannot open state database {db}: {exc.strerror or exc}") from exc
        return store

    def check_same_file(self) -> None:
        """Refuse to write once state.db was replaced under this process (restored from a
        backup, swapped, deleted): the writes would go to a file nobody reads any more."""
        now = _identity(self.home / "state.db")
        if self._file is not None and now != self._file:
            raise StateError(f"state database {self.home / 'state.db'} was replaced while this "
                             "command ran; nothing more was written",
                             hint="run the command again: it reconciles with what now runs")

    def backup(self, reason: str, keep: int = 10) -> Path:
        """A consistent copy of the database (SQLite's online backup) in home/backups, taken
        before each migration and each deploy; the newest `keep` are kept."""
        folder = self.home / "backups"
        folder.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = folder / f"state-{stamp}-{int(time.time() * 1000) % 1000:03d}-{reason}.db"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        target = sqlite3.connect(path)
        try:
            self.conn.backup(target)
        finally:
            target.close()
        for old in sorted(folder.glob("state-*.db"))[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database schema v{version} is newer than this kiln (v{SCHEMA_VERSION})",
                hint="upgrade kiln",
            )
        if 0 < version < SCHEMA_VERSION:
            self.backup(f"v{version}-migration")
        for number in range(version, SCHEMA_VERSION):
            with self.tx() as c:
                c.executescript_in_tx(MIGRATIONS[number])
                c.execute(f"PRAGMA user_version={number + 1}")

    @contextmanager
    def tx(self) -> Iterator[_Tx]:
        """One write transaction (BEGIN IMMEDIATE): all or nothing."""
        self.check_same_file()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield _Tx(self.conn)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def event(self, kind: str, message: str, *, service: str | None = None,
              data: dict[str, Any] | None = None) -> None:
        with self.tx() as c:
            c.event(kind, message, service=service, data=data)

    def events(self, service: str | None = None, limit: int = 200) -> list[sqlite3.Row]:
        if service is None:
            return self.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return self.query("SELECT * FROM events WHERE service = ? ORDER BY id DESC LIMIT ?",
                          (service, limit))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _private(path: Path, mode: int) -> None:
    """State, logs and keys are the operator's alone (0700 folders, 0600 files)."""
    try:
        if path.exists() and path.stat().st_uid == os.geteuid():
            os.chmod(path, mode)
    except OSError:
        pass


def _recovery(home: Path) -> str:
    backups = sorted((home / "backups").glob("state-*.db")) if (home / "backups").is_dir() else []
    if backups:
        return (f"restore the newest backup: cp {backups[-1]} {home / 'state.db'} "
                f"(and remove {home / 'state.db-wal'}), then `kiln drift`")
    return (f"no backup in {home / 'backups'}: move {home} away and deploy again "
            "(stop what still runs first)")


def _refuse_lost_state(home: Path, db: Path) -> None:
    """An empty or missing state.db beside images or instance folders was truncated or deleted:
    starting afresh would renumber releases and overwrite reports while instances still run."""
    try:
        empty = not db.exists() or db.stat().st_size == 0
    except OSError:
        return
    if not empty:
        return
    leftovers = [name for name in ("images", "instances")
                 if (home / name).is_dir() and any((home / name).iterdir())]
    if leftovers:
        raise StateError(f"state database {db} is {'empty' if db.exists() else 'missing'} but "
                         f"{home} still holds {' and '.join(leftovers)}: it was truncated or "
                         "deleted", hint=_recovery(home))


class _Tx:
    """A cursor-like handle valid inside `Store.tx()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executescript_in_tx(self, script: str) -> None:
        # executescript() would COMMIT first; run statements one by one to stay atomic.
        for statement in _split_sql(script):
            self.conn.execute(statement)

    def event(self, kind: str, message: str, *, service: str | None = None,
              data: dict[str, Any] | None = None) -> None:
        self.conn.execute(
            "INSERT INTO events(time, service, kind, message, data_json) VALUES (?,?,?,?,?)",
            (time.time(), service, kind, message, json.dumps(data or {}, sort_keys=True)),
        )


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers (BEGIN ... END;) stay whole."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


def default_home(spec_dir: Path) -> Path:
    """`.kiln/` beside kiln.yaml, or $KILN_HOME."""
    env = os.environ.get("KILN_HOME")
    return Path(env).resolve() if env else (spec_dir / ".kiln").resolve()


Tx = _Tx
"""The transaction handle's public name, for helpers that take one."""
