"""`kiln serve`: the project's long-running controller with a dashboard on loopback.

The controller loop runs in the calling thread; the HTTP server in its own threads. SIGTERM (the
caller sets `stop`) ends both and leaves every instance and the router serving.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError
from kiln.serve.board import Board
from kiln.serve.controller import Controller
from kiln.serve.metrics import ServeMetrics
from kiln.serve.pages import fragments
from kiln.serve.web import App, Server
from kiln.state.controller import claim, release
from kiln.state.records import rollouts as rollout_records
from kiln.state.store import Store

if TYPE_CHECKING:
    from kiln.project import Project

__all__ = ["load_token", "parse_listen", "serve", "token_path"]


def token_path(home: Path) -> Path:
    return home / "serve.token"


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8600' -> ('127.0.0.1', 8600); only loopback addresses are accepted."""
    host, sep, port_s = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
        if not sep or not 0 <= port <= 65535:
            raise ValueError
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise KilnError(f"--listen {listen!r}: expected HOST:PORT on loopback, e.g. "
                        "127.0.0.1:8600") from None
    if not loopback:
        raise KilnError(f"--listen {listen!r}: the dashboard binds loopback only (its buttons "
                        "change production); expected 127.0.0.1:PORT")
    return host, port


TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32,}")


def load_token(path: Path, rotate: bool = False) -> tuple[str, str]:
    """The dashboard's token and why it is that one: kept in `path` across restarts (a
    bookmarked address keeps working) until `rotate`; a new one is written (0600) when there is
    none, it is malformed, or anyone but the owner could read or change the file."""
    why = "rotated" if rotate else "new"
    if not rotate:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = -1
        except OSError:
            fd, why = -1, "new (the old file could not be read)"
        if fd >= 0:
            try:
                st = os.fstat(fd)
                text = os.read(fd, 4096).decode(errors="replace").strip()
            finally:
                os.close(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                why = f"new (the old file was mode {stat.S_IMODE(st.st_mode):04o})"
            elif TOKEN_RE.fullmatch(text):
                return text, "kept"
            else:
                why = "new (the old file held no token)"
    token = secrets.token_urlsafe(24)
    _write_token(path, token)
    return token, why


def _write_token(path: Path, token: str) -> None:
    path.unlink(missing_ok=True)  # a fresh inode: no other reader keeps an open handle
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)


def serve(project: Project, listen: str = "127.0.0.1:8600", *,
          announce: Callable[[str], None] = print, stop: threading.Event | None = None,
          tick: float = 0.25, drift_every: float = 60.0, rotate_token: bool = False) -> None:
    """Run the controller and the dashboard until `stop` is set; `announce` gets the address
    and then one line per event while it runs."""
    from kiln.project import Project as ProjectCls

    host, port = parse_listen(listen)
    stop = stop or threading.Event()
    store = project.store
    home = project.home
    try:
        server = Server((host, port))
    except OSError as exc:
        raise KilnError(f"--listen {listen}: cannot bind: {exc.strerror or exc}") from exc
    try:
        bound = f"{host}:{server.server_address[1]}"
        claim(store, bound)
        token, token_why = load_token(token_path(home), rotate_token)
        metrics = ServeMetrics(lambda: Store.open(home))
        controller: Controller | None = None
        board = Board(project, fragments,
                      drift=lambda: controller.drift if controller else {"at": None, "items": []})

        def refresh(acted: bool) -> None:
            board.refresh(acted)

        controller = Controller(project, metrics, tick=tick, drift_every=drift_every,
                                on_pass=refresh, announce=announce)
        controller.stop = stop

        def act(service: str, action: str, params: dict[str, str], who: str) -> dict[str, Any]:
            proj = ProjectCls(project.spec, project.spec_path, project.base_dir, home,
                              project.warn)
            proj.detach = True
            try:
                if action == "promote":
                    res = proj.promote(service, full=params.get("full") in ("1", "true"))
                elif action == "abort":
                    res = proj.abort(service)
                elif action == "rollback":
                    res = proj.rollback(service, params.get("to") or None)
                else:
                    if not params.get("image"):
                        raise KilnError(f"deploy {service}: expected an image digest "
                                        "(\"image\": \"sha256:...\")")
                    res = proj.deploy_image(service, params["image"])
                return dict(vars(res))
            finally:
                proj.close()

        def report(rollout_id: int) -> str | None:
            from kiln.analysis.report import report_for_rollout

            st = Store.open(home)
            try:
                service = rollout_records.service_of(st, rollout_id)
                if service is None:
                    return None
                path = home / "reports" / f"rollout-{rollout_id}.html"
                if not path.exists():
                    report_for_rollout(st, home, service, rollout_id)
                return path.read_text(encoding="utf-8") if path.exists() else None
            finally:
                st.close()

        server.app = App(board, metrics, token, act, lambda: Store.open(home), report, host,
                         server.server_address[1])
        board.refresh(True)
        board.prober.start()
        web = threading.Thread(target=server.serve_forever, name="kiln-serve-http",
                               kwargs={"poll_interval": 0.5}, daemon=True)
        web.start()
        announce(f"kiln serve: controlling {project.spec.project} (pid {os.getpid()})")
        announce(f"dashboard: http://{bound}/?token={token}")
        announce(f"token: {token_path(home)} (0600, {token_why}; kept across restarts until "
                 "kiln serve --rotate-token); API: Authorization: Bearer <token>")
        try:
            controller.run()
        finally:
            controller.log_events()
            board.prober.stop.set()
            server.app.stopping.set()
            with board.cond:
                board.cond.notify_all()
            server.shutdown()
    finally:
        server.server_close()
        release(store)
