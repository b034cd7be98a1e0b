"""The live judge's bookkeeping: Prometheus cross-check and the series kept for the report."""

from __future__ import annotations

import time

from kiln.analysis.live import LiveJudge, prometheus_counts
from kiln.platforms.base import Sample
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.rollout.decide import start
from kiln.spec.models import Analysis

METRICS = """\
# HELP traefik_service_requests_total How many HTTP requests processed on a service.
traefik_service_requests_total{code="200",method="GET",protocol="http",service="kiln-web-r1@file"} 120
traefik_service_requests_total{code="500",method="GET",protocol="http",service="kiln-web-r1@file"} 3
traefik_service_requests_total{code="200",method="GET",protocol="http",service="kiln-web-r2@file"} 7
traefik_service_requests_total{code="200",method="GET",protocol="http",service="other@file"} 99
traefik_entrypoint_requests_total{code="200",entrypoint="kiln-web"} 130
"""


def test_prometheus_counts_per_release() -> None:
    assert prometheus_counts(METRICS) == {"web-r1": 123, "web-r2": 7}
    assert prometheus_counts("") == {}


def test_crosscheck_agrees_and_disagrees() -> None:
    source = FakeMetricSource()
    counts = iter([{"web-r1": 10, "web-r2": 0}, {"web-r1": 30, "web-r2": 20}])
    judge = LiveJudge(source, "web", Analysis(), counter=lambda: next(counts))
    status = start("canary", "web-r2", "web-r1", 1, 0.0)
    status.phase = "step"
    t0 = time.time()
    source.feed([Sample("web-r1", t0 + 1 + i, 200, 0.01, False) for i in range(20)]
                + [Sample("web-r2", t0 + 1 + i, 200, 0.01, False) for i in range(20)])
    judge(status, t0 + 30)
    check = judge.crosscheck()
    assert check is not None and check["agree"], check
    assert check["releases"]["web-r2"] == {"prometheus": 20, "access_log": 20}

    counts2 = iter([{"web-r1": 0}, {"web-r1": 500}])
    judge2 = LiveJudge(FakeMetricSource(), "web", Analysis(), counter=lambda: next(counts2))
    judge2(status, 1.0)
    check2 = judge2.crosscheck()
    assert check2 is not None and not check2["agree"]


def test_no_counter_no_crosscheck() -> None:
    assert LiveJudge(FakeMetricSource(), "web", Analysis()).crosscheck() is None
