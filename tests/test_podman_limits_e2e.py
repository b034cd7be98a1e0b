"""Podman containers are limited (issue 20, item 5): each project on its own network that no other
project's container can reach, no route off the host unless the service asks for egress, bounded
/tmp and /var/tmp, default memory and pids limits, and the networks gone with the last instance.
Real containers on the shared Debian base."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.platforms.base import Image, Instance, Release, ReleaseImage
from kiln.platforms.podman import engine
from kiln.platforms.podman.compute import PodmanCompute
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register

pytestmark = pytest.mark.e2e

HEALTH = Health(path="/", timeout=1.0, deadline=60.0)
CONNECT = ("import socket, sys\n"
           "s = socket.socket(); s.settimeout(3)\n"
           "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print(\"CONNECTED\")\n"
           "except OSError as e:\n    print(\"FAILED\", e)\n")


class Project:
    def __init__(self, home: Path, name: str, image: Image) -> None:
        self.store = Store.open(home)
        self.compute = PodmanCompute(self.store, home, name)
        self.image = register(self.store, image)  # as a bake would: launches verify it

    def launch(self, **spec: object) -> Instance:
        svc = ServiceSpec(image="base", command="python3 -m http.server 8000", port=8000,
                          listen="127.0.0.1:9", **spec)
        release = Release.of("web-r1", "web", 1, ReleaseImage.of(self.image), svc, "c")
        (inst,) = self.compute.launch("web", svc, release, self.image, 1, env={})
        ok, _ = self.compute.wait_healthy([inst], HEALTH)  # from the host, as the router does
        assert ok == [inst], self.compute.failure_reason(inst)
        return inst

    def sh(self, inst: Instance, command: str) -> str:
        res = self.compute.exec(inst, command, timeout=30)
        return res.stdout + res.stderr

    def close(self) -> None:
        for inst in self.compute.list_instances(kinds=("service",), live_only=False):
            self.compute.terminate(inst, timeout=2.0)
        self.compute.sweep()
        self.compute.remove_networks()
        self.store.close()


@pytest.fixture
def projects(tmp_path: Path, podman_base: str) -> Iterator[tuple[Project, Project]]:
    image = Image("base", podman_base, podman_base, workdir="/")
    tag = secrets.token_hex(3)
    a = Project(tmp_path / "a", f"limits-a{tag}", image)
    b = Project(tmp_path / "b", f"limits-b{tag}", image)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _exec_connect(p: Project, inst: Instance, host: str, port: int) -> str:
    res = p.compute.exec(inst, f"python3 -c '{CONNECT}' {host} {port}", timeout=30)
    return (res.stdout + res.stderr).strip()


def test_projects_are_isolated_and_offline_by_default(
        projects: tuple[Project, Project]) -> None:
    a, b = projects
    ia, ib = a.launch(), b.launch()
    assert ia.host != ib.host and not ia.host.startswith("127.")
    assert _exec_connect(a, ia, ia.host, 8000) == "CONNECTED"  # the probe itself works
    assert _exec_connect(b, ib, ia.host, 8000).startswith("FAILED")
    assert _exec_connect(a, ia, ib.host, 8000).startswith("FAILED")
    # no egress: no default route at all, so nothing leaves (the address is never contacted)
    routes = a.sh(ia, "cat /proc/net/route").splitlines()[1:]
    assert routes and all(line.split()[1] != "00000000" for line in routes), routes
    assert "unreachable" in _exec_connect(a, ia, "192.0.2.1", 53)

    data = engine.inspect("container", a.compute.container_name(ia.id))
    assert data is not None
    host_config = data["HostConfig"]
    assert host_config["Memory"] == 512 * 1024 * 1024
    assert host_config["PidsLimit"] == 512
    for path in ("/tmp", "/var/tmp"):
        size_kb = int(a.sh(ia, f"df -k {path} | tail -1").split()[1])
        assert size_kb == 64 * 1024, (path, size_kb)
        out = a.sh(ia, f"dd if=/dev/zero of={path}/fill bs=1M count=100; echo rc=$?")
        assert "No space left" in out and "rc=1" in out, out

    net = a.compute.project_network(False)
    assert engine.inspect("network", net) is not None
    a.compute.terminate(ia, timeout=2.0)
    assert engine.inspect("network", net) is None, "the last instance takes the network along"


def test_egress_is_a_routed_network_still_isolated_from_other_projects(
        projects: tuple[Project, Project]) -> None:
    a, b = projects
    ia = a.launch()
    ib = b.launch(egress=True, resources={"memory": "96M", "pids": 64})
    routes = b.sh(ib, "cat /proc/net/route").splitlines()[1:]
    assert any(line.split()[1] == "00000000" for line in routes), routes
    assert _exec_connect(b, ib, ia.host, 8000).startswith("FAILED")
    data = engine.inspect("container", b.compute.container_name(ib.id))
    assert data is not None
    assert (data["HostConfig"]["Memory"], data["HostConfig"]["PidsLimit"]) == (96 << 20, 64)
