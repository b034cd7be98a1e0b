"""The real `kiln` console script: exit codes, one-line errors, never a traceback.

One project is baked once per module (the base venv takes ~10 s); the failure cases either fail
before the base is built (spec, copy source, state folder, lock) or reuse its cached base.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.testing.project import default_sigint, wait_for

KILN = Path(sys.executable).parent / "kiln"

SPEC = """\
project: demo
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
    listen: 127.0.0.1:18731
"""

HOLDER = """
import sys
from pathlib import Path
from kiln.state.lock import project_lock
from kiln.state.store import Store

store = Store.open(Path(sys.argv[1]))
with project_lock(store, sys.argv[2]):
    sys.stdin.read()  # hold until the test closes our stdin
"""


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def both(self) -> str:
        return self.stdout + self.stderr


def kiln(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    base = {k: v for k, v in os.environ.items() if k != "KILN_HOME"}
    base.update({"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    proc = subprocess.run([str(KILN), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in res.both, res.both
    return res


def error_lines(res: Result) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


def write_project(folder: Path, spec: str = SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app").mkdir(exist_ok=True)
    (folder / "app" / "hello.txt").write_text("hello\n")
    (folder / "kiln.yaml").write_text(spec)
    return folder


def image_dirs(folder: Path) -> list[str]:
    images = folder / ".kiln" / "images"
    return sorted(p.name for p in images.iterdir()) if images.is_dir() else []


@dataclass(frozen=True)
class Baked:
    folder: Path
    digest: str


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Baked:
    folder = write_project(tmp_path_factory.mktemp("baked"))
    res = kiln("bake", "--json", cwd=folder)
    assert res.code == 0, res.both
    data = json.loads(res.stdout)
    assert [d["name"] for d in data] == ["web"]
    return Baked(folder, data[0]["digest"])


# ------------------------------------------------------------------ usage


def test_help_and_version(tmp_path: Path) -> None:
    res = kiln("--help", cwd=tmp_path)
    assert res.code == 0 and "bake" in res.stdout and "deploy" in res.stdout
    res = kiln("--version", cwd=tmp_path)
    assert res.code == 0 and res.stdout.startswith("kiln ")


@pytest.mark.parametrize("args", [["frobnicate"], ["--frobnicate"], ["bake", "--frobnicate"],
                                  ["history", "web", "extra"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert kiln(*args, cwd=tmp_path).code == 2


@pytest.mark.parametrize(("args", "option"), [
    (["gc", "--keep", "-1"], "'--keep'"),
    (["logs", "-n", "-5"], "'--lines'"),
    (["serve", "--drift-every", "nan"], "'--drift-every'"),
    (["serve", "--drift-every", "0"], "'--drift-every'"),
    (["serve", "--drift-every", "-1"], "'--drift-every'"),
])
def test_out_of_range_numbers_are_usage_errors(tmp_path: Path, args: list[str],
                                               option: str) -> None:
    """Checked before anything runs (no spec is needed to refuse them): gc --keep -1 and
    logs -n -5 once ran as if valid, serve --drift-every nan never checked drift."""
    res = kiln(*args, cwd=tmp_path)
    assert res.code == 2, res.stdout + res.stderr
    assert f"Invalid value for {option}" in res.stderr and "Traceback" not in res.stderr


def test_schema_is_json_with_properties(tmp_path: Path) -> None:
    res = kiln("schema", cwd=tmp_path)
    assert res.code == 0
    schema = json.loads(res.stdout)
    assert {"project", "images", "services"} <= set(schema["properties"])


# ------------------------------------------------------------------ spec


def test_validate_good_spec_prints_ok(tmp_path: Path) -> None:
    res = kiln("validate", cwd=write_project(tmp_path))
    assert (res.code, res.stdout) == (0, "ok\n")


def test_validate_broken_spec_lists_every_problem_with_position(tmp_path: Path) -> None:
    write_project(tmp_path, SPEC.replace("    steps:", "    stepz:").replace("port: 8000",
                                                                              "port: abc"))
    res = kiln("validate", cwd=tmp_path)
    assert res.code == 1
    lines = error_lines(res)
    assert any(line.startswith("kiln.yaml:5:5: images.web.stepz: ") and "steps" in line
               for line in lines), lines
    assert any(line.startswith("kiln.yaml:") and "services.web.port:" in line for line in lines)
    for line in lines:
        file, row, col, rest = line.split(":", 3)
        assert file == "kiln.yaml" and row.isdigit() and col.isdigit() and rest.strip()


@pytest.mark.parametrize("text", ["project: demo\nimages: [\n", "\tproject: x\n",
                                  "project: demo\n  images: 1\n: :\n"])
def test_malformed_yaml_is_one_error_per_problem_exit_1(tmp_path: Path, text: str) -> None:
    (tmp_path / "kiln.yaml").write_text(text)
    for cmd in ("validate", "bake"):
        res = kiln(cmd, cwd=tmp_path)
        assert res.code == 1
        assert error_lines(res) and all(line.startswith("kiln.yaml:") for line in error_lines(res))
    assert not (tmp_path / ".kiln").exists()


def test_missing_spec_file(tmp_path: Path) -> None:
    for args in (["validate"], ["bake"], ["-f", "other.yaml", "validate"]):
        res = kiln(*args, cwd=tmp_path)
        assert res.code == 1 and len(error_lines(res)) == 1
        assert ".yaml" in res.stderr


def test_init_then_validate_then_init_refuses(tmp_path: Path) -> None:
    res = kiln("init", cwd=tmp_path)
    assert res.code == 0, res.both
    assert (tmp_path / "kiln.yaml").is_file()
    assert kiln("validate", cwd=tmp_path).stdout == "ok\n"
    before = (tmp_path / "kiln.yaml").read_text()
    again = kiln("init", cwd=tmp_path)
    assert again.code == 1 and len(error_lines(again)) == 1 and "kiln.yaml" in again.stderr
    assert (tmp_path / "kiln.yaml").read_text() == before


def test_init_into_a_new_folder(tmp_path: Path) -> None:
    assert kiln("init", "shop", cwd=tmp_path).code == 0
    assert kiln("validate", cwd=tmp_path / "shop").stdout == "ok\n"


# ------------------------------------------------------------------ bake: bad input


def test_missing_copy_source_is_one_line_and_bakes_nothing(tmp_path: Path) -> None:
    write_project(tmp_path, SPEC.replace("copy: app/", "copy: nope/"))
    res = kiln("bake", cwd=tmp_path)
    assert res.code == 1
    lines = error_lines(res)
    assert len(lines) == 1, lines
    assert lines[0].startswith("kiln.yaml:6:15: images.web.steps[0].copy: copy source 'nope/' "
                               "does not exist"), lines
    assert image_dirs(tmp_path) == []
    assert not (tmp_path / ".kiln" / "cache").exists()  # failed before the base was built


def test_a_renamed_project_is_one_line_naming_the_state_not_the_platform(tmp_path: Path) -> None:
    """`plan` once said `kiln.yaml: platform: state database ...` with the hint twice."""
    assert kiln("init", str(tmp_path / "shop"), cwd=tmp_path).code == 0
    folder = tmp_path / "shop"
    assert kiln("plan", cwd=folder).code == 0  # the state is claimed by 'shop'
    spec = folder / "kiln.yaml"
    spec.write_text(spec.read_text().replace("project: shop", "project: blog"))
    for command in ("plan", "status", "deploy"):
        res = kiln(command, cwd=folder)
        (line,) = error_lines(res)
        assert res.code == 1 and line.startswith("kiln: error: state database "), line
        assert "belongs to project 'shop', not 'blog'" in line
        assert line.count("put 'project: shop' back") == 1, line


def test_unknown_image_name(baked: Baked) -> None:
    res = kiln("bake", "nosuch", cwd=baked.folder)
    assert res.code == 1
    lines = error_lines(res)
    assert len(lines) == 1 and "'nosuch'" in lines[0] and "web" in lines[0]


def test_rebake_is_cached_with_the_same_digest(baked: Baked) -> None:
    res = kiln("bake", "--json", cwd=baked.folder)
    assert res.code == 0
    assert json.loads(res.stdout)[0]["digest"] == baked.digest
    assert image_dirs(baked.folder) == [baked.digest.split(":")[1]]


def test_failing_run_step_names_step_and_exit_code_and_stores_no_image(baked: Baked) -> None:
    before = image_dirs(baked.folder)
    images_before = kiln("images", "--json", cwd=baked.folder)
    spec = SPEC.replace("        to: app/\n",
                        "        to: app/\n      - run: echo boom-output; exit 3\n")
    (baked.folder / "failing.yaml").write_text(spec)
    try:
        res = kiln("-f", "failing.yaml", "bake", cwd=baked.folder)
    finally:
        (baked.folder / "failing.yaml").unlink()
    assert res.code == 1
    first = error_lines(res)[0]
    assert "step 2/2" in first and "exit 3" in first and "exit code 3" in first
    assert "boom-output" in res.stderr  # the tail of its output
    assert image_dirs(baked.folder) == before
    images_after = kiln("images", "--json", cwd=baked.folder)
    assert json.loads(images_after.stdout) == json.loads(images_before.stdout)
    assert not (baked.folder / ".kiln" / "tmp" / "work").exists()


def test_missing_copy_source_leaves_an_existing_store_as_it_was(baked: Baked) -> None:
    before = image_dirs(baked.folder)
    (baked.folder / "missing.yaml").write_text(SPEC.replace("copy: app/", "copy: gone.txt"))
    try:
        res = kiln("-f", "missing.yaml", "bake", cwd=baked.folder)
    finally:
        (baked.folder / "missing.yaml").unlink()
    assert res.code == 1 and len(error_lines(res)) == 1 and "gone.txt" in res.stderr
    assert image_dirs(baked.folder) == before


def test_unwritable_kiln_home_is_one_line(baked: Baked, tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for home in (a_file / "state", Path("/proc/kiln-no-such/state")):
        for args in (["bake"], ["status"], ["images"]):
            res = kiln(*args, cwd=baked.folder, env={"KILN_HOME": str(home)})
            assert res.code == 1, (args, res.both)
            lines = error_lines(res)
            assert len(lines) == 1 and str(home) in lines[0] and "writable" in lines[0], lines
    assert not (tmp_path / "file.txt").is_dir()


def test_kiln_home_moves_the_state(baked: Baked, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    res = kiln("images", "--json", cwd=baked.folder, env={"KILN_HOME": str(home)})
    assert (res.code, json.loads(res.stdout)) == (0, [])
    assert (home / "state.db").is_file()


def test_state_from_a_newer_kiln_is_refused(tmp_path: Path) -> None:
    write_project(tmp_path)
    (tmp_path / ".kiln").mkdir()
    conn = sqlite3.connect(tmp_path / ".kiln" / "state.db")
    conn.execute("PRAGMA user_version=999")
    conn.close()
    res = kiln("bake", cwd=tmp_path)
    assert res.code == 1 and len(error_lines(res)) == 1 and "newer" in res.stderr


# ------------------------------------------------------------------ reporting without deploys


def test_status_and_history_without_deploys(baked: Baked) -> None:
    res = kiln("status", cwd=baked.folder)
    assert res.code == 0 and "web" in res.stdout
    res = kiln("status", "--json", cwd=baked.folder)
    data = json.loads(res.stdout)
    assert data["services"][0]["current"] is None and data["services"][0]["releases"] == []
    assert kiln("history", "web", cwd=baked.folder).code == 0
    res = kiln("history", "web", "--json", cwd=baked.folder)
    assert json.loads(res.stdout) == {"rollouts": [], "events": []}
    res = kiln("history", "nosuch", cwd=baked.folder)
    assert res.code == 1 and len(error_lines(res)) == 1 and "'nosuch'" in res.stderr


# ------------------------------------------------------------------ the project lock


def _lock_pid(home: Path) -> int | None:
    conn = sqlite3.connect(home / "state.db", timeout=10)
    try:
        row = conn.execute("SELECT pid FROM lock WHERE id = 1").fetchone()
        return int(row[0]) if row else None
    finally:
        conn.close()


@pytest.fixture
def lock_holder(baked: Baked) -> Iterator[subprocess.Popen[bytes]]:
    home = baked.folder / ".kiln"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), "deploy web"],
                            stdin=subprocess.PIPE)
    try:
        def held() -> bool:
            assert proc.poll() is None, f"lock holder exited with {proc.returncode}"
            return _lock_pid(home) == proc.pid

        wait_for(held, 15.0, 0.02, what="the helper to take the lock")
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_mutating_command_while_locked_exits_4_naming_the_holder(
        baked: Baked, lock_holder: subprocess.Popen[bytes]) -> None:
    res = kiln("bake", cwd=baked.folder)
    assert res.code == 4
    lines = error_lines(res)
    assert len(lines) == 1 and "deploy web" in lines[0] and f"pid {lock_holder.pid}" in lines[0]
    assert _lock_pid(baked.folder / ".kiln") == lock_holder.pid  # still the holder's
    # Read-only commands do not need the lock.
    assert kiln("status", cwd=baked.folder).code == 0
    assert kiln("images", cwd=baked.folder).code == 0


def test_stale_lock_is_taken_over_with_a_warning(baked: Baked) -> None:
    home = baked.folder / ".kiln"
    dead = subprocess.Popen(["true"])
    dead.wait()
    conn = sqlite3.connect(home / "state.db", timeout=10)
    with conn:
        conn.execute("INSERT OR REPLACE INTO lock(id, pid, pid_start, host, command, started_at) "
                     "VALUES (1, ?, '1', ?, 'deploy web', ?)",
                     (dead.pid, socket.gethostname(), time.time()))
    conn.close()
    res = kiln("bake", cwd=baked.folder)
    assert res.code == 0, res.both
    assert "warning" in res.stderr and f"pid {dead.pid}" in res.stderr
    assert _lock_pid(home) is None


def test_interrupted_bake_exits_130_cleanly_and_stores_nothing(baked: Baked) -> None:
    home = baked.folder / ".kiln"
    before = image_dirs(baked.folder)
    spec = SPEC.replace("        to: app/\n", "        to: app/\n      - run: sleep 60\n")
    (baked.folder / "slow.yaml").write_text(spec)
    env = {k: v for k, v in os.environ.items() if k != "KILN_HOME"}
    proc = subprocess.Popen([str(KILN), "-f", "slow.yaml", "bake"], cwd=baked.folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        pidfile = home / "tmp" / "step.pid"
        wait_for(lambda: pidfile.exists() and bool(pidfile.read_text().strip()), 15.0, 0.02,
                 what="the run step to start")
        step_pid = int(pidfile.read_text().split()[0])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        (baked.folder / "slow.yaml").unlink()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "interrupted" in err
    assert image_dirs(baked.folder) == before
    assert _lock_pid(home) is None
    wait_for(lambda: not Path(f"/proc/{step_pid}").exists()
             or "Z" in Path(f"/proc/{step_pid}/stat").read_text().rsplit(")", 1)[1][:3],
             15.0, 0.02, what="the step's process to be gone")
    assert kiln("bake", cwd=baked.folder).code == 0  # and the next bake works


def _router_pids(folder: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "traefik" in cmd and str(folder / ".kiln") in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def router_cleanup(baked: Baked) -> Iterator[None]:
    try:
        yield
    finally:
        kiln("destroy", cwd=baked.folder)


@pytest.mark.e2e
def test_failed_rollback_starts_no_router(baked: Baked, router_cleanup: None) -> None:
    res = kiln("rollback", "web", cwd=baked.folder)
    assert res.code == 1 and "nothing is deployed" in res.stderr
    assert _router_pids(baked.folder) == []


def test_spec_elsewhere_keeps_its_state_beside_it(baked: Baked, tmp_path: Path) -> None:
    res = kiln("-f", str(baked.folder / "kiln.yaml"), "images", "--json", cwd=tmp_path)
    assert res.code == 0
    assert [i["digest"] for i in json.loads(res.stdout)] == [baked.digest]
    assert not (tmp_path / ".kiln").exists()
