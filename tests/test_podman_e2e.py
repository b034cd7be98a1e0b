"""End to end on podman: the podman-shop example bakes from a Debian base, passes its tests
(testinfra's podman backend), canaries a good release and has a bad one rolled back by the judge
under load, with no failed request but the bad release's own. kiln's Prometheus scrapes the
containers (`metrics: {path}`) at their addresses on the project's network."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.platforms.local.traefik_process import http_get
from kiln.testing.load import Load, LoadStats
from kiln.testing.podman import make_project, project_name, teardown_project
from kiln.testing.project import ROOT, Proj, judged_canary, wait_for

pytestmark = pytest.mark.e2e

JUDGED = judged_canary([(20, "20s"), (50, "4s")])


@pytest.fixture
def shop(tmp_path: Path, podman_base: str) -> Iterator[Proj]:
    p = make_project(tmp_path, rollout=JUDGED)
    try:
        yield p
    finally:
        teardown_project(p)


def containers(p: Proj) -> list[str]:
    out = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True,
                         text=True, timeout=60).stdout.split()
    # Names carry a hash of the project's .kiln folder: another run's project of the same name
    # (a test run beside this one on a shared machine) is not ours.
    scope = hashlib.sha256(str((p.dir / ".kiln").resolve()).encode()).hexdigest()[:8]
    return sorted(n for n in out if n.startswith(f"kiln-{project_name(p)}-{scope}-"))


def deploy_under_load(p: Proj) -> tuple[subprocess.CompletedProcess[str], LoadStats]:
    with Load(p.listen, rate=120, max_seconds=100, keep_body=40) as load:
        wait_for(lambda: load.stats.sent > 50, timeout=20)
        res = p.kiln("deploy", timeout=150)
    return res, load.stats


def failed_outside(stats: LoadStats, bad_version: str) -> int:
    """Failed requests not answered by the bad release itself (its injected 500s)."""
    own = sum(n for body, n in stats.bodies.items() if f"(version {bad_version})" in body
              and "injected error" in body)
    non_2xx = sum(n for status, n in stats.statuses.items() if not 200 <= status < 300)
    return stats.conn_errors + non_2xx - own


def with_metrics(p: Proj) -> None:
    """The shop's app with its /metrics (the local shop's server, stdlib only) and
    `metrics: {path: /metrics}` on the service: kiln runs its Prometheus for the project."""
    shutil.copy(ROOT / "examples" / "shop" / "app" / "server.py", p.dir / "app" / "server.py")
    spec = p.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace(
        "    stop_timeout: 5s\n", "    stop_timeout: 5s\n    metrics: {path: /metrics}\n", 1))


def scraped_up(url: str) -> set[tuple[str, str]]:
    """(release, instance) of every instance kiln's Prometheus scraped successfully last."""
    q = urllib.parse.urlencode({"query": 'up{job="kiln-instances"} == 1'})
    status, body = http_get(f"{url}/api/v1/query?{q}")
    assert status == 200, body
    return {(r["metric"]["release"], r["metric"]["instance"])
            for r in json.loads(body)["data"]["result"]}


def test_podman_shop_canaries_a_good_release_and_rolls_back_a_bad_one(shop: Proj) -> None:
    with_metrics(shop)
    res = shop.kiln("deploy", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "testinfra" in res.stdout and "4 passed" in "".join(res.stdout.split("\n"))
    assert shop.weights() == {"web-r1": 100}
    first = containers(shop)
    assert len(first) == 3

    # Scraped where Prometheus reaches them: each container's address on the project's network
    # (the router's address for it), labelled with its release.
    status = shop.status()
    insts = {i["id"]: i["address"] for i in status["services"][0]["releases"][0]["instances"]}
    groups = json.loads((shop.dir / ".kiln" / "prometheus" / "targets" / "instances.json")
                        .read_text())
    assert {g["labels"]["instance"]: g["targets"][0] for g in groups} == insts, groups
    assert {g["labels"]["release"] for g in groups} == {"web-r1"}
    url = status["prometheus"]["url"]
    wait_for(lambda: scraped_up(url) == {("web-r1", i) for i in insts}, timeout=30,
             what="the 3 containers scraped by kiln's Prometheus")

    shop.behave(version="2")
    res, stats = deploy_under_load(shop)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stats.failed == 0 and stats.sent > 500, stats.summary()
    assert shop.weights() == {"web-r2": 100}
    second = containers(shop)
    assert len(second) == 3 and not set(second) & set(first)  # the old ones are disposed of

    shop.behave(version="3", error_rate=0.3)
    res, stats = deploy_under_load(shop)
    assert res.returncode == 3, res.stdout + res.stderr
    assert failed_outside(stats, "3") == 0, stats.summary() + str(stats.error_samples)
    assert shop.weights() == {"web-r2": 100}
    assert containers(shop) == second
    hist = json.loads(shop.kiln("history", "web", "--json").stdout)
    last = hist["rollouts"][-1]
    assert last["release"] == "web-r3" and last["outcome"] == "rolled_back", last
    assert "5xx" in str(last["reason"])

    status = shop.status()["services"][0]
    inst = status["releases"][0]["instances"][0]
    assert inst["label"].startswith("container ") and inst["handle"]["name"].startswith("kiln-")
    assert not inst["address"].startswith("127.")  # its address on the project network
    drift = shop.kiln("drift", "--json")
    assert drift.returncode == 0 and json.loads(drift.stdout) == [], drift.stdout

    # Tampering from outside (the root is read-only inside): drift names the container.
    name = inst["handle"]["name"]
    merged = subprocess.run(["podman", "mount", name], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    try:
        (Path(merged) / "app" / "app" / "backdoor.py").write_text("print('pwned')\n")
    finally:
        subprocess.run(["podman", "umount", name], capture_output=True, timeout=60)
    drift = shop.kiln("drift", "--json")
    assert drift.returncode == 1, drift.stdout + drift.stderr
    items = [i for i in json.loads(drift.stdout) if i["kind"] == "tampered-instance"]
    assert len(items) == 1 and "added /app/app/backdoor.py" in items[0]["detail"], drift.stdout
