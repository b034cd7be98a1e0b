"""kiln's own Prometheus for a project: Debian's `prometheus` binary run detached on a loopback
port, its files and data under `<home>/prometheus/`.

Layout: `prometheus.yml` (static, JSON is YAML), `targets/instances.json` and
`targets/router.json` (file_sd, replaced atomically), `router.password` (0600), `data/` (the
TSDB), `prometheus.pid` (pid, start time and address, as the router's: a reused pid is never
taken for it), `prometheus.json` (the address, kept across restarts, and the command line the
process was started with: other flags restart it), `prometheus.log`.

Started and stopped like the router: the commands that act start it, read-only ones only look,
`destroy` stops it with the last instance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln import prometheus_config as config
from kiln.errors import PlatformError
from kiln.platforms.local import traefik_process as proc
from kiln.platforms.local.traefik_process import Running
from kiln.state.lock import pid_start_time

START_DEADLINE = 30.0
"""Seconds Prometheus may take to answer /-/ready (it replays its WAL first)."""
RETENTION_TIME = "7d"
RETENTION_SIZE = "512MB"
"""Whichever comes first ends the oldest block: 7 days of history, and never more than 512 MiB
of blocks (the WAL, a few hours at most, comes on top). gc does not delete series
(docs/decisions/prometheus-data.md says why)."""


def flags(*, config: Path, data: Path, listen: str) -> list[str]:
    """Prometheus's flags (pure): no admin API, no lifecycle API, bounded storage."""
    return [f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={listen}", f"--storage.tsdb.retention.time={RETENTION_TIME}",
            f"--storage.tsdb.retention.size={RETENTION_SIZE}", "--log.level=warn"]


def command(binary: str, *, config: Path, data: Path, listen: str) -> list[str]:
    """The Prometheus command line (pure)."""
    return [binary, *flags(config=config, data=data, listen=listen)]


def prometheus_binary() -> str:
    """KILN_PROMETHEUS if set, else `prometheus` on PATH or Debian's /usr/bin/prometheus."""
    named = os.environ.get("KILN_PROMETHEUS")
    if named:
        if not os.access(named, os.X_OK):
            raise PlatformError(f"KILN_PROMETHEUS: expected an executable prometheus binary, "
                                f"got {named!r} (not found or not executable)")
        return named
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if not found:
        raise PlatformError("services with metrics: {path} are scraped by kiln's own Prometheus, "
                            "but no prometheus binary is on PATH",
                            hint="install Debian's prometheus package (./scripts/setup does), "
                                 "or set prometheus: {url: ...} to use your own")
    return found


