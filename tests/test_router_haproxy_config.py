"""HAProxy config rendering and read-back, pure: weights spread over servers, names, CSV."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.platforms.base import Backend
from kiln.platforms.local import haproxy_config as hc
from kiln.spec.models import Health

H = Health(path="/healthz", interval=0.5, timeout=1.0)


@pytest.mark.parametrize(("backends", "weights"), [
    ([Backend("w-r1", 100, ["a:1"])], [256]),
    ([Backend("w-r1", 90, ["a:1"]), Backend("w-r2", 10, ["b:1", "c:1"])], [256, 14, 14]),
    ([Backend("w-r1", 50, ["a:1", "b:1"]), Backend("w-r2", 50, ["c:1", "d:1"])], [256] * 4),
    ([Backend("w-r1", 0, ["a:1"]), Backend("w-r2", 100, ["b:1"])], [0, 256]),
    ([Backend("w-r1", 0, ["a:1"])], [0]),
    ([Backend("w-r1", 1, ["a:1"] * 3), Backend("w-r2", 99, ["b:1"])], [1, 1, 1, 256]),
])
def test_release_weight_spread_over_servers(backends: list[Backend], weights: list[int]) -> None:
    assert [s.weight for s in hc.servers(backends, H)] == weights


def test_server_names_carry_the_release() -> None:
    (s,) = hc.servers([Backend("web-r3", 100, ["127.0.0.5:8000"])], H)
    assert s.name == "web-r3.127.0.0.5:8000"
    assert hc.release_of_server(s.name) == "web-r3"


def test_refusals() -> None:
    with pytest.raises(ValueError, match="no servers"):
        hc.servers([Backend("w-r1", 100, [])], H)
    with pytest.raises(ValueError, match="dot"):
        hc.servers([Backend("w.r1", 100, ["a:1"])], H)
    with pytest.raises(ValueError, match="loopback"):
        hc.render(socket=Path("/s"), health_map=Path("/m"),
                  services={"web": hc.ServiceConfig("0.0.0.0:80", [], 1000)})


def test_each_release_checked_its_own_way() -> None:
    old = Health(path="/old", interval=2.0, timeout=3.0)
    backends = [Backend("w-r1", 50, ["a:1"], old), Backend("w-r2", 50, ["b:1"])]
    assert hc.health_paths(backends, H) == {"w-r1": "/old", "w-r2": "/healthz"}
    assert [s.inter_ms for s in hc.servers(backends, H)] == [2000, 500]
    assert hc.check_timeout(backends, H) == 3000


STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,\
wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,\
tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,addr
kiln-web,w-r1.a:1,0,0,2,3,,10,0,0,,0,,0,0,0,0,UP,256,1,0,0,0,5,0,,1,3,1,,10,,2,0,,1,L7OK,200,1,0,10,a:1
kiln-web,w-r2.b:1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,28,0,0,0,0,5,0,,1,3,2,,0,,2,0,,0,,,,0,0,b:1
kiln-web,BACKEND,0,0,2,3,,10,0,0,0,0,,0,0,0,0,UP,256,1,0,,0,5,0,,1,3,0,,10,,1,0,,1,,,,0,10,
"""


def test_parse_stat() -> None:
    stats = hc.parse_stat(STAT)
    assert [(s.name, s.weight, s.status, s.current, s.address) for s in stats] == [
        ("w-r1.a:1", 256, "UP", 2, "a:1"), ("w-r2.b:1", 28, "MAINT", 0, "b:1")]


@pytest.mark.parametrize(("row", "ended"), [
    ({"stot": "24", "wretr": "0", "wredis": "0", "scur": "0"}, 24),  # 200s, 500s, 502s, aborts
    ({"stot": "19", "wretr": "0", "wredis": "19", "scur": "0"}, 0),  # dead: all sent elsewhere
    ({"stot": "3", "wretr": "2", "wredis": "0", "scur": "0"}, 1),    # retried here, then a 503
    ({"stot": "30", "wretr": "1", "wredis": "2", "scur": "4"}, 23),  # 4 still in flight
    ({"stot": "1", "wretr": "0", "wredis": "0", "scur": "2"}, 0),    # never negative
    ({"stot": "", "scur": None}, 0),                                  # empty fields
])
def test_ended_requests(row: dict[str, str | None], ended: int) -> None:
    assert hc.ended_requests(row) == ended


def test_parse_stat_counts_ended_requests() -> None:
    assert [s.ended for s in hc.parse_stat(STAT)] == [10 - 2, 0]


def st(name: str, ended: int) -> hc.ServerStat:
    return hc.ServerStat("kiln-web", name, name.partition(".")[2], 256, "UP", 0, ended)


@pytest.mark.parametrize(("stats", "retired", "folded", "counts"), [
    ([st("w-r1.a:1", 5), st("w-r1.b:1", 7), st("w-r2.c:1", 1)], {}, {}, {"w-r1": 12, "w-r2": 1}),
    # a deleted server's last count stays with its release
    ([st("w-r1.b:1", 7)], {"w-r1.a:1": 5}, {}, {"w-r1": 12}),
    # deleted, then its release gone entirely
    ([st("w-r2.c:1", 3)], {"w-r1.a:1": 5, "w-r1.b:1": 7}, {}, {"w-r1": 12, "w-r2": 3}),
    # a retired entry whose server is live again (its delete was refused): the live one counts
    ([st("w-r1.a:1", 6)], {"w-r1.a:1": 5}, {}, {"w-r1": 6}),
    # a server added again after its delete: its old count was folded into the release
    ([st("w-r1.a:1", 2)], {}, {"w-r1": 5}, {"w-r1": 7}),
])
def test_release_counts(stats: list[hc.ServerStat], retired: dict[str, int],
                        folded: dict[str, int], counts: dict[str, int]) -> None:
    assert hc.release_counts(stats, retired, folded) == counts


def test_served_weights() -> None:
    backends = [Backend("w-r1", 90, ["a:1"]), Backend("w-r2", 10, ["b:1"])]
    expected = hc.servers(backends, H)
    live = [hc.ServerStat("kiln-w", s.name, s.address, s.weight, "UP", 0) for s in expected]
    wanted = {"w-r1": 90, "w-r2": 10}
    assert hc.served_weights(live, wanted, expected) == wanted
    # A server left in maintenance (waiting to be deleted) is not part of the routing.
    gone = hc.ServerStat("kiln-w", "w-r0.z:1", "z:1", 256, "MAINT", 0)
    assert hc.served_weights([*live, gone], wanted, expected) == wanted
    # Weights that are not what was asked read back as each release's share.
    off = [live[0], hc.ServerStat("kiln-w", live[1].name, "b:1", 256, "UP", 0)]
    assert hc.served_weights(off, wanted, expected) == {"w-r1": 50, "w-r2": 50}


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    servers = hc.servers([Backend("web-r1", 100, ["127.0.0.2:8000"])], H)
    text = hc.render(socket=tmp_path / "admin.sock", health_map=tmp_path / "health.map",
                     services={"web": hc.ServiceConfig("127.0.0.1:18080", servers, 1000)})
    (tmp_path / "health.map").write_text("web-r1 /healthz\n")
    (tmp_path / "haproxy.cfg").write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
