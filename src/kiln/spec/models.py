"""Typed models of kiln.yaml (v1). Pure: no I/O here; loading lives in `loader`."""

# No `from __future__ import annotations`: pydantic would compile and evaluate every annotation
# string at start-up (part of every command's, so every rollout's, overhead); names that
# exist only later are quoted.
import math
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kiln.spec.aws import AwsSettings
from kiln.spec.podman import DebianBase, Logs, Resources

NAME_RE = r"^[a-z][a-z0-9-]{0,39}$"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _finite(value: int | float, message: str) -> float:
    """float(value), refusing inf/nan and ints too large for a float (YAML allows both)."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{message}, got a number too large") from None
    if not math.isfinite(number):
        raise ValueError(f"{message}, got {value!r}")
    return number


def parse_duration(value: Any) -> float:
    """'500ms' | '30s' | '5m' | '1h' | number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 500ms, 30s or 5m")
    if isinstance(value, int | float):
        seconds = _finite(value, "expected a duration like 500ms, 30s or 5m")
        if seconds < 0:
            raise ValueError("expected a non-negative duration")
        return _capped(seconds)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return _capped(_finite(float(m.group(1)) * _UNITS[m.group(2)],
                                   "duration too large"))
    raise ValueError(f"expected a duration like 500ms, 30s or 5m, got {value!r}")


MAX_DURATION = 30 * 24 * 3600.0
"""No pause, timeout or deadline kiln waits on is longer than 30 days (`99999999999h` is a typo)."""


def _capped(seconds: float) -> float:
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {format_duration(seconds)} is longer than the 30 days "
                         "kiln accepts (720h)")
    return seconds


def positive(seconds: float, what: str) -> float:
    if seconds <= 0:
        raise ValueError(f"{what} must be above 0, got {format_duration(seconds)}")
    return seconds


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_VALUE = 32 * 1024
"""Bytes per environment value (Linux allows 128 KiB per string; a 200 KB value fails exec)."""
RISKY_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP",
             "PYTHONHOME", "PYTHONINSPECT", "BASH_ENV", "ENV", "PATH")
"""Keys that change what code runs: allowed, but `validate` warns about them."""


def check_env(env: dict[str, str], what: str) -> dict[str, str]:
    """Names a process can receive (no `=`, no NUL, shell-like), values without NUL, capped."""
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            raise ValueError(f"{what} name {key!r}: expected letters, digits and _ "
                             "(not starting with a digit)")
        if "\0" in value:
            raise ValueError(f"{what} {key}: value contains a NUL byte")
        if len(value.encode()) > MAX_ENV_VALUE:
            raise ValueError(f"{what} {key}: value is {len(value.encode())} bytes, at most "
                             f"{MAX_ENV_VALUE} allowed")
    return env


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


def parse_fraction(value: Any) -> float:
    """'25%' -> 0.25; a bare number is already a fraction (0.25)."""
    if isinstance(value, bool):
        raise ValueError("expected a percentage like 25% or a fraction like 0.25")
    if isinstance(value, int | float):
        return _finite(value, "expected a percentage like 25% or a fraction like 0.25")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ValueError(f"expected a percentage like 25% or a fraction like 0.25, got {value!r}")


