"""SIGKILL of `kiln deploy` (a real subprocess talking to moto's server) at each step boundary,
then a rerun: it converges, and nothing kiln tagged is leaked or missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aws_helpers import listener_weights, open_project, write_project
from kiln.platforms.aws.inventory import tagged
from kiln.testing.moto import MotoServer
from kiln.testing.project import KILN

pytestmark = pytest.mark.e2e  # the real `kiln` command in subprocesses, killed mid-run


def kiln(folder: Path, *args: str, fault: str | None = None,
         drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if fault:
        env["KILN_FAULT"] = fault
    return subprocess.run([KILN, *args], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=env)


FAULTS = ["bake:launched", "launched", "after:health", "routed", "after:step", "after:drain_old"]


def test_sigkill_at_each_boundary_converges_without_leaks(moto: MotoServer,
                                                          tmp_path: Path) -> None:
    write_project(tmp_path, moto)
    first = kiln(tmp_path, "deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    try:
        for n, fault in enumerate(FAULTS, start=2):
            write_project(tmp_path, moto, version=str(n))
            killed = kiln(tmp_path, "deploy", fault=fault)
            assert killed.returncode == -9, (fault, killed.stdout + killed.stderr)
            again = kiln(tmp_path, "deploy")
            assert again.returncode == 0, (fault, again.stdout + again.stderr)
            current = f"web-r{n}"
            assert listener_weights(moto) == {current: 100}, fault
            inv = tagged(open_project(tmp_path / "kiln.yaml").platform.aws, "shop")
            assert inv["auto-scaling-group"] == [f"kiln-shop-{current}"], (fault, inv)
            assert inv["launch-template"] == [f"kiln-shop-{current}"], (fault, inv)
            assert len(inv["target-group"]) == 1 and len(inv["load-balancer"]) == 1, (fault, inv)
            assert len(inv["instance"]) == 3, (fault, inv)  # no builder, no orphan
            assert len(inv["security-group"]) == 2, (fault, inv)  # the ALB's and the fleet's
    finally:
        done = kiln(tmp_path, "destroy")
    assert done.returncode == 0, done.stdout + done.stderr
    left = tagged(open_project(tmp_path / "kiln.yaml").platform.aws, "shop")
    assert {k: v for k, v in left.items() if v and k not in ("image", "snapshot")} == {}


def test_bad_input_through_the_cli_is_one_line(moto: MotoServer, tmp_path: Path) -> None:
    path = write_project(tmp_path, moto)
    text = path.read_text()
    first_subnet = text.split("subnets: [")[1].split(",")[0]
    path.write_text(text.replace(first_subnet, "subnet-0123456789abcdef0"))
    res = kiln(tmp_path, "deploy")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "aws.subnets:" in res.stderr and "does not exist" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1, res.stderr
    path.write_text(text)
    res = kiln(tmp_path, "deploy",
               drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "no AWS credentials found" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) <= 2, res.stderr
    inv = tagged(open_project(path).platform.aws, "shop")
    assert sum(len(v) for v in inv.values()) == 0
