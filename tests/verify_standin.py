"""A small real Compute for the verify tests: a shell command in the image root, on loopback.

Stand-in until the local platform lands; it follows the Compute protocol only, so the verify
code cannot depend on anything platform-specific. Also the tiny app the tests launch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release
from kiln.spec.models import Health, ServiceSpec

APP = textwrap.dedent('''
    import json, os, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/healthz":
                code = 503 if os.environ.get("UNHEALTHY") else 200
                return self.reply(code, b"ok" if code == 200 else b"sick")
            if self.path == "/json":
                doc = {"status": "ok", "greeting": os.environ.get("GREETING", ""),
                       "items": [{"name": "a"}, {"name": "b"}], "n": 3}
                return self.reply(200, json.dumps(doc).encode(), "application/json")
            if self.path == "/slow":
                time.sleep(30)
                return self.reply(200, b"late")
            return self.reply(404, b"not found")

        def reply(self, code, body, ctype="text/plain"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
''')


def make_image(store: Path, name: str = "web", digest_byte: str = "ab") -> Image:
    """An image folder with the app, a config file (0644) and a script (0755)."""
    root = store / name / "root"
    (root / "app").mkdir(parents=True)
    (root / "server.py").write_text(APP)
    (root / "app" / "config.txt").write_text("color = blue\n")
    (root / "app" / "config.txt").chmod(0o644)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run.sh").chmod(0o755)
    return Image(name=name, digest="sha256:" + digest_byte * 32, ref=str(store / name),
                 env={"IMAGE_ENV": "from-image"})


def app_service(**overrides: object) -> ServiceSpec:
    data: dict[str, object] = {
        "image": "web", "command": f"exec {sys.executable} server.py", "port": 8000,
        "listen": "127.0.0.1:18080", "env": {"GREETING": "hello"},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "10s"},
        "stop_timeout": "2s",
    }
    data.update(overrides)
    return ServiceSpec.model_validate(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandinCompute:
    """launch = `sh -c command` in <ref>/root with HOST/PORT; exec = `sh -c` in the same env."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.roots: dict[str, Path] = {}
        self.launched: list[Instance] = []
        self.kinds: list[str] = []

    def launch(self, service_name: str, service: ServiceSpec, release: Release, image: Image,
               count: int, *, env: Mapping[str, str], kind: str = "service") -> list[Instance]:
        out = []
        for _ in range(count):
            iid = f"{release.id}-{uuid.uuid4().hex[:6]}"
            port = _free_port()
            full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **image.env, **service.env,
                    **env, "HOST": "127.0.0.1", "PORT": str(port)}
            root = Path(image.ref) / "root"
            log = self.workdir / f"{iid}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(["/bin/sh", "-c", service.command], cwd=root, env=full,
                                        stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            inst = Instance(id=iid, service=service_name, release_id=release.id,
                            host="127.0.0.1", port=port, pid=proc.pid, workdir=str(root))
            self.procs[iid], self.envs[iid], self.roots[iid] = proc, full, root
            self.launched.append(inst)
            self.kinds.append(kind)
            out.append(inst)
        return out

    def healthy(self, instance: Instance, health: Health) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(instance.url + health.path, timeout=health.timeout) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def terminate(self, instance: Instance, timeout: float) -> None:
        proc = self.procs.get(instance.id)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        return [Observed(i.id, i.id in self.procs and self.procs[i.id].poll() is None)
                for i in instances]

    def exec(self, instance: Instance, command: str, *, timeout: float) -> ExecResult:
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.roots[instance.id],
                                env=self.envs[instance.id], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return ExecResult(124, out.decode(errors="replace"),
                              err.decode(errors="replace") + f"timed out after {timeout}s")
        return ExecResult(proc.returncode, out.decode(errors="replace"),
                          err.decode(errors="replace"))

    def log_path(self, instance: Instance) -> Path:
        return self.workdir / f"{instance.id}.log"

    def stop_all(self) -> None:
        for inst in self.launched:
            self.terminate(inst, 1.0)

    def running(self) -> list[str]:
        return [iid for iid, p in self.procs.items() if p.poll() is None]
