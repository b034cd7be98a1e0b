"""The seams between kiln's pure core and the world, and the value types that cross them.

Each platform (local, podman, aws) supplies a Builder, Compute, Router and MetricSource. A fake of
each ships in `kiln.platforms.fake` so the core can be tested without processes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from kiln.errors import StateError
from kiln.spec.models import Health, ImageSpec, ServiceSpec


@dataclass(frozen=True)
class Image:
    """A sealed, content-addressed image. `digest` is 'sha256:<hex>' of its Merkle tree."""

    name: str
    digest: str
    ref: str
    """Where the platform finds it: a store folder (local), an image id (podman), an AMI (aws)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment set by `env` steps; instances get it under the service's own env."""
    workdir: str = ""
    """Where the service command and `exec` start, set by the last `workdir` step (as a
    Dockerfile's WORKDIR): relative to the image root on local, a container path on podman;
    "" is the image root."""


@dataclass(frozen=True)
class ReleaseImage:
    """The image a release runs, as recorded when the release was made. The image store keys
    images by their files' digest, so two bakes with the same files but other `env`/`workdir`
    steps share one row (the last bake's): the release's own record says which it was."""

    digest: str
    env: Mapping[str, str] | None = field(default=None, hash=False)
    """None (with `workdir`): made before releases recorded it; the stored image's own."""
    workdir: str | None = None

    def applied_to(self, stored: Image) -> Image:
        """The stored image of this digest, with the env and workdir this release was made with."""
        if self.env is None:
            return stored
        return replace(stored, env=dict(self.env), workdir=self.workdir or "")

    @classmethod
    def of(cls, image: Image) -> ReleaseImage:
        return cls(image.digest, dict(image.env), image.workdir)


RELEASE_HINT = "kiln deploy makes a new release from today's kiln.yaml; kiln history lists them"


@dataclass(frozen=True, eq=False)
class Release:
    """What a service runs: one image with the service config recorded when the release was
    made. Never changed once created: every launch of it (rollout, canary, restore, rollback,
    heal, on every platform) runs `spec`, never today's kiln.yaml.

    `config` is the record as stored (JSON); `spec` validates it under today's model on first
    use, so a record a newer kiln refuses is an error naming the release only where the spec is
    needed: routing needs only `health`, identity (status, gc, drift) nothing of it."""

    id: str  # e.g. "web-r3"
    service: str
    number: int
    image: ReleaseImage
    config: Mapping[str, Any]
    config_digest: str

    @classmethod
    def of(cls, id: str, service: str, number: int, image: ReleaseImage, spec: ServiceSpec,
           config_digest: str) -> Release:
        """A release made from a spec in hand (a new release, a test or dev instance)."""
        rel = cls(id, service, number, image, spec.model_dump(mode="json", by_alias=True),
                  config_digest)
        rel.__dict__["spec"] = spec  # cached_property's slot: no second validation
        return rel

    @property
    def image_digest(self) -> str:
        return self.image.digest

    @cached_property
    def spec(self) -> ServiceSpec:
        """The service config this release was made with (command, env, secrets references,
        health, port, resources, replicas, stop timeout)."""
        try:
            return ServiceSpec.model_validate(dict(self.config))
        except ValidationError as exc:
            raise StateError(f"release {self.id}: its recorded configuration does not load "
                             f"({_first_error(exc)})", hint=RELEASE_HINT) from exc

    @cached_property
    def health(self) -> Health:
        """Just the recorded health check: a rule added since to other keys does not stop
        routing a release that already runs."""
        try:
            return Health.model_validate(self.config.get("health") or {})
        except ValidationError as exc:
            raise StateError(f"release {self.id}: its recorded health check does not load "
                             f"({_first_error(exc)})", hint=RELEASE_HINT) from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Release):
            return NotImplemented
        return (self.id, self.image, self.config_digest) == (other.id, other.image,
                                                             other.config_digest)

    def __hash__(self) -> int:
        return hash((self.id, self.image.digest, self.config_digest))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top)"
    return f"{where}: {err['msg']}"


@dataclass(frozen=True)
class Instance:
    id: str  # e.g. "web-r3-a1b2c3"
    service: str
    release_id: str
    host: str  # loopback address allocated to this instance
    port: int
    handle: Mapping[str, str] = field(default_factory=dict, hash=False)
    """What only the platform knows about the instance (local: pid, pid_start, workdir; podman:
    container). Stored as JSON in the `instances` row; only the platform reads its keys. The first
    item names it for people (`label`)."""

    @property
    def label(self) -> str:
        """'pid 4242', 'container 3f2a…': the handle's first item, for status tables."""
        for key, value in self.handle.items():
            return f"{key} {value}"
        return ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Observed:
    """What really runs, as the platform sees it."""

    instance_id: str
    alive: bool


PREVIEW_HEADER = "X-Kiln-Release"
"""A request naming a release in preview by this header (or a cookie of this name) reaches it."""


@dataclass(frozen=True)
class Backend:
    """One release's share of a service in the router."""

    release_id: str
    weight: int
    servers: Sequence[str]  # "host:port"
    health: Health | None = None
    """The release's own health check (its config may differ from the spec's current one)."""
    preview: bool = False
    """Also route requests carrying `X-Kiln-Release: <release_id>` (header, or a cookie of that
    name) to this release, whatever its weight: at weight 0 it gets only those."""
    mirror: int = 0
    """Percent of the service's live requests copied to this release, whose answers are
    discarded (routers declaring `Mirroring` only)."""