class EmbeddedPrometheus:
    """The project's Prometheus process and the files it reads. Every method is safe to call
    again after a crash."""

    def __init__(self, home: Path, *, interval: float = config.SCRAPE_INTERVAL,
                 start_deadline: float = START_DEADLINE) -> None:
        self.dir = Path(home) / "prometheus"
        self.targets_dir = self.dir / "targets"
        self.config_path = self.dir / "prometheus.yml"
        self.password_file = self.dir / "router.password"
        self.pid_path = self.dir / "prometheus.pid"
        self.state_path = self.dir / "prometheus.json"
        self.log_path = self.dir / "prometheus.log"
        self.data_dir = self.dir / "data"
        self.interval = interval
        self.start_deadline = start_deadline

    # ------------------------------------------------------------ process

    def running(self) -> Running | None:
        found = proc.read_pidfile(self.pid_path)
        return found if found is not None and found.alive() else None

    def is_running(self) -> bool:
        return self.running() is not None

    @property
    def address(self) -> str | None:
        """Where it listens (or last listened): HOST:PORT on loopback."""
        running = self.running()
        if running is not None:
            return running.admin
        try:
            return str(json.loads(self.state_path.read_text())["listen"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def url(self) -> str | None:
        address = self.address
        return f"http://{address}" if address else None

    def ensure_running(self) -> str:
        """Start it if it does not run (the config rewritten first); its base URL. One that
        runs with another config or other flags (a kiln upgrade changed them) is restarted,
        its data kept."""
        running = self.running()
        if running is not None:
            config_changed = self._write_config()
            # The flags, not the binary's path (KILN_PROMETHEUS may differ between commands).
            recorded = self._recorded_argv()
            if not config_changed and recorded is not None and recorded[1:] == flags(
                    config=self.config_path, data=self.data_dir, listen=running.admin):
                return f"http://{running.admin}"
        binary = prometheus_binary()  # before a restart stops the one that runs
        if running is not None:
            proc.stop_pid(running.pid, running.start, timeout=10.0)
        self._write_config()
        for name in ("instances.json", "router.json"):
            if not (self.targets_dir / name).exists():
                self._replace(self.targets_dir / name, "[]\n")
        listen = self.address
        if listen is None or not proc.port_free(listen):
            listen = f"127.0.0.1:{proc.free_port()}"
        argv = command(binary, config=self.config_path, data=self.data_dir, listen=listen)
        self._replace(self.state_path, json.dumps({"listen": listen, "argv": argv}) + "\n")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=str(self.dir))
        proc._children[child.pid] = child  # reaped by stop_pid
        running = Running(child.pid, pid_start_time(child.pid), listen, {})
        proc.write_pidfile(self.pid_path, running)  # at once: a killed kiln still finds it
        give_up = time.monotonic() + self.start_deadline
        while True:
            code = child.poll()
            if code is not None:
                tail = proc.log_tail(self.log_path, offset)
                raise PlatformError(f"prometheus exited at start with status {code}"
                                    + (f":\n{tail}" if tail else ""))
            status, _ = proc.http_get(f"http://{listen}/-/ready", timeout=0.5)
            if status == 200:
                return f"http://{listen}"
            if time.monotonic() > give_up:
                proc.stop_pid(child.pid, running.start, timeout=2.0)
                tail = proc.log_tail(self.log_path, offset)
                raise PlatformError(f"prometheus did not become ready within "
                                    f"{self.start_deadline:.0f}s" + (f":\n{tail}" if tail else ""))
            time.sleep(0.05)

    def _recorded_argv(self) -> list[str] | None:
        """The command line the running process was started with (None: a kiln that did not
        record it started it)."""
        try:
            argv = json.loads(self.state_path.read_text())["argv"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return argv if isinstance(argv, list) and all(isinstance(a, str) for a in argv) else None

    def stop(self) -> None:
        """Stop it (SIGTERM: it flushes its head block); data and targets stay."""
        running = proc.read_pidfile(self.pid_path)
        if running is not None:
            proc.stop_pid(running.pid, running.start, timeout=10.0)
        self.pid_path.unlink(missing_ok=True)

    # ------------------------------------------------------------ files

    def write_targets(self, targets: Sequence[config.Target],
                      router: Mapping[str, str] | None) -> bool:
        """Rewrite the file_sd files (only those whose content changed); whether any did."""
        changed = self._replace(self.targets_dir / "instances.json",
                                config.dump(config.target_groups(targets)))
        changed |= self._replace(self.targets_dir / "router.json",
                                 config.dump(config.router_groups(router)))
        if router is not None:
            self._replace(self.password_file, router.get("password", ""), mode=0o600)
        return changed

    def targets(self) -> list[dict[str, object]]:
        """The instance groups last written (what Prometheus is told to scrape)."""
        try:
            data = json.loads((self.targets_dir / "instances.json").read_text())
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def _write_config(self) -> bool:
        text = json.dumps(config.static_config(
            targets_dir=self.targets_dir, password_file=self.password_file, username="kiln",
            interval=self.interval), indent=1) + "\n"
        if not self.password_file.exists():
            self._replace(self.password_file, "", mode=0o600)
        return self._replace(self.config_path, text)

    def _replace(self, path: Path, text: str, mode: int = 0o644) -> bool:
        """Write `text` to `path` by a rename (Prometheus never reads half a file); False when
        the file already says it."""
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # not *.json: file_sd never loads it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return True
