"""The built-in checks (http, command, port, file): one function each, returning an Outcome.

They take plain values (an instance address, an image root, an exec function) rather than the
whole runner so they can be table-tested. Timeouts are enforced here where the I/O allows it
(socket timeouts, exec timeouts); the runner adds a hard backstop around every check.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kiln.errors import KilnError
from kiln.platforms.base import ExecResult, Instance
from kiln.spec.models import Check, CommandCheck, FileCheck, HttpCheck, PortCheck, TestinfraCheck
from kiln.verify.results import CheckKind

MAX_BODY = 1 << 20
"""Bytes of an HTTP body kept for body_contains / json checks."""

ExecFn = Callable[[str, float], ExecResult]
"""(command, timeout) -> result, in the instance's environment."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    detail: str


def kind_of(check: Check) -> CheckKind:
    if isinstance(check, HttpCheck):
        return "http"
    if isinstance(check, CommandCheck):
        return "command"
    if isinstance(check, PortCheck):
        return "port"
    if isinstance(check, FileCheck):
        return "file"
    return "testinfra"


def needs_app(check: Check) -> bool:
    """Checks that talk to the running app wait for its health check first."""
    return isinstance(check, HttpCheck | PortCheck | TestinfraCheck)


def needs_instance(check: Check) -> bool:
    """File checks read the image itself; everything else needs a launched instance."""
    return not isinstance(check, FileCheck)


def timeout_of(check: Check) -> float | None:
    """The check's own time limit (None: file checks, which only read local files)."""
    if isinstance(check, HttpCheck):
        return check.http.timeout
    if isinstance(check, CommandCheck):
        return check.spec.timeout
    if isinstance(check, PortCheck | TestinfraCheck):
        return check.timeout
    return None


def describe(check: Check) -> str:
    """A short human label, e.g. `http GET /healthz -> 200`."""
    if isinstance(check, HttpCheck):
        h = check.http
        extra = ""
        if h.body_contains is not None:
            extra += f" body~{h.body_contains!r}"
        if h.json_fields:
            extra += " json " + ",".join(f"{k}={v!r}" for k, v in h.json_fields.items())
        return f"http {h.method} {h.path} -> {h.status}{extra}"
    if isinstance(check, CommandCheck):
        c = check.spec
        run = c.run if len(c.run) <= 60 else c.run[:57] + "..."
        return f"command `{run}`" + (f" exits {c.exit_code}" if c.exit_code else "")
    if isinstance(check, PortCheck):
        return f"port {check.port} listening"
    if isinstance(check, FileCheck):
        f = check.file
        parts = [f"file {f.path}", "exists" if f.exists else "absent"]
        if f.mode:
            parts.append(f"mode {f.mode}")
        if f.contains is not None:
            parts.append(f"contains {f.contains!r}")
        return " ".join(parts)
    return f"testinfra {check.testinfra}"


def one_line(text: str, limit: int = 200) -> str:
    """Collapse output to one line a report can show."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ------------------------------------------------------------------ file


def image_path(root: Path, path: str) -> Path:
    """`path` inside the image tree, resolved like a chroot would: `..` stops at the root."""
    return root / os.path.normpath("/" + path.lstrip("/")).lstrip("/")


@dataclass(frozen=True)
class FileStat:
    """What a file check needs of a file in an image (symlinks followed)."""

    mode: int
    """st_mode: file type and permission bits."""
    size: int


class ImageFiles(Protocol):
    """An image's filesystem as file checks read it: a folder here, or a platform's own image
    (podman reads its OCI images through an unstarted container). Paths are the check's own."""

    def stat(self, path: str) -> FileStat | None:
        """None when there is no such file; OSError or KilnError when it cannot be read."""
        ...

    def read(self, path: str) -> bytes:
        """The content of a regular file."""
        ...


