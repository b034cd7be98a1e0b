"""`make_relocatable` takes the build folder out of a venv's `activate`, in every form CPython
writes it (Debian 12's 3.11.2 writes the path bare, 3.11.4 and later quote it): otherwise
the image's digest depends on where it was built and a no-cache rebuild does not match."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.platforms.local.venv import make_relocatable

RELATIVE = 'VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"'


@pytest.mark.parametrize("line", [
    'VIRTUAL_ENV="{venv}"',  # CPython >= 3.11.4
    "VIRTUAL_ENV='{venv}'",
    "VIRTUAL_ENV={venv}",  # Debian 12's python3.11 (3.11.2)
    "VIRTUAL_ENV={venv}  ",
])
def test_activate_names_no_build_folder(tmp_path: Path, line: str) -> None:
    venv = tmp_path / "build-1234" / "root" / ".venv"
    (venv / "bin").mkdir(parents=True)
    activate = venv / "bin" / "activate"
    activate.write_text(f"deactivate () {{ :; }}\n{line.format(venv=venv)}\nexport VIRTUAL_ENV\n")
    make_relocatable(venv)
    text = activate.read_text()
    assert str(tmp_path) not in text
    assert text.splitlines()[1] == RELATIVE
    make_relocatable(venv)  # idempotent
    assert activate.read_text() == text


def test_an_activate_that_computes_its_folder_is_left_alone(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    activate = venv / "bin" / "activate"
    original = 'VIRTUAL_ENV=$(cd "$(dirname "$0")/.." && pwd)\n'
    activate.write_text(original)
    make_relocatable(venv)
    assert activate.read_text() == original
