"""A project whose instances say how they were launched, for tests of "a release runs the config
it was made with": each release N gets its own command argument, env, secret reference and health
path, and every instance answers `/whoami` with what it really got (argv, env, the paths it was
health-checked on). `mismatches` lists every instance running a config other than its release's.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = ("zero", "one", "two", "three", "four", "five", "six")

APP = '''\
"""Answers /whoami with what this process was started with; healthy only on $HEALTH."""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_AFTER = float(os.environ.get("READY_AFTER", "0"))
EXIT_AFTER = float(os.environ.get("EXIT_AFTER", "0"))
HITS = {}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        HITS[path] = HITS.get(path, 0) + 1
        if path == "/whoami":
            keys = ("MODE", "TOKEN", "HEALTH", "KILN_RELEASE")
            code, body = 200, json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                                          "env": {k: os.environ.get(k) for k in keys},
                                          "hits": HITS})
        elif path == os.environ.get("HEALTH") and time.monotonic() - STARTED >= READY_AFTER:
            code, body = 200, "ok"
        else:
            code, body = 404, "not here"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
if EXIT_AFTER:
    threading.Timer(EXIT_AFTER, lambda: os._exit(3)).start()
server.serve_forever()
'''


def token(n: int) -> str:
    """The value of release N's secret (its reference is env:PROBE_TOKEN_N)."""
    return f"token-{WORDS[n]}"


def secret_env() -> dict[str, str]:
    """Every release's secret, in the environment `kiln` runs with."""
    return {f"PROBE_TOKEN_{n}": token(n) for n in range(len(WORDS))}


def health_path(n: int) -> str:
    return f"/health-{WORDS[n]}"


def service_block(n: int, *, port: int, listen: str, strategy: str, replicas: int = 2,
                  health_path_override: str | None = None, ready_after: float = 0.0,
                  exit_after: float = 0.0, deadline: str = "20s", python: str = "python") -> str:
    """`services:` for release N: `python app/who.py N-word`, MODE=N-word, TOKEN from
    env:PROBE_TOKEN_N, health on /health-N-word (or `health_path_override`: a health path
    the app does not answer, which fails the health gate)."""
    word = WORDS[n]
    env = {"MODE": word, "HEALTH": health_path(n)}
    if ready_after:
        env["READY_AFTER"] = str(ready_after)
    if exit_after:
        env["EXIT_AFTER"] = str(exit_after)
    flow = ", ".join(f"{k}: {json.dumps(v)}" for k, v in env.items())
    return f"""\
services:
  web:
    image: web
    command: {python} app/who.py {word}
    port: {port}
    listen: {listen}
    replicas: {replicas}
    env: {{{flow}}}
    secrets: {{TOKEN: env:PROBE_TOKEN_{n}}}
    health: {{path: {health_path_override or health_path(n)}, interval: 200ms, timeout: 1s,
              deadline: {deadline}}}
    stop_timeout: 3s
    rollout:
      strategy: {strategy}
      steps: [{{weight: 50, pause: 0s}}]
      scale_down_delay: 0s
      max_surge: 1
      drain_timeout: 1s
"""


def write_app(folder: Path) -> None:
    (folder / "app").mkdir(parents=True, exist_ok=True)
    (folder / "app" / "who.py").write_text(APP)


def expected(n: int) -> dict[str, Any]:
    """What an instance of release N must answer."""
    word = WORDS[n]
    return {"argv": [word], "env": {"MODE": word, "TOKEN": token(n), "HEALTH": health_path(n),
                                    "KILN_RELEASE": f"web-r{n}"}}


def whoami(address: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}/whoami", timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


@dataclass
class Seen:
    instance: str
    release: str
    answer: dict[str, Any]


def instances(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(instance id, release id, address) of every live instance in `kiln status --json`."""
    out = []
    for svc in status["services"]:
        for rel in svc["releases"]:
            for inst in rel["instances"]:
                if inst["alive"]:
                    out.append((inst["id"], rel["release"], inst["address"]))
    return out


def ask_all(status: dict[str, Any]) -> list[Seen]:
    return [Seen(iid, rid, whoami(addr)) for iid, rid, addr in instances(status)]


def mismatches(seen: list[Seen]) -> list[str]:
    """One line per instance whose command, env, secret or health path is not its release's
    (release ids are web-rN); the health paths it was probed on must be its release's only."""
    bad = []
    for s in seen:
        n = int(s.release.rsplit("-r", 1)[1])
        want = expected(n)
        got = {"argv": s.answer["argv"], "env": s.answer["env"]}
        probed = set(s.answer["hits"]) - {"/whoami"}
        if got != want or not probed <= {health_path(n)}:
            bad.append(f"{s.instance} of {s.release}: {got} probed on {sorted(probed)}, "
                       f"expected {want} probed on {health_path(n)}")
    return bad