def parse_hostport(value: Any) -> str:
    """'127.0.0.1:8080' (host defaults to 127.0.0.1 when only a port is given)."""
    if isinstance(value, bool):
        raise ValueError("expected host:port like 127.0.0.1:8080")
    if isinstance(value, int):
        value = f"127.0.0.1:{value}"
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep:
            host, port = "127.0.0.1", value
        if port.isdigit() and 0 < int(port) < 65536 and re.match(r"^[A-Za-z0-9.\-]+$", host):
            return f"{host}:{int(port)}"
    raise ValueError(f"expected host:port like 127.0.0.1:8080, got {value!r}")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$",
                    "description": "duration: 500ms, 30s, 5m, 1h or seconds"}),
]
Fraction = Annotated[
    float,
    BeforeValidator(parse_fraction),
    WithJsonSchema({"type": ["string", "number"], "description": "percentage (25%) or fraction"}),
]
HostPort = Annotated[
    str,
    BeforeValidator(parse_hostport),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9.\-]+:\d+$"}),
]
Name = Annotated[str, Field(pattern=NAME_RE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---------------------------------------------------------------- image steps


class CopyStep(_Model):
    """Copy a file or folder (relative to kiln.yaml) into the image."""

    source: str = Field(alias="copy", min_length=1)
    to: str = "."

    @field_validator("source")
    @classmethod
    def _inside_project(cls, v: str) -> str:
        parts = [p for p in v.replace("\\", "/").split("/") if p not in ("", ".")]
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                break
        if v.startswith("/") or depth < 0 or "\0" in v:
            raise ValueError(f"copy source {v!r} is outside the project: expected a path "
                             "relative to kiln.yaml's folder")
        return v


class RunStep(_Model):
    """Run a shell command with the image root as working directory."""

    run: str = Field(min_length=1)
    timeout: Duration = 600.0


class EnvStep(_Model):
    """Set environment variables for later `run` steps and for instances."""

    env: dict[str, str]

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v, "env")


class WorkdirStep(_Model):
    """Working directory (inside the image) for later `run` steps."""

    workdir: str


def _project_path(value: str) -> str:
    """A path relative to kiln.yaml that stays inside the project (existence is checked at bake)."""
    norm = posixpath.normpath(value)
    if value.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"expected a path inside the project, relative to kiln.yaml, got {value!r}")
    return value


def _path_list(value: Any) -> Any:
    """One path or a list of them ('a:b' like Ansible's and Puppet's own search paths)."""
    if isinstance(value, str):
        return [part for part in value.split(":") if part]
    return value


ProjectPath = Annotated[str, Field(min_length=1), AfterValidator(_project_path)]


def url_path(value: str) -> str:
    """A request path: it starts with / and has no whitespace or control characters (it goes
    into a request line, and into HAProxy's health map, one line per release)."""
    if not value.startswith("/") or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"expected a path starting with / (no spaces), got {value!r}")
    return value


UrlPath = Annotated[str, AfterValidator(url_path)]
ProjectPaths = Annotated[list[ProjectPath], BeforeValidator(_path_list),
                         WithJsonSchema({"anyOf": [{"type": "string"},
                                                   {"type": "array", "items": {"type": "string"}}],
                                         "description": "path(s) relative to kiln.yaml"})]


class AnsibleStep(_Model):
    """Apply an Ansible playbook to the image being built (podman platform)."""

    class Spec(_Model):
        playbook: ProjectPath
        extra_vars: dict[str, Any] = Field(default_factory=dict)
        roles_path: ProjectPaths = Field(default_factory=list)
        """Extra role folders; the playbook's own roles/ folder is always searched."""
        timeout: Duration = 1800.0

    ansible: Spec


class PuppetStep(_Model):
    """`puppet apply` a manifest inside the image being built (podman platform)."""

    class Spec(_Model):
        manifest: ProjectPath
        modulepath: ProjectPaths = Field(default_factory=list)
        timeout: Duration = 1800.0

    puppet: Spec


PROVISIONER_KEYS = ("ansible", "puppet")
STEP_KEYS = ("copy", "run", "env", "workdir", *PROVISIONER_KEYS)
_STEP_CLASSES: dict[type[_Model], str] = {}


def _step_kind(value: Any) -> str | None:
    """Pick the step type by its key, so errors name the real bad field, not every union member."""
    if isinstance(value, dict):
        if "source" in value and "copy" not in value:  # populated by field name (model_dump)
            return "copy"
        return next((k for k in STEP_KEYS if k in value), None)
    return _STEP_CLASSES.get(type(value))


Step = Annotated[
    Annotated[CopyStep, Tag("copy")]
    | Annotated[RunStep, Tag("run")]
    | Annotated[EnvStep, Tag("env")]
    | Annotated[WorkdirStep, Tag("workdir")]
    | Annotated[AnsibleStep, Tag("ansible")]
    | Annotated[PuppetStep, Tag("puppet")],
    Discriminator(_step_kind, custom_error_type="unknown_step",
                  custom_error_message="unknown step; expected one of " + ", ".join(STEP_KEYS)),
]
_STEP_CLASSES.update({CopyStep: "copy", RunStep: "run", EnvStep: "env", WorkdirStep: "workdir",
                      AnsibleStep: "ansible", PuppetStep: "puppet"})


# ---------------------------------------------------------------- image tests


