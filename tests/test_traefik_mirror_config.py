"""Pure: the Traefik configuration of a mirror step and its read-back (issue 23)."""

from __future__ import annotations

import pytest

from kiln.platforms.base import Backend
from kiln.platforms.local import traefik_config as tc
from kiln.spec.models import Health


def test_a_mirror_step_puts_a_mirroring_service_over_the_weighted_one() -> None:
    cfg = tc.dynamic_config("web", Health(), [Backend("web-r1", 100, ["127.0.0.2:1"]),
                                              Backend("web-r2", 0, ["127.0.0.3:1"], mirror=25)],
                            mirror_listen="127.0.0.1:5000")["http"]
    assert cfg["routers"]["kiln-web"]["service"] == "kilnmirror-web"
    assert cfg["services"]["kilnmirror-web"] == {"mirroring": {
        "service": "kiln-web", "maxBodySize": tc.MIRROR_BODY_LIMIT,
        "mirrors": [{"name": "kilnmirror-web-loop", "percent": 25}]}}
    assert cfg["services"]["kilnmirror-web-loop"] == {"loadBalancer": {
        "servers": [{"url": "http://127.0.0.1:5000"}]}}
    # The copies come back in through the mirror entrypoint, to the release's own service.
    assert cfg["routers"]["kilnmirror-web"] == {
        "rule": "PathPrefix(`/`)", "entryPoints": ["kiln-mirror_web"], "service": "kiln-web-r2"}
    assert cfg["services"]["kiln-web"]["weighted"]["services"] == [
        {"name": "kiln-web-r1", "weight": 100}]          # users: the old release only


def test_without_a_mirror_nothing_of_it_is_configured() -> None:
    cfg = tc.dynamic_config("web", Health(), [Backend("web-r1", 100, ["127.0.0.2:1"])],
                            mirror_listen="127.0.0.1:5000")["http"]
    assert cfg["routers"]["kiln-web"]["service"] == "kiln-web"
    assert not [k for k in (*cfg["routers"], *cfg["services"]) if k.startswith("kilnmirror")]


@pytest.mark.parametrize(("backends", "listen", "message"), [
    ([Backend("a-r1", 0, ["h:1"], mirror=10), Backend("a-r2", 0, ["h:2"], mirror=10)],
     "127.0.0.1:1", "one release at a time is mirrored, not 2"),
    ([Backend("a-r1", 100, ["h:1"]), Backend("a-r2", 0, ["h:2"], mirror=10)], None,
     "mirroring needs the service's mirror entrypoint"),
])
def test_refused(backends: list[Backend], listen: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tc.dynamic_config("a", Health(), backends, mirror_listen=listen)


ROUTER = {"service": "kilnmirror-web"}
MIRRORING = {"name": "kilnmirror-web@file",
             "mirroring": {"service": "kiln-web", "mirrors": [{"name": "kilnmirror-web-loop",
                                                               "percent": 100}]}}
LOOP = {"status": "enabled", "service": "kiln-web-r2"}


@pytest.mark.parametrize(("router", "mirroring", "loop", "expected"), [
    (ROUTER, MIRRORING, LOOP, {"web-r2": 100}),
    ({"service": "kiln-web"}, MIRRORING, LOOP, {}),          # users' router not on it yet
    (ROUTER, MIRRORING, {**LOOP, "status": "disabled"}, {}),  # the copies' router not live
    (ROUTER, None, LOOP, {}),
    (None, MIRRORING, LOOP, {}),
])
def test_mirrors_read_back(router: dict[str, str] | None, mirroring: dict[str, object] | None,
                           loop: dict[str, str], expected: dict[str, int]) -> None:
    assert tc.mirrors_from_api(router, mirroring, loop) == expected


def test_mirror_names_are_not_read_as_releases() -> None:
    assert tc.prometheus_counts(
        'traefik_service_requests_total{code="200",service="kilnmirror-web-loop@file"} 7\n'
        'traefik_service_requests_total{code="200",service="kiln-web-r2@file"} 5\n') == \
        {"web-r2": 5}