class TreeFiles:
    """An image tree in the local image store (paths are under the tree, `..` stops at it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stat(self, path: str) -> FileStat | None:
        try:
            st = image_path(self.root, path).stat()
        except FileNotFoundError:
            return None
        return FileStat(st.st_mode, st.st_size)

    def read(self, path: str) -> bytes:
        return image_path(self.root, path).read_bytes()


def check_file(spec: FileCheck.Spec, root: Path | ImageFiles) -> Outcome:
    """exists / mode (octal) / contains, read from the image (not a running instance): a local
    image tree (`root` a folder) or a platform's ImageFiles."""
    if isinstance(root, Path):
        if not root.is_dir():
            return Outcome(False, f"image tree {root} not found (file checks read the image store)")
        root = TreeFiles(root)
    try:
        st = root.stat(spec.path)
    except (OSError, KilnError) as exc:
        return Outcome(False, f"{spec.path}: {_reason(exc)}")
    if st is None:
        if not spec.exists:
            return Outcome(True, f"{spec.path} is absent")
        return Outcome(False, f"{spec.path} does not exist in the image")
    if not spec.exists:
        return Outcome(False, f"{spec.path} exists, expected it absent")
    if spec.mode is not None:
        want = int(spec.mode, 8)
        have = stat.S_IMODE(st.mode)
        if have != want:
            return Outcome(False, f"{spec.path}: mode {have:04o}, expected {want:04o}")
    if spec.contains is not None:
        if not stat.S_ISREG(st.mode):
            return Outcome(False, f"{spec.path} is not a regular file, cannot check contents")
        try:
            data = root.read(spec.path)
        except (OSError, KilnError) as exc:
            return Outcome(False, f"{spec.path}: {_reason(exc)}")
        if spec.contains.encode() not in data:
            return Outcome(False, f"{spec.path} does not contain {spec.contains!r}")
    return Outcome(True, f"{spec.path} ok ({stat.S_IMODE(st.mode):04o}, {st.size} bytes)")


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


# ------------------------------------------------------------------ command


def check_command(spec: CommandCheck.Spec, run: ExecFn) -> Outcome:
    """Run in the instance's environment; compare exit code and output."""
    result = run(spec.run, spec.timeout)
    if result.exit_code != spec.exit_code:
        tail = one_line(result.stderr or result.stdout, 160)
        return Outcome(False, f"exit code {result.exit_code}, expected {spec.exit_code}"
                              + (f": {tail}" if tail else ""))
    if spec.stdout_contains is not None and spec.stdout_contains not in result.stdout:
        return Outcome(False, f"stdout does not contain {spec.stdout_contains!r}: "
                              f"{one_line(result.stdout, 120)!r}")
    if spec.stderr_contains is not None and spec.stderr_contains not in result.stderr:
        return Outcome(False, f"stderr does not contain {spec.stderr_contains!r}: "
                              f"{one_line(result.stderr, 120)!r}")
    return Outcome(True, f"exit code {result.exit_code}")


# ------------------------------------------------------------------ http

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""No proxies: a test instance is on loopback, and http_proxy in the environment must not apply."""


def check_http(spec: HttpCheck.Spec, instance: Instance) -> Outcome:
    url = instance.url + (spec.path if spec.path.startswith("/") else "/" + spec.path)
    request = urllib.request.Request(url, method=spec.method.upper())
    try:
        with _OPENER.open(request, timeout=spec.timeout) as resp:
            status, body = resp.status, resp.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_BODY) if exc.fp else b""
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError | socket.timeout):
            return Outcome(False, f"{spec.method} {url}: no response within "
                                  f"{spec.timeout:g}s")
        return Outcome(False, f"{spec.method} {url}: {reason}")
    return http_outcome(spec, status, body)


def http_outcome(spec: HttpCheck.Spec, status: int, body: bytes) -> Outcome:
    """Judge one HTTP answer against the check (shared by platforms that fetch it their way)."""
    if status != spec.status:
        return Outcome(False, f"status {status}, expected {spec.status}: "
                              f"{one_line(body.decode(errors='replace'), 120)!r}")
    text = body.decode(errors="replace")
    if spec.body_contains is not None and spec.body_contains not in text:
        return Outcome(False, f"body does not contain {spec.body_contains!r}: "
                              f"{one_line(text, 120)!r}")
    if spec.json_fields:
        try:
            doc = json.loads(text)
        except ValueError:
            return Outcome(False, f"body is not JSON: {one_line(text, 120)!r}")
        for path, want in spec.json_fields.items():
            found, have = json_lookup(doc, path)
            if not found:
                return Outcome(False, f"json field {path} is missing")
            if have != want:
                return Outcome(False, f"json field {path} is {have!r}, expected {want!r}")
    return Outcome(True, f"status {status}, {len(body)} bytes")


def json_lookup(doc: Any, path: str) -> tuple[bool, Any]:
    """Dotted path into JSON: `a.b.0.c` (numbers index lists). (found, value)."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(
                part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


# ------------------------------------------------------------------ port


def check_port(host: str, port: int, timeout: float) -> Outcome:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Outcome(True, f"{host}:{port} accepts connections")
    except TimeoutError:
        return Outcome(False, f"{host}:{port}: no answer within {timeout:g}s")
    except OSError as exc:
        return Outcome(False, f"{host}:{port}: {exc.strerror or exc}")
