"""The dashboard and JSON API over the standard library's ThreadingHTTPServer.

Reading (the page, /api/status, /events, /metrics, reports) needs nothing; every mutating request
needs the token: `Authorization: Bearer TOKEN` for the API (a header no other site's page can
send without a CORS preflight, which is never granted), or, for the page's forms, the HttpOnly
SameSite=Strict cookie set by opening `/?token=TOKEN` *and* the CSRF value derived from it, from a
same-origin page. The Host header must name this server (no DNS rebinding). Every mutating
request, accepted or refused, is an event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kiln.charts import ASSETS, asset
from kiln.errors import KilnError, LockHeld, NotFound
from kiln.serve.board import Board
from kiln.serve.metrics import ServeMetrics
from kiln.serve.pages import CONFIRM, confirm_page, page
from kiln.state.store import Store

ACTIONS = ("promote", "abort", "rollback", "deploy")
COOKIE = "kiln_token"
Act = Callable[[str, str, dict[str, str], str], dict[str, Any]]
"""(service, action, params, who) -> result; raises KilnError."""


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"kiln-dashboard-csrf", hashlib.sha256).hexdigest()


class App:
    def __init__(self, board: Board, metrics: ServeMetrics, token: str, act: Act,
                 store_factory: Callable[[], Store], report: Callable[[int], str | None],
                 host: str, port: int) -> None:
        self.board = board
        self.metrics = metrics
        self.token = token
        self.csrf = csrf_for(token)
        self.act = act
        self.store_factory = store_factory
        self.report = report
        self.port = port
        self.hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host)}
        self.stopping = threading.Event()

    def record(self, kind: str, message: str, service: str | None, data: dict[str, Any]) -> None:
        store = self.store_factory()
        try:
            store.event(kind, message, service=service, data=data)
        finally:
            store.close()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App | None = None) -> None:
        super().__init__(address, Handler)
        self.app: App | None = app


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "kiln-serve"

    def log_message(self, format: str, *args: Any) -> None:
        return  # requests that matter are events; the rest is noise

    @property
    def app(self) -> App:
        assert self.server.app is not None
        return self.server.app

    # ------------------------------------------------------------------ plumbing

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")  # no-referrer makes Origin "null"
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data, default=str).encode(), "application/json")

    def _text(self, code: int, text: str) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _host_ok(self) -> bool:
        if self.headers.get("Host", "") in self.app.hosts:
            return True
        self._text(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host: this server answers only to "
                   "its own loopback address")
        return False

    def _cookie_token(self) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except Exception:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel else None

    def _authed_cookie(self) -> bool:
        tok = self._cookie_token()
        return tok is not None and hmac.compare_digest(tok, self.app.token)

    # ------------------------------------------------------------------ GET

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path == "/":
            token = urllib.parse.parse_qs(url.query).get("token", [None])[0]
            if token is not None:
                if hmac.compare_digest(token, self.app.token):
                    self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {
                        "Location": "/", "Set-Cookie": f"{COOKIE}={token}; HttpOnly; "
                        "SameSite=Strict; Path=/"})
                else:
                    self._text(HTTPStatus.FORBIDDEN, "wrong token")
                return
            version, _, frags = self.app.board.snapshot()
            authed = self._authed_cookie()
            body = page(frags, version, self.app.csrf if authed else "", authed)
            self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8",
                       {"Cache-Control": "no-store"})
        elif path.startswith("/static/") and path[len("/static/"):] in ASSETS:
            name = path[len("/static/"):]
            ctype = "text/css" if name.endswith(".css") else "text/javascript"
            self._send(HTTPStatus.OK, asset(name).encode(), f"{ctype}; charset=utf-8",
                       {"Cache-Control": "max-age=3600"})
        elif path == "/api/status":
            version, state, _ = self.app.board.snapshot()
            self._json(HTTPStatus.OK, {"version": version, **state})
        elif path == "/events":
            self._events()
        elif path == "/metrics":
            self._send(HTTPStatus.OK, self.app.metrics.expose(),
                       "text/plain; version=0.0.4; charset=utf-8")
        elif (m := re.fullmatch(r"/reports/(\d+)", path)) is not None:
            report = self.app.report(int(m.group(1)))
            if report is None:
                self._text(HTTPStatus.NOT_FOUND, f"no rollout #{m.group(1)}")
            else:
                self._send(HTTPStatus.OK, report.encode(), "text/html; charset=utf-8")
        else:
            self._text(HTTPStatus.NOT_FOUND, f"not found: {path}")

    def _events(self) -> None:
        """Server-sent events: the board each time it changes; a comment every 15 s keeps the
        connection open through idle times."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        board = self.app.board
        seen = -1
        try:
            while not self.app.stopping.is_set():
                version = board.wait(seen, 15.0) if seen >= 0 else board.snapshot()[0]
                if version == seen:
                    self.wfile.write(b": idle\n\n")
                else:
                    version, _, frags = board.snapshot()
                    data = json.dumps({"version": version, **frags})
                    self.wfile.write(f"id: {version}\nevent: board\ndata: {data}\n\n".encode())
                    seen = version
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return

    # ------------------------------------------------------------------ POST

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        api = re.fullmatch(r"/api/services/([\w.-]+)/(\w+)", path)
        form = re.fullmatch(r"/services/([\w.-]+)/(\w+)", path)
        m = api or form
        if m is None or m.group(2) not in ACTIONS:
            self._text(HTTPStatus.NOT_FOUND, f"not found: {path}")
            return
        service, action = m.group(1), m.group(2)
        length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
        raw = self.rfile.read(length) if length else b""
        params: dict[str, str] = {}
        who, refusal = "", ""
        if api:
            auth = self.headers.get("Authorization", "")
            ok = auth.startswith("Bearer ") and hmac.compare_digest(auth[7:], self.app.token)
            who, refusal = "api", "" if ok else "missing or wrong bearer token"
            if raw:
                try:
                    body = json.loads(raw)
                    params = {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
                except ValueError:
                    refusal = refusal or "the body is not JSON"
        else:
            params = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace"))
                      .items()}
            csrf = params.pop("csrf", "")
            who = "dashboard"
            origin = self.headers.get("Origin")
            if origin is not None and urllib.parse.urlsplit(origin).netloc not in self.app.hosts:
                refusal = f"cross-origin request from {origin}"
            elif self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                refusal = "cross-site request"
            elif not self._authed_cookie():
                refusal = "no token: open the dashboard with the address kiln serve printed"
            elif not hmac.compare_digest(csrf, self.app.csrf):
                refusal = "missing or wrong CSRF value"
        data = {"method": "POST", "path": path, "via": who, "remote": self.client_address[0],
                "params": params}
        if refusal:
            code = HTTPStatus.UNAUTHORIZED if api else HTTPStatus.FORBIDDEN
            self.app.metrics.requests.labels(action, str(int(code))).inc()
            self.app.record("serve.refused", f"refused {action} {service}: {refusal}", service,
                            {**data, "status": int(code)})
            if api:
                self._json(code, {"error": refusal})
            else:
                self._text(code, f"refused: {refusal}")
            return
        if not api and action in CONFIRM and params.pop("confirmed", "") != "yes":
            # Destructive: the page's script asked already; without it, ask here first.
            body = confirm_page(service, action, params, self.app.csrf)
            self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8",
                       {"Cache-Control": "no-store"})
            return
        params.pop("confirmed", None)
        try:
            result = self.app.act(service, action, params, who)
            code, answer = HTTPStatus.OK, {"ok": True, **result}
        except LockHeld as exc:
            code, answer = HTTPStatus.CONFLICT, {"error": str(exc)}
        except NotFound as exc:
            code, answer = HTTPStatus.NOT_FOUND, {"error": str(exc)}
        except KilnError as exc:
            code, answer = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        self.app.metrics.requests.labels(action, str(int(code))).inc()
        self.app.record("serve.request", f"{action} {service} via the {who}: "
                        + (str(answer.get("reason") or "ok") if code == 200 else
                           str(answer["error"])), service, {**data, "status": int(code)})
        if api:
            self._json(code, answer)
        elif code == HTTPStatus.OK:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/"})
        else:
            self._text(code, f"{action} {service}: {answer['error']}")
