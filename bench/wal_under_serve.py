"""`kiln serve` keeps its WAL while commands open and close the state (issue #19).

A `kiln serve` controls a project; another process opens and closes the state 1,000 times (what a
CLI command does: `Store.open` with the project, a status read, close), every 50th of them a real
`kiln status --json`, while this process drives the API (promote / abort, each recorded as an
event by the serve process, which opens the state for it) once every 10 opens. A watcher reads
/proc/<serve pid>/fd every 10 ms. Reported per run: deleted state files seen (target 0), API
actions recorded of sent (target all), and the cost of one open (integrity check included)
against an anchor in the same run: a bare SQLite connect + one query + close of the same file.

    .venv/bin/python bench/wal_under_serve.py [--runs 3] [--opens 1000]

The "before" figure: the same script under an older kiln's interpreter (its `kiln` and `Store`),
e.g. `/path/to/old/.venv/bin/python bench/wal_under_serve.py --runs 1`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln.state.store import Store
from kiln.testing.project import KILN, make_project
from kiln.testing.serve import ServeProc

OPENER = """
import inspect, json, sqlite3, subprocess, sys, time
from pathlib import Path
from kiln.state import store as kstore
Store = kstore.Store
connect = getattr(kstore, "connect", sqlite3.connect)  # a kiln before the one opener: the same
with_project = "project" in inspect.signature(Store.open).parameters
home, project, opens, kiln = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
store_ms, bare_ms, failed = [], [], []
for n in range(opens):
    if n % 50 == 49:  # a real command now and then
        res = subprocess.run([kiln, "status", "--json"], cwd=home.parent, capture_output=True,
                             text=True, timeout=120)
        if res.returncode != 0 or "Traceback" in res.stderr:
            failed.append(res.stderr.strip())
    else:
        t = time.perf_counter()
        try:
            s = Store.open(home, project) if with_project else Store.open(home)
            s.query("SELECT * FROM instances")
            s.close()
        except Exception as exc:  # counted: a command that would have failed
            failed.append(repr(exc))
        store_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        c = connect(home / "state.db")
        c.execute("SELECT * FROM instances").fetchall()
        c.close()
        bare_ms.append((time.perf_counter() - t) * 1000)
    print(n + 1, flush=True)
print(json.dumps({"store_ms": store_ms, "bare_ms": bare_ms, "failed": failed}), flush=True)
"""


@dataclass
class Run:
    opens: int
    api_actions: int
    api_failed: int
    recorded: int
    deleted: list[str]
    serve_alive: bool
    failed: list[str]
    store_ms: list[float]
    bare_ms: list[float]


def deleted_state_files(pid: int) -> set[str]:
    found: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "state.db" in target and target.endswith("(deleted)"):
            found.add(target)
    return found


def one_run(opens: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="kiln-wal-bench-") as tmp:
        proj = make_project(Path(tmp))
        proj.write(replicas=1)
        home = proj.dir / ".kiln"
        Store.open(home).close()
        deleted: set[str] = set()
        stop = threading.Event()
        with ServeProc(proj.dir) as srv:
            pid = srv.proc.pid

            def watch() -> None:
                while not stop.wait(0.01):
                    deleted.update(deleted_state_files(pid))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            opener = subprocess.Popen([sys.executable, "-c", OPENER, str(home), "shop",
                                       str(opens), str(KILN)], stdout=subprocess.PIPE,
                                      text=True)
            sent = api_failed = 0
            last = ""
            try:
                assert opener.stdout is not None
                for line in opener.stdout:  # bounded: the opener prints `opens` lines and exits
                    last = line
                    if line.strip().isdigit() and int(line) % 10 == 0:
                        action = "promote" if sent % 2 == 0 else "abort"
                        sent += 1
                        try:
                            code, _ = srv.post(f"/api/services/web/{action}", {}, srv.token)
                        except (OSError, http.client.HTTPException):
                            code = 0  # the serve process dropped the request
                        if code not in (200, 400, 404, 409):
                            api_failed += 1
                opener.wait(60)
            finally:
                if opener.poll() is None:
                    opener.kill()
                    opener.wait()
                stop.set()
                watcher.join(5)
            alive = srv.proc.poll() is None
            srv.stop()
        store = Store.open(home)
        try:
            recorded = len(store.query("SELECT id FROM events WHERE kind = 'serve.request'"))
        finally:
            store.close()
        data = json.loads(last)
        return Run(opens, sent, api_failed, recorded, sorted(deleted), alive, data["failed"],
                   data["store_ms"], data["bare_ms"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--opens", type=int, default=1000)
    args = ap.parse_args()
    runs = [one_run(args.opens) for _ in range(args.runs)]
    print("| run | opens | API actions recorded / sent | failed API actions | deleted state files "
          "| failed commands | open ms (median) | bare connect ms (median) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for n, r in enumerate(runs, 1):
        s, b = statistics.median(r.store_ms), statistics.median(r.bare_ms)
        ratios.append(s / b)
        print(f"| {n} | {r.opens} | {r.recorded} / {r.api_actions} | {r.api_failed} | "
              f"{len(r.deleted)} | "
              f"{len(r.failed)} | {s:.2f} | {b:.2f} | {s / b:.1f}x |")
    print(f"ratio open / bare: min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x, "
          f"max {max(ratios):.1f}x; deleted state files over all runs: "
          f"{sum(len(r.deleted) for r in runs)}")
    out = Path(__file__).resolve().parent / "results" / f"wal_under_serve-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": [asdict(r) for r in runs]},
                              indent=2))
    print(f"raw numbers: {out}")
    bad = any(r.deleted or r.recorded != r.api_actions or not r.serve_alive or r.failed
              or r.api_failed for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
