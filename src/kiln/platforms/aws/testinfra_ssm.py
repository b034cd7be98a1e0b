"""A pytest-testinfra backend that runs commands over SSM Run Command: `kiln-ssm://i-0abc`.

testinfra has no SSM backend; like its podman backend this one only implements `run`. With
`?container=web` a command runs in service web's environment on the instance (its env, its
secrets, its workdir: the same exec script `kiln exec` uses); without it, as a plain root shell.
Region and credentials come from boto3's chain (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL...).

`kiln test` itself reaches test instances through its `kiln://` exec bridge, whose commands go
to `AwsCompute.exec`, i.e. the same SSM call (docs/decisions/aws-image-tests.md says why); this
backend is for running a testinfra suite against an instance outside kiln:
`pytest -p kiln.verify.testinfra_plugin --hosts='kiln-ssm://i-0abc?container=web' tests/image`.
"""

from __future__ import annotations

from typing import Any

from testinfra.backend import base

from kiln.platforms.aws import ssm
from kiln.platforms.aws.boot import exec_lines


class SsmBackend(base.BaseBackend):  # type: ignore[misc]
    NAME = "kiln-ssm"

    def __init__(self, hostname: str, *args: Any, container: str | None = None,
                 timeout: str | float | None = None, **kwargs: Any) -> None:
        super().__init__(hostname, *args, **kwargs)
        self.instance_id = hostname
        self.service = container
        self.timeout = float(timeout or 60.0)
        self._client: Any = None

    @property
    def ssm(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("ssm")
        return self._client

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        lines = exec_lines(self.service, cmd) if self.service else [cmd]
        res = ssm.run(self, self.instance_id, lines, self.timeout, "testinfra command",
                      poll=0.5)
        return self.result(res.exit_code, self.encode(cmd), res.stdout, res.stderr)
