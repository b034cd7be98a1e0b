"""`kiln init`: write a starter kiln.yaml and a tiny app that bakes, tests and deploys as is."""

from __future__ import annotations

import re
import socket
import unicodedata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from kiln.errors import KilnError
from kiln.spec.loader import SPEC_FILENAME
from kiln.spec.models import NAME_RE

_TEMPLATES = "templates/init"
_SUFFIX = ".tmpl"  # keeps template .py files out of the package's import path and linters


def project_name(folder: Path) -> str:
    """A valid project name from a folder name: 'My Shop_2' -> 'my-shop-2'."""
    ascii_name = unicodedata.normalize("NFKD", folder.resolve().name).encode("ascii", "ignore")
    name = re.sub(r"[^a-z0-9]+", "-", ascii_name.decode().lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)
    name = name[:40].rstrip("-")
    return name or "app"


def free_port(preferred: int, avoid: frozenset[int] = frozenset(), host: str = "127.0.0.1",
              tries: int = 200) -> int:
    """`preferred` if nothing listens there on `host`, else the next free port above it: a
    starter spec that names a taken port fails at its first deploy."""
    for port in range(preferred, min(preferred + tries, 65536)):
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return preferred  # everything near it is taken: the first deploy says which process holds it


def init_project(folder: Path, project: str | None = None) -> list[Path]:
    """Write the starter files into `folder` (created if needed); returns the paths written.

    Refuses when kiln.yaml or any file it would write already exists: init never overwrites.
    The router's listen port and the app's port are free ones (8080 and 8000 when free).
    """
    name = project if project is not None else project_name(folder)
    if not re.match(NAME_RE, name):
        raise KilnError(f"invalid project name {name!r}: expected a lowercase letter followed "
                        "by up to 39 lowercase letters, digits or dashes")
    if (folder / SPEC_FILENAME).exists():
        raise KilnError(f"{folder / SPEC_FILENAME} already exists; kiln init only writes into "
                        "a folder without a kiln.yaml")
    if folder.exists() and not folder.is_dir():
        raise KilnError(f"{folder} is not a folder")
    listen = free_port(8080)
    port = free_port(8000, avoid=frozenset({listen}))
    plan = [(folder / rel, text) for rel, text in _render(name, listen=listen, port=port)]
    clashes = [str(path) for path, _ in plan if path.exists()]
    if clashes:
        raise KilnError(f"refusing to overwrite {', '.join(clashes)}",
                        hint="run kiln init in an empty folder")
    written: list[Path] = []
    try:
        for path, text in plan:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("x", encoding="utf-8") as fh:
                fh.write(text)
            written.append(path)
    except OSError as exc:
        raise KilnError(f"cannot write {exc.filename or folder}: {exc.strerror or exc}") from exc
    return written


def _render(project: str, *, listen: int = 8080, port: int = 8000) -> list[tuple[Path, str]]:
    """(relative path, text) for every template, kiln.yaml first."""
    root = files("kiln.spec").joinpath(_TEMPLATES)
    values = {"project": project, "listen_port": str(listen), "app_port": str(port)}
    out = [(rel, Template(node.read_text(encoding="utf-8")).safe_substitute(values))
           for rel, node in _walk(root, Path())]
    return sorted(out, key=lambda item: (item[0] != Path(SPEC_FILENAME), str(item[0])))


def _walk(node: Traversable, rel: Path) -> list[tuple[Path, Traversable]]:
    out: list[tuple[Path, Traversable]] = []
    for child in node.iterdir():
        if child.is_dir():
            out += _walk(child, rel / child.name)
        elif child.name.endswith(_SUFFIX):
            out.append((rel / child.name[: -len(_SUFFIX)], child))
    return out
