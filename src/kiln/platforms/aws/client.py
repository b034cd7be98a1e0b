"""boto3 clients for one project, and the one place AWS errors become `PlatformError`s.

Credentials come from boto3's standard chain (environment, shared files, instance role); kiln
stores none. `endpoint_url` (the spec's, else AWS_ENDPOINT_URL, which botocore reads itself)
points every client at another endpoint: that is how the tests reach moto's server.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kiln.errors import KilnError, PlatformError
from kiln.spec.aws import AwsSettings

SERVICES = ("ec2", "elbv2", "autoscaling", "cloudwatch", "ssm")


class Aws:
    """Lazily built clients sharing one session; `calls` counts every API call made."""

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings
        self.calls: Counter[str] = Counter()
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self.memo: dict[str, Any] = {}
        """Answers that cannot change while this process runs (the VPC of the subnets, the
        base AMI a filter resolved to), asked once."""

    @property
    def endpoint_url(self) -> str | None:
        return self.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            if self._session is None:
                self._session = boto3.session.Session(region_name=self.settings.region)
            config = Config(retries={"mode": "standard", "max_attempts": 4},
                            connect_timeout=5, read_timeout=30)
            c = self._session.client(service, endpoint_url=self.endpoint_url, config=config)
            c.meta.events.register("before-call", self._count)
            self._clients[service] = c
        return self._clients[service]

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def elbv2(self) -> Any:
        return self.client("elbv2")

    @property
    def autoscaling(self) -> Any:
        return self.client("autoscaling")

    @property
    def cloudwatch(self) -> Any:
        return self.client("cloudwatch")

    @property
    def ssm(self) -> Any:
        return self.client("ssm")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    # not a capability probe: botocore's ClientError carries `response`; botocore stays a lazy
    # import, so no isinstance against its class here
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def describe(exc: BaseException) -> str:
    """One line for an AWS failure: the code and AWS's own message."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ("no AWS credentials found (boto3 looks in AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/credentials, then the instance role)")
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the AWS endpoint: {exc}"
    if isinstance(exc, NoRegionError):
        return "no AWS region (set aws.region in kiln.yaml)"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '').strip() or exc}"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn botocore's exceptions into one `PlatformError` line naming what kiln was doing."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except KilnError:
        raise
    except (BotoCoreError, ClientError) as exc:
        raise PlatformError(f"aws: {what}: {describe(exc)}") from exc


def is_missing(exc: BaseException) -> bool:
    """An error that means 'already gone': deleting it again is a success (idempotent cleanup)."""
    code = error_code(exc)
    return (code.endswith(".NotFound") or code.endswith("NotFound")
            or code in ("InvalidGroup.NotFound", "InvalidInstanceID.Malformed",
                        "ValidationError", "LoadBalancerNotFound", "TargetGroupNotFound"))
