"""kiln's own Prometheus: when it runs, what it is told to scrape, how the binary is found (pure),
and the judge's queries bringing a killed one back (a real process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from kiln.analysis.prometheus import QueryError
from kiln.errors import PlatformError
from kiln.platforms.fake.router import FakeRouter
from kiln.prometheus_config import Target, router_groups, static_config, target_groups
from kiln.prometheus_server import EmbeddedPrometheus, prometheus_binary
from kiln.scraping import Scraping, wanted
from kiln.spec.models import Spec
from kiln.state.store import Store
from kiln.testing.project import wait_for

BASE = {"project": "shop", "images": {"web": {"steps": []}},
        "services": {"web": {"image": "web", "command": "python -m app",
                             "listen": "127.0.0.1:8080"}}}


def spec(**over: object) -> Spec:
    data = json.loads(json.dumps(BASE))
    svc = over.pop("service", {})
    assert isinstance(svc, dict)
    data["services"]["web"].update(svc)
    data.update(over)
    return Spec.model_validate(data)


@pytest.mark.parametrize(("over", "runs"), [
    ({}, False),                                                      # no metrics: path
    ({"service": {"metrics": {"path": "/metrics"}}}, True),
    ({"service": {"metrics": {}}}, True),                             # path defaults to /metrics
    ({"service": {"metrics": {"path": "/m"}}, "prometheus": {"url": "http://127.0.0.1:9090"}},
     False),                                                          # the user's own instead
    ({"service": {"metrics": {"path": "/m"}}, "platform": "podman"}, True),
])
def test_when_kiln_runs_its_own(over: dict[str, object], runs: bool) -> None:
    assert wanted(spec(**over)) is runs


def test_aws_needs_a_prometheus_url() -> None:
    with pytest.raises(ValueError, match=r"on aws set prometheus: \{url: \.\.\.\}"):
        spec(service={"metrics": {"path": "/metrics"}}, platform="aws",
             aws={"region": "eu-west-1", "subnets": ["subnet-0abc1234"],
                  "base_ami": "ami-0123456789abcdef0"})


def test_target_groups_carry_release_service_instance_and_path() -> None:
    groups = target_groups([Target("web-r2-1", "web", "web-r2", "127.0.0.9:8000", "/m"),
                            Target("web-r1-1", "web", "web-r1", "127.0.0.8:8000", "/metrics")])
    assert groups == [
        {"targets": ["127.0.0.8:8000"], "labels": {"release": "web-r1", "service": "web",
                                                   "instance": "web-r1-1",
                                                   "__metrics_path__": "/metrics"}},
        {"targets": ["127.0.0.9:8000"], "labels": {"release": "web-r2", "service": "web",
                                                   "instance": "web-r2-1",
                                                   "__metrics_path__": "/m"}}]
    assert router_groups(None) == []
    assert router_groups({"address": "127.0.0.1:9", "path": "/metrics", "username": "kiln",
                          "password": "x"}) == [
        {"targets": ["127.0.0.1:9"], "labels": {"__metrics_path__": "/metrics"}}]


def test_static_config_scrapes_every_second_from_file_sd(tmp_path: Path) -> None:
    cfg = static_config(targets_dir=tmp_path, password_file=tmp_path / "pw", username="kiln",
                        interval=1.0)
    assert cfg["global"]["scrape_interval"] == "1000ms"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["kiln-instances"]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "instances.json")]
    assert jobs["kiln-router"]["basic_auth"] == {"username": "kiln",
                                                 "password_file": str(tmp_path / "pw")}
    assert "password" not in json.dumps(jobs["kiln-router"]).replace("password_file", "")


def test_targets_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    server = EmbeddedPrometheus(tmp_path)
    one = [Target("web-r1-1", "web", "web-r1", "127.0.0.8:8000", "/metrics")]
    assert server.write_targets(one, None) is True
    assert server.write_targets(one, None) is False
    assert [g["labels"]["release"] for g in server.targets()] == ["web-r1"]  # type: ignore[index]
    assert server.write_targets([], {"address": "127.0.0.1:9", "password": "s3cret"}) is True
    assert server.targets() == []
    pw = server.password_file
    assert pw.read_text() == "s3cret" and pw.stat().st_mode & 0o077 == 0
    assert not list(server.targets_dir.glob(".*.tmp"))


def test_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_PROMETHEUS", str(tmp_path / "nope"))
    with pytest.raises(PlatformError, match="KILN_PROMETHEUS: expected an executable"):
        prometheus_binary()
    monkeypatch.delenv("KILN_PROMETHEUS")
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(PlatformError, match="no prometheus binary is on PATH"):
        prometheus_binary()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus missing")
def test_the_judges_queries_restart_a_killed_prometheus(tmp_path: Path) -> None:
    """A Prometheus killed mid-rollout is started again by the judge's next query (its data
    kept), not left dead until the progress deadline."""
    store = Store.open(tmp_path, "shop")
    scraping = Scraping(spec(service={"metrics": {"path": "/metrics"}}), lambda: store,
                        tmp_path, lambda: FakeRouter())
    try:
        scraping.ensure()
        first = scraping.server.running()
        assert first is not None
        queries = scraping.queries()
        assert queries.query("vector(1)", time.time()) == 1.0
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: not scraping.server.is_running(), timeout=10, what="prometheus dead")
        assert queries.query("vector(2)", time.time()) == 2.0
        again = scraping.server.running()
        assert again is not None and again.pid != first.pid and queries.restarts == 1
        # Not again within RESTART_EVERY: a Prometheus that keeps dying costs no restart loop.
        os.kill(again.pid, signal.SIGKILL)
        wait_for(lambda: not scraping.server.is_running(), timeout=10, what="prometheus dead")
        with pytest.raises(QueryError):
            queries.query("vector(3)", time.time())
        assert queries.restarts == 1
    finally:
        scraping.stop()
        store.close()
