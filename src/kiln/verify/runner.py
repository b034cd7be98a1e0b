"""Run an image's checks against one throwaway instance, launched exactly as production would.

The instance is always disposed of (try/finally, also on ^C). Checks run in spec order; the first
check that needs the app (http, port, testinfra) waits for the service's health check, once. A
check that hangs is cut off at its timeout; an instance that never becomes healthy fails every
check that needs it, with the reason.

Images no service runs have no command to launch. Then the instance is an idle process
(`sleep`) in the image's environment, so `command` and `testinfra` checks still run where the
app would; `http` and `port` checks fail with a clear message. A caller that wants something
else passes its own `service`.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError
from kiln.platforms.base import Compute, ExecResult, Image, Instance, Release, ReleaseImage
from kiln.platforms.capabilities import ImageFileReader, TestinfraBackend
from kiln.spec.models import (
    Check,
    CommandCheck,
    FileCheck,
    Health,
    HttpCheck,
    ImageSpec,
    PortCheck,
    ServiceSpec,
    TestinfraCheck,
)
from kiln.verify import checks as ck
from kiln.verify.digest import suite_digest
from kiln.verify.remote import RemoteChecks
from kiln.verify.results import CheckResult, SuiteResult
from kiln.verify.testinfra_run import run_testinfra

IDLE_COMMAND = "exec sleep 2147483647"
"""What a test instance runs when no service uses the image (checks then use exec only)."""

HEALTH_POLL = 0.05
"""Seconds between health probes while waiting: the bench measures from 'healthy'."""

_GRACE = 2.0
"""Backstop on top of a check's own timeout, for an exec that ignores its timeout."""


@dataclass
class _Target:
    """The throwaway instance and what we know about it."""

    instance: Instance | None = None
    launch_error: str | None = None
    healthy: bool | None = None  # None: not checked yet
    health_error: str = ""
    healthy_at: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    """Secrets given to launch; passed again to exec where the platform accepts `env`."""


