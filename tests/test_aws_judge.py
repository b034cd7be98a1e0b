"""The judge on AWS: CloudWatch per-target-group metrics, fed into moto the way a good and a bad
release would produce them, roll a bad canary back and promote a good one."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from aws_helpers import listener_weights, open_project, write_project
from kiln.platforms.aws.fleet import Names
from kiln.platforms.aws.inventory import tagged
from kiln.platforms.aws.metrics import NAMESPACE, dimensions
from kiln.testing.moto import REGION, MotoServer


@contextmanager
def alb_metrics(moto: MotoServer, error_rate: dict[str, float]) -> Iterator[None]:
    """Every 0.2 s, for each release whose target group exists: 50 requests, its share of 5xx,
    40-60 ms mean latency, as the ALB would report them to CloudWatch (at a 1 s period, the
    spec's metrics_period, so the test takes seconds, not minutes). Stopped on exit."""
    names = Names("shop")
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=moto.url)
    cw = boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto.url)
    stop = threading.Event()
    rng = random.Random(7)

    def feed() -> None:
        while not stop.is_set():
            try:
                lbs = elbv2.describe_load_balancers()["LoadBalancers"]
                for release, rate in error_rate.items():
                    try:
                        tg = elbv2.describe_target_groups(
                            Names=[names.target_group(release)])["TargetGroups"][0]
                    except ClientError:
                        continue
                    dims = dimensions(tg["TargetGroupArn"], lbs[0]["LoadBalancerArn"])
                    now = datetime.now(UTC)
                    cw.put_metric_data(Namespace=NAMESPACE, MetricData=[
                        {"MetricName": "RequestCount", "Dimensions": dims, "Timestamp": now,
                         "Value": 50.0, "Unit": "Count"},
                        {"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims,
                         "Timestamp": now, "Value": round(50 * rate), "Unit": "Count"},
                        {"MetricName": "TargetResponseTime", "Dimensions": dims,
                         "Timestamp": now, "Value": rng.uniform(0.04, 0.06),
                         "Unit": "Seconds"}])
            except (ClientError, IndexError):
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize(("canary_errors", "outcome"), [(0.2, "rolled_back"), (0.0, "promoted")])
def test_cloudwatch_judge(moto: MotoServer, tmp_path: Path, canary_errors: float,
                          outcome: str) -> None:
    path = write_project(tmp_path, moto, pause="1s", analysis=True)
    project = open_project(path)
    try:
        assert project.deploy().services[0].outcome == "promoted"
        write_project(tmp_path, moto, pause="1s", analysis=True, version="2")
        second = open_project(path)
        started = time.monotonic()
        with alb_metrics(moto, {"web-r1": 0.0, "web-r2": canary_errors}):
            result = second.deploy().services[0]
        assert result.outcome == outcome, result
        assert time.monotonic() - started < 120
        rollout = second.history("web")[-1]
        assert rollout["outcome"] == outcome
        row = second.store.one("SELECT status_json FROM rollouts WHERE id = ?",
                               (rollout["rollout_id"],))
        assert row is not None
        decisions = json.loads(row["status_json"])["decisions"]
        # Every step was decided on CloudWatch's numbers: enough requests on both sides.
        assert decisions and all(d["figures"]["source"] == "cloudwatch" for d in decisions)
        assert all(d["outcome"] == ("fail" if outcome == "rolled_back" else "pass")
                   for d in decisions)
        assert decisions[-1]["figures"]["canary_requests"] > 0
        if outcome == "rolled_back":
            assert "5xx" in (result.reason or "")
            assert listener_weights(moto) == {"web-r1": 100}
            assert tagged(project.platform.aws, "shop")["auto-scaling-group"] == [
                "kiln-shop-web-r1"]
        else:
            assert listener_weights(moto) == {"web-r2": 100}
        second.close()
    finally:
        project.destroy()
        project.close()
