"""Run a testinfra file or folder in a pytest subprocess bound to one instance; parse junitxml.

A subprocess (kiln's own python) so a hanging test is killed at the check's timeout and a test
can't disturb kiln's process. pytest is isolated from the project's own pytest config (an empty
ini) and writes no cache into the user's tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from kiln.platforms.base import Instance
from kiln.verify.checks import ExecFn, one_line
from kiln.verify.exec_server import SOCKET_ENV, ExecServer
from kiln.verify.results import CaseResult
from kiln.verify.testinfra_backend import TIMEOUT_ENV

PLUGIN = "kiln.verify.testinfra_plugin"

_EXIT_MEANING = {
    2: "pytest was interrupted",
    3: "pytest internal error",
    4: "pytest usage error",
    5: "no tests collected",
}


@dataclass(frozen=True)
class TestinfraOutcome:
    __test__ = False  # not a pytest class

    passed: bool
    detail: str
    cases: tuple[CaseResult, ...] = ()


def run_testinfra(path: Path, *, run: ExecFn, instance: Instance,
                  timeout: float, hosts: str | None = None) -> TestinfraOutcome:
    """`python -m pytest <path> --hosts=kiln://<id>`, killed after `timeout` seconds.

    `run(command, timeout)` executes in the instance's environment (the `host` fixture uses it).
    `hosts` replaces kiln:// with a testinfra backend of the platform's own (podman://NAME).
    """
    if not path.exists():
        return TestinfraOutcome(False, f"testinfra path {path} does not exist")
    work = Path(tempfile.mkdtemp(prefix="kiln-ti-"))
    try:
        ini = work / "pytest.ini"
        ini.write_text("[pytest]\n")
        junit = work / "junit.xml"
        with ExecServer(run, max_timeout=timeout) as sock:
            env = _child_env(instance, sock, timeout)
            argv = [sys.executable, "-m", "pytest", str(path), "-c", str(ini),
                    "--rootdir", str(path if path.is_dir() else path.parent),
                    "-p", PLUGIN, "-p", "no:cacheprovider", f"--hosts={hosts or 'kiln://' + instance.id}",
                    f"--junitxml={junit}", "-q", "--no-header", "-rN"]
            proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return TestinfraOutcome(False, f"timed out after {timeout:g}s")
            except BaseException:
                _kill_group(proc)
                raise
        cases = parse_junit(junit) if junit.exists() else ()
        return summarize(proc.returncode, cases, output.decode(errors="replace"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _child_env(instance: Instance, sock: Path, timeout: float) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # testinfra's plugin comes by entry point
    env.pop("PYTEST_ADDOPTS", None)
    env.update({
        SOCKET_ENV: str(sock),
        TIMEOUT_ENV: str(timeout),
        "KILN_INSTANCE_ID": instance.id,
        "KILN_INSTANCE_HOST": instance.host,
        "KILN_INSTANCE_PORT": str(instance.port),
        "KILN_INSTANCE_URL": instance.url,
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    for key in ("no_proxy", "NO_PROXY"):  # a test's own HTTP client must reach the instance
        env[key] = ",".join(x for x in (env.get(key, ""), instance.host, "localhost") if x)
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def parse_junit(path: Path) -> tuple[CaseResult, ...]:
    """Every <testcase> of a pytest junitxml file, in order."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return ()
    cases: list[CaseResult] = []
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        cls = case.get("classname", "")
        full = f"{cls}::{name}" if cls else name
        duration = float(case.get("time") or 0.0)
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            message = bad.get("message") or (bad.text or "").strip().splitlines()[-1:] or [""]
            text = message if isinstance(message, str) else message[0]
            cases.append(CaseResult(full, False, one_line(text, 160), duration))
        elif skipped is not None:
            cases.append(CaseResult(full, True, one_line(skipped.get("message") or "skipped"),
                                    duration, skipped=True))
        else:
            cases.append(CaseResult(full, True, "", duration))
    return tuple(cases)


def summarize(returncode: int, cases: tuple[CaseResult, ...], output: str) -> TestinfraOutcome:
    """One line for the report: counts, then the first failure."""
    failed = [c for c in cases if not c.passed]
    skipped = sum(1 for c in cases if c.skipped)
    passed = len(cases) - len(failed) - skipped
    counts = f"{passed} passed" + (f", {len(failed)} failed" if failed else "") + (
        f", {skipped} skipped" if skipped else "")
    if failed:
        first = failed[0]
        return TestinfraOutcome(False, f"{counts}; {first.name}: {first.detail}", cases)
    if returncode == 0 and cases:
        return TestinfraOutcome(True, counts, cases)
    reason = _EXIT_MEANING.get(5 if returncode == 0 else returncode,
                               f"pytest exited {returncode}")
    last = [line for line in output.strip().splitlines() if line.strip()][-1:]
    return TestinfraOutcome(False, reason + (f": {one_line(last[0], 160)}" if last else ""), cases)
