"""AccessLogSource: Traefik JSON access-log lines -> Samples, read incrementally."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.analysis.summary import aggregate, bin_index
from kiln.platforms.base import Sample, Window
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.platforms.local.accesslog import AccessLogSource, parse_line, parse_time

# Recorded from Traefik 3.7 (weighted service kiln-web over leaf services kiln-web-r1/r2),
# trimmed to the fields that matter plus a few others.
LEAF_200 = ('{"ClientAddr":"127.0.0.1:35146","DownstreamContentSize":11,"DownstreamStatus":200,'
            '"Duration":510210,"OriginDuration":389420,"OriginStatus":200,"RequestMethod":"GET",'
            '"RequestPath":"/","RetryAttempts":0,"RouterName":"kiln-web@file",'
            '"ServiceAddr":"127.0.0.1:18081","ServiceName":"kiln-web-r1@file",'
            '"ServiceURL":"http://127.0.0.1:18081","StartUTC":"2026-11-26T05:02:13.768125361Z",'
            '"entryPointName":"web","level":"info","msg":"","time":"2026-11-26T05:02:13Z"}')
LEAF_502 = ('{"DownstreamStatus":502,"Duration":262280,"OriginStatus":502,'
            '"RouterName":"kiln-web@file","ServiceAddr":"127.0.0.1:18082",'
            '"ServiceName":"kiln-web-r2@file","ServiceURL":"http://127.0.0.1:18082",'
            '"StartUTC":"2026-11-26T05:02:13.815433702Z"}')
# If Traefik only names the weighted service, the backend address decides.
WEIGHTED_500 = ('{"DownstreamStatus":500,"Duration":2000000000,"OriginStatus":500,'
                '"ServiceName":"kiln-web@file","ServiceURL":"http://127.0.0.5:9000",'
                '"StartUTC":"2026-11-26T05:02:14Z"}')
NO_BACKEND_503 = ('{"DownstreamStatus":503,"Duration":100000,"OriginStatus":0,'
                  '"ServiceName":"kiln-web@file","StartUTC":"2026-11-26T05:02:15.5Z"}')

T0 = parse_time("2026-11-26T05:02:13Z")


def release_of(addr: str) -> str | None:
    return {"127.0.0.5:9000": "web-r7"}.get(addr)


@pytest.mark.parametrize(("line", "expected"), [
    (LEAF_200, Sample("web-r1", T0 + 0.768125361 + 0.00051021, 200, 0.00051021, False)),
    (LEAF_502, Sample("web-r2", T0 + 0.815433702 + 0.00026228, 502, 0.00026228, True)),
    (WEIGHTED_500, Sample("web-r7", T0 + 1 + 2.0, 500, 2.0, True)),
    (NO_BACKEND_503, None),
    ("not json", None),
    ('["a list"]', None),
    ('{"ServiceName":"kiln-web-r1@file"}', None),  # no time
])
def test_parse_line(line: str, expected: Sample | None) -> None:
    got = parse_line(line, release_of)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.release_id, got.status, got.error) == (
            expected.release_id, expected.status, expected.error)
        assert got.time == pytest.approx(expected.time, abs=1e-6)
        assert got.duration == pytest.approx(expected.duration)


def test_parse_time_offsets() -> None:
    assert parse_time("2026-11-26T07:02:13+02:00") == T0
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")


def test_incremental_partial_truncate_rotate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    src = AccessLogSource(log, release_of)
    assert src.samples("web", 0) == []  # no file yet
    log.write_text(LEAF_200 + "\n" + LEAF_502[:40])  # second line still being written
    assert [s.release_id for s in src.poll()] == ["web-r1"]
    with log.open("a") as f:
        f.write(LEAF_502[40:] + "\n" + "garbage\n")
    assert [s.release_id for s in src.poll()] == ["web-r2"]
    assert src.skipped == 1
    assert src.poll() == []
    assert [s.release_id for s in src.samples("web", 0)] == ["web-r1", "web-r2"]
    first = src.samples("web", 0)[0].time
    assert [s.release_id for s in src.samples("web", first)] == ["web-r2"]  # strictly after
    assert src.samples("api", 0) == []
    log.write_text(WEIGHTED_500 + "\n")  # truncated and rewritten (shorter than the offset)
    assert [s.release_id for s in src.poll()] == ["web-r7"]
    rotated = tmp_path / "access.log.1"
    os.replace(log, rotated)
    log.write_text(LEAF_200 + "\n" + LEAF_200 + "\n" + LEAF_200 + "\n")  # new inode
    assert len(src.poll()) == 3


def test_fake_metric_source() -> None:
    fake = FakeMetricSource([Sample("web-r1", 1.0, 200, 0.1, False)])
    fake.feed([Sample("web-r2", 2.0, 500, 0.1, True), Sample("web-r2", 2.5, 200, 0.2, False),
               Sample("webapp-r1", 3.0, 200, 0.1, False)])
    assert [s.release_id for s in fake.samples("web", 0.0)] == ["web-r1", "web-r2", "web-r2"]
    assert [s.release_id for s in fake.samples("web", 1.0)] == ["web-r2", "web-r2"]

    def shape(windows: list[Window]) -> list[tuple[str, float, int, int, int]]:
        return [(w.release_id, w.start, w.requests, w.errors, sum(w.latency.values()))
                for w in windows]

    # By time: per release and second, [since, until], only the releases asked for.
    assert shape(fake.windows({"web-r1", "web-r2"}, 0.0, 9.0)) == [
        ("web-r1", 1.0, 1, 0, 1), ("web-r2", 2.0, 2, 1, 1)]
    assert shape(fake.windows({"web-r2"}, 2.5, 9.0)) == [("web-r2", 2.0, 1, 0, 1)]
    assert fake.calls == [({"web-r1", "web-r2"}, 0.0, 9.0), ({"web-r2"}, 2.5, 9.0)]
    # Replayed: the service's records after the cursor, each once, whatever their time.
    windows, cursor = fake.read("web", None)
    assert shape(windows) == [("web-r1", 1.0, 1, 0, 1), ("web-r2", 2.0, 2, 1, 1)]
    fake.feed([Sample("web-r1", 0.5, 200, 0.1, False)])
    windows, cursor = fake.read("web", cursor)
    assert shape(windows) == [("web-r1", 0.0, 1, 0, 1)]
    assert fake.read("web", cursor)[0] == []
    assert shape(fake.read("web", None, since=2.2)[0]) == [("web-r2", 2.0, 1, 0, 1)]


def test_access_log_windows_are_its_samples_aggregated(tmp_path: Path) -> None:
    """`read` (the judge's) and `windows` give the counts and histogram of the lines'
    samples, per release and second."""
    log = tmp_path / "access.log"
    log.write_text("".join(_line(rel, f"2026-11-26T05:00:{sec:02d}Z", d, status)
                           for rel, sec, d, status in [
                               ("web-r1", 1, 0.010, 200), ("web-r1", 1, 0.020, 502),
                               ("web-r2", 1, 0.011, 200), ("web-r1", 2, 0.300, 200),
                               ("api-r1", 2, 0.010, 200)]))
    src = AccessLogSource(log, release_of)
    samples, _ = src.read_samples("web", None)
    windows, _ = src.read("web", None)
    assert windows == aggregate(samples)
    t1 = parse_time("2026-11-26T05:00:01Z")
    assert [(w.release_id, w.start - t1, w.requests, w.errors) for w in windows] == [
        ("web-r1", 0.0, 2, 1), ("web-r2", 0.0, 1, 0), ("web-r1", 1.0, 1, 0)]
    assert windows[0].latency == {int(bin_index([0.010])[0]): 1}
    assert src.windows({"web-r1"}, t1 + 1.0, t1 + 9.0) == [windows[2]]


# --- against a real Traefik -------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 500 if self.path.startswith("/fail") else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def _get(url: str) -> int:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.mark.e2e
def test_real_traefik_access_log(tmp_path: Path, backend: int) -> None:
    traefik = Path(".venv/bin/traefik").resolve()
    if not traefik.exists():
        pytest.skip("traefik binary not installed")
    port, dead = _free_port(), _free_port()
    dyn = tmp_path / "dyn"
    dyn.mkdir()
    log = tmp_path / "access.log"
    # JSON is YAML; Traefik picks the parser by extension and knows no .json.
    (tmp_path / "static.yml").write_text(json.dumps({
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {"web": {"address": f"127.0.0.1:{port}"}},
        "providers": {"file": {"directory": str(dyn), "watch": True}},
        "accessLog": {"filePath": str(log), "format": "json"},
        "log": {"level": "ERROR"},
    }))
    (dyn / "kiln.yml").write_text(json.dumps({"http": {
        "routers": {"kiln-web": {"rule": "PathPrefix(`/`)", "service": "kiln-web",
                                 "entryPoints": ["web"]}},
        "services": {
            "kiln-web": {"weighted": {"services": [{"name": "kiln-web-r1", "weight": 1},
                                                   {"name": "kiln-web-r2", "weight": 1}]}},
            "kiln-web-r1": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{backend}"}]}},
            "kiln-web-r2": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{dead}"}]}},
        }}}))
    proc = subprocess.Popen([str(traefik), f"--configFile={tmp_path / 'static.yml'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:  # wait until the router serves the backend
            try:
                if _get(f"http://127.0.0.1:{port}/") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "traefik did not come up"
            time.sleep(0.05)
        src = AccessLogSource(log, lambda addr: None)
        start = time.time() - 1
        codes = [_get(f"http://127.0.0.1:{port}/fail") for _ in range(40)]
        deadline = time.monotonic() + 10
        while len(src.samples("web", start)) < 40:
            assert time.monotonic() < deadline, "access log lines did not arrive"
            time.sleep(0.05)
        got = [s for s in src.samples("web", start) if s.time > start][-40:]
        by_rel = {r: [s.status for s in got if s.release_id == r] for r in ("web-r1", "web-r2")}
        assert set(by_rel["web-r1"]) == {500} and set(by_rel["web-r2"]) == {502}
        assert len(by_rel["web-r1"]) == codes.count(500)
        assert all(s.error and 0 <= s.duration < 2 for s in got)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _line(release: str, start: str, duration_s: float, status: int = 200) -> str:
    return json.dumps({"ServiceName": f"kiln-{release}@file", "DownstreamStatus": status,
                       "Duration": int(duration_s * 1e9), "StartUTC": start}) + "\n"


def test_cursor_reads_every_line_once_in_written_order(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(_line("web-r1", "2026-11-26T05:00:00Z", 0.01))  # before the rollout
    src = AccessLogSource(log, release_of)
    start = src.position()
    with log.open("a") as f:
        f.write(_line("web-r2", "2026-11-26T05:00:10Z", 0.01))
        f.write(_line("other-r1", "2026-11-26T05:00:10Z", 0.01))
        f.write(_line("web-r2", "2026-11-26T05:00:11Z", 0.01)[:20])  # half written
    got, cur = src.read_samples("web", start)
    assert [s.time for s in got] == [parse_time("2026-11-26T05:00:10Z") + 0.01]
    with log.open("a") as f:
        f.write(_line("web-r2", "2026-11-26T05:00:11Z", 0.01)[20:])
        # A slow request that began (and ended) before the line above is written after it.
        f.write(_line("web-r2", "2026-11-26T05:00:08Z", 1.5))
    got, cur = src.read_samples("web", cur)
    assert [s.duration for s in got] == [0.01, 1.5]
    assert src.read_samples("web", cur)[0] == []
    # The same cursor replays the same lines (a restarted judge).
    assert len(src.read_samples("web", start)[0]) == 3


def test_cursor_of_another_file_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(_line("web-r1", "2026-11-26T05:00:00Z", 0.01) * 3)
    src = AccessLogSource(log, release_of)
    cur = src.position()
    log.unlink()
    log.write_text(_line("web-r1", "2026-11-26T05:00:01Z", 0.01))
    got, _ = src.read_samples("web", cur)
    assert len(got) == 1
    assert src.read_samples("web", None)[0] == got
