"""What both local routers (Traefik, HAProxy) keep on disk: `router.json`, written atomically under
an inter-process lock, and the pidfile of the live process."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from kiln.errors import PlatformError
from kiln.platforms.capabilities import RouterProcess, RouterSwitch
from kiln.platforms.local import tcp_table, traefik_process
from kiln.platforms.local.traefik_process import Running


class RouterFiles(RouterProcess, RouterSwitch):
    """Base of a local router: `dir`, `state_path`, `pid_path` and `staging_dir` are set by it."""

    project: str
    dir: Path
    state_path: Path
    pid_path: Path
    staging_dir: Path
    state_defaults: ClassVar[Mapping[str, Any]] = {}
    """Top-level keys (beyond project and services) a fresh router.json starts with."""
    replaces: RouterFiles | None = None
    """The project's other kind of router, found running when this one was made (the spec
    switched routers): it holds the listen addresses and serves until this one starts."""
    kind: ClassVar[str] = ""
    """'traefik' or 'haproxy', for people."""

    def _load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("project", self.project)
        for key, value in self.state_defaults.items():
            data.setdefault(key, value)
        data.setdefault("services", {})
        return data

    def _save_state(self, state: dict[str, Any]) -> None:
        self._write_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True))

    def _write_atomic(self, target: Path, text: str) -> None:
        """Write in the staging folder, fsync, then rename in (never a partial file)."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.staging_dir / f".{target.name}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    @contextmanager
    def _locked(self, timeout: float | None = None) -> Iterator[None]:
        """Serialize router changes between kiln processes (e.g. `status` while `deploy`).
        With `timeout`, PlatformError when another holds the lock that long."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as fh:
            if timeout is None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            else:
                give_up = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > give_up:
                            raise PlatformError(f"{self.dir}: the router is busy (lock held "
                                                f"for {timeout:g}s)") from None
                        time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _listens(state: dict[str, Any]) -> dict[str, str]:
        return {name: str(svc["listen"]) for name, svc in state["services"].items()}

    def _running(self) -> Running | None:
        running = traefik_process.read_pidfile(self.pid_path)
        return running if running is not None and running.alive() else None

    def is_running(self) -> bool:
        return self._running() is not None

    def stop(self) -> None:
        """Stop the process (in-flight requests finish first); routing files stay."""
        raise NotImplementedError

    def serving_instead(self) -> str | None:
        """The other router still serving this project (the spec switched routers and nothing
        started this one yet): its name and pid, else None."""
        replaced = self._replaced_running()
        if self.replaces is None or replaced is None:
            return None
        return f"{self.replaces.kind} (pid {replaced.pid})"

    def _replaced_running(self) -> Running | None:
        return self.replaces._running() if self.replaces is not None else None

    def _held(self, running: Running | None) -> set[str]:
        """Listen addresses this project's routers hold: this one's (`running`) and those of
        the router it replaces, which it takes over when it starts."""
        replaced = self._replaced_running()
        return {*(running.listens.values() if running else ()),
                *(replaced.listens.values() if replaced else ())}

    def _stop_replaced(self) -> None:
        """Stop the router this one replaces, just before this one starts on its addresses."""
        if self.replaces is not None:
            self.replaces.stop()
            self.replaces = None

    def check_listen(self, service_name: str, listen: str) -> None:
        """Refuse early (before any instance starts) a listen address another process holds
        (the router this one replaces holds it until this one starts)."""
        if listen in self._held(self._running()):
            return
        if not traefik_process.port_free_soon(listen):
            raise PlatformError(tcp_table.in_use_message(listen, f"services.{service_name}.listen"))
