"""`kiln init` writes a starter project that validates, and never overwrites anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.spec.init import free_port, init_project, project_name
from kiln.spec.loader import load_spec


def test_init_writes_a_valid_project(tmp_path: Path) -> None:
    folder = tmp_path / "my-app"
    written = init_project(folder)
    assert written[0] == folder / "kiln.yaml"
    rel = {p.relative_to(folder).as_posix() for p in written}
    assert {"kiln.yaml", "app/__init__.py", "app/__main__.py", "app/requirements.txt",
            "tests/image/test_image.py"} <= rel
    spec = load_spec(folder / "kiln.yaml").spec
    assert spec.project == "my-app"
    assert spec.services["web"].image == "web"
    main = (folder / "app" / "__main__.py").read_text()
    compile(main, "__main__.py", "exec")
    assert "$HOST" in main and "$project" not in main


def test_init_with_explicit_name(tmp_path: Path) -> None:
    init_project(tmp_path, "shop-2")
    assert load_spec(tmp_path / "kiln.yaml").spec.project == "shop-2"


def test_init_refuses_existing_spec(tmp_path: Path) -> None:
    (tmp_path / "kiln.yaml").write_text("project: mine\n")
    with pytest.raises(KilnError, match="already exists"):
        init_project(tmp_path)
    assert (tmp_path / "kiln.yaml").read_text() == "project: mine\n"


def test_init_never_overwrites_app_files(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("mine\n")
    with pytest.raises(KilnError, match="refusing to overwrite"):
        init_project(tmp_path)
    assert not (tmp_path / "kiln.yaml").exists()
    assert (tmp_path / "app" / "__main__.py").read_text() == "mine\n"


def test_init_rejects_bad_name(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="invalid project name 'Shop'"):
        init_project(tmp_path, "Shop")


@pytest.mark.parametrize(("folder", "name"), [
    ("shop", "shop"), ("My Shop_2", "my-shop-2"), ("2fast", "fast"), ("___", "app"),
    ("Ünïcode", "unicode"), ("x" * 60, "x" * 40), ("a--b", "a-b")])
def test_project_name(tmp_path: Path, folder: str, name: str) -> None:
    assert project_name(tmp_path / folder) == name


def test_free_port_skips_a_taken_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert free_port(taken) != taken
        assert free_port(taken, avoid=frozenset({taken + 1})) not in (taken, taken + 1)


def test_init_writes_ports_that_are_free(tmp_path: Path) -> None:
    """A starter spec whose listen port is taken would fail at its first deploy."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", 8080))
        held.listen()
    except OSError:
        pass  # something else already holds 8080: init must avoid it all the same
    try:
        init_project(tmp_path)
        svc = load_spec(tmp_path / "kiln.yaml").spec.services["web"]
        listen_port = int(svc.listen.rsplit(":", 1)[1])
        assert listen_port != 8080 and listen_port != svc.port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", listen_port))  # free when init wrote it
    finally:
        held.close()


def test_init_picks_haproxy_but_the_model_default_stays_traefik(tmp_path: Path) -> None:
    """New projects get the faster router; a spec without `router:` (every project made before
    the switch) keeps Traefik, so an upgrade never swaps a running router under it."""
    init_project(tmp_path)
    assert load_spec(tmp_path / "kiln.yaml").spec.router == "haproxy"
    (tmp_path / "kiln.yaml").write_text(
        (tmp_path / "kiln.yaml").read_text().replace("router: haproxy\n", ""))
    assert load_spec(tmp_path / "kiln.yaml").spec.router == "traefik"
