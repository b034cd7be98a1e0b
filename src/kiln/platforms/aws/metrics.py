"""The judge on AWS: CloudWatch's per-target-group minutes instead of per-request samples.

Each release's target group reports, per period, RequestCount (Sum), HTTPCode_Target_5XX_Count
(Sum) and TargetResponseTime (Average). They become the same `Summary` the judge reads:
requests and errors are the sums (exactly what per-request samples would count), and each period
with successful requests adds ONE latency observation, its average. The same `judge_summaries`
decides. What that loses and why the false-alarm guarantee still holds: docs/judge-aws.md.
Only Sum, Average and SampleCount are used: moto (and some accounts' dashboards) lack percentiles.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.analysis.judge import judge_summaries
from kiln.analysis.live import Series
from kiln.analysis.summary import Summary, bin_index
from kiln.analysis.verdict import Verdict
from kiln.platforms.aws.client import Aws, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.rollout.decide import Status
from kiln.spec.models import Analysis

NAMESPACE = "AWS/ApplicationELB"
METRICS = {"RequestCount": "Sum", "HTTPCode_Target_5XX_Count": "Sum",
           "TargetResponseTime": "Average"}


@dataclass(frozen=True)
class Period:
    """One CloudWatch period of one release's target group."""

    start: float
    requests: int
    errors: int
    latency: float | None  # mean seconds over the period's requests


def dimensions(target_group_arn: str, load_balancer_arn: str) -> list[dict[str, str]]:
    """CloudWatch's names: 'targetgroup/<name>/<id>' and 'app/<name>/<id>'."""
    return [{"Name": "TargetGroup", "Value": target_group_arn.split(":")[-1]},
            {"Name": "LoadBalancer",
             "Value": load_balancer_arn.split(":loadbalancer/")[-1]}]


class CloudWatchSource:
    def __init__(self, aws: Aws, fleet: Fleet, period: int = 60) -> None:
        self.aws, self.fleet, self.period = aws, fleet, period

    def periods(self, release_id: str, since: float, until: float) -> list[Period]:
        tg = self.fleet.target_group(release_id)
        lb = self.fleet.find_alb()
        if tg is None or lb is None:
            return []
        dims = dimensions(tg, lb["LoadBalancerArn"])
        start = dt.datetime.fromtimestamp(since, dt.UTC)
        end = dt.datetime.fromtimestamp(max(until, since + 1), dt.UTC)
        series: dict[str, dict[float, float]] = {}
        for name, stat in METRICS.items():
            with translated(f"reading {name} of {release_id} from CloudWatch"):
                points: list[dict[str, Any]] = self.aws.cloudwatch.get_metric_statistics(
                    Namespace=NAMESPACE, MetricName=name, Dimensions=dims, StartTime=start,
                    EndTime=end, Period=self.period, Statistics=[stat])["Datapoints"]
            series[name] = {p["Timestamp"].timestamp(): float(p[stat]) for p in points}
        out = []
        for ts in sorted(series["RequestCount"]):
            n = round(series["RequestCount"][ts])
            errors = min(n, round(series["HTTPCode_Target_5XX_Count"].get(ts, 0.0)))
            out.append(Period(ts, n, errors, series["TargetResponseTime"].get(ts)))
        return out

    def summary(self, release_id: str, since: float, until: float) -> tuple[Summary, int]:
        """The release's Summary since `since`, and how many periods it rests on."""
        periods = self.periods(release_id, since, until)
        s = Summary()
        s.requests = sum(p.requests for p in periods)
        s.errors = sum(p.errors for p in periods)
        means = [p.latency for p in periods if p.latency is not None and p.requests > p.errors]
        if means:
            np.add.at(s.hist, bin_index(means), 1.0)  # one observation per period, not per request
        return s, len(periods)


class CloudWatchJudge:
    """The reconciler's judge on AWS. Stateless over CloudWatch: after a crash it re-reads the
    minutes since the rollout began, so the evidence is rebuilt, not lost."""

    def __init__(self, source: CloudWatchSource, service: str, analysis: Analysis) -> None:
        self.source, self.service, self.analysis = source, service, analysis
        self.series = Series()
        self._best_p: dict[str, float] = {}
        self._failed: Verdict | None = None
        self._key: tuple[str, str] | None = None
        self.looks = 0

    def start_info(self) -> dict[str, Any]:
        """Where the evidence begins: only a time (CloudWatch keeps the data, no cursor)."""
        return {"time": time.time(), "source": "cloudwatch"}

    def __call__(self, status: Status, now: float) -> Verdict | None:
        self.series.note(now, status)
        if status.old is None or status.phase != "step":
            return None
        key = (status.new, status.old)
        if key != self._key:
            self._key, self._failed, self._best_p, self.looks = key, None, {}, 0
        if self._failed is not None:
            return self._failed
        since = status.started
        canary, n_c = self.source.summary(status.new, since, now + self.source.period)
        baseline, n_b = self.source.summary(status.old, since, now + self.source.period)
        self.looks += 1
        v = judge_summaries(canary, baseline, self.analysis, best_p=self._best_p)
        v.figures.update({"looks": self.looks, "time": now, "source": "cloudwatch",
                          "canary_periods": n_c, "baseline_periods": n_b})
        if v.outcome == "fail":
            self._failed = v
        return v

    def crosscheck(self) -> dict[str, Any] | None:
        return None  # one source of counts on AWS: nothing to cross-check against
