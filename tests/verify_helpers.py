"""Helpers for the verify tests: a tiny stdlib http app baked into an image folder."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from kiln.platforms.base import Image
from kiln.spec.models import ServiceSpec

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
        "image": "web", "port": 8000,
        # The real interpreter: the sandbox hides /tmp, where a checkout (and its venv) may be.
        "command": f"exec {os.path.realpath(sys.executable)} server.py",
        "listen": "127.0.0.1:18080", "env": {"GREETING": "hello"},
        "health": {"path": "/healthz", "interval": "100ms", "timeout": "1s", "deadline": "10s"},
        "stop_timeout": "2s",
        # The image has no venv of its own: the sandbox must show the host interpreter's prefix.
        "read_only_paths": [str(Path(os.path.realpath(sys.executable)).parent.parent)],
    }
    data.update(overrides)
    return ServiceSpec.model_validate(data)
