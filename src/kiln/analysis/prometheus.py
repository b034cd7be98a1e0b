"""The user's metrics read from Prometheus' HTTP API (`GET /api/v1/query`), per release.

Each query of `analysis.metrics` is asked with `$release` replaced by the release's id and
`$window` by a PromQL duration (whole seconds, at least 1s). A `count` metric is asked at every
look for the whole rollout so far (`$window` = time since the rollout began): the judge gets the
running sums the 5xx test needs, asked again, never added twice. A `value` metric is asked for
the time since the previous look: one value per release and look, the distribution it is judged
on. Queries go to loopback or wherever `prometheus.url` points; a failed query is no data for
that look (the judge stays undecided; `progress_deadline` bounds how long), never an exception
in the rollout.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

from kiln.errors import KilnError
from kiln.spec.models import Metric


class QueryError(KilnError):
    """Prometheus did not answer a query with a number."""


class MetricQuery(Protocol):
    """Evaluates one PromQL expression at a time to one number (None: no series)."""

    def query(self, expr: str, at: float) -> float | None: ...


def promql(template: str, release: str, window: float) -> str:
    """The metric's query for one release over the last `window` seconds."""
    return (template.replace("$release", release)
            .replace("$window", f"{max(1, math.ceil(window))}s"))


class PrometheusQuery:
    """`MetricQuery` over Prometheus' HTTP API: an instant query, the vector's values summed."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.queries = 0

    def query(self, expr: str, at: float) -> float | None:
        self.queries += 1
        body = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/query", data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise QueryError(f"prometheus {self.url}: query {expr!r}: HTTP {e.code}: "
                             f"{e.read()[:200].decode(errors='replace')}") from None
        except (OSError, ValueError) as e:
            raise QueryError(f"prometheus {self.url}: query {expr!r}: {e}") from None
        return parse_answer(answer, expr)


def parse_answer(answer: object, expr: str) -> float | None:
    """The number in an /api/v1/query answer: a scalar, or the sum of a vector's samples
    (None when the vector is empty: no series yet)."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise QueryError(f"prometheus: query {expr!r} failed: "
                         f"{answer.get('error') if isinstance(answer, dict) else answer!r}")
    data = answer.get("data") or {}
    kind, result = data.get("resultType"), data.get("result") or []
    try:
        if kind == "scalar":
            values = [float(result[1])]
        elif kind == "vector":
            values = [float(s["value"][1]) for s in result]
        else:
            raise QueryError(f"prometheus: query {expr!r} answered a {kind}, expected an "
                             "instant vector or a scalar")
    except (TypeError, KeyError, IndexError, ValueError):
        raise QueryError(f"prometheus: query {expr!r}: malformed answer") from None
    values = [v for v in values if math.isfinite(v)]
    return sum(values) if values else None


def ask(source: MetricQuery, metric: Metric, release: str, window: float, at: float
        ) -> tuple[float, float] | float | None:
    """One release's answer: (failures, total) of a count metric, the value of a value
    metric; None without data (or when a query failed)."""
    try:
        if metric.kind == "count":
            assert metric.failures is not None and metric.total is not None
            total = source.query(promql(metric.total, release, window), at)
            if not total:
                return None
            failures = source.query(promql(metric.failures, release, window), at)
            return (failures or 0.0, total)
        assert metric.query is not None
        return source.query(promql(metric.query, release, window), at)
    except QueryError:
        return None
