"""The app `kiln init` writes, run as it is: it answers, stops on SIGTERM, and a client that
resets the connection (as HAProxy ends every health check) leaves no traceback in its log."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

from kiln.spec.init import init_project
from kiln.testing.project import free_port, wait_for


def reset_after_request(port: int) -> None:
    """Send a request and close with a TCP reset (SO_LINGER 0) before reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def answer(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


def test_a_reset_connection_is_no_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "starter"
    init_project(folder)
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "GREETING": "hi"}
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _answers(port), 10.0, 0.02, what="the starter app to answer")
        for _ in range(30):
            reset_after_request(port)
            # Between resets, an ordinary request: the server has then accepted the reset
            # connection (50 resets in a row fill its accept queue of 5: a SYN resent after 1 s).
            assert answer(port) == "hi from starter\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in out, out


def _answers(port: int) -> bool:
    try:
        answer(port)
    except OSError:
        return False
    return True