class HttpCheck(_Model):
    class Spec(_Model):
        path: UrlPath = "/"
        method: str = "GET"
        status: int = Field(200, ge=100, le=599)
        body_contains: str | None = None
        json_fields: dict[str, Any] | None = Field(None, alias="json")
        """JSON body fields that must equal these values (dotted paths allowed)."""
        timeout: Duration = 5.0

    http: Spec


class CommandCheck(_Model):
    class Spec(_Model):
        run: str = Field(min_length=1)
        exit_code: int = 0
        stdout_contains: str | None = None
        stderr_contains: str | None = None
        timeout: Duration = 30.0

    command: Annotated[
        Annotated[Spec, Tag("spec")] | Annotated[str, Tag("str")],
        Discriminator(lambda v: "str" if isinstance(v, str) else "spec"
                      if isinstance(v, dict | CommandCheck.Spec) else None,
                      custom_error_type="command_type",
                      custom_error_message="expected a command string or a mapping with run:"),
    ]

    @property
    def spec(self) -> "CommandCheck.Spec":
        c = self.command
        return CommandCheck.Spec(run=c) if isinstance(c, str) else c


class PortCheck(_Model):
    port: int = Field(ge=1, le=65535)
    timeout: Duration = 5.0


class FileCheck(_Model):
    class Spec(_Model):
        path: str = Field(min_length=1)
        exists: bool = True
        mode: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$")
        contains: str | None = None

    file: Spec


class TestinfraCheck(_Model):
    testinfra: str = Field(min_length=1)
    timeout: Duration = 120.0


CHECK_KEYS = ("http", "command", "port", "file", "testinfra")
_CHECK_CLASSES: dict[type[_Model], str] = {}


def _check_kind(value: Any) -> str | None:
    """Pick the check type by its key (see `_step_kind`)."""
    if isinstance(value, dict):
        return next((k for k in CHECK_KEYS if k in value), None)
    return _CHECK_CLASSES.get(type(value))


Check = Annotated[
    Annotated[HttpCheck, Tag("http")]
    | Annotated[CommandCheck, Tag("command")]
    | Annotated[PortCheck, Tag("port")]
    | Annotated[FileCheck, Tag("file")]
    | Annotated[TestinfraCheck, Tag("testinfra")],
    Discriminator(_check_kind, custom_error_type="unknown_check",
                  custom_error_message="unknown check; expected one of " + ", ".join(CHECK_KEYS)),
]
_CHECK_CLASSES.update({HttpCheck: "http", CommandCheck: "command", PortCheck: "port",
                       FileCheck: "file", TestinfraCheck: "testinfra"})


class ImageSpec(_Model):
    base: str | DebianBase = "python"
    """local: a Python runtime for the image's venv; podman: an image reference podman has, or
    {debian: SUITE, packages: [...]} built from the Debian archive."""
    steps: list[Step] = Field(default_factory=list)
    tests: list[Check] = Field(default_factory=list)
    network: Literal["default", "none"] = "default"
    """`none`: the bake's steps get no network at all (local: an empty network namespace;
    podman: `--network none`); the default lets package installs reach their index."""


# ---------------------------------------------------------------- services


class Health(_Model):
    path: UrlPath = "/healthz"
    interval: Duration = 1.0
    timeout: Duration = 1.0
    deadline: Duration = 30.0
    """How long new instances may take to become healthy before the rollout rolls back."""
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    """Failed checks in a row after which `kiln serve` replaces an instance that is still
    running (as ALB's UnhealthyThresholdCount, Kubernetes' failureThreshold)."""

    @field_validator("interval", "timeout", "deadline")
    @classmethod
    def _positive(cls, v: float) -> float:
        return positive(v, "a health check interval, timeout or deadline")


