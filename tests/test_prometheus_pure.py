"""kiln's own Prometheus: when it runs, what it is told to scrape, how the binary is found (pure),
and the judge's queries bringing a killed one back (a real process)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kiln.analysis.prometheus import QueryError
from kiln.errors import PlatformError
from kiln.platforms.fake.router import FakeRouter
from kiln.platforms.local import haproxy_config as hc
from kiln.platforms.local.haproxy_router import HAProxyRouter
from kiln.platforms.local.traefik_process import http_get
from kiln.prometheus_config import RELEASE_FROM_SERVER, Target, router_groups, static_config, target_groups
from kiln.prometheus_server import EmbeddedPrometheus, command, prometheus_binary
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
    assert jobs["kiln-router"]["metric_relabel_configs"] == [RELEASE_FROM_SERVER]


@pytest.mark.parametrize(("server", "release"), [
    (hc.server_name("web-r12", "127.0.0.1:41234"), "web-r12"),
    (hc.server_name("api-r1", "10.89.0.7:8000"), "api-r1"),
    ("BACKEND", None),      # a backend's own series: no server, no release
    ("", None),             # Traefik's series have no `server` label at all
])
def test_haproxy_servers_get_their_release_label(server: str, release: str | None) -> None:
    # Prometheus anchors a relabel regex at both ends, as fullmatch does; no match: unchanged.
    assert RELEASE_FROM_SERVER["replacement"] == "$1"
    found = re.fullmatch(str(RELEASE_FROM_SERVER["regex"]), server)
    assert (found.group(1) if found else None) == release


def test_prometheus_command_bounds_its_data_and_opens_no_admin_api(tmp_path: Path) -> None:
    argv = command("/usr/bin/prometheus", config=tmp_path / "p.yml", data=tmp_path / "data",
                   listen="127.0.0.1:9")
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert flags["storage.tsdb.retention.time"] == "7d"
    assert flags["storage.tsdb.retention.size"] == "512MB"
    assert flags["storage.tsdb.path"] == str(tmp_path / "data")
    assert flags["web.listen-address"] == "127.0.0.1:9"
    assert not any("admin-api" in a or "lifecycle" in a for a in argv)


def haproxy_metrics_config(tmp_path: Path, metrics: hc.MetricsFrontend | None) -> str:
    svc = hc.ServiceConfig("127.0.0.1:8080", [hc.Server("web-r1.127.0.0.1:9000",
                                                         "127.0.0.1:9000", 256, 500)], 1000)
    return hc.render(socket=tmp_path / "admin.sock", health_map=tmp_path / "health.map",
                     services={"web": svc}, metrics=metrics)


def test_haproxy_exporter_has_its_own_loopback_frontend_behind_basic_auth(
        tmp_path: Path) -> None:
    text = haproxy_metrics_config(tmp_path, hc.MetricsFrontend("127.0.0.1:9101", "kiln", "s-3_t"))
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n") if b.strip()}
    exporter = [line.strip() for line in blocks["frontend kiln.metrics"]]
    assert exporter == [
        "bind 127.0.0.1:9101",
        "http-request auth realm kiln unless { http_auth(kiln.metrics) }",
        "http-request use-service prometheus-exporter if { path /metrics }",
        "http-request deny"]  # not logged: no `log` line, the access log is the judge's
    assert [line.strip() for line in blocks["userlist kiln.metrics"]] == [
        "user kiln insecure-password s-3_t"]
    # The service's frontend (its public listen address) never serves the exporter.
    public = "\n".join(blocks["frontend kiln-web"])
    assert "prometheus-exporter" not in public and "bind 127.0.0.1:8080" in public
    assert "prometheus-exporter" not in haproxy_metrics_config(tmp_path, None)
    if shutil.which("haproxy"):  # HAProxy itself accepts it (its syntax, not a guess)
        (tmp_path / "health.map").write_text("")
        (tmp_path / "haproxy.cfg").write_text(text)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(tmp_path / "haproxy.cfg")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr + check.stdout


@pytest.mark.parametrize(("metrics", "problem"), [
    (hc.MetricsFrontend("0.0.0.0:9101", "kiln", "pw"), "is not on loopback"),
    (hc.MetricsFrontend("127.0.0.1:9101", "kiln", "pw with space"), "letters, digits"),
    (hc.MetricsFrontend("127.0.0.1:9101", "kiln", "pw\n  stats enable"), "letters, digits"),
])
def test_haproxy_exporter_refuses_what_would_expose_it(
        tmp_path: Path, metrics: hc.MetricsFrontend, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        haproxy_metrics_config(tmp_path, metrics)


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


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing")
def test_haproxy_serves_its_exporter_and_an_older_one_is_restarted_to_get_it(
        tmp_path: Path) -> None:
    """The exporter answers on the endpoint kiln publishes (only with the password); a HAProxy
    started by a kiln without it (no `metrics` in router.json) is restarted once to get it."""
    router = HAProxyRouter(tmp_path, "shop")
    try:
        router.ensure_running()
        endpoint = router.metrics_endpoint()
        assert endpoint is not None and endpoint["address"].startswith("127.0.0.1:")
        url = f"http://{endpoint['address']}{endpoint['path']}"
        assert http_get(url)[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(
            f"{endpoint['username']}:{endpoint['password']}".encode()).decode()}
        status, body = http_get(url, headers=auth)
        assert status == 200 and b"haproxy_process_" in body
        first = router._running()
        router.ensure_running()  # unchanged: the same process
        assert router._running() == first and router.metrics_endpoint() == endpoint
        state = json.loads(router.state_path.read_text())
        del state["metrics"], state["metrics_password"]  # as an older kiln left it
        router.state_path.write_text(json.dumps(state))
        router.ensure_running()
        again = router.metrics_endpoint()
        assert again is not None and again != endpoint
        assert router._running() != first
        url = f"http://{again['address']}{again['path']}"
        auth = {"Authorization": "Basic " + base64.b64encode(
            f"{again['username']}:{again['password']}".encode()).decode()}
        assert http_get(url, headers=auth)[0] == 200
    finally:
        router.stop()
