"""Corruption cases for state.db, shared by tests/test_state_fuzz.py and its bench: a fixed seed
makes each run the same 1,000 cases. A case damages a copy of a known state in place."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.state.store import KILN_TABLES, SCHEMA_VERSION, Store, connect

PROJECT = "fuzz"
SPEC = f"""\
project: {PROJECT}
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
services:
  web:
    image: web
    command: python -m http.server $PORT
    port: 8000
    listen: 127.0.0.1:18799
"""
ROLLOUTS = 12
EVENTS = 150  # under `kiln history`'s limit of 200: the command shows every one

Case = Callable[[Path], None]


@dataclass(frozen=True)
class Reference:
    """A project folder whose state holds known records, and those records' counts."""

    folder: Path
    db_bytes: bytes
    counts: dict[str, int]

    @property
    def home(self) -> Path:
        return self.folder / ".kiln"

    def reset(self) -> None:
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            path = self.home / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (self.home / "state.db").write_bytes(self.db_bytes)


def table_counts(store: Store) -> dict[str, int]:
    return {t: int(store.one(f"SELECT count(*) FROM {t}")[0])  # type: ignore[index]
            for t in sorted(KILN_TABLES | {"meta"})}


def build_reference(folder: Path) -> Reference:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kiln.yaml").write_text(SPEC)
    (folder / "app").mkdir(exist_ok=True)
    home = folder / ".kiln"
    store = Store.open(home, PROJECT)
    now = time.time()
    with store.tx() as c:
        for n in range(1, ROLLOUTS + 1):
            digest = f"sha256:{n:064x}"
            c.execute("INSERT INTO images(digest, name, ref, key, env_json, size, created_at) "
                      "VALUES (?, 'web', ?, ?, '{}', 100, ?)", (digest, f"web:{n}", f"k{n}", now))
            c.execute("INSERT INTO releases(id, service, number, image_digest, config_digest, "
                      "config_json, created_at) VALUES (?, 'web', ?, ?, ?, ?, ?)",
                      (f"web-r{n}", n, digest, f"c{n}", '{"command": "serve"}', now))
            c.execute("INSERT INTO rollouts(service, from_release, to_release, strategy, phase, "
                      "status_json, outcome, reason, started_at, updated_at, finished_at) VALUES "
                      "('web', ?, ?, 'canary', 'done', '{}', 'promoted', 'judge passed', ?, ?, ?)",
                      (f"web-r{n - 1}" if n > 1 else None, f"web-r{n}", now, now, now))
            c.execute("INSERT INTO instances(id, service, release_id, host, port, state, "
                      "created_at, stopped_at) VALUES (?, 'web', ?, '127.0.0.1', 8000, "
                      "'stopped', ?, ?)", (f"web-r{n}-a", f"web-r{n}", now, now))
        for i in range(EVENTS):
            c.event("rollout.step", f"step {i} of a rollout", service="web", data={"i": i})
    store.backup("deploy")
    counts = table_counts(store)
    store.close()  # the last connection: SQLite checkpoints and removes the WAL
    (home / "instances" / "web-r12-a").mkdir(parents=True, exist_ok=True)
    return Reference(folder, (home / "state.db").read_bytes(), counts)


def foreign_db(path: Path, rng: random.Random) -> None:
    """A valid SQLite file that is not this project's kiln state."""
    path.unlink(missing_ok=True)
    variant = rng.randrange(4)
    if variant == 3:  # another project's kiln state
        other = path.parent / "other-home"
        shutil.rmtree(other, ignore_errors=True)
        Store.open(other, "someone-else").close()
        shutil.copyfile(other / "state.db", path)
        shutil.rmtree(other)
        return
    conn = connect(path)
    try:
        if variant == 0:  # an application's database
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            conn.execute("INSERT INTO notes(body) VALUES ('hello')")
        elif variant == 1:  # a database that uses user_version for itself
            conn.execute("CREATE TABLE things (name TEXT)")
            conn.execute(f"PRAGMA user_version={rng.randrange(1, SCHEMA_VERSION + 1)}")
        else:  # kiln-looking names, no kiln schema
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)")
    finally:
        conn.close()


def cases(ref: Reference, count: int = 1000, seed: int = 20261204) -> list[tuple[str, Case]]:
    """`count` named cases; each damages ref.home (after ref.reset())."""
    rng = random.Random(seed)
    size = len(ref.db_bytes)
    kinds = (["truncate"] * 30 + ["overwrite16"] * 45 + ["foreign"] * 8 + ["empty"] * 4
             + ["directory"] * 4 + ["wal-garbage"] * 9)
    out: list[tuple[str, Case]] = []
    for n in range(count):
        kind = rng.choice(kinds)
        if kind == "truncate":
            at = rng.randrange(size)
            out.append((f"{n}:truncate@{at}", lambda h, at=at: _truncate(h / "state.db", at)))
        elif kind == "overwrite16":
            at = rng.randrange(size - 16)
            junk = rng.randbytes(16)
            out.append((f"{n}:overwrite16@{at}",
                        lambda h, at=at, junk=junk: _overwrite(h / "state.db", at, junk)))
        elif kind == "foreign":
            sub = random.Random(rng.random())
            out.append((f"{n}:foreign", lambda h, sub=sub: foreign_db(h / "state.db", sub)))
        elif kind == "empty":
            out.append((f"{n}:empty", lambda h: (h / "state.db").write_bytes(b"")))
        elif kind == "directory":
            which = rng.choice(["state.db", "state.db-wal", "state.db-shm"])
            out.append((f"{n}:directory:{which}", lambda h, w=which: _directory(h / w)))
        else:
            junk = rng.randbytes(rng.randrange(1, 40_000))
            header = rng.random() < 0.5  # a valid WAL magic first, then garbage
            out.append((f"{n}:wal-garbage:{len(junk)}{'+magic' if header else ''}",
                        lambda h, j=junk, m=header: _wal(h / "state.db-wal", j, m)))
    return out


def _truncate(db: Path, at: int) -> None:
    with db.open("r+b") as fh:  # the test's damage, while no kiln connection is open
        fh.truncate(at)


def _overwrite(db: Path, at: int, junk: bytes) -> None:
    with db.open("r+b") as fh:
        fh.seek(at)
        fh.write(junk)


def _directory(path: Path) -> None:
    if path.exists():
        path.unlink()
    path.mkdir()


def _wal(path: Path, junk: bytes, magic: bool) -> None:
    head = (0x377F0682).to_bytes(4, "big") + (3007000).to_bytes(4, "big") if magic else b""
    path.write_bytes(head + junk)

