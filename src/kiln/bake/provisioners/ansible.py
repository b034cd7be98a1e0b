"""The `ansible` step: ansible-playbook from kiln's own environment against the image being built.

The controller is the ansible-core installed with kiln (`kiln[ansible]`); the target is a buildah
working container reached through the `containers.podman.buildah` connection, so nothing of
Ansible stays in the image. Output comes through the `ansible.posix.jsonl` callback, one JSON
event per line: `render` turns each into a progress line and `Failure` names the task that failed,
where it is defined and its message. Both are pure, tested from recorded events.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from kiln.bake.provisioners.inputs import Tree, project_path, trees_hash
from kiln.bake.provisioners.process import OnLine, stream
from kiln.bake.provisioners.workcontainer import SYSTEM_PATH, WorkContainer
from kiln.errors import BakeError
from kiln.spec.models import AnsibleStep

CONNECTION = "containers.podman.buildah"
INTERPRETER = "/usr/bin/python3"
REMOTE_TMP = "/tmp/.kiln-ansible"
HOST = "image"
"""The one host of the inventory (group `kiln`): playbooks target `hosts: all` or `image`."""
INSTALL_HINT = "install kiln with its ansible extra: uv sync --extra ansible (or pip install 'kiln[ansible]')"


@dataclass(frozen=True)
class Plan:
    step: AnsibleStep
    base_dir: Path
    playbook: Path
    roles: list[Path]
    inputs: str
    """Hash of the playbook's folder, the extra role folders and the ansible-core version."""


def prepare(step: AnsibleStep, base_dir: Path, where: str) -> Plan:
    """Check the step's files and hash its inputs (no container, no ansible run)."""
    spec = step.ansible
    playbook = project_path(base_dir, spec.playbook, "playbook", where, folder=False)
    roles = [project_path(base_dir, rel, "roles_path", where, folder=True)
             for rel in spec.roles_path]
    trees = [Tree(playbook.parent, "playbook-dir"),
             *(Tree(path, f"roles:{rel}") for path, rel in zip(roles, spec.roles_path, strict=True))]
    return Plan(step, base_dir.resolve(), playbook, roles, trees_hash(trees, core_version(where)))


def core_version(where: str) -> str:
    """ansible-core's version in kiln's environment; one line when it or the collection is absent."""
    try:
        version = metadata.version("ansible-core")
    except metadata.PackageNotFoundError:
        raise BakeError(f"{where}: ansible steps need ansible-core, which is not installed",
                        hint=INSTALL_HINT) from None
    if importlib.util.find_spec("ansible_collections.containers.podman") is None:
        raise BakeError(f"{where}: ansible steps need the containers.podman collection "
                        f"(its buildah connection), which is not installed", hint=INSTALL_HINT)
    return f"ansible-core {version}"


def playbook_command() -> Path:
    exe = Path(sys.executable).parent / "ansible-playbook"
    if not exe.exists():
        raise BakeError("ansible steps need ansible-playbook beside kiln's Python "
                        f"({exe} not found)", hint=INSTALL_HINT)
    return exe


def apply(plan: Plan, wc: WorkContainer, *, on_line: OnLine, where: str) -> None:
    """Run the playbook against the working container; a failed task fails the step."""
    has_python = wc.shell(f"test -x {INTERPRETER}", timeout=60)
    if has_python.code != 0:
        raise BakeError(f"{where}: ansible needs {INTERPRETER} in the image, which it lacks",
                        hint="add python3 to the base's packages (a run step can apt-get it)")
    exe = playbook_command()
    with tempfile.TemporaryDirectory(prefix="kiln-ansible-") as tmp_name:
        tmp = Path(tmp_name)
        config = plan.playbook.parent / "ansible.cfg"
        if not config.is_file():  # never the host's ~/.ansible.cfg or /etc/ansible
            config = tmp / "ansible.cfg"
            config.write_text("[defaults]\n")
        (tmp / "inventory").write_text(
            f"[kiln]\n{HOST} ansible_connection={CONNECTION} ansible_host={wc.name} "
            f"ansible_python_interpreter={INTERPRETER}\n")
        (tmp / "vars.json").write_text(json.dumps(plan.step.ansible.extra_vars, default=str))
        env = {
            "PATH": f"{exe.parent}:{SYSTEM_PATH}",
            "HOME": str(Path.home()),
            "LANG": "C.UTF-8",
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
            "ANSIBLE_REMOTE_TMP": REMOTE_TMP,
            "ANSIBLE_ROLES_PATH": ":".join(str(p) for p in plan.roles),
        }
        argv = [str(exe), "-i", str(tmp / "inventory"), "-e", f"@{tmp / 'vars.json'}",
                str(plan.playbook)]
        failures: list[Failure] = []

        def line(text: str) -> None:
            event = parse_event(text)
            if event is None:
                on_line(text)
                return
            if (failure := Failure.from_event(event, plan.base_dir)) is not None:
                failures.append(failure)
            shown = render(event, plan.base_dir)
            if shown:
                on_line(shown)

        done = stream(argv, env=env, timeout=plan.step.ansible.timeout, on_line=line,
                      cwd=plan.playbook.parent)
        wc.shell(f"rm -rf {REMOTE_TMP} /root/.ansible", timeout=60)
    if done.code is None:
        raise BakeError(f"{where} timed out after {plan.step.ansible.timeout:g}s")
    if done.code != 0:
        raise BakeError(f"{where} failed: " + explain(done.code, failures, done.stderr,
                                                      plan.base_dir))


