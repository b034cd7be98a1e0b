"""The live judge's bookkeeping: every request since the rollout began (also after a restart),
late samples, the cross-check with the router's counters (restarts, removed servers), the
series kept for the report."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from kiln.analysis.live import CounterTrack, LiveJudge
from kiln.platforms.base import RequestCounts, Sample, Window
from kiln.platforms.fake.metrics import FakeMetricSource
from kiln.platforms.local.accesslog import AccessLogSource
from kiln.platforms.local.traefik_config import prometheus_counts
from kiln.rollout.decide import Status, start
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


def reqs(release: str, n: int, t0: float, err: bool = False) -> list[Sample]:
    return [Sample(release, t0 + i * 0.01, 500 if err else 200, 0.01, err) for i in range(n)]


class Counter:
    """A router counter the test moves by hand; `restart()` is a new router process."""

    def __init__(self, **counts: int) -> None:
        self.counts = {k.replace("_", "-"): v for k, v in counts.items()}
        self.epoch = 1

    def __call__(self) -> RequestCounts:
        return RequestCounts(str(self.epoch), dict(self.counts), "test")

    def add(self, release: str, n: int) -> None:
        self.counts[release] = self.counts.get(release, 0) + n

    def restart(self) -> None:
        self.epoch += 1
        self.counts = {}


def rollout(judge: LiveJudge) -> Status:
    status = start("canary", "web-r2", "web-r1", 1, time.time(), judge.start_info())
    status.phase = "step"
    return status


def test_crosscheck_agrees_and_reports_a_dropped_line() -> None:
    source = FakeMetricSource(reqs("web-r1", 50, time.time() - 100))  # before the rollout
    counter = Counter(web_r1=50)
    judge = LiveJudge(source, "web", Analysis(), counter=counter)
    status = rollout(judge)
    t0 = time.time()
    source.feed(reqs("web-r1", 20, t0) + reqs("web-r2", 20, t0))
    counter.add("web-r1", 20)
    counter.add("web-r2", 20)
    judge(status, t0 + 1)
    check = judge.crosscheck(catch_up=0.2)
    assert check is not None and check["agree"], check
    assert check["releases"]["web-r2"] == {"router": 20, "access_log": 20, "lost": 0}
    assert check["releases"]["web-r1"]["access_log"] == 20  # not the 50 before the rollout
    # One request the router counted never reached the log: reported, not hidden.
    counter.add("web-r2", 1)
    check = judge.crosscheck(catch_up=0.2)
    assert check is not None and not check["agree"]
    assert check["releases"]["web-r2"]["lost"] == 1


def test_a_line_written_late_is_counted_when_it_arrives() -> None:
    source = FakeMetricSource()
    counter = Counter()
    judge = LiveJudge(source, "web", Analysis(), counter=counter)
    status = rollout(judge)
    t0 = time.time()
    source.feed(reqs("web-r2", 10, t0 + 5))
    judge(status, t0 + 6)
    # A slow request that ended before the ones already read shows up now.
    source.feed([Sample("web-r2", t0 + 1, 200, 1.5, False)])
    counter.add("web-r2", 11)
    judge(status, t0 + 7)
    assert judge.seen["web-r2"] == 11 and judge.canary_requests == 11
    check = judge.crosscheck(catch_up=0.2)
    assert check is not None and check["agree"], check


class TimeOnly:
    """A source without a cursor (asked by time only), like a metrics API."""

    name = "time-only"

    def __init__(self, inner: FakeMetricSource) -> None:
        self.inner = inner

    def windows(self, releases: Collection[str], since: float, until: float) -> list[Window]:
        return self.inner.windows(releases, since, until)


def test_a_source_without_cursor_counts_late_samples_once() -> None:
    inner = FakeMetricSource()
    judge = LiveJudge(TimeOnly(inner), "web", Analysis())
    status = rollout(judge)
    t0 = time.time()
    inner.feed(reqs("web-r2", 10, t0 + 5))
    judge(status, t0 + 6)
    judge(status, t0 + 6.5)  # asked again: nothing counted twice
    inner.feed([Sample("web-r2", t0 + 1, 200, 1.5, False)])
    judge(status, t0 + 7)
    assert judge.seen["web-r2"] == 11


def test_a_restarted_judge_replays_the_rollout_from_its_start() -> None:
    source = FakeMetricSource(reqs("web-r1", 30, time.time() - 50))
    counter = Counter(web_r1=30)
    first = LiveJudge(source, "web", Analysis(min_requests=10), counter=counter)
    status = rollout(first)
    t0 = time.time()
    source.feed(reqs("web-r1", 200, t0) + reqs("web-r2", 40, t0))
    counter.add("web-r1", 200)
    counter.add("web-r2", 40)
    first(status, t0 + 1)
    # kiln is killed here; a new process judges the same rollout from its persisted status.
    source.feed(reqs("web-r2", 5, t0 + 2))
    counter.add("web-r2", 5)
    again = LiveJudge(source, "web", Analysis(min_requests=10), counter=counter)
    v = again(status, t0 + 3)
    assert v is not None
    assert v.figures["canary_requests"] == 45 and v.figures["baseline_requests"] == 200
    check = again.crosscheck(catch_up=0.2)
    assert check is not None and check["agree"], check


def rc(epoch: str, **counts: int) -> RequestCounts:
    return RequestCounts(epoch, {k.replace("_", "-"): v for k, v in counts.items()}, "test")


@pytest.mark.parametrize(("start", "readings", "total", "resets"), [
    # plain increase over the rollout
    (rc("a", web_r1=100), [rc("a", web_r1=130), rc("a", web_r1=150)], {"web-r1": 50}, 0),
    # router restarted (new process, counting from 0): old increase + new count
    (rc("a", web_r1=100), [rc("a", web_r1=130), rc("b", web_r1=4), rc("b", web_r1=10)],
     {"web-r1": 40}, 1),
    # restarted and already past the old value before anyone looked: still a restart
    (rc("a", web_r1=100), [rc("b", web_r1=150)], {"web-r1": 150}, 1),
    # restarted twice
    (rc("a", web_r1=10), [rc("a", web_r1=20), rc("b", web_r1=5), rc("c", web_r1=7)],
     {"web-r1": 22}, 2),
    # a release whose servers were removed drops out of the reading: it keeps its count
    (rc("a", web_r1=100, web_r2=0), [rc("a", web_r1=160, web_r2=40), rc("a", web_r2=90)],
     {"web-r1": 60, "web-r2": 90}, 0),
    # a release that appears during the rollout counts from 0
    (rc("a", web_r1=100), [rc("a", web_r1=110, web_r2=7)], {"web-r1": 10, "web-r2": 7}, 0),
    # a dip within one process (a request being redispatched elsewhere) is not a restart
    (rc("a", web_r2=50), [rc("a", web_r2=53), rc("a", web_r2=52), rc("a", web_r2=60)],
     {"web-r2": 10}, 0),
    # a removed release across a restart: what the old process counted stays
    (rc("a", web_r1=100), [rc("a", web_r1=140), rc("b", web_r2=3)], {"web-r1": 40, "web-r2": 3},
     1),
    # no start reading (router was down): everything counted since
    (None, [rc("a", web_r1=5), rc("a", web_r1=9)], {"web-r1": 9}, 0),
    # a status from before epochs were recorded: the first process seen is the start's
    (rc("", web_r1=100), [rc("a", web_r1=120)], {"web-r1": 20}, 0),
    # never negative
    (rc("a", web_r1=100), [rc("a", web_r1=90)], {"web-r1": 0}, 0),
])
def test_counter_track(start: RequestCounts | None, readings: list[RequestCounts],
                       total: dict[str, int], resets: int) -> None:
    track = CounterTrack(start)
    for reading in readings:
        track.observe(reading)
    assert track.total == total and track.resets == resets


def test_crosscheck_after_a_router_restart() -> None:
    source = FakeMetricSource()
    counter = Counter(web_r2=0)
    judge = LiveJudge(source, "web", Analysis(), counter=counter)
    status = rollout(judge)
    t0 = time.time()
    source.feed(reqs("web-r2", 30, t0))
    counter.add("web-r2", 30)
    judge(status, t0 + 0.5)
    judge.crosscheck(catch_up=0.0)  # observes 30
    counter.restart()                # then 5 more requests
    counter.add("web-r2", 5)
    source.feed(reqs("web-r2", 5, t0 + 1))
    judge(status, t0 + 2)
    check = judge.crosscheck(catch_up=0.2)
    assert check is not None and check["agree"], check
    assert check["releases"]["web-r2"]["router"] == 35 and check["resets"] == 1


def test_no_counter_no_crosscheck() -> None:
    assert LiveJudge(FakeMetricSource(), "web", Analysis()).crosscheck() is None


def test_a_dropped_access_log_line_is_reported(tmp_path: Path) -> None:
    """The real reader on a real file: 40 requests counted by the router, 39 lines logged."""
    log = tmp_path / "access.log"
    log.write_text("")
    source = AccessLogSource(log, lambda addr: None)
    counter = Counter()
    judge = LiveJudge(source, "web", Analysis(), counter=counter)
    status = rollout(judge)
    t0 = time.time()
    lines = [json.dumps({"ServiceName": "kiln-web-r2@file", "DownstreamStatus": 200,
                         "Duration": 1_500_000_000 if i % 10 == 0 else 2_000_000,
                         "StartUTC": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + i))
                         + "Z"}) + "\n" for i in range(40)]
    with log.open("a") as f:
        f.writelines(lines[:25] + lines[26:])  # line 25 never reaches the log
    counter.add("web-r2", 40)
    judge(status, t0 + 41)
    check = judge.crosscheck(catch_up=0.3)
    assert check is not None and not check["agree"]
    assert check["releases"]["web-r2"] == {"router": 40, "access_log": 39, "lost": 1}


@pytest.mark.parametrize("canary_error", [0.0, 0.08])
def test_windows_judge_exactly_as_the_samples_in_them(canary_error: float) -> None:
    """One judge over aggregates: a replayed source (the access log's way) and one asked by
    time (CloudWatch's way) give the very verdicts and figures the per-request judge gives on
    the same requests, look after look."""
    import random

    from kiln.analysis.judge import Judge

    rng = random.Random(11)
    replayed, by_time = FakeMetricSource(), FakeMetricSource()
    judges = [LiveJudge(replayed, "web", Analysis(min_requests=50)),
              LiveJudge(TimeOnly(by_time), "web", Analysis(min_requests=50))]
    statuses = [rollout(j) for j in judges]
    t0 = time.time()  # after the rollouts began
    looks = 12
    batches = [[Sample(rel, t0 + k + rng.random(), 500 if err else 200,
                       rng.lognormvariate(-3.0, 0.5), err)
                for rel, rate, n in (("web-r2", canary_error, 30), ("web-r1", 0.01, 270))
                for err in (rng.random() < rate for _ in range(n))]
               for k in range(looks)]
    reference = Judge(Analysis(min_requests=50), "web-r2", "web-r1")
    for k, batch in enumerate(batches):
        replayed.feed(batch)
        by_time.feed(batch)
        reference.add(batch)
        want = reference.verdict(t0 + k + 1)
        for judge, status in zip(judges, statuses, strict=True):
            got = judge(status, t0 + k + 1)
            assert got is not None
            # The live judge adds where the data came from and the step's time to evidence.
            figures = {f: v for f, v in got.figures.items()
                       if f != "source" and not f.startswith("evidence_")}
            assert (got.outcome, got.reason, figures) == (want.outcome, want.reason,
                                                          want.figures)
    assert want.outcome == ("fail" if canary_error else "pass")
