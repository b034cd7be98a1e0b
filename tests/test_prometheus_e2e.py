"""End to end with kiln's own Prometheus (Debian's binary): `metrics: {path}` on the service, a
real Prometheus scraping every instance by file_sd and the router (HAProxy's exporter, Traefik's
metrics), the shop's business counter, and a canary rolled back on it while its 5xx and latency
look fine."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.local.traefik_process import http_get, read_pidfile
from kiln.state.lock import pid_alive
from kiln.testing.load import Load
from kiln.testing.project import Proj, judged_canary, wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="Debian's prometheus is not installed (./scripts/setup)")]

METRIC = """\
      analysis:
        max_error_rate_increase: 0.02
        max_latency_increase: 50%
        min_requests: 50
        on_no_data: pause
        metrics:
          - name: checkout_failures
            kind: count
            failures: sum(increase(checkout_failures_total{release="$release"}[$window]))
            total: sum(increase(checkout_total{release="$release"}[$window]))
            max_increase: 2%
"""


def write_spec(p: Proj) -> None:
    rollout = judged_canary([(20, "30s"), (50, "10s")]).split("      analysis:")[0]
    p.write(rollout=rollout + METRIC + "      drain_timeout: 3s\n")
    spec = p.dir / "kiln.yaml"
    spec.write_text(spec.read_text().replace(
        "    stop_timeout: 5s\n", "    stop_timeout: 5s\n    metrics: {path: /metrics}\n"))


def query(url: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def up_releases(url: str) -> set[str]:
    return {r["metric"]["release"] for r in query(url, 'up{job="kiln-instances"} == 1')}


def haproxy_series_of(url: str, release: str) -> int:
    """HAProxy's per-server series of a release (the release label comes from the server's
    name by kiln's relabelling), one `haproxy_server_weight` per server."""
    return len(query(url, f'haproxy_server_weight{{proxy="kiln-web",release="{release}"}}'))