# ---------------------------------------------------------------- output (pure)


def parse_event(line: str) -> dict[str, Any] | None:
    """One jsonl callback event, or None for any other line (warnings, errors, blank)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "_event" in event else None


def _rel(path: str, base_dir: Path) -> str:
    """'/abs/project/bake/site.yml:4' -> 'bake/site.yml:4' (paths outside stay absolute)."""
    prefix = str(base_dir).rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


_RESULTS = {"v2_runner_on_ok": "ok", "v2_runner_on_failed": "failed",
            "v2_runner_on_skipped": "skipped", "v2_runner_on_unreachable": "unreachable"}


def _host_result(event: dict[str, Any]) -> dict[str, Any]:
    hosts = event.get("hosts") or {}
    result: Any = next(iter(hosts.values()), {}) if isinstance(hosts, dict) else {}
    return result if isinstance(result, dict) else {}


def render(event: dict[str, Any], base_dir: Path) -> str | None:
    """A progress line for one event ('changed: web : write config'), None for silent ones."""
    kind = event.get("_event")
    if kind == "v2_playbook_on_play_start":
        return f"PLAY {event.get('play', {}).get('name', '')}".rstrip()
    if kind == "v2_playbook_on_stats":
        stats: dict[str, Any] = next(iter((event.get("stats") or {}).values()), {})
        keys = ("ok", "changed", "failures", "skipped", "unreachable", "ignored")
        return "recap: " + " ".join(f"{k}={stats.get(k, 0)}" for k in keys)
    status = _RESULTS.get(str(kind))
    if status is None:
        return None
    name = event.get("task", {}).get("name", "")
    result = _host_result(event)
    if status == "ok" and result.get("changed"):
        status = "changed"
    line = f"{status}: {name}"
    if status in ("failed", "unreachable"):
        failure = Failure.from_event(event, base_dir)
        if failure is not None:
            line += f": {failure.message}"
        if result.get("ignore_errors") or result.get("_ansible_ignore_errors"):
            line += " (ignored)"
    return line


@dataclass(frozen=True)
class Failure:
    task: str
    location: str
    """'bake/roles/web/tasks/main.yml:3': where the task is defined."""
    message: str
    detail: list[str] = field(default_factory=list)

    @classmethod
    def from_event(cls, event: dict[str, Any], base_dir: Path) -> Failure | None:
        if event.get("_event") not in ("v2_runner_on_failed", "v2_runner_on_unreachable"):
            return None
        task = event.get("task") or {}
        result = _host_result(event)
        message = _one_line(str(result.get("msg") or "").strip()) or "failed"
        detail = [line for key in ("stderr", "stdout", "module_stderr")
                  for line in str(result.get(key) or "").strip().splitlines()[-3:]]
        if detail and message in ("failed", "Error executing command.", "non-zero return code",
                                  "MODULE FAILURE\nSee stdout/stderr for the exact error"):
            message = f"{message} {detail[-1].strip()}".strip()
        elif not detail and result.get("cmd"):
            cmd = result["cmd"]
            cmd = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd)
            message = f"{message.rstrip('.')}: {cmd}" + (f" (rc {result['rc']})" if "rc" in result
                                                         else "")
        return cls(str(task.get("name") or "?"), _rel(str(task.get("path") or ""), base_dir),
                   message, detail)

    def line(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"task {self.task!r}{where}: {self.message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


_ERROR = re.compile(r"^(?:\[ERROR\]:|ERROR!)\s*(.*)$")
_ORIGIN = re.compile(r"^Origin:\s*(\S+)")


def explain(code: int, failures: list[Failure], stderr: list[str], base_dir: Path) -> str:
    """The one line that says why ansible-playbook failed: the failed task, or its own error."""
    if failures:
        return failures[-1].line()
    error = origin = None
    for text in stderr:
        if error is None and (m := _ERROR.match(text.strip())):
            error = m.group(1).strip()
        elif error is not None and origin is None and (o := _ORIGIN.match(text.strip())):
            origin = _rel(o.group(1), base_dir)
    if error:
        error = error.replace(str(base_dir).rstrip("/") + "/", "")
        return error + (f" ({origin})" if origin else "")
    last = next((t.strip() for t in reversed(stderr) if t.strip()), "")
    return f"ansible-playbook exited with code {code}" + (f": {last}" if last else "")
