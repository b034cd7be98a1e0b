"""moto's server on a free loopback port, for the AWS tests and the AWS benchmark.

A real HTTP endpoint (not moto's in-process mocks) so that `kiln` subprocesses, SIGKILLed
mid-deploy, talk to the same fake AWS as the test that checks what they left behind. The fake
credentials live only in `env()`; nothing here reads real ones.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kiln.testing.project import free_port

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing"}
REGION = "eu-west-1"


class MotoServer:
    def __init__(self, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        exe = Path(sys.executable).parent / "moto_server"
        out = open(self._log, "ab") if self._log else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=out, stderr=subprocess.STDOUT,
                                      env={**os.environ, **FAKE_CREDENTIALS})
        if self._log:
            assert not isinstance(out, int)
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}")
            try:
                self._get("/moto-api/data.json")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not answer within {timeout}s") from None
                time.sleep(0.1)

    def _get(self, path: str, data: bytes | None = None) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(urllib.request.Request(self.url + path, data=data), timeout=10) as r:
            body: bytes = r.read()
            return body

    def reset(self) -> None:
        """Forget every resource (between tests)."""
        self._get("/moto-api/reset", data=b"")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def env(self) -> dict[str, str]:
        """What a process needs to use this server and nothing else."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@contextlib.contextmanager
def moto_server(log: Path | None = None) -> Iterator[MotoServer]:
    server = MotoServer(log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
