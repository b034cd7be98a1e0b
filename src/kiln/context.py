"""The project context every use case works over: one kiln.yaml's spec, its state store, its
platform and that platform's parts, the project lock and the warning sink.

It decides nothing a command does; the commands are the modules of `kiln.usecases`
(`kiln.project.Project` is this context with one thin method per command).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from kiln.errors import KilnError, NotFound
from kiln.notify import Notifier
from kiln.platforms.base import Image, Release
from kiln.platforms.capabilities import ImageCheck, SpecLocator, Sweeper
from kiln.platforms.registry import get_platform
from kiln.rollout.executor import Env, env_fault, load_release
from kiln.rollout.release_config import went_live
from kiln.secrets import resolve_secrets
from kiln.spec.models import ServiceSpec, Spec
from kiln.state.lock import project_lock
from kiln.state.records import events as event_records
from kiln.state.records import rollouts as rollout_records
from kiln.state.store import Store, default_home

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Compute, MetricSource, Platform, Router
    from kiln.scraping import Scraping
    from kiln.state.controller import Controller

Warn = Callable[[str], None]



def _no_notify(kind: str, message: str, service: str | None, data: dict[str, Any]) -> None:
    """No `notify:` hooks: events are only recorded."""


class Context:
    """A loaded kiln.yaml with its state and platform."""

    def __init__(self, spec: Spec, spec_path: Path, base_dir: Path, home: Path,
                 warn: Warn | None = None, platform: Platform | None = None) -> None:
        self.spec = spec
        self.spec_path = spec_path
        self.base_dir = base_dir
        self.home = home
        self.warn: Warn = warn or (lambda msg: None)
        self._store: Store | None = None
        self._platform: Platform | None = platform
        self._notifier: Notifier | None = None
        self._scraping: Scraping | None = None
        self.detach = False
        """Start rollouts without driving them (the controller's own requests: it drives them)."""

    @classmethod
    def open(cls, spec_file: Path | None = None, warn: Warn | None = None) -> Self:
        from kiln.spec.loader import find_spec, found_above, load_spec

        path = find_spec(Path.cwd(), spec_file)
        if found_above(path):
            (warn or (lambda msg: None))(f"using {path} (found in a folder above this one)")
        loaded = load_spec(path)
        for line in loaded.spec.warnings():
            (warn or (lambda msg: None))(f"{loaded.path}: {line}")
        return cls(loaded.spec, loaded.path, loaded.base_dir, default_home(loaded.base_dir), warn)

    # ------------------------------------------------------------ plumbing

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.home, self.spec.project)
        return self._store

    def backup_state(self, reason: str) -> None:
        """A copy of state.db in .kiln/backups before a change (kept: the newest 10)."""
        self.store.backup(reason)

    @property
    def notifier(self) -> Notifier | None:
        """The `notify:` webhooks' sender (None without hooks)."""
        if self._notifier is None and self.spec.notify:
            self._notifier = Notifier(self.spec.notify, self.spec.project)
        return self._notifier

    def notify(self, kind: str, message: str, service: str | None,
               data: dict[str, Any]) -> None:
        """Queue an event for the `notify:` hooks; first record the deliveries that failed
        since the last time (here, on the caller's thread: the state has one connection)."""
        notifier = self.notifier
        if notifier is None:
            return
        self.record_failed_deliveries()
        notifier.send(kind, message, service, data)

    def record_failed_deliveries(self) -> None:
        """Failed webhook deliveries as `notify.failed` events (status and the dashboard)."""
        if self._notifier is None or self._store is None:
            return
        for f in self._notifier.take_failed():
            self._store.event("notify.failed", f"delivery of {f.event} to {f.url} failed: "
                              f"{f.error}", data={"url": f.url, "event": f.event,
                                                  "error": f.error, "time": f.time})

    def close(self) -> None:
        if self._notifier is not None:  # deliver what is queued (bounded), then stop
            self._notifier.close()
            self.record_failed_deliveries()
            self._notifier = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        with project_lock(self.store, command, self.warn):
            yield

    @property
    def platform(self) -> Platform:
        """The spec's platform (found by name in the registry); its parts are built on first use."""
        if self._platform is None:
            store = self.store  # its own errors are the state's, not the platform's
            try:
                self._platform = get_platform(
                    self.spec.platform, store, self.home, self.spec.project,
                    router=self.spec.router,
                    settings=self.spec.aws if self.spec.platform == "aws" else None,
                    sandbox=self.spec.sandbox, router_admin=self.spec.router_admin)
            except KilnError as exc:
                raise KilnError(f"{self.spec_path}: platform: {exc.message}",
                                hint=exc.hint) from exc
        return self._platform

    @property
    def builder(self) -> Builder:
        builder = self.platform.builder
        if isinstance(builder, SpecLocator):  # lets it name a step's line in kiln.yaml
            builder.use_locator(self._locate)
        return builder

    def _locate(self, loc: tuple[str | int, ...], message: str) -> str:
        """`file:line:col: path: message` for a problem a builder finds at `loc` of the spec."""
        from kiln.spec.loader import LoadedSpec, line_at

        try:
            text = self.spec_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            text = ""
        return line_at(LoadedSpec(self.spec, self.spec_path, self.base_dir, text), loc, message)

    @property
    def compute(self) -> Compute:
        return self.platform.compute

    @property
    def router(self) -> Router:
        return self.platform.router

    @property
    def metrics(self) -> MetricSource | None:
        return self.platform.metrics

    @property
    def scraping(self) -> Scraping:
        """kiln's own Prometheus for this project (it runs only when `scraping.wanted`)."""
        if self._scraping is None:
            from kiln.scraping import Scraping

            self._scraping = Scraping(self.spec, lambda: self.store, self.home,
                                      lambda: self.router)
        return self._scraping

    def service(self, name: str) -> ServiceSpec:
        try:
            return self.spec.services[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.services)) or "none"
            raise NotFound(f"{self.spec_path}: no service named {name!r} (services: {known})"
                           ) from None

    def _services(self, names: Sequence[str] | None) -> list[str]:
        if not names:
            return list(self.spec.services)
        for n in names:
            self.service(n)
        return list(names)

    def only_service(self, service: str | None) -> str:
        """The named service, or the project's only one when none is named."""
        if service:
            self.service(service)
            return service
        if len(self.spec.services) != 1:
            names = ", ".join(sorted(self.spec.services)) or "none"
            raise KilnError(f"name a service (services: {names})")
        return next(iter(self.spec.services))

    def image(self, digest: str, use: str = "launch it") -> Image:
        """The stored image with this digest, verified against it before `use` (a tampered
        image is refused with ImageTampered when the builder can check it)."""
        image = self.platform.image(digest)
        builder = self.builder
        if isinstance(builder, ImageCheck):
            builder.verify(image, use)
        return image

    def _sweep(self) -> None:
        """Mark instances whose process is gone as dead; stop orphans a killed kiln left."""
        compute = self.compute
        if isinstance(compute, Sweeper):
            compute.sweep()

    # ------------------------------------------------------------ releases

    def current_release(self, service: str) -> Release | None:
        """The release serving the service: the target of its last promoted rollout."""
        row = rollout_records.last_settled(self.store, service)
        if row is None or self.destroyed(service):
            return None
        if row["outcome"] == "promoted":
            return load_release(self.store, row["to_release"])
        rid = row["from_release"]
        if rid is None:
            return None
        # A rolled-back rollout leaves the one before it serving.
        return load_release(self.store, rid)

    def destroyed(self, service: str) -> bool:
        """`kiln destroy` stopped the service and nothing was rolled out since."""
        gone = event_records.last_time(self.store, service, "service.destroyed")
        if gone is None:
            return False
        last = rollout_records.last_started_at(self.store, service)
        return last is None or last < gone

    def live_releases(self, service: str) -> list[str]:
        """Releases that went live (promoted rollouts, rollbacks included), most recent first."""
        return went_live(self.store, service)

    def controller(self) -> Controller | None:
        """The project's live controller (`kiln serve`) in another process, if one runs."""
        from kiln.state.controller import running

        return running(self.store)

    # ------------------------------------------------------------ what a rollout runs with

    def rollout_env(self, service: str, spec: ServiceSpec) -> Env:
        """What a reconciler of this service needs (its secrets resolved now)."""
        return self._env(service, spec)

    def _env(self, service: str, spec: ServiceSpec) -> Env:
        # Each release resolves its own recorded secret references when it is launched.
        # A plain lookup: compute.launch verifies the content at every launch (once, not twice).
        return Env(self.store, self.compute, self.router, None, self.platform.image,
                   secrets=lambda recorded: resolve_secrets(service, recorded, self.base_dir),
                   fault=env_fault(),
                   notify=self.notify if self.notifier else _no_notify,
                   instances_changed=self.scraping.sync)