def run_checks(
    image: Image,
    image_spec: ImageSpec,
    *,
    compute: Compute,
    service_name: str,
    service: ServiceSpec | None,
    base_dir: Path,
    release: Release | None = None,
    env: Mapping[str, str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> SuiteResult:
    """Launch one test instance of `image`, run every check of `image_spec.tests`, dispose of it.

    `service` is the service that runs the image in production (its command, env, health); None
    when no service uses the image (see the module doc). `env` is the extra environment a deploy
    would pass to `Compute.launch` (resolved secrets). Never raises for a failing check; raises
    KilnError only for bad arguments. ^C disposes of the instance, then propagates.
    """
    started = time.time()
    digest = suite_digest(image_spec, base_dir)
    tests = list(image_spec.tests)
    target = _Target(extra_env=dict(env or {}))
    results: list[CheckResult] = []
    launch_spec = service or _idle_service(image.name)
    with contextlib.ExitStack() as stack:
        root = _image_files(compute, image, stack) if any(
            isinstance(c, FileCheck) for c in tests) else Path(image.ref) / "root"
        _run_all(tests, image, compute=compute, target=target, service_name=service_name,
                 service=service, launch_spec=launch_spec, release=release, env=env or {},
                 root=root, base_dir=base_dir, results=results, on_result=on_result)
    tail: tuple[str, ...] = ()
    if target.instance is not None and not all(r.passed for r in results):
        tail = log_lines(compute, target.instance, LOG_TAIL)
    return SuiteResult(
        log_tail=tail,
        passed=all(r.passed for r in results),
        results=tuple(results),
        started_at=started,
        finished_at=time.time(),
        suite_digest=digest,
        healthy_at=target.healthy_at,
        instance_id=target.instance.id if target.instance else None,
    )


def _run_all(tests: list[Check], image: Image, *, compute: Compute, target: _Target,
             service_name: str, service: ServiceSpec | None, launch_spec: ServiceSpec,
             release: Release | None, env: Mapping[str, str], root: Path | ck.ImageFiles,
             base_dir: Path, results: list[CheckResult],
             on_result: Callable[[CheckResult], None] | None) -> None:
    """Launch the instance if a check needs one, run every check in order, dispose of it."""
    try:
        if any(ck.needs_instance(c) for c in tests):
            try:
                target.instance = _launch(compute, service_name, launch_spec, image, release,
                                          env)
            except KilnError as exc:
                target.launch_error = f"could not launch a test instance: {exc}"
        for index, check in enumerate(tests):
            result = _run_one(index, check, compute=compute, target=target, service=service,
                              launch_spec=launch_spec, root=root, base_dir=base_dir)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if target.instance is not None:
            _dispose(compute, target.instance, launch_spec.stop_timeout)


def _image_files(compute: Compute, image: Image,
                 stack: contextlib.ExitStack) -> Path | ck.ImageFiles:
    """Where file checks read the image: the platform's own reader when it has one (podman's
    images are not folders), else the local image store's tree."""
    if not isinstance(compute, ImageFileReader):
        return Path(image.ref) / "root"
    try:
        files: ck.ImageFiles = stack.enter_context(compute.image_files(image))
    except KilnError as exc:
        return _Unreadable(f"cannot read image {image.name}: {exc}")
    return files


class _Unreadable:
    """ImageFiles of an image that could not be opened: every file check says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def stat(self, path: str) -> ck.FileStat | None:
        raise KilnError(self.reason)

    def read(self, path: str) -> bytes:
        raise KilnError(self.reason)


def _idle_service(image_name: str) -> ServiceSpec:
    return ServiceSpec(image=image_name, command=IDLE_COMMAND, listen="127.0.0.1:1",
                       stop_timeout=2.0)


def _launch(compute: Compute, service_name: str, service: ServiceSpec, image: Image,
            release: Release | None, env: Mapping[str, str]) -> Instance:
    """One instance via the platform's own launch path, recorded as kind 'test'."""
    if release is None:
        hexpart = image.digest.split(":")[-1][:12]
        release = Release.of(f"{service_name}-test-{hexpart}", service_name, 0,
                             ReleaseImage.of(image), service, "test")
    instances = compute.launch(service_name, service, release, image, 1, env=env, kind="test")
    if len(instances) != 1:
        for extra in instances:
            _dispose(compute, extra, service.stop_timeout)
        raise KilnError(f"platform launched {len(instances)} instances, expected 1")
    return instances[0]


def _dispose(compute: Compute, instance: Instance, timeout: float) -> None:
    """Terminate even if ^C arrives again while we do (a second ^C must not leak it)."""
    while True:
        try:
            compute.terminate(instance, timeout)
            return
        except KeyboardInterrupt:
            continue
        except KilnError:
            return  # nothing more we can do; observe/gc will find it


def _wait_healthy(compute: Compute, target: _Target, service: ServiceSpec) -> None:
    """Poll the instance's own health until health.deadline; note why it failed."""
    assert target.instance is not None
    instance, health = target.instance, service.health
    deadline = time.monotonic() + health.deadline
    while True:
        try:
            if compute.healthy(instance, health):
                target.healthy, target.healthy_at = True, time.time()
                return
        except KilnError as exc:
            target.health_error = str(exc)
        observed = compute.observe([instance])
        if observed and not observed[0].alive:
            target.healthy = False
            target.health_error = "the instance exited" + _log_tail(compute, instance)
            return
        if time.monotonic() >= deadline:
            target.healthy = False
            target.health_error = (f"not healthy (GET {health.path}) within "
                                   f"{health.deadline:g}s"
                                   + _last_answer(compute, instance, health)
                                   + _log_tail(compute, instance))
            return
        time.sleep(HEALTH_POLL)


def _last_answer(compute: Compute, instance: Instance, health: Health) -> str:
    """What the health path answers now, as kiln sees it: a failure says what was seen
    (asked on the instance itself where kiln cannot reach it: RemoteChecks)."""
    probe = HttpCheck.Spec(path=health.path, timeout=min(health.timeout, 2.0))
    seen = (compute.check_http(instance, probe) if isinstance(compute, RemoteChecks)
            else ck.check_http(probe, instance))
    return f"; last answer: {seen.detail}" if not seen.passed else ""


LOG_TAIL = 20
"""Log lines of a failed test instance shown with the failure."""


def log_lines(compute: Compute, instance: Instance, count: int) -> tuple[str, ...]:
    """The last `count` lines of the instance's log (empty when it cannot be read)."""
    try:
        with compute.log_path(instance).open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - 64_000, 0))
            data = fh.read()
    except (OSError, KilnError):
        return ()
    return tuple(ln.decode(errors="replace") for ln in data.strip().splitlines()[-count:])


def _log_tail(compute: Compute, instance: Instance) -> str:
    lines = log_lines(compute, instance, 1)
    return f"; last log line: {ck.one_line(lines[-1], 120)}" if lines else ""