class RolloutStep(_Model):
    weight: int = Field(0, ge=0, le=100)
    pause: Duration | None = None
    """None: wait for `kiln promote`. 0: go on at once."""
    preview: bool = False
    """The new release is launched and tested but gets 0 % of ordinary traffic: only requests
    carrying `X-Kiln-Release: <release>` (header or cookie) reach it. First step only."""
    mirror: int | None = Field(None, ge=1, le=100)
    """Copy this share (percent; `100%` or 100) of live requests to the new release, whose
    answers are discarded: it is judged on real traffic before it serves anyone (Traefik)."""

    @field_validator("mirror", mode="before")
    @classmethod
    def _percent(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return int(v.removesuffix("%"))
            except ValueError:
                raise ValueError(f"expected a share like 100% or 10%, got {v!r}") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _weight_or_preview(cls, data: Any) -> Any:
        if isinstance(data, dict) and "weight" not in data and not data.get("preview") \
                and data.get("mirror") is None:
            raise ValueError("a step needs a weight (0-100), preview: true or mirror: N%")
        return data

    @model_validator(mode="after")
    def _preview_weight(self) -> "RolloutStep":
        if self.preview and self.weight:
            raise ValueError(f"a preview step sends 0% of ordinary traffic; remove weight: "
                             f"{self.weight}")
        if self.mirror is not None and (self.weight or self.preview):
            raise ValueError("a mirror step serves no user (its answers are discarded); remove "
                             + ("weight" if self.weight else "preview"))
        return self


STICKY_DESIGN_EFFECT = 5.0
"""The judge's conservative correction for `rollout.sticky` when `analysis.design_effect` is not
given: sessions of up to 5 fully correlated requests (or 9 at ρ = 0.5) count as one sample."""


class Metric(_Model):
    """A metric of the user's own (PromQL, per release) that the judge compares canary against
    baseline like 5xx (`count`: failures of a total) or like latency (`value`: a distribution of
    the query's per-window values). `$release` and `$window` are substituted."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    """Prometheus-style (checkout_failures): lowercase, digits, _ and -."""
    kind: Literal["count", "value"]
    failures: str | None = None
    total: str | None = None
    query: str | None = None
    max_increase: Fraction
    """count: allowed increase of the failure rate in points (1% = 0.01); value: relative."""
    direction: Literal["higher", "lower"] = "higher"
    """Which way is worse: `lower` judges 1 - rate (count) or 1 / value (value)."""
    dry_run: bool = False

    @field_validator("max_increase")
    @classmethod
    def _increase(cls, v: float) -> float:
        if not 0.0 <= v <= 10.0:
            raise ValueError(f"expected an increase like 1% or 25%, got {v:.4g}")
        return v

    @model_validator(mode="after")
    def _queries(self) -> "Metric":
        want = ("failures", "total") if self.kind == "count" else ("query",)
        queries = {"failures": self.failures, "total": self.total, "query": self.query}
        unwanted = [k for k, q in queries.items() if k not in want and q is not None]
        if unwanted:
            raise ValueError(f"a {self.kind} metric takes {' and '.join(want)}, "
                             f"not {', '.join(unwanted)}")
        for k in want:
            q = queries[k]
            if not q or "$release" not in q:
                raise ValueError(f"{k}: expected a PromQL query with $release in it "
                                 f"(kiln substitutes each release), got {q!r}")
        return self


def _http_url(v: str, like: str) -> str:
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
        raise ValueError(f"expected an http(s) URL like {like}, got {v!r}")
    return v


class Prometheus(_Model):
    """A Prometheus of the user's own that `analysis.metrics` are read from."""

    url: str
    """Base URL, e.g. http://127.0.0.1:9090 (kiln asks its /api/v1/query)."""

    _url = field_validator("url")(lambda v: _http_url(v, "http://127.0.0.1:9090"))


class Hook(_Model):
    """A webhook (`notify:`) that rollout events are POSTed to, signed with `secret`."""

    url: str
    events: list[str] = Field(default_factory=list)
    """Event kinds (globs like rollout.*); empty: all."""
    secret: str | None = None
    """`env:NAME`: the HMAC key is read from the environment, never written in the spec."""

    _url = field_validator("url")(lambda v: _http_url(v, "http://127.0.0.1:9000/hook"))

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("env:") and ENV_NAME_RE.match(v[4:])):
            raise ValueError(f"expected a reference like env:HOOK_SECRET, got {v!r}")
        return v


