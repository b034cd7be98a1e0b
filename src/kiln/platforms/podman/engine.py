"""The `podman` command: found once, run with a timeout, its failures turned into PlatformError.

Everything the podman platform does goes through `run`, so a missing podman is one clear line
naming the install command, and no podman error escapes as a raw CalledProcessError.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from kiln.errors import PlatformError

INSTALL_HINT = ("install it with `apt-get install podman runc` (or run ./scripts/setup as root, "
                "which also writes /etc/containers/containers.conf)")


def binary() -> str:
    path = shutil.which("podman")
    if path is None:
        raise PlatformError("platform podman: the podman command is not installed",
                            hint=INSTALL_HINT)
    return path


def run(args: Sequence[str], *, timeout: float = 120.0, check: bool = True,
        env: Mapping[str, str] | None = None, what: str | None = None,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`podman ARGS`; PlatformError (with podman's last stderr line) when it fails and `check`."""
    argv = [binary(), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise PlatformError(f"{what or 'podman ' + args[0]}: no answer within {timeout:g}s"
                            ) from exc
    if check and proc.returncode != 0:
        raise PlatformError(f"{what or 'podman ' + args[0]}: {last_line(proc.stderr)}")
    return proc


def last_line(text: str) -> str:
    """The line of podman's stderr that says what went wrong ('Error: ...' if there is one)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    line = (errors or lines or ["failed without a message"])[-1]
    return line.removeprefix("Error: ")


def inspect(kind: str, ref: str, *, timeout: float = 30.0) -> dict[str, Any] | None:
    """`podman {kind} inspect REF` as a dict, or None when there is no such object."""
    proc = run([kind, "inspect", ref], timeout=timeout, check=False)
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return None


def image_id(ref: str) -> str | None:
    """'sha256:<hex>' of the image podman has under `ref`, else None."""
    data = inspect("image", ref)
    if data is None:
        return None
    ident = str(data.get("Id", ""))
    return ident if ident.startswith("sha256:") else f"sha256:{ident}"
