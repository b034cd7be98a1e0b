"""`kiln logs` on aws is read-only and `--follow` follows: the journal is read over SSM (on local
stand-ins of the instances, tests/aws_standin.py), nothing is written anywhere in the project,
and following asks for the lines after journald's cursor until ^C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aws_helpers import open_project
from aws_standin import StandIns
from kiln.platforms.aws.compute import AwsCompute
from kiln.platforms.base import Instance
from kiln.project import Project
from kiln.testing.moto import MotoServer
from kiln.testing.project import free_port, wait_for
from kiln_cli import render
from kiln_cli.main import app
from test_aws_image_tests import standins, write

__all__ = ["standins"]  # the fixture, shared with the image tests

pytestmark = pytest.mark.e2e


def _files(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file of the project but the stand-ins' disks and the database (compared by its
    commits: `PRAGMA data_version`)."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and skip not in path.parents and not path.name.startswith("state.db"):
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture
def deployed(moto: MotoServer, standins: StandIns, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Project, int]]:
    port = free_port()
    project = open_project(write(tmp_path, moto, port))
    try:
        assert project.deploy(skip_tests=True).services[0].outcome == "promoted"
        monkeypatch.chdir(tmp_path)
        compute = project.compute
        assert isinstance(compute, AwsCompute)
        for inst in compute.instances("web-r1"):  # booted (first SSM command), first line out
            wait_for(lambda i=inst: compute.read_log(i, lines=1)[0],  # type: ignore[misc]
                     timeout=30, what=f"{inst.id}'s first journal line")
        yield project, port
    finally:
        project.destroy()
        project.close()


def test_logs_read_the_journal_and_write_nothing(deployed: tuple[Project, int],
                                                 tmp_path: Path) -> None:
    project, _ = deployed
    ids = sorted(i.id for i in project.compute.instances("web-r1"))
    conn = sqlite3.connect(tmp_path / ".kiln" / "state.db")
    runner = CliRunner()
    try:
        for args in (["logs"], ["logs", "-n", "1"], ["logs", "--json"],
                     ["logs", "--instance", ids[0][:8]]):
            files = _files(tmp_path, tmp_path / "instances")
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            res = runner.invoke(app, args)
            what = f"`kiln {' '.join(args)}`"
            assert res.exit_code == 0, f"{what}: {res.output}"
            assert _files(tmp_path, tmp_path / "instances") == files, f"{what} wrote files"
            assert conn.execute("PRAGMA data_version").fetchone()[0] == version, \
                f"{what} wrote to the state"
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == events, what
            if args == ["logs", "--json"]:
                shown = {d["instance"]: d["lines"] for d in json.loads(res.stdout)}
                assert sorted(shown) == ids
                assert all(lines and lines[0].startswith("starting on") for lines in
                           shown.values()), shown
            elif args[1:2] == ["--instance"]:
                assert {x.split(" | ")[0] for x in res.stdout.splitlines()} == {ids[0]}
            else:
                assert {x.split(" | ")[0] for x in res.stdout.splitlines()} == set(ids)
            if args == ["logs"]:  # both printed it (the second then found the port taken)
                assert sum("starting on" in x for x in res.stdout.splitlines()) == 2, res.stdout
            if args[1:] == ["-n", "1"]:
                assert len(res.stdout.splitlines()) == 2, res.stdout  # one line each
        assert not (tmp_path / ".kiln" / "instances").exists() or not any(
            (tmp_path / ".kiln" / "instances").rglob("log"))
    finally:
        conn.close()


def test_follow_prints_new_lines_until_ctrl_c(deployed: tuple[Project, int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`kiln logs --follow` (the CLI, in this process): after the tail it keeps asking the
    instances for lines after its cursor; a request made meanwhile shows up once; ^C ends it."""
    _, port = deployed
    monkeypatch.setattr(render, "FOLLOW_EVERY", 0.05)
    seen: list[str] = []
    reads: list[str | None] = []
    real = AwsCompute.read_log

    def read_log(self: AwsCompute, instance: Instance, **kw: Any) -> tuple[list[str], str | None]:
        got = real(self, instance, **kw)
        reads.append(kw.get("after"))
        seen.extend(got[0])
        return got

    monkeypatch.setattr(AwsCompute, "read_log", read_log)
    main = threading.get_ident()

    def probe_then_interrupt() -> None:
        try:
            wait_for(lambda: len(reads) >= 4, timeout=30, what="the first follow reads")
            with contextlib.suppress(urllib.error.HTTPError):  # a 404, logged all the same
                urllib.request.urlopen(f"http://127.0.0.1:{port}/follow-probe", timeout=5).close()
            wait_for(lambda: "request /follow-probe" in seen, timeout=30,
                     what="the new line, read while following")
        finally:
            assert threading.get_ident() != main
            os.kill(os.getpid(), signal.SIGINT)  # ^C: Python raises it in the main thread

    # A suite run in the background (`./scripts/test &`) has SIGINT ignored: the ^C this test
    # sends itself must raise KeyboardInterrupt all the same.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper = threading.Thread(target=probe_then_interrupt, daemon=True)
        helper.start()
        res = CliRunner().invoke(app, ["logs", "--follow", "-n", "30"])
        helper.join(30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not helper.is_alive()
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert sum(x.endswith("| request /follow-probe") for x in lines) == 1, res.stdout
    assert sum("starting on" in x for x in lines) == 2, res.stdout  # the tail, never repeated
    assert any(r is not None for r in reads[2:]), reads  # followed by cursor
    assert lines.index(next(x for x in lines if "request /follow-probe" in x)) >= 2