@dataclass(frozen=True)
class Sample:
    """One request seen by the router (an access-log line): what a log-reading MetricSource
    aggregates into `Window`s."""

    release_id: str
    time: float  # unix seconds
    status: int
    duration: float  # seconds
    error: bool  # 5xx or connection failure
    instance: str = ""
    """The backend address that served it ("" when the log names none): the warm-up's key."""


@dataclass(frozen=True)
class Window:
    """What one release served in one window of time: the aggregate a MetricSource answers.

    Counts of failures of a total, and the latency distribution of the successful requests as
    a histogram over kiln's log-spaced bins (`kiln.analysis.summary.bin_index`, 1% wide): the
    judge needs nothing finer (docs/decisions/one-judge.md). A source that knows only a mean
    per window (CloudWatch) gives one count at the mean.
    """

    release_id: str
    start: float
    """Unix seconds; with `release_id`, the window's identity."""
    length: float
    """Seconds."""
    requests: int
    errors: int
    """5xx or connection failures, of `requests`."""
    latency: Mapping[int, int] = field(default_factory=dict, hash=False)
    """Successful requests per latency bin."""
    instance: str = ""
    """The instance (address) that served them, when the source knows it; "" for the whole
    release. Only the warm-up reads it (kiln.analysis.warmup)."""


@dataclass(frozen=True)
class RequestCounts:
    """The router's own count of the requests that ended on each release, for the judge's
    cross-check against the access log (one line per request, whatever its status).

    Counted since the router process `epoch` names started: a restarted router starts again at
    0 with a new epoch. Within an epoch a release's count does not shrink when its servers are
    removed (it may dip briefly while a failed request is redispatched to another release).
    """

    epoch: str
    releases: Mapping[str, int]
    source: str
    """Whose counters, for people: 'traefik', 'haproxy', 'fake'."""


class Builder(Protocol):
    def build(
        self,
        name: str,
        spec: ImageSpec,
        *,
        base_dir: Path,
        no_cache: bool = False,
        progress: Callable[[StepEvent], None] | None = None,
    ) -> Image: ...


@dataclass(frozen=True)
class StepEvent:
    """Progress of one bake step."""

    index: int
    total: int
    description: str
    status: Literal["running", "ran", "cached", "failed"]
    duration: float = 0.0
    key: str = ""
    output: str = ""
    """One line a running step printed (ansible/puppet steps stream theirs), else empty."""


class Compute(Protocol):
    def launch(
        self, service_name: str, service: ServiceSpec, release: Release, image: Image, count: int,
        *, env: Mapping[str, str], kind: Literal["service", "test", "dev"] = "service",
    ) -> list[Instance]:
        """Start `count` new instances; returns at once (health is checked separately)."""
        ...

    def healthy(self, instance: Instance, health: Health) -> bool:
        """One health probe of the instance itself (not through the router)."""
        ...

    def terminate(self, instance: Instance, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout`. Idempotent."""
        ...

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        """Which of these really run (a reused pid is not ours)."""
        ...

    def exec(self, instance: Instance, command: str, *, timeout: float) -> ExecResult:
        """Run a shell command in the instance's environment (image root, env, venv on PATH)."""
        ...

    def log_path(self, instance: Instance) -> Path:
        """The file the instance's stdout/stderr go to."""
        ...


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class Router(Protocol):
    def ensure_running(self) -> None: ...

    def check_listen(self, service_name: str, listen: str) -> None:
        """Raise PlatformError when another process holds the listen address."""
        ...

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        """Replace the service's routing atomically; weight 0 takes a release out."""
        ...

    def remove_service(self, service_name: str) -> None: ...

    def verify(self, service_name: str) -> dict[str, int]:
        """release_id -> weight the router really serves."""
        ...

    def request_counts(self) -> RequestCounts | None:
        """Requests ended per release by the running router (None: not running, or it keeps
        no counters kiln can read)."""
        ...

    def stop(self) -> None: ...


class MetricSource(Protocol):
    """Aggregates per release and window, asked by time: one judge reads every source (the
    router's access log, CloudWatch, ...). A source that can also replay what it recorded in
    order declares `kiln.platforms.capabilities.MetricReplay`."""

    @property
    def name(self) -> str:
        """Whose numbers, for people and the judge's figures: 'access-log', 'cloudwatch'."""
        ...

    def windows(self, releases: Collection[str], since: float, until: float) -> list[Window]:
        """The releases' windows with requests that completed in [since, until] (unix
        seconds). A window still filling may be answered again with larger counts: the newest
        answer for a (release, start) replaces the earlier ones."""
        ...


class Platform(Protocol):
    """A platform's four parts, each built on first use (`kiln bake` never starts a router).

    Found by name in `kiln.platforms.registry`; `Project` asks it for its parts and never names it.
    """

    @property
    def builder(self) -> Builder: ...

    @property
    def compute(self) -> Compute: ...

    @property
    def router(self) -> Router: ...

    @property
    def metrics(self) -> MetricSource | None: ...

    def image(self, digest: str) -> Image:
        """A baked image by digest (NotFound when it is gone, e.g. after gc)."""
        ...

    def verify_image(self, digest: str) -> str | None:
        """None when the image is intact; else one line saying what was tampered with."""
        ...

    def remove_images(self, keep: set[str]) -> list[str]:
        """Delete every image whose digest is not in `keep` (rows and platform copies)."""
        ...

    def remove_build_cache(self) -> list[str]:
        """After `remove_images`: delete the intermediate images of the platform's step cache
        that no remaining image and no unfinished bake needs; one name per removed entry."""
        ...
