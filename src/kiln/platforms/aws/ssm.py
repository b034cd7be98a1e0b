"""Shell commands on an instance through SSM Run Command (AWS-RunShellScript).

The one way kiln runs anything on an EC2 instance: bake steps, image checks, `kiln exec`, the
log tail of `kiln logs`. No inbound port and no key pair: the SSM agent on the instance polls
AWS. A result is only what `GetCommandInvocation` says: an empty output is empty (moto answers
every command with exit 0 and no output, and kiln reports exactly that, never a pass it did
not see). Why SSM: docs/decisions/aws-bake-ssm.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

from kiln.errors import PlatformError
from kiln.platforms.aws.client import error_code, translated
from kiln.platforms.base import ExecResult

DOCUMENT = "AWS-RunShellScript"
OUTPUT_LIMIT = 24_000
"""Characters of stdout/stderr GetCommandInvocation returns at most (AWS truncates there)."""
FINAL = ("Success", "Failed", "Cancelled", "TimedOut", "Undeliverable", "Terminated",
         "InvalidPlatform", "AccessDenied", "DeliveryTimedOut", "ExecutionTimedOut")


class HasSsm(Protocol):
    """What the functions here need: an SSM client (kiln's `Aws`, or testinfra's backend)."""

    @property
    def ssm(self) -> Any: ...


class SsmTimeout(PlatformError):
    """The command did not finish within its timeout (the caller says "timed out")."""


def send(aws: HasSsm, instance_id: str, lines: Sequence[str], timeout: float, comment: str,
         *, poll: float = 1.0) -> str:
    """Send the command; retries while the agent has not registered yet. Returns its id."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        with translated(f"{comment} on {instance_id} (ssm send_command)"):
            try:
                sent = aws.ssm.send_command(
                    InstanceIds=[instance_id], DocumentName=DOCUMENT,
                    Parameters={"commands": list(lines),
                                "executionTimeout": [str(max(1, int(timeout + 0.999)))]},
                    TimeoutSeconds=max(30, int(timeout)), Comment=comment[:100])
                return str(sent["Command"]["CommandId"])
            except ClientError as exc:
                # The agent has not registered yet: AWS says InvalidInstanceId until it has.
                if error_code(exc) != "InvalidInstanceId" or time.monotonic() > deadline:
                    raise
        time.sleep(poll)


def wait(aws: HasSsm, instance_id: str, command_id: str, timeout: float, comment: str,
         *, poll: float = 1.0) -> ExecResult:
    """Poll the invocation until it is final; its exit code and output as AWS reports them."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout + 5.0  # the agent reports a little after the command
    delay = min(poll, 0.2)
    while True:
        with translated(f"{comment} on {instance_id} (ssm get_command_invocation)"):
            try:
                inv = aws.ssm.get_command_invocation(CommandId=command_id,
                                                     InstanceId=instance_id)
            except ClientError as exc:
                if error_code(exc) != "InvocationDoesNotExist":
                    raise
                inv = {"Status": "Pending"}
        status = str(inv.get("Status", "Pending"))
        if status in FINAL:
            out = str(inv.get("StandardOutputContent") or "")
            err = str(inv.get("StandardErrorContent") or "")
            code = int(inv.get("ResponseCode", -1))
            if status in ("TimedOut", "ExecutionTimedOut", "DeliveryTimedOut"):
                raise SsmTimeout(f"aws: {comment} on {instance_id} timed out after "
                                 f"{timeout:g}s (ssm: {status})")
            if status != "Success" and status != "Failed":
                raise PlatformError(f"aws: {comment} on {instance_id}: ssm says {status}"
                                    + (f": {err.strip()[-300:]}" if err.strip() else ""))
            if status == "Failed" and code == 0:
                code = 1
            return ExecResult(code, out, err)
        if time.monotonic() > deadline:
            _cancel(aws, command_id)
            raise SsmTimeout(f"aws: {comment} on {instance_id} timed out after {timeout:g}s")
        time.sleep(delay)
        delay = min(poll, delay * 2)


def _cancel(aws: HasSsm, command_id: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    # Best effort: the command's own executionTimeout stops it anyway.
    with contextlib.suppress(BotoCoreError, ClientError):
        aws.ssm.cancel_command(CommandId=command_id)


def run(aws: HasSsm, instance_id: str, lines: Sequence[str], timeout: float, comment: str,
        *, poll: float = 1.0) -> ExecResult:
    """Send and wait: (exit code, stdout, stderr) of the shell lines on the instance."""
    command_id = send(aws, instance_id, lines, timeout, comment, poll=poll)
    return wait(aws, instance_id, command_id, timeout, comment, poll=poll)
