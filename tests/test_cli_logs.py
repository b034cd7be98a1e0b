"""`kiln logs` never answers with silence: an empty or missing log says so on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_cli.render import show_logs


def test_empty_and_missing_logs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    full = tmp_path / "full.log"
    full.write_bytes(b"one\ntwo\nthree\n")
    show_logs([("web-r1-a", empty), ("web-r1-b", full), ("web-r1-c", tmp_path / "gone.log")],
              follow=False, lines=2)
    out, err = capsys.readouterr()
    assert out == "web-r1-b | two\nweb-r1-b | three\n"
    assert f"web-r1-a: the app has written nothing yet (log: {empty})" in err
    assert "web-r1-c: no log to show" in err and "No such file" in err
