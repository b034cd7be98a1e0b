"""Pure parts of the local router: Traefik config rendering, API read-back, /proc/net/tcp parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.platforms.base import Backend
from kiln.platforms.local import tcp_table, traefik_config
from kiln.spec.models import Health


@pytest.mark.parametrize(("seconds", "text"), [
    (1.0, "1s"), (0.5, "500ms"), (30.0, "30s"), (1.5, "1500ms"), (0.001, "1ms"),
])
def test_go_duration(seconds: float, text: str) -> None:
    assert traefik_config.go_duration(seconds) == text


def test_static_config_is_loopback_quiet_and_fast() -> None:
    cfg = traefik_config.static_config(admin="127.0.0.1:9000",
                                       listens={"web": "127.0.0.1:8080", "api": "127.0.0.2:80"},
                                       dynamic_dir=Path("/h/dyn"), access_log=Path("/h/a.log"))
    assert cfg["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert cfg["entryPoints"] == {"traefik": {"address": "127.0.0.1:9000", "observability": {
                                      "accessLogs": False, "metrics": False, "tracing": False}},
                                  "kiln-api": {"address": "127.0.0.2:80"},
                                  "kiln-web": {"address": "127.0.0.1:8080"}}
    assert cfg["providers"]["providersThrottleDuration"] == "100ms"
    assert cfg["providers"]["file"] == {"directory": "/h/dyn", "watch": True}
    assert cfg["metrics"]["prometheus"]["addServicesLabels"] is True
    assert cfg["api"]["insecure"] is False and cfg["metrics"]["prometheus"]["manualRouting"]
    assert cfg["accessLog"]["format"] == "json"
    assert cfg["accessLog"]["bufferingSize"] == 0


def test_static_config_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        traefik_config.static_config(admin="127.0.0.1:9000", listens={"web": "0.0.0.0:80"},
                                     dynamic_dir=Path("/d"), access_log=Path("/a"))


HEALTH = Health(path="/ready", interval="2s", timeout="500ms")


def _weighted(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = cfg["http"]["services"]["kiln-web"]["weighted"]["services"]
    return services


@pytest.mark.parametrize(("weights", "listed"), [
    ({"web-r1": 100}, [("kiln-web-r1", 100)]),
    ({"web-r1": 90, "web-r2": 10}, [("kiln-web-r1", 90), ("kiln-web-r2", 10)]),
    ({"web-r1": 0, "web-r2": 100}, [("kiln-web-r2", 100)]),  # weight 0: out of the list
    ({"web-r1": 0, "web-r2": 0}, [("kiln-web-r1", 0), ("kiln-web-r2", 0)]),  # all out: 503
])
def test_dynamic_config_weights(weights: dict[str, int], listed: list[tuple[str, int]]) -> None:
    backends = [Backend(rid, w, [f"127.0.0.{i + 2}:8000"]) for i, (rid, w) in
                enumerate(weights.items())]
    cfg = traefik_config.dynamic_config("web", HEALTH, backends)
    assert [(s["name"], s["weight"]) for s in _weighted(cfg)] == listed
    router = cfg["http"]["routers"]["kiln-web"]
    assert router == {"rule": "PathPrefix(`/`)", "entryPoints": ["kiln-web"],
                      "service": "kiln-web"}
    # Every release stays defined (verify sees weight 0), with the spec's health check.
    for i, rid in enumerate(weights):
        lb = cfg["http"]["services"][f"kiln-{rid}"]["loadBalancer"]
        assert lb["servers"] == [{"url": f"http://127.0.0.{i + 2}:8000"}]
        assert lb["healthCheck"] == {"path": "/ready", "interval": "2s", "timeout": "500ms"}


def test_dynamic_config_without_backends_has_no_router() -> None:
    assert traefik_config.dynamic_config("web", HEALTH, []) == {"http": {"services": {}}}


def test_dynamic_config_needs_servers() -> None:
    with pytest.raises(ValueError, match="no servers"):
        traefik_config.dynamic_config("web", HEALTH, [Backend("web-r1", 100, [])])


@pytest.mark.parametrize(("weighted", "present", "expected"), [
    (None, [], {}),
    ({"weighted": {"services": [{"name": "kiln-web-r1", "weight": 100}]}}, ["web-r1"],
     {"web-r1": 100}),
    ({"weighted": {"services": [{"name": "kiln-web-r2", "weight": 100}]}}, ["web-r1", "web-r2"],
     {"web-r1": 0, "web-r2": 100}),
    # A release the API no longer knows (config not applied yet) is simply missing.
    ({"weighted": {"services": [{"name": "kiln-web-r1", "weight": 100}]}}, ["web-r1"],
     {"web-r1": 100}),
    ({"weighted": {"services": [{"name": "kiln-web-r1@file", "weight": 50},
                                {"name": "kiln-web-r2", "weight": 50}]}},
     ["web-r1", "web-r2"], {"web-r1": 50, "web-r2": 50}),
])
def test_weights_from_api(weighted: dict[str, Any] | None, present: list[str],
                          expected: dict[str, int]) -> None:
    assert traefik_config.weights_from_api(weighted, ["web-r1", "web-r2"], present) == expected


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001
   1: 0100007F:C350 0500007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 1002
   2: 0100007F:C351 0500007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 1003
   3: 0100007F:C352 0500007F:1F40 06 00000000:00000000 00:00000000 00000000     0        0 0
   4: 0100007F:C353 0600007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 1004
   5: 0500007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1005
"""


def test_parse_tcp_table() -> None:
    rows = tcp_table.parse_tcp_table(TCP)
    assert rows[0] == ("127.0.0.1:8080", "0.0.0.0:0", "0A", 1001)
    assert rows[1] == ("127.0.0.1:50000", "127.0.0.5:8000", "01", 1002)


@pytest.mark.parametrize(("inodes", "remotes", "count"), [
    ({1002, 1003, 1004, 1005}, {"127.0.0.5:8000"}, 2),  # TIME_WAIT and the server side excluded
    ({1002}, {"127.0.0.5:8000"}, 1),  # only the process's own sockets
    ({1002, 1003, 1004}, {"127.0.0.5:8000", "127.0.0.6:8000"}, 3),
    ({1002, 1003}, {"127.0.0.9:8000"}, 0),
])
def test_count_established(inodes: set[int], remotes: set[str], count: int) -> None:
    rows = tcp_table.parse_tcp_table(TCP)
    assert tcp_table.count_established(rows, inodes, remotes) == count


def test_decode_ipv6_mapped_address() -> None:
    # ::ffff:127.0.0.5 port 8000, as /proc/net/tcp6 prints it.
    assert tcp_table.decode_address("0000000000000000FFFF00000500007F:1F40") == "127.0.0.5:8000"
