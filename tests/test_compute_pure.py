"""Pure parts of the local Compute: address allocation and environment precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import PlatformError
from kiln.platforms.local.addresses import address_for, allocate, project_octet
from kiln.platforms.local.environment import base_env, instance_env, kiln_vars


def _index(address: str) -> int:
    """Where an address sits in its /16 range (0 for x.y.0.1)."""
    _, _, third, fourth = map(int, address.split("."))
    return third * 254 + fourth - 1


@pytest.mark.parametrize("counter", [0, 1, 253, 254, 254 * 256 - 1, 254 * 256])
def test_address_for_walks_the_range_from_the_projects_own_start(counter: int) -> None:
    start = _index(address_for("shop", 0))
    host = address_for("shop", counter)
    assert host.startswith(f"127.{project_octet('shop')}.")
    assert _index(host) == (start + counter) % (254 * 256)
    assert not host.endswith((".0", ".255"))


def test_projects_sharing_an_octet_start_apart() -> None:
    """Two projects with one second octet began at the same .0.1 and raced for it."""
    names = [f"shop@/tmp/p{i}" for i in range(2000)]
    assert len({project_octet(n) for n in names}) <= 128  # octets alone: shared by many
    firsts = {address_for(n, 0) for n in names}
    assert len(firsts) > 0.99 * len(names)  # first addresses: nearly all apart


def test_project_octet_is_stable_and_never_zero_block() -> None:
    octets = {project_octet(f"p{i}") for i in range(500)}
    assert min(octets) >= 64 and max(octets) <= 191
    assert project_octet("shop") == project_octet("shop")


@pytest.mark.parametrize(("taken", "busy", "expected"), [
    (set(), set(), 0),                  # first address from the counter
    ({0}, set(), 1),                    # held by a live instance
    (set(), {0, 1}, 2),                 # port bound by something else
    ({0}, {1}, 2),
])
def test_allocate_skips_taken_and_busy(taken: set[int], busy: set[int], expected: int) -> None:
    def addr(i: int) -> str:
        return address_for("shop", 10 + i)

    host = allocate("shop", 8000, 10, {addr(i) for i in taken},
                    is_free=lambda h, p: h not in {addr(i) for i in busy})
    assert host == addr(expected)


def test_allocate_gives_up_with_a_clear_error() -> None:
    with pytest.raises(PlatformError, match="no free loopback address for port 8000"):
        allocate("shop", 8000, 0, set(), is_free=lambda h, p: False, limit=5)


def test_env_precedence_and_isolation() -> None:
    root, scratch = Path("/img/root"), Path("/inst/scratch")
    base = base_env(root, scratch, {"PATH": "/usr/bin", "LANG": "C.UTF-8",
                                    "HTTP_PROXY": "http://proxy", "AWS_SECRET": "x"})
    env = instance_env(
        base=base,
        image_env={"A": "image", "B": "image", "C": "image", "PYTHONUNBUFFERED": "0"},
        service_env={"B": "service", "C": "service", "HOST": "0.0.0.0"},
        extra_env={"C": "secret", "PORT": "1"},
        kiln=kiln_vars("127.64.0.1", 8000, "web", "web-r1", "web-r1-abc"),
    )
    assert env["PATH"] == "/img/root/.venv/bin:/usr/bin"
    assert env["VIRTUAL_ENV"] == "/img/root/.venv"
    assert env["HOME"] == "/inst/scratch" and env["TMPDIR"] == "/inst/scratch/tmp"
    assert env["LANG"] == "C.UTF-8"
    assert "HTTP_PROXY" not in env and "AWS_SECRET" not in env
    assert (env["A"], env["B"], env["C"]) == ("image", "service", "secret")
    assert env["PYTHONUNBUFFERED"] == "0"
    assert (env["HOST"], env["PORT"]) == ("127.64.0.1", "8000")  # kiln's own vars win
    assert env["KILN_INSTANCE"] == "web-r1-abc"


def test_both_computes_satisfy_the_protocol(tmp_path: Path) -> None:
    from kiln.platforms.base import Compute
    from kiln.platforms.fake.compute import FakeCompute
    from kiln.platforms.local.compute import LocalCompute
    from kiln.state.store import Store

    store = Store.open(tmp_path)
    computes: list[Compute] = [FakeCompute(store), LocalCompute(store, tmp_path, "p",
                                                                sandbox="none")]
    assert len(computes) == 2
    store.close()
