"""What one bake step does to the tree: copy files in, or run a command in a controlled environment.

Run steps see a small, explicit environment so that an image depends on its spec and not on the
shell kiln was started from; only what pip needs to reach an index on this machine (PIP_*, proxy
and CA-certificate variables) passes through from the host.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.bake.hashing import content_hash, iter_files, step_key
from kiln.errors import BakeError
from kiln.spec.models import AnsibleStep, CopyStep, EnvStep, PuppetStep, RunStep, Step, WorkdirStep
from kiln.state.lock import pid_alive, pid_start_time

SKIP_NAMES = frozenset({".git", ".kiln", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache"})
"""Never copied from a folder: VCS data, kiln's own state, the host's venv, byte-code caches."""

_PASS_THROUGH = frozenset({
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01: the earliest time a zip (wheel) can record
TAIL_LINES = 20


def skip_name(name: str) -> bool:
    return name in SKIP_NAMES or name.endswith(".pyc")


def describe(step: Step) -> str:
    if isinstance(step, CopyStep):
        return f"copy {step.source} -> {step.to}"
    if isinstance(step, RunStep):
        first = step.run.strip().splitlines()[0] if step.run.strip() else step.run
        more = " ..." if len(step.run.strip().splitlines()) > 1 else ""
        text = first if len(first) <= 60 else first[:57] + "..."
        return f"run: {text}{more}"
    if isinstance(step, EnvStep):
        return "env " + ", ".join(sorted(step.env))
    if isinstance(step, AnsibleStep):
        return f"ansible {step.ansible.playbook}"
    if isinstance(step, PuppetStep):
        return f"puppet {step.puppet.manifest}"
    return f"workdir {step.workdir}"


def definition(step: Step) -> dict[str, Any]:
    """The part of a step that shapes its output (a run step's timeout does not)."""
    data: dict[str, Any] = step.model_dump(mode="json", by_alias=True)
    data.pop("timeout", None)
    data["kind"] = type(step).__name__
    return data


class PathEscape(BakeError):
    """A step's path (copy `to`, `workdir`) leads out of the image; `field` names the key, so
    the builder can point at its line in kiln.yaml."""

    def __init__(self, message: str, *, field: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


def inside(root: Path, rel: str, what: str, where: str) -> Path:
    """root/rel, refusing a path that climbs out of root."""
    norm = posixpath.normpath(rel.lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise PathEscape(f"{where}: {what} {rel!r} leaves the image",
                         field="to" if what == "copy destination" else "workdir",
                         hint="use a path inside the image, relative to its root")
    return root if norm == "." else root / norm


def image_env(image_steps: Sequence[Step]) -> dict[str, str]:
    """The environment the image's `env` steps set (later steps win): instances get it."""
    env: dict[str, str] = {}
    for step in image_steps:
        if isinstance(step, EnvStep):
            env.update(step.env)
    return env


def final_workdir(image_steps: Sequence[Step], image_name: str) -> str:
    """Where the service starts (as Dockerfile WORKDIR): the last `workdir` step's path relative
    to the image root, normalised; "" for the root itself (no workdir step)."""
    workdir = ""
    for i, step in enumerate(image_steps):
        if isinstance(step, WorkdirStep):
            where = f"images.{image_name}.steps[{i}]"
            rel = inside(Path("/"), step.workdir, "workdir", where).relative_to("/")
            workdir = "" if str(rel) == "." else rel.as_posix()
    return workdir


def copy_source(step: CopyStep, base_dir: Path, where: str) -> Path:
    """The copy step's source, which must exist and stay inside the project folder."""
    base = base_dir.resolve()
    source = (base / step.source).resolve()
    if source != base and base not in source.parents:
        raise BakeError(f"{where}: copy source {step.source!r} is outside {base}",
                        hint="copy only files inside the folder of kiln.yaml")
    if not source.exists():
        raise BakeError(f"{where}: copy source {step.source!r} not found (looked for {source})")
    return source


def copy_inputs_hash(source: Path) -> str:
    return content_hash(source, skip_name)


COPY_SCRIPT = r"""
import json, os, shutil, stat, sys
job = json.load(sys.stdin)
root = os.path.realpath(job["root"])
for d in job["mkdirs"]:
    os.makedirs(d, exist_ok=True)
for src, dst in job["entries"]:
    real = os.path.realpath(os.path.dirname(dst))
    if real != root and not real.startswith(root + "/"):
        sys.stdout.write(os.path.relpath(dst, job["root"]))
        sys.exit(3)
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        if os.path.islink(dst) or (os.path.lexists(dst) and not os.path.isdir(dst)):
            os.unlink(dst)
        if not os.path.isdir(dst):
            os.mkdir(dst)
        continue
    if os.path.islink(dst) or os.path.isfile(dst):
        os.unlink(dst)  # replace, never write into an existing inode
    elif os.path.isdir(dst):
        shutil.rmtree(dst)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
        os.chmod(dst, 0o755 if st.st_mode & 0o111 else 0o644)
"""
"""Copies the entries kiln listed, in the bake sandbox (kiln's python, no kiln imports): a
destination whose folder resolves outside the image root stops it with exit code 3."""


def copy_job(step: CopyStep, source: Path, root: Path, where: str,
             source_view: str) -> dict[str, Any]:
    """What `COPY_SCRIPT` does for a copy step: folders to make and (source, destination) pairs,
    sources named as the sandbox sees them (`source_view`: where `source` is bound). A
    destination that a symlink already in the image leads out of the image is refused here."""
    dest = inside(root, step.to, "copy destination", where)
    escape = symlink_escape(root, dest)
    if escape is not None:
        raise PathEscape(f"{where}: copy destination {step.to!r} leaves the image through the "
                         f"symlink {escape}", field="to",
                         hint="a copy writes only inside the image; point `to:` at a real "
                              "folder of the image or remove the symlink in an earlier step")
    if source.is_dir():
        entries = [(f"{source_view}/{rel}", str(dest / rel))
                   for rel, _ in iter_files(source, skip_name)]
        return {"root": str(root), "mkdirs": [str(dest)], "entries": entries}
    if step.to.endswith("/") or dest.is_dir():
        dest = dest / source.name
    return {"root": str(root), "mkdirs": [str(dest.parent)],
            "entries": [(source_view, str(dest))]}


def symlink_escape(root: Path, dest: Path) -> str | None:
    """The first symlink on `dest` (below `root`) that resolves outside `root`, as
    "link -> target"; None when every existing part of the path stays inside."""
    real_root = os.path.realpath(root)
    path = root
    for part in dest.relative_to(root).parts:
        path = path / part
        if not path.is_symlink():
            if not path.exists():
                return None
            continue
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
            return f"{path.relative_to(root).as_posix()} -> {os.readlink(path)}"
    return None


def base_env(root: Path, scratch: Path) -> dict[str, str]:
    """The environment of run steps and venv creation, before `env` steps."""
    venv = root / ".venv"
    env = {
        "PATH": f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(scratch / "home"),
        "TMPDIR": str(scratch / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key in _PASS_THROUGH:
            env.setdefault(key, value)
    (scratch / "home").mkdir(parents=True, exist_ok=True)
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def run_command(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float,
                log: Path, pidfile: Path, on_output: Callable[[str], None] | None = None,
                pass_fds: Sequence[int] = ()) -> int | None:
    """Run `argv` (a step's `bash -c command`, in its sandbox); exit code, or None on timeout.
    Output goes to `log`, and each line to `on_output` as it is written (progress for the user,
    like BuildKit's).

    The command runs in its own session so the whole tree it starts is killed on timeout, on
    KeyboardInterrupt, and when it leaves background processes behind. `pidfile` records the
    session leader so the next bake can kill it if this process dies first.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=tuple(pass_fds))
    pidfile.write_text(f"{proc.pid} {pid_start_time(proc.pid) or ''}\n")
    try:
        if on_output is None:
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        return _wait_streaming(proc, log, timeout, on_output)
    finally:
        _killpg(proc.pid)
        proc.wait()
        pidfile.unlink(missing_ok=True)


def _wait_streaming(proc: subprocess.Popen[bytes], log: Path, timeout: float,
                    on_output: Callable[[str], None]) -> int | None:
    """Wait for `proc`, handing every complete line its log gains to `on_output`."""
    deadline = time.monotonic() + timeout
    pending = b""
    with open(log, "rb") as fh:
        while True:
            try:
                code: int | None = proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                code = None
            pending += fh.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_output(line.decode("utf-8", "replace").rstrip("\r"))
            if code is not None:
                if pending:
                    on_output(pending.decode("utf-8", "replace"))
                return code
            if time.monotonic() > deadline:
                return None


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_orphan(pidfile: Path) -> None:
    """Kill the step a dead bake left running (recorded in `pidfile`), if it still runs."""
    try:
        pid_text, _, start = pidfile.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return
    if pid_alive(pid, start or None):
        _killpg(pid)
        deadline = time.monotonic() + 5
        while pid_alive(pid, start or None) and time.monotonic() < deadline:
            time.sleep(0.01)


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").rstrip().splitlines()[-lines:])


def chain(spec_steps: Sequence[Step], base_dir: Path, base_def: dict[str, Any], key: str
          ) -> Iterator[tuple[int, Step, str, str, Path | None]]:
    """(index, step, description, cache key, copy source) of each step, keys chained from the
    base's `key`: a step's key covers everything before it and the hash of its copy inputs."""
    total = len(spec_steps)
    for i, step in enumerate(spec_steps, start=1):
        desc = describe(step)
        where = f"step {i}/{total} ({desc})"
        source, inputs = None, ""
        if isinstance(step, CopyStep):
            source = copy_source(step, base_dir, where)
            inside(Path("/"), step.to, "copy destination", where)
            inputs = copy_inputs_hash(source)
        key = step_key(key, base_def, definition(step), inputs)
        yield i, step, desc, key, source
