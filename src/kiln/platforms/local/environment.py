"""The environment an instance runs with. Pure, so the precedence is table-tested.

Precedence, lowest first: kiln's defaults (venv on PATH, HOME and TMPDIR in the scratch folder),
the image's `env` steps, the service's `env`, the caller's extra env (resolved secrets), and last
the variables kiln owns (HOST, PORT, KILN_*), which nothing may override. The kiln process's own
environment is not inherited (only PATH and locale), so an instance never sees the operator's
proxies, tokens or shell settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSTHROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")


def base_env(root: Path, scratch: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """kiln's defaults: the image's venv first on PATH, writable HOME and TMPDIR."""
    venv = root / ".venv"
    env = {k: inherited[k] for k in PASSTHROUGH if k in inherited}
    env.update({
        "PATH": f"{venv / 'bin'}:{inherited.get('PATH') or DEFAULT_PATH}",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(scratch),
        "TMPDIR": str(scratch / "tmp"),
        "PYTHONUNBUFFERED": "1",          # logs reach the log file as they happen
        "PYTHONDONTWRITEBYTECODE": "1",   # the image is read-only anyway
    })
    return env


def kiln_vars(host: str, port: int, service: str, release: str, instance: str) -> dict[str, str]:
    return {
        "HOST": host,
        "PORT": str(port),
        "KILN_SERVICE": service,
        "KILN_RELEASE": release,
        "KILN_INSTANCE": instance,
    }


def instance_env(
    *,
    base: Mapping[str, str],
    image_env: Mapping[str, str],
    service_env: Mapping[str, str],
    extra_env: Mapping[str, str],
    kiln: Mapping[str, str],
) -> dict[str, str]:
    """Merge the layers; later layers win."""
    env: dict[str, str] = {}
    for layer in (base, image_env, service_env, extra_env, kiln):
        env.update(layer)
    return env
