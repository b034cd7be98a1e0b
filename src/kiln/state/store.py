"""SQLite state: WAL, versioned migrations, every change in one transaction.

The queries live in the records layer (kiln.state.records, one module per table); this module
owns the file, the schema and the transaction discipline.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
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
    # 8: the state records whose it is: a state of another project (a shared KILN_HOME, a copied
    # .kiln) is refused instead of being deployed over
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,         -- project
        value TEXT NOT NULL
    );
    """,
    # 9: what a rollout's judge was given (kiln.analysis.recording), for `kiln judge replay`;
    # gc removes it with the rollout's retention
    """
    CREATE TABLE IF NOT EXISTS rollout_evidence (
        rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id) ON DELETE CASCADE,
        data BLOB NOT NULL,
        saved_at REAL NOT NULL
    );
    """,
    # 10: the verification fast path: each file's (dev, ino, size, mtime, ctime) when its content
    # last matched a manifest (kiln.bake.manifest.encode_keys), for a tree ('image:<digest>',
    # 'layer:<diff id>'), valid only with the manifest whose sha256 it names and in the boot
    # it was recorded in
    """
    CREATE TABLE verified_keys (
        tree TEXT PRIMARY KEY,
        manifest_sha256 TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        keys BLOB NOT NULL,
        recorded_at REAL NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

KILN_TABLES = frozenset({"images", "steps", "attestations", "releases", "instances", "rollouts",
                         "routes", "events", "lock"})
"""The tables of kiln's first schema: a file at v1 or later without them is not kiln's state."""

# SQLite's primary result codes (exc.sqlite_errorcode & 0xff) that decide what an error says.
_BUSY, _LOCKED, _CORRUPT, _NOTADB = 5, 6, 11, 26
_PERM, _READONLY, _IOERR, _FULL, _CANTOPEN, _AUTH = 3, 8, 10, 13, 14, 23


def connect(path: Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """The one way kiln opens a SQLite file (the state, a backup, a test's look at either).

    Nothing else in kiln may open state.db or its -wal/-shm, not even to create or read it: closing
    any descriptor of the file drops every POSIX lock this process holds on it, so another process
    closing its connection would think it is the last one and delete the WAL under ours (issue
    #19). SQLite itself never closes a descriptor that a live connection's locks depend on.
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.text_factory = _strict_text(path)
    return conn


def _strict_text(path: Path) -> Callable[[bytes], str]:
    """Text that is not UTF-8 was damaged on disk (integrity_check does not look inside values):
    a StateError, not a UnicodeDecodeError traceback halfway through a command."""
    def decode(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(f"state database {path} is damaged (a text value is not UTF-8)",
                             hint=_recovery(path.parent)) from None
    return decode


class Store:
    """The project's state database. Open with `Store.open(home)`."""

    def __init__(self, conn: sqlite3.Connection, home: Path) -> None:
        self.conn = conn
        self.home = home
        self._file = _identity(home / "state.db")

    @classmethod
    def open(cls, home: Path, project: str | None = None) -> Store:
        """Open (or create) home/state.db: integrity-checked, kiln's schema, migrated.

        With `project`, a state recorded for another project is refused, and a state that records
        none (made before kiln recorded it, or opened without a project) is given this one.
        """
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
        _refuse_not_a_file(db)
        _refuse_lost_state(home, db)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            _refuse_damage(conn, db, home)
            _refuse_foreign_schema(conn, db)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for path in (db, home / "state.db-wal", home / "state.db-shm"):
                _private(path, 0o600)
            store = cls(conn, home)
            store._migrate()
            if project is not None:
                store._claim(project)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            if conn is not None:
                conn.close()
            raise (state_error(exc, db) if isinstance(exc, sqlite3.Error)
                   else _unusable(exc, db)) from exc
        except OSError as exc:  # a backup before a migration, a chmod
            if conn is not None:
                conn.close()
            raise StateError(f"cannot open state database {db}: {exc.strerror or exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return store

    def project(self) -> str | None:
        """The project this state belongs to, if recorded."""
        row = self.one("SELECT value FROM meta WHERE key = 'project'")
        return None if row is None else str(row["value"])

    def _claim(self, project: str) -> None:
        recorded = self.project()
        if recorded is None:
            with self.tx() as c:
                c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('project', ?)",
                          (project,))
            recorded = self.project()
        if recorded != project:
            raise StateError(
                f"state database {self.home / 'state.db'} belongs to project {recorded!r}, "
                f"not {project!r}",
                hint=f"put 'project: {recorded}' back, or set KILN_HOME to a new folder for "
                     f"{project!r}; a renamed project's instances and router run on under "
                     "its old name")

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # a new file: no lock
        os.close(fd)
        target = connect(path)
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
        while True:
            with self.tx() as c:
                # Read again under the write lock: another process may have migrated meanwhile.
                current = c.execute("PRAGMA user_version").fetchone()[0]
                if current >= SCHEMA_VERSION:
                    break
                c.executescript_in_tx(MIGRATIONS[current])
                c.execute(f"PRAGMA user_version={current + 1}")

    @contextmanager
    def tx(self) -> Iterator[_Tx]:
        """One write transaction (BEGIN IMMEDIATE): all or nothing."""
        self.check_same_file()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _unusable(exc, self.home / "state.db") from exc
        try:
            yield _Tx(self.conn, self.home / "state.db")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _unusable(exc, self.home / "state.db") from exc

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Row | None:
        try:
            row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _unusable(exc, self.home / "state.db") from exc
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


def _result_code(exc: BaseException) -> int:
    """SQLite's primary result code of an error, 0 when it has none."""
    # not a capability probe: sqlite3 sets `sqlite_errorcode` only on errors SQLite returned
    # (a ProgrammingError raised by the module itself has none)
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _printable(text: object) -> str:
    """SQLite quotes damaged bytes in its messages ('unrecognized token: "\x1e"'): escape what
    is not printable, so the error stays one line (str.splitlines breaks at \x1c-\x1e too)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def state_error(exc: sqlite3.Error, db: Path | None) -> StateError:
    """One line for a SQLite error on the state, saying what it is. Only a failed integrity check
    (SQLite's CORRUPT/NOTADB verdict, or `PRAGMA integrity_check` itself) advises a backup: a
    locked, unreadable or foreign database is fine and must not be replaced."""
    exc_text = _printable(exc)
    where = f"state database {db}" if db is not None else "state database"
    code = _result_code(exc)
    home = db.parent if db is not None else None
    if code in (_CORRUPT, _NOTADB):
        return StateError(f"{where} is damaged ({exc_text})",
                          hint=_recovery(home) if home is not None else "restore a backup")
    if code in (_BUSY, _LOCKED):
        return StateError(f"{where} is locked by another process ({exc_text})",
                          hint="another kiln command holds it; try again when it is done")
    if code in (_PERM, _READONLY, _CANTOPEN, _AUTH):
        return StateError(f"cannot open {where} for writing ({exc_text})",
                          hint=f"check the owner and permissions of {home or 'the state folder'} "
                               "and the files in it")
    if code in (_IOERR, _FULL):
        return StateError(f"{where}: input/output failed ({exc_text})",
                          hint=f"check the disk that holds {home or 'the state folder'}")
    problem = _damage(db) if db is not None else None
    if problem is not None and home is not None:
        return StateError(f"{where} is damaged ({_printable(problem)})", hint=_recovery(home))
    return StateError(f"cannot use {where}: {exc_text}")


def _unusable(exc: sqlite3.Error | UnicodeDecodeError, db: Path | None) -> BaseException:
    """A query's error: the state's own trouble becomes a StateError, a statement's (a constraint,
    a typo) stays the sqlite3 error its caller may expect."""
    if isinstance(exc, UnicodeDecodeError):  # SQLite's message quoted damaged bytes
        where = f"state database {db}" if db is not None else "state database"
        return StateError(f"{where} is damaged (it holds bytes that are not UTF-8)",
                          hint=_recovery(db.parent) if db is not None else "restore a backup")
    code = _result_code(exc)
    if code in (_BUSY, _LOCKED, _CORRUPT, _NOTADB, _PERM, _READONLY, _CANTOPEN, _AUTH, _IOERR,
                _FULL):
        return state_error(exc, db)
    return exc


def _damage(db: Path) -> str | None:
    """The first problem `PRAGMA integrity_check` finds in db, None when it passes or cannot run
    for another reason (locked, unreadable: not evidence of damage)."""
    try:
        conn = connect(db, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        rows = _integrity(conn)
        return None if rows == ["ok"] else _problems(rows)
    except sqlite3.Error as exc:
        code = _result_code(exc)
        return str(exc) if code in (_CORRUPT, _NOTADB) else None
    finally:
        conn.close()


def _integrity(conn: sqlite3.Connection) -> list[str]:
    """`PRAGMA integrity_check`'s findings (["ok"] when it passes); they may quote damaged bytes,
    so they are read as bytes and shown with replacement characters."""
    factory = conn.text_factory
    conn.text_factory = bytes
    try:
        return [r[0].decode("utf-8", "replace") if isinstance(r[0], bytes) else str(r[0])
                for r in conn.execute("PRAGMA integrity_check(5)").fetchall()]
    except UnicodeDecodeError:  # SQLite's own message quotes garbage (a damaged schema)
        return ["its schema or an error message about it is not UTF-8"]
    finally:
        conn.text_factory = factory


def _problems(rows: list[str]) -> str:
    """integrity_check's findings on one line: the first two, without its section headers."""
    lines = [line.strip() for row in rows for line in row.splitlines()
             if line.strip() and not line.startswith("***")]
    more = f" and {len(lines) - 2} more" if len(lines) > 2 else ""
    return _printable("; ".join(lines[:2]) + more)


def _refuse_damage(conn: sqlite3.Connection, db: Path, home: Path) -> None:
    """`PRAGMA integrity_check` on every open (a few ms on kiln's state; quick_check would miss a
    damaged index, through which a query can silently miss rows)."""
    rows = _integrity(conn)
    if rows != ["ok"]:
        raise StateError(f"state database {db} is damaged ({_problems(rows)})",
                         hint=_recovery(home))
    # A file cut inside its last page reads as zeros there, which integrity_check may pass:
    # SQLite writes whole pages, and without a WAL the file holds every page the header counts.
    size = db.stat().st_size
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    wal = home / "state.db-wal"
    no_wal = not wal.exists() or wal.stat().st_size == 0
    if size % page or (no_wal and size < pages * page):
        raise StateError(f"state database {db} is damaged (truncated: {size} bytes, expected "
                         f"{pages * page})", hint=_recovery(home))


def _refuse_foreign_schema(conn: sqlite3.Connection, db: Path) -> None:
    """A valid SQLite file that is not kiln's state is never taken as a fresh one (it would be
    migrated over, and its history lost): at v0 it must be empty, at v1+ hold kiln's tables."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if version == 0 and tables:
        seen = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise StateError(f"state database {db} is not kiln's state: it holds table(s) {seen} "
                         "and no kiln schema; nothing was written to it",
                         hint="move it away, or set KILN_HOME to the project's state folder")
    missing = KILN_TABLES - tables
    if 0 < version <= SCHEMA_VERSION and missing:
        raise StateError(f"state database {db} is not kiln's state: schema v{version} without "
                         f"table(s) {', '.join(sorted(missing))}; nothing was written to it",
                         hint="move it away, or set KILN_HOME to the project's state folder")


def _refuse_not_a_file(db: Path) -> None:
    for path in (db, db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        if (path.exists() or path.is_symlink()) and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise StateError(f"state database file {path} is {kind}",
                             hint="move it away; kiln keeps its state in a file there")


def _refuse_lost_state(home: Path, db: Path) -> None:
    """An empty or missing state.db beside images, instance folders, backups, reports or a WAL
    was truncated or deleted: starting afresh would renumber releases and overwrite reports while
    instances still run."""
    try:
        empty = not db.exists() or db.stat().st_size == 0
    except OSError:
        return
    if not empty:
        return
    leftovers = [name for name in ("images", "instances", "backups", "reports")
                 if (home / name).is_dir() and any((home / name).iterdir())]
    wal = home / "state.db-wal"
    if wal.is_file() and wal.stat().st_size > 0:
        leftovers.append("a write-ahead log (state.db-wal)")
    if leftovers:
        raise StateError(f"state database {db} is {'empty' if db.exists() else 'missing'} but "
                         f"{home} still holds {' and '.join(leftovers)}: it was truncated or "
                         "deleted", hint=_recovery(home))


class _Tx:
    """A cursor-like handle valid inside `Store.tx()`."""

    def __init__(self, conn: sqlite3.Connection, db: Path | None = None) -> None:
        self.conn = conn
        self.db = db

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _unusable(exc, self.db) from exc

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
