"""`kiln serve` in a subprocess for tests, benchmarks and demos: started on a free loopback port,
its printed address and token read back, stopped with SIGTERM (killed if it does not stop)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from kiln.testing.project import KILN, free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServeProc:
    def __init__(self, project_dir: Path, *, drift_every: float = 60.0,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.dir = project_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.login_url = ""
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [KILN, "serve", "--listen", f"127.0.0.1:{self.port}", "--drift-every",
             str(drift_every), *(args or [])], cwd=project_dir, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 30.0) -> ServeProc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                if line.startswith("dashboard: "):
                    self.login_url = line.split()[-1]
                    self.token = self.login_url.rsplit("token=", 1)[1]
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("kiln serve did not start: " + "\n".join(self.output))

    def __enter__(self) -> ServeProc:
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return int(self.proc.returncode)

    def get(self, path: str) -> Any:
        with _OPENER.open(self.base + path, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/api/status")
        return data

    def post(self, path: str, body: dict[str, Any] | None = None, token: str | None = None
             ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=json.dumps(body or {}).encode(),
                                     method="POST", headers=headers)
        try:
            with _OPENER.open(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs: list[dict[str, Any]] = self.status()["events"]
        return [e for e in evs if kind is None or e["kind"] == kind]