class Analysis(_Model):
    max_error_rate_increase: Fraction = 0.01
    max_error_rate: Fraction | None = None
    max_latency_increase: Fraction = 0.25
    min_requests: int = 100
    on_no_data: Literal["pause", "rollback", "promote"] = "pause"
    alpha: float = 0.01
    """False-alarm budget of the sequential judge for a whole rollout (the "fail" side)."""
    confidence: float = 0.95
    """Confidence of the bounds behind "pass": a canary worse than allowed passes a step with
    probability at most 1 - confidence, however often the judge looks."""
    design_effect: float = Field(1.0, ge=1.0, le=1000.0)
    """How many requests count as one independent sample (Kish's design effect, 1 + (m-1)ρ for
    sessions of m requests correlated by ρ): the judge divides its counts by it. 1 = requests
    are independent; with `rollout.sticky` and no value given, STICKY_DESIGN_EFFECT
    (docs/judge.md, "Sticky canaries")."""
    warmup: Duration = 0.0
    """Requests an instance serves while younger than this are recorded and shown but not
    judged (docs/decisions/judge-warmup.md); 0 judges every request."""
    metrics: list[Metric] = Field(default_factory=list)
    """The user's own metrics, judged with 5xx and latency under the one budget `alpha`."""
    dry_run: bool = False
    """Judge and record ("would have rolled back at step 1: ..."), never act: the rollout goes
    on as if every step passed (docs/judge.md, "Dry run")."""

    @field_validator("max_error_rate_increase", "max_error_rate")
    @classmethod
    def _rate_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"expected a rate between 0% and 100%, got {v:.4g}")
        return v

    @field_validator("max_latency_increase")
    @classmethod
    def _latency(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"expected a non-negative relative increase like 25%, got {v:.4g}")
        return v

    @field_validator("min_requests")
    @classmethod
    def _min_requests(cls, v: int) -> int:
        if v < 0:
            raise ValueError("expected a non-negative number of requests")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError("expected a false-alarm rate between 0 and 0.5")
        return v

    @field_validator("confidence")
    @classmethod
    def _confidence(cls, v: float) -> float:
        if not 0.5 <= v < 1.0:
            raise ValueError(f"expected a confidence between 0.5 and 1 (e.g. 0.95), got {v:.4g}")
        return v

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[Metric]) -> list[Metric]:
        names = [m.name for m in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric names must be unique, seen twice: {', '.join(twice)}")
        return v

    @model_validator(mode="after")
    def _no_blind_promote(self) -> "Analysis":
        if self.min_requests == 0 and self.on_no_data == "promote":
            raise ValueError("min_requests 0 with on_no_data promote would pass a canary that "
                             "served nothing; set min_requests > 0 or on_no_data pause|rollback")
        return self


class MetricsEndpoint(_Model):
    """Where each instance serves its own metrics (Prometheus' text format): kiln's Prometheus
    scrapes it, labelled with the instance's release, service and id."""

    path: UrlPath = "/metrics"


class WarmupRequests(_Model):
    """GETs sent to each new instance after its health check, before it enters rotation."""

    path: UrlPath = "/"
    count: int = Field(200, ge=1, le=100_000)
    timeout: Duration = 30.0
    """The bound: the instance enters rotation after this long however many were sent."""


MAX_LOAD_RATE = 1000.0
"""Requests per second a synthetic load may ask for (a quiet service's evidence, not a stress test)."""


def parse_rate(value: Any) -> float:
    """'20/s' -> 20.0 requests per second (also '600/m')."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m)\s*$", value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"expected a rate like 20/s, got {value!r}")
    rate = float(m.group(1)) / (60.0 if m.group(2) == "m" else 1.0)
    if not 0 < rate <= MAX_LOAD_RATE:
        raise ValueError(f"expected a rate above 0 and at most {MAX_LOAD_RATE:g}/s, got {value!r}")
    return rate


Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    PlainSerializer(lambda v: f"{v:g}/s", return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?/(s|m)$",
                    "description": "requests per second (20/s) or minute (600/m)"}),
]


class SyntheticLoad(_Model):
    """Bounded GETs through the router during judged canary steps (kiln.rollout.synthetic), so
    a quiet service gathers the evidence a pass costs; off when absent."""

    path: str | list[str] = "/"
    """The GET path(s) to request, in turn; only paths the spec names are ever requested."""
    rate: Rate
    method: Literal["GET"] = "GET"
    """Only GET: a synthetic request must not change anything."""
    max_duration: Duration | None = None
    """At most this long per step; default the step's pause plus progress_deadline."""

    @field_validator("method", mode="before")
    @classmethod
    def _get_only(cls, v: Any) -> Any:
        if v != "GET":
            raise ValueError(f"only GET is sent (a synthetic request must not change "
                             f"anything), got {v!r}")
        return v

    @field_validator("path")
    @classmethod
    def _paths(cls, v: str | list[str]) -> str | list[str]:
        for path in [v] if isinstance(v, str) else v or [""]:
            url_path(path)
        return v

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class Rollout(_Model):
    strategy: Literal["canary", "blue-green", "rolling"] = "canary"
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep(weight=10, pause=0.0),
                                 RolloutStep(weight=50, pause=0.0)]
    )
    analysis: Analysis | None = None
    scale_down_delay: Duration = 30.0
    max_surge: int = Field(1, ge=0)
    max_unavailable: int = Field(0, ge=0)
    drain_timeout: Duration = 10.0
    progress_deadline: Duration = 600.0
    """How long a judged step may stay undecided after its pause before `on_no_data: pause`
    gives up and rolls back (Argo Rollouts' progressDeadlineSeconds)."""
    sticky: bool = False
    """Pin each client (by a router cookie, `kiln-<service>`) to the release it first got, across
    weight changes, until that release leaves rotation. Off when absent, so existing specs keep
    per-request splits (and the judge its independent samples); `kiln init` writes true."""
    warmup_requests: WarmupRequests | None = None
    """Pre-warming of each new instance (kiln.rollout.prewarm); off when absent."""
    load: SyntheticLoad | None = None
    """Synthetic GETs through the router during judged canary steps; off when absent."""

    @model_validator(mode="before")
    @classmethod
    def _sticky_samples(cls, data: Any) -> Any:
        """A client's requests all land on one release: they are not independent samples."""
        if isinstance(data, dict) and data.get("sticky") is True \
                and isinstance(data.get("analysis"), dict) \
                and "design_effect" not in data["analysis"]:
            data = {**data, "analysis": {**data["analysis"],
                                         "design_effect": STICKY_DESIGN_EFFECT}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "Rollout":
        if self.strategy == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("rolling needs max_surge or max_unavailable above 0")
        if self.load is not None and (self.strategy != "canary" or self.analysis is None):
            raise ValueError("load: synthetic load runs during judged canary steps; it needs "
                             "strategy canary and an analysis: block")
        late = [i for i, step in enumerate(self.steps) if step.preview and i > 0]
        if late:
            raise ValueError(f"steps[{late[0]}]: preview: true is only for the first step")
        served = next((i for i, step in enumerate(self.steps) if step.weight), len(self.steps))
        late = [i for i, step in enumerate(self.steps) if step.mirror and i > served]
        if late:
            raise ValueError(f"steps[{late[0]}]: a mirror step comes before the first weighted "
                             f"step (steps[{served}]): its point is a verdict before any user "
                             "is served")
        if self.strategy != "canary" and any(step.mirror for step in self.steps):
            raise ValueError(f"steps: mirror steps need strategy canary (not {self.strategy})")
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            if after.weight < before.weight:
                raise ValueError(f"steps: weight goes down from {before.weight} to "
                                 f"{after.weight}; each step must keep or raise the canary's "
                                 "share (use `kiln abort` to take it back)")
        return self


class ServiceSpec(_Model):
    image: str
    command: str = Field(min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    listen: HostPort
    replicas: int = Field(1, ge=1, le=64)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    health: Health = Field(default_factory=lambda: Health())
    rollout: Rollout = Field(default_factory=lambda: Rollout())
    stop_timeout: Duration = 10.0
    read_only_paths: list[str] = Field(default_factory=list)
    """Host paths bound read-only into a local instance's sandbox, beyond the system paths."""
    resources: Resources = Field(default_factory=lambda: Resources())
    """cpus, memory, pids of each instance (defaults in kiln.spec.podman: 512M, 512 pids)."""
    capabilities: list[Annotated[str, Field(pattern=r"^[A-Z_]+$")]] = Field(default_factory=list)
    """podman: capabilities the app needs beyond none (e.g. NET_BIND_SERVICE)."""
    logs: Logs = Field(default_factory=lambda: Logs())
    """Rotation of each instance's log (default 10M, 2 kept)."""
    egress: bool = False
    """podman: the project's network reaches beyond the host only if a service asks for it."""
    metrics: MetricsEndpoint | None = None
    """Scraped by kiln's own Prometheus (unless `prometheus: {url}` names the user's)."""

    @field_validator("env", mode="before")
    @classmethod
    def _env_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                    if isinstance(x, int | float | bool) else x for k, x in v.items()}
        return v

    @field_validator("env", mode="after")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v, "env")

    @field_validator("stop_timeout")
    @classmethod
    def _stop_timeout(cls, v: float) -> float:
        return positive(v, "stop_timeout")

    def env_warnings(self) -> list[str]:
        """Keys that change which code runs (LD_PRELOAD, PYTHONPATH...): allowed, but said."""
        return [f"env {k} changes what code the instance runs; make sure it is meant"
                for k in [*self.env, *self.secrets] if k in RISKY_ENV]

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, v: dict[str, str]) -> dict[str, str]:
        check_env({k: "" for k in v}, "secret")
        for key, ref in v.items():
            if not re.match(r"^(env|file|ssm|secretsmanager):.+$", ref):
                raise ValueError(f"secret {key}: expected env:NAME, file:PATH, "
                                 f"ssm:/parameter/name or secretsmanager:ARN, got {ref!r}")
        return v

    @field_validator("read_only_paths")
    @classmethod
    def _absolute_paths(cls, v: list[str]) -> list[str]:
        for path in v:
            if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
                raise ValueError(f"read_only_paths: expected an absolute path without '..', "
                                 f"got {path!r}")
            if path.rstrip("/") == "":
                raise ValueError("read_only_paths: '/' would expose the whole host")
        return v

    @field_validator("listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        host = v.rpartition(":")[0]
        if not (host.startswith("127.") or host == "localhost"):
            raise ValueError(f"listen must be a loopback address (127.0.0.0/8), got {host}")
        return v


def _secret_platform(platform: str, name: str, svc: ServiceSpec) -> list[str]:
    """aws resolves secrets on the instance (ssm:, secretsmanager:); the others on this machine
    (env:, file:). A reference the platform cannot resolve is refused, naming the alternative."""
    out = []
    for key, ref in svc.secrets.items():
        scheme = ref.partition(":")[0]
        if platform == "aws" and scheme in ("env", "file"):
            out.append(f"services.{name}.secrets.{key}: {scheme}: secrets are not supported on "
                       "platform aws (they would be stored in user data); use "
                       "ssm:/parameter/name or secretsmanager:ARN, fetched by the instance "
                       "profile")
        elif platform != "aws" and scheme in ("ssm", "secretsmanager"):
            out.append(f"services.{name}.secrets.{key}: {scheme}: references are resolved by "
                       f"an AWS instance profile (platform aws); on {platform} use env:NAME or "
                       "file:PATH")
    return out


class Spec(_Model):
    project: Name
    platform: Literal["local", "podman", "aws"] = "local"
    aws: AwsSettings | None = None
    """Settings of `platform: aws` (region, subnets, base AMI...)."""
    router: Literal["traefik", "haproxy"] = "traefik"
    """Which load balancer serves the project's services (local platform)."""
    sandbox: Literal["bwrap", "none"] = "bwrap"
    """local: bake steps and instances run in a bubblewrap sandbox, and kiln refuses to run
    without one; `none` runs them as plain processes with kiln's privileges (hosts without user
    namespaces), and every command says so."""
    router_admin: HostPort | None = None
    """Loopback HOST:PORT of Traefik's admin API (metrics, server health); unset: a free port
    picked at the router's first start and kept (docs/decisions/router-admin-address.md)."""
    images: dict[Name, ImageSpec] = Field(default_factory=dict)
    services: dict[Name, ServiceSpec] = Field(default_factory=dict)
    prometheus: Prometheus | None = None
    notify: list[Hook] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> "Spec":
        """One line per problem, each starting with its field path (the loader finds its line)."""
        problems: list[str] = []
        if self.platform == "aws" and self.aws is None:
            problems.append("aws: platform aws needs an aws: block with at least region, "
                            "subnets and base_ami")
        if self.platform not in ("podman", "aws"):
            problems += [f"images.{name}.steps[{i}]: {kind} steps run on platform podman "
                         f"or aws (this project uses {self.platform})"
                         for name, image in self.images.items()
                         for i, step in enumerate(image.steps)
                         if (kind := _step_kind(step)) in PROVISIONER_KEYS]
        if self.sandbox == "none" and self.platform != "local":
            problems.append(f"sandbox: `sandbox: none` applies to platform local (this project "
                            f"uses {self.platform}, which isolates without bubblewrap)")
        problems += self._router_admin_problems()
        problems += self._mirror_problems()
        listens: dict[str, str] = {}
        for name, svc in self.services.items():
            problems += _secret_platform(self.platform, name, svc)
            if svc.image not in self.images:
                known = ", ".join(sorted(self.images)) or "none defined"
                problems.append(f"services.{name}.image: unknown image {svc.image!r} "
                                f"(images: {known})")
            if svc.listen in listens:
                problems.append(f"services.{name}.listen: {svc.listen} is already used by "
                                f"service {listens[svc.listen]}")
            else:
                listens[svc.listen] = name
            problems += self._prometheus_problems(name, svc)
            if svc.rollout.load is not None and self.platform == "aws":
                problems.append(f"services.{name}.rollout.load: synthetic load is sent through "
                                "kiln's own router (platform local or podman), not an ALB yet")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _prometheus_problems(self, name: str, svc: ServiceSpec) -> list[str]:
        """`analysis.metrics` need a Prometheus: the user's (`prometheus.url`) or kiln's own,
        which scrapes the services with `metrics:` (on this machine: not on aws)."""
        analysis = svc.rollout.analysis
        if self.prometheus is not None:
            return []
        if svc.metrics is not None and self.platform == "aws":
            return [f"services.{name}.metrics: kiln's own Prometheus scrapes instances on this "
                    "machine (platform local or podman); on aws set prometheus: {url: ...}"]
        if analysis is not None and analysis.metrics and svc.metrics is None:
            return [f"services.{name}.rollout.analysis.metrics: metrics are read from "
                    f"Prometheus; set services.{name}.metrics: {{path: /metrics}} (kiln runs "
                    "one that scrapes the service) or prometheus: {url: ...} (your own)"]
        return []

    def _mirror_problems(self) -> list[str]:
        """Only Traefik copies requests (its mirroring service): one line per service."""
        if self.platform != "aws" and self.router == "traefik":
            return []
        where = "the ALB (platform aws)" if self.platform == "aws" else f"router {self.router}"
        out = []
        for name, svc in self.services.items():
            first = next((i for i, step in enumerate(svc.rollout.steps) if step.mirror), None)
            if first is not None:
                out.append(f"services.{name}.rollout.steps[{first}].mirror: mirroring is not "
                           f"available on {where}; use router: traefik or a weighted step")
        return out

    def _router_admin_problems(self) -> list[str]:
        """`router_admin` only where kiln runs Traefik itself, on loopback, on its own port."""
        admin = self.router_admin
        if admin is None:
            return []
        if self.platform == "aws":
            return ["router_admin: platform aws routes through an Application Load Balancer; "
                    "there is no router admin address to set (remove router_admin)"]
        if self.router != "traefik":
            return [f"router_admin: applies to router traefik; router {self.router} is "
                    "administered through a unix socket in .kiln/ (remove router_admin)"]
        host = admin.rpartition(":")[0]
        if not (host.startswith("127.") or host == "localhost"):
            return [f"router_admin: expected a loopback HOST:PORT (127.0.0.0/8), got {admin}"]
        taken = [n for n, svc in self.services.items() if svc.listen == admin]
        if taken:
            return [f"router_admin: {admin} is services.{taken[0]}.listen; expected a port of "
                    "its own"]
        return []

    def warnings(self) -> list[str]:
        """Legal but worth a second look (env keys like LD_PRELOAD), one line each."""
        out = [f"services.{name}.{w}" for name, svc in self.services.items()
               for w in svc.env_warnings()]
        if self.sandbox == "none":
            out.append("sandbox: none: bake steps and instances run unsandboxed, with kiln's "
                       "privileges (they can read and write the host)")
        for name, img in self.images.items():
            for step in img.steps:
                if isinstance(step, EnvStep):
                    out += [f"images.{name}: env {k} changes what code runs; make sure it is "
                            "meant" for k in step.env if k in RISKY_ENV]
        return out