def _run_one(index: int, check: Check, *, compute: Compute, target: _Target,
             service: ServiceSpec | None, launch_spec: ServiceSpec,
             root: Path | ck.ImageFiles,
             base_dir: Path) -> CheckResult:
    kind, description = ck.kind_of(check), ck.describe(check)
    start = time.monotonic()

    def done(outcome: ck.Outcome) -> CheckResult:
        return CheckResult(index, kind, description, outcome.passed, outcome.detail,
                           time.monotonic() - start)

    if isinstance(check, FileCheck):
        return done(ck.check_file(check.file, root))
    if target.instance is None:
        return done(ck.Outcome(False, target.launch_error or "no test instance"))
    instance = target.instance
    if isinstance(check, HttpCheck | PortCheck) and service is None:
        return done(ck.Outcome(False, f"no service runs image {launch_spec.image}, so there is "
                                      f"no app to reach; {kind} checks need a service"))
    if ck.needs_app(check) and service is not None:
        if target.healthy is None:
            _wait_healthy(compute, target, service)
            start = time.monotonic()  # the check's own time starts once the app is up
        if not target.healthy:
            return done(ck.Outcome(False, f"not run: the instance never became healthy: "
                                          f"{target.health_error}"))
    if isinstance(check, TestinfraCheck):
        path = (base_dir / check.testinfra).resolve()
        # A platform with a testinfra backend of its own (podman://) is reached through it.
        out = run_testinfra(path, run=_exec_fn(compute, instance, target.extra_env),
                            instance=instance, timeout=check.timeout,
                            hosts=compute.testinfra_host(instance)
                            if isinstance(compute, TestinfraBackend) else None)
        return CheckResult(index, kind, description, out.passed, out.detail,
                           time.monotonic() - start, out.cases)
    remote = compute if isinstance(compute, RemoteChecks) else None
    if isinstance(check, HttpCheck):
        http = check.http
        if remote is not None:
            return done(_bounded(lambda: remote.check_http(instance, http), http.timeout))
        return done(_bounded(lambda: ck.check_http(http, instance), http.timeout))
    if isinstance(check, PortCheck):
        port = instance.port if service is not None and check.port == service.port \
            else check.port
        timeout = check.timeout
        if remote is not None:
            return done(_bounded(lambda: remote.check_port(instance, port, timeout), timeout))
        return done(_bounded(lambda: ck.check_port(instance.host, port, timeout), timeout))
    assert isinstance(check, CommandCheck)
    spec = check.spec
    run = _exec_fn(compute, instance, target.extra_env)
    return done(_bounded(lambda: _command(run, spec), spec.timeout))


def _exec_fn(compute: Compute, instance: Instance, env: Mapping[str, str]) -> ck.ExecFn:
    """compute.exec bound to the instance; secrets go along if the platform takes `env`."""
    try:
        takes_env = "env" in inspect.signature(compute.exec).parameters
    except (TypeError, ValueError):
        takes_env = False

    def run(command: str, timeout: float) -> ExecResult:
        if takes_env and env:
            return compute.exec(instance, command, timeout=timeout,
                                env=env)  # type: ignore[call-arg]
        return compute.exec(instance, command, timeout=timeout)

    return run


def _command(run: ck.ExecFn, spec: CommandCheck.Spec) -> ck.Outcome:
    begin = time.monotonic()
    try:
        outcome = ck.check_command(spec, run)
    except KilnError as exc:
        if "timed out" in str(exc).lower() or time.monotonic() - begin >= spec.timeout:
            return ck.Outcome(False, f"timed out after {spec.timeout:g}s")
        return ck.Outcome(False, f"could not run: {exc}")
    if not outcome.passed and time.monotonic() - begin >= spec.timeout * 0.99:
        return ck.Outcome(False, f"timed out after {spec.timeout:g}s")
    return outcome


def _bounded(fn: Callable[[], ck.Outcome], timeout: float) -> ck.Outcome:
    """Run `fn` in a daemon thread; give up after timeout + grace (it then dies on its own)."""
    box: list[ck.Outcome] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            box.append(fn())
        except Exception as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, daemon=True, name="kiln-check")
    worker.start()
    worker.join(timeout + _GRACE)
    if box:
        return box[0]
    if failure:
        return ck.Outcome(False, f"error: {ck.one_line(str(failure[0]), 160)}")
    return ck.Outcome(False, f"timed out after {timeout:g}s")
