"""A Unix-socket bridge from a pytest subprocess to `Compute.exec` in the kiln process.

testinfra runs in its own process (so a hanging test can be killed), but only the kiln process
holds the Compute that knows how to run a command in an instance's environment — a local venv, a
podman container, an EC2 host. The bridge keeps the testinfra backend platform-agnostic: it sends
`{"command", "timeout"}` and gets `{"exit_code", "stdout", "stderr"}` back, one JSON line each way.
"""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from kiln.verify.checks import ExecFn

SOCKET_ENV = "KILN_EXEC_SOCKET"


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    run: ExecFn
    max_timeout: float


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline())
            command = str(request["command"])
            timeout = min(float(request.get("timeout") or self.server.max_timeout),
                          self.server.max_timeout)
            result = self.server.run(command, timeout)
            reply: dict[str, Any] = {"exit_code": result.exit_code, "stdout": result.stdout,
                                     "stderr": result.stderr}
        except Exception as exc:  # reported to the test as a failed command, not a crash here
            reply = {"exit_code": 255, "stdout": "", "stderr": f"kiln exec failed: {exc}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ExecServer:
    """`with ExecServer(run, max_timeout) as path:` serves `run(command, timeout)` on `path`."""

    def __init__(self, run: ExecFn, max_timeout: float) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="kiln-exec-"))  # short: AF_UNIX paths <= 107
        self.path = self._dir / "exec.sock"
        self._server = _Server(str(self.path), _Handler)
        self._server.run = run
        self._server.max_timeout = max_timeout
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Path:
        self._thread.start()
        return self.path

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)


def remote_exec(path: str, command: str, timeout: float | None) -> tuple[int, str, str]:
    """Client side: run `command` through the bridge at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"command": command, "timeout": timeout}).encode() + b"\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    reply = json.loads(b"".join(chunks))
    return int(reply["exit_code"]), str(reply["stdout"]), str(reply["stderr"])
