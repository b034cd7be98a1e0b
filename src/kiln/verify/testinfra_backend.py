"""A pytest-testinfra backend bound to a kiln instance: `--hosts=kiln://<instance-id>`.

Like testinfra's podman backend it only implements `run`; the command goes through the kiln
process's exec bridge (see exec_server) so it runs exactly where `Compute.exec` runs it: the
instance's image root, environment and venv. The plugin module registers the backend by name.
"""

from __future__ import annotations

import os
from typing import Any

from testinfra.backend import base

from kiln.verify.exec_server import SOCKET_ENV, remote_exec

TIMEOUT_ENV = "KILN_EXEC_TIMEOUT"


class KilnBackend(base.BaseBackend):  # type: ignore[misc]
    NAME = "kiln"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        socket_path = os.environ.get(SOCKET_ENV)
        if not socket_path:
            raise RuntimeError(f"kiln:// hosts only work under `kiln test` ({SOCKET_ENV} unset)")
        self.socket_path = socket_path
        self.timeout = float(os.environ.get(TIMEOUT_ENV) or 60.0)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        rc, stdout, stderr = remote_exec(self.socket_path, cmd, self.timeout)
        return self.result(rc, self.encode(cmd), stdout, stderr)