# HAProxy: the default router of a new project (`kiln init`).
@pytest.mark.parametrize("proj", ["haproxy"], indirect=True)
def test_business_counter_rolls_back_a_release_whose_5xx_and_latency_look_fine(
        proj: Proj) -> None:
    write_spec(proj)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    prom = proj.status()["prometheus"]
    assert prom["running"] and prom["targets"] == 3, prom
    url = prom["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
    # Every instance scraped with its release, service and instance; the router too.
    wait_for(lambda: up_releases(url) == {"web-r1"}, timeout=20, what="r1 scraped")
    ids = {i["id"] for r in proj.status()["services"][0]["releases"] for i in r["instances"]}
    assert len(ids) == 3

    def scraped() -> set[tuple[str, str]]:
        return {(s["metric"]["service"], s["metric"]["instance"])
                for s in query(url, 'up{job="kiln-instances"}')}

    # Prometheus takes new file_sd targets on its own tick: each instance appears in turn.
    wait_for(lambda: scraped() == {("web", i) for i in ids}, timeout=20,
             what="every instance scraped with its service and instance labels")
    wait_for(lambda: query(url, 'up{job="kiln-router"} == 1'), timeout=20,
             what="the router scraped")
    # HAProxy's exporter: its own loopback port (kiln's pick, kept with the router's state),
    # behind the router password; each of r1's servers has its series with its release.
    exporter = json.loads((proj.dir / ".kiln" / "haproxy" / "router.json").read_text())["metrics"]
    routers = json.loads((proj.dir / ".kiln" / "prometheus" / "targets" / "router.json")
                         .read_text())
    assert [g["targets"] for g in routers] == [[exporter]] and exporter != proj.listen, routers
    wait_for(lambda: haproxy_series_of(url, "web-r1") == 3, timeout=20,
             what="HAProxy's series of r1's 3 servers, labelled with their release")
    assert http_get(f"http://{exporter}/metrics")[0] == 401  # not without the password
    # Scrapes are not requests of any release: the judge's access log never has them.
    assert "kiln.metrics" not in (proj.dir / ".kiln" / "haproxy" / "access.log").read_text()
    # The public listen port serves the app's own /metrics, never HAProxy's.
    status, raw = http_get(f"http://{proj.listen}/metrics")
    body = raw.decode()
    assert status == 200 and "checkout_total" in body and "haproxy_" not in body, body[:300]

    proj.behave(version="2", checkout_failure_rate=0.3)
    with Load(proj.listen, rate=120, max_seconds=120, keep_body=80) as load:
        wait_for(lambda: load.stats.sent > 50)
        t = time.monotonic()
        res = proj.kiln("deploy", timeout=150)
        took = time.monotonic() - t
    stats = load.stats
    assert res.returncode == 3, res.stdout + res.stderr
    # 5xx and latency look fine: every request answered 200, the canary's failures only in
    # its body (and its counter).
    assert stats.failed == 0 and set(stats.statuses) == {200}, stats.summary()
    quiet = sum(n for body, n in stats.bodies.items() if "not placed" in body)
    assert quiet > 0, "the canary's checkouts never failed"
    last = json.loads(proj.kiln("history", "web", "--json").stdout)["rollouts"][-1]
    assert last["release"] == "web-r2" and last["outcome"] == "rolled_back", last
    rollout_s = last["finished_at"] - last["started_at"]
    assert rollout_s < 30, f"rolled back {rollout_s:.1f}s after the rollout began: the judge " \
                           "waited for the first step's 30 s pause"
    assert "checkout_failures" in str(last["reason"]), last["reason"]
    assert "5xx" not in str(last["reason"]).split("checkout_failures")[0], last["reason"]
    status = proj.status()
    ro = status["services"][0]["rollout"]
    assert "checkout_failures" in json.dumps(ro), ro
    assert "checkout_failures" in proj.kiln("status").stdout
    report = sorted((proj.dir / ".kiln" / "reports").glob("rollout-*.html"))[-1]
    assert "checkout_failures" in report.read_text()
    # The canary's instances left the targets file when they stopped.
    assert status["prometheus"]["targets"] == 3
    wait_for(lambda: up_releases(url) == {"web-r1"}, timeout=20,
             what="the canary's instances no longer scraped")
    print(f"\nbusiness-counter canary: deploy {took:.1f}s, rolled back {rollout_s:.1f}s after "
          f"the rollout began; reason: {last['reason']}; "
          f"load: {stats.summary()}")

    # destroy stops it; a read-only command does not start it again.
    running = read_pidfile(proj.dir / ".kiln" / "prometheus" / "prometheus.pid")
    assert running is not None
    assert proj.kiln("destroy").returncode == 0
    assert not pid_alive(running.pid, running.start)
    assert proj.status()["prometheus"]["running"] is False
    assert not (proj.dir / ".kiln" / "prometheus" / "prometheus.pid").exists()


def test_a_missing_prometheus_binary_is_one_line(proj: Proj, tmp_path: Path) -> None:
    write_spec(proj)
    missing = str(tmp_path / "no-such-prometheus")
    res = proj.kiln("deploy", env={"KILN_PROMETHEUS": missing})
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"KILN_PROMETHEUS: expected an executable prometheus binary, got {missing!r}" \
        in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # A deploy that failed before anything served leaves neither router nor Prometheus.
    assert proj.status()["router"]["running"] is False
    assert proj.alive_instances() == 0
    # With the binary found again, the deploy goes through and Traefik's own metrics (its
    # internal entrypoint, basic auth) are scraped beside the instances.
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    url = proj.status()["prometheus"]["url"]
    wait_for(lambda: query(url, 'up{job="kiln-router"} == 1'), timeout=20,
             what="Traefik's metrics scraped")
    assert query(url, 'traefik_config_reloads_total{job="kiln-router"}')


def test_prometheus_restarts_when_its_flags_change_and_only_then(tmp_path: Path) -> None:
    """A kiln upgrade can change Prometheus's flags without changing its config: the process
    started with the old flags is restarted (data kept); one started with today's is left."""
    from kiln.prometheus_server import EmbeddedPrometheus

    prom = EmbeddedPrometheus(tmp_path)
    try:
        url = prom.ensure_running()
        first = read_pidfile(prom.pid_path)
        assert first is not None
        assert prom.ensure_running() == url  # nothing changed: the same process
        again = read_pidfile(prom.pid_path)
        assert again is not None and again.pid == first.pid
        state = json.loads(prom.state_path.read_text())
        # What an older kiln recorded: other flags (another retention), same config.
        old = [a if not a.startswith("--storage.tsdb.retention.time=")
               else "--storage.tsdb.retention.time=1h" for a in state["argv"]]
        assert old != state["argv"]
        prom.state_path.write_text(json.dumps({**state, "argv": old}) + "\n")
        url2 = prom.ensure_running()
        restarted = read_pidfile(prom.pid_path)
        assert restarted is not None and restarted.pid != first.pid
        assert not pid_alive(first.pid, first.start)
        assert json.loads(prom.state_path.read_text())["argv"] == state["argv"]
        assert http_get(url2 + "/-/ready", timeout=2)[0] == 200
    finally:
        prom.stop()
