"""The optional capability of a Compute whose instances kiln cannot reach over the network
(platform aws: a test instance in a private subnet, reached only through SSM): the checks that
talk to the app (http, port) run on the instance itself, and the runner asks the platform."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kiln.platforms.base import Instance
from kiln.spec.models import HttpCheck
from kiln.verify.checks import Outcome


@runtime_checkable
class RemoteChecks(Protocol):
    def check_http(self, instance: Instance, spec: HttpCheck.Spec) -> Outcome:
        """The HTTP check, made from the instance to its own app."""
        ...

    def check_port(self, instance: Instance, port: int, timeout: float) -> Outcome:
        """Whether the port accepts connections, tried on the instance itself."""
        ...
