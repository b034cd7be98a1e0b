"""Optional capabilities of a platform's parts, each a small Protocol of its own.

A part that has one declares it by naming the Protocol among its bases (so mypy checks the
signatures where the part is defined); the core asks with `isinstance` (so mypy checks the call
after the narrowing). The contract suites assert which capabilities each real and fake part
declares, so a part cannot gain or lose one silently. Never probe a part with `getattr`: a
misspelt name there is a capability nobody has. Why Protocols and `isinstance` rather than
optional attributes on the Platform: docs/decisions/capabilities.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kiln.platforms.base import Image, Instance, Window
    from kiln.spec.models import ImageSpec
    from kiln.verify.checks import ImageFiles


# ---------------------------------------------------------------- Router


@runtime_checkable
class RouterProcess(Protocol):
    """A router that is a process kiln starts and supervises (Traefik, HAProxy; not an ALB)."""

    def is_running(self) -> bool: ...


@runtime_checkable
class RouterSwitch(Protocol):
    """A router that may replace another kind still serving the project (the spec's `router:`
    changed): reads report it, the next start takes its addresses over."""

    def serving_instead(self) -> str | None:
        """The other router still serving the project's traffic while this one does not run,
        for people (name and pid); else None."""
        ...


@runtime_checkable
class HealthVerdicts(Protocol):
    """A router with its own health checks whose verdicts kiln can read (heal decisions)."""

    def server_statuses(self, release_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """release -> {"http://host:port": "UP" | "DOWN..." | "MAINT..."}; each asked release
        has an entry."""
        ...


@runtime_checkable
class OpenRequests(Protocol):
    """A router that can tell whether a release out of rotation still has requests in flight
    (a drain waits for 0 instead of a fixed time)."""

    def open_requests(self, release_id: str) -> int: ...


@runtime_checkable
class Mirroring(Protocol):
    """A router that copies a share of a service's requests to a release and discards its
    answers (Traefik's mirroring service), reading back what it really copies."""

    def mirrors(self, service_name: str) -> dict[str, int]:
        """release_id -> percent of the service's live requests copied to it ({}: none)."""
        ...


@runtime_checkable
class ServersReadBack(Protocol):
    """A router that reads back which servers it really routes to, so the rollout confirms an
    instance left rotation (rolling retires servers of a release whose share stays the same)
    before it is stopped."""

    def served_servers(self, service_name: str) -> dict[str, set[str]]:
        """release_id -> "host:port" of the servers the router really sends requests to (only
        releases with a positive weight)."""
        ...


@runtime_checkable
class RouterMetrics(Protocol):
    """A router whose own Prometheus metrics kiln's Prometheus scrapes beside the instances."""

    def metrics_endpoint(self) -> dict[str, str] | None:
        """{"address": HOST:PORT, "path", "username", "password"} of its metrics (basic auth);
        None before it first started."""
        ...


# ---------------------------------------------------------------- Compute


@runtime_checkable
class RemoteLogs(Protocol):
    """A compute whose running instances' logs are read from the instances themselves (aws:
    the service's journal over SSM), so `kiln logs` writes nothing on kiln's side."""

    def read_log(self, instance: Instance, *, lines: int | None, after: str | None = None
                 ) -> tuple[list[str], str | None]:
        """The instance's log lines (the last `lines`, or all of them when None; only those
        after the cursor `after` when given) and the cursor after the last one (None when the
        log is empty)."""
        ...

    def saved_log(self, instance: Instance) -> Path:
        """Where kiln keeps the copy it fetched last (a test instance's, at its end); never
        fetches."""
        ...


@runtime_checkable
class ReleaseTerminator(Protocol):
    """A compute that disposes of a whole release in one go (aws: deleting the release's
    Auto Scaling group terminates every member), instead of one instance at a time."""

    def terminate_release(self, release_id: str, instances: Sequence[Instance],
                          timeout: float) -> None:
        """Stop `instances` (the release's live ones) and whatever else the release holds."""
        ...


@runtime_checkable
class Sweeper(Protocol):
    """Compute that can make the state match reality: dead rows marked, orphans stopped."""

    def sweep(self) -> list[str]:
        """One line per change."""
        ...


@runtime_checkable
class OrphanFinder(Protocol):
    """Compute that can find instances that run but that no live row records (`kiln drift`)."""

    def orphans(self) -> list[tuple[str, int, str]]:
        """(instance, pid, start) of each."""
        ...


@runtime_checkable
class TamperCheck(Protocol):
    """Compute whose instances can drift from their image (a container's writable layer)."""

    def tampered(self, instance: Instance, image_digest: str) -> str | None:
        """None when the instance runs its image unchanged; else one line saying what differs."""
        ...


@runtime_checkable
class ExitStatus(Protocol):
    """Compute that can say how a dead instance ended, while the platform still knows."""

    def exit_status(self, instance: Instance) -> str:
        """e.g. "exited with code 137 (killed: out of memory)"; "is not running" when unknown."""
        ...


@runtime_checkable
class ImageFileReader(Protocol):
    """Compute whose images are not plain folders: file checks read them through it."""

    def image_files(self, image: Image) -> AbstractContextManager[ImageFiles]: ...


@runtime_checkable
class TestinfraBackend(Protocol):
    """Compute that testinfra reaches with a backend of its own (e.g. podman://)."""

    def testinfra_host(self, instance: Instance) -> str: ...


# ---------------------------------------------------------------- Builder


@runtime_checkable
class ImageCheck(Protocol):
    """A builder that can check a stored image against its digest before it is used."""

    def verify(self, image: Image, use: str) -> None:
        """Raise ImageTampered naming `use` when the image's content no longer matches."""
        ...


@runtime_checkable
class Resolver(Protocol):
    """A builder that can say which image a bake would give without running a step (plan)."""

    def resolve(self, name: str, spec: ImageSpec, *, base_dir: Path) -> Image | None: ...


@runtime_checkable
class SpecLocator(Protocol):
    """A builder that names the kiln.yaml line of a step it refuses (a `copy` path escaping the
    project), once the context tells it how to find lines."""

    def use_locator(self, locate: Callable[[tuple[str | int, ...], str], str]) -> None:
        """`locate(path in the spec, message)` -> "kiln.yaml:line:col: path: message"."""
        ...


# ---------------------------------------------------------------- MetricSource


@runtime_checkable
class MetricReplay(Protocol):
    """A metric source read like a log: a JSON-able cursor, every record exactly once, so a
    rollout's judge (also one restarted after a crash) counts what was recorded since the
    cursor taken at the rollout's start, whatever the records' timestamps."""

    def position(self) -> Any:
        """A cursor at the end of what is recorded now (JSON-able, kept in the rollout)."""
        ...

    def read(self, service_name: str, cursor: Any, since: float | None = None
             ) -> tuple[list[Window], Any]:
        """Aggregates of the service's records after `cursor` (None: from the beginning, then
        only those completed at or after `since`), and the new cursor. They add to what earlier
        reads gave (the same window may come in parts)."""
        ...


# ---------------------------------------------------------------- Platform


@runtime_checkable
class OwnDrift(Protocol):
    """A platform with drift of its own beyond instances and routes (aws: AMIs, ASGs)."""

    def drift(self) -> list[dict[str, Any]]: ...


ROUTER = (RouterProcess, RouterSwitch, HealthVerdicts, OpenRequests, ServersReadBack,
          RouterMetrics, Mirroring)
COMPUTE = (Sweeper, OrphanFinder, TamperCheck, ImageFileReader, TestinfraBackend, ExitStatus,
           ReleaseTerminator, RemoteLogs)
BUILDER = (ImageCheck, Resolver, SpecLocator)
METRICS = (MetricReplay,)
PLATFORM = (OwnDrift,)


def declared(part: type, among: Sequence[type]) -> set[str]:
    """The capabilities in `among` that the class `part` names among its bases (for the
    contract suites)."""
    return {cap.__name__ for cap in among if cap in part.__mro__}


def answered(part: type, among: Sequence[type]) -> set[str]:
    """The capabilities in `among` that `isinstance` finds on instances of `part` (what the core
    sees): the contract suites assert it equals `declared`, so no method matches a capability by
    chance and no declared one is missing."""
    return {cap.__name__ for cap in among if issubclass(part, cap)}
