"""`analysis.metrics` read over Prometheus' HTTP query API by the live judge: a release whose
business counter rises is failed while its 5xx and latency look fine; answers parsed or refused.

The server here is a loopback HTTP server that answers /api/v1/query in Prometheus' documented
format from counters the test moves (no Prometheus binary on this machine: see the report).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kiln.analysis.live import LiveJudge
from kiln.analysis.prometheus import PrometheusQuery, QueryError, parse_answer, promql
from kiln.platforms.base import Sample
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.rollout.decide import start
from kiln.spec.models import Analysis, Metric

METRIC = Metric.model_validate({
    "name": "checkout_failures", "kind": "count", "max_increase": "1%",
    "failures": 'sum(increase(checkout_failures_total{release="$release"}[$window]))',
    "total": 'sum(increase(checkout_total{release="$release"}[$window]))'})


class Counters:
    """checkout_total / checkout_failures_total per release, and every query asked."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def answer(self, expr: str) -> dict[str, Any]:
        with self.lock:
            self.asked.append(expr)
            m = re.fullmatch(r'sum\(increase\((\w+)\{release="([\w-]+)"\}\[(\d+)s\]\)\)', expr)
            if m is None:
                return {"status": "error", "errorType": "bad_data", "error": "parse error"}
            key = (m.group(1), m.group(2))
            if key not in self.values:
                return {"status": "success", "data": {"resultType": "vector", "result": []}}
            return {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {}, "value": [time.time(), str(self.values[key])]}]}}


@pytest.fixture
def prometheus() -> Iterator[tuple[str, Counters]]:
    counters = Counters()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            body = json.dumps(counters.answer(form["query"][0])).encode()
            self.send_response(200 if self.path == "/api/v1/query" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counters
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_promql_substitutes_release_and_window() -> None:
    assert promql('sum(increase(x{release="$release"}[$window]))', "web-r2", 12.2) == (
        'sum(increase(x{release="web-r2"}[13s]))')
    assert promql("y[$window]", "r", 0.0) == "y[1s]"


@pytest.mark.parametrize(("answer", "value"), [
    ({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"a": "1"}, "value": [1.0, "3"]}, {"metric": {}, "value": [1.0, "4.5"]}]}},
     7.5),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
    ({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}}, 2.0),
    ({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, "NaN"]}]}}, None),
])
def test_answers_parsed(answer: dict[str, Any], value: float | None) -> None:
    assert parse_answer(answer, "q") == value


@pytest.mark.parametrize(("answer", "message"), [
    ({"status": "error", "error": "parse error"}, "prometheus: query 'q' failed: 'parse error'"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "answered a matrix"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"v": 1}]}},
     "malformed answer"),
])
def test_bad_answers_refused_in_one_line(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        parse_answer(answer, "q")


def test_an_unreachable_prometheus_is_a_query_error() -> None:
    with pytest.raises(QueryError, match=r"^prometheus http://127.0.0.1:9: query 'up': .*Connection refused"):
        PrometheusQuery("http://127.0.0.1:9/", timeout=0.5).query("up", time.time())


def test_the_live_judge_rolls_back_on_a_business_counter(
        prometheus: tuple[str, Counters]) -> None:
    url, counters = prometheus
    source = FakeMetricSource()
    query = PrometheusQuery(url)
    judge = LiveJudge(source, "web", Analysis(metrics=[METRIC]), queries=query)
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    t0, verdict, looks = time.time(), None, 0
    for sec in range(1, 120):  # bounded: one simulated second per look
        # Router traffic: healthy on both sides (no 5xx, the same latency).
        source.feed([Sample(rel, t0 + sec + i / n, 200, 0.05 + 0.001 * (i % 7), False)
                     for rel, n in (("web-r2", 20), ("web-r1", 180)) for i in range(n)])
        # The business counter: 1% of the baseline's checkouts fail, 5% of the canary's.
        counters.values.update({
            ("checkout_total", "web-r2"): 20.0 * sec,
            ("checkout_failures_total", "web-r2"): float(sec),
            ("checkout_total", "web-r1"): 180.0 * sec,
            ("checkout_failures_total", "web-r1"): round(1.8 * sec)})
        verdict = judge(status, t0 + sec + 1)
        looks += 1
        if verdict is not None and verdict.outcome == "fail":
            break
    assert verdict is not None and verdict.outcome == "fail", verdict
    assert re.match(r"checkout_failures: rate 5\.00% vs (0\.99|1\.00)%, worse than allowed "
                    r"\(\+1\.00 points\); after \d+ canary requests$", verdict.reason), verdict.reason
    assert verdict.figures["canary_errors"] == 0  # 5xx fine: the metric decided
    assert verdict.figures["metric:checkout_failures:outcome"] == "fail"
    # Asked with each release and the rollout's whole window so far; two queries per release.
    assert query.queries == 4 * looks
    # Looks closer together than QUERY_EVERY reuse the last answers (the reconciler looks ~10x
    # a second; Prometheus changes once a scrape).
    judge(status, t0 + looks + 1.5)
    assert query.queries == 4 * looks
    first = counters.asked[0]
    assert re.fullmatch(r'sum\(increase\(checkout_total\{release="web-r2"\}\[\d+s\]\)\)', first)


def test_no_answer_keeps_the_step_undecided(prometheus: tuple[str, Counters]) -> None:
    url, _ = prometheus
    source = FakeMetricSource()
    judge = LiveJudge(source, "web", Analysis(metrics=[METRIC]), queries=PrometheusQuery(url))
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    t0 = time.time()
    source.feed([Sample(rel, t0 + i / 100, 200, 0.05, False)
                 for rel in ("web-r2", "web-r1") for i in range(5000)])
    verdict = judge(status, t0 + 60)
    assert verdict is not None and verdict.outcome == "undecided", verdict
    assert "checkout_failures: no data yet" in verdict.reason
