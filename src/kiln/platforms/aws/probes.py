"""Image checks and health probes made on an instance through SSM (kiln cannot reach a private
subnet; the instance can reach itself). Each command prints a marker line kiln parses; output
without the marker (moto's SSM prints nothing) is a failure that says so, never a pass.
"""

from __future__ import annotations

import base64
import os
import shlex

from kiln.errors import KilnError
from kiln.platforms.aws import ssm
from kiln.platforms.aws.boot import ROOT
from kiln.platforms.aws.client import Aws
from kiln.platforms.base import ExecResult
from kiln.spec.models import HttpCheck
from kiln.verify import checks as ck

BODY_LIMIT = 16_000
"""Bytes of a body sent back (SSM returns at most 24,000 characters of output)."""
READ_CHUNK = 12_000
"""Bytes of a file per command, base64 (16,000 characters) within SSM's output limit."""
READ_LIMIT = 1 << 20
NO_OUTPUT = "ssm returned no output"


def _marker(res: ExecResult, marker: str) -> str | None:
    """The rest of the first line starting with `marker`, or None when there is none."""
    for line in res.stdout.splitlines():
        if line.startswith(marker):
            return line[len(marker):]
    return None


def _missing(res: ExecResult, what: str) -> str:
    said = ck.one_line(res.stderr or res.stdout, 120)
    return (f"{NO_OUTPUT} (expected {what}; exit code {res.exit_code}"
            + (f": {said})" if said else ")"))


def http_command(port: int, spec: HttpCheck.Spec) -> list[str]:
    path = spec.path if spec.path.startswith("/") else "/" + spec.path
    url = f"http://127.0.0.1:{port}{path}"
    return [
        "b=$(mktemp)",
        f"code=$(curl -s -X {shlex.quote(spec.method.upper())} -o \"$b\" -w '%{{http_code}}' "
        f"--max-time {max(1, int(spec.timeout + 0.999))} {shlex.quote(url)} 2>/dev/null)"
        " || true",
        'echo "kiln-http-status:${code:-000}"',
        f'head -c {BODY_LIMIT} "$b"',
        'rm -f "$b"',
    ]


def check_http(aws: Aws, instance_id: str, port: int, spec: HttpCheck.Spec) -> ck.Outcome:
    url = f"http://127.0.0.1:{port}{spec.path}"
    try:
        res = ssm.run(aws, instance_id, http_command(port, spec), spec.timeout + 10.0,
                      "http check")
    except KilnError as exc:
        return ck.Outcome(False, f"{spec.method} {url} on {instance_id}: {exc}")
    code = _marker(res, "kiln-http-status:")
    if code is None or not code.strip().isdigit():
        return ck.Outcome(False, f"{spec.method} {url} on {instance_id}: "
                                 + _missing(res, "the HTTP status curl prints"))
    status = int(code.strip())
    if status == 0:
        return ck.Outcome(False, f"{spec.method} {url} on {instance_id}: no answer "
                                 f"(connection refused or no response within {spec.timeout:g}s)")
    body = res.stdout.split("\n", 1)[1].encode() if "\n" in res.stdout else b""
    return ck.http_outcome(spec, status, body)


def healthy(aws: Aws, instance_id: str, port: int, path: str, timeout: float) -> bool:
    """One probe of the app's health path from the instance itself; a 2xx/3xx is healthy.
    Raises KilnError saying why when SSM gave no status (so the runner can report it)."""
    spec = HttpCheck.Spec(path=path, timeout=timeout)
    res = ssm.run(aws, instance_id, http_command(port, spec), timeout + 10.0, "health probe")
    code = _marker(res, "kiln-http-status:")
    if code is None or not code.strip().isdigit():
        raise KilnError(f"health probe of {instance_id}: "
                        + _missing(res, "the HTTP status curl prints"))
    return 200 <= int(code.strip()) < 400


def check_port(aws: Aws, instance_id: str, port: int, timeout: float) -> ck.Outcome:
    lines = [f"if timeout {max(1, int(timeout + 0.999))} bash -c ': > /dev/tcp/127.0.0.1/{port}' "
             "2>/dev/null; then echo kiln-port:open; else echo kiln-port:closed; fi"]
    try:
        res = ssm.run(aws, instance_id, lines, timeout + 10.0, "port check")
    except KilnError as exc:
        return ck.Outcome(False, f"port {port} on {instance_id}: {exc}")
    state = _marker(res, "kiln-port:")
    if state is None:
        return ck.Outcome(False, f"port {port} on {instance_id}: "
                                 + _missing(res, "open or closed"))
    if state.strip() != "open":
        return ck.Outcome(False, f"127.0.0.1:{port} on {instance_id}: connection refused")
    return ck.Outcome(True, f"127.0.0.1:{port} on {instance_id} accepts connections")


def image_path(path: str) -> str:
    """`path` under the image root on the instance; `..` stops at the root (as locally)."""
    return ROOT + os.path.normpath("/" + path.lstrip("/"))


class InstanceFiles:
    """ck.ImageFiles read from a running instance of the image (its root is the AMI's)."""

    def __init__(self, aws: Aws, instance_id: str) -> None:
        self.aws, self.instance_id = aws, instance_id

    def stat(self, path: str) -> ck.FileStat | None:
        f = shlex.quote(image_path(path))
        res = ssm.run(self.aws, self.instance_id, [
            f"if [ -e {f} ]; then echo \"kiln-stat:$(stat -L -c '%f %s' {f})\"; "
            "else echo kiln-stat:missing; fi"], 30.0, "file check")
        out = _marker(res, "kiln-stat:")
        if out is None:
            raise KilnError(_missing(res, "the file's mode and size"))
        if out.strip() == "missing":
            return None
        mode, _, size = out.strip().partition(" ")
        try:
            return ck.FileStat(int(mode, 16), int(size))
        except ValueError as exc:
            raise KilnError(f"unexpected stat output {out!r}") from exc

    def read(self, path: str) -> bytes:
        f = shlex.quote(image_path(path))
        data = b""
        while len(data) < READ_LIMIT:
            res = ssm.run(self.aws, self.instance_id, [
                f"echo \"kiln-read:$(dd if={f} bs={READ_CHUNK} skip={len(data) // READ_CHUNK} "
                "count=1 2>/dev/null | base64 -w0)\""], 30.0, "file check")
            chunk = _marker(res, "kiln-read:")
            if chunk is None:
                raise KilnError(_missing(res, "the file's content"))
            part = base64.b64decode(chunk.strip())
            data += part
            if len(part) < READ_CHUNK:
                break
        return data
